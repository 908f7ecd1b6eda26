//! `tools`: guest tools in the manner of OpenBSD vmt(4), bare metal, built on
//! guestrpc's guest end. It answers the host's TCLO power commands, reports
//! host name, OS, uptime and NICs, keeps a guest clock in sync with the host,
//! and can test and time the GuestRPC channel itself. With `dhcp=1` it also
//! drives the VM's virtio-net device (`rt::net`): it gets its address by
//! DHCP, reports that, and answers ARP, pings and UDP echo on it.
//!
//! # Command line (`key=value` words)
//! | key | default | meaning |
//! |---|---|---|
//! | `hostname=NAME` | `testguest` | reported as `SetGuestInfo  1` (also with `dhcp=1`: the DHCP server's host name is not asked for) |
//! | `ip=A.B.C.D/P[,A.B.C.D/P...]` | none | IPv4 addresses of the one NIC (at most 8; `/P` defaults to 24); ignored with `dhcp=1` |
//! | `mac=MAC` | `52:54:00:12:34:56` | that NIC's MAC; ignored with `dhcp=1` when a device is found |
//! | `dhcp=1` | 0 | at boot, find the virtio-net device and get an address by DHCP; report that address (`/P` from the subnet mask) and the device's MAC as the NIC, and keep the network serviced (see Behaviour) |
//! | `echo=PORT` | none | with `dhcp=1`: send UDP datagrams to PORT on our address back to their sender |
//! | `poll_ms=N` | 1000 | TCLO poll interval while idle (vmt's 1 s) |
//! | `clock_sync=N` | 60 | seconds between periodic clock syncs, 0 = none |
//! | `ignore=CMD[,CMD...]` | none | TCLO commands (first word, e.g. `OS_Halt`) never acted on nor answered: for host time-out tests |
//! | `halt_delay_ms=N` | 0 | after acknowledging `OS_Halt`, wait this long before powering off: for grace-period tests |
//! | `halt_touch=MiB` | 0 | after acknowledging `OS_Halt`, first write to every 4 KiB page of MiB MiB of RAM from 16 MiB up (a guest that takes its host's memory, for tests of the VM process's memory limit; RAM must reach that far) |
//! | `selftest=1` | 0 | run the RPCI self-test before the TCLO loop |
//! | `bench=N` | 0 | time N RPCI round trips each way, then power off |
//! | `quiet=1` | 0 | a short boot line (`testguest tools`) and no routine lines (backdoor, tsc, commands, guest info, clock syncs) |
//!
//! # Serial output (tests grep these prefixes)
//! After rt's `testguest tools: boot via ...` line:
//! * `tools: backdoor version <v> type <t>` (GETVERSION), or
//!   `tools: no VMware backdoor` and then nothing more: the guest halts
//!   for ever.
//! * `tools: tsc <hz> Hz (<backdoor GETHZ|cpuid 0x40000010|rt::io::tsc_hz>)`:
//!   the rate the guest clock runs at (see [`tsc_hz`] for why the backdoor
//!   comes first).
//! * `dhcp=1` (also with `quiet=1`): `tools: dhcp ip <a.b.c.d>/<prefix>
//!   router <r|->` once the address is bound (`-`: the ACK named no
//!   router), or `tools: dhcp FAIL <why>` (no device, a device error,
//!   `no OFFER`, `no ACK`, `NAK`, each after at most 10 s), after which
//!   the guest goes on without an address (nor a network). Later, `tools:
//!   net FAIL <why>; network off` if servicing the device fails.
//! * `tools: clock sync (<boot|resume|periodic>): offset <us> us`: host time
//!   minus guest time just before the guest clock was set to the host's
//!   (signed decimal); or `tools: clock sync (<reason>): GETTIMEFULL failed`.
//!   The guest clock starts from the CMOS RTC (whole seconds) at boot.
//! * Self-test (`selftest=1`): `tools: selftest info-set/info-get ok`,
//!   `tools: selftest missing key ok`,
//!   `tools: selftest 64KiB lb ok (<cycles> cycles)`,
//!   `tools: selftest 64KiB hb ok (<cycles> cycles)`, each of them
//!   `tools: selftest <what> FAILED: <detail>` instead on failure, then
//!   `tools: selftest done, <n> failed`. The 64 KiB cases are an `info-set`
//!   of exactly 65536 bytes and its `info-get`; `<cycles>` is the TSC time
//!   of both. The `hb` case fails unless the host offered (and the client
//!   used) the high-bandwidth port, the `lb` case if it was used.
//! * Benchmark (`bench=N`): `rpci: lb count=<N> cycles=<C>` and
//!   `rpci: hb count=<N> cycles=<C>`, or `tools: bench FAILED: <detail>`;
//!   then power-off.
//! * TCLO loop: `tools: command <text>` for each command received;
//!   `tools: ignoring <text>` for an `ignore=`d one; `tools: halting`,
//!   `tools: rebooting`, `tools: suspending` for those commands;
//!   `tools: dropped <text>` for a command that arrives with the final
//!   reply before a halt or reboot; `tools: sent guest info` after each
//!   batch of guest information (with ` (<k> failed)` appended when some of
//!   its requests failed); `tools: tclo failed: <err>; reopening in 1 s`.
//! * `tools: rpci <request> failed: <err>` for any RPCI request that fails
//!   (the request shown up to its first non-printable byte, e.g.
//!   `SetGuestInfo  10`); `<err>` is the transport error or
//!   `reply '<reply>'` when the host answered other than `1 ...`.
//! * `tools: cmdline: ...` for a malformed `ip=` entry or `echo=` port.
//!
//! # Behaviour (guest-channel.md §4, §5)
//! The TCLO loop is vmt's: each tick sends the reply to the last command (or
//! nothing) and fetches the next command; after a command it polls again at
//! once, else it sleeps `poll_ms` (the CPU halts: an idle guest takes
//! next to no host CPU). A new channel first sends `OK ATR toolbox`
//! unsolicited, as vmt does; on any TCLO error the channel is closed and
//! reopened after 1 s (guestrpc's `TcloSession`). Replies: `reset` ->
//! `OK ATR toolbox`; `ping` -> `OK `; `Capabilities_Register` -> RPCIs
//! `tools.capability.statechange `, `tools.capability.softpowerop_retry `,
//! `vmx.capability.unified_loop toolbox`, `tools.set.version 2147483647`,
//! then `OK `; `OS_Halt`/`OS_Reboot`/`OS_PowerOn`/`OS_Resume`/`OS_Suspend`
//! -> RPCI `tools.os.statechange.status 1 <1..5>`, then `OK `. `OS_Halt`
//! and `OS_Reboot` send that reply with one more TCLO round trip before
//! powering off (after `halt_delay_ms`) or resetting; `OS_Resume` also syncs
//! the clock and re-sends the guest info. `Set_Option broadcastIP 1` -> RPCI
//! `info-set guestinfo.ip <first address>` and `OK `, or
//! `ERROR Unable to find guest IP address` without one. Anything else ->
//! `ERROR Unknown command`.
//!
//! Guest info goes out after the first `reset` or `Capabilities_Register`,
//! after every `OS_Resume`, and every 15 s of uptime, on an idle tick (so
//! after the pending TCLO reply): `SetGuestInfo  1 <hostname>`,
//! `SetGuestInfo  5 testguest tools 0.1 x86_64`, `SetGuestInfo  6 other-64`,
//! `SetGuestInfo  7 <uptime s>00`, `SetGuestInfo  10 <NicInfo v3 XDR>` (one
//! NIC with `mac` and the `ip` list; with `dhcp=1`, the device's MAC and
//! the address DHCP gave, if any) and, with an address,
//! `info-set guestinfo.ip <first address>`.
//!
//! With `dhcp=1` the network is serviced once per tick, just before each
//! TCLO poll: every frame that arrived since (at most 256) is handled, ARP
//! requests and ICMP echo requests for our address answered, UDP datagrams
//! to `echo=` PORT sent back, anything else dropped. The driver polls (the
//! device raises no interrupts), so the idle loop stays idle: a reply
//! waits for the next tick, up to `poll_ms` (a ping's round trip takes
//! that long, twice that when the host must first resolve our address by
//! ARP), and more than 128 frames within one tick overflow the
//! receive ring (the device drops the rest). The lease is never renewed
//! (our VMM's DHCP server gives infinite ones).
//!
//! Everything here runs at CPL3; the 64 KiB message buffers are static.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr};
use core::sync::atomic::{AtomicBool, Ordering};

