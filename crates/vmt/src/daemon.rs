//! The daemon's core (`vmt -d`): vmt(4)'s TCLO loop from user space.
//!
//! Each tick sends the reply to the last command (or nothing: the poll) and
//! fetches the next command (§5 "wire rule", guestrpc's [`TcloSession`]).
//! After a command it polls again at once; idle, it sleeps
//! [`Settings::poll_interval`] ([`POLL_INTERVAL`] by default); after an error [`RETRY_INTERVAL`], or
//! [`OPEN_RETRY_INTERVAL`] when the host refuses to open a channel (vmt's
//! rates), so it never spins. A problem is logged once, when it starts, and
//! its end once.
//!
//! Replies and actions follow the `tools` test guest (vmt(4)'s wire
//! behaviour): `reset` → `OK ATR toolbox`; `ping` → `OK `;
//! `Capabilities_Register` → the capability RPCIs, then `OK `;
//! `OS_Halt` / `OS_Reboot` / `OS_PowerOn` / `OS_Suspend` / `OS_Resume` →
//! RPCI `tools.os.statechange.status 1 <state>`, then `OK `; halt and
//! reboot send that reply with one more round trip and then act through
//! [`System::power`] (the way the guest's init expects, see
//! [`crate::power`], or the configured command), and when that fails, or
//! the guest is still up [`Settings::power_timeout`] later, through
//! [`System::force_power`] (sync and reboot(2)); a second halt or reboot
//! while one is under way is refused as vmtoolsd refuses it;
//! `OS_Resume` reports the guest again;
//! `Set_Option broadcastIP 1` → `info-set guestinfo.ip <first IPv4>` and
//! `OK `, or `ERROR Unable to find guest IP address`; anything else →
//! `ERROR Unknown command`.
//!
//! Reports ([`crate::report`]), the way vmtoolsd makes them: the host name
//! (`SetGuestInfo  1`), the OS (`SetGuestInfo  11`, vmtoolsd's detailed
//! report; keys 5 and 6 to a host that refuses it), every NIC
//! (`SetGuestInfo  10`, NicInfo v3), the first IPv4 address
//! (`info-set guestinfo.ip`, vmt's) and the uptime (`SetGuestInfo  7`).
//! All of them at start, after `OS_Resume` and after a `reset` on a
//! channel that had been running (the host lost track: a restore, a
//! migration), as vmtoolsd clears its cache then. Otherwise each is sent
//! only when it changed: the host name is compared on every idle tick
//! (uname(2), no backdoor exit); the NICs and the address when
//! [`Daemon::links_changed`] says so (the binary's netlink socket, see
//! [`crate::netlink`]) and every [`REPORT_PERIOD`] as a safety net; the
//! OS every [`REPORT_PERIOD`]; the uptime, which always changes, every
//! [`REPORT_PERIOD`] (vmtoolsd's gather interval).
//!
//! Clock sync ([`crate::clock`]): at start, after every `OS_Resume` and
//! every [`Settings::clock_sync_period`] (checked on idle ticks; zero: no
//! periodic syncs) the host's time is read and the guest's clock stepped
//! or slewed, each correction logged with its size; while
//! [`System::time_keeper`] names an NTP daemon (or anything else keeping
//! the kernel's clock) vmt says so once and leaves the clock alone.
//!
//! What the daemon last did (the channel's state, what it reported, the
//! last clock sync, the last request, a power action under way) is kept
//! in a [`Status`] and handed to [`System::publish`] whenever it changes:
//! `vmt status` reads it from the file the real system writes.
//!
//! The system-facing parts (host name, addresses, NICs, OS, uptime, power,
//! clock, log, status) sit behind
//! [`System`], so the tests run the loop against the host's state machine
//! with a double; [`LinuxSystem`](crate::sys::LinuxSystem) is the real one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use guestrpc::client::{Backdoor, Channel, Error, TcloSession};

use crate::clock::{self, Correction};
use crate::config::LogLevel;
use crate::report::{nicinfo_request, Nic, OsInfo};
use crate::status::{ChannelState, ClockSync, Status};
use guestrpc::guestinfo::{format_set_guest_info, GuestInfoKey};
use guestrpc::proto::{split_rpci_reply, MAX_MESSAGE, PROTO_RPCI};
use guestrpc::tclo::{PowerState, TcloCommand, REPLY_NO_IP, REPLY_OK, REPLY_RESET, REPLY_UNKNOWN};

