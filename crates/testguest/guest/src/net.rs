//! A polling virtio-net driver at CPL3 (modern virtio-pci, split
//! virtqueues; [`crate::pci`], [`crate::virtio`]) with a minimal IPv4 stack
//! (ARP, IPv4, ICMP echo, UDP, a DHCP client), shared by the `net` and
//! `tools` guests. Written from the virtio 1.2 specification (§5.1): the
//! same driver runs on QEMU's `virtio-net-pci` and on our VMM's device.
//! Nothing here prints; the guests say what happened.
//!
//! # Driver
//! The device is the first function on bus 0 with vendor 0x1af4 and device
//! 0x1041 (modern virtio-net), or 0x1000 (transitional) with the modern
//! capabilities. Features: VIRTIO_F_VERSION_1 (required), MAC, MTU, STATUS,
//! MRG_RXBUF (unless [`Options::mrg`] is off), ACCESS_PLATFORM and
//! ORDER_PLATFORM when offered; no offloads (no CSUM, no GSO), so every
//! frame is at most 1514 bytes and the `virtio_net_hdr` (12 bytes in
//! virtio 1.x with or without MRG_RXBUF) is all zeros on TX. The MAC is the
//! configuration space's (VIRTIO_NET_F_MAC), else generated (locally
//! administered, from the TSC). With STATUS the driver waits for
//! VIRTIO_NET_S_LINK_UP. Queue 0 receives, queue 1 transmits (both at most
//! 256 entries). 128 receive buffers of 2048 bytes (header and a whole
//! frame) are posted up front and each is posted again once its frame is
//! copied out; with MRG_RXBUF a frame spanning `num_buffers` buffers is
//! reassembled. A transmitted frame is one descriptor (header and frame in
//! one 2048-byte buffer). Both used rings are polled (nothing happens
//! between calls into [`Net`]); the avail rings say
//! VIRTQ_AVAIL_F_NO_INTERRUPT.
//!
//! # Stack
//! Ethernet II; frames to the device's MAC, to [`Net::src_mac`] or to the
//! broadcast address are taken. ARP requests for the guest's address are
//! answered and every ARP packet's sender is learnt (8 entries); a
//! destination is resolved by ARP (the router's MAC when off-link). IPv4
//! without options or fragments; received header, ICMP and UDP checksums
//! are checked (bad frames dropped), sent ones computed. ICMP echo requests
//! to the guest's address are answered (an echo reply with the request's
//! identifier, sequence number and data) to the sender's MAC, as UDP
//! replies are ([`Net::reply_udp`]). DHCP (RFC 2131): DISCOVER, OFFER,
//! REQUEST, ACK, from 0.0.0.0:68 to 255.255.255.255:67 with the broadcast
//! flag, `xid` from the TSC, retransmitted every second; the lease is never
//! renewed (test guests live shorter than leases).

use core::fmt;

use crate::pci::{Access, MemWindow, Pci};
use crate::virtio::{self, Buf, Device, Queue};

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
const IP_ICMP: u8 = 1;
const IP_UDP: u8 = 17;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const BROADCAST_IP: [u8; 4] = [255; 4];
/// Ethernet + IPv4 + UDP headers: where a UDP payload starts in a frame.
pub const UDP_DATA: usize = 14 + 20 + 8;

