//! vmt's daemon core in-process: its TCLO loop and reports against the
//! host's real state machine (`guestrpc::host`) through a fake vCPU, with
//! a recording double of the guest system.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use guestrpc::guestinfo::nicinfo::IpEntry;

use guestrpc::client::{Backdoor, Channel};
use guestrpc::host::CommandStatus;
use guestrpc::proto::{MAX_CHANNELS, PROTO_RPCI};
use guestrpc::tclo::{PowerState, TcloCommand};
use guestrpc::testing::{FakeVcpu, HOST_TIME_US};
use vmt::clock::{Correction, Source};
use vmt::config::LogLevel;
use vmt::daemon::{
    self, Daemon, LastCorrection, Next, Power, Settings, System, OPEN_RETRY_INTERVAL,
    POLL_INTERVAL, POWER_TIMEOUT,
};
use vmt::report::{Nic, OsInfo};
use vmt::status::{ChannelState, Status};

#[derive(Default)]
struct FakeSystem {
    hostname: Option<String>,
    ip: Option<Ipv4Addr>,
    nics: Option<Vec<Nic>>,
    os: Option<OsInfo>,
    uptime: Option<u64>,
    powered: Vec<Power>,
    power_fails: bool,
    /// What `power_failed` says next (a command that failed later).
    fails_later: Option<String>,
    /// Last resorts taken.
    forced: Vec<Power>,
    /// Every status published.
    published: Vec<Status>,
    log: Vec<String>,
    /// Debug lines, apart.
    debug: Vec<String>,
    /// The guest's wall clock, µs.
    clock_us: i64,
    /// The monotonic clock.
    mono: Duration,
    /// Steps and slews asked for, in µs.
    steps: Vec<i64>,
    slews: Vec<i64>,
    clock_fails: bool,
    keeper: Option<String>,
}

impl System for FakeSystem {
    fn hostname(&mut self) -> Option<String> {
        self.hostname.clone()
    }
    fn first_ipv4(&mut self) -> Option<Ipv4Addr> {
        self.ip
    }
    fn nics(&mut self) -> Option<Vec<Nic>> {
        self.nics.clone()
    }
    fn os_info(&mut self) -> Option<OsInfo> {
        self.os.clone()
    }
    fn uptime_centis(&mut self) -> Option<u64> {
        self.uptime
    }
    fn power(&mut self, action: Power) -> Result<String, String> {
        self.powered.push(action);
        if self.power_fails {
            Err("exit status: 1".to_owned())
        } else {
            Ok("the test's way".to_owned())
        }
    }
    fn power_failed(&mut self) -> Option<String> {
        self.fails_later.take()
    }
    fn force_power(&mut self, action: Power) -> String {
        self.forced.push(action);
        "not in a test".to_owned()
    }
    fn publish(&mut self, status: &Status) {
        self.published.push(status.clone());
    }
    fn log(&mut self, level: LogLevel, line: &str) {
        if level == LogLevel::Debug {
            self.debug.push(line.to_owned());
        } else {
            self.log.push(line.to_owned());
        }
    }
    fn realtime_us(&mut self) -> i64 {
        self.clock_us
    }
    fn monotonic(&mut self) -> Duration {
        self.mono
    }
    fn step_clock(&mut self, offset_us: i64) -> Result<(), String> {
        if self.clock_fails {
            return Err("Operation not permitted".to_owned());
        }
        self.steps.push(offset_us);
        self.clock_us += offset_us;
        Ok(())
    }
    fn slew_clock(&mut self, offset_us: i64) -> Result<(), String> {
        if self.clock_fails {
            return Err("Operation not permitted".to_owned());
        }
        self.slews.push(offset_us);
        Ok(())
    }
    fn time_keeper(&mut self) -> Option<String> {
        self.keeper.clone()
    }
}

fn eth0(addrs: &[(IpAddr, u8)]) -> Nic {
    Nic {
        name: "eth0".to_owned(),
        mac: "fe:e1:ba:d0:00:01".to_owned(),
        addrs: addrs
            .iter()
            .map(|&(addr, prefix_len)| IpEntry { addr, prefix_len })
            .collect(),
    }
}

fn debian() -> OsInfo {
    OsInfo {
        short_name: "debian12-64".to_owned(),
        full_name: "Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)".to_owned(),
        detailed: "bitness='64' familyName='Linux'".to_owned(),
    }
}

