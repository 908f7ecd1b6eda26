//! Each VM process in a cgroup of its own (issue 12, Confinement): its
//! memory bounded by the guest's RAM plus a bounded overhead, its tasks by
//! its vCPUs; the cgroup goes with the VM, whichever vmd sees it end.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The memory and pids cgroup directories of process `pid` (the same one
/// on cgroup v2), from /proc/PID/cgroup; None where it is in none.
fn cgroups_of(pid: u32) -> Option<(PathBuf, PathBuf)> {
    cgroups_in(&format!("/proc/{pid}"))
}

/// As [`cgroups_of`], for the process or thread whose /proc directory is
/// `proc`.
fn cgroups_in(proc: &str) -> Option<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(format!("{proc}/cgroup")).ok()?;
    let v1 = |ctrl: &str| {
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls.split(',').any(|c| c == ctrl).then(|| {
                Path::new("/sys/fs/cgroup")
                    .join(ctrl)
                    .join(path.trim_start_matches('/'))
            })
        })
    };
    if let (Some(m), Some(p)) = (v1("memory"), v1("pids")) {
        return Some((m, p));
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    Some((dir.clone(), dir))
}

/// Whether this host offers vmd cgroups to limit VMs with (as vmd finds
/// it: v1 memory and pids hierarchies, or v2 with both controllers).
fn host_has_cgroups() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        && Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory") && c.contains("pids"));
    v1 || v2
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The memory limit vmd(8) states for a VM of `ram` bytes.
fn memory_limit(ram: u64) -> u64 {
    ram + (64 << 20) + ram / 32
}

/// Checks VM `vm`'s process is in cgroups of its own, not vmd's, with
/// the limits vmd(8) states for `devices` disks and interfaces; returns
/// them.
fn check_limited(d: &TestDaemon, vm: &VmStatus, devices: u64) -> (PathBuf, PathBuf) {
    let pid = vm.pid.expect("a pid");
    let (mem, pids) = cgroups_of(pid).expect("the VM process's cgroups");
    let (vmd_mem, vmd_pids) = cgroups_of(d.pid()).expect("vmd's cgroups");
    let leaf = format!("vm-{}", vm.id);
    for (cg, vmds) in [(&mem, &vmd_mem), (&pids, &vmd_pids)] {
        assert_eq!(
            cg.file_name().unwrap().to_str(),
            Some(leaf.as_str()),
            "{}",
            cg.display()
        );
        assert_ne!(cg, vmds, "the VM process is in vmd's cgroup");
        assert!(cg.is_dir(), "{}", cg.display());
    }
    let want = memory_limit(vm.maxmem);
    let v1 = mem.join("memory.limit_in_bytes");
    if v1.exists() {
        assert_eq!(read(&v1), want.to_string(), "{}", v1.display());
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(read(&memsw), (2 * want).to_string(), "{}", memsw.display());
        }
    } else {
        assert_eq!(read(&mem.join("memory.max")), want.to_string());
        let swap = mem.join("memory.swap.max");
        if swap.exists() {
            assert_eq!(read(&swap), want.to_string());
        }
    }
    let max: u64 = u64::from(vm.vcpus) + devices + 32;
    assert_eq!(read(&pids.join("pids.max")), max.to_string());
    // Every thread of it is in them (each is born where the thread that
    // started it was, and the VM process moved its only one), counted
    // there, and fits.
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        if let Some(of_thread) = cgroups_in(&t.to_string_lossy()) {
            assert_eq!(of_thread, (mem.clone(), pids.clone()), "{}", t.display());
        }
        threads += 1;
    }
    let current: u64 = read(&pids.join("pids.current")).parse().unwrap();
    assert!(
        current >= threads && current <= max,
        "{current} tasks of {threads}, max {max}"
    );
    (mem, pids)
}

/// A configuration of two tools guests: "a" started with vmd, "b" not.
fn a_started_b_not(tools: &str) -> String {
    format!(
        "vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n\
         vm \"b\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n"
    )
}

fn gone(dirs: &[&Path]) -> bool {
    poll(Duration::from_secs(10), || dirs.iter().all(|d| !d.exists()))
}