/// Sleep between polls while idle (vmt's).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Sleep after a failed poll; the next one reopens the channel (vmt's).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Sleep after the host refused to open a channel (vmt's 15 s).
pub const OPEN_RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// How long the guest may take to go down after a halt or reboot was
/// asked of its init before the daemon forces it.
pub const POWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Between reports of the uptime, and checks of the OS and (besides the
/// change notifications) the NICs: vmtoolsd's gather interval.
pub const REPORT_PERIOD: Duration = Duration::from_secs(30);
/// vmtoolsd's reply to a power request while one is under way.
pub const REPLY_IN_PROGRESS: &[u8] = b"ERROR State change already in progress";
/// Room for one TCLO command; longer ones are refused by the client, which
/// then reopens the channel.
const TCLO_BUF_LEN: usize = 4096;

/// What vmt registers on `Capabilities_Register`, in its order (plus
/// `softpowerop_retry`, as the `tools` test guest); 2147483647 =
/// 0x7FFFFFFF is "unmanaged tools".
pub const CAPABILITIES: [&str; 4] = [
    "tools.capability.statechange ",
    "tools.capability.softpowerop_retry ",
    "vmx.capability.unified_loop toolbox",
    "tools.set.version 2147483647",
];

/// A power action the host asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// `OS_Halt`: shut down and power off.
    Halt,
    /// `OS_Reboot`.
    Reboot,
}

/// The guest system, as the daemon sees it.
pub trait System {
    /// The host name to report (`SetGuestInfo  1`).
    fn hostname(&mut self) -> Option<String>;
    /// The first non-loopback IPv4 address (`guestinfo.ip`).
    fn first_ipv4(&mut self) -> Option<Ipv4Addr>;
    /// The NICs to report (`SetGuestInfo  10`); `None`: they could not be
    /// read (nothing is sent).
    fn nics(&mut self) -> Option<Vec<Nic>>;
    /// The OS as vmtoolsd names it; `None`: unknown (nothing is sent).
    fn os_info(&mut self) -> Option<OsInfo>;
    /// Time since boot in hundredths of a second (`SetGuestInfo  7`).
    fn uptime_centis(&mut self) -> Option<u64>;
    /// Starts halting or rebooting the guest, the configured way or the
    /// way its init expects; returns once the request is made, with what
    /// was done (`systemctl poweroff`), or why it could not be.
    fn power(&mut self, action: Power) -> Result<String, String>;
    /// Whether what [`System::power`] started has failed since (a command
    /// that exited unsuccessfully): why. Asked on every tick while the
    /// daemon waits for the guest to go down.
    fn power_failed(&mut self) -> Option<String>;
    /// The last resort: sync the file systems and power off or reboot at
    /// once (reboot(2)). Returns only if that failed: why.
    fn force_power(&mut self, action: Power) -> String;
    /// The daemon's status changed: this is it now (`vmt status`).
    fn publish(&mut self, status: &Status);
    /// One log line, at `level`.
    fn log(&mut self, level: LogLevel, line: &str);
    /// The guest's wall clock (`CLOCK_REALTIME`), µs since the Unix epoch.
    fn realtime_us(&mut self) -> i64;
    /// A monotonic clock, for the daemon's timers.
    fn monotonic(&mut self) -> Duration;
    /// Steps the wall clock by `offset_us` (and cancels any slew under way).
    fn step_clock(&mut self, offset_us: i64) -> Result<(), String>;
    /// Slews the wall clock by `offset_us`, replacing any slew under way.
    fn slew_clock(&mut self, offset_us: i64) -> Result<(), String>;
    /// What else keeps the clock (an NTP daemon, say), if anything: then
    /// vmt leaves the clock alone.
    fn time_keeper(&mut self) -> Option<String>;
}