fn guest() -> FakeSystem {
    FakeSystem {
        hostname: Some("guest1".to_owned()),
        ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        nics: Some(vec![eth0(&[(Ipv4Addr::new(192, 0, 2, 10).into(), 24)])]),
        os: Some(debian()),
        uptime: Some(12_345),
        clock_us: HOST_TIME_US as i64,
        ..FakeSystem::default()
    }
}

/// Ticks until the daemon wants to sleep (at most 50 ticks); that sleep.
fn until_idle(d: &mut Daemon<FakeSystem>, vm: &mut impl Backdoor) -> Duration {
    for _ in 0..50 {
        if let Next::Sleep(t) = d.tick(vm) {
            return t;
        }
    }
    panic!("no idle tick in 50: a busy loop");
}

/// A daemon that has reported and answered the host's reset and
/// Capabilities_Register.
fn started() -> (Daemon<FakeSystem>, FakeVcpu) {
    let mut vm = FakeVcpu::new();
    let mut d = Daemon::new(guest());
    d.report(&mut vm);
    assert_eq!(until_idle(&mut d, &mut vm), POLL_INTERVAL);
    (d, vm)
}

/// Queues `cmd`, lets the daemon run until idle; the command's status.
fn command(
    d: &mut Daemon<FakeSystem>,
    vm: &mut FakeVcpu,
    cmd: TcloCommand<String>,
) -> CommandStatus {
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
    // A power request that cannot be made: the last resort at once,
    // logged; when even that fails the loop goes on.
    let (mut d, mut vm) = started();
    d.sys.power_fails = true;
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    assert_eq!(
        d.sys.log,
        [
            "halting failed: exit status: 1; last resort: sync and reboot(2)",
            "reboot(2) failed: not in a test"
        ]
    );
    assert_eq!(d.sys.forced, [Power::Halt]);
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::Ping),
        CommandStatus::Acked("OK ".into())
    );
}

/// A guest still up `power_timeout` after the request is forced down;
/// not a moment before.
#[test]
fn a_guest_still_up_is_forced_after_the_timeout() {
    let (mut d, mut vm) = started();
    command(&mut d, &mut vm, TcloCommand::OsReboot);
    assert_eq!(d.sys.log, ["rebooting: the test's way"]);
    assert!(d.powering());
    d.sys.mono += POWER_TIMEOUT - Duration::from_millis(1);
    until_idle(&mut d, &mut vm);
    assert!(d.sys.forced.is_empty());
    d.sys.mono += Duration::from_millis(1);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.forced, [Power::Reboot]);
    assert_eq!(
        d.sys.log[1..],
        [
            "still up 60 s after rebooting; last resort: sync and reboot(2)",
            "reboot(2) failed: not in a test"
        ]
    );
    assert!(!d.powering());
    // Once: the daemon goes on answering.
    d.sys.mono += POWER_TIMEOUT * 2;
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.forced.len(), 1);
}

/// A power command that fails after it started (exit status 1): the last
/// resort on the next tick, without waiting for the timeout.
#[test]
fn a_command_that_fails_later_is_followed_by_the_last_resort() {
    let (mut d, mut vm) = started();
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    d.sys.fails_later = Some("poweroff: exit status: 1".to_owned());
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.forced, [Power::Halt]);
    assert_eq!(
        d.sys.log[1],
        "halting failed: poweroff: exit status: 1; last resort: sync and reboot(2)"
    );
}

/// power_timeout 0: the request is trusted; nothing forced however long
/// the guest stays up.
#[test]
fn a_zero_power_timeout_never_forces() {
    let mut vm = FakeVcpu::new();
    let settings = Settings {
        power_timeout: Duration::ZERO,
        ..Settings::default()
    };
    let mut d = Daemon::with_settings(guest(), settings);
    until_idle(&mut d, &mut vm);
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    d.sys.mono += Duration::from_secs(86_400);
    until_idle(&mut d, &mut vm);
    assert!(d.sys.forced.is_empty());
    assert!(d.powering());
}

/// A second halt or reboot while one is under way is refused as vmtoolsd
/// refuses it, and starts nothing.
#[test]
fn one_power_request_at_a_time() {
    let (mut d, mut vm) = started();
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    for cmd in [TcloCommand::OsHalt, TcloCommand::OsReboot] {
        assert_eq!(
            command(&mut d, &mut vm, cmd),
            CommandStatus::Failed("ERROR State change already in progress".into())
        );
    }
    assert_eq!(d.sys.powered, [Power::Halt]);
    // Other requests are still answered.
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::OsSuspend),
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
    assert_eq!(
        d.sys.debug[d.sys.debug.len() - 3..],
        ["tclo: OS_Suspend", "tclo: OS_Resume", "tclo: OS_PowerOn"]
    );
    assert!(d.sys.powered.is_empty());
}