/// What went wrong.
#[derive(Debug)]
pub enum Error {
    Virtio(virtio::Error),
    NoDevice(Access),
    Timeout(&'static str),
    Dhcp(&'static str),
    Msg(&'static str),
}

impl From<virtio::Error> for Error {
    fn from(e: virtio::Error) -> Error {
        Error::Virtio(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::Virtio(e) => write!(f, "{e}"),
            Error::NoDevice(Access::Cf8) => {
                write!(f, "no virtio network device on bus 0 (config access cf8)")
            }
            Error::NoDevice(Access::Ecam { base, .. }) => write!(
                f,
                "no virtio network device on bus 0 (config access ecam {base:#x})"
            ),
            Error::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Error::Dhcp(why) => write!(f, "dhcp {why}"),
            Error::Msg(why) => write!(f, "{why}"),
        }
    }
}

/// An IPv4 address, written dotted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ip(pub [u8; 4]);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A MAC address, written `xx:xx:xx:xx:xx:xx`.
pub struct Mac(pub [u8; 6]);

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

/// A router, written dotted, or `-` for none.
pub struct Router(pub Option<[u8; 4]>);

impl fmt::Display for Router {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{}", Ip(r)),
            None => write!(f, "-"),
        }
    }
}

/// `a.b.c.d`.
pub fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `xx:xx:xx:xx:xx:xx` (hex digits, either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
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

/// Writes the Ethernet header and a 20-byte IPv4 header (DF, TTL 64, with
/// its checksum) carrying `payload` bytes of protocol `proto`.
fn put_eth_ipv4(
    frame: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    ips: ([u8; 4], [u8; 4]),
    proto: u8,
    payload: usize,
    ip_id: u16,
) {
    let (src_mac, dst_mac) = macs;
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    put16(frame, 12, ETH_IPV4);
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, (20 + payload) as u16);
    put16(ip, 4, ip_id);
    put16(ip, 6, 0x4000); // DF
    ip[8] = 64;
    ip[9] = proto;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&ips.0);
    ip[16..20].copy_from_slice(&ips.1);
    let c = csum_fold(csum_add(0, ip));
    put16(ip, 10, c);
}

