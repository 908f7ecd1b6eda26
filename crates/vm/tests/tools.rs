//! The guest channel end to end: the bare-metal `tools` guest (a vmt(4)
//! work-alike built on guestrpc's guest side) against the VM's backdoor
//! device, on real KVM.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use vm::guestrpc::host::CommandStatus;
use vm::guestrpc::tclo::{PowerState, TcloCommand};
use vm::{VmExit, VmHandle};

const T: Duration = Duration::from_secs(60);

/// Boots the tools guest polling every 50 ms, runs it on a thread.
fn start(args: &str) -> (VmHandle, Console, std::thread::JoinHandle<(VmExit, u32)>) {
    let (mut vm, console) = guest_vm("tools", &format!("poll_ms=50 {args}"), 1);
    let h = vm.handle();
    let t = std::thread::spawn(move || {
        let exit = vm.run().unwrap();
        (exit, vm.boots())
    });
    (h, console, t)
}

/// Queues `cmd` and waits until it is finished; returns its final status.
fn command(h: &VmHandle, cmd: TcloCommand<String>) -> CommandStatus {
    let id = h.tools_command(cmd).unwrap().unwrap();
    wait_for("command status", T, || {
        h.tools_status(id).filter(|s| s.is_final())
    })
}

fn stop(h: &VmHandle, t: std::thread::JoinHandle<(VmExit, u32)>) {
    h.power_off();
    assert_eq!(t.join().unwrap().0, VmExit::Stopped);
}

#[test]
fn checkvm_and_guestinfo_round_trips() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) = start("selftest=1");
    console.wait_line("tools: backdoor version 6 type 2", T);
    for line in [
        "tools: selftest info-set/info-get ok",
        "tools: selftest missing key ok",
        "tools: selftest 64KiB lb ok",
        "tools: selftest 64KiB hb ok",
    ] {
        console.wait_line(line, T);
    }
    assert!(!console.text().contains("FAILED"), "{}", console.text());
    // What the guest stored is in the host's per-VM store, and the host
    // can set values the guest reads.
    let v = h
        .with_tools(|t| t.get_guestinfo("guestinfo.selftest").map(<[u8]>::to_vec))
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"hello"[..]));
    for key in ["big.lb", "big.hb"] {
        let len = h
            .with_tools(|t| t.get_guestinfo(key).map(<[u8]>::len))
            .unwrap();
        assert_eq!(
            len,
            Some(65536 - "info-set guestinfo.".len() - key.len() - 1),
            "{key}"
        );
    }
    stop(&h, t);
}

#[test]
fn hostname_and_addresses_reach_the_host() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) =
        start("hostname=web1 ip=10.0.0.5/24,192.168.7.9/16 mac=52:54:00:aa:bb:cc");
    let s = wait_for("guest state", T, || {
        let s = h.guest_state();
        (s.hostname.is_some() && s.ipv4.is_some() && !s.nics.is_empty()).then_some(s)
    });
    assert!(s.tools_present);
    assert_eq!(s.tools_version, Some(2_147_483_647));
    assert_eq!(s.hostname.as_deref(), Some("web1"));
    assert_eq!(s.ipv4, Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert!(s.os_name.is_some() && s.last_poll_ms.is_some(), "{s:?}");
    let nic = format!("{:?}", s.nics);
    assert!(
        nic.contains("52:54:00:aa:bb:cc") && nic.contains("192.168.7.9"),
        "{nic}"
    );

    // Set_Option broadcastIP 1: the guest publishes guestinfo.ip.
    let st = command(&h, TcloCommand::SetOption("broadcastIP".into(), "1".into()));
    assert!(matches!(st, CommandStatus::Acked(_)), "{st:?}");
    let ip = h
        .with_tools(|t| t.get_guestinfo("ip").map(<[u8]>::to_vec))
        .unwrap();
    assert_eq!(ip.as_deref(), Some(&b"10.0.0.5"[..]));

    // Unknown commands fail the vmt way.
    let st = command(&h, TcloCommand::SetOption("synctime".into(), "1".into()));
    assert_eq!(st, CommandStatus::Failed("ERROR Unknown command".into()));
    assert!(console
        .text()
        .contains("tools: command Set_Option synctime 1"));
    stop(&h, t);
}

#[test]
fn os_halt_ends_the_vm_as_halted_by_guest_tools() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) = start("");
    wait_for("tools", T, || h.guest_state().tools_present.then_some(()));
    assert!(matches!(
        command(&h, TcloCommand::OsHalt),
        CommandStatus::Acked(_)
    ));
    let (exit, boots) = t.join().unwrap();
    assert_eq!(exit, VmExit::ToolsHalt);
    assert_eq!(boots, 1);
    assert!(console.text().contains("tools: halting"));
    let sc = h.guest_state().last_state_change.unwrap();
    assert!(
        sc.ok && sc.power_state() == Some(PowerState::Halt),
        "{sc:?}"
    );
}

#[test]
fn os_reboot_resets_the_guest() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) = start("");
    // Nine reboots: each boot's tools open a TCLO and an RPCI channel, so
    // a reset that left old channels open would fill the 16-slot table.
    const REBOOTS: usize = 9;
    for i in 1..=REBOOTS {
        wait_for("tools", T, || h.guest_state().tools_present.then_some(()));
        assert!(matches!(
            command(&h, TcloCommand::OsReboot),
            CommandStatus::Acked(_)
        ));
        console.wait_count("tools: rebooting", i, T);
        // The guest comes back and its tools answer again.
        console.wait_count("testguest tools: boot via", i + 1, T);
        assert!(matches!(
            command(&h, TcloCommand::Ping),
            CommandStatus::Acked(_)
        ));
    }
    assert!(matches!(
        command(&h, TcloCommand::OsHalt),
        CommandStatus::Acked(_)
    ));
    let (exit, boots) = t.join().unwrap();
    assert_eq!((exit, boots), (VmExit::ToolsHalt, REBOOTS as u32 + 1));
}

#[test]
fn os_resume_resyncs_the_clock() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) = start("clock_sync=0");
    console.wait_line("tools: clock sync (boot)", T);
    wait_for("tools", T, || h.guest_state().tools_present.then_some(()));
    assert!(matches!(
        command(&h, TcloCommand::OsSuspend),
        CommandStatus::Acked(_)
    ));
    assert!(h.pause());
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.resume());
    assert!(matches!(
        command(&h, TcloCommand::OsResume),
        CommandStatus::Acked(_)
    ));
    console.wait_line("tools: clock sync (resume)", T);
    let sc = h.guest_state().last_state_change.unwrap();
    assert_eq!(sc.power_state(), Some(PowerState::Resume));
    // clock_sync=0: no periodic syncs.
    assert_eq!(console.count("tools: clock sync (periodic)"), 0);
    stop(&h, t);
}

#[test]
fn periodic_clock_sync() {
    if !kvm_or_skip() {
        return;
    }
    let (h, console, t) = start("clock_sync=1");
    console.wait_count("tools: clock sync (periodic)", 2, T);
    stop(&h, t);
}

#[test]
fn an_ignored_halt_times_out() {
    if !kvm_or_skip() {
        return;
    }
    let (h, _console, t) = start("ignore=OS_Halt");
    wait_for("tools", T, || h.guest_state().tools_present.then_some(()));
    assert_eq!(command(&h, TcloCommand::OsHalt), CommandStatus::TimedOut);
    stop(&h, t);
}
