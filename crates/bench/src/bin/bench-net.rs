//! Network figures: the `net` test guest (a polled virtio-net driver at
//! CPL3 with a small UDP/IPv4 stack, crates/testguest/guest/src/net.rs, driven by its bin/net.rs)
//! on our VMM's virtio-net against the same guest on QEMU's
//! `virtio-net-pci` (`-M microvm,pcie=on`, `-netdev tap,vhost=off`: QEMU's
//! userspace device, as this host has no /dev/vhost-net), in one run,
//! alternating (who goes first alternates too), medians over the rounds.
//!
//! Everything happens in a network namespace this benchmark creates
//! (`bench-net-<pid>`) and deletes at the end, also on failure and on
//! SIGINT/SIGTERM/SIGHUP: a tap `tapb0` in it, 100.64.1.2/31, up, which both
//! VMMs attach to (run by `ip netns exec`); the host's own interfaces are
//! never touched. The host's sockets are made in the namespace by a
//! thread that entered it (setns(2)). The guest has the static address
//! 100.64.1.3/31 on both VMMs (ours is also a local interface,
//! `local=1:0`, whose DHCP server would hand out that address; static
//! keeps both runs the same). Both VMMs give the guest the MAC
//! 52:54:00:12:34:56.
//!
//! - P9: UDP guest -> host: `blast=N to=100.64.1.2:9999 size=1400`. A
//!   socket in the namespace with a receive buffer large enough for all N
//!   datagrams takes them; nothing reads it while the guest sends (so the
//!   reader takes no CPU from either VMM); after the guest is done they are
//!   read with their kernel receive timestamps (SO_TIMESTAMPNS) until
//!   300 ms of quiet. The figure: datagrams per second received, from
//!   the first arrival to the last (higher is better); also what fraction
//!   of the N arrived, and, from the guest's own line, its send rate (TSC,
//!   first datagram queued to last completed) and datagrams per TX
//!   notification (one VM exit each).
//! - P10: UDP echo round trip host -> guest -> host: `echo=7777 count=N`
//!   (plus 20 warm-up datagrams, which also get the host's ARP done); once
//!   the guest prints `net: echo port 7777 ready` the host sends a 64-byte
//!   datagram and waits for its echo, N times; the figure is the median
//!   round trip in µs (lower is better).
//!
//! Usage: bench-net BINDIR QEMU   (BINDIR has vmm and testguest); root and
//! /dev/kvm needed.
//! Environment: BENCH_ROUNDS (3), P9_COUNT (datagrams, 100000), P9_SIZE (UDP
//! payload bytes, 1400), P10_COUNT (round trips, 5000), BENCH_DETAIL=1
//! (every run's figures).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::median;

const TAP: &str = "tapb0";
const HOST_CIDR: &str = "100.64.1.2/31";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
const GUEST_CIDR: &str = "100.64.1.3/31";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 3);
const MAC: &str = "52:54:00:12:34:56";
/// Where the guest puts the BARs QEMU's microvm leaves unassigned.
const PCIMEM: &str = "pcimem=0xc0000000";
const BLAST_PORT: u16 = 9999;
/// The guest's `blast` source port (its default).
const BLAST_SPORT: u16 = 40000;
const ECHO_PORT: u16 = 7777;
/// P10 datagrams sent before the measured ones.
const WARMUP: u64 = 20;
const ECHO_BYTES: usize = 64;
/// How long P10 waits for one echo.
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// P9: the quiet that ends the reading of the socket.
const QUIET: Duration = Duration::from_millis(300);
/// A guest run that takes longer than this has hung.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The namespace, once made, and the VMM processes running: what
/// [`cleanup`] removes, whoever calls it (the end of `main`, [`fail`], a
/// panic unwinding `main`, the signal thread).
static NETNS: Mutex<Option<String>> = Mutex::new(None);
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn cleanup() {
    let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        // SAFETY: plain kill(2) of a child we started and have not reaped
        // (reaped ones leave the list first).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let ns = NETNS.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(ns) = ns {
        let ok = Command::new("ip")
            .args(["netns", "del", &ns])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("bench-net: could not delete network namespace {ns}: `ip netns del {ns}`");
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-net: {msg}");
    cleanup();
    std::process::exit(1);
}

