//! The end-to-end harness: a real `vmd` on a socket of its own in a fresh
//! temporary directory, driven through the real `vmctl`, with real VMs
//! (`vmm` processes running the bare-metal test guests) on /dev/kvm.
//!
//! Every wait here is bounded, and every process a test starts is ended
//! when the test ends, whether it passed or not.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use api::v1::{VmState, VmStatus};

#[allow(unused_imports)] // not every test file boots VMs
pub use testguest::kvm_or_skip;

/// The absolute path of test guest `name`, as vm.conf text wants it.
pub fn guest(name: &str) -> String {
    testguest::path(name)
        .unwrap_or_else(|| panic!("no test guest {name}"))
        .display()
        .to_string()
}

pub fn vmd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmd"))
}

/// Where cargo put vmd, and so vmm and vmctl (other packages' binaries of
/// the same build).
fn bin_dir() -> PathBuf {
    vmd_bin()
        .parent()
        .expect("vmd has a directory")
        .to_path_buf()
}

pub fn vmm_bin() -> PathBuf {
    ensure_built();
    bin_dir().join("vmm")
}

pub fn vmctl_bin() -> PathBuf {
    ensure_built();
    bin_dir().join("vmctl")
}

/// Builds vmm and vmctl if they are not there (`cargo test -p vmd` alone
/// builds only vmd), once per test process, in vmd's profile and target
/// directory.
fn ensure_built() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = bin_dir();
        if dir.join("vmm").is_file() && dir.join("vmctl").is_file() {
            return;
        }
        let profile = dir
            .file_name()
            .and_then(|p| p.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target_dir = dir.parent().expect("profile dir has a parent");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "vmm", "-p", "vmctl"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!("building vmm and vmctl: {cmd:?}");
        let o = run_bounded(cmd, Duration::from_secs(600));
        assert_eq!(o.code, Some(0), "building vmm and vmctl failed: {o:?}");
        assert!(dir.join("vmm").is_file() && dir.join("vmctl").is_file());
    });
}

/// How a command ended.
pub struct Outcome {
    /// None if it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Waits for `child` at most `timeout`; None if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` (stdin /dev/null unless set) to completion; kills it and
/// fails the test if it takes longer than `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Outcome {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let o = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "{shown} did not finish within {timeout:?}; killed\n{o:?}"
    );
    o
}

/// Polls `cond` every 50 ms until it holds (true) or `timeout` passes
/// (false).
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// A process's state letter from /proc (Z: a zombie, done but unreaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold anything, so look after ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent pid of `pid`, from /proc.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether process `pid` runs a program file called `name` (which may
/// have been replaced since, by a rebuild: "name (deleted)").
fn is_named(pid: u32, name: &str) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let file = exe.file_name().unwrap_or_default().to_string_lossy();
    file == name || file.strip_suffix(" (deleted)") == Some(name)
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    process_exists(pid) && !matches!(proc_state(pid), Some('Z') | None)
}

pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we started (or our daemon started).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh empty directory, removed by the caller.
pub fn fresh_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmd-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    // Other users (the permission test's) must reach the socket inside.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A vmd of our own: `vmd -d -f DIR/vm.conf -s DIR/sock`.
pub struct TestDaemon {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub sock: PathBuf,
    log: PathBuf,
    /// The network namespace vmd runs in, if any.
    netns: Option<String>,
    child: Option<Child>,
    /// Every vmm pid seen in a status, to be sure none outlives the test.
    vmm_pids: std::sync::Mutex<Vec<u32>>,
    /// The VM process program vmd runs, if not the real `vmm`.
    vmm: Option<PathBuf>,
    /// Its directory and VMs were handed to another TestDaemon.
    handed_over: bool,
    /// More arguments for vmd.
    args: Vec<String>,
}

impl TestDaemon {
    /// Writes `conf` and starts vmd on it; returns once its socket
    /// accepts connections (fails the test after 10 s).
    pub fn start(conf: &str) -> TestDaemon {
        let dir = fresh_dir();
        std::fs::write(dir.join("vm.conf"), conf).expect("write vm.conf");
        TestDaemon::start_in(dir)
    }

    /// Starts vmd in an existing directory (conf written, socket path
    /// maybe occupied).
    pub fn start_in(dir: PathBuf) -> TestDaemon {
        TestDaemon::start_with_args(dir, &[])
    }

