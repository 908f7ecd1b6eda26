//! `vmm --confine` run by hand (no vmd: no namespaces handed over): the
//! VM process makes its own empty root, forks into a PID namespace, and
//! runs the guest confined. vmd's way is tested in vmd's tests.

mod common;

use std::time::Duration;

use common::*;

fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {s}"))
        .trim()
        .to_owned()
}

#[test]
fn confined_by_hand_the_vm_process_has_an_empty_read_only_root() {
    if !kvm_or_skip() {
        return;
    }
    // --confine needs root, as vmd has.
    // SAFETY: a plain call.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let mut c = vmm();
    c.args(["--confine", "54321:54321", "-m", "32M", "-s", "stdio", "-k"])
        .arg(guest("tools"));
    let mut vm = Live::spawn(c);
    let up = vm.wait_for(Duration::from_secs(30), |l| l.contains("sent guest info"));
    let parent = vm.child.id();
    // The VM process: the child the process started by hand forked, PID 1
    // of its own namespace.
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child of {parent}: {children:?}"));
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    let (uid, nspid) = (status_field(pid, "Uid"), status_field(pid, "NSpid"));
    let transcript = vm.transcript();
    let stderr = vm.kill();
    let ctx = format!("{transcript}\n--- stderr\n{stderr}");
    assert!(up.is_some(), "the guest did not come up: {ctx}");
    assert_eq!(nspid, format!("{pid}\t1"), "{ctx}");
    assert!(uid.starts_with("54321\t54321"), "{uid}: {ctx}");
    assert!(root.is_empty(), "its root holds {root:?}");
    // Only its root, a read-only tmpfs: none of the host's mounts.
    let lines: Vec<Vec<&str>> = mounts.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 1, "{mounts}");
    let f = &lines[0];
    let fs = f[f.iter().position(|&x| x == "-").unwrap() + 1];
    assert_eq!((f[4], fs), ("/", "tmpfs"), "{mounts}");
    assert!(f[5].split(',').any(|o| o == "ro"), "{mounts}");
}