/// Cleans up when `main` ends or unwinds.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread made
/// after it, and waits for them on a thread of its own that cleans up and
/// exits. (Child processes start with an empty mask: std resets it.)
fn catch_signals() {
    // SAFETY: plain signal-set manipulation on a local.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        assert_eq!(rc, 0, "pthread_sigmask");
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: a valid set, blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("bench-net: signal {sig}: cleaning up");
        cleanup();
        std::process::exit(128 + sig);
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("running ip (iproute2): {e}")));
    if !o.status.success() {
        fail(&format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
}

/// Makes the namespace with its tap (deleted by [`cleanup`]): its name.
fn make_netns() -> String {
    let name = format!("bench-net-{}", std::process::id());
    ip(&["netns", "add", &name]);
    *NETNS.lock().unwrap() = Some(name.clone());
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    ip(&["-n", &name, "tuntap", "add", "dev", TAP, "mode", "tap"]);
    ip(&["-n", &name, "addr", "add", HOST_CIDR, "dev", TAP]);
    ip(&["-n", &name, "link", "set", TAP, "up"]);
    name
}

/// Runs `f` on a thread inside namespace `ns`: sockets made there stay in
/// it, wherever they are used later.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = File::open(&path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
        // SAFETY: a namespace file descriptor; only this thread moves.
        if unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            fail(&format!(
                "setns {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    })
    .join()
    .unwrap()
}

fn setsockopt_int(sock: &UdpSocket, name: i32, value: i32, what: &str) {
    // SAFETY: a valid socket and a 4-byte option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const i32).cast(),
            4,
        )
    };
    if rc != 0 {
        fail(&format!("{what}: {}", std::io::Error::last_os_error()));
    }
}

/// One datagram read with `recvmsg`: its length, source and kernel
/// receive time (SO_TIMESTAMPNS, CLOCK_REALTIME), if the kernel gave one.
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<Duration>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s: aligned for cmsghdr.
    let mut ctl = [0u64; 16];
    // SAFETY: all-zero is a valid sockaddr_in and msghdr.
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&ctl);
    // SAFETY: msg points at live buffers of the sizes it says.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the control buffer as recvmsg filled it, walked with the
    // CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let addr = SocketAddr::from((
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    ));
    Ok((n as usize, addr, stamp))
}

/// A `net` guest running on one of the VMMs; its serial lines arrive on
/// `lines`.
struct Guest {
    who: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    out: String,
    err: Option<JoinHandle<String>>,
    started: Instant,
}

impl Guest {
    fn start(who: &'static str, mut cmd: Command) -> Guest {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| fail(&format!("{who}: {e}")));
        CHILDREN.lock().unwrap().push(child.id());
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                    break;
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Guest {
            who,
            child,
            lines,
            out: String::new(),
            err: Some(err),
            started: Instant::now(),
        }
    }

    fn forget_child(&self) {
        let id = self.child.id();
        CHILDREN.lock().unwrap().retain(|&p| p != id);
    }

