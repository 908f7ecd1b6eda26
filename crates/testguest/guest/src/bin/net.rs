//! `net`: a polling virtio-net driver at CPL3 (modern virtio-pci, split
//! virtqueues; `rt::pci`, `rt::virtio`) with a minimal IPv4 stack (ARP,
//! IPv4, UDP, a DHCP client) for tests and benchmarks. Written from the
//! virtio 1.2 specification (§5.1): the same guest runs on QEMU's
//! `virtio-net-pci` and on our VMM's device.
//!
//! # Command line (`key=value` words; numbers decimal or `0x` hex)
//! | key | default | meaning |
//! |---|---|---|
//! | `pcicfg=cf8` | auto | configuration mechanism #1 instead of ECAM (as in `blk`) |
//! | `pcimem=0xADDR` | none | where to put memory BARs the firmware left unassigned (as in `blk`) |
//! | `mrg=0` | 1 | do not negotiate VIRTIO_NET_F_MRG_RXBUF even if offered |
//! | `ip=A.B.C.D[/P]` | none | static address, prefix `P` (default 24) |
//! | `gw=A.B.C.D` | none | router for a static address |
//! | `dhcp=1` | 0 | get the address by DHCP (overrides `ip=`) |
//! | `echo=PORT` | none | answer UDP datagrams to PORT by sending them back |
//! | `count=N` | 0 | `echo`: stop after N datagrams (0: only silence ends it) |
//! | `blast=N` | 0 | send N UDP datagrams to `to=` as fast as the TX ring allows |
//! | `to=A.B.C.D:PORT` | none | `blast` destination |
//! | `size=BYTES` | 1400 | `blast` UDP payload size (at most MTU - 28) |
//! | `sport=PORT` | 40000 | `blast` source port |
//! | `srcmac=XX:XX:XX:XX:XX:XX` | the device's | source MAC of every frame sent (see below) |
//! | `timeout_ms=T` | 10000 | longest wait: link up, ARP, DHCP, TX completion; for `echo`, the silence that ends it |
//!
//! The steps run in this order: device set-up, address (`dhcp` or `ip`),
//! `blast`, `echo`. `blast` and `echo` need an address.
//!
//! `srcmac=` makes the guest claim another MAC than its device's (a
//! spoofing guest, for tests of `locked lladdr`): every frame it sends
//! (ARP, DHCP, echo replies, blast) carries that source address, and it
//! also names itself by it where a protocol asks (ARP sender hardware
//! address, DHCP `chaddr` and client identifier). Frames addressed to
//! either MAC are taken. The device is set up as usual: the driver never
//! writes the device's MAC (read-only in virtio 1.x, and there is no
//! VIRTIO_NET_F_CTRL_MAC_ADDR here); a virtio-net device sends whatever
//! frame it is given.
//!
//! # Serial output
//! After rt's `testguest net: boot via ...` line:
//! * `net: device 00:<dd>.<f> mac <xx:xx:xx:xx:xx:xx> features 0x<hex>
//!   mtu <n|->`: `dd`, `f` in hex; `features` the negotiated bits; `mac`
//!   from the configuration space (VIRTIO_NET_F_MAC), else generated
//!   (locally administered, from the TSC); `mtu` the configuration field
//!   if VIRTIO_NET_F_MTU was negotiated, else `-`;
//! * `srcmac=`: `net: srcmac <xx:xx:xx:xx:xx:xx>`, the MAC sent from;
//! * `dhcp=1`: `net: dhcp ip <a.b.c.d>/<prefix> router <r|-> server <s>`
//!   (`-`: the ACK named no router; the prefix from the subnet mask
//!   option, 24 without one);
//! * `ip=`: `net: ip <a.b.c.d>/<prefix>`;
//! * `blast=N`: `net: blast <N> datagrams <bytes> bytes cycles=<C>
//!   exits=<E>`: `bytes` = N × size (UDP payload), `C` TSC cycles from the
//!   first datagram queued to the last one completed by the device, `E`
//!   TX queue notifications (MMIO writes, one VM exit each);
//! * `echo=PORT`: `net: echo port <PORT> ready` once it listens, then
//!   `net: echoed <n>` when `count` datagrams were echoed or after
//!   `timeout_ms` of silence (with `count=N`, fewer than N is a failure);
//! * `net: done`, then power-off.
//!
//! Any failure prints `net: FAIL <why>` (`net: FAIL dhcp <why>` for DHCP)
//! and powers off.
//!
//! # Driver
//! The device is the first function on bus 0 with vendor 0x1af4 and device
//! 0x1041 (modern virtio-net), or 0x1000 (transitional) with the modern
//! capabilities. Features: VIRTIO_F_VERSION_1 (required), MAC, MTU, STATUS,
//! MRG_RXBUF (unless `mrg=0`), ACCESS_PLATFORM and ORDER_PLATFORM when
//! offered; no offloads (no CSUM, no GSO), so every frame is at most 1514
//! bytes and the `virtio_net_hdr` (12 bytes in virtio 1.x with or without
//! MRG_RXBUF) is all zeros on TX. With STATUS the driver waits for
//! VIRTIO_NET_S_LINK_UP. Queue 0 receives, queue 1 transmits (both at most
//! 256 entries). 128 receive buffers of 2048 bytes (header and a whole
//! frame) are posted up front and each is posted again once its frame is
//! copied out; with MRG_RXBUF a frame spanning `num_buffers` buffers is
//! reassembled. A transmitted frame is one descriptor (header and frame in
//! one 2048-byte buffer). Both used rings are polled; the avail rings say
//! VIRTQ_AVAIL_F_NO_INTERRUPT.
//!
//! # Stack
//! Ethernet II; ARP requests for the guest's address are answered and
//! every ARP packet's sender is learnt (8 entries); a destination is
//! resolved by ARP (the router's MAC when off-link). IPv4 without options
//! or fragments; received header and UDP checksums are checked (bad frames
//! dropped), sent ones computed. Echo replies go to the sender's MAC.
//! DHCP (RFC 2131): DISCOVER, OFFER, REQUEST, ACK, from 0.0.0.0:68 to
//! 255.255.255.255:67 with the broadcast flag, `xid` from the TSC,
//! retransmitted every second.
#![no_std]
#![no_main]

