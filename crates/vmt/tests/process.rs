//! vmt's process-level behaviour, for real: detaching as a daemon (double
//! fork, setsid, `/`, `/dev/null`, the pid file and its lock), `vmt
//! status` against a live and a dead daemon, halting and rebooting
//! through a real busybox init, and the last resort (sync and reboot(2)),
//! the last two inside PID namespaces of their own, where reboot(2) ends
//! only the namespace.
//!
//! Without libtest (`harness = false`): the tests fork, and re-run this
//! binary as a helper (`--detach-helper DIR`, `--last-resort ACTION
//! INODE`), which a multi-threaded harness would make fragile. The PID
//! namespace tests need root, `unshare` and busybox; without them they say
//! so and pass, as the network namespace tests elsewhere do.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmt::daemon::{Power, System};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--detach-helper") => detach_helper(Path::new(&args[2])),
        Some("--last-resort") => last_resort_helper(&args[2], &args[3]),
        _ => {}
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let tests: [(&str, fn()); 5] = [
        ("detaches_like_a_daemon", detaches_like_a_daemon),
        (
            "status_of_a_live_and_a_dead_daemon",
            status_of_a_live_and_a_dead_daemon,
        ),
        ("vmt_status_without_a_daemon", vmt_status_without_a_daemon),
        (
            "busybox_init_halts_and_reboots",
            busybox_init_halts_and_reboots,
        ),
        (
            "last_resort_in_a_pid_namespace",
            last_resort_in_a_pid_namespace,
        ),
    ];
    let mut ran = 0;
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let t = Instant::now();
        test();
        ran += 1;
        println!("test {name} ... ok ({:.1?})", t.elapsed());
    }
    println!("\ntest result: ok. {ran} passed");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmt-process-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child killed (with what it started: `unshare --kill-child`) if the
/// test fails before it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `cond` holds, at most `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs (a zombie waiting for its new parent to reap it
/// does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// The helper: detaches, takes `DIR/vmt.pid`, writes what it sees of
/// itself to `DIR/facts`, and lives until SIGTERM, as the daemon does.
fn detach_helper(dir: &Path) -> ! {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_term(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let ready = vmt::detach::detach().unwrap_or_else(|e| panic!("detach: {e}"));
    let pid_file = match vmt::detach::PidFile::acquire(&dir.join("vmt.pid")) {
        Ok(p) => p,
        Err(e) => {
            ready.fail(&e);
            std::process::exit(1);
        }
    };
    // SAFETY: the handler stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let link = |p: &str| {
        std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    // SAFETY: plain queries.
    let (pid, ppid, sid, pgid, umask) = unsafe {
        let m = libc::umask(0);
        libc::umask(m);
        (
            libc::getpid(),
            libc::getppid(),
            libc::getsid(0),
            libc::getpgrp(),
            m,
        )
    };
    // SAFETY: opening the controlling terminal fails without one.
    let tty = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR) };
    let facts = format!(
        "pid {pid}\nppid {ppid}\nsid {sid}\npgid {pgid}\numask {umask:o}\ncwd {}\n\
         fd0 {}\nfd1 {}\nfd2 {}\ntty {}\n",
        link("/proc/self/cwd"),
        link("/proc/self/fd/0"),
        link("/proc/self/fd/1"),
        link("/proc/self/fd/2"),
        if tty >= 0 { "yes" } else { "no" },
    );
    std::fs::write(dir.join("facts.tmp"), facts).unwrap();
    std::fs::rename(dir.join("facts.tmp"), dir.join("facts")).unwrap();
    ready.ok();
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(pid_file);
    std::fs::write(dir.join("exited"), "").unwrap();
    std::process::exit(0);
}

fn facts(dir: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dir.join("facts"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn start_helper(dir: &Path) -> std::process::Output {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--detach-helper")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The starter returns once the daemon is ready; nothing of the daemon
    // keeps its pipes open (they are on /dev/null now).
    wait_for(&mut child, Duration::from_secs(10), "the starter");
    child.wait_with_output().unwrap()
}

fn stop_helper(dir: &Path, pid: i32) {
    // SAFETY: a daemon of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_until(Duration::from_secs(10), "the daemon exits", || {
        dir.join("exited").exists() && !alive(pid)
    });
    let _ = std::fs::remove_file(dir.join("exited"));
}