use guestrpc::backdoor::{cmd, Regs, FAILURE, MAGIC, PORT_LB};
use guestrpc::client::{self, Backdoor, Channel, Error, TcloSession};
use guestrpc::format_into;
use guestrpc::guestinfo::nicinfo::{IpEntry, NicEntry};
use guestrpc::guestinfo::{format_set_guest_info, format_set_guest_info_nics, GuestInfoKey};
use guestrpc::proto::{split_rpci_reply, MAX_MESSAGE, PROTO_RPCI};
use guestrpc::tclo::{PowerState, TcloCommand, REPLY_NO_IP, REPLY_OK, REPLY_RESET, REPLY_UNKNOWN};
use guestrpc::x86::PortIo;
use rt::io::{cpuid, rdtsc, sleep_until};
use rt::net::{self, Ip, Mac, Net, Router};
use rt::println;

rt::guest!("tools", main);

/// Room for the largest GuestRPC message, plus slack.
const BUF_LEN: usize = MAX_MESSAGE + 256;
/// TCLO commands are short lines; a longer one is refused by the client
/// (and the channel reopened).
const TCLO_BUF_LEN: usize = 4096;
/// Most addresses `ip=` takes.
const MAX_IPS: usize = 8;
/// Seconds between guest-info reports (vmt sends the uptime this often).
const GUEST_INFO_PERIOD_S: u64 = 15;
/// Wait after a TCLO error before reopening (vmt's).
const TCLO_RETRY_MS: u64 = 1000;
/// `SetGuestInfo  5`: vmt sends "ostype osrelease osversion/arch".
const OS_FULL_NAME: &[u8] = b"testguest tools 0.1 x86_64";
/// `SetGuestInfo  6`: NetBSD's name for a 64-bit OS VMware has no name for.
const OS_NAME: &[u8] = b"other-64";
/// What vmt registers on `Capabilities_Register`, in its order (plus
/// `softpowerop_retry`); 2147483647 = 0x7FFFFFFF is "unmanaged tools".
const CAPABILITIES: [&str; 4] = [
    "tools.capability.statechange ",
    "tools.capability.softpowerop_retry ",
    "vmx.capability.unified_loop toolbox",
    "tools.set.version 2147483647",
];
/// Length of the value `bench=` stores, so that the `info-get` reply
/// (`"1 "` + value) is 100 bytes.
const BENCH_VALUE_LEN: usize = 98;
/// `dhcp=1`: the longest wait for the link, DHCP, a free TX buffer.
const NET_TIMEOUT_MS: u64 = 10_000;

