//! VM processes that hang: one SIGSTOPped (as a debugger or an operator
//! can leave it), and one given a FIFO to boot (an open() that would
//! block for ever). `vmctl stop -f` still stops such a VM, vmd's shutdown
//! keeps its bound and stops the healthy VMs without waiting for the hung
//! one, and a path that is not a regular file never reaches a blocking
//! open. Real vmd, vmm and vmctl; real guests on /dev/kvm.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A vm block for the tools guest (answers OS_Halt by powering off).
fn tools_vm(name: &str, extra: &str) -> String {
    format!(
        "vm \"{name}\" {{\n\tkernel \"{}\"\n\tcmdline \"hostname={name} poll_ms=200\"\n\tmemory 32M\n{extra}}}\n",
        guest("tools")
    )
}

/// vmd.8: "vmd exits within 35 seconds" of SIGTERM.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(35);

/// The vmm processes whose parent is `vmd` (live ones: zombies do not
/// count), by /proc.
fn vmm_children(vmd: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        let parent = f.get(1).and_then(|p| p.parse::<u32>().ok());
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        if parent == Some(vmd) && name.starts_with("vmm") && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// `vmctl stop -f` of a VM whose process is stopped (SIGSTOP): the process
/// cannot answer, so vmd kills it, and the stop succeeds promptly with
/// the VM stopped and its last exit saying why.
#[test]
fn stop_f_kills_a_vm_process_that_does_not_answer() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&tools_vm("web1", ""));
    let pid = d.wait_running("web1").pid.unwrap();
    send_signal(pid, libc::SIGSTOP);

    let t = Instant::now();
    let o = d.vmctl(&["stop", "-f", "web1"]);
    let took = t.elapsed();
    assert!(o.ok(), "{o:?}\nvmd:\n{}", d.log());
    assert!(took < Duration::from_secs(8), "stop -f took {took:?}");
    let web = d.vm("web1");
    assert_eq!(web.state, VmState::Stopped, "{web:#?}");
    assert_eq!(web.pid, None, "{web:#?}");
    let why = web.last_exit.clone().unwrap_or_default();
    assert!(
        why.contains("killed") && why.contains("did not answer"),
        "last exit: {why:?}"
    );
    assert!(
        poll(Duration::from_secs(2), || !alive(pid)),
        "vmm {pid} still there"
    );

    // The VM starts again as usual, and a forced stop of a healthy one is
    // a clean power-off, not a kill.
    d.vmctl_ok(&["start", "web1"]);
    d.wait_running("web1");
    d.vmctl_ok(&["stop", "-f", "-w", "web1"]);
    assert_eq!(
        d.vm("web1").last_exit.as_deref(),
        Some("powered off by the host")
    );
}

/// SIGTERM with one hung VM process (SIGSTOPped) and two healthy VMs:
/// the healthy ones halt at once (they do not wait behind the hung one,
/// which comes first), the hung one is killed, and vmd exits within the
/// bound vmd.8 promises, leaving no VM process behind.
#[test]
fn sigterm_with_a_hung_vm_process_keeps_its_bound() {
    if !kvm_or_skip() {
        return;
    }
    // All three at once, whatever the number of CPUs here.
    let conf = format!(
        "staggered start parallel 3 delay 0\n{}{}{}",
        tools_vm("hung", ""),
        tools_vm("web1", ""),
        tools_vm("web2", "")
    );
    let mut d = TestDaemon::start(&conf);
    let hung = d.wait_running("hung").pid.unwrap();
    let web1 = d.wait_tools("web1").pid.unwrap();
    let web2 = d.wait_tools("web2").pid.unwrap();
    send_signal(hung, libc::SIGSTOP);

    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(SHUTDOWN_BOUND + Duration::from_secs(10));
    let took = t.elapsed();
    let log = d.log();
    assert!(
        status.is_some(),
        "vmd still runs {took:?} after SIGTERM:\n{log}"
    );
    assert_eq!(status.unwrap().code(), Some(0), "{log}");
    assert!(took < SHUTDOWN_BOUND, "SIGTERM took {took:?}:\n{log}");
    for pid in [hung, web1, web2] {
        assert!(
            poll(Duration::from_secs(2), || !alive(pid)),
            "vmm {pid} outlived vmd:\n{log}"
        );
    }
    // The healthy guests were asked and halted, before the hung VM was
    // given up on: in parallel, not one after the other.
    let lines: Vec<&str> = log.lines().collect();
    let at = |vm: &str, what: &str| {
        lines
            .iter()
            .position(|l| l.contains(&format!("vm={vm}")) && l.contains(what))
            .unwrap_or_else(|| panic!("no line for {vm} with {what:?} in:\n{log}"))
    };
    let killed = at("hung", "stopped: killed");
    assert!(
        log.contains("did not answer"),
        "the log does not say why hung was killed:\n{log}"
    );
    for vm in ["web1", "web2"] {
        let halted = at(vm, "stopped: halted by guest tools");
        assert!(halted < killed, "{vm} waited for the hung VM:\n{log}");
    }
}