/// The daemon's tunables (vmt.conf(5), flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Between periodic clock syncs; zero: none (still at start and after
    /// a resume).
    pub clock_sync_period: Duration,
    /// Offsets at least this large are stepped, smaller ones slewed.
    pub clock_step_threshold: Duration,
    /// Sleep between polls while idle.
    pub poll_interval: Duration,
    /// How long after a halt or reboot was asked the guest may still be
    /// up before it is forced (sync and reboot(2)); zero: never forced
    /// (but still when the request itself fails).
    pub power_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            clock_sync_period: clock::DEFAULT_PERIOD,
            clock_step_threshold: clock::DEFAULT_STEP_THRESHOLD,
            poll_interval: POLL_INTERVAL,
            power_timeout: POWER_TIMEOUT,
        }
    }
}

/// The last clock correction made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastCorrection {
    /// What was done ([`Correction::None`]: the clock was within the noise).
    pub correction: Correction,
    /// Where the host's time came from.
    pub source: clock::Source,
}

/// A halt or reboot under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    action: Power,
    /// When it is forced ([`System::monotonic`]), if ever.
    deadline: Option<Duration>,
}

fn doing(action: Power) -> &'static str {
    match action {
        Power::Halt => "halting",
        Power::Reboot => "rebooting",
    }
}

/// A duration for a log line: `60 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// What the loop does after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Poll again at once (a command came).
    Now,
    /// Sleep this long first.
    Sleep(Duration),
}

/// The daemon's state: the TCLO session, a kept-open RPCI channel, the
/// problem being reported.
pub struct Daemon<S> {
    /// The system it reports and acts on.
    pub sys: S,
    session: TcloSession,
    rpc: Option<Channel>,
    tclo_buf: Vec<u8>,
    reply_buf: Vec<u8>,
    /// The TCLO problem logged last, until it ends.
    problem: Option<String>,
    settings: Settings,
    /// When the next periodic clock sync is due ([`System::monotonic`]).
    sync_due: Option<Duration>,
    /// The time keeper last noted, while it runs.
    keeper: Option<String>,
    /// The clock sync problem logged last, until a sync works.
    clock_problem: Option<String>,
    /// The last clock sync's outcome.
    pub last_correction: Option<LastCorrection>,
    /// The halt or reboot under way.
    pending: Option<Pending>,
    /// What [`System::publish`] gets.
    pub status: Status,
    /// What it got last.
    published: Option<Status>,
    /// What the host last took of each report.
    sent: Sent,
    /// Send the OS as key 11 (until a host refuses it).
    os_detailed: bool,
    /// Links or addresses changed since the NICs were last gathered.
    links_changed: bool,
    /// Everything is to be sent again on the next idle tick.
    report_all: bool,
    /// When the uptime, the OS and the NICs are next looked at.
    report_due: Option<Duration>,
    /// `reset`s received.
    resets: u32,
    /// An RPCI request found no working channel since the flag was last
    /// cleared.
    rpci_failed: bool,
    /// The RPCI requests failing, by what they ask (`SetGuestInfo  7`),
    /// with the problem logged: logged again only when it changes.
    rpci_problems: HashMap<String, String>,
}

/// What the host last accepted, per report.
#[derive(Clone, Debug, Default)]
struct Sent {
    hostname: Option<String>,
    os: Option<OsInfo>,
    /// The whole `SetGuestInfo  10` request.
    nics: Option<Vec<u8>>,
    ip: Option<Ipv4Addr>,
}

impl<S: System> Daemon<S> {
    /// A daemon with no channel yet, with the default [`Settings`].
    pub fn new(sys: S) -> Self {
        Self::with_settings(sys, Settings::default())
    }

    /// A daemon with no channel yet.
    pub fn with_settings(sys: S, settings: Settings) -> Self {
        Daemon {
            sys,
            session: TcloSession::new(),
            rpc: None,
            tclo_buf: vec![0; TCLO_BUF_LEN],
            reply_buf: vec![0; MAX_MESSAGE],
            problem: None,
            settings,
            sync_due: None,
            keeper: None,
            clock_problem: None,
            last_correction: None,
            pending: None,
            status: Status {
                pid: std::process::id(),
                ..Status::default()
            },
            published: None,
            sent: Sent::default(),
            os_detailed: true,
            links_changed: false,
            report_all: false,
            report_due: None,
            resets: 0,
            rpci_failed: false,
            rpci_problems: HashMap::new(),
        }
        .started()
    }

