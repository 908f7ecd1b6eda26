//! VMs outlive vmd: killed (SIGKILL) or told to leave them (SIGUSR2),
//! vmd exits and its VM processes run on; a vmd started next on the same
//! socket and state directory finds them again, lists them as they were
//! (ids, pids, consoles) and drives them (guestinfo, pause, stop) as its
//! own. Records of processes that are gone, or whose pid is another
//! process's now, are dropped, and such processes left alone. Real vmd,
//! vmm and vmctl; real guests (the tools guest) on /dev/kvm.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A vm block for the tools guest (answers OS_Halt by powering off),
/// with an address it reports as `guestinfo.ip` every 15 s.
fn tools_vm(name: &str, ip: &str) -> String {
    format!(
        "vm \"{name}\" {{\n\tkernel \"{}\"\n\tcmdline \"hostname={name} ip={ip}/24 poll_ms=200\"\n\tmemory 32M\n}}\n",
        guest("tools")
    )
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.join("sock.d")
}

fn record(dir: &Path, id: u32) -> PathBuf {
    state_dir(dir).join(format!("vm-{id}.json"))
}

/// Process `pid`'s process group, from /proc.
fn pgrp(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

fn by_name<'a>(vms: &'a [VmStatus], name: &str) -> &'a VmStatus {
    vms.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vm {name} in {vms:#?}"))
}

/// kill -9 of vmd leaves both VMs running, guests included (the guest
/// sets guestinfo.ip again while no vmd is there); a new vmd lists them
/// with the same ids, pids, consoles and interfaces, and stops one
/// gracefully through its guest tools, seeing it exit.
#[test]
fn vms_outlive_a_killed_vmd() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!("{}{}", tools_vm("a", "10.0.0.5"), tools_vm("b", "10.0.0.6"));
    let d = TestDaemon::start(&conf);
    d.wait_tools("a");
    d.wait_tools("b");
    let before = d.status();
    let (a, b) = (by_name(&before, "a").clone(), by_name(&before, "b").clone());
    let (pa, pb) = (a.pid.unwrap(), b.pid.unwrap());
    assert!(record(&d.dir, a.id).is_file(), "no record for a");
    // The guest reports its address again every 15 s: overwrite it, and
    // see it come back while vmd is gone.
    d.vmctl_ok(&["guestinfo", "a", "ip", "overwritten"]);
    let log1 = d.log();
    // Signals for vmd's process group (a terminal's ^C, a hangup) do not
    // reach the VMs.
    let vmd_pgrp = pgrp(d.pid());
    assert!(vmd_pgrp.is_some());
    assert_ne!(pgrp(pa), vmd_pgrp);
    assert_ne!(pgrp(pb), vmd_pgrp);

    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    assert!(
        alive(pa) && alive(pb),
        "VM processes died with vmd:\n{log1}"
    );
    std::thread::sleep(Duration::from_secs(17));
    assert!(
        alive(pa) && alive(pb),
        "VM processes died without vmd:\n{log1}"
    );

    let d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    let after = d.status();
    for (was, name) in [(&a, "a"), (&b, "b")] {
        let now = by_name(&after, name);
        assert_eq!(now.state, VmState::Running, "{now:#?}\n{}", d.log());
        assert_eq!(now.pid, was.pid);
        assert_eq!(now.id, was.id);
        assert_eq!(now.tty, was.tty);
        assert_eq!(now.interfaces, was.interfaces);
        assert_eq!(now.hostname.as_deref(), Some(name));
    }
    assert!(d.log().contains("re-attached"), "{}", d.log());
    // What the VM processes logged while detached reaches the new log.
    assert!(
        poll(Duration::from_secs(5), || d
            .log()
            .contains("the VM runs on, waiting for vmd")),
        "{}",
        d.log()
    );
    // The guest ran on: it has set its address again.
    let ip = d.vmctl_ok(&["guestinfo", "a", "ip"]).stdout;
    assert_eq!(ip.trim(), "10.0.0.5");

    // Pause and resume through the new channel.
    d.vmctl_ok(&["pause", "a"]);
    d.wait_vm("a", "paused", Duration::from_secs(10), |v| {
        v.state == VmState::Paused
    });
    d.vmctl_ok(&["unpause", "a"]);
    d.wait_vm("a", "running again", Duration::from_secs(10), |v| {
        v.state == VmState::Running
    });

    // A graceful stop: the guest's tools take the halt and power off;
    // vmd sees the process end (it is not vmd's child: its pidfd).
    let o = d.vmctl_ok(&["stop", "-w", "b"]);
    assert!(o.ok(), "{o:?}");
    let b_now = d.vm("b");
    assert_eq!(b_now.pid, None);
    assert_eq!(
        b_now.last_exit.as_deref(),
        Some("halted by guest tools"),
        "{}",
        d.log()
    );
    assert!(poll(Duration::from_secs(5), || !alive(pb)));
    assert!(!record(&d.dir, b.id).exists(), "b's record stays");
    assert!(alive(pa));
    // And a forced stop, which kills through the pidfd if need be.
    d.vmctl_ok(&["stop", "-f", "-w", "a"]);
    assert!(poll(Duration::from_secs(5), || !alive(pa)));
    assert!(!record(&d.dir, a.id).exists(), "a's record stays");
}

