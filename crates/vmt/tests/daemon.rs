//! vmt's daemon core in-process: its TCLO loop and reports against the
//! host's real state machine (`guestrpc::host`) through a fake vCPU, with
//! a recording double of the guest system.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::FakeVm;
use guestrpc::client::Channel;
use guestrpc::host::CommandStatus;
use guestrpc::proto::{MAX_CHANNELS, PROTO_RPCI};
use guestrpc::tclo::{PowerState, TcloCommand};
use vmt::daemon::{self, Daemon, Next, Power, System, OPEN_RETRY_INTERVAL, POLL_INTERVAL};

#[derive(Default)]
struct FakeSystem {
    hostname: Option<String>,
    ip: Option<Ipv4Addr>,
    powered: Vec<Power>,
    power_fails: bool,
    log: Vec<String>,
}

impl System for FakeSystem {
    fn hostname(&mut self) -> Option<String> {
        self.hostname.clone()
    }
    fn first_ipv4(&mut self) -> Option<Ipv4Addr> {
        self.ip
    }
    fn power(&mut self, action: Power) -> Result<(), String> {
        self.powered.push(action);
        if self.power_fails {
            Err("exit status: 1".to_owned())
        } else {
            Ok(())
        }
    }
    fn log(&mut self, line: &str) {
        self.log.push(line.to_owned());
    }
}

fn guest() -> FakeSystem {
    FakeSystem {
        hostname: Some("guest1".to_owned()),
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        ..FakeSystem::default()
    }
}

/// Ticks until the daemon wants to sleep (at most 50 ticks); that sleep.
fn until_idle(d: &mut Daemon<FakeSystem>, vm: &mut FakeVm) -> Duration {
    for _ in 0..50 {
        if let Next::Sleep(t) = d.tick(vm) {
            return t;
        }
    }
    panic!("no idle tick in 50: a busy loop");
}

/// A daemon that has reported and answered the host's reset and
/// Capabilities_Register.
fn started() -> (Daemon<FakeSystem>, FakeVm) {
    let mut vm = FakeVm::new();
    let mut d = Daemon::new(guest());
    d.report(&mut vm);
    assert_eq!(until_idle(&mut d, &mut vm), POLL_INTERVAL);
    (d, vm)
}

/// Queues `cmd`, lets the daemon run until idle; the command's status.
fn command(d: &mut Daemon<FakeSystem>, vm: &mut FakeVm, cmd: TcloCommand<String>) -> CommandStatus {
    let id = vm.tools.queue(cmd).unwrap();
    until_idle(d, vm);
    vm.tools.command_status(id).unwrap()
}

#[test]
fn reports_at_start_and_registers() {
    let (d, vm) = started();
    let st = vm.tools.guest_state();
    assert_eq!(st.hostname.as_deref(), Some("guest1"));
    assert_eq!(st.ipv4, Some(Ipv4Addr::new(192, 0, 2, 10)));
    assert!(vm.tools.has_toolbox_channel(), "answered reset");
    assert_eq!(st.tools_version, Some(0x7FFF_FFFF), "Capabilities_Register");
    assert!(d.is_open());
    assert!(d.sys.log.is_empty(), "{:?}", d.sys.log);
}

#[test]
fn ping_unknown_and_options() {
    let (mut d, mut vm) = started();
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::Ping),
        CommandStatus::Acked("OK ".into())
    );
    assert_eq!(
        command(
            &mut d,
            &mut vm,
            TcloCommand::Other("vmbackup.start 1".into())
        ),
        CommandStatus::Failed("ERROR Unknown command".into())
    );
    // vmt knows only broadcastIP.
    assert_eq!(
        command(
            &mut d,
            &mut vm,
            TcloCommand::SetOption("synctime".into(), "1".into())
        ),
        CommandStatus::Failed("ERROR Unknown command".into())
    );
    vm.tools.remove_guestinfo("ip");
    let bcast = || TcloCommand::SetOption("broadcastIP".into(), "1".into());
    assert_eq!(
        command(&mut d, &mut vm, bcast()),
        CommandStatus::Acked("OK ".into())
    );
    assert_eq!(vm.tools.get_guestinfo("ip"), Some(&b"192.0.2.10"[..]));
    d.sys.ip = None;
    assert_eq!(
        command(&mut d, &mut vm, bcast()),
        CommandStatus::Failed("ERROR Unable to find guest IP address".into())
    );
}

#[test]
fn halt_and_reboot_report_then_act() {
    for (cmd, power, state) in [
        (TcloCommand::OsHalt, Power::Halt, PowerState::Halt),
        (TcloCommand::OsReboot, Power::Reboot, PowerState::Reboot),
    ] {
        let (mut d, mut vm) = started();
        assert_eq!(
            command(&mut d, &mut vm, cmd),
            CommandStatus::Acked("OK ".into())
        );
        let change = vm.tools.guest_state().last_state_change.unwrap();
        assert!(change.ok);
        assert_eq!(change.power_state(), Some(state));
        assert_eq!(d.sys.powered, [power]);
    }
    // A power command that fails is logged; the loop goes on.
    let (mut d, mut vm) = started();
    d.sys.power_fails = true;
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    assert_eq!(d.sys.log, ["halting", "halting failed: exit status: 1"]);
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::Ping),
        CommandStatus::Acked("OK ".into())
    );
}