// ---------------------------------------------------------------------------
// Static buffers (no allocator).

struct Buffers {
    /// The RPCI request being sent.
    req: [u8; BUF_LEN],
    /// The RPCI reply.
    reply: [u8; BUF_LEN],
    /// The TCLO command just received.
    tclo: [u8; TCLO_BUF_LEN],
}

struct SharedBuffers(UnsafeCell<Buffers>);

// SAFETY: `take_buffers` hands out the only reference, once; this guest runs
// on one CPU.
unsafe impl Sync for SharedBuffers {}

static BUFFERS: SharedBuffers = SharedBuffers(UnsafeCell::new(Buffers {
    req: [0; BUF_LEN],
    reply: [0; BUF_LEN],
    tclo: [0; TCLO_BUF_LEN],
}));
static BUFFERS_TAKEN: AtomicBool = AtomicBool::new(false);

fn take_buffers() -> &'static mut Buffers {
    assert!(
        !BUFFERS_TAKEN.swap(true, Ordering::AcqRel),
        "buffers taken twice"
    );
    // SAFETY: the flag lets only the first caller through, so this is the
    // only reference ever made.
    unsafe { &mut *BUFFERS.0.get() }
}

// ---------------------------------------------------------------------------
// Configuration.

struct Config {
    hostname: &'static str,
    mac: MacText,
    ips: [IpEntry; MAX_IPS],
    n_ips: usize,
    poll_ms: u64,
    clock_sync_s: u64,
    ignore: &'static str,
    halt_delay_ms: u64,
    /// `halt_touch=`: MiB of RAM to write to before halting.
    halt_touch: u64,
    selftest: bool,
    bench: u64,
    /// `quiet=1`: no routine console lines (commands, guest info, clock
    /// syncs), as a real tools daemon keeps off the console. Every line is
    /// port I/O, and a benchmark of many guests should not time printing.
    quiet: bool,
    dhcp: bool,
    /// `echo=`: the UDP echo port.
    echo: Option<u16>,
}

/// The NIC's MAC as reported: `mac=` as given, or the device's.
enum MacText {
    Given(&'static str),
    Device([u8; 17]),
}

impl MacText {
    fn device(mac: [u8; 6]) -> MacText {
        let mut text = [b'0'; 17];
        // 17 characters exactly: it fits.
        let _ = format_into(&mut text, format_args!("{}", Mac(mac)));
        MacText::Device(text)
    }

    fn as_str(&self) -> &str {
        match self {
            MacText::Given(s) => s,
            MacText::Device(text) => core::str::from_utf8(text).unwrap_or(""),
        }
    }
}

impl Config {
    fn from_cmdline() -> Config {
        use rt::cmdline::{get, get_u64};
        let mut cfg = Config {
            hostname: get("hostname").unwrap_or("testguest"),
            mac: MacText::Given(get("mac").unwrap_or("52:54:00:12:34:56")),
            ips: [IpEntry {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix_len: 0,
            }; MAX_IPS],
            n_ips: 0,
            poll_ms: get_u64("poll_ms", 1000),
            clock_sync_s: get_u64("clock_sync", 60),
            ignore: get("ignore").unwrap_or(""),
            halt_delay_ms: get_u64("halt_delay_ms", 0),
            halt_touch: get_u64("halt_touch", 0),
            selftest: get_u64("selftest", 0) != 0,
            bench: get_u64("bench", 0),
            quiet: get_u64("quiet", 0) != 0,
            dhcp: get_u64("dhcp", 0) != 0,
            echo: None,
        };
        if let Some(word) = get("echo") {
            cfg.echo = word.parse::<u16>().ok().filter(|&p| p != 0);
            if cfg.echo.is_none() {
                println!("tools: cmdline: bad echo port '{word}', ignored");
            }
        }
        for word in get("ip").unwrap_or("").split(',').filter(|w| !w.is_empty()) {
            let Some(entry) = parse_ip(word) else {
                println!("tools: cmdline: bad ip '{word}', ignored");
                continue;
            };
            let Some(slot) = cfg.ips.get_mut(cfg.n_ips) else {
                println!("tools: cmdline: more than {MAX_IPS} addresses, '{word}' ignored");
                continue;
            };
            *slot = entry;
            cfg.n_ips += 1;
        }
        cfg
    }

    fn ips(&self) -> &[IpEntry] {
        self.ips.get(..self.n_ips).unwrap_or(&[])
    }

    fn first_ipv4(&self) -> Option<Ipv4Addr> {
        self.ips().iter().find_map(|e| match e.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    }

    /// Whether `ignore=` names the command whose first word is `name`.
    fn ignores(&self, name: &str) -> bool {
        self.ignore.split(',').any(|c| !c.is_empty() && c == name)
    }
}

/// `A.B.C.D/P` (the prefix defaults to 24).
fn parse_ip(word: &str) -> Option<IpEntry> {
    let (addr, prefix) = match word.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|&p| p <= 32)?),
        None => (word, 24),
    };
    Some(IpEntry {
        addr: IpAddr::V4(addr.parse().ok()?),
        prefix_len: prefix,
    })
}

// ---------------------------------------------------------------------------
// Log helpers.

/// Shows bytes from the wire in a log line: up to the first NUL, at most 64
/// characters, non-printable bytes as '.', "..." when cut short.
struct Text<'a>(&'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.split(|&b| b == 0).next().unwrap_or(&[]);
        show(f, text)
    }
}