fn detaches_like_a_daemon() {
    let dir = temp_dir("detach");
    let pid_path = dir.join("vmt.pid");
    let out = start_helper(&dir);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // The pid file is there when the starter returns (systemd's
    // Type=forking and init scripts rely on it).
    let pid: i32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let f = facts(&dir);
    assert_eq!(f["pid"], pid.to_string());
    // Not a session leader (the second fork), in a session and process
    // group of its own, not ours.
    // SAFETY: plain queries.
    let (our_sid, our_pgid) = unsafe { (libc::getsid(0), libc::getpgrp()) };
    let sid: i32 = f["sid"].parse().unwrap();
    assert_ne!(sid, pid, "a session leader could get a terminal");
    assert_ne!(sid, our_sid);
    assert_eq!(f["pgid"], f["sid"]);
    assert_ne!(f["pgid"], our_pgid.to_string());
    assert_eq!(f["tty"], "no");
    // Reparented: its starter and the session leader are gone.
    assert_ne!(f["ppid"], std::process::id().to_string());
    assert_eq!(f["cwd"], "/");
    assert_eq!(f["umask"], "22");
    for fd in ["fd0", "fd1", "fd2"] {
        assert_eq!(f[fd], "/dev/null", "{fd}");
    }
    assert_eq!(vmt::detach::holder(&pid_path), Some(pid as u32));

    // A second daemon is refused, the starter saying why, exit 1; the
    // first keeps its file.
    std::fs::remove_file(dir.join("facts")).unwrap();
    let out = start_helper(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("vmt: already running (pid {pid}, {})\n", pid_path.display())
    );
    assert!(!dir.join("facts").exists());
    assert_eq!(vmt::detach::holder(&pid_path), Some(pid as u32));

    // SIGTERM: it exits and removes its pid file.
    stop_helper(&dir, pid);
    assert!(!pid_path.exists());
    assert_eq!(vmt::detach::holder(&pid_path), None);

    // A pid file left behind by a daemon that was killed (nobody holds
    // its lock) is taken over.
    std::fs::write(&pid_path, "4194303\n").unwrap();
    assert_eq!(vmt::detach::holder(&pid_path), None);
    let out = start_helper(&dir);
    assert!(out.status.success(), "{out:?}");
    let pid2: i32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid2, 4_194_303);
    stop_helper(&dir, pid2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `vmt status`'s verdict comes from the pid file's lock, not from the
/// status file alone.
fn status_of_a_live_and_a_dead_daemon() {
    let dir = temp_dir("status");
    let pid_path = dir.join("vmt.pid");
    let status_path = dir.join("vmt.status");
    let status =
        |out: &mut Vec<u8>, err: &mut Vec<u8>| vmt::cli::status(&status_path, &pid_path, out, err);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(status(&mut out, &mut err), 1);
    assert_eq!(
        String::from_utf8_lossy(&err),
        format!(
            "vmt: the daemon is not running (no {})\n",
            status_path.display()
        )
    );
    assert!(out.is_empty());

    assert!(start_helper(&dir).status.success());
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let text = format!("pid {pid}\nstarted 2026-12-07T15:00:01Z\nchannel open\n");
    std::fs::write(&status_path, &text).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(status(&mut out, &mut err), 0);
    assert_eq!(String::from_utf8_lossy(&out), text);
    assert!(err.is_empty());

    // Killed without a chance to clean up: its last status, and exit 1.
    // SAFETY: a daemon of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until(Duration::from_secs(10), "the daemon dies", || {
        !alive(pid as i32)
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(status(&mut out, &mut err), 1);
    assert_eq!(String::from_utf8_lossy(&out), text);
    assert_eq!(
        String::from_utf8_lossy(&err),
        format!("vmt: the daemon (pid {pid}) is not running; its last status:\n")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real binary's `vmt status` needs neither root nor a VM.
fn vmt_status_without_a_daemon() {
    if Path::new(vmt::status::STATUS_FILE).exists() {
        println!(
            "skipped: {} exists on this machine",
            vmt::status::STATUS_FILE
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmt"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmt: the daemon is not running (no /run/vmt.status)\n"
    );
    assert!(out.stdout.is_empty());
}

/// What the PID namespace tests need; why they cannot run, if they
/// cannot.
fn pid_namespaces() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "no PID namespaces here (unshare --pid --fork true failed)".into())
}

/// The pid (in our namespace) of `parent`'s child.
fn child_of(parent: u32) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest.split(' ').nth(1);
        if ppid == Some(parent.to_string().as_str()) {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// The signal a PID namespace's end was reported with: `unshare --fork`
/// dies of the signal that killed its child (the namespace's init), or
/// exits with 128 + it.
fn ended_by(st: ExitStatus) -> Option<i32> {
    st.signal()
        .or(st.code().filter(|&c| c > 128).map(|c| c - 128))
}

/// Busybox's init as PID 1 of a namespace, with an inittab of ours: vmt
/// finds it as the guest's init would be found, and its way (SIGUSR2 for
/// a halt, SIGTERM for a reboot) makes it run the inittab's shutdown
/// action, kill everything and call reboot(2), which ends the namespace
/// with SIGINT (power off) or SIGHUP (reboot).
fn busybox_init_halts_and_reboots() {
    if let Some(why) = pid_namespaces() {
        println!("skipped: {why}");
        return;
    }
    let has_init = Command::new("busybox")
        .arg("--list")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "init")
        });
    if !has_init {
        println!("skipped: no busybox with init");
        return;
    }
    for (action, expected) in [(Power::Halt, libc::SIGINT), (Power::Reboot, libc::SIGHUP)] {
        let dir = temp_dir("busybox");
        std::fs::create_dir(dir.join("etc")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("etc/inittab"),
            format!(
                "::sysinit:/bin/sh -c 'echo up > {d}/up'\n\
                 ::shutdown:/bin/sh -c 'echo shutdown > {d}/shutdown'\n"
            ),
        )
        .unwrap();
        // Our inittab over /etc in a mount namespace of its own (no init
        // runs without it: its defaults would swapoff and umount).
        let ns = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["/bin/sh", "-c"])
            .arg(format!("mount --bind {d}/etc /etc && exec busybox init"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ns = Killed(ns);
        wait_until(Duration::from_secs(10), "busybox init's sysinit", || {
            dir.join("up").exists()
        });
        let init = child_of(ns.0.id()).expect("the namespace's init");
        // No systemd or sysvinit FIFO in this (empty) root; the init is
        // the namespace's PID 1, seen from here.
        let found = vmt::power::detect(&dir.join("root"), &PathBuf::from(format!("/proc/{init}")));
        assert_eq!(found, vmt::power::Init::Busybox);
        let way = vmt::power::way(&found, init, action);
        assert!(way.start().unwrap().is_none());
        let st = wait_for(
            &mut ns.0,
            Duration::from_secs(20),
            "busybox init's shutdown",
        );
        assert_eq!(ended_by(st), Some(expected), "{action:?}: {st:?}");
        assert!(
            dir.join("shutdown").exists(),
            "{action:?}: no shutdown action"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The helper: PID 1 of a namespace of its own, it takes the daemon's
/// last resort through the real system's `force_power`. It refuses unless
/// it is PID 1 of a PID namespace other than its starter's, so it can
/// never reboot the machine running the tests.
fn last_resort_helper(action: &str, starter_ns: &str) -> ! {
    let own_ns = std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .display()
        .to_string();
    if std::process::id() != 1 || own_ns == starter_ns {
        eprintln!("not PID 1 of a namespace of its own ({own_ns}): refusing");
        std::process::exit(2);
    }
    let action = if action == "halt" {
        Power::Halt
    } else {
        Power::Reboot
    };
    let mut sys = vmt::sys::LinuxSystem::default();
    sys.may_reboot = true;
    let e = sys.force_power(action);
    eprintln!("force_power returned: {e}");
    std::process::exit(3);
}

fn last_resort_in_a_pid_namespace() {
    if let Some(why) = pid_namespaces() {
        println!("skipped: {why}");
        return;
    }
    let our_ns = std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .display()
        .to_string();
    for (action, expected) in [("halt", libc::SIGINT), ("reboot", libc::SIGHUP)] {
        let ns = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(std::env::current_exe().unwrap())
            .args(["--last-resort", action, &our_ns])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ns = Killed(ns);
        let st = wait_for(&mut ns.0, Duration::from_secs(20), "the last resort");
        let mut err = String::new();
        use std::io::Read;
        ns.0.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(ended_by(st), Some(expected), "{action}: {st:?} {err}");
    }
}
