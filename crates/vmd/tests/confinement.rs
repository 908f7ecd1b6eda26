//! The VM process's confinement (issue 12): what a guest that took over
//! its VM process could do from there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// `Name:` line of /proc/PID/status, its value.
fn status_field(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn namespace(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

/// A VM process vmd starts runs as a uid and gid of its own (not 0, not
/// another VM's), with no capabilities, no_new_privs, a seccomp filter, an
/// empty root and namespaces of its own, but for the network namespace,
/// which VM processes share: not the host's, and empty.
#[test]
fn vm_processes_run_confined() {
    if !kvm_or_skip() {
        return;
    }
    let tools = guest("tools");
    let d = TestDaemon::start(&format!(
        "vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\nvm \"b\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n"
    ));
    let a = d.wait_tools("a");
    let b = d.wait_tools("b");
    let mut uids = Vec::new();
    for vm in [&a, &b] {
        let pid = vm.pid.expect("a pid");
        let uid = status_field(pid, "Uid");
        let gid = status_field(pid, "Gid");
        let want = format!("{}", 0x7f00_0000 + vm.id);
        assert_eq!(uid, [want.as_str(); 4].join("\t"), "{}", vm.name);
        assert_eq!(gid, [want.as_str(); 4].join("\t"), "{}", vm.name);
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, "Seccomp"), "2");
        // Every thread, not only the first.
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = task.unwrap().file_name();
            let s =
                std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", t.to_string_lossy()))
                    .unwrap();
            assert!(s.contains("Seccomp:\t2"), "thread {t:?}: {s}");
            assert!(s.contains("NoNewPrivs:\t1"), "thread {t:?}: {s}");
        }
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .collect();
        assert!(root.is_empty(), "{}: its root holds {root:?}", vm.name);
        // Its mount namespace holds nothing it can reach but that root: a
        // tmpfs, read-only.
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let seen: Vec<(&str, &str, &str)> = mounts
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let after = f.iter().position(|&x| x == "-").unwrap();
                (f[4], f[5], f[after + 1])
            })
            .collect();
        assert_eq!(seen.len(), 1, "{}: {mounts}", vm.name);
        let (at, opts, fs) = seen[0];
        assert_eq!((at, fs), ("/", "tmpfs"), "{}: {mounts}", vm.name);
        assert!(opts.split(',').any(|o| o == "ro"), "{}: {mounts}", vm.name);
        for ns in ["mnt", "net", "ipc", "uts", "pid"] {
            assert_ne!(
                namespace(&pid.to_string(), ns),
                namespace("self", ns),
                "{}: {ns} namespace",
                vm.name
            );
        }
        // The pid vmd shows is the VM process's, PID 1 of its namespace
        // (it sees no other process); vmd adopted it (the process vmd
        // started forked it and exited).
        assert_eq!(
            status_field(pid, "NSpid"),
            format!("{pid}\t1"),
            "{}",
            vm.name
        );
        assert_eq!(
            status_field(pid, "PPid"),
            d.pid().to_string(),
            "{}: vmd is its parent",
            vm.name
        );
        // vmd started it in its PID namespace, handed it the shared
        // network one and the empty root to copy (not the fallbacks: a
        // fork of its own, namespaces of its own making).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        for want in [&b"--pid-ns"[..], b"--netns", b"--mntns"] {
            assert!(
                args.contains(&want),
                "{}: {:?}",
                vm.name,
                String::from_utf8_lossy(&cmdline)
            );
        }
        // Its network namespace has no interface but a loopback one.
        let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "{}: {dev}", vm.name);
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1]);
    let (pa, pb) = (a.pid.unwrap().to_string(), b.pid.unwrap().to_string());
    assert_eq!(namespace(&pa, "net"), namespace(&pb, "net"));
    for ns in ["mnt", "ipc", "uts", "pid"] {
        assert_ne!(namespace(&pa, ns), namespace(&pb, ns), "{ns} namespace");
    }
    // Confined, it still does what a VM does: the guest tools answer, a
    // graceful stop goes through them.
    d.vmctl_ok(&["stop", "-w", "a"]);
    assert_eq!(
        d.vm("a").last_exit.as_deref(),
        Some("halted by guest tools")
    );
    // PID 1 of its namespace takes the stop signals it handles from the
    // host too: SIGTERM asks the guest to power off, as vmctl stop does.
    let pid = b.pid.expect("a pid");
    send_signal(pid, libc::SIGTERM);
    let b = d.wait_vm("b", "stopped by SIGTERM", Duration::from_secs(30), |v| {
        v.pid.is_none()
    });
    assert_eq!(b.last_exit.as_deref(), Some("halted by guest tools"));
    assert!(!process_exists(pid));
}