/// An idle poll is two backdoor exits (one empty send, one receive-size),
/// and is followed by a one-second sleep.
#[test]
fn idle_polls_are_cheap_and_slow() {
    let (mut d, mut vm) = started();
    for _ in 0..5 {
        let before = vm.exits();
        assert_eq!(d.tick(&mut vm), Next::Sleep(POLL_INTERVAL));
        assert_eq!(vm.exits() - before, 2);
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
    let mut vm = FakeVcpu::new();
    let taken: Vec<Channel> = (0..MAX_CHANNELS)
        .map(|_| Channel::open(&mut vm, PROTO_RPCI).unwrap())
        .collect();
    let mut d = Daemon::new(guest());
    d.report(&mut vm);
    for _ in 0..5 {
        assert_eq!(d.tick(&mut vm), Next::Sleep(OPEN_RETRY_INTERVAL));
    }
    // One line for the channel problem, not one per report.
    assert_eq!(
        d.sys.log,
        [
            "rpci SetGuestInfo  1 guest1 failed: cannot open a GuestRPC channel",
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
    let mut vm = FakeVcpu::new();
    let mut d = Daemon::new(guest());
    let mut sleeps = Vec::new();
    let mut checks = 0;
    daemon::run(
        &mut d,
        &mut vm,
        |t| {
            sleeps.push(t);
            false
        },
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

const S: i64 = 1_000_000;

/// The acceptance case: a guest clock one hour behind the host's is
/// stepped at start, by one hour, and the step is logged with its size.
#[test]
fn a_clock_an_hour_off_is_stepped_at_start() {
    let mut vm = FakeVcpu::new();
    let mut sys = guest();
    sys.clock_us -= 3600 * S;
    let mut d = Daemon::new(sys);
    let mut checks = 0;
    daemon::run(
        &mut d,
        &mut vm,
        |_| false,
        || {
            checks += 1;
            checks > 3
        },
    );
    assert_eq!(d.sys.steps, [3600 * S]);
    assert!(d.sys.slews.is_empty());
    assert_eq!(d.sys.clock_us, HOST_TIME_US as i64);
    assert_eq!(d.sys.log, ["clock (start): stepped by +3600.000000 s"]);
    assert_eq!(
        d.last_correction,
        Some(LastCorrection {
            correction: Correction::Step(3600 * S),
            source: Source::GetTimeFull
        })
    );
}

#[test]
fn small_offsets_are_slewed_noise_left_alone() {
    let (mut d, mut vm) = started();
    d.sys.clock_us += 5_000;
    d.sync_clock(&mut vm, "start");
    assert_eq!(d.sys.slews, [-5_000]);
    assert_eq!(d.sys.log, ["clock (start): slewing by -0.005000 s"]);
    // Within a millisecond: nothing done, nothing logged.
    d.sys.clock_us = HOST_TIME_US as i64 + 999;
    d.sync_clock(&mut vm, "start");
    assert_eq!(d.sys.slews, [-5_000]);
    assert!(d.sys.steps.is_empty());
    assert_eq!(d.sys.log.len(), 1);
    assert_eq!(d.last_correction.unwrap().correction, Correction::None);
}

/// A lower step threshold (vmt.conf's clock_step_threshold) steps what
/// the default would slew.
#[test]
fn the_step_threshold_is_a_setting() {
    let mut vm = FakeVcpu::new();
    let mut sys = guest();
    sys.clock_us += 200_000;
    let settings = Settings {
        clock_step_threshold: Duration::from_millis(100),
        ..Settings::default()
    };
    let mut d = Daemon::with_settings(sys, settings);
    d.sync_clock(&mut vm, "start");
    assert_eq!(d.sys.steps, [-200_000]);
}

/// After OS_Resume, and every clock_sync_period on an idle tick.
#[test]
fn synced_after_resume_and_periodically() {
    let (mut d, mut vm) = started();
    d.sync_clock(&mut vm, "start");
    d.sys.clock_us -= 10 * S; // suspended for 10 s
    command(&mut d, &mut vm, TcloCommand::OsResume);
    assert_eq!(d.sys.steps, [10 * S]);
    assert_eq!(
        d.sys.log,
        ["resumed", "clock (resume): stepped by +10.000000 s"]
    );
    // Not due yet: idle ticks leave the clock alone.
    d.sys.clock_us -= 2 * S;
    d.sys.mono += Duration::from_secs(59);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps.len(), 1);
    // Due.
    d.sys.mono += Duration::from_secs(1);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps, [10 * S, 2 * S]);
    assert_eq!(
        d.sys.log.last().unwrap(),
        "clock (periodic): stepped by +2.000000 s"
    );
    // And again a period later, not before.
    d.sys.clock_us -= 2 * S;
    d.sys.mono += Duration::from_secs(30);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps.len(), 2);
    d.sys.mono += Duration::from_secs(30);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps.len(), 3);
}

/// clock_sync_period 0: no periodic syncs, but still after a resume.
#[test]
fn a_zero_period_disables_periodic_syncs() {
    let mut vm = FakeVcpu::new();
    let settings = Settings {
        clock_sync_period: Duration::ZERO,
        ..Settings::default()
    };
    let mut d = Daemon::with_settings(guest(), settings);
    d.report(&mut vm);
    d.sync_clock(&mut vm, "start");
    until_idle(&mut d, &mut vm);
    d.sys.clock_us -= 2 * S;
    d.sys.mono += Duration::from_secs(3600);
    until_idle(&mut d, &mut vm);
    assert!(d.sys.steps.is_empty());
    command(&mut d, &mut vm, TcloCommand::OsResume);
    assert_eq!(d.sys.steps, [2 * S]);
}

/// A reloaded configuration (SIGHUP): a new period counts from the
/// reload; the same period leaves the next sync where it was.
#[test]
fn new_settings_reschedule_the_periodic_sync() {
    let (mut d, mut vm) = started();
    d.sync_clock(&mut vm, "start");
    d.sys.mono += Duration::from_secs(50);
    d.set_settings(Settings::default());
    d.sys.clock_us -= 2 * S;
    d.sys.mono += Duration::from_secs(10);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps, [2 * S], "due 60 s after the start still");
    // Off: never again on its own.
    d.set_settings(Settings {
        clock_sync_period: Duration::ZERO,
        ..Settings::default()
    });
    d.sys.clock_us -= 2 * S;
    d.sys.mono += Duration::from_secs(3600);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps.len(), 1);
    // On again: a period from now.
    d.set_settings(Settings {
        clock_sync_period: Duration::from_secs(10),
        ..Settings::default()
    });
    d.sys.mono += Duration::from_secs(9);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps.len(), 1);
    d.sys.mono += Duration::from_secs(1);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps, [2 * S, 2 * S]);
}