/// Two VMs, each in its cgroups with its limits; a stopped VM's cgroups
/// go, and vmd's exit leaves nothing behind.
#[test]
fn vm_processes_are_limited() {
    if !kvm_or_skip() || !is_root() {
        return;
    }
    if !host_has_cgroups() {
        eprintln!("this host offers no memory and pids cgroups: nothing to test");
        return;
    }
    let tools = guest("tools");
    let dir = fresh_dir();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        format!(
            "vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n\tcpus 2\n}}\n\
             vm \"b\" {{\n\tkernel \"{tools}\"\n\tmemory 100M\n\tdisk \"{}\"\n}}\n",
            disk.display()
        ),
    )
    .unwrap();
    let d = TestDaemon::start_in(dir);
    let a = d.wait_tools("a");
    let b = d.wait_tools("b");
    let (a_mem, a_pids) = check_limited(&d, &a, 0);
    let (b_mem, b_pids) = check_limited(&d, &b, 1);
    assert_ne!(a_mem, b_mem);
    // It moved itself in and let go of the files vmd handed it for that:
    // with one open, a compromised VM process could move any process of
    // the host into its cgroup (the file was opened by root).
    for vm in [&a, &b] {
        let pid = vm.pid.expect("a pid");
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert!(
                !target.to_string_lossy().contains("cgroup"),
                "vm {}: still holds {}",
                vm.name,
                target.display()
            );
        }
    }
    // vmd's cgroups are under a directory of this daemon's own: another
    // vmd's VM 1 is not in the same cgroup.
    let parent = a_mem.parent().unwrap().to_path_buf();
    assert!(
        parent
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("d-"),
        "{}",
        parent.display()
    );
    d.vmctl_ok(&["stop", "-f", "a"]);
    assert!(
        gone(&[&a_mem, &a_pids]),
        "vm a's cgroups stay after it stopped"
    );
    assert!(b_mem.is_dir() && b_pids.is_dir());
    assert_eq!(d.vm("b").pid, b.pid);
    drop(d);
    assert!(
        gone(&[&b_mem, &b_pids, &parent]),
        "cgroups stay after vmd stopped"
    );
}

/// With --no-cgroups, the VM process stays in vmd's cgroups.
#[test]
fn no_cgroups_runs_vms_in_vmds() {
    if !kvm_or_skip() || !is_root() {
        return;
    }
    let tools = guest("tools");
    let dir = fresh_dir();
    std::fs::write(
        dir.join("vm.conf"),
        format!("vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n"),
    )
    .unwrap();
    let d = TestDaemon::start_with_args(dir, &["--no-cgroups"]);
    let a = d.wait_tools("a");
    assert_eq!(cgroups_of(a.pid.unwrap()), cgroups_of(d.pid()));
    assert!(d.log().contains("--no-cgroups"), "{}", d.log());
}

/// A VM left running by a vmd killed keeps its cgroups; the next vmd
/// removes them when it stops, and removes at once those of a VM that
/// ended while no vmd ran.
#[test]
fn cgroups_outlive_vmd_with_their_vm() {
    if !kvm_or_skip() || !is_root() || !host_has_cgroups() {
        return;
    }
    let tools = guest("tools");
    let d = TestDaemon::start(&a_started_b_not(&tools));
    // Not enabled: the next vmd does not start it again.
    d.vmctl_ok(&["start", "b"]);
    let a = d.wait_tools("a");
    let b = d.wait_tools("b");
    let (a_pid, b_pid) = (a.pid.unwrap(), b.pid.unwrap());
    let (a_mem, a_pids) = check_limited(&d, &a, 0);
    let (b_mem, b_pids) = check_limited(&d, &b, 0);
    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    // b ends while no vmd runs.
    send_signal(b_pid, libc::SIGKILL);
    assert!(poll(Duration::from_secs(10), || !process_exists(b_pid)));
    assert_eq!(cgroups_of(a_pid), Some((a_mem.clone(), a_pids.clone())));
    let d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    assert_eq!(d.wait_running("a").pid, Some(a_pid));
    assert!(gone(&[&b_mem, &b_pids]), "b's cgroups stay:\n{}", d.log());
    assert!(a_mem.is_dir() && a_pids.is_dir());
    assert_eq!(cgroups_of(a_pid), Some((a_mem.clone(), a_pids.clone())));
    d.vmctl_ok(&["stop", "-f", "a"]);
    assert!(gone(&[&a_mem, &a_pids]), "a's cgroups stay:\n{}", d.log());
}

