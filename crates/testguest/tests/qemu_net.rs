//! The `net` guest's virtio-net driver against the real counterpart: QEMU's
//! `virtio-net-pci` (modern-only) on `-M microvm,pcie=on`, its tap inside a
//! network namespace each test creates (and deletes, also on failure), so
//! the host's own interfaces are never touched. The host side of the tap is
//! 192.0.2.1/24, the guest 192.0.2.2/24; the test's sockets live in the
//! namespace (a thread enters it with setns(2)). `dhcp=1` is tested against
//! a minimal DHCP server in the test itself (no udhcpd or dnsmasq needed).
//!
//! Skipped (said on stderr) without /dev/kvm, `qemu-system-x86_64`, `ip`
//! or root, except under `CI=true`, where each is a failure.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const PCIMEM: &str = "pcimem=0xc0000000";
const MAC: &str = "52:54:00:12:34:56";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A guest run that takes longer than this has hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn geteuid() -> u32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const core::ffi::c_void, len: u32)
        -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;
const SOL_SOCKET: i32 = 1;
const SO_RCVBUFFORCE: i32 = 33;
const SO_BINDTODEVICE: i32 = 25;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip(why: &str) -> bool {
    assert!(!in_ci(), "{why}, required under CI");
    eprintln!("skipping: {why}");
    false
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Everything the tests need, or a skip.
fn prerequisites() -> Option<PathBuf> {
    if !testguest::kvm_or_skip() {
        return None;
    }
    // SAFETY: no arguments, no side effects.
    if unsafe { geteuid() } != 0 && !skip("not root (network namespaces need it)") {
        return None;
    }
    if which("ip").is_none() && !skip("`ip` (iproute2) not found in PATH") {
        return None;
    }
    match which(QEMU) {
        Some(q) => Some(q),
        None => {
            skip(&format!("{QEMU} not found in PATH"));
            None
        }
    }
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with `tap0` (192.0.2.1/24, up) in it; deleted when
/// dropped (which takes the tap with it).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmdtest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip_cmd(&["netns", "add", &name]);
        // From here on the guard deletes it, whatever fails next.
        let ns = Netns(name);
        let n = ns.0.as_str();
        ip_cmd(&["-n", n, "link", "set", "lo", "up"]);
        ip_cmd(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip_cmd(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "tap0"]);
        ip_cmd(&["-n", n, "link", "set", "tap0", "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay
    /// in it, wherever they are used later).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a namespace file descriptor; only this thread moves.
            let rc = unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn udp(&self, port: u16) -> UdpSocket {
        self.run(move || UdpSocket::bind((HOST_IP, port)).expect("bind in the namespace"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A `net` guest running on QEMU inside a namespace; its serial lines
/// arrive on `lines`.
struct Guest {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: String,
    err: std::thread::JoinHandle<String>,
}

impl Guest {
    fn start(qemu: &PathBuf, ns: &Netns, cmdline: &str) -> Guest {
        let guest = testguest::path("net").expect("net guest");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(qemu)
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
            .arg(&guest)
            .args([
                "-append",
                cmdline,
                "-netdev",
                "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device",
                &format!("virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display()));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
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
            child,
            lines,
            out: String::new(),
            err,
        }
    }

    /// Waits for a line starting with `prefix`: the line.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push_str(&line);
                    self.out.push('\n');
                    if line.starts_with(prefix) {
                        return line;
                    }
                    if line.contains("net: FAIL") {
                        self.fail(&format!("the guest failed waiting for '{prefix}'"));
                    }
                }
                Err(_) => self.fail(&format!("no line '{prefix}...'")),
            }
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.out.push_str(&l);
            self.out.push('\n');
        }
        panic!("{why}\n--- serial:\n{}", self.out);
    }

    /// Waits for the guest to power off: its whole serial output.
    fn finish(mut self) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for l in self.lines.iter() {
                    self.out.push_str(&l);
                    self.out.push('\n');
                }
                let err = self.err.join().unwrap();
                assert!(
                    status.success(),
                    "qemu exited with {status}\n--- serial:\n{}\n--- stderr:\n{err}",
                    self.out
                );
                assert!(!self.out.contains("net: FAIL"), "{}", self.out);
                return self.out;
            }
            if start.elapsed() > RUN_TIMEOUT {
                self.fail("qemu still running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn has_line(out: &str, want: &str) {
    assert!(
        out.lines().any(|l| l == want),
        "no line '{want}' in the guest's output:\n{out}"
    );
}

/// The device line and the boot line of a run.
fn common_lines(out: &str, cmdline: &str) {
    has_line(
        out,
        &format!("testguest net: boot via pvh cmdline '{cmdline}'"),
    );
    let dev = out
        .lines()
        .find(|l| l.starts_with("net: device 00:"))
        .unwrap_or_else(|| panic!("no device line:\n{out}"));
    assert!(dev.contains(&format!(" mac {MAC} features 0x")), "{dev}");
    has_line(out, "net: done");
}

fn echo_run(extra: &str) {
    let Some(qemu) = prerequisites() else {
        return;
    };
    let ns = Netns::new();
    let sock = ns.udp(0);
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let cmdline = format!("{PCIMEM} ip=192.0.2.2/24 echo=7777 count=3{extra}");
    let mut guest = Guest::start(&qemu, &ns, &cmdline);
    guest.wait_line("net: echo port 7777 ready");
    let to = SocketAddr::from((GUEST_IP, 7777));
    for i in 0..3u32 {
        let msg = format!("datagram {i} {}", "x".repeat(100 * i as usize));
        let mut ok = false;
        for _try in 0..5 {
            sock.send_to(msg.as_bytes(), to).unwrap();
            let mut buf = [0u8; 2048];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, to, "reply from the wrong address");
                    assert_eq!(&buf[..n], msg.as_bytes(), "echo differs");
                    ok = true;
                    break;
                }
                Err(e) => eprintln!("no echo of datagram {i} yet: {e}"),
            }
        }
        if !ok {
            guest.fail(&format!("datagram {i} never came back"));
        }
    }
    let out = guest.finish();
    common_lines(&out, &cmdline);
    has_line(&out, "net: ip 192.0.2.2/24");
    has_line(&out, "net: echoed 3");
}

#[test]
fn udp_echo_on_qemu() {
    echo_run("");
}

#[test]
fn udp_echo_without_mrg_rxbuf_on_qemu() {
    echo_run(" mrg=0");
}

#[test]
fn udp_blast_on_qemu() {
    let Some(qemu) = prerequisites() else {
        return;
    };
    const N: u64 = 1000;
    let ns = Netns::new();
    let sock = ns.udp(9999);
    let bytes: i32 = 16 << 20;
    // SAFETY: a valid socket and a 4-byte option value.
    let rc = unsafe {
        setsockopt(
            sock.as_raw_fd(),
            SOL_SOCKET,
            SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            4,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let cmdline = format!("{PCIMEM} ip=192.0.2.2/24 blast={N} to=192.0.2.1:9999");
    let out = Guest::start(&qemu, &ns, &cmdline).finish();
    common_lines(&out, &cmdline);
    let line = out
        .lines()
        .find(|l| l.starts_with("net: blast "))
        .unwrap_or_else(|| panic!("no blast line:\n{out}"));
    assert!(
        line.starts_with(&format!(
            "net: blast {N} datagrams {} bytes cycles=",
            N * 1400
        )),
        "{line}"
    );
    // Everything the guest sent is in the socket's buffer by now.
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = 0u64;
    let mut seen = vec![false; N as usize];
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        assert_eq!(from, SocketAddr::from((GUEST_IP, 40000)));
        assert_eq!(n, 1400);
        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
        assert!(seq < N && !seen[seq as usize], "bad or repeated seq {seq}");
        assert!(buf[8..n].iter().all(|&b| b == seq as u8), "payload {seq}");
        seen[seq as usize] = true;
        got += 1;
    }
    eprintln!("blast: host received {got} of {N} datagrams; {line}");
    assert_eq!(got, N, "datagrams lost between QEMU and the host socket");
}

/// `dhcp=1` against a minimal DHCP server in this test (neither `udhcpd`
/// nor `dnsmasq` is needed): it offers 192.0.2.50/24 with router
/// 192.0.2.1, server identifier 192.0.2.1, and acks the REQUEST; it checks
/// the guest's broadcast flag, MAC and xid on the way.
#[test]
fn dhcp_on_qemu() {
    let Some(qemu) = prerequisites() else {
        return;
    };
    let ns = Netns::new();
    let sock = ns.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67)).expect("bind :67");
        let dev = b"tap0\0";
        // SAFETY: a valid socket and a NUL-terminated name.
        let rc = unsafe {
            setsockopt(
                s.as_raw_fd(),
                SOL_SOCKET,
                SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "SO_BINDTODEVICE: {}",
            std::io::Error::last_os_error()
        );
        s.set_broadcast(true).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cmdline = format!("{PCIMEM} dhcp=1");
    let guest = Guest::start(&qemu, &ns, &cmdline);
    let mut xid = None;
    let mut acked = false;
    let mut buf = [0u8; 1500];
    while !acked {
        let (n, from) = sock.recv_from(&mut buf).expect("a DHCP request");
        let p = &buf[..n];
        assert_eq!(from, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)));
        assert!(n >= 240 && p[0] == 1 && p[236..240] == [99, 130, 83, 99]);
        assert_eq!(&p[28..34], &[0x52, 0x54, 0, 0x12, 0x34, 0x56], "chaddr");
        assert_eq!(u16::from_be_bytes([p[10], p[11]]), 0x8000, "broadcast flag");
        let this_xid = u32::from_be_bytes(p[4..8].try_into().unwrap());
        assert_eq!(*xid.get_or_insert(this_xid), this_xid, "xid changed");
        let kind = dhcp_option(p, 53).expect("message type")[0];
        let reply = match kind {
            1 => 2,
            3 => {
                assert_eq!(
                    dhcp_option(p, 50),
                    Some(&[192, 0, 2, 50][..]),
                    "requested ip"
                );
                assert_eq!(dhcp_option(p, 54), Some(&[192, 0, 2, 1][..]), "server id");
                acked = true;
                5
            }
            k => panic!("unexpected DHCP message type {k}"),
        };
        let mut r = vec![0u8; 240];
        r[0] = 2;
        r[1] = 1;
        r[2] = 6;
        r[4..8].copy_from_slice(&p[4..8]);
        r[10..12].copy_from_slice(&p[10..12]);
        r[16..20].copy_from_slice(&[192, 0, 2, 50]);
        r[20..24].copy_from_slice(&[192, 0, 2, 1]);
        r[28..44].copy_from_slice(&p[28..44]);
        r[236..240].copy_from_slice(&[99, 130, 83, 99]);
        r.extend_from_slice(&[53, 1, reply]);
        r.extend_from_slice(&[54, 4, 192, 0, 2, 1]);
        r.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]);
        r.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        r.extend_from_slice(&[3, 4, 192, 0, 2, 1]);
        r.push(255);
        sock.send_to(&r, (Ipv4Addr::BROADCAST, 68)).unwrap();
    }
    let out = guest.finish();
    common_lines(&out, &cmdline);
    has_line(
        &out,
        "net: dhcp ip 192.0.2.50/24 router 192.0.2.1 server 192.0.2.1",
    );
}

/// The value of DHCP option `code` in message `p`.
fn dhcp_option(p: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = usize::from(p[i + 1]);
                let v = p.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(v);
                }
                i += 2 + len;
            }
        }
    }
    None
}