/// SIGUSR2: vmd exits at once, leaving its VM running and its socket
/// gone; the next vmd re-attaches, and its SIGTERM stops the VM as
/// usual, record and all.
#[test]
fn sigusr2_leaves_the_vms_to_the_next_vmd() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&tools_vm("c", "10.0.0.7"));
    let c = d.wait_tools("c");
    let pc = c.pid.unwrap();
    let sock = d.sock.clone();
    let (dir, pids, st) = d.end_leaving_vms(libc::SIGUSR2);
    assert!(st.success(), "vmd exited {st}");
    assert!(!sock.exists(), "the control socket stays");
    assert!(alive(pc));

    let mut d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    let now = d.vm("c");
    assert_eq!(now.pid, Some(pc));
    assert_eq!(now.state, VmState::Running);
    assert_eq!(now.tty, c.tty);
    // The console still works: the guest's line discipline is the VM
    // process's own, and the pty is where it was.
    let tty = open_noctty(c.tty.as_deref().unwrap()).expect("open the console");
    drop(tty);

    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(40));
    assert!(
        st.is_some_and(|s| s.success()),
        "vmd on SIGTERM: {st:?}\n{}",
        d.log()
    );
    assert!(poll(Duration::from_secs(5), || !alive(pc)), "{}", d.log());
    assert!(!record(&d.dir, c.id).exists(), "c's record stays");
}

/// Records whose process is gone, and one whose pid is another process's
/// now (pid reuse), are dropped; that process is left alone, and the VM
/// is started afresh as configured.
#[test]
fn stale_records_are_dropped() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "{}{}",
        tools_vm("gone", "10.0.0.8"),
        tools_vm("reused", "10.0.0.9")
    );
    let d = TestDaemon::start(&conf);
    let gone = d.wait_running("gone");
    let reused = d.wait_running("reused");
    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    // One process gone.
    send_signal(gone.pid.unwrap(), libc::SIGKILL);
    assert!(poll(Duration::from_secs(5), || !alive(gone.pid.unwrap())));
    // The other's pid taken by another process: the record is rewritten
    // to name a `sleep` (its pid, but not its start time), as if the VM
    // process had ended and its pid been reused.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("run sleep");
    let path = record(&dir, reused.id);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    rec["pid"] = sleeper.id().into();
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    // The real VM process is the test's to end.
    send_signal(reused.pid.unwrap(), libc::SIGKILL);

    let d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    assert!(
        alive(sleeper.id()),
        "vmd touched another process:\n{}",
        d.log()
    );
    // Both started afresh, as enabled configured VMs are.
    let vms = d.wait_until("both running again", Duration::from_secs(20), |vms| {
        vms.iter()
            .all(|v| v.state == VmState::Running && v.pid.is_some())
    });
    assert_ne!(by_name(&vms, "gone").pid, gone.pid);
    assert_ne!(by_name(&vms, "reused").pid, Some(sleeper.id()));
    assert!(d.log().contains("its process is gone"), "{}", d.log());
    assert!(d.log().contains("is another process now"), "{}", d.log());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// A VM that vm.conf no longer defines when vmd comes back is listed as
/// an ad-hoc VM, running, under its id; and the configured VM that now
/// has that id moves to another.
#[test]
fn a_vm_dropped_from_the_config_stays_listed() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&tools_vm("old", "10.0.0.10"));
    let old = d.wait_running("old");
    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    // As if vmd had died before it heard of the console: the VM process
    // says again where it is when vmd re-attaches.
    let path = record(&dir, old.id);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    rec["tty"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        format!(
            "{}vm \"new\" {{\n\tdisable\n\tkernel \"{}\"\n\tmemory 32M\n}}\n",
            "",
            guest("tools")
        ),
    )
    .unwrap();
    let d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    let vms = d.status();
    let now = by_name(&vms, "old");
    assert_eq!(now.id, old.id);
    assert_eq!(now.pid, old.pid);
    assert_eq!(now.state, VmState::Running);
    let new = by_name(&vms, "new");
    assert_ne!(new.id, old.id);
    d.wait_vm(
        "old",
        "its console known again",
        Duration::from_secs(5),
        |v| v.tty == old.tty,
    );
    d.vmctl_ok(&["stop", "-f", "-w", "old"]);
    assert!(poll(Duration::from_secs(5), || !alive(old.pid.unwrap())));
}

/// Sends `msg` to `to` from `sock` until it comes back (every 200 ms, at
/// most `timeout`); true if it did.
fn echoed(sock: &std::net::UdpSocket, to: &str, msg: &[u8], timeout: Duration) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        let _ = sock.send_to(msg, to);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if &buf[..n] == msg {
                return true;
            }
        }
    }
    false
}