    /// Waits for a line starting with `prefix`: the line.
    fn wait_line(&mut self, prefix: &str) -> String {
        loop {
            let left = RUN_LIMIT.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push_str(&line);
                    self.out.push('\n');
                    if line.starts_with(prefix) {
                        return line;
                    }
                    if line.contains("net: FAIL") {
                        self.fail(&format!("the guest failed before '{prefix}'"));
                    }
                }
                Err(_) => self.fail(&format!("no line '{prefix}...'")),
            }
        }
    }

    /// Kills the VMM and fails with its output.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget_child();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.out.push_str(&l);
            self.out.push('\n');
        }
        let err = self
            .err
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        fail(&format!(
            "{}: {why}\n--- console\n{}--- stderr\n{err}",
            self.who, self.out
        ));
    }

    /// Waits for the guest to power off (the VMM to exit successfully,
    /// without `net: FAIL`): its whole console output.
    fn finish(mut self) -> String {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.forget_child();
                for l in self.lines.iter() {
                    self.out.push_str(&l);
                    self.out.push('\n');
                }
                if !status.success() || self.out.contains("net: FAIL") {
                    self.fail(&format!("exited with {status}"));
                }
                return std::mem::take(&mut self.out);
            }
            if self.started.elapsed() > RUN_LIMIT {
                self.fail(&format!("no end within {RUN_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Ours,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "vmm",
            Vmm::Qemu => "qemu",
        }
    }
}

struct Env {
    vmm: PathBuf,
    qemu: PathBuf,
    guest: PathBuf,
    ns: String,
    tsc_khz: u64,
}

/// What one P9 run gave.
#[derive(Clone, Copy, Debug)]
struct Blast {
    sent: u64,
    got: u64,
    /// Received datagrams per second, first arrival to last.
    rate: f64,
    /// The guest's send rate (its TSC), datagrams per second.
    guest_rate: f64,
    exits: u64,
}