/// An NTP daemon keeps the time: said once, the clock left alone, until
/// it goes away.
#[test]
fn never_fights_an_ntp_daemon() {
    let (mut d, mut vm) = started();
    d.sys.keeper = Some("chronyd (pid 321)".to_owned());
    d.sys.clock_us -= 3600 * S;
    d.sync_clock(&mut vm, "start");
    command(&mut d, &mut vm, TcloCommand::OsResume);
    d.sys.mono += Duration::from_secs(60);
    until_idle(&mut d, &mut vm);
    assert!(d.sys.steps.is_empty() && d.sys.slews.is_empty());
    assert_eq!(
        d.sys.log,
        [
            "clock: chronyd (pid 321) keeps the time; not syncing from the host",
            "resumed"
        ]
    );
    d.sys.keeper = None;
    d.sys.mono += Duration::from_secs(60);
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.steps, [3600 * S]);
    assert_eq!(
        &d.sys.log[2..],
        [
            "clock: nothing else keeps the time now; syncing from the host",
            "clock (periodic): stepped by +3600.000000 s"
        ]
    );
}

/// A host without GETTIMEFULL: GETTIME (whole µs, 32-bit seconds) is used.
#[test]
fn gettime_is_the_fallback() {
    struct NoFull(FakeVcpu);
    impl guestrpc::client::Backdoor for NoFull {
        fn lb(&mut self, regs: &mut guestrpc::Regs) {
            if regs.ecx & 0xffff == u32::from(guestrpc::backdoor::cmd::GETTIMEFULL) {
                regs.eax = guestrpc::backdoor::FAILURE;
                return;
            }
            self.0.lb(regs)
        }
        fn hb_out(&mut self, regs: &mut guestrpc::Regs, data: &[u8]) {
            self.0.hb_out(regs, data)
        }
        fn hb_in(&mut self, regs: &mut guestrpc::Regs, buf: &mut [u8]) {
            self.0.hb_in(regs, buf)
        }
    }
    let mut vm = NoFull(FakeVcpu::new());
    let mut sys = guest();
    sys.clock_us += 3 * S;
    let mut d = Daemon::new(sys);
    d.sync_clock(&mut vm, "start");
    assert_eq!(d.sys.steps, [-3 * S]);
    assert_eq!(d.last_correction.unwrap().source, Source::GetTime);
}