/// Where a UDP datagram goes, from where.
#[derive(Clone, Copy)]
pub struct UdpAddr {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

/// Writes Ethernet, IPv4 and UDP headers (with checksums) in front of the
/// `payload` bytes already at `frame[UDP_DATA..]`: the frame's length.
pub fn finish_udp(frame: &mut [u8], a: &UdpAddr, payload: usize, ip_id: u16) -> usize {
    put_eth_ipv4(
        frame,
        (a.src_mac, a.dst_mac),
        (a.src_ip, a.dst_ip),
        IP_UDP,
        8 + payload,
        ip_id,
    );
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
    fn post(&mut self, buf: usize) -> Result<(), Error> {
        let b = Buf {
            addr: self.base + (buf * BUF_BYTES) as u64,
            len: BUF_BYTES as u32,
            write: true,
        };
        let head = self
            .q
            .push(&[b])
            .ok_or(Error::Msg("no free RX descriptors"))?;
        self.of_head[usize::from(head)] = buf as u8;
        Ok(())
    }

    /// The next used buffer: its index and the bytes written.
    fn pop(&mut self) -> Result<Option<(usize, usize)>, Error> {
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
    fn recv(&mut self) -> Result<Option<usize>, Error> {
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
                if crate::io::rdtsc() > deadline {
                    return Err(Error::Timeout("the rest of a merged RX frame"));
                }
                crate::io::pause();
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
pub struct Tx {
    q: Queue,
    base: u64,
    free: [u16; QMAX],
    nfree: usize,
    of_head: [u16; QMAX],
    /// Buffers the device holds.
    busy: usize,
}

impl Tx {
    /// Takes back the buffers the device is done with.
    pub fn reclaim(&mut self) -> Result<(), Error> {
        while let Some(u) = self.q.pop()? {
            self.free[self.nfree] = self.of_head[usize::from(u.head)];
            self.nfree += 1;
            self.busy -= 1;
        }
        Ok(())
    }

    /// Queues a frame written by `fill` (given the frame area, returning
    /// its length) if a buffer is free; does not notify. Whether it did.
    pub fn try_send(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<bool, Error> {
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
            .ok_or(Error::Msg("no free TX descriptors"))?;
        self.of_head[usize::from(head)] = slot;
        self.busy += 1;
        Ok(true)
    }

    /// Sends one frame now, waiting for a free buffer.
    pub fn send(
        &mut self,
        timeout_us: u64,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<(), Error> {
        let deadline = virtio::deadline_us(timeout_us);
        while !self.try_send(&mut fill)? {
            if crate::io::rdtsc() > deadline {
                return Err(Error::Timeout("a free TX buffer"));
            }
            crate::io::pause();
        }
        self.q.kick();
        Ok(())
    }

    /// Notifies the device of the frames queued (if it wants to be).
    pub fn kick(&mut self) {
        self.q.kick();
    }

    /// Notifications sent so far (MMIO writes, one VM exit each).
    pub fn notifications(&self) -> u64 {
        self.q.notifications()
    }

    /// Waits until the device has completed every frame.
    pub fn flush(&mut self, timeout_us: u64) -> Result<(), Error> {
        let deadline = virtio::deadline_us(timeout_us);
        loop {
            self.reclaim()?;
            if self.busy == 0 {
                return Ok(());
            }
            if crate::io::rdtsc() > deadline {
                return Err(Error::Timeout("TX completions"));
            }
            crate::io::pause();
        }
    }
}

/// A received UDP datagram; its payload is [`Net::payload`].
#[derive(Clone, Copy)]
pub struct UdpIn {
    pub from: UdpAddr,
    off: usize,
    len: usize,
}

/// How the driver is set up.
pub struct Options {
    /// Negotiate VIRTIO_NET_F_MRG_RXBUF if offered.
    pub mrg: bool,
    /// Longest wait: link up, ARP, DHCP, TX completion, the rest of a
    /// merged frame.
    pub timeout_us: u64,
}

/// What DHCP gave.
#[derive(Clone, Copy)]
pub struct Lease {
    pub ip: [u8; 4],
    /// From the subnet mask option; 24 without one.
    pub prefix: u8,
    /// None if the ACK named no router.
    pub router: Option<[u8; 4]>,
    pub server: [u8; 4],
}

/// The device and the stack on it.
pub struct Net {
    pub dev: Device,
    rx: Rx,
    pub tx: Tx,
    /// The device's MAC.
    pub mac: [u8; 6],
    /// The MAC the guest sends from and names itself by (ARP sender, DHCP
    /// `chaddr` and client identifier); the device's unless changed.
    pub src_mac: [u8; 6],
    /// The device's MTU, if it said (VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
    /// The guest's address (0.0.0.0: none yet), prefix and router.
    pub ip: [u8; 4],
    pub prefix: u8,
    pub router: Option<[u8; 4]>,
    arp: [([u8; 4], [u8; 6]); 8],
    arp_next: usize,
    /// The last IPv4 identification used.
    pub ip_id: u16,
    pub timeout_us: u64,
}

impl Net {
    /// Finds the device, sets it up and waits for the link.
    pub fn open(pci: &Pci, mut window: Option<MemWindow>, opts: &Options) -> Result<Net, Error> {
        let mut found = None;
        for f in pci.functions(0) {
            let net = f.device == virtio::MODERN_DEVICE_BASE + VIRTIO_ID_NET
                || f.device == TRANSITIONAL_NET;
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
        let mut dev = found.ok_or(Error::NoDevice(pci.access()))?;
        let mut wanted =
            F_MAC | F_MTU | F_STATUS | virtio::F_ACCESS_PLATFORM | virtio::F_ORDER_PLATFORM;
        if opts.mrg {
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
            let r = splitmix64(crate::io::rdtsc()).to_le_bytes();
            [0x02, r[0], r[1], r[2], r[3], r[4]]
        };
        let nrx = RX_BUFS.min(usize::from(rxq.size()));
        let rx_base = virtio::dma_alloc(nrx * BUF_BYTES, 4096)?;
        let ntx = usize::from(txq.size());
        let tx_base = virtio::dma_alloc(ntx * BUF_BYTES, 4096)?;
        let timeout_us = opts.timeout_us;
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
            ip_id: crate::io::rdtsc() as u16,
            timeout_us,
        };
        if features & F_STATUS != 0 {
            let deadline = virtio::deadline_us(timeout_us);
            while net.dev.config(|c| c.read16(CFG_STATUS)) & S_LINK_UP == 0 {
                if crate::io::rdtsc() > deadline {
                    return Err(Error::Timeout("link up"));
                }
                crate::io::delay_us(1000);
            }
        }
        net.dev.check()?;
        Ok(net)
    }

    /// The next IPv4 identification.
    pub fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// The payload of `d`, the datagram [`Net::poll`] returned last.
    pub fn payload(&self, d: &UdpIn) -> &[u8] {
        &self.rx.frame[d.off..d.off + d.len]
    }

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

    fn send_arp(&mut self, op: u16, tha: [u8; 6], tpa: [u8; 4]) -> Result<(), Error> {
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

    /// Answers the ICMP echo request `icmp` (the ICMP message, checksum
    /// checked) from `src_ip` at `src_mac`, which is in `rx.frame` at
    /// `off`.
    fn echo_reply(
        &mut self,
        src_mac: [u8; 6],
        src_ip: [u8; 4],
        off: usize,
        len: usize,
    ) -> Result<(), Error> {
        let id = self.next_ip_id();
        let (mac, ip) = (self.src_mac, self.ip);
        let request = &self.rx.frame[off..off + len];
        self.tx.send(self.timeout_us, |f| {
            put_eth_ipv4(f, (mac, src_mac), (ip, src_ip), IP_ICMP, len, id);
            let icmp = &mut f[34..34 + len];
            icmp.copy_from_slice(request);
            icmp[0] = ICMP_ECHO_REPLY;
            icmp[1] = 0;
            put16(icmp, 2, 0);
            let c = csum_fold(csum_add(0, icmp));
            put16(icmp, 2, c);
            34 + len
        })
    }

    /// Handles the next received frame: ARP and ICMP echo here; a valid
    /// UDP datagram for this host is returned. `None` if nothing (for us)
    /// arrived.
    pub fn poll(&mut self) -> Result<Option<UdpIn>, Error> {
        Ok(self.poll_frame()?.flatten())
    }

    /// As [`Net::poll`], but `None` only when no frame arrived, and
    /// `Some(None)` for one handled here or dropped.
    fn poll_frame(&mut self) -> Result<Option<Option<UdpIn>>, Error> {
        let Some(n) = self.rx.recv()? else {
            return Ok(None);
        };
        let f = &self.rx.frame[..n];
        if n == 0 {
            return Ok(Some(None));
        }
        let dst_mac: [u8; 6] = f[0..6].try_into().unwrap();
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
        if dst_mac != self.mac && dst_mac != self.src_mac && dst_mac != BROADCAST_MAC {
            return Ok(Some(None));
        }
        match be16(f, 12) {
            ETH_ARP if n >= 42 => {
                let a = &f[14..42];
                if be16(a, 0) != 1 || be16(a, 2) != ETH_IPV4 || a[4] != 6 || a[5] != 4 {
                    return Ok(Some(None));
                }
                let op = be16(a, 6);
                let sha: [u8; 6] = a[8..14].try_into().unwrap();
                let spa: [u8; 4] = a[14..18].try_into().unwrap();
                let tpa: [u8; 4] = a[24..28].try_into().unwrap();
                self.learn(spa, sha);
                if op == 1 && tpa == self.ip && self.ip != [0; 4] {
                    self.send_arp(2, sha, spa)?;
                }
                Ok(Some(None))
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
                {
                    return Ok(Some(None));
                }
                let src_ip: [u8; 4] = ip[12..16].try_into().unwrap();
                let dst_ip: [u8; 4] = ip[16..20].try_into().unwrap();
                match ip[9] {
                    IP_ICMP => {
                        let icmp = &ip[ihl..total];
                        if self.ip != [0; 4]
                            && dst_ip == self.ip
                            && icmp[0] == ICMP_ECHO_REQUEST
                            && icmp[1] == 0
                            && csum_fold(csum_add(0, icmp)) == 0
                        {
                            self.echo_reply(src_mac, src_ip, 14 + ihl, total - ihl)?;
                        }
                        Ok(Some(None))
                    }
                    IP_UDP => {
                        let bcast = u32::from_be_bytes(self.ip) | !prefix_mask(self.prefix);
                        let ours = self.ip == [0; 4]
                            || dst_ip == self.ip
                            || dst_ip == BROADCAST_IP
                            || u32::from_be_bytes(dst_ip) == bcast;
                        let udp = &ip[ihl..total];
                        let udp_len = usize::from(be16(udp, 4));
                        if !ours || udp_len < 8 || udp_len > udp.len() {
                            return Ok(Some(None));
                        }
                        let udp = &udp[..udp_len];
                        if be16(udp, 6) != 0
                            && csum_fold(csum_add(pseudo(src_ip, dst_ip, udp_len as u16), udp)) != 0
                        {
                            return Ok(Some(None));
                        }
                        Ok(Some(Some(UdpIn {
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
                        })))
                    }
                    _ => Ok(Some(None)),
                }
            }
            _ => Ok(Some(None)),
        }
    }

    /// Sends the payload of `d` (the datagram [`Net::poll`] returned last)
    /// back where it came from: to its sender's MAC, address and port,
    /// from the port it was sent to.
    pub fn reply_udp(&mut self, d: &UdpIn) -> Result<(), Error> {
        let back = UdpAddr {
            src_mac: self.src_mac,
            dst_mac: d.from.src_mac,
            src_ip: self.ip,
            dst_ip: d.from.src_ip,
            sport: d.from.dport,
            dport: d.from.sport,
        };
        let id = self.next_ip_id();
        let payload = &self.rx.frame[d.off..d.off + d.len];
        self.tx.send(self.timeout_us, |f| {
            f[UDP_DATA..UDP_DATA + payload.len()].copy_from_slice(payload);
            finish_udp(f, &back, payload.len(), id)
        })
    }

    /// Handles every frame that arrived (at most twice the receive ring, so
    /// that a flood cannot keep the caller here): ARP and ICMP echo as
    /// [`Net::poll`] does, UDP datagrams to our address and `echo_port`
    /// sent back ([`Net::reply_udp`]), anything else dropped; then takes
    /// back the transmit buffers the device is done with. The number of
    /// datagrams echoed.
    pub fn service(&mut self, echo_port: Option<u16>) -> Result<u64, Error> {
        let mut echoed = 0;
        for _ in 0..2 * RX_BUFS {
            match self.poll_frame()? {
                None => break,
                Some(Some(d)) if Some(d.from.dport) == echo_port && d.from.dst_ip == self.ip => {
                    self.reply_udp(&d)?;
                    echoed += 1;
                }
                Some(_) => {}
            }
        }
        self.tx.reclaim()?;
        Ok(echoed)
    }

    /// The MAC of `ip` (or of the router, off-link), by ARP.
    pub fn resolve(&mut self, ip: [u8; 4]) -> Result<[u8; 6], Error> {
        if ip == BROADCAST_IP {
            return Ok(BROADCAST_MAC);
        }
        let hop = if self.on_link(ip) {
            ip
        } else {
            self.router
                .ok_or(Error::Msg("destination off-link and no router"))?
        };
        let deadline = virtio::deadline_us(self.timeout_us);
        let mut resend = 0;
        loop {
            if let Some(mac) = self.lookup(hop) {
                return Ok(mac);
            }
            let now = crate::io::rdtsc();
            if now > deadline {
                return Err(Error::Timeout("an ARP reply"));
            }
            if now >= resend {
                self.send_arp(1, [0; 6], hop)?;
                resend = virtio::deadline_us(500_000);
            }
            if self.poll()?.is_none() {
                crate::io::pause();
            }
        }
    }

    /// Gets an address by DHCP (from [`Net::src_mac`]) and takes it, its
    /// prefix and router; waits at most `timeout_us`.
    pub fn dhcp(&mut self) -> Result<Lease, Error> {
        let t = crate::io::rdtsc();
        let xid = splitmix64(t ^ u64::from(self.src_mac[5]) << 56) as u32;
        let mac = self.src_mac;
        let mut req: Option<([u8; 4], [u8; 4])> = None;
        let deadline = virtio::deadline_us(self.timeout_us);
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
            let now = crate::io::rdtsc();
            if now > deadline {
                return Err(Error::Dhcp(if req.is_some() {
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
                let id = self.next_ip_id();
                self.tx.send(self.timeout_us, |f| {
                    let n = build_dhcp(&mut f[UDP_DATA..], kind, xid, &mac, req);
                    finish_udp(f, &bcast, n, id)
                })?;
                resend = virtio::deadline_us(1_000_000);
            }
            let Some(d) = self.poll()? else {
                crate::io::pause();
                continue;
            };
            if d.from.sport != 67 || d.from.dport != 68 {
                continue;
            }
            let Some(r) = parse_dhcp(self.payload(&d), xid, &mac) else {
                continue;
            };
            match (req, r.kind) {
                (None, DHCP_OFFER) => {
                    let server = r.server.unwrap_or(d.from.src_ip);
                    req = Some((r.yiaddr, server));
                    resend = 0;
                }
                (Some(_), DHCP_NAK) => return Err(Error::Dhcp("NAK")),
                (Some((_, server)), DHCP_ACK) => {
                    let mask = u32::from_be_bytes(r.mask.unwrap_or([255, 255, 255, 0]));
                    self.ip = r.yiaddr;
                    self.prefix = mask.leading_ones() as u8;
                    self.router = r.router.filter(|r| *r != [0; 4]);
                    return Ok(Lease {
                        ip: self.ip,
                        prefix: self.prefix,
                        router: self.router,
                        server: r.server.unwrap_or(server),
                    });
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// DHCP messages.

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