    /// New tunables (a reloaded vmt.conf(5)): a changed sync period
    /// counts from now; the rest applies from the next tick.
    pub fn set_settings(&mut self, settings: Settings) {
        if settings.clock_sync_period != self.settings.clock_sync_period {
            self.sync_due = match settings.clock_sync_period {
                p if p.is_zero() => None,
                p => Some(self.sys.monotonic().saturating_add(p)),
            };
        }
        self.settings = settings;
    }

    fn started(mut self) -> Self {
        let now = self.sys.realtime_us();
        self.status.started_us = now;
        self.status.channel_since_us = now;
        self
    }

    /// Hands the status to [`System::publish`] if it changed since.
    pub fn publish(&mut self) {
        if self.published.as_ref() != Some(&self.status) {
            self.sys.publish(&self.status);
            self.published = Some(self.status.clone());
        }
    }

    /// Whether a halt or reboot is under way.
    pub fn powering(&self) -> bool {
        self.pending.is_some()
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Syncs the clock with the host's (see [`crate::clock`]) and restarts
    /// the periodic timer; `reason` goes into the log line.
    pub fn sync_clock(&mut self, bd: &mut impl Backdoor, reason: &str) {
        self.sync_due = match self.settings.clock_sync_period {
            p if p.is_zero() => None,
            p => Some(self.sys.monotonic().saturating_add(p)),
        };
        if let Some(k) = self.sys.time_keeper() {
            if self.keeper.as_deref() != Some(k.as_str()) {
                self.sys.log(
                    LogLevel::Info,
                    &format!("clock: {k} keeps the time; not syncing from the host"),
                );
                self.status.clock_note = Some(format!("{k} keeps the time"));
                self.keeper = Some(k);
            }
            return self.publish();
        }
        if self.keeper.take().is_some() {
            self.sys.log(
                LogLevel::Info,
                "clock: nothing else keeps the time now; syncing from the host",
            );
        }
        let before = self.sys.realtime_us();
        let host = clock::host_time(bd);
        let after = self.sys.realtime_us();
        let Some(host) = host else {
            return self
                .clock_failed("the host does not tell its time (GETTIMEFULL, GETTIME)".into());
        };
        let Some(offset) = clock::offset(host.unix_us, before, after) else {
            return self.clock_failed(format!(
                "the host's time ({} µs since 1970) is not believable",
                host.unix_us
            ));
        };
        let correction = clock::decide(offset, self.settings.clock_step_threshold);
        let (what, result) = match correction {
            Correction::None => ("", Ok(())),
            Correction::Step(us) => ("step", self.sys.step_clock(us)),
            Correction::Slew(us) => ("slew", self.sys.slew_clock(us)),
        };
        let size = clock::format_offset(offset);
        if let Err(e) = result {
            return self.clock_failed(format!("{what} by {size} failed: {e}"));
        }
        self.clock_problem = None;
        self.status.clock_note = None;
        self.last_correction = Some(LastCorrection {
            correction,
            source: host.source,
        });
        self.status.clock = Some(ClockSync {
            offset_us: offset,
            correction,
            source: host.source,
            at_us: self.sys.realtime_us(),
        });
        match correction {
            Correction::None => {}
            Correction::Step(_) => self.sys.log(
                LogLevel::Info,
                &format!("clock ({reason}): stepped by {size}"),
            ),
            Correction::Slew(_) => self.sys.log(
                LogLevel::Info,
                &format!("clock ({reason}): slewing by {size}"),
            ),
        }
        self.publish();
    }

    fn clock_failed(&mut self, why: String) {
        let line = format!("clock: {why}");
        if self.clock_problem.as_deref() != Some(line.as_str()) {
            self.sys.log(LogLevel::Error, &line);
            self.status.clock_note = Some(why);
            self.clock_problem = Some(line);
        }
        self.publish();
    }

    /// Timed work, on an idle tick: the periodic clock sync.
    fn periodic(&mut self, bd: &mut impl Backdoor, now: Duration) {
        if self.sync_due.is_some_and(|t| now >= t) {
            self.sync_clock(bd, "periodic");
        }
    }

    /// Whether the TCLO channel is open.
    pub fn is_open(&self) -> bool {
        self.session.is_open()
    }

    /// Links or addresses changed (a netlink notification): the NICs and
    /// the address are gathered again on the next idle tick, and sent if
    /// they differ from what the host has.
    pub fn links_changed(&mut self) {
        self.links_changed = true;
    }

    /// Reports everything, whether or not the host has it already: at
    /// start, after a resume, after the host lost track.
    pub fn report(&mut self, bd: &mut impl Backdoor) {
        self.sent = Sent::default();
        self.os_detailed = true;
        self.report_all = false;
        let now = self.sys.monotonic();
        self.update(bd, true, now);
    }

    /// Sends what changed since the host last took it (all of it when
    /// `all`); see the module's text for when each is looked at.
    fn update(&mut self, bd: &mut impl Backdoor, all: bool, now: Duration) {
        self.rpci_failed = false;
        let due = all || self.report_due.is_none_or(|t| now >= t);
        if due {
            self.report_due = Some(now.saturating_add(REPORT_PERIOD));
        }
        if let Some(name) = self.sys.hostname() {
            if self.sent.hostname.as_ref() != Some(&name) {
                self.send_hostname(bd, name);
            }
        }
        if due {
            if let Some(os) = self.sys.os_info() {
                if self.sent.os.as_ref() != Some(&os) {
                    self.send_os(bd, os);
                }
            }
        }
        if due || std::mem::take(&mut self.links_changed) {
            if let Some(nics) = self.sys.nics() {
                self.send_nics(bd, &nics);
            }
            match self.sys.first_ipv4() {
                Some(ip) if self.sent.ip != Some(ip) => {
                    self.send_ip(bd, ip);
                }
                Some(_) => {}
                // Gone: sent again when one comes back.
                None => self.sent.ip = None,
            }
        }
        if due {
            if let Some(centis) = self.sys.uptime_centis() {
                self.set_guest_info(bd, GuestInfoKey::Uptime, centis.to_string().as_bytes());
            }
        }
        // What found no channel is tried again soon, not a period later
        // (what the host refused waits for the period).
        if std::mem::take(&mut self.rpci_failed) {
            self.report_due = Some(now.saturating_add(RETRY_INTERVAL));
        }
        self.publish();
    }

    /// `SetGuestInfo  <key> <value>` (text values with their NUL, as
    /// vmtoolsd sends them); whether the host took it.
    fn set_guest_info(&mut self, bd: &mut impl Backdoor, key: GuestInfoKey, value: &[u8]) -> bool {
        let mut v = value.to_vec();
        v.push(0);
        let mut buf = vec![0u8; v.len() + 32];
        match format_set_guest_info(&mut buf, key, &v) {
            Ok(req) => {
                let req = req.to_vec();
                self.request(bd, &req)
            }
            Err(e) => {
                self.sys.log(
                    LogLevel::Error,
                    &format!("SetGuestInfo {}: {e}", key as u32),
                );
                false
            }
        }
    }

    fn send_hostname(&mut self, bd: &mut impl Backdoor, name: String) {
        if self.set_guest_info(bd, GuestInfoKey::DnsName, name.as_bytes()) {
            self.status.hostname = Some(name.clone());
            self.status.reported_us = Some(self.sys.realtime_us());
            self.sent.hostname = Some(name);
        }
    }

    /// The OS as one key-11 report, as modern vmtoolsd sends it; as keys 5
    /// and 6 when the host refuses that (and from then on, until the next
    /// full report).
    fn send_os(&mut self, bd: &mut impl Backdoor, os: OsInfo) {
        let detailed = match self.os_detailed {
            true => self.request_outcome(bd, &os.detailed_request()),
            false => Outcome::Refused,
        };
        let ok = match detailed {
            Outcome::Took => true,
            // No channel: nothing learnt about the host; tried again.
            Outcome::Failed => false,
            Outcome::Refused => {
                self.os_detailed = false;
                let full =
                    self.set_guest_info(bd, GuestInfoKey::OsNameFull, os.full_name.as_bytes());
                let short = self.set_guest_info(bd, GuestInfoKey::OsName, os.short_name.as_bytes());
                full && short
            }
        };
        if ok {
            self.status.os = Some(os.full_name.clone());
            self.status.reported_us = Some(self.sys.realtime_us());
            self.sent.os = Some(os);
        }
    }

    /// `SetGuestInfo  10` when the NICs differ from what the host has.
    fn send_nics(&mut self, bd: &mut impl Backdoor, nics: &[Nic]) {
        let req = match nicinfo_request(nics) {
            Ok(r) => r,
            Err(e) => {
                self.sys
                    .log(LogLevel::Error, &format!("SetGuestInfo 10: {e}"));
                return;
            }
        };
        if self.sent.nics.as_ref() == Some(&req) {
            return;
        }
        if self.request(bd, &req) {
            self.status.nics = nics.iter().map(Nic::summary).collect();
            self.status.reported_us = Some(self.sys.realtime_us());
            self.sent.nics = Some(req);
        }
    }

    /// `info-set guestinfo.ip`; whether the host took it.
    fn send_ip(&mut self, bd: &mut impl Backdoor, ip: Ipv4Addr) -> bool {
        let ok = self.request(bd, format!("info-set guestinfo.ip {ip}").as_bytes());
        if ok {
            self.status.ip = Some(ip);
            self.status.reported_us = Some(self.sys.realtime_us());
            self.sent.ip = Some(ip);
        }
        ok
    }

    /// One TCLO round trip and what it asked for.
    pub fn tick(&mut self, bd: &mut impl Backdoor) -> Next {
        self.check_power();
        let next = self.tick_inner(bd);
        self.publish();
        next
    }

    fn tick_inner(&mut self, bd: &mut impl Backdoor) -> Next {
        let cmd = match self.session.poll(bd, &mut self.tclo_buf) {
            Ok(None) => {
                self.recovered();
                // One clock read for the tick's timers.
                let now = self.sys.monotonic();
                if std::mem::take(&mut self.report_all) {
                    self.report(bd);
                } else {
                    self.update(bd, false, now);
                }
                self.periodic(bd, now);
                return Next::Sleep(self.settings.poll_interval);
            }
            Ok(Some(cmd)) => cmd.to_owned_command(),
            Err(e) => return self.failed(e),
        };
        self.recovered();
        self.sys.log(LogLevel::Debug, &format!("tclo: {cmd}"));
        self.status.request = Some((cmd.to_string(), self.sys.realtime_us()));
        let (reply, power) = self.handle(bd, &cmd);
        self.session.set_reply(reply);
        if let Some(action) = power {
            // The reply only sits in the session: one more round trip
            // sends it, so the host sees the acknowledgement before the
            // machine goes away.
            match self.session.poll(bd, &mut self.tclo_buf) {
                Ok(None) => {}
                Ok(Some(c)) => self
                    .sys
                    .log(LogLevel::Error, &format!("dropped command {c}")),
                Err(e) => self.sys.log(LogLevel::Error, &format!("tclo: {e}")),
            }
            self.start_power(action);
        }
        Next::Now
    }

    /// Halts or reboots through [`System::power`]; forces it at once when
    /// that fails.
    fn start_power(&mut self, action: Power) {
        let what = doing(action);
        match self.sys.power(action) {
            Ok(how) => {
                let line = format!("{what}: {how}");
                self.sys.log(LogLevel::Info, &line);
                self.status.power = Some((line, self.sys.realtime_us()));
                let timeout = self.settings.power_timeout;
                self.pending = Some(Pending {
                    action,
                    deadline: (!timeout.is_zero())
                        .then(|| self.sys.monotonic().saturating_add(timeout)),
                });
            }
            Err(e) => self.force(action, &format!("{what} failed: {e}")),
        }
    }

    /// While a halt or reboot is under way: forces it when what was
    /// started failed, or when the guest is still up at the deadline.
    fn check_power(&mut self) {
        let Some(p) = self.pending else { return };
        let what = doing(p.action);
        if let Some(e) = self.sys.power_failed() {
            return self.force(p.action, &format!("{what} failed: {e}"));
        }
        if p.deadline.is_some_and(|d| self.sys.monotonic() >= d) {
            let after = seconds(self.settings.power_timeout);
            self.force(p.action, &format!("still up {after} after {what}"));
        }
    }

    /// The last resort: sync and reboot(2) through
    /// [`System::force_power`], which returns only when that failed (then
    /// logged; the daemon goes on).
    fn force(&mut self, action: Power, why: &str) {
        self.pending = None;
        self.sys.log(
            LogLevel::Error,
            &format!("{why}; last resort: sync and reboot(2)"),
        );
        self.status.power = Some((
            format!("{}: sync and reboot(2), the last resort", doing(action)),
            self.sys.realtime_us(),
        ));
        self.publish();
        let e = self.sys.force_power(action);
        self.sys
            .log(LogLevel::Error, &format!("reboot(2) failed: {e}"));
    }

    /// Closes the channels (on exit).
    pub fn close(&mut self, bd: &mut impl Backdoor) {
        self.session.close(bd);
        if let Some(c) = self.rpc.take() {
            let _ = c.close(bd);
        }
    }

    fn failed(&mut self, e: Error) -> Next {
        let line = format!("tclo: {e}");
        if self.problem.as_deref() != Some(line.as_str()) {
            self.sys.log(LogLevel::Error, &format!("{line}; retrying"));
            self.status.channel = ChannelState::Failing(line.clone());
            self.status.channel_since_us = self.sys.realtime_us();
            self.problem = Some(line);
        }
        Next::Sleep(if e == Error::OpenFailed {
            OPEN_RETRY_INTERVAL
        } else {
            RETRY_INTERVAL
        })
    }

    fn recovered(&mut self) {
        if self.problem.take().is_some() {
            self.sys.log(LogLevel::Info, "tclo: channel open again");
        }
        if self.status.channel != ChannelState::Open {
            self.status.channel = ChannelState::Open;
            self.status.channel_since_us = self.sys.realtime_us();
        }
    }

    /// Acts on one command: the reply, and the power action to take once
    /// it is sent.
    fn handle(
        &mut self,
        bd: &mut impl Backdoor,
        cmd: &TcloCommand<String>,
    ) -> (&'static [u8], Option<Power>) {
        if let Some(state) = cmd.power_state() {
            if self.pending.is_some() && matches!(state, PowerState::Halt | PowerState::Reboot) {
                return (REPLY_IN_PROGRESS, None);
            }
            self.request(
                bd,
                format!("tools.os.statechange.status 1 {}", state as u32).as_bytes(),
            );
            let power = match state {
                PowerState::Halt => Some(Power::Halt),
                PowerState::Reboot => Some(Power::Reboot),
                PowerState::PowerOn => None,
                PowerState::Suspend => {
                    self.sys.log(LogLevel::Info, "suspending");
                    None
                }
                PowerState::Resume => {
                    self.sys.log(LogLevel::Info, "resumed");
                    self.report(bd);
                    self.sync_clock(bd, "resume");
                    None
                }
            };
            return (REPLY_OK, power);
        }
        let reply = match cmd {
            TcloCommand::Reset => {
                // The first comes with the channel the daemon opened at
                // start, after its first report. A later one means the
                // host reset a channel that was running: everything again
                // (on the next idle tick, after this reply).
                self.resets = self.resets.saturating_add(1);
                if self.resets > 1 {
                    self.report_all = true;
                }
                REPLY_RESET
            }
            TcloCommand::Ping => REPLY_OK,
            TcloCommand::CapabilitiesRegister => {
                for c in CAPABILITIES {
                    self.request(bd, c.as_bytes());
                }
                REPLY_OK
            }
            TcloCommand::SetOption(name, value) if name == "broadcastIP" && value == "1" => {
                match self.sys.first_ipv4() {
                    Some(ip) => {
                        // vmt replies OK even when the RPCI fails.
                        self.send_ip(bd, ip);
                        REPLY_OK
                    }
                    None => REPLY_NO_IP,
                }
            }
            _ => REPLY_UNKNOWN,
        };
        (reply, None)
    }

    /// One RPCI request on the kept channel (reopened once if it failed);
    /// whether the host said `1`. See [`Daemon::request_outcome`].
    pub fn request(&mut self, bd: &mut impl Backdoor, req: &[u8]) -> bool {
        self.request_outcome(bd, req) == Outcome::Took
    }

    /// One RPCI request on the kept channel (reopened once if it failed).
    /// A failure is logged once for as long as it lasts: a channel
    /// problem once whatever the request, a refusal (`0 ...`) once per
    /// kind of request (its command and key, not its value) and reply.
    pub fn request_outcome(&mut self, bd: &mut impl Backdoor, req: &[u8]) -> Outcome {
        let label = String::from_utf8_lossy(req.split(|&b| b < 0x20).next().unwrap_or(&[]))
            .trim_end()
            .to_owned();
        let result = loop {
            let (mut chan, fresh) = match self.rpc.take() {
                Some(c) => (c, false),
                None => match Channel::open(bd, PROTO_RPCI) {
                    Ok(c) => (c, true),
                    Err(e) => break Err(e),
                },
            };
            match chan.call(bd, req, &mut self.reply_buf) {
                Ok(reply) => {
                    let ok = split_rpci_reply(reply)
                        .map_err(|t| format!("reply '{}'", String::from_utf8_lossy(t)));
                    self.rpc = Some(chan);
                    break Ok(ok);
                }
                Err(e @ Error::BufferTooSmall(_)) => {
                    self.rpc = Some(chan);
                    break Err(e);
                }
                Err(e) => {
                    let _ = chan.close(bd);
                    if fresh {
                        break Err(e);
                    }
                }
            }
        };
        const CHANNEL: &str = "";
        let (what, why, outcome) = match result {
            Ok(Ok(_)) => {
                self.rpci_problems.remove(CHANNEL);
                self.rpci_problems.remove(&request_kind(&label));
                return Outcome::Took;
            }
            Ok(Err(reply)) => {
                self.rpci_problems.remove(CHANNEL);
                (request_kind(&label), reply, Outcome::Refused)
            }
            Err(e) => {
                self.rpci_failed = true;
                (CHANNEL.to_owned(), e.to_string(), Outcome::Failed)
            }
        };
        if self.rpci_problems.get(&what) != Some(&why) {
            self.sys
                .log(LogLevel::Error, &format!("rpci {label} failed: {why}"));
            self.rpci_problems.insert(what, why);
        }
        outcome
    }
}

/// How an RPCI request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host answered `1 ...`.
    Took,
    /// The host answered, with `0 ...` (or garbage).
    Refused,
    /// No answer: the channel failed.
    Failed,
}