/// A host with no clock, one with a garbage clock, a guest that may not
/// set its clock: one line per problem, not one per sync; the daemon goes
/// on.
#[test]
fn clock_problems_are_logged_once() {
    let (mut d, mut vm) = started();
    vm.platform.time_us = None;
    for _ in 0..3 {
        d.sync_clock(&mut vm, "periodic");
    }
    vm.platform.time_us = Some(0);
    for _ in 0..3 {
        d.sync_clock(&mut vm, "periodic");
    }
    vm.platform.time_us = Some(HOST_TIME_US);
    d.sys.clock_fails = true;
    d.sys.clock_us -= 3600 * S;
    for _ in 0..3 {
        d.sync_clock(&mut vm, "periodic");
    }
    assert_eq!(
        d.sys.log,
        [
            "clock: the host does not tell its time (GETTIMEFULL, GETTIME)",
            "clock: the host's time (0 µs since 1970) is not believable",
            "clock: step by +3600.000000 s failed: Operation not permitted",
        ]
    );
    assert!(d.sys.steps.is_empty());
    d.sys.clock_fails = false;
    d.sync_clock(&mut vm, "periodic");
    assert_eq!(d.sys.steps, [3600 * S]);
    assert_eq!(
        command(&mut d, &mut vm, TcloCommand::Ping),
        CommandStatus::Acked("OK ".into())
    );
}

/// vmt.conf's poll_interval: the idle sleep.
#[test]
fn the_poll_interval_is_a_setting() {
    let mut vm = FakeVcpu::new();
    let settings = Settings {
        poll_interval: Duration::from_millis(250),
        ..Settings::default()
    };
    let mut d = Daemon::with_settings(guest(), settings);
    assert_eq!(until_idle(&mut d, &mut vm), Duration::from_millis(250));
    assert_eq!(d.tick(&mut vm), Next::Sleep(Duration::from_millis(250)));
}