use core::fmt;

use rt::pci::{Access, MemWindow, Pci};
use rt::println;
use rt::virtio::{self, Buf, Device, Queue};

rt::guest!("net", main);

/// virtio device ID of a network device.
const VIRTIO_ID_NET: u16 = 1;
/// The transitional network device's PCI device ID.
const TRANSITIONAL_NET: u16 = 0x1000;

/// Network feature bits (§5.1.3).
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;

/// Device configuration offsets (§5.1.4).
const CFG_MAC: u32 = 0;
const CFG_STATUS: u32 = 6;
const CFG_MTU: u32 = 10;
const S_LINK_UP: u16 = 1;

/// `virtio_net_hdr` with `num_buffers` (always, in virtio 1.x).
const HDR: usize = 12;
/// One receive or transmit buffer.
const BUF_BYTES: usize = 2048;
/// Receive buffers posted.
const RX_BUFS: usize = 128;
/// Largest frame without offloads (no FCS).
const MAX_FRAME: usize = 1514;
const QMAX: usize = virtio::MAX_QUEUE_SIZE as usize;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const IP_UDP: u8 = 17;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const BROADCAST_IP: [u8; 4] = [255; 4];
/// Ethernet + IPv4 + UDP headers.
const UDP_DATA: usize = 14 + 20 + 8;

#[derive(Debug)]
enum Fail {
    Virtio(virtio::Error),
    NoDevice(Access),
    Timeout(&'static str),
    Dhcp(&'static str),
    Msg(&'static str),
    Echo { got: u64, want: u64 },
}

impl From<virtio::Error> for Fail {
    fn from(e: virtio::Error) -> Fail {
        Fail::Virtio(e)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Fail::Virtio(e) => write!(f, "{e}"),
            Fail::NoDevice(Access::Cf8) => {
                write!(f, "no virtio network device on bus 0 (config access cf8)")
            }
            Fail::NoDevice(Access::Ecam { base, .. }) => write!(
                f,
                "no virtio network device on bus 0 (config access ecam {base:#x})"
            ),
            Fail::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Fail::Dhcp(why) => write!(f, "dhcp {why}"),
            Fail::Msg(why) => write!(f, "{why}"),
            Fail::Echo { got, want } => {
                write!(f, "echo: silence after {got} of {want} datagrams")
            }
        }
    }
}

/// An IPv4 address, written dotted.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ip([u8; 4]);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `xx:xx:xx:xx:xx:xx` (hex digits, either case).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A byte slice of DMA memory.
///
/// # Safety
/// `addr..addr + len` is DMA memory this driver owns and the device is not
/// writing.
unsafe fn dma<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: as the caller promises.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Adds `data` to a ones'-complement sum (RFC 1071).
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    // Fold now and then so it never overflows.
    (sum & 0xffff) + (sum >> 16)
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP pseudo-header sum.
fn pseudo(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u32 {
    let sum = csum_add(csum_add(0, &src), &dst);
    sum + u32::from(IP_UDP) + u32::from(udp_len)
}

/// Where a UDP datagram goes, from where.
#[derive(Clone, Copy)]
struct UdpAddr {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
}

/// Writes Ethernet, IPv4 and UDP headers (with checksums) in front of the
/// `payload` bytes already at `frame[UDP_DATA..]`: the frame's length.
fn finish_udp(frame: &mut [u8], a: &UdpAddr, payload: usize, ip_id: u16) -> usize {
    frame[0..6].copy_from_slice(&a.dst_mac);
    frame[6..12].copy_from_slice(&a.src_mac);
    put16(frame, 12, ETH_IPV4);
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, (20 + 8 + payload) as u16);
    put16(ip, 4, ip_id);
    put16(ip, 6, 0x4000); // DF
    ip[8] = 64;
    ip[9] = IP_UDP;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&a.src_ip);
    ip[16..20].copy_from_slice(&a.dst_ip);
    let c = csum_fold(csum_add(0, ip));
    put16(ip, 10, c);
    let udp_len = (8 + payload) as u16;
    let udp = &mut frame[34..UDP_DATA + payload];
    put16(udp, 0, a.sport);
    put16(udp, 2, a.dport);
    put16(udp, 4, udp_len);
    put16(udp, 6, 0);
    let c = csum_fold(csum_add(pseudo(a.src_ip, a.dst_ip, udp_len), udp));
    put16(udp, 6, if c == 0 { 0xffff } else { c });
    UDP_DATA + payload
}

/// The receive side: queue 0, its buffers and the last frame received.
struct Rx {
    q: Queue,
    base: u64,
    /// Buffer index of each chain head the device holds.
    of_head: [u8; QMAX],
    mrg: bool,
    frame: [u8; BUF_BYTES],
    timeout_us: u64,
}

impl Rx {
    fn post(&mut self, buf: usize) -> Result<(), Fail> {
        let b = Buf {
            addr: self.base + (buf * BUF_BYTES) as u64,
            len: BUF_BYTES as u32,
            write: true,
        };
        let head = self
            .q
            .push(&[b])
            .ok_or(Fail::Msg("no free RX descriptors"))?;
        self.of_head[usize::from(head)] = buf as u8;
        Ok(())
    }