impl Env {
    /// Starts the guest with `cmdline` on `who`, in the namespace.
    fn start(&self, who: Vmm, cmdline: &str) -> Guest {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]);
        match who {
            Vmm::Ours => {
                c.arg(&self.vmm)
                    .args(["-m", "64M", "-s", "stdio", "-k"])
                    .arg(&self.guest)
                    .arg("--net")
                    .arg(format!("tap={TAP},mac={MAC},local=1:0"))
                    .args(["-a", cmdline]);
            }
            Vmm::Qemu => {
                c.arg(&self.qemu)
                    .args([
                        "-M",
                        "microvm,pcie=on,x-option-roms=off,rtc=on,acpi=on",
                        "-enable-kvm",
                        "-cpu",
                        "qemu64",
                        "-m",
                        "64",
                        "-nodefaults",
                        "-no-user-config",
                        "-nographic",
                        "-serial",
                        "stdio",
                        "-no-reboot",
                        "-kernel",
                    ])
                    .arg(&self.guest)
                    .args(["-append", &format!("{cmdline} {PCIMEM}"), "-netdev"])
                    .arg(format!(
                        "tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"
                    ))
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}"),
                    ]);
            }
        }
        Guest::start(who.name(), c)
    }

    /// P9 once: `n` datagrams of `size` bytes from the guest.
    fn blast(&self, who: Vmm, n: u64, size: usize) -> Blast {
        let sock = in_netns(&self.ns, || UdpSocket::bind((HOST_IP, BLAST_PORT)));
        let sock = sock.unwrap_or_else(|e| fail(&format!("bind {HOST_IP}:{BLAST_PORT}: {e}")));
        // Room for every datagram (the kernel doubles the figure, and
        // counts each skb's true size, ~2-4 KiB here).
        let room = (n.saturating_mul(4096)).min(i32::MAX as u64 / 2) as i32;
        setsockopt_int(&sock, libc::SO_RCVBUFFORCE, room, "SO_RCVBUFFORCE");
        setsockopt_int(&sock, libc::SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS");
        let cmdline = format!("ip={GUEST_CIDR} blast={n} to={HOST_IP}:{BLAST_PORT} size={size}");
        let out = self.start(who, &cmdline).finish();
        let (cycles, exits) = parse_blast(&out, n, size).unwrap_or_else(|| {
            fail(&format!(
                "{}: no `net: blast {n} datagrams` line in:\n{out}",
                who.name()
            ))
        });

        sock.set_read_timeout(Some(QUIET)).unwrap();
        let from_guest = SocketAddr::from((GUEST_IP, BLAST_SPORT));
        let mut seen = vec![false; n as usize];
        let mut buf = vec![0u8; 65536];
        let (mut got, mut bad, mut first, mut last) = (0u64, 0u64, None, None);
        loop {
            let (len, from, stamp) = match recv_stamped(&sock, &mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => fail(&format!("P9 recvmsg: {e}")),
            };
            let seq = (len >= 8).then(|| u64::from_be_bytes(buf[..8].try_into().unwrap()));
            let Some(seq) = seq.filter(|&s| from == from_guest && len == size && s < n) else {
                bad += 1;
                continue;
            };
            if std::mem::replace(&mut seen[seq as usize], true) {
                bad += 1;
                continue;
            }
            let stamp = stamp.unwrap_or_else(|| fail("P9: a datagram without a kernel timestamp"));
            first = Some(first.map_or(stamp, |f: Duration| f.min(stamp)));
            last = Some(last.map_or(stamp, |l: Duration| l.max(stamp)));
            got += 1;
        }
        if bad > 0 {
            fail(&format!(
                "P9 on {}: {bad} datagrams not from the guest's blast (wrong source, size, or sequence number, or repeated)",
                who.name()
            ));
        }
        let (Some(first), Some(last)) = (first, last) else {
            fail(&format!("P9 on {}: no datagram arrived", who.name()));
        };
        let span = (last - first).as_secs_f64();
        if got < 2 || span <= 0.0 {
            fail(&format!(
                "P9 on {}: {got} datagrams arrived in {span} s: too few to time",
                who.name()
            ));
        }
        let secs = cycles as f64 / (self.tsc_khz as f64 * 1000.0);
        Blast {
            sent: n,
            got,
            rate: (got - 1) as f64 / span,
            guest_rate: n as f64 / secs,
            exits,
        }
    }

    /// P10 once: `n` measured round trips; each one's time in µs.
    fn echo(&self, who: Vmm, n: u64) -> Vec<f64> {
        let sock = in_netns(&self.ns, || UdpSocket::bind((HOST_IP, 0)))
            .unwrap_or_else(|e| fail(&format!("bind {HOST_IP}: {e}")));
        sock.set_read_timeout(Some(ECHO_WAIT)).unwrap();
        let total = WARMUP + n;
        let cmdline = format!("ip={GUEST_CIDR} echo={ECHO_PORT} count={total}");
        let mut g = self.start(who, &cmdline);
        g.wait_line(&format!("net: echo port {ECHO_PORT} ready"));
        let to = SocketAddr::from((GUEST_IP, ECHO_PORT));
        let mut rtts = Vec::with_capacity(n as usize);
        let mut msg = [0x5au8; ECHO_BYTES];
        let mut buf = [0u8; 2048];
        for i in 0..total {
            msg[..8].copy_from_slice(&i.to_be_bytes());
            let t = Instant::now();
            if let Err(e) = sock.send_to(&msg, to) {
                g.fail(&format!("P10 send: {e}"));
            }
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) if from == to && buf[..len] == msg[..] => break,
                    // Anything else (nothing should come) is not the echo.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => g.fail(&format!(
                        "P10: no echo of datagram {i} within {ECHO_WAIT:?}: {e}"
                    )),
                }
            }
            let dt = t.elapsed();
            if i >= WARMUP {
                rtts.push(dt.as_secs_f64() * 1e6);
            }
        }
        let out = g.finish();
        if !out.lines().any(|l| l == format!("net: echoed {total}")) {
            fail(&format!(
                "P10 on {}: no `net: echoed {total}` line in:\n{out}",
                who.name()
            ));
        }
        rtts
    }
}