/// What `vmt status` shows: the daemon publishes its status when it
/// changes (never on a plain idle poll): the channel's state, the host
/// name and address it sent, the last clock sync, the last request, a
/// power action under way.
#[test]
fn the_status_follows_what_the_daemon_does() {
    let mut vm = FakeVcpu::new();
    let mut sys = guest();
    sys.clock_us -= 3600 * S;
    let mut d = Daemon::new(sys);
    d.publish();
    let first = d.sys.published.last().unwrap().clone();
    assert_eq!(first.pid, std::process::id());
    assert_eq!(first.channel, ChannelState::Starting);
    assert_eq!(first.hostname, None);
    d.report(&mut vm);
    d.sync_clock(&mut vm, "start");
    until_idle(&mut d, &mut vm);
    let st = d.sys.published.last().unwrap().clone();
    assert_eq!(st.channel, ChannelState::Open);
    assert_eq!(st.hostname.as_deref(), Some("guest1"));
    assert_eq!(st.ip, Some(Ipv4Addr::new(192, 0, 2, 10)));
    assert!(st.reported_us.is_some());
    let c = st.clock.unwrap();
    assert_eq!(
        (c.offset_us, c.correction, c.source),
        (3600 * S, Correction::Step(3600 * S), Source::GetTimeFull)
    );
    assert_eq!(
        st.request.as_ref().map(|r| r.0.as_str()),
        Some("Capabilities_Register")
    );
    let text = st.render();
    for line in [
        "channel open\n",
        "hostname guest1\n",
        "ip 192.0.2.10\n",
        "clock stepped by +3600.000000 s\n",
        "clock_source GETTIMEFULL\n",
        "request Capabilities_Register\n",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // Idle polls change nothing: nothing published.
    let n = d.sys.published.len();
    for _ in 0..5 {
        d.tick(&mut vm);
    }
    assert_eq!(d.sys.published.len(), n);

    // The host drops the channels: failing, then open again.
    vm.channels.reset(&mut vm.tools);
    d.tick(&mut vm);
    assert_eq!(
        d.sys.published.last().unwrap().channel,
        ChannelState::Failing("tclo: GuestRPC send failed".into())
    );
    until_idle(&mut d, &mut vm);
    assert_eq!(d.sys.published.last().unwrap().channel, ChannelState::Open);

    // A new address, sent on the host's broadcastIP.
    d.sys.ip = Some(Ipv4Addr::new(192, 0, 2, 99));
    command(
        &mut d,
        &mut vm,
        TcloCommand::SetOption("broadcastIP".into(), "1".into()),
    );
    assert_eq!(
        d.sys.published.last().unwrap().ip,
        Some(Ipv4Addr::new(192, 0, 2, 99))
    );

    // An NTP daemon: the clock's note says so.
    d.sys.keeper = Some("chronyd (pid 321)".into());
    d.sync_clock(&mut vm, "periodic");
    assert_eq!(
        d.sys.published.last().unwrap().clock_note.as_deref(),
        Some("chronyd (pid 321) keeps the time")
    );

    // A halt under way.
    command(&mut d, &mut vm, TcloCommand::OsHalt);
    let st = d.sys.published.last().unwrap();
    assert_eq!(st.request.as_ref().unwrap().0, "OS_Halt");
    assert_eq!(st.power.as_ref().unwrap().0, "halting: the test's way");
}

/// The host refuses every RPCI: nothing is recorded as sent.
#[test]
fn the_status_has_only_what_the_host_took() {
    let mut vm = FakeVcpu::new();
    let taken: Vec<Channel> = (0..MAX_CHANNELS)
        .map(|_| Channel::open(&mut vm, PROTO_RPCI).unwrap())
        .collect();
    let mut d = Daemon::new(guest());
    d.report(&mut vm);
    d.tick(&mut vm);
    let st = d.sys.published.last().unwrap();
    assert_eq!((st.hostname.as_deref(), st.ip), (None, None));
    assert_eq!(
        st.channel,
        ChannelState::Failing("tclo: cannot open a GuestRPC channel".into())
    );
    drop(taken);
}

/// The host's side seen from the wire: every message the guest sends
/// (RPCI requests, TCLO replies), in order, and optionally a host that
/// refuses `SetGuestInfo  11` as an older VMware does (the request reaches
/// the real host with its key spoiled, which it answers `0 ...`).
struct Wire {
    vm: FakeVcpu,
    sent: Vec<Vec<u8>>,
    refuse_key_11: bool,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            vm: FakeVcpu::new(),
            sent: Vec::new(),
            refuse_key_11: false,
        }
    }

    /// The `SetGuestInfo` keys and other requests sent since `from`, by
    /// their first two words (`SetGuestInfo 10`, `info-set guestinfo.ip`).
    fn requests(&self, from: usize) -> Vec<String> {
        self.sent[from..]
            .iter()
            .filter(|m| !m.starts_with(b"OK ") && !m.starts_with(b"ERROR"))
            .map(|m| {
                let text = String::from_utf8_lossy(m.split(|&b| b < 0x20).next().unwrap());
                let w: Vec<&str> = text.split_whitespace().take(2).collect();
                w.join(" ")
            })
            .collect()
    }
}

impl Backdoor for Wire {
    fn lb(&mut self, regs: &mut guestrpc::Regs) {
        self.vm.lb(regs)
    }
    fn hb_out(&mut self, regs: &mut guestrpc::Regs, data: &[u8]) {
        self.sent.push(data.to_vec());
        if self.refuse_key_11 && data.starts_with(b"SetGuestInfo  11 ") {
            let mut spoiled = data.to_vec();
            spoiled[14..16].copy_from_slice(b"xx");
            return self.vm.hb_out(regs, &spoiled);
        }
        self.vm.hb_out(regs, data)
    }
    fn hb_in(&mut self, regs: &mut guestrpc::Regs, buf: &mut [u8]) {
        self.vm.hb_in(regs, buf)
    }
}

/// A daemon started as the binary starts it (full report, clock), and
/// idle, over a [`Wire`].
fn started_on_wire(sys: FakeSystem, refuse_key_11: bool) -> (Daemon<FakeSystem>, Wire) {
    let mut wire = Wire::new();
    wire.refuse_key_11 = refuse_key_11;
    let mut d = Daemon::new(sys);
    d.report(&mut wire);
    until_idle(&mut d, &mut wire);
    (d, wire)
}