    /// Starts vmd with more arguments `args`, the configuration in `dir`.
    pub fn start_with_args(dir: PathBuf, args: &[&str]) -> TestDaemon {
        let d = TestDaemon {
            conf: dir.join("vm.conf"),
            sock: dir.join("sock"),
            log: dir.join("vmd.stderr"),
            dir,
            netns: None,
            child: None,
            vmm_pids: Default::default(),
            vmm: None,
            handed_over: false,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.launch()
    }

    /// Starts vmd running `vmm` as its VM process program (a stand-in
    /// for a VM process that misbehaves), the configuration in `dir`.
    pub fn start_with_vmm(dir: PathBuf, vmm: PathBuf) -> TestDaemon {
        let d = TestDaemon {
            conf: dir.join("vm.conf"),
            sock: dir.join("sock"),
            log: dir.join("vmd.stderr"),
            dir,
            netns: None,
            child: None,
            vmm_pids: Default::default(),
            vmm: Some(vmm),
            handed_over: false,
            args: Vec::new(),
        };
        d.launch()
    }

    /// Starts vmd inside network namespace `ns` (its bridges and taps are
    /// made there), the configuration already in `dir`.
    pub fn start_in_netns(dir: PathBuf, ns: &Netns) -> TestDaemon {
        let d = TestDaemon {
            conf: dir.join("vm.conf"),
            sock: dir.join("sock"),
            log: dir.join("vmd.stderr"),
            dir,
            netns: Some(ns.name().to_owned()),
            child: None,
            vmm_pids: Default::default(),
            vmm: None,
            handed_over: false,
            args: Vec::new(),
        };
        d.launch()
    }

    fn launch(mut self) -> TestDaemon {
        // vmm beside vmd is what vmd runs; make sure it is there.
        let vmm = self.vmm.clone().unwrap_or_else(vmm_bin);
        let log = File::create(&self.log).expect("create the vmd log");
        // `ip netns exec` enters the namespace and execs vmd (same pid).
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(vmd_bin());
                c
            }
            None => Command::new(vmd_bin()),
        };
        let child = cmd
            .arg("-d")
            .arg("-f")
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.sock)
            .args(&self.args)
            .env("VMD_VMM", &vmm)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn vmd");
        self.child = Some(child);
        let up = poll(Duration::from_secs(10), || {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vmd exited at start ({s}):\n{}", self.log());
            }
            UnixStream::connect(&self.sock).is_ok()
        });
        assert!(up, "vmd did not listen within 10 s:\n{}", self.log());
        self
    }

    pub fn write_conf(&self, text: &str) {
        std::fs::write(&self.conf, text).expect("write vm.conf");
    }

    /// What vmd printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("vmd runs").id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            send_signal(c.id(), sig);
        }
    }

    /// Waits for vmd to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(self.child.as_mut().expect("vmd runs"), timeout)
    }

    /// A vmctl command on this daemon's socket, arguments still to add.
    pub fn vmctl_cmd(&self) -> Command {
        let mut c = Command::new(vmctl_bin());
        c.arg("-s")
            .arg(&self.sock)
            .env_remove("VMD_SOCKET")
            .stdin(Stdio::null());
        c
    }

    /// Runs vmctl (as root) to completion (at most 60 s).
    pub fn vmctl(&self, args: &[&str]) -> Outcome {
        let mut c = self.vmctl_cmd();
        c.args(args);
        run_bounded(c, Duration::from_secs(60))
    }

    /// Runs vmctl as another user.
    pub fn vmctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Outcome {
        let mut c = self.vmctl_cmd();
        // std drops root's supplementary groups when it sets the uid.
        c.args(args).uid(uid).gid(gid);
        run_bounded(c, Duration::from_secs(60))
    }

    /// Runs vmctl and fails the test unless it succeeds.
    pub fn vmctl_ok(&self, args: &[&str]) -> Outcome {
        let o = self.vmctl(args);
        assert!(o.ok(), "vmctl {args:?} failed: {o:?}\nvmd:\n{}", self.log());
        o
    }

    /// `vmctl --json status`, parsed.
    pub fn status(&self) -> Vec<VmStatus> {
        let o = self.vmctl_ok(&["--json", "status"]);
        let vms: Vec<VmStatus> = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}:\n{}", o.stdout));
        let mut seen = self.vmm_pids.lock().unwrap_or_else(|e| e.into_inner());
        for p in vms.iter().filter_map(|v| v.pid) {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        vms
    }

    /// VM `name` from `status --json` (fails the test if it is not there).
    pub fn vm(&self, name: &str) -> VmStatus {
        let vms = self.status();
        vms.iter()
            .find(|v| v.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no vm {name} in {vms:#?}"))
    }

    /// Polls `status --json` until `cond` holds; fails the test, saying
    /// it was waiting for `what`, after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&[VmStatus]) -> bool,
    ) -> Vec<VmStatus> {
        let start = Instant::now();
        let mut last = Vec::new();
        let ok = poll(timeout, || {
            last = self.status();
            cond(&last)
        });
        assert!(
            ok,
            "timed out after {:?} waiting for {what}; last status:\n{last:#?}\nvmd:\n{}",
            start.elapsed(),
            self.log()
        );
        last
    }

    /// Polls until VM `name` satisfies `cond`; returns it.
    pub fn wait_vm(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&VmStatus) -> bool,
    ) -> VmStatus {
        let vms = self.wait_until(&format!("vm {name}: {what}"), timeout, |vms| {
            vms.iter().any(|v| v.name == name && cond(v))
        });
        vms.into_iter().find(|v| v.name == name).expect("found")
    }

    /// Waits until VM `name` runs and its guest tools have reported in
    /// (hostname known).
    pub fn wait_running(&self, name: &str) -> VmStatus {
        self.wait_vm(name, "running", Duration::from_secs(20), |v| {
            v.state == VmState::Running && v.pid.is_some() && v.tty.is_some()
        })
    }

    /// Waits until VM `name` has a hostname from its guest tools.
    pub fn wait_tools(&self, name: &str) -> VmStatus {
        self.wait_vm(
            name,
            "running with guest tools",
            Duration::from_secs(20),
            |v| v.state == VmState::Running && v.hostname.is_some(),
        )
    }

    /// Ends vmd with `sig` (SIGKILL, or SIGUSR2: both leave its VMs
    /// running), waits for it to exit (at most 40 s) and hands back its
    /// directory and the VM processes it was seen to run, for a vmd
    /// started there next (`start_in`, then `remember_vmms`): this one
    /// removes and kills nothing any more.
    pub fn end_leaving_vms(mut self, sig: libc::c_int) -> (PathBuf, Vec<u32>, ExitStatus) {
        let _ = self.status();
        self.signal(sig);
        let st = self.wait_exit(Duration::from_secs(40));
        let st = st.unwrap_or_else(|| panic!("vmd did not exit on signal {sig}:\n{}", self.log()));
        self.handed_over = true;
        let pids = self
            .vmm_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.dir.clone(), pids, st)
    }

    /// VM processes to kill when this ends, as those it was seen to run.
    pub fn remember_vmms(&self, pids: &[u32]) {
        self.vmm_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(pids);
    }

    fn kill_vmms(&self) {
        let vmd = self.child.as_ref().map(|c| c.id());
        let pids = self
            .vmm_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for pid in pids {
            // Only our daemon's children (or orphans of it, reparented):
            // never some process that reused the pid.
            let Some(parent) = ppid(pid) else { continue };
            let ours = Some(parent) == vmd || !is_named(parent, "vmd");
            if ours && is_named(pid, "vmm") {
                send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        // Learn the VMs still running (bounded: the daemon may be wedged).
        if self.child.is_some() && UnixStream::connect(&self.sock).is_ok() {
            let mut c = self.vmctl_cmd();
            c.args(["--json", "status"]);
            if let Ok(mut child) = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
                let out = drain(child.stdout.take().expect("piped"));
                if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                if let Ok(vms) =
                    serde_json::from_str::<Vec<VmStatus>>(&out.join().unwrap_or_default())
                {
                    let mut seen = self.vmm_pids.lock().unwrap_or_else(|e| e.into_inner());
                    for p in vms.iter().filter_map(|v| v.pid) {
                        if !seen.contains(&p) {
                            seen.push(p);
                        }
                    }
                }
            }
        }
        // VMs first: a graceful stop of a guest that ignores it would take
        // its whole grace period.
        self.kill_vmms();
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                send_signal(child.id(), libc::SIGTERM);
                if wait_timeout(child, Duration::from_secs(10)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // Any VM started since we looked is orphaned now (vmd gone) and
        // powers itself off; kill those we know of anyway.
        self.kill_vmms();
        if std::thread::panicking() {
            eprintln!("--- vmd log ({})\n{}---", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pty pair: the test holds the master; the slave is for a child's stdio.
pub struct Pty {
    pub master: File,
    pub slave_path: String,
}

impl Pty {
    pub fn open() -> Pty {
        // SAFETY: the posix_openpt sequence; every result is checked.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = File::from_raw_fd(fd);
            assert!(
                libc::grantpt(fd) == 0 && libc::unlockpt(fd) == 0,
                "grantpt/unlockpt: {}",
                std::io::Error::last_os_error()
            );
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
            let slave_path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned();
            Pty { master, slave_path }
        }
    }

    /// A new descriptor of the slave side.
    pub fn slave(&self) -> File {
        open_noctty(&self.slave_path).expect("open the pty slave")
    }

    pub fn write(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).expect("write to the pty");
    }
}

/// Opens a terminal read-write without making it our controlling one.
pub fn open_noctty(path: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Reads from `f` (a terminal) into `seen` until `seen` satisfies `pred`
/// (true), `timeout` passes or the other side is gone (false).
pub fn read_until(
    f: &File,
    seen: &mut String,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        if pred(seen) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n <= 0 {
            continue;
        }
        // SAFETY: buf is valid for its length.
        let r = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            // EIO on a master: no slave open any more; EOF elsewhere.
            return pred(seen);
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..r as usize]));
    }
}