/// Names an RPCI request in a log line: its text up to the first
/// non-printable byte (binary values are cut off), without trailing spaces.
struct Label<'a>(&'a [u8]);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .position(|b| !(0x20..0x7f).contains(b))
            .unwrap_or(self.0.len());
        show(f, self.0.get(..end).unwrap_or(&[]).trim_ascii_end())
    }
}

fn show(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const MAX: usize = 64;
    for &b in bytes.iter().take(MAX) {
        let c = if (0x20..0x7f).contains(&b) {
            char::from(b)
        } else {
            '.'
        };
        fmt::Write::write_char(f, c)?;
    }
    if bytes.len() > MAX {
        f.write_str("...")?;
    }
    Ok(())
}

/// The self-test's deterministic printable-ASCII (0x21..=0x7e) byte pattern,
/// not periodic in 4 (the low-bandwidth word size) nor in 94.
fn pattern(i: usize) -> u8 {
    b'!' + ((i * 7 + i / 94) % 94) as u8
}

// ---------------------------------------------------------------------------
// Time.

/// TSC ticks per second: the host's figure from the backdoor (GETHZ, KVM's
/// TSC rate), else the VMware CPUID timing leaf, else rt's estimate.
///
/// CPUID is a poor source here: on PVM, CPUID at CPL3 is not intercepted,
/// so it shows the host machine's leaves, not the ones our VMM sets.
fn tsc_hz(bd: &mut impl Backdoor) -> (u64, &'static str) {
    // Linux's use of GETHZ: EBX preset to all ones stays so when the host
    // does not support it.
    let mut r = Regs {
        eax: MAGIC,
        ebx: u32::MAX,
        ecx: u32::from(cmd::GETHZ),
        edx: u32::from(PORT_LB),
        ..Regs::default()
    };
    bd.lb(&mut r);
    let hz = u64::from(r.ebx) << 32 | u64::from(r.eax);
    if r.ebx != u32::MAX && r.eax != FAILURE && hz != 0 {
        // ECX is the LAPIC timer's rate: with both, rt's sleeps need not
        // measure the timer (a ~1 ms spin per boot), as Linux on VMware.
        rt::io::set_clock_rates(hz, u64::from(r.ecx));
        return (hz, "backdoor GETHZ");
    }
    if cpuid(1, 0).2 & (1 << 31) != 0 {
        let (max, b, c, d) = cpuid(0x4000_0000, 0);
        let mut sig = [0u8; 12];
        for (dst, word) in sig.chunks_exact_mut(4).zip([b, c, d]) {
            dst.copy_from_slice(&word.to_le_bytes());
        }
        if &sig == b"VMwareVMware" && max >= 0x4000_0010 {
            let khz = cpuid(0x4000_0010, 0).0;
            if khz != 0 {
                return (u64::from(khz) * 1000, "cpuid 0x40000010");
            }
        }
    }
    (rt::io::tsc_hz(), "rt::io::tsc_hz")
}

/// The guest's wall clock: µs since the Unix epoch at a TSC reading, plus
/// the TSC rate.
struct Clock {
    base_us: u64,
    base_tsc: u64,
    hz: u64,
}

impl Clock {
    fn at(&self, tsc: u64) -> u64 {
        let ticks = u128::from(tsc.saturating_sub(self.base_tsc));
        let us = ticks * 1_000_000 / u128::from(self.hz.max(1));
        self.base_us
            .saturating_add(u64::try_from(us).unwrap_or(u64::MAX))
    }
}

/// Counts the backdoor calls of each kind, to tell whether a transfer used
/// the high-bandwidth port.
struct Counted<'a, B> {
    inner: &'a mut B,
    lb: u64,
    hb: u64,
}

/// The backdoor ports, sending over the low-bandwidth port when `lb_send`
/// (see `Backdoor::prefer_lb_send`: under KVM that takes a quarter of the
/// exits). The high-bandwidth self-test and benchmark turn it off.
struct Ports {
    io: PortIo,
    lb_send: bool,
}

impl Backdoor for Ports {
    fn lb(&mut self, regs: &mut Regs) {
        self.io.lb(regs);
    }

    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        self.io.hb_out(regs, data);
    }

    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        self.io.hb_in(regs, buf);
    }

    fn prefer_lb_send(&self) -> bool {
        self.lb_send
    }
}

impl<B: Backdoor> Backdoor for Counted<'_, B> {
    fn lb(&mut self, regs: &mut Regs) {
        self.lb += 1;
        self.inner.lb(regs);
    }

    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        self.hb += 1;
        self.inner.hb_out(regs, data);
    }

    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        self.hb += 1;
        self.inner.hb_in(regs, buf);
    }

    fn prefer_lb_send(&self) -> bool {
        self.inner.prefer_lb_send()
    }
}

/// One RPCI request on a fresh channel, like `client::rpci`, with payloads
/// forced onto the low-bandwidth port when `force_lb` is set.
fn rpci_on<'b>(
    bd: &mut impl Backdoor,
    request: &[u8],
    reply: &'b mut [u8],
    force_lb: bool,
) -> Result<&'b [u8], Error> {
    if !force_lb {
        return client::rpci(bd, request, reply);
    }
    let mut chan = Channel::open(bd, PROTO_RPCI)?;
    chan.force_lb = true;
    let result = chan.call(bd, request, reply);
    // As client::rpci: the reply is what matters.
    let _ = chan.close(bd);
    result
}