/// A FIFO, a directory or a device given as a kernel, BIOS or initrd (or
/// a FIFO as a disk) is refused at once with a message naming it; no
/// VM process is left blocked in open().
#[test]
fn boot_files_that_are_not_regular_files_are_refused() {
    if !kvm_or_skip() {
        return;
    }
    let dir = fresh_dir();
    let fifo = dir.join("kernel.fifo");
    mkfifo(&fifo);
    let subdir = dir.join("a-directory");
    std::fs::create_dir(&subdir).unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        format!(
            "vm \"rd\" {{\n\tdisable\n\tkernel \"{}\"\n\tinitrd \"{}\"\n\tmemory 32M\n}}\n\
             vm \"rdfifo\" {{\n\tdisable\n\tkernel \"{}\"\n\tinitrd \"{}\"\n\tmemory 32M\n}}\n",
            guest("tools"),
            subdir.display(),
            guest("tools"),
            fifo.display(),
        ),
    )
    .unwrap();
    let d = TestDaemon::start_in(dir.clone());
    let fifo_s = fifo.display().to_string();
    let subdir_s = subdir.display().to_string();
    let tools = guest("tools");

    let cases: [(&str, Vec<&str>, &str, &str); 6] = [
        (
            "fifo1",
            vec!["start", "-b", &fifo_s, "-m", "32M", "fifo1"],
            &fifo_s,
            "is a FIFO, not a regular file",
        ),
        (
            "dir1",
            vec!["start", "-b", &subdir_s, "-m", "32M", "dir1"],
            &subdir_s,
            "is a directory, not a regular file",
        ),
        (
            "null1",
            vec!["start", "-b", "/dev/null", "-m", "32M", "null1"],
            "/dev/null",
            "is a character device, not a regular file",
        ),
        (
            "rd",
            vec!["start", "rd"],
            &subdir_s,
            "is a directory, not a regular file",
        ),
        (
            "rdfifo",
            vec!["start", "rdfifo"],
            &fifo_s,
            "is a FIFO, not a regular file",
        ),
        (
            "disk1",
            vec!["start", "-b", &tools, "-d", &fifo_s, "-m", "32M", "disk1"],
            &fifo_s,
            "is a FIFO, not a disk image",
        ),
    ];
    for (name, args, path, why) in cases {
        let mut c = d.vmctl_cmd();
        c.args(&args);
        let t = Instant::now();
        let o = run_bounded(c, Duration::from_secs(30));
        let took = t.elapsed();
        assert_eq!(o.code, Some(1), "{name}: {o:?}\nvmd:\n{}", d.log());
        assert!(
            o.stderr.contains(path) && o.stderr.contains(why),
            "{name}: the message does not say {path}: {why}: {o:?}"
        );
        assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
        let vms = d.status();
        assert!(
            vms.iter().all(|v| v.name != name || v.pid.is_none()),
            "{name}: {vms:#?}"
        );
    }
    // No VM process is left, blocked or otherwise.
    assert!(
        poll(Duration::from_secs(2), || vmm_children(d.pid()).is_empty()),
        "VM processes left: {:?}",
        vmm_children(d.pid())
    );
}