/// A VM process that takes more memory than its cgroup allows is killed
/// by the kernel, and vmd says it ran out of memory. A guest alone cannot
/// make its VM process exceed RAM plus the overhead; one that found a flaw
/// in it could, and that is what the limit is for: here the limit is
/// lowered by hand below what the guest then writes to.
#[test]
fn a_vm_process_over_its_memory_limit_is_killed() {
    if !kvm_or_skip() || !is_root() || !host_has_cgroups() {
        return;
    }
    let tools = guest("tools");
    let d = TestDaemon::start(&format!(
        "vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 128M\n\tcmdline \"halt_touch=96\"\n}}\n"
    ));
    let a = d.wait_tools("a");
    let (mem, _) = check_limited(&d, &a, 0);
    let v1 = mem.join("memory.usage_in_bytes").exists();
    let usage: u64 = read(&mem.join(if v1 {
        "memory.usage_in_bytes"
    } else {
        "memory.current"
    }))
    .parse()
    .unwrap();
    let limit = (usage + (32 << 20)).to_string();
    let files: &[&str] = if v1 {
        &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    } else {
        &["memory.max", "memory.swap.max"]
    };
    for f in files {
        let p = mem.join(f);
        if p.exists() {
            let value = if *f == "memory.swap.max" {
                "0"
            } else {
                limit.as_str()
            };
            std::fs::write(&p, value).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    // Asked to halt, the guest writes to 96 MiB of its RAM first.
    let _ = d.vmctl(&["stop", "a"]);
    let a = d.wait_vm("a", "stopped", Duration::from_secs(60), |v| {
        v.state == VmState::Stopped
    });
    let why = a.last_exit.unwrap_or_default();
    assert!(
        why.starts_with("killed by signal 9: out of memory"),
        "{why}\n{}",
        d.log()
    );
    assert!(gone(&[&mem]), "its cgroup stays");
}

/// Two daemons at once, each with a VM 1: two cgroups, and the one that
/// goes takes only its own.
#[test]
fn two_daemons_never_share_a_cgroup() {
    if !kvm_or_skip() || !is_root() || !host_has_cgroups() {
        return;
    }
    let tools = guest("tools");
    let conf = format!("vm \"a\" {{\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n");
    let d1 = TestDaemon::start(&conf);
    let d2 = TestDaemon::start(&conf);
    let a1 = d1.wait_tools("a");
    let a2 = d2.wait_tools("a");
    assert_eq!((a1.id, a2.id), (1, 1));
    let (m1, p1) = check_limited(&d1, &a1, 0);
    let (m2, p2) = check_limited(&d2, &a2, 0);
    assert_ne!(m1, m2);
    assert_ne!(p1, p2);
    drop(d1);
    assert!(gone(&[&m1, &p1]));
    assert!(m2.is_dir() && p2.is_dir());
    assert_eq!(cgroups_of(a2.pid.unwrap()), Some((m2, p2)));
}

/// A VM whose cgroup cannot be made does not start, unlimited or
/// otherwise: a 500 that says why. Here a process sits in the cgroup the
/// VM's would be (as one a vmd never saw exit could), which vmd does not
/// take over.
#[test]
fn a_vm_whose_cgroup_cannot_be_made_does_not_start() {
    if !kvm_or_skip() || !is_root() || !host_has_cgroups() {
        return;
    }
    let tools = guest("tools");
    let d = TestDaemon::start(&a_started_b_not(&tools));
    let a = d.wait_tools("a");
    let (mem, _) = check_limited(&d, &a, 0);
    let taken = mem.parent().unwrap().join(format!("vm-{}", d.vm("b").id));
    std::fs::create_dir(&taken).unwrap();
    let mut squatter = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(taken.join("cgroup.procs"), squatter.id().to_string()).unwrap();
    let (code, body) = http(&d.sock, "POST", "/v1/vms", Some(r#"{"name":"b"}"#)).unwrap();
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_eq!(code, Some(500), "{body}");
    assert!(body.contains("cgroup") && body.contains("vm-"), "{body}");
    let b = d.vm("b");
    assert!(b.pid.is_none(), "{b:?}");
    assert!(poll(Duration::from_secs(10), || std::fs::remove_dir(
        &taken
    )
    .is_ok()));
    // Once it is free, b starts.
    d.vmctl_ok(&["start", "b"]);
    check_limited(&d, &d.wait_tools("b"), 0);
}