/// One RPCI of the benchmark; prints why and returns false unless `accept`
/// takes the reply.
fn bench_call(
    bd: &mut impl Backdoor,
    request: &[u8],
    reply: &mut [u8],
    force_lb: bool,
    port: &str,
    accept: impl Fn(&[u8]) -> bool,
) -> bool {
    match rpci_on(bd, request, reply, force_lb) {
        Ok(r) if accept(r) => true,
        Ok(r) => {
            println!("tools: bench FAILED: {port}: reply '{}'", Text(r));
            false
        }
        Err(e) => {
            println!("tools: bench FAILED: {port}: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// The tools.

/// What the TCLO loop does after replying to a command.
enum After {
    Continue,
    Halt,
    Reboot,
}

struct Tools {
    bd: Ports,
    cfg: Config,
    req: &'static mut [u8; BUF_LEN],
    reply: &'static mut [u8; BUF_LEN],
    boot_tsc: u64,
    clock: Clock,
    /// When the next guest-info batch is due (TSC); none before the first
    /// `reset` / `Capabilities_Register`.
    info_due: Option<u64>,
    /// When the next periodic clock sync is due (TSC); none if disabled.
    sync_due: Option<u64>,
    /// The RPCI channel, kept open between requests as vmtoolsd keeps its
    /// own: opening and closing one per request costs two more exits each.
    rpc: Option<Channel>,
    /// `dhcp=1`: the network device, once it has its address.
    net: Option<Net>,
}

impl Tools {
    fn hz(&self) -> u64 {
        self.clock.hz
    }

    fn ticks_ms(&self, ms: u64) -> u64 {
        (self.hz() / 1000).saturating_mul(ms)
    }

    /// Sleeps (halts, see `rt::io::sleep_until`) for `ms` at our TSC rate.
    fn sleep_ms(&self, ms: u64) {
        sleep_until(rdtsc().saturating_add(self.ticks_ms(ms)));
    }

    fn uptime_s(&self) -> u64 {
        rdtsc().saturating_sub(self.boot_tsc) / self.hz().max(1)
    }

    // --- RPCI ---------------------------------------------------------------

    /// Sends `self.req[..len]` as one RPCI request; the reply's length in
    /// `self.reply` on success.
    /// `force_lb` requests go on a channel of their own (self-test).
    fn rpci(&mut self, len: usize, force_lb: bool) -> Result<usize, Error> {
        let req = self.req.get(..len).ok_or(Error::Format)?;
        if force_lb {
            return rpci_on(&mut self.bd, req, &mut self.reply[..], true).map(<[u8]>::len);
        }
        // A failed call leaves the channel in an unknown state (the host may
        // have reset it, the VM may have been reset under it): drop it, and
        // if it was an old one, try once more on a fresh one.
        loop {
            let (mut chan, fresh) = match self.rpc.take() {
                Some(c) => (c, false),
                None => (Channel::open(&mut self.bd, PROTO_RPCI)?, true),
            };
            match chan.call(&mut self.bd, req, &mut self.reply[..]) {
                Ok(r) => {
                    let n = r.len();
                    self.rpc = Some(chan);
                    return Ok(n);
                }
                // The channel itself is fine: the reply was discarded.
                Err(e @ Error::BufferTooSmall(_)) => {
                    self.rpc = Some(chan);
                    return Err(e);
                }
                Err(e) => {
                    let _ = chan.close(&mut self.bd);
                    if fresh {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Sends `self.req[..len]` and checks that the host answered `1 ...`.
    /// Failures are logged; returns whether it succeeded.
    fn request(&mut self, len: usize) -> bool {
        let result = self.rpci(len, false);
        let label = Label(self.req.get(..len).unwrap_or(&[]));
        match result {
            Ok(n) => {
                let reply = self.reply.get(..n).unwrap_or(&[]);
                if split_rpci_reply(reply).is_ok() {
                    return true;
                }
                println!("tools: rpci {label} failed: reply '{}'", Text(reply));
            }
            Err(e) => println!("tools: rpci {label} failed: {e}"),
        }
        false
    }

    /// Formats a text request into `self.req` and sends it like `request`.
    fn request_fmt(&mut self, args: fmt::Arguments<'_>) -> bool {
        match format_into(&mut self.req[..], args) {
            Ok(r) => {
                let n = r.len();
                self.request(n)
            }
            Err(_) => {
                println!("tools: rpci {args} failed: {}", Error::Format);
                false
            }
        }
    }

    // --- Clock --------------------------------------------------------------

    /// Sets the guest clock to the host's (GETTIMEFULL) and logs the offset.
    fn sync_clock(&mut self, reason: &str) {
        let before = rdtsc();
        let host = client::get_time_full(&mut self.bd);
        let after = rdtsc();
        let Some(host) = host else {
            println!("tools: clock sync ({reason}): GETTIMEFULL failed");
            return;
        };
        // The host read its clock somewhere inside the call.
        let tsc = before + (after - before) / 2;
        let host_us = host
            .secs
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(host.usecs));
        let offset = i128::from(host_us) - i128::from(self.clock.at(tsc));
        self.clock.base_us = host_us;
        self.clock.base_tsc = tsc;
        if !self.cfg.quiet {
            println!("tools: clock sync ({reason}): offset {offset} us");
        }
    }

    // --- Guest info -----------------------------------------------------------

    /// Sends one batch of guest information.
    fn send_guest_info(&mut self) {
        let mut failed = 0;
        let mut uptime = [0u8; 24];
        let uptime =
            format_into(&mut uptime, format_args!("{}00", self.uptime_s())).unwrap_or(b"0");
        let hostname = self.cfg.hostname.as_bytes();
        let texts: [(GuestInfoKey, &[u8]); 4] = [
            (GuestInfoKey::DnsName, hostname),
            (GuestInfoKey::OsNameFull, OS_FULL_NAME),
            (GuestInfoKey::OsName, OS_NAME),
            (GuestInfoKey::Uptime, uptime),
        ];
        for (key, value) in texts {
            let ok = match format_set_guest_info(&mut self.req[..], key, value) {
                Ok(r) => {
                    let n = r.len();
                    self.request(n)
                }
                Err(e) => {
                    println!("tools: rpci SetGuestInfo  {} failed: {e}", key as u32);
                    false
                }
            };
            failed += u32::from(!ok);
        }
        let nics = [NicEntry {
            mac: self.cfg.mac.as_str(),
            addrs: self.cfg.ips(),
        }];
        let ok = match format_set_guest_info_nics(&mut self.req[..], &nics) {
            Ok(r) => {
                let n = r.len();
                self.request(n)
            }
            Err(e) => {
                println!("tools: rpci SetGuestInfo  10 failed: {e}");
                false
            }
        };
        failed += u32::from(!ok);
        if let Some(ip) = self.cfg.first_ipv4() {
            failed += u32::from(!self.request_fmt(format_args!("info-set guestinfo.ip {ip}")));
        }
        if failed == 0 {
            if !self.cfg.quiet {
                println!("tools: sent guest info");
            }
        } else {
            println!("tools: sent guest info ({failed} failed)");
        }
    }

    // --- TCLO -----------------------------------------------------------------

    /// Acts on one command; returns the reply and what to do once it is sent.
    fn handle(&mut self, cmd: &TcloCommand<&str>) -> (&'static [u8], After) {
        if let Some(state) = cmd.power_state() {
            self.request_fmt(format_args!(
                "tools.os.statechange.status 1 {}",
                state as u32
            ));
            let after = match state {
                PowerState::Halt => After::Halt,
                PowerState::Reboot => After::Reboot,
                PowerState::PowerOn => After::Continue,
                PowerState::Resume => {
                    self.sync_clock("resume");
                    self.restart_sync_timer();
                    self.info_due = Some(rdtsc());
                    After::Continue
                }
                PowerState::Suspend => {
                    println!("tools: suspending");
                    After::Continue
                }
            };
            return (REPLY_OK, after);
        }
        let reply = match cmd {
            TcloCommand::Reset => {
                self.first_guest_info();
                REPLY_RESET
            }
            TcloCommand::Ping => REPLY_OK,
            TcloCommand::CapabilitiesRegister => {
                for c in CAPABILITIES {
                    self.request_fmt(format_args!("{c}"));
                }
                self.first_guest_info();
                REPLY_OK
            }
            TcloCommand::SetOption("broadcastIP", "1") => match self.cfg.first_ipv4() {
                Some(ip) => {
                    // vmt replies OK even when the RPCI fails.
                    self.request_fmt(format_args!("info-set guestinfo.ip {ip}"));
                    REPLY_OK
                }
                None => REPLY_NO_IP,
            },
            _ => REPLY_UNKNOWN,
        };
        (reply, After::Continue)
    }

    /// Schedules the first guest-info batch, unless one already was.
    fn first_guest_info(&mut self) {
        if self.info_due.is_none() {
            self.info_due = Some(rdtsc());
        }
    }

    fn restart_sync_timer(&mut self) {
        self.sync_due = match self.cfg.clock_sync_s {
            0 => None,
            s => Some(rdtsc().saturating_add(self.ticks_ms(s.saturating_mul(1000)))),
        };
    }

    /// Timed work, done on idle ticks.
    fn periodic(&mut self) {
        if self.sync_due.is_some_and(|t| rdtsc() >= t) {
            self.sync_clock("periodic");
            self.restart_sync_timer();
        }
        if self.info_due.is_some_and(|t| rdtsc() >= t) {
            self.send_guest_info();
            self.info_due = Some(rdtsc().saturating_add(self.ticks_ms(GUEST_INFO_PERIOD_S * 1000)));
        }
    }

    /// Handles what the network brought since the last tick (see the module
    /// comment); a failing device is given up.
    fn service_net(&mut self) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        if let Err(e) = net.service(self.cfg.echo) {
            println!("tools: net FAIL {e}; network off");
            self.net = None;
        }
    }

    /// vmt's TCLO loop; never returns.
    fn run(mut self, tclo: &'static mut [u8; TCLO_BUF_LEN]) -> ! {
        let mut session = TcloSession::new();
        loop {
            // Every tick, idle or not.
            self.service_net();
            let after = match session.poll(&mut self.bd, &mut tclo[..]) {
                Ok(Some(cmd)) => {
                    if !self.cfg.quiet {
                        println!("tools: command {cmd}");
                    }
                    if self.cfg.ignores(cmd.name()) {
                        println!("tools: ignoring {cmd}");
                        After::Continue
                    } else {
                        let (reply, after) = self.handle(&cmd);
                        session.set_reply(reply);
                        after
                    }
                }
                Ok(None) => {
                    self.periodic();
                    self.sleep_ms(self.cfg.poll_ms);
                    continue;
                }
                Err(e) => {
                    println!("tools: tclo failed: {e}; reopening in 1 s");
                    self.sleep_ms(TCLO_RETRY_MS);
                    continue;
                }
            };
            match after {
                // A command came: poll again at once.
                After::Continue => {}
                After::Halt | After::Reboot => {
                    // The reply only sits in the session: one more round
                    // trip sends it, so the host sees the acknowledgement
                    // before the machine goes away.
                    match session.poll(&mut self.bd, &mut tclo[..]) {
                        Ok(None) => {}
                        Ok(Some(cmd)) => println!("tools: dropped {cmd}"),
                        Err(e) => println!("tools: tclo failed: {e}"),
                    }
                    if let After::Reboot = after {
                        println!("tools: rebooting");
                        rt::power::reset()
                    }
                    println!("tools: halting");
                    if self.cfg.halt_touch != 0 {
                        println!("tools: touching {} MiB", self.cfg.halt_touch);
                        touch(16 << 20, self.cfg.halt_touch << 20);
                        println!("tools: touched");
                    }
                    self.sleep_ms(self.cfg.halt_delay_ms);
                    rt::power::power_off()
                }
            }
        }
    }

    // --- Self-test and benchmark ------------------------------------------------

    /// Sends a text request and checks that the whole reply is `want`.
    fn expect_reply(&mut self, what: &str, request: &str, want: &[u8]) -> bool {
        let Ok(n) = format_into(&mut self.req[..], format_args!("{request}")).map(<[u8]>::len)
        else {
            println!(
                "tools: selftest {what} FAILED: {request}: {}",
                Error::Format
            );
            return false;
        };
        match self.rpci(n, false) {
            Ok(n) => {
                let reply = self.reply.get(..n).unwrap_or(&[]);
                if reply == want {
                    return true;
                }
                println!(
                    "tools: selftest {what} FAILED: {request}: reply '{}', want '{}'",
                    Text(reply),
                    Text(want)
                );
            }
            Err(e) => println!("tools: selftest {what} FAILED: {request}: {e}"),
        }
        false
    }

    /// A 64 KiB `info-set` of guestinfo.big.<port> and its `info-get`, over
    /// the low- or the high-bandwidth port.
    fn selftest_big(&mut self, port: &str, force_lb: bool) -> bool {
        // The high-bandwidth case must send over the high-bandwidth port too.
        self.bd.lb_send = force_lb;
        let ok = self.selftest_big_inner(port, force_lb);
        self.bd.lb_send = true;
        ok
    }

    fn selftest_big_inner(&mut self, port: &str, force_lb: bool) -> bool {
        let what = if force_lb { "64KiB lb" } else { "64KiB hb" };
        let Ok(head) = format_into(
            &mut self.req[..],
            format_args!("info-set guestinfo.big.{port} "),
        )
        .map(<[u8]>::len) else {
            return false;
        };
        // The request fills the largest message exactly.
        let value_len = MAX_MESSAGE - head;
        for (i, b) in self.req[head..MAX_MESSAGE].iter_mut().enumerate() {
            *b = pattern(i);
        }
        let mut bd = Counted {
            inner: &mut self.bd,
            lb: 0,
            hb: 0,
        };
        let start = rdtsc();
        let set = rpci_on(
            &mut bd,
            &self.req[..MAX_MESSAGE],
            &mut self.reply[..],
            force_lb,
        )
        .map(<[u8]>::len);
        match set {
            Ok(n) if self.reply.get(..n) == Some(b"1 ") => {}
            Ok(n) => {
                let reply = Text(self.reply.get(..n).unwrap_or(&[]));
                println!("tools: selftest {what} FAILED: info-set: reply '{reply}'");
                return false;
            }
            Err(e) => {
                println!("tools: selftest {what} FAILED: info-set: {e}");
                return false;
            }
        }
        let Ok(get_len) = format_into(
            &mut self.req[..],
            format_args!("info-get guestinfo.big.{port}"),
        )
        .map(<[u8]>::len) else {
            return false;
        };
        let got =
            rpci_on(&mut bd, &self.req[..get_len], &mut self.reply[..], force_lb).map(<[u8]>::len);
        let cycles = rdtsc() - start;
        let (lb_calls, hb_calls) = (bd.lb, bd.hb);
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                println!("tools: selftest {what} FAILED: info-get: {e}");
                return false;
            }
        };
        let reply = self.reply.get(..n).unwrap_or(&[]);
        if n != 2 + value_len || !reply.starts_with(b"1 ") {
            println!(
                "tools: selftest {what} FAILED: info-get: reply of {n} bytes '{}', want {}",
                Text(reply),
                2 + value_len
            );
            return false;
        }
        if let Some(i) = (0..value_len).find(|&i| reply.get(2 + i) != Some(&pattern(i))) {
            println!(
                "tools: selftest {what} FAILED: info-get: value byte {i} is {:#04x}, want {:#04x}",
                reply.get(2 + i).copied().unwrap_or(0),
                pattern(i)
            );
            return false;
        }
        if force_lb && hb_calls != 0 {
            println!("tools: selftest {what} FAILED: {hb_calls} high-bandwidth transfers");
            return false;
        }
        if !force_lb && hb_calls < 2 {
            println!(
                "tools: selftest {what} FAILED: the host did not offer the high-bandwidth port \
                 ({lb_calls} low-bandwidth calls)"
            );
            return false;
        }
        println!("tools: selftest {what} ok ({cycles} cycles)");
        true
    }

    fn selftest(&mut self) {
        let mut failed = 0;
        let what = "info-set/info-get";
        let ok = self.expect_reply(what, "info-set guestinfo.selftest hello", b"1 ")
            && self.expect_reply(what, "info-get guestinfo.selftest", b"1 hello");
        if ok {
            println!("tools: selftest {what} ok");
        }
        failed += u32::from(!ok);
        let what = "missing key";
        let ok = self.expect_reply(what, "info-get guestinfo.nosuchkey", b"0 No value found");
        if ok {
            println!("tools: selftest {what} ok");
        }
        failed += u32::from(!ok);
        failed += u32::from(!self.selftest_big("lb", true));
        failed += u32::from(!self.selftest_big("hb", false));
        println!("tools: selftest done, {failed} failed");
    }

    /// `bench=N`: N whole `info-get` RPCI calls (100-byte reply) over each
    /// port, timed at CPL3 with the TSC.
    fn bench(&mut self, count: u64) {
        let Ok(head) = format_into(&mut self.req[..], format_args!("info-set guestinfo.bench "))
            .map(<[u8]>::len)
        else {
            return;
        };
        for (i, b) in self.req[head..head + BENCH_VALUE_LEN]
            .iter_mut()
            .enumerate()
        {
            *b = pattern(i);
        }
        if !self.request(head + BENCH_VALUE_LEN) {
            println!("tools: bench FAILED: cannot set guestinfo.bench");
            return;
        }
        let Ok(get_len) = format_into(&mut self.req[..], format_args!("info-get guestinfo.bench"))
            .map(<[u8]>::len)
        else {
            return;
        };
        let want_len = 2 + BENCH_VALUE_LEN;
        for (port, force_lb) in [("lb", true), ("hb", false)] {
            // "hb" means high bandwidth both ways.
            self.bd.lb_send = force_lb;
            // One checked call first; the timed ones only check the length.
            let req = &self.req[..get_len];
            let whole = |r: &[u8]| {
                r.len() == want_len
                    && r.starts_with(b"1 ")
                    && r[2..].iter().enumerate().all(|(i, &b)| b == pattern(i))
            };
            if !bench_call(
                &mut self.bd,
                req,
                &mut self.reply[..],
                force_lb,
                port,
                whole,
            ) {
                return;
            }
            let start = rdtsc();
            for _ in 0..count {
                let sized = |r: &[u8]| r.len() == want_len;
                if !bench_call(
                    &mut self.bd,
                    req,
                    &mut self.reply[..],
                    force_lb,
                    port,
                    sized,
                ) {
                    return;
                }
            }
            let cycles = rdtsc() - start;
            println!("rpci: {port} count={count} cycles={cycles}");
        }
    }
}

/// `dhcp=1`: finds the virtio-net device and gets an address by DHCP, which
/// (with the device's MAC) becomes the NIC that `cfg` reports; the device,
/// if that worked. Otherwise the NIC has no address.
fn start_net(cfg: &mut Config) -> Option<Net> {
    cfg.n_ips = 0;
    let opts = net::Options {
        mrg: true,
        timeout_us: NET_TIMEOUT_MS * 1000,
    };
    let result = Net::open(&rt::pci::Pci::open(), None, &opts).and_then(|mut net| {
        cfg.mac = MacText::device(net.mac);
        let lease = net.dhcp()?;
        Ok((net, lease))
    });
    let (net, lease) = match result {
        Ok(r) => r,
        Err(net::Error::Dhcp(why)) => {
            println!("tools: dhcp FAIL {why}");
            return None;
        }
        Err(e) => {
            println!("tools: dhcp FAIL {e}");
            return None;
        }
    };
    println!(
        "tools: dhcp ip {}/{} router {}",
        Ip(lease.ip),
        lease.prefix,
        Router(lease.router)
    );
    cfg.ips[0] = IpEntry {
        addr: IpAddr::V4(Ipv4Addr::from(lease.ip)),
        prefix_len: lease.prefix,
    };
    cfg.n_ips = 1;
    Some(net)
}

fn main() -> ! {
    let boot_tsc = rdtsc();
    // SAFETY: all our Rust code runs at CPL3 with every port allowed by the
    // TSS I/O bitmap, and this guest only ever runs under a hypervisor.
    let mut bd = unsafe { PortIo::new() };
    let Some((version, kind)) = client::checkvm(&mut bd) else {
        println!("tools: no VMware backdoor");
        rt::halt()
    };
    let mut cfg = Config::from_cmdline();
    let (hz, source) = tsc_hz(&mut bd);
    if !cfg.quiet {
        println!("tools: backdoor version {version} type {kind}");
        println!("tools: tsc {hz} Hz ({source})");
    }
    // After tsc_hz: the driver's time-outs need the TSC rate it sets.
    let net = if cfg.dhcp { start_net(&mut cfg) } else { None };

    let Buffers { req, reply, tclo } = take_buffers();
    // The guest clock starts from the RTC (whole seconds), now.
    let rtc_secs = rt::rtc::now().unix_seconds();
    let mut tools = Tools {
        bd: Ports {
            io: bd,
            lb_send: true,
        },
        cfg,
        req,
        reply,
        boot_tsc,
        clock: Clock {
            base_us: rtc_secs.saturating_mul(1_000_000),
            base_tsc: rdtsc(),
            hz,
        },
        info_due: None,
        sync_due: None,
        rpc: None,
        net,
    };
    tools.sync_clock("boot");
    tools.restart_sync_timer();
    if tools.cfg.selftest {
        tools.selftest();
    }
    if tools.cfg.bench != 0 {
        tools.bench(tools.cfg.bench);
        rt::power::power_off()
    }
    tools.run(tclo)
}

/// Writes to every 4 KiB page of `len` bytes of RAM from physical address
/// `from` (identity-mapped, USER): each becomes memory its host must hold.
fn touch(from: u64, len: u64) {
    let mut a = from;
    while a < from.saturating_add(len) {
        // SAFETY: RAM the runtime does not use (above the image, its stacks
        // and buffers), identity-mapped and writable at CPL3; the guest
        // halts afterwards.
        unsafe { core::ptr::write_volatile(a as *mut u8, 1) };
        a += 4096;
    }
}