/// At start the host gets everything vmtoolsd sends: the host name, the
/// OS as one detailed report (key 11) with both names, every NIC with its
/// MAC and addresses (key 10), the address and the uptime in hundredths
/// of a second (key 7).
#[test]
fn everything_is_reported_at_start() {
    let mut sys = guest();
    sys.nics = Some(vec![
        eth0(&[
            (Ipv4Addr::new(192, 0, 2, 10).into(), 24),
            (
                "fe80::fce1:baff:fed0:1".parse::<Ipv6Addr>().unwrap().into(),
                64,
            ),
        ]),
        Nic {
            name: "eth1".into(),
            mac: "fe:e1:ba:d0:00:02".into(),
            addrs: vec![],
        },
    ]);
    let (d, wire) = started_on_wire(sys, false);
    assert_eq!(
        wire.requests(0)[..6],
        [
            "SetGuestInfo 1",
            "SetGuestInfo 11",
            "SetGuestInfo 10",
            "info-set guestinfo.ip",
            "SetGuestInfo 7",
            "tools.capability.statechange"
        ]
    );
    let st = wire.vm.tools.guest_state();
    assert_eq!(st.hostname.as_deref(), Some("guest1"));
    assert_eq!(st.os_name.as_deref(), Some("debian12-64"));
    assert_eq!(
        st.os_full_name.as_deref(),
        Some("Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(
        st.os_detailed.as_deref(),
        Some("bitness='64' familyName='Linux'")
    );
    assert_eq!(st.nics.len(), 2);
    assert_eq!(st.nics[0].mac, "fe:e1:ba:d0:00:01");
    assert_eq!(st.nics[0].addrs.len(), 2);
    assert_eq!(st.nics[1].mac, "fe:e1:ba:d0:00:02");
    assert!(st.nics[1].addrs.is_empty());
    assert_eq!(st.ipv4, Some(Ipv4Addr::new(192, 0, 2, 10)));
    assert_eq!(st.uptime.unwrap().centis, 12_345);
    // Text values go with their NUL, as vmtoolsd sends them.
    assert!(wire.sent.contains(&b"SetGuestInfo  1 guest1\0".to_vec()));
    assert!(wire.sent.contains(&b"SetGuestInfo  7 12345\0".to_vec()));
    assert!(d.sys.log.is_empty(), "{:?}", d.sys.log);
}

/// A host that refuses key 11 (older VMware) gets the names as keys 5 and
/// 6, as vmtoolsd falls back; and key 11 is not tried again until the
/// next full report.
#[test]
fn a_host_without_key_11_gets_keys_5_and_6() {
    let (mut d, mut wire) = started_on_wire(guest(), true);
    assert_eq!(
        wire.requests(0)[1..4],
        ["SetGuestInfo 11", "SetGuestInfo 5", "SetGuestInfo 6"]
    );
    let st = wire.vm.tools.guest_state();
    assert_eq!(st.os_name.as_deref(), Some("debian12-64"));
    assert_eq!(
        st.os_full_name.as_deref(),
        Some("Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(st.os_detailed, None);
    assert_eq!(
        d.sys.log,
        ["rpci SetGuestInfo  11 failed: reply 'Invalid arguments'"]
    );
    // The OS changes (an upgrade): keys 5 and 6 straight away.
    d.sys.os.as_mut().unwrap().full_name = "Linux 6.1.0-20-amd64 Debian".into();
    d.sys.mono += vmt::daemon::REPORT_PERIOD;
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(
        wire.requests(from),
        ["SetGuestInfo 5", "SetGuestInfo 6", "SetGuestInfo 7"]
    );
    assert_eq!(
        wire.vm.tools.guest_state().os_full_name.as_deref(),
        Some("Linux 6.1.0-20-amd64 Debian")
    );
}

/// Only what changed is sent again: nothing on idle ticks, the NICs (and
/// the address) when links changed and they differ, the host name as
/// soon as it changes, the uptime every report period.
#[test]
fn only_what_changed_is_sent() {
    let (mut d, mut wire) = started_on_wire(guest(), false);
    let requests = |w: &Wire| w.vm.tools.reports();
    let before = requests(&wire);
    for _ in 0..5 {
        let exits = wire.vm.exits();
        assert_eq!(d.tick(&mut wire), Next::Sleep(POLL_INTERVAL));
        assert_eq!(wire.vm.exits() - exits, 2, "an idle poll");
    }
    // A notification with nothing changed: a look, no request.
    d.links_changed();
    let exits = wire.vm.exits();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.vm.exits() - exits, 2);
    assert_eq!(requests(&wire), before);

    // An address added: the NICs go out, the first IPv4 is the same.
    let v6: IpAddr = "2001:db8::10".parse::<Ipv6Addr>().unwrap().into();
    d.sys.nics = Some(vec![eth0(&[
        (Ipv4Addr::new(192, 0, 2, 10).into(), 24),
        (v6, 64),
    ])]);
    // Not without a notification (until the period's look).
    until_idle(&mut d, &mut wire);
    assert_eq!(requests(&wire), before);
    d.links_changed();
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), ["SetGuestInfo 10"]);
    assert_eq!(wire.vm.tools.guest_state().nics[0].addrs[1].addr, v6);

    // A new first IPv4 address: the NICs and guestinfo.ip.
    let ip = Ipv4Addr::new(198, 51, 100, 7);
    d.sys.ip = Some(ip);
    d.sys.nics = Some(vec![eth0(&[(ip.into(), 24)])]);
    d.links_changed();
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(
        wire.requests(from),
        ["SetGuestInfo 10", "info-set guestinfo.ip"]
    );
    assert_eq!(
        wire.vm.tools.get_guestinfo("ip"),
        Some(&b"198.51.100.7"[..])
    );

    // The host name, looked at on every idle tick.
    d.sys.hostname = Some("renamed".into());
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), ["SetGuestInfo 1"]);
    assert_eq!(
        wire.vm.tools.guest_state().hostname.as_deref(),
        Some("renamed")
    );

    // A report period later: the uptime, and nothing that did not change.
    d.sys.uptime = Some(12_345 + 3_000);
    d.sys.mono += vmt::daemon::REPORT_PERIOD - Duration::from_millis(1);
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), Vec::<String>::new());
    d.sys.mono += Duration::from_millis(1);
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), ["SetGuestInfo 7"]);
    assert_eq!(wire.vm.tools.guest_state().uptime.unwrap().secs(), 153);
    // A NIC change missed by the notifications is found then too.
    d.sys.nics = Some(vec![]);
    d.sys.mono += vmt::daemon::REPORT_PERIOD;
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), ["SetGuestInfo 10", "SetGuestInfo 7"]);
    assert!(wire.vm.tools.guest_state().nics.is_empty());
    assert!(d.sys.log.is_empty(), "{:?}", d.sys.log);
}