    /// The next used buffer: its index and the bytes written.
    fn pop(&mut self) -> Result<Option<(usize, usize)>, Fail> {
        Ok(self.q.pop()?.map(|u| {
            (
                usize::from(self.of_head[usize::from(u.head)]),
                (u.len as usize).min(BUF_BYTES),
            )
        }))
    }

    /// Copies the next received frame (without the virtio header) into
    /// `frame`: its length, `Some(0)` for a frame dropped (too short, too
    /// long), `None` if nothing arrived. Buffers are posted again at once.
    fn recv(&mut self) -> Result<Option<usize>, Fail> {
        let Some((buf, len)) = self.pop()? else {
            return Ok(None);
        };
        let addr = self.base + (buf * BUF_BYTES) as u64;
        // SAFETY: a used buffer: the device is done with it.
        let data = unsafe { dma(addr, len) };
        let mut ok = len >= HDR;
        let mut n = 0;
        let mut more = 0;
        if ok {
            if self.mrg {
                more = usize::from(u16::from_le_bytes([data[10], data[11]]).max(1)) - 1;
            }
            n = len - HDR;
            self.frame[..n].copy_from_slice(&data[HDR..]);
        }
        self.post(buf)?;
        // The rest of a merged frame: the device returns its buffers
        // together, but be patient.
        let deadline = virtio::deadline_us(self.timeout_us);
        while more > 0 {
            let Some((buf, len)) = self.pop()? else {
                if rt::io::rdtsc() > deadline {
                    return Err(Fail::Timeout("the rest of a merged RX frame"));
                }
                rt::io::pause();
                continue;
            };
            let addr = self.base + (buf * BUF_BYTES) as u64;
            // SAFETY: as above.
            let data = unsafe { dma(addr, len) };
            if n + len <= BUF_BYTES {
                self.frame[n..n + len].copy_from_slice(data);
                n += len;
            } else {
                ok = false;
            }
            self.post(buf)?;
            more -= 1;
        }
        self.q.kick();
        if !ok || !(14..=MAX_FRAME).contains(&n) {
            return Ok(Some(0));
        }
        Ok(Some(n))
    }
}

/// The transmit side: queue 1 and one buffer per descriptor.
struct Tx {
    q: Queue,
    base: u64,
    free: [u16; QMAX],
    nfree: usize,
    of_head: [u16; QMAX],
    /// Buffers the device holds.
    busy: usize,
}

impl Tx {
    fn reclaim(&mut self) -> Result<(), Fail> {
        while let Some(u) = self.q.pop()? {
            self.free[self.nfree] = self.of_head[usize::from(u.head)];
            self.nfree += 1;
            self.busy -= 1;
        }
        Ok(())
    }