/// A shared object that stands for code a guest got to run in the VM
/// process: on SIGUSR1 it opens /etc/shadow and says whether it could.
const ESCAPE_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
/* open and write are async-signal-safe; whichever thread of the VM
   process takes the signal runs this, long after it was confined. */
static void on_usr1(int s) {
    (void)s;
    int fd = open("/etc/shadow", O_RDONLY);
    if (fd >= 0)
        write(2, "ESCAPED fd=ok\n", 14);
    else
        write(2, "ESCAPED fd=-1\n", 14);
}
__attribute__((constructor)) static void init(void) {
    signal(SIGUSR1, on_usr1);
}
"#;

fn build_escape(dir: &Path) -> PathBuf {
    let src = dir.join("escape.c");
    let so = dir.join("escape.so");
    std::fs::write(&src, ESCAPE_C).unwrap();
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-pthread", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("cc (build-essential) is needed for this test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    so
}

/// The compromised VM process, confined by vmd, is killed by its seccomp
/// filter when it tries to open a file, and vmd says so; the same code in
/// an unconfined VM process opens /etc/shadow (the test can fail).
#[test]
fn a_compromised_vm_process_is_killed_by_seccomp() {
    if !kvm_or_skip() {
        return;
    }
    let dir = fresh_dir();
    let so = build_escape(&dir);
    let tools = guest("tools");

    // Unconfined, by hand: the escape works.
    let mut vmm = Command::new(vmm_bin());
    vmm.args(["-k", &tools, "-m", "32M", "-s", "none"])
        .env("LD_PRELOAD", &so)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = vmm.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    send_signal(child.id(), libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    send_signal(child.id(), libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ESCAPED fd=ok"), "{err}");

    // Confined with the seccomp filter only logging: the open goes through
    // the filter and still finds nothing (empty root, landlock).
    let mut vmm = Command::new(vmm_bin());
    vmm.args(["-k", &tools, "-m", "32M", "-s", "none"])
        .args(["--confine=2130706000:2130706000", "--seccomp=log"])
        .env("LD_PRELOAD", &so)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = vmm.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    send_signal(child.id(), libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    send_signal(child.id(), libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ESCAPED fd=-1"), "{err}");

    // Under vmd: confined.
    let wrapper = dir.join("vmm-compromised");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nLD_PRELOAD={} exec {} \"$@\"\n",
            so.display(),
            vmm_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        format!("vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n"),
    )
    .unwrap();
    let d = TestDaemon::start_with_vmm(dir, wrapper);
    let vm = d.wait_tools("a");
    let pid = vm.pid.expect("a pid");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    send_signal(pid, libc::SIGUSR1);
    let vm = d.wait_vm("a", "the VM process killed", Duration::from_secs(20), |v| {
        v.pid.is_none()
    });
    let why = vm.last_exit.unwrap_or_default();
    assert!(why.contains("signal 31"), "{why}\n{}", d.log());
    assert!(!d.log().contains("ESCAPED"), "{}", d.log());
    assert!(!process_exists(pid));
}

/// Stands for code a guest got to run in one thread of the VM process:
/// on SIGUSR1, the thread that takes it calls recvmsg(2), which the
/// process-wide filter allows (the control thread takes vmd's
/// descriptors with it) and a vCPU thread's filter does not.
const THREAD_CALL_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void on_usr1(int s) {
    (void)s;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    long r = recvmsg(-1, &m, MSG_DONTWAIT);
    if (r < 0 && errno == EBADF)
        write(2, "RECVMSG EBADF\n", 14);
    else
        write(2, "RECVMSG other\n", 14);
}
__attribute__((constructor)) static void init(void) {
    signal(SIGUSR1, on_usr1);
}
"#;

/// The threads of process `pid` by name (`vcpu0`, `control`, ...), with
/// their tid and how many seccomp filters each has.
fn threads(pid: u32) -> Vec<(String, i32, u32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.file_name().to_string_lossy().into_owned();
            let dir = format!("/proc/{pid}/task/{t}");
            let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
            let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
            let filters = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))?
                .trim()
                .parse()
                .ok()?;
            Some((comm.trim().to_owned(), t.parse().ok()?, filters))
        })
        .collect()
}