/// After a resume, and after a `reset` on a channel that was running (the
/// host lost track), everything goes again, changed or not, as vmtoolsd
/// clears its cache then; key 11 is tried again.
#[test]
fn everything_again_after_resume_and_reset() {
    let (mut d, mut wire) = started_on_wire(guest(), false);
    let full = [
        "SetGuestInfo 1",
        "SetGuestInfo 11",
        "SetGuestInfo 10",
        "info-set guestinfo.ip",
        "SetGuestInfo 7",
    ];
    wire.vm.tools.queue(TcloCommand::OsResume).unwrap();
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    let got = wire.requests(from);
    assert_eq!(got[0], "tools.os.statechange.status 1");
    assert_eq!(got[1..], full);

    wire.vm.tools.queue(TcloCommand::Reset).unwrap();
    let from = wire.sent.len();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.requests(from), full);
    // Then quiet again.
    let before = wire.vm.tools.reports();
    until_idle(&mut d, &mut wire);
    assert_eq!(wire.vm.tools.reports(), before);
}

/// `vmt status` shows the OS and the NICs the host took.
#[test]
fn the_status_shows_the_os_and_nics() {
    let (d, _wire) = started_on_wire(guest(), false);
    let st = d.sys.published.last().unwrap();
    assert_eq!(
        st.os.as_deref(),
        Some("Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(st.nics, ["eth0 fe:e1:ba:d0:00:01 192.0.2.10/24"]);
    let text = st.render();
    assert!(
        text.contains("nic eth0 fe:e1:ba:d0:00:01 192.0.2.10/24\n"),
        "{text}"
    );
    assert!(
        text.contains("os Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)\n"),
        "{text}"
    );
}

/// A host that takes nothing for a while: the reports are retried on the
/// next idle ticks once channels work again, not a report period later.
#[test]
fn reports_that_found_no_channel_are_retried_soon() {
    let mut vm = FakeVcpu::new();
    let taken: Vec<Channel> = (0..MAX_CHANNELS - 1)
        .map(|_| Channel::open(&mut vm, PROTO_RPCI).unwrap())
        .collect();
    // One channel left: the TCLO one gets it, the RPCIs find none.
    let mut d = Daemon::new(guest());
    until_idle(&mut d, &mut vm);
    assert!(vm.tools.guest_state().nics.is_empty());
    for c in taken {
        c.close(&mut vm).unwrap();
    }
    d.sys.mono += vmt::daemon::RETRY_INTERVAL;
    until_idle(&mut d, &mut vm);
    let st = vm.tools.guest_state();
    assert_eq!(st.nics.len(), 1);
    assert_eq!(st.os_name.as_deref(), Some("debian12-64"));
}