/// `net: blast <N> datagrams <bytes> bytes cycles=<C> exits=<E>`, checked
/// against `n` and `size`: (C, E).
fn parse_blast(out: &str, n: u64, size: usize) -> Option<(u64, u64)> {
    let prefix = format!("net: blast {n} datagrams {} bytes ", n * size as u64);
    let line = out.lines().find_map(|l| l.strip_prefix(&prefix))?;
    let kv = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((kv("cycles")?, kv("exits")?))
}

/// The TSC rate of a KVM guest here, in kHz.
fn tsc_khz() -> u64 {
    let kvm = kvm_ioctls::Kvm::new().unwrap_or_else(|e| fail(&format!("/dev/kvm: {e}")));
    let vm = kvm
        .create_vm()
        .unwrap_or_else(|e| fail(&format!("KVM_CREATE_VM: {e}")));
    let vcpu = vm
        .create_vcpu(0)
        .unwrap_or_else(|e| fail(&format!("KVM_CREATE_VCPU: {e}")));
    u64::from(
        vcpu.get_tsc_khz()
            .unwrap_or_else(|e| fail(&format!("KVM_GET_TSC_KHZ: {e}"))),
    )
}

/// The `q`-quantile (0..=1) of a sorted, non-empty sample.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-net BINDIR QEMU");
        std::process::exit(2);
    }
    // SAFETY: no arguments, no side effects.
    if unsafe { libc::geteuid() } != 0 {
        fail("must run as root (it makes a network namespace and a tap)");
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        fail(&format!("/dev/kvm: {e}"));
    }
    let bin = PathBuf::from(&args[1]);
    let qemu = PathBuf::from(&args[2]);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1) as usize;
    let p9_n = env_u64("P9_COUNT", 100000).max(2);
    let p9_size = env_u64("P9_SIZE", 1400) as usize;
    let p10_n = env_u64("P10_COUNT", 5000).max(1);
    let detail = std::env::var_os("BENCH_DETAIL").is_some();
    if !(8..=1472).contains(&p9_size) {
        fail("P9_SIZE: 8 to 1472 bytes (one Ethernet frame)");
    }
    let o = Command::new(bin.join("testguest"))
        .args(["path", "net"])
        .output()
        .unwrap_or_else(|e| fail(&format!("testguest: {e}")));
    let guest = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    if !o.status.success() || !guest.is_file() {
        fail("testguest path net: no guest");
    }
    let vmm = bin.join("vmm");
    if !vmm.is_file() {
        fail(&format!("{}: no such file", vmm.display()));
    }
    if !qemu.is_file() {
        fail(&format!("{}: no such file", qemu.display()));
    }
    let tsc_khz = tsc_khz();

    catch_signals();
    let _cleanup = Cleanup;
    let ns = make_netns();
    let env = Env {
        vmm,
        qemu,
        guest,
        ns,
        tsc_khz,
    };

    let (mut p9o, mut p9q) = (Vec::new(), Vec::new());
    let (mut p10o_all, mut p10q_all) = (Vec::new(), Vec::new());
    let (mut p10o, mut p10q) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for round in 0..rounds {
        // Ours first in even rounds, QEMU first in odd ones.
        let order = if round % 2 == 0 {
            [Vmm::Ours, Vmm::Qemu]
        } else {
            [Vmm::Qemu, Vmm::Ours]
        };
        for who in order {
            let b = env.blast(who, p9_n, p9_size);
            if detail {
                println!(
                    "round {round} P9 {}: {:.0} datagrams/s received ({:.1} MB/s), {}/{} arrived, guest sent at {:.0}/s, {:.2} datagrams per TX exit ({} exits)",
                    who.name(),
                    b.rate,
                    b.rate * p9_size as f64 / 1e6,
                    b.got,
                    b.sent,
                    b.guest_rate,
                    b.sent as f64 / b.exits.max(1) as f64,
                    b.exits
                );
            }
            match who {
                Vmm::Ours => p9o.push(b),
                Vmm::Qemu => p9q.push(b),
            }
        }
        for who in order {
            let mut r = env.echo(who, p10_n);
            r.sort_by(|a, b| a.total_cmp(b));
            let m = median(&mut r);
            if detail {
                println!(
                    "round {round} P10 {}: median {m:.1} us, min {:.1}, p10 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1} ({p10_n} round trips)",
                    who.name(),
                    r[0],
                    quantile(&r, 0.10),
                    quantile(&r, 0.90),
                    quantile(&r, 0.99),
                    r[r.len() - 1]
                );
            }
            match who {
                Vmm::Ours => {
                    p10o.push(m);
                    p10o_all.extend(r);
                }
                Vmm::Qemu => {
                    p10q.push(m);
                    p10q_all.extend(r);
                }
            }
        }
    }

    println!(
        "tap {TAP} in netns {}, host {HOST_CIDR}, guest {GUEST_CIDR}; ref: QEMU virtio-net-pci, tap vhost=off; \
         P9 {p9_n} x {p9_size} B, P10 {p10_n} round trips of {ECHO_BYTES} B; median of {rounds} rounds; {:.1} s",
        env.ns,
        started.elapsed().as_secs_f64()
    );
    let rate = |v: &[Blast]| median(&mut v.iter().map(|b| b.rate).collect::<Vec<_>>());
    let (o, q) = (rate(&p9o), rate(&p9q));
    println!("BENCH P9 ratio={:.3} ours={o:.0}/s ref={q:.0}/s", o / q);
    let arrived = |v: &[Blast]| {
        let got: u64 = v.iter().map(|b| b.got).sum();
        let sent: u64 = v.iter().map(|b| b.sent).sum();
        (got, sent)
    };
    let per_exit = |v: &[Blast]| {
        median(
            &mut v
                .iter()
                .map(|b| b.sent as f64 / b.exits.max(1) as f64)
                .collect::<Vec<_>>(),
        )
    };
    let guest_rate = |v: &[Blast]| median(&mut v.iter().map(|b| b.guest_rate).collect::<Vec<_>>());
    let ((go, so), (gq, sq)) = (arrived(&p9o), arrived(&p9q));
    println!(
        "P9 arrived: ours {go}/{so} ({:.2}%), ref {gq}/{sq} ({:.2}%); {:.0} vs {:.0} MB/s; guest send rate ours {:.0}/s, ref {:.0}/s; datagrams per TX exit ours {:.2}, ref {:.2}",
        100.0 * go as f64 / so as f64,
        100.0 * gq as f64 / sq as f64,
        o * p9_size as f64 / 1e6,
        q * p9_size as f64 / 1e6,
        guest_rate(&p9o),
        guest_rate(&p9q),
        per_exit(&p9o),
        per_exit(&p9q)
    );
    let (o, q) = (median(&mut p10o), median(&mut p10q));
    println!("BENCH P10 ratio={:.3} ours={o:.1}us ref={q:.1}us", o / q);
    p10o_all.sort_by(|a, b| a.total_cmp(b));
    p10q_all.sort_by(|a, b| a.total_cmp(b));
    println!(
        "P10 all round trips: ours p10 {:.1} p90 {:.1} p99 {:.1} us, ref p10 {:.1} p90 {:.1} p99 {:.1} us",
        quantile(&p10o_all, 0.10),
        quantile(&p10o_all, 0.90),
        quantile(&p10o_all, 0.99),
        quantile(&p10q_all, 0.10),
        quantile(&p10q_all, 0.90),
        quantile(&p10q_all, 0.99)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blast_line() {
        let out = "net: ip 100.64.1.3/31\nnet: blast 3 datagrams 4200 bytes cycles=193158 exits=1\nnet: done\n";
        assert_eq!(parse_blast(out, 3, 1400), Some((193158, 1)));
        assert_eq!(parse_blast(out, 4, 1400), None);
        assert_eq!(parse_blast(out, 3, 1000), None);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0), 5.0);
    }
}