/// What a request asks, without its value: `SetGuestInfo  7`,
/// `info-set guestinfo.ip`, `tools.os.statechange.status 1`.
fn request_kind(label: &str) -> String {
    let words: Vec<&str> = label.split(' ').filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        ["SetGuestInfo", key, ..] => format!("SetGuestInfo  {key}"),
        [cmd, arg, ..] => format!("{cmd} {arg}"),
        _ => label.to_owned(),
    }
}

/// The daemon's loop: report the guest and sync the clock, then tick until
/// `stop` says so (checked at least once a second), waiting between ticks
/// through `wait`, which sleeps at most the time it is given and returns
/// whether links or addresses changed meanwhile (then the daemon ticks at
/// once, and reports the NICs if they differ). Closes the channels at the
/// end.
pub fn run<S: System>(
    d: &mut Daemon<S>,
    bd: &mut impl Backdoor,
    mut wait: impl FnMut(Duration) -> bool,
    mut stop: impl FnMut() -> bool,
) {
    start(d, bd);
    serve(d, bd, &mut wait, &mut stop);
    d.close(bd);
}

/// What the daemon does first: the guest reported, the clock synced.
pub fn start<S: System>(d: &mut Daemon<S>, bd: &mut impl Backdoor) {
    d.publish();
    d.report(bd);
    d.sync_clock(bd, "start");
}

/// The loop: ticks, and sleeps between them woken by `wait` (links
/// changed), until `stop` says so; the channels stay open (the caller
/// closes them, or serves again: after a reload, say).
pub fn serve<S: System>(
    d: &mut Daemon<S>,
    bd: &mut impl Backdoor,
    wait: &mut impl FnMut(Duration) -> bool,
    stop: &mut impl FnMut() -> bool,
) {
    while !stop() {
        if let Next::Sleep(mut left) = d.tick(bd) {
            while !left.is_zero() && !stop() {
                let step = left.min(Duration::from_secs(1));
                if wait(step) {
                    d.links_changed();
                    break;
                }
                left -= step;
            }
        }
    }
}