    /// Queues a frame written by `fill` (given the frame area, returning
    /// its length) if a buffer is free; does not notify. Whether it did.
    fn try_send(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<bool, Fail> {
        if self.nfree == 0 {
            self.reclaim()?;
            if self.nfree == 0 {
                return Ok(false);
            }
        }
        self.nfree -= 1;
        let slot = self.free[self.nfree];
        let addr = self.base + u64::from(slot) * BUF_BYTES as u64;
        // SAFETY: a free buffer, not the device's.
        let buf = unsafe { dma(addr, BUF_BYTES) };
        buf[..HDR].fill(0);
        let len = fill(&mut buf[HDR..]);
        let b = Buf {
            addr,
            len: (HDR + len) as u32,
            write: false,
        };
        let head = self
            .q
            .push(&[b])
            .ok_or(Fail::Msg("no free TX descriptors"))?;
        self.of_head[usize::from(head)] = slot;
        self.busy += 1;
        Ok(true)
    }

    /// Sends one frame now, waiting for a free buffer.
    fn send(
        &mut self,
        timeout_us: u64,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<(), Fail> {
        let deadline = virtio::deadline_us(timeout_us);
        while !self.try_send(&mut fill)? {
            if rt::io::rdtsc() > deadline {
                return Err(Fail::Timeout("a free TX buffer"));
            }
            rt::io::pause();
        }
        self.q.kick();
        Ok(())
    }

    /// Waits until the device has completed every frame.
    fn flush(&mut self, timeout_us: u64) -> Result<(), Fail> {
        let deadline = virtio::deadline_us(timeout_us);
        loop {
            self.reclaim()?;
            if self.busy == 0 {
                return Ok(());
            }
            if rt::io::rdtsc() > deadline {
                return Err(Fail::Timeout("TX completions"));
            }
            rt::io::pause();
        }
    }
}

/// A received UDP datagram; its payload is `rx.frame[off..off + len]`.
#[derive(Clone, Copy)]
struct UdpIn {
    from: UdpAddr,
    off: usize,
    len: usize,
}

struct Net {
    dev: Device,
    rx: Rx,
    tx: Tx,
    /// The device's MAC.
    mac: [u8; 6],
    /// The MAC the guest sends from and names itself by: `srcmac=`, else
    /// `mac`.
    src_mac: [u8; 6],
    mtu: Option<u16>,
    ip: [u8; 4],
    prefix: u8,
    router: Option<[u8; 4]>,
    arp: [([u8; 4], [u8; 6]); 8],
    arp_next: usize,
    ip_id: u16,
    timeout_us: u64,
}

impl Net {
    fn on_link(&self, ip: [u8; 4]) -> bool {
        let m = prefix_mask(self.prefix);
        u32::from_be_bytes(ip) & m == u32::from_be_bytes(self.ip) & m
    }

    fn learn(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        if ip == [0; 4] {
            return;
        }
        if let Some(e) = self.arp.iter_mut().find(|e| e.0 == ip) {
            e.1 = mac;
            return;
        }
        self.arp[self.arp_next] = (ip, mac);
        self.arp_next = (self.arp_next + 1) % self.arp.len();
    }

    fn lookup(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.arp
            .iter()
            .find(|e| e.0 == ip && ip != [0; 4])
            .map(|e| e.1)
    }

    fn send_arp(&mut self, op: u16, tha: [u8; 6], tpa: [u8; 4]) -> Result<(), Fail> {
        let (mac, ip) = (self.src_mac, self.ip);
        let dst = if op == 1 { BROADCAST_MAC } else { tha };
        self.tx.send(self.timeout_us, |f| {
            f[0..6].copy_from_slice(&dst);
            f[6..12].copy_from_slice(&mac);
            put16(f, 12, ETH_ARP);
            let a = &mut f[14..42];
            put16(a, 0, 1);
            put16(a, 2, ETH_IPV4);
            a[4] = 6;
            a[5] = 4;
            put16(a, 6, op);
            a[8..14].copy_from_slice(&mac);
            a[14..18].copy_from_slice(&ip);
            a[18..24].copy_from_slice(if op == 1 { &[0; 6] } else { &tha });
            a[24..28].copy_from_slice(&tpa);
            // Pad to the 60-byte minimum.
            f[42..60].fill(0);
            60
        })
    }

    /// Handles the next received frame: ARP here; a valid UDP datagram
    /// for this host is returned. `None` if nothing (for us) arrived.
    fn poll(&mut self) -> Result<Option<UdpIn>, Fail> {
        let Some(n) = self.rx.recv()? else {
            return Ok(None);
        };
        let f = &self.rx.frame[..n];
        if n == 0 {
            return Ok(None);
        }
        let dst_mac: [u8; 6] = f[0..6].try_into().unwrap();
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
        if dst_mac != self.mac && dst_mac != self.src_mac && dst_mac != BROADCAST_MAC {
            return Ok(None);
        }
        match be16(f, 12) {
            ETH_ARP if n >= 42 => {
                let a = &f[14..42];
                if be16(a, 0) != 1 || be16(a, 2) != ETH_IPV4 || a[4] != 6 || a[5] != 4 {
                    return Ok(None);
                }
                let op = be16(a, 6);
                let sha: [u8; 6] = a[8..14].try_into().unwrap();
                let spa: [u8; 4] = a[14..18].try_into().unwrap();
                let tpa: [u8; 4] = a[24..28].try_into().unwrap();
                self.learn(spa, sha);
                if op == 1 && tpa == self.ip && self.ip != [0; 4] {
                    self.send_arp(2, sha, spa)?;
                }
                Ok(None)
            }
            ETH_IPV4 if n >= 34 => {
                let ip = &f[14..];
                let ihl = usize::from(ip[0] & 0xf) * 4;
                let total = usize::from(be16(ip, 2));
                if ip[0] >> 4 != 4
                    || ihl < 20
                    || total < ihl + 8
                    || total > ip.len()
                    || csum_fold(csum_add(0, &ip[..ihl])) != 0
                    || be16(ip, 6) & 0x3fff != 0
                    || ip[9] != IP_UDP
                {
                    return Ok(None);
                }
                let src_ip: [u8; 4] = ip[12..16].try_into().unwrap();
                let dst_ip: [u8; 4] = ip[16..20].try_into().unwrap();
                let bcast = u32::from_be_bytes(self.ip) | !prefix_mask(self.prefix);
                let ours = self.ip == [0; 4]
                    || dst_ip == self.ip
                    || dst_ip == BROADCAST_IP
                    || u32::from_be_bytes(dst_ip) == bcast;
                let udp = &ip[ihl..total];
                let udp_len = usize::from(be16(udp, 4));
                if !ours || udp_len < 8 || udp_len > udp.len() {
                    return Ok(None);
                }
                let udp = &udp[..udp_len];
                if be16(udp, 6) != 0
                    && csum_fold(csum_add(pseudo(src_ip, dst_ip, udp_len as u16), udp)) != 0
                {
                    return Ok(None);
                }
                Ok(Some(UdpIn {
                    from: UdpAddr {
                        src_mac,
                        dst_mac,
                        src_ip,
                        dst_ip,
                        sport: be16(udp, 0),
                        dport: be16(udp, 2),
                    },
                    off: 14 + ihl + 8,
                    len: udp_len - 8,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The MAC of `ip` (or of the router, off-link), by ARP.
    fn resolve(&mut self, ip: [u8; 4]) -> Result<[u8; 6], Fail> {
        if ip == BROADCAST_IP {
            return Ok(BROADCAST_MAC);
        }
        let hop = if self.on_link(ip) {
            ip
        } else {
            self.router
                .ok_or(Fail::Msg("destination off-link and no router"))?
        };
        let deadline = virtio::deadline_us(self.timeout_us);
        let mut resend = 0;
        loop {
            if let Some(mac) = self.lookup(hop) {
                return Ok(mac);
            }
            let now = rt::io::rdtsc();
            if now > deadline {
                return Err(Fail::Timeout("an ARP reply"));
            }
            if now >= resend {
                self.send_arp(1, [0; 6], hop)?;
                resend = virtio::deadline_us(500_000);
            }
            if self.poll()?.is_none() {
                rt::io::pause();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Set-up.

fn setup(pci: &Pci, mut window: Option<MemWindow>) -> Result<Net, Fail> {
    let mut found = None;
    for f in pci.functions(0) {
        let net =
            f.device == virtio::MODERN_DEVICE_BASE + VIRTIO_ID_NET || f.device == TRANSITIONAL_NET;
        if f.vendor != virtio::VENDOR || !net || f.header_type != 0 {
            continue;
        }
        match Device::probe(pci, f, window.as_mut()) {
            Err(virtio::Error::MissingCap(_)) if f.device == TRANSITIONAL_NET => continue,
            Err(e) => return Err(e.into()),
            Ok(dev) => {
                found = Some(dev);
                break;
            }
        }
    }
    let mut dev = found.ok_or(Fail::NoDevice(pci.access()))?;
    let mut wanted =
        F_MAC | F_MTU | F_STATUS | virtio::F_ACCESS_PLATFORM | virtio::F_ORDER_PLATFORM;
    if rt::cmdline::get_u64("mrg", 1) != 0 {
        wanted |= F_MRG_RXBUF;
    }
    let features = dev.negotiate(wanted, 0)?;
    let rxq = dev.setup_queue(0, virtio::MAX_QUEUE_SIZE)?;
    let txq = dev.setup_queue(1, virtio::MAX_QUEUE_SIZE)?;
    let (cfg_mac, mtu) = dev.config(|c| {
        let mut m = [0u8; 6];
        for (i, b) in m.iter_mut().enumerate() {
            *b = c.read8(CFG_MAC + i as u32);
        }
        (m, c.read16(CFG_MTU))
    });
    let mac = if features & F_MAC != 0 {
        cfg_mac
    } else {
        let r = splitmix64(rt::io::rdtsc()).to_le_bytes();
        [0x02, r[0], r[1], r[2], r[3], r[4]]
    };
    let nrx = RX_BUFS.min(usize::from(rxq.size()));
    let rx_base = virtio::dma_alloc(nrx * BUF_BYTES, 4096)?;
    let ntx = usize::from(txq.size());
    let tx_base = virtio::dma_alloc(ntx * BUF_BYTES, 4096)?;
    let timeout_us = rt::cmdline::get_u64("timeout_ms", 10_000).saturating_mul(1000);
    let mut rx = Rx {
        q: rxq,
        base: rx_base,
        of_head: [0; QMAX],
        mrg: features & F_MRG_RXBUF != 0,
        frame: [0; BUF_BYTES],
        timeout_us,
    };
    for i in 0..nrx {
        rx.post(i)?;
    }
    let mut free = [0u16; QMAX];
    for (i, s) in free.iter_mut().enumerate().take(ntx) {
        *s = i as u16;
    }
    let tx = Tx {
        q: txq,
        base: tx_base,
        free,
        nfree: ntx,
        of_head: [0; QMAX],
        busy: 0,
    };
    dev.driver_ok()?;
    rx.q.kick();
    let net = Net {
        dev,
        rx,
        tx,
        mac,
        src_mac: mac,
        mtu: (features & F_MTU != 0).then_some(mtu),
        ip: [0; 4],
        prefix: 0,
        router: None,
        arp: [([0; 4], [0; 6]); 8],
        arp_next: 0,
        ip_id: rt::io::rdtsc() as u16,
        timeout_us,
    };
    if features & F_STATUS != 0 {
        let deadline = virtio::deadline_us(timeout_us);
        while net.dev.config(|c| c.read16(CFG_STATUS)) & S_LINK_UP == 0 {
            if rt::io::rdtsc() > deadline {
                return Err(Fail::Timeout("link up"));
            }
            rt::io::delay_us(1000);
        }
    }
    net.dev.check()?;
    Ok(net)
}

// ---------------------------------------------------------------------------
// DHCP.

const DHCP_DISCOVER: u8 = 1;
const DHCP_OFFER: u8 = 2;
const DHCP_REQUEST: u8 = 3;
const DHCP_ACK: u8 = 5;
const DHCP_NAK: u8 = 6;
/// BOOTP fixed part, magic cookie.
const DHCP_OPTS: usize = 240;
const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];

/// What a server's reply says.
#[derive(Default)]
struct DhcpReply {
    kind: u8,
    yiaddr: [u8; 4],
    server: Option<[u8; 4]>,
    mask: Option<[u8; 4]>,
    router: Option<[u8; 4]>,
}

fn parse_dhcp(p: &[u8], xid: u32, mac: &[u8; 6]) -> Option<DhcpReply> {
    if p.len() < DHCP_OPTS
        || p[0] != 2
        || p[4..8] != xid.to_be_bytes()
        || p[28..34] != mac[..]
        || p[236..240] != DHCP_MAGIC
    {
        return None;
    }
    let mut r = DhcpReply {
        yiaddr: p[16..20].try_into().unwrap(),
        ..DhcpReply::default()
    };
    let mut i = DHCP_OPTS;
    while i < p.len() {
        let code = p[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 || i + 1 >= p.len() {
            break;
        }
        let len = usize::from(p[i + 1]);
        let v = p.get(i + 2..i + 2 + len)?;
        let ip4 = || v.get(..4).map(|s| <[u8; 4]>::try_from(s).unwrap());
        match code {
            53 if len == 1 => r.kind = v[0],
            54 => r.server = ip4(),
            1 => r.mask = ip4(),
            3 => r.router = ip4(),
            _ => {}
        }
        i += 2 + len;
    }
    (r.kind != 0).then_some(r)
}

/// Writes a DHCP client message into `p` (at least 300 bytes): its length.
fn build_dhcp(
    p: &mut [u8],
    kind: u8,
    xid: u32,
    mac: &[u8; 6],
    req: Option<([u8; 4], [u8; 4])>,
) -> usize {
    p[..300].fill(0);
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    put16(p, 10, 0x8000);
    p[28..34].copy_from_slice(mac);
    p[236..240].copy_from_slice(&DHCP_MAGIC);
    let mut i = DHCP_OPTS;
    let mut opt = |code: u8, v: &[u8]| {
        p[i] = code;
        p[i + 1] = v.len() as u8;
        p[i + 2..i + 2 + v.len()].copy_from_slice(v);
        i += 2 + v.len();
    };
    opt(53, &[kind]);
    let mut client_id = [1u8; 7];
    client_id[1..].copy_from_slice(mac);
    opt(61, &client_id);
    if let Some((ip, server)) = req {
        opt(50, &ip);
        opt(54, &server);
    }
    opt(55, &[1, 3, 6, 51, 54]);
    p[i] = 255;
    300
}

fn dhcp(net: &mut Net) -> Result<(), Fail> {
    let t = rt::io::rdtsc();
    let xid = splitmix64(t ^ u64::from(net.src_mac[5]) << 56) as u32;
    let mac = net.src_mac;
    let mut req: Option<([u8; 4], [u8; 4])> = None;
    let deadline = virtio::deadline_us(net.timeout_us);
    let mut resend = 0;
    let bcast = UdpAddr {
        src_mac: mac,
        dst_mac: BROADCAST_MAC,
        src_ip: [0; 4],
        dst_ip: BROADCAST_IP,
        sport: 68,
        dport: 67,
    };
    loop {
        let now = rt::io::rdtsc();
        if now > deadline {
            return Err(Fail::Dhcp(if req.is_some() {
                "no ACK"
            } else {
                "no OFFER"
            }));
        }
        if now >= resend {
            let kind = if req.is_some() {
                DHCP_REQUEST
            } else {
                DHCP_DISCOVER
            };
            net.ip_id = net.ip_id.wrapping_add(1);
            let id = net.ip_id;
            net.tx.send(net.timeout_us, |f| {
                let n = build_dhcp(&mut f[UDP_DATA..], kind, xid, &mac, req);
                finish_udp(f, &bcast, n, id)
            })?;
            resend = virtio::deadline_us(1_000_000);
        }
        let Some(d) = net.poll()? else {
            rt::io::pause();
            continue;
        };
        if d.from.sport != 67 || d.from.dport != 68 {
            continue;
        }
        let p = &net.rx.frame[d.off..d.off + d.len];
        let Some(r) = parse_dhcp(p, xid, &mac) else {
            continue;
        };
        match (req, r.kind) {
            (None, DHCP_OFFER) => {
                let server = r.server.unwrap_or(d.from.src_ip);
                req = Some((r.yiaddr, server));
                resend = 0;
            }
            (Some(_), DHCP_NAK) => return Err(Fail::Dhcp("NAK")),
            (Some((_, server)), DHCP_ACK) => {
                let mask = u32::from_be_bytes(r.mask.unwrap_or([255, 255, 255, 0]));
                net.ip = r.yiaddr;
                net.prefix = mask.leading_ones() as u8;
                net.router = r.router.filter(|r| *r != [0; 4]);
                let server = r.server.unwrap_or(server);
                println!(
                    "net: dhcp ip {}/{} router {} server {}",
                    Ip(net.ip),
                    net.prefix,
                    RouterLine(net.router),
                    Ip(server)
                );
                return Ok(());
            }
            _ => {}
        }
    }
}

struct RouterLine(Option<[u8; 4]>);

impl fmt::Display for RouterLine {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{}", Ip(r)),
            None => write!(f, "-"),
        }
    }
}

// ---------------------------------------------------------------------------
// Echo and blast.

fn echo(net: &mut Net, port: u16, count: u64) -> Result<(), Fail> {
    println!("net: echo port {port} ready");
    let mut n = 0u64;
    let mut deadline = virtio::deadline_us(net.timeout_us);
    while count == 0 || n < count {
        if rt::io::rdtsc() > deadline {
            break;
        }
        let Some(d) = net.poll()? else {
            net.tx.reclaim()?;
            rt::io::pause();
            continue;
        };
        if d.from.dport != port || d.from.dst_ip != net.ip {
            continue;
        }
        let back = UdpAddr {
            src_mac: net.src_mac,
            dst_mac: d.from.src_mac,
            src_ip: net.ip,
            dst_ip: d.from.src_ip,
            sport: port,
            dport: d.from.sport,
        };
        net.ip_id = net.ip_id.wrapping_add(1);
        let id = net.ip_id;
        let payload = &net.rx.frame[d.off..d.off + d.len];
        net.tx.send(net.timeout_us, |f| {
            f[UDP_DATA..UDP_DATA + payload.len()].copy_from_slice(payload);
            finish_udp(f, &back, payload.len(), id)
        })?;
        n += 1;
        deadline = virtio::deadline_us(net.timeout_us);
    }
    net.tx.flush(net.timeout_us)?;
    println!("net: echoed {n}");
    if count != 0 && n < count {
        return Err(Fail::Echo {
            got: n,
            want: count,
        });
    }
    Ok(())
}

fn blast(net: &mut Net, n: u64, to: ([u8; 4], u16), size: usize) -> Result<(), Fail> {
    let mtu = usize::from(net.mtu.unwrap_or(1500)).min(1500);
    if size + 28 > mtu {
        return Err(Fail::Msg("blast: size= larger than the MTU allows"));
    }
    let dst_mac = net.resolve(to.0)?;
    let a = UdpAddr {
        src_mac: net.src_mac,
        dst_mac,
        src_ip: net.ip,
        dst_ip: to.0,
        sport: rt::cmdline::get_u64("sport", 40000) as u16,
        dport: to.1,
    };
    let exits0 = net.tx.q.notifications();
    let start = rt::io::rdtsc();
    let mut sent = 0u64;
    let mut stalled = virtio::deadline_us(net.timeout_us);
    while sent < n {
        let mut added = false;
        while sent < n {
            let id = net.ip_id.wrapping_add(1);
            let seq = sent;
            if !net.tx.try_send(|f| {
                let p = &mut f[UDP_DATA..UDP_DATA + size];
                p.fill(seq as u8);
                let k = size.min(8);
                p[..k].copy_from_slice(&seq.to_be_bytes()[..k]);
                finish_udp(f, &a, size, id)
            })? {
                break;
            }
            net.ip_id = id;
            sent += 1;
            added = true;
        }
        if added {
            net.tx.q.kick();
            stalled = virtio::deadline_us(net.timeout_us);
        } else {
            if rt::io::rdtsc() > stalled {
                return Err(Fail::Timeout("blast TX completions"));
            }
            rt::io::pause();
        }
        // Keep answering ARP while blasting.
        net.poll()?;
    }
    net.tx.flush(net.timeout_us)?;
    let cycles = rt::io::rdtsc() - start;
    println!(
        "net: blast {n} datagrams {} bytes cycles={cycles} exits={}",
        n * size as u64,
        net.tx.q.notifications() - exits0
    );
    Ok(())
}

// ---------------------------------------------------------------------------

fn main() -> ! {
    match run() {
        Ok(()) => println!("net: done"),
        Err(e) => println!("net: FAIL {e}"),
    }
    rt::power::power_off()
}

fn run() -> Result<(), Fail> {
    use rt::cmdline::{get, get_u64};
    let pci = match get("pcicfg") {
        Some("cf8") => Pci::with_access(Access::Cf8),
        _ => Pci::open(),
    };
    let mut net = setup(&pci, MemWindow::from_cmdline())?;
    let mtu = net.mtu;
    println!(
        "net: device {} mac {} features {:#x} mtu {}",
        net.dev.function.bdf,
        Mac(net.mac),
        net.dev.features(),
        MtuLine(mtu)
    );
    if let Some(v) = get("srcmac") {
        net.src_mac = parse_mac(v).ok_or(Fail::Msg("bad srcmac= (want xx:xx:xx:xx:xx:xx)"))?;
        println!("net: srcmac {}", Mac(net.src_mac));
    }
    if get_u64("dhcp", 0) != 0 {
        dhcp(&mut net)?;
    } else if let Some(v) = get("ip") {
        let (addr, prefix) = v.split_once('/').unwrap_or((v, "24"));
        let ip = parse_ip(addr).ok_or(Fail::Msg("bad ip="))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or(Fail::Msg("bad prefix in ip="))?;
        net.ip = ip;
        net.prefix = prefix;
        if let Some(g) = get("gw") {
            net.router = Some(parse_ip(g).ok_or(Fail::Msg("bad gw="))?);
        }
        println!("net: ip {}/{}", Ip(ip), prefix);
    }
    let blast_n = get_u64("blast", 0);
    let echo_port = get("echo").map(|_| get_u64("echo", 0));
    if (blast_n > 0 || echo_port.is_some()) && net.ip == [0; 4] {
        return Err(Fail::Msg("blast= and echo= need ip= or dhcp=1"));
    }
    if blast_n > 0 {
        let to = get("to")
            .and_then(|t| {
                let (ip, port) = t.split_once(':')?;
                Some((parse_ip(ip)?, port.parse::<u16>().ok()?))
            })
            .ok_or(Fail::Msg("blast= needs to=A.B.C.D:PORT"))?;
        let size = get_u64("size", 1400) as usize;
        blast(&mut net, blast_n, to, size)?;
    }
    if let Some(port) = echo_port {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(Fail::Msg("bad echo= port"))?;
        echo(&mut net, port, get_u64("count", 0))?;
    }
    net.tx.flush(net.timeout_us)?;
    net.dev.check()?;
    Ok(())
}

struct MtuLine(Option<u16>);

impl fmt::Display for MtuLine {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(m) => write!(f, "{m}"),
            None => write!(f, "-"),
        }
    }
}