/// One HTTP/1.1 exchange on vmd's socket, the request given raw: the
/// status (None if the connection closed without an answer) and body.
pub fn http_raw(sock: &Path, request: &[u8]) -> std::io::Result<(Option<u16>, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut got = Vec::new();
    // A timeout or reset ends what there is to read.
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Ok((None, text));
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A request with a JSON (or any) body, `Connection: close`.
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(Option<u16>, String)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("Content-Length: 0\r\n\r\n");
    }
    http_raw(sock, req.as_bytes())
}

/// uid and gid of user `name`, if there is one.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter; the buffers are ours.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    (rc == 0 && !res.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// Dup of an fd as a Stdio (for a child's stdin/stdout on a pty).
pub fn stdio_of(f: &File) -> Stdio {
    let fd: OwnedFd = f.try_clone().expect("dup").into();
    Stdio::from(fd)
}

/// A network namespace of the test's own (`ip netns add`), deleted on drop
/// (also when the test fails): bridges, taps and addresses made inside it
/// never touch the host's interfaces.
pub struct Netns(String);

impl Netns {
    /// None (the test skips) where namespaces cannot be made; under CI
    /// that fails the test instead.
    pub fn new(tag: &str) -> Option<Netns> {
        let name = format!("vmdtest-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "network namespaces (ip netns, root) are required under CI"
            );
            eprintln!("skipping: cannot create a network namespace");
            return None;
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ip -n NS ARGS`; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .expect("run ip");
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Whether link `name` exists in the namespace, and its `ip -d link`
    /// line if so.
    pub fn link(&self, name: &str) -> Option<String> {
        let o = Command::new("ip")
            .args(["-n", &self.0, "-d", "-o", "link", "show", "dev", name])
            .output()
            .expect("run ip");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// A UDP socket bound to `addr` inside the namespace (a socket stays in
    /// the namespace it was made in, whichever thread uses it).
    pub fn udp(&self, addr: &str) -> std::net::UdpSocket {
        let path = format!("/var/run/netns/{}", self.0);
        let addr = addr.to_owned();
        std::thread::spawn(move || {
            let f = File::open(&path).expect("open the namespace");
            // SAFETY: setns on an open namespace fd, in this thread only.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::UdpSocket::bind(&addr).expect("bind in the namespace")
        })
        .join()
        .expect("socket thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The unprivileged user the permission and connection tests act as.
pub const USER: &str = "vmdtest";

/// Creates the system user `vmdtest` if it is missing; its (uid, gid).
pub fn test_user() -> (u32, u32) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if user_ids(USER).is_some() {
            return;
        }
        let useradd = |name: &str| {
            let mut c = Command::new(name);
            c.args(["-r", "-M", "-s", "/usr/sbin/nologin", USER]);
            run_bounded(c, Duration::from_secs(60))
        };
        let have_useradd = Command::new("useradd").arg("--help").output().is_ok();
        if !have_useradd {
            // Debian keeps useradd in `passwd`.
            let mut c = Command::new("apt-get");
            c.args(["install", "-y", "-q", "passwd"])
                .env("DEBIAN_FRONTEND", "noninteractive");
            let o = run_bounded(c, Duration::from_secs(300));
            assert!(o.ok(), "apt-get install passwd: {o:?}");
        }
        let o = useradd("useradd");
        // Another test process may have made it meanwhile.
        assert!(o.ok() || user_ids(USER).is_some(), "useradd {USER}: {o:?}");
    });
    user_ids(USER).expect("the test user exists")
}

/// vmctl run as `uid`:`gid` against `d`. The user runs its own copy of
/// vmctl: the build tree need not be open to it.
pub fn user_vmctl(d: &TestDaemon, uid: u32, gid: u32) -> impl Fn(&[&str]) -> Outcome + '_ {
    let vmctl = d.dir.join("vmctl");
    std::fs::copy(vmctl_bin(), &vmctl).unwrap();
    // Another test thread that forks while the copy is open for writing
    // holds that descriptor until its child execs: running the copy fails
    // with ETXTBSY until then (a few ms).
    for _ in 0..200 {
        match Command::new(&vmctl).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => break,
        }
    }
    move |args: &[&str]| {
        let mut c = Command::new(&vmctl);
        c.arg("-s")
            .arg(&d.sock)
            .args(args)
            .env_remove("VMD_SOCKET")
            .stdin(std::process::Stdio::null());
        std::os::unix::process::CommandExt::uid(&mut c, uid);
        std::os::unix::process::CommandExt::gid(&mut c, gid);
        run_bounded(c, Duration::from_secs(60))
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no side effects.
    unsafe { libc::geteuid() == 0 }
}