#[test]
fn suspend_resume_power_on() {
    let (mut d, mut vm) = started();
    for (cmd, state) in [
        (TcloCommand::OsSuspend, PowerState::Suspend),
        (TcloCommand::OsResume, PowerState::Resume),
        (TcloCommand::OsPowerOn, PowerState::PowerOn),
    ] {
        if state == PowerState::Resume {
            // The guest was renamed while suspended: reported again.
            d.sys.hostname = Some("renamed".to_owned());
        }
        assert_eq!(
            command(&mut d, &mut vm, cmd),
            CommandStatus::Acked("OK ".into())
        );
        let change = vm.tools.guest_state().last_state_change.unwrap();
        assert_eq!(change.power_state(), Some(state));
    }
    assert_eq!(vm.tools.guest_state().hostname.as_deref(), Some("renamed"));
    assert_eq!(d.sys.log, ["suspending", "resumed"]);
    assert!(d.sys.powered.is_empty());
}

/// An idle poll is two backdoor exits (one empty send, one receive-size),
/// and is followed by a one-second sleep.
#[test]
fn idle_polls_are_cheap_and_slow() {
    let (mut d, mut vm) = started();
    for _ in 0..5 {
        let before = vm.exits;
        assert_eq!(d.tick(&mut vm), Next::Sleep(POLL_INTERVAL));
        assert_eq!(vm.exits - before, 2);
    }
}

/// The host drops every channel (as a VM reset does): the next poll fails,
/// is logged once, and the channel comes back on its own.
#[test]
fn channels_reset_by_the_host_are_reopened() {
    let (mut d, mut vm) = started();
    vm.channels.reset(&mut vm.tools);
    let mut slept = Vec::new();
    for _ in 0..10 {
        match d.tick(&mut vm) {
            Next::Sleep(t) => slept.push(t),
            Next::Now => {}
        }
        if d.is_open() && vm.tools.has_toolbox_channel() {
            break;
        }
    }
    assert!(vm.tools.has_toolbox_channel(), "{:?}", d.sys.log);
    assert_eq!(
        d.sys.log,
        [
            "tclo: GuestRPC send failed; retrying",
            "tclo: channel open again"
        ]
    );
    assert!(slept.iter().all(|t| !t.is_zero()), "{slept:?}");
    // And it works. The kept RPCI channel was dropped too: the state
    // change goes out on a fresh one, without a logged failure.
    let log_before = d.sys.log.len();
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::OsPowerOn),
        CommandStatus::Acked("OK ".into())
    );
    let change = vm.tools.guest_state().last_state_change.unwrap();
    assert_eq!(change.power_state(), Some(PowerState::PowerOn));
    assert_eq!(d.sys.log.len(), log_before, "{:?}", d.sys.log);
}

/// A host with no free channel: one log line, vmt's 15 s between tries
/// (never a busy loop), and recovery once channels free up.
#[test]
fn a_host_that_refuses_open() {
    let mut vm = FakeVm::new();
    let taken: Vec<Channel> = (0..MAX_CHANNELS)
        .map(|_| Channel::open(&mut vm, PROTO_RPCI).unwrap())
        .collect();
    let mut d = Daemon::new(guest());
    d.report(&mut vm);
    for _ in 0..5 {
        assert_eq!(d.tick(&mut vm), Next::Sleep(OPEN_RETRY_INTERVAL));
    }
    assert_eq!(
        d.sys.log,
        [
            "rpci SetGuestInfo  1 guest1 failed: cannot open a GuestRPC channel",
            "rpci info-set guestinfo.ip 192.0.2.10 failed: cannot open a GuestRPC channel",
            "tclo: cannot open a GuestRPC channel; retrying",
        ]
    );
    for c in taken {
        c.close(&mut vm).unwrap();
    }
    assert_eq!(until_idle(&mut d, &mut vm), POLL_INTERVAL);
    assert!(vm.tools.has_toolbox_channel());
    assert_eq!(d.sys.log.last().unwrap(), "tclo: channel open again");
}

/// The loop as the binary runs it: it reports, sleeps a second per idle
/// poll, stops when told and closes its channels.
#[test]
fn run_sleeps_and_stops() {
    let mut vm = FakeVm::new();
    let mut d = Daemon::new(guest());
    let mut sleeps = Vec::new();
    let mut checks = 0;
    daemon::run(
        &mut d,
        &mut vm,
        |t| sleeps.push(t),
        || {
            checks += 1;
            checks > 40
        },
    );
    assert!(
        !sleeps.is_empty() && sleeps.iter().all(|&t| t == POLL_INTERVAL),
        "{sleeps:?}"
    );
    assert_eq!(vm.tools.guest_state().hostname.as_deref(), Some("guest1"));
    assert!(!d.is_open());
    assert_eq!(vm.channels.open_count(), 0);
}