/// A VM's network outlives vmd: its taps (a local interface, with its
/// address and DHCP, and one on a bridge vmd created) stay, the guest
/// answers on them while no vmd runs, the next vmd shows the same
/// interfaces, and its SIGTERM ends the VM, its taps and the bridge, which
/// it took over from the vmd that created it.
#[test]
fn the_network_of_a_vm_outlives_vmd() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("survive") else {
        return;
    };
    let dir = fresh_dir();
    let conf = format!(
        "switch \"lan\" {{\n\tinterface brsurv\n}}\n\
         vm \"n\" {{\n\tkernel \"{}\"\n\tmemory 32M\n\
         \tcmdline \"hostname=n dhcp=1 echo=7777 poll_ms=200\"\n\
         \tlocal interface\n\tinterface {{ switch \"lan\" }}\n}}\n",
        guest("tools")
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    let vm = d.wait_running("n");
    assert_eq!(vm.interfaces.len(), 2, "{vm:#?}");
    let (local, lan) = (vm.interfaces[0].tap.clone(), vm.interfaces[1].tap.clone());
    let sock = ns.udp("100.64.1.2:0");
    assert!(
        echoed(&sock, "100.64.1.3:7777", b"one", Duration::from_secs(30)),
        "no echo from the guest:\n{}",
        d.log()
    );

    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    assert!(ns.link(&local).is_some(), "{local} went with vmd");
    assert!(
        ns.link(&lan).is_some_and(|l| l.contains("master brsurv")),
        "{lan} left brsurv"
    );
    assert!(
        echoed(&sock, "100.64.1.3:7777", b"two", Duration::from_secs(10)),
        "no echo while vmd is gone"
    );

    let mut d = TestDaemon::start_in_netns(dir, &ns);
    d.remember_vmms(&pids);
    let now = d.vm("n");
    assert_eq!(now.pid, vm.pid);
    assert_eq!(now.interfaces, vm.interfaces);
    assert!(echoed(
        &sock,
        "100.64.1.3:7777",
        b"three",
        Duration::from_secs(10)
    ));

    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(40));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", d.log());
    let pid = vm.pid.unwrap();
    assert!(poll(Duration::from_secs(5), || !alive(pid)));
    assert!(
        poll(Duration::from_secs(5), || ns.link(&local).is_none()
            && ns.link(&lan).is_none()),
        "taps outlived their VM"
    );
    assert!(
        ns.link("brsurv").is_none(),
        "the bridge vmd created stays:\n{}",
        d.log()
    );
}

/// A VM process that is stopped (SIGSTOP) when vmd comes back holds up
/// neither vmd's start nor the other VMs: it is listed at once, and
/// answers once it runs again.
#[test]
fn a_stopped_vm_process_does_not_hold_up_the_next_vmd() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "{}{}",
        tools_vm("s", "10.0.0.11"),
        tools_vm("t", "10.0.0.12")
    );
    let d = TestDaemon::start(&conf);
    let s = d.wait_tools("s");
    d.wait_tools("t");
    let ps = s.pid.unwrap();
    send_signal(ps, libc::SIGSTOP);
    let (dir, pids, _) = d.end_leaving_vms(libc::SIGKILL);
    let started = std::time::Instant::now();
    let d = TestDaemon::start_in(dir);
    d.remember_vmms(&pids);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "vmd took {:?} to come up",
        started.elapsed()
    );
    let vms = d.status();
    assert_eq!(by_name(&vms, "s").pid, Some(ps));
    let t = d.wait_tools("t");
    assert_eq!(t.state, VmState::Running);
    d.vmctl_ok(&["guestinfo", "t", "k", "v"]);
    send_signal(ps, libc::SIGCONT);
    assert!(
        poll(Duration::from_secs(10), || d
            .vmctl(&["guestinfo", "s", "k", "v"])
            .ok()),
        "{}",
        d.log()
    );
    assert_eq!(d.vmctl_ok(&["guestinfo", "s", "k"]).stdout.trim(), "v");
    d.vmctl_ok(&["stop", "-f", "-w", "s"]);
    assert!(poll(Duration::from_secs(5), || !alive(ps)));
}

/// Two vmds never share a state directory (each would take the other's
/// VMs): the second one, on a socket of its own, refuses to start.
#[test]
fn one_vmd_per_state_directory() {
    let d = TestDaemon::start("");
    let other = d.dir.join("other.sock");
    let mut c = std::process::Command::new(vmd_bin());
    c.arg("-d")
        .arg("-f")
        .arg(&d.conf)
        .arg("-s")
        .arg(&other)
        .arg("--state-dir")
        .arg(state_dir(&d.dir));
    let o = run_bounded(c, Duration::from_secs(10));
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("another vmd uses it"), "{o:?}");
}