fn signal_thread(pid: u32, tid: i32, sig: libc::c_int) {
    // SAFETY: tgkill(2) on a thread of a process our daemon started.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid, sig) };
    assert_eq!(
        rc,
        0,
        "tgkill {pid} {tid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Each thread kind of a confined VM process is held to a filter of its
/// own on top of the process's: the main, vCPU, control, signal and
/// console threads have one filter more than the spawner of threads, and
/// a call the process's filter lets through kills the process when a
/// vCPU thread makes it, not when the control thread does.
#[test]
fn a_vcpu_thread_is_held_to_a_narrower_filter() {
    if !kvm_or_skip() {
        return;
    }
    let dir = fresh_dir();
    let src = dir.join("threadcall.c");
    let so = dir.join("threadcall.so");
    std::fs::write(&src, THREAD_CALL_C).unwrap();
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-pthread", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("cc (build-essential) is needed for this test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wrapper = dir.join("vmm-compromised");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nLD_PRELOAD={} exec {} \"$@\"\n",
            so.display(),
            vmm_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tools = guest("tools");
    std::fs::write(
        dir.join("vm.conf"),
        format!("vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n\tcpus 2\n}}\n"),
    )
    .unwrap();
    let d = TestDaemon::start_with_vmm(dir, wrapper);
    let vm = d.wait_tools("a");
    let pid = vm.pid.expect("a pid");

    let ts = threads(pid);
    let of = |name: &str| {
        ts.iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no thread {name} in {ts:?}"))
    };
    // The spawner of threads has the process's filter alone.
    let base = of("spawner").2;
    assert!(base >= 1, "{ts:?}");
    let main = ts
        .iter()
        .find(|t| t.1 == pid as i32)
        .expect("the main thread");
    assert_eq!(main.2, base + 1, "the main thread: {ts:?}");
    for name in ["vcpu0", "vcpu1", "control", "signals", "console-in"] {
        assert_eq!(of(name).2, base + 1, "{name}: {ts:?}");
    }

    // From the control thread: allowed, the VM runs on.
    signal_thread(pid, of("control").1, libc::SIGUSR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log().contains("RECVMSG") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("RECVMSG EBADF"), "{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(process_exists(pid));
    assert_eq!(d.vm("a").pid, Some(pid));

    // From a vCPU thread: the process is killed.
    signal_thread(pid, of("vcpu0").1, libc::SIGUSR1);
    let vm = d.wait_vm("a", "the VM process killed", Duration::from_secs(20), |v| {
        v.pid.is_none()
    });
    let why = vm.last_exit.unwrap_or_default();
    assert!(why.contains("signal 31"), "{why}\n{}", d.log());
    assert_eq!(d.log().matches("RECVMSG").count(), 1, "{}", d.log());
    assert!(!process_exists(pid));
}
