//! virtio-net's queue paths against a hostile driver and a hostile tap.
//!
//! Guest memory as for `virtio_blk_queue` (three regions, a hole after
//! the first, the last two adjacent). The input chooses the features the
//! driver accepted (EVENT_IDX, MRG_RXBUF, none / checksum / all / any of
//! the offloads), whether the tap has a vnet header, a locked interface,
//! the built-in DHCP server; places both split virtqueues (default: apart;
//! else anywhere, over each other or the buffers); writes both descriptor
//! tables (loops, bad indices, indirect tables, addresses outside RAM or
//! over the rings, lengths that lie), both avail rings (heads out of
//! range, an index up to far ahead), `used_event`s and avail flags; the
//! guest's virtio-net headers (every flag and GSO type, the negotiated and
//! the not) and frames (TCP/IPv4 from the guest's MAC or another, DHCP
//! DISCOVERs, UDP datagrams of one flow, which the device merges, raw
//! bytes; runts, MTU-sized, just over, GSO-sized, over
//! 64 KiB); the frames the tap hands over (headers with any flags, GSO
//! types and checksum places, any length); and raw bytes anywhere. A
//! short input ends in plain chains: header + frame on TX, one 2 KiB
//! buffer each on RX.
//!
//! The device's I/O-thread passes (`devices::virtio::net::fuzz_process`:
//! TX, RX, TX, RX) run over it with a socket pair standing in for the
//! tap, then once more ("a second kick").
//!
//! Checked, besides no panic (ASan build) and termination (libFuzzer's
//! `-timeout`):
//! - guest memory, compared with a shadow copy after every call, changed
//!   only in the two used rings and in the device-writable buffers
//!   reachable from the RX table (before or after the call): never in a
//!   TX buffer, never elsewhere (not checked where a descriptor lies
//!   inside a used ring, which the device itself rewrites mid-pass);
//! - every frame the device hands the tap: on a vnet-header tap, a header
//!   asking only for what the driver negotiated; a frame no shorter than
//!   an Ethernet header, no longer than the MTU allows (64 KiB of IP for
//!   a GSO frame, whose segments must each fit the MTU); from the guest's
//!   MAC on a locked interface; never a DHCP request the built-in server
//!   answers; as many as counted sent; on a vnet-header tap (which takes
//!   UDP GSO frames here, as on Linux 6.2 and later) merged datagrams as
//!   a well-formed UDP GSO frame: its header, UDP/IPv4 lengths and IP
//!   checksum right, datagrams whose frames each pass the length check
//!   a frame sent alone does, 2 to 64 of them, each counted sent;
//! - used entries name a head below the queue size, and (rings apart)
//!   an RX length no larger than the chain's writable bytes;
//! - rings apart and nothing new made available, a second call completes
//!   no TX chain;
//! - a call returns false exactly when the device asked for a reset.

#![no_main]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::virtio::net::filter::{check_gso, Verdict, ETH_HLEN, MAX_GSO_FRAME};
use devices::virtio::net::hdr::{self, Hdr};
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: the device's merged datagrams.
const GSO_UDP_L4: u8 = 5;
use devices::virtio::net::tap::Tap;
use devices::virtio::net::{fuzz_process, NetConfig, NetStats, NET_HDR_LEN};
use devices::virtio::{GuestMemory, Interrupt};
use libfuzzer_sys::fuzz_target;
use netcfg::dhcp::DhcpServer;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

use common::{overlaps, with_mem, In, Layout, Mem, F_INDIRECT, F_NEXT, F_WRITE, INDIRECT, REGIONS};

/// Default ring placement (each fits a 256-entry queue): RX, then TX.
const RINGS: [[u64; 3]; 2] = [[0x1000, 0x2000, 0x3000], [0x4000, 0x5000, 0x6000]];
/// The guest's virtio-net headers (12 bytes each, 64 apart).
const HEADERS: u64 = 0x10000;
const HEADER_SLOTS: u64 = 8;
/// The guest's frames: small slots (2 KiB apart), and a big one.
const FRAMES: u64 = 0x11000;
const FRAME_SLOTS: u64 = 4;
const FRAME_SLOT: u64 = 0x800;
const BIG: u64 = 0x20000;
const BIG_LEN: u64 = 0x10100;
/// Default RX buffers (2 KiB apart, 256 of them).
const RX_BUFS: u64 = 0x40000;
const MAX_QUEUE: u16 = devices::virtio::net::QUEUE_SIZE;
const MTU: u16 = 1500;
const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 1, 2, 3];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

const EVENT_IDX: u64 = 1 << 29;
const MRG_RXBUF: u64 = 1 << 15;
const VERSION_1: u64 = 1 << 32;

#[derive(Default)]
struct TestInterrupt {
    used: [AtomicU64; 2],
    needs_reset: AtomicU64,
}

impl Interrupt for TestInterrupt {
    fn signal_used(&self, queue: u16) {
        self.used[usize::from(queue)].fetch_add(1, Ordering::Relaxed);
    }
    fn signal_config(&self) {
        panic!("virtio-net never changes its configuration");
    }
    fn needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::Relaxed);
    }
}

/// A guest address: mostly places that matter, sometimes anything.
fn addr(inp: &mut In, l: &[Layout; 2]) -> u64 {
    let k = inp.u8();
    let small = u64::from(inp.u8());
    let q = &l[usize::from(k >> 7)];
    match k % 16 {
        0 | 1 => HEADERS + (small % HEADER_SLOTS) * 64 + u64::from(k >> 4 & 7),
        2 | 3 => FRAMES + (small % FRAME_SLOTS) * FRAME_SLOT,
        4 => BIG + u64::from(k >> 4 & 7),
        5 => RX_BUFS + (u64::from(inp.u16()) << 4) % (REGIONS[0].1 - RX_BUFS),
        6 => REGIONS[1].0 + (u64::from(inp.u16()) << 5) % REGIONS[1].1,
        7 => REGIONS[0].1 - small,
        8 => REGIONS[2].0 - small,
        9 => REGIONS[2].0 + REGIONS[2].1 - small,
        10 => REGIONS[0].1 + (u64::from(inp.u16()) << 4),
        11 => match small % 4 {
            0 => 4 << 30,
            1 => u64::MAX - u64::from(k >> 4),
            2 => 1 << 63,
            _ => (u64::MAX - (1 << 20)) + u64::from(inp.u16()),
        },
        12 => INDIRECT[(small % INDIRECT.len() as u64) as usize],
        13 => q.desc.wrapping_add(small * 4),
        14 => q.avail.wrapping_add(small),
        _ => match small % 2 {
            0 => q.used.wrapping_add(small),
            _ => inp.u64(),
        },
    }
}

/// A descriptor length: headers, frames, buffers, anything.
fn len(inp: &mut In) -> u32 {
    match inp.u8() % 14 {
        0 => 0,
        1 => 1,
        2 => NET_HDR_LEN as u32,
        3 => 14,
        4 => 60,
        5 => 1514,
        6 => NET_HDR_LEN as u32 + 1514,
        7 => 2048,
        8 => 4096,
        9 => 0x10000,
        10 => (NET_HDR_LEN + MAX_GSO_FRAME) as u32 + u32::from(inp.u8() % 3),
        11 => u32::from(inp.u16()),
        12 => inp.u32(),
        _ => 0x100 * (1 + u32::from(inp.u8() % 32)),
    }
}

/// One descriptor (16 bytes), index `i` of a table of `n`.
fn descriptor(inp: &mut In, l: &[Layout; 2], i: u16, n: u16) -> [u8; 16] {
    let a = addr(inp, l);
    let ln = len(inp);
    let f = inp.u8();
    let flags = match f >> 5 {
        7 => inp.u16(),
        _ => u16::from(f) & (F_NEXT | F_WRITE | F_INDIRECT),
    };
    let nb = inp.u8();
    let next = match nb % 8 {
        0 => inp.u16(),
        1 => u16::from(nb >> 3) % n.max(1),
        2 => i,
        _ => i.wrapping_add(1) % n.max(1),
    };
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&a.to_le_bytes());
    d[8..12].copy_from_slice(&ln.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// A virtio-net header: mostly well-formed for some feature set,
/// sometimes anything.
fn net_header(inp: &mut In) -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    let k = inp.u8();
    if k >= 0xf0 {
        for b in &mut h {
            *b = inp.u8();
        }
        return h;
    }
    h[0] = [0, hdr::FLAG_NEEDS_CSUM, hdr::FLAG_DATA_VALID, 4][usize::from(k & 3)];
    h[1] = [
        hdr::GSO_NONE,
        hdr::GSO_TCPV4,
        hdr::GSO_TCPV6,
        hdr::GSO_TCPV4 | hdr::GSO_ECN,
        hdr::GSO_ECN,
        3, // UDP (UFO)
        5, // UDP_L4 (USO)
        hdr::GSO_TCPV6 | hdr::GSO_ECN,
    ][usize::from(k >> 2 & 7)];
    let gso_size: u16 = match inp.u8() % 4 {
        0 => 1448,
        1 => 0,
        2 => 1,
        _ => inp.u16(),
    };
    let (start, off): (u16, u16) = match inp.u8() % 5 {
        0 => (34, 16), // TCP over IPv4
        1 => (34, 6),  // UDP over IPv4
        2 => (54, 16), // TCP over IPv6
        3 => (0, 0),
        _ => (inp.u16(), inp.u16()),
    };
    h[2..4].copy_from_slice(&start.wrapping_add(20).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&off.to_le_bytes());
    h[10..12].copy_from_slice(&u16::from(k >> 5).to_le_bytes());
    h
}

fn ones_sum(mut s: u32, data: &[u8]) -> u32 {
    for w in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// An Ethernet/IPv4 frame from `src` carrying `proto` with `l4` (IPv4
/// header checksum right; the length field as big as it fits).
fn ipv4(src: [u8; 6], dst_mac: [u8; 6], proto: u8, dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()).min(0xffff) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[16..20].copy_from_slice(&dst);
    let c = !(ones_sum(0, &ip) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// A `len`-byte frame holding a UDP datagram of one flow, checksums
/// right, IP identifications counting up (`udp_id`): what the device
/// merges into one UDP GSO frame on a tap that takes them.
fn udp_datagram(len: usize, udp_id: &mut u16) -> Vec<u8> {
    let n = len.min(14 + 0xffff) - 42;
    let mut udp = vec![0x9c, 0x40, 0x13, 0x88];
    udp.extend_from_slice(&((8 + n) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend((0..n).map(|i| (i * 7) as u8));
    let mut f = ipv4(GUEST_MAC, HOST_MAC, 17, [100, 64, 1, 2], &udp);
    f[18..20].copy_from_slice(&udp_id.to_be_bytes());
    *udp_id = udp_id.wrapping_add(1);
    f[24..26].fill(0);
    let c = !(ones_sum(0, &f[14..34]) as u16);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let mut pseudo = f[26..34].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&f[38..40]);
    let c = match !(ones_sum(ones_sum(0, &pseudo), &f[34..]) as u16) {
        0 => 0xffff,
        c => c,
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

/// A DHCPDISCOVER (or, `request`, a REQUEST) from the guest.
fn dhcp(request: bool) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0..4].copy_from_slice(&[1, 1, 6, 0]);
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[28..34].copy_from_slice(&GUEST_MAC);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    if request {
        b.extend_from_slice(&[53, 1, 3, 50, 4, 100, 64, 1, 3, 54, 4, 100, 64, 1, 2]);
    } else {
        b.extend_from_slice(&[53, 1, 1]);
    }
    b.push(255);
    let mut udp = vec![0, 68, 0, 67];
    udp.extend_from_slice(&((8 + b.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&b);
    ipv4(GUEST_MAC, [0xff; 6], 17, [255; 4], &udp)
}

/// A frame the guest sends (or the tap hands over): its kind and length
/// from the input.
fn frame(inp: &mut In, max: usize, udp_id: &mut u16) -> Vec<u8> {
    let k = inp.u8();
    let want: usize = match k >> 4 {
        0..=3 => 100,
        4 => 0,
        5 => 13,
        6 => 14,
        7 => 60,
        8 => 1514,
        9 => 1518,
        10 => 1519,
        11 => 9000,
        12 => MAX_GSO_FRAME,
        13 => MAX_GSO_FRAME + 1,
        _ => usize::from(inp.u16()),
    }
    .min(max);
    let mut f = match k & 7 {
        0 | 1 => {
            let mut tcp = vec![0u8; 20];
            tcp[12] = 5 << 4;
            tcp[13] = 0x10;
            ipv4(GUEST_MAC, HOST_MAC, 6, [100, 64, 1, 2], &tcp)
        }
        2 => dhcp(false),
        3 => dhcp(true),
        4 => {
            let mut tcp = vec![0u8; 20];
            tcp[12] = 5 << 4;
            ipv4([2, 0, 0, 0, 0, 0x66], HOST_MAC, 6, [10, 0, 0, 1], &tcp)
        }
        5 => {
            let mut f = vec![0u8; 14];
            f[6..12].copy_from_slice(&GUEST_MAC);
            f
        }
        6 => return udp_datagram(want.max(43), udp_id),
        _ => Vec::new(),
    };
    // To the length wanted (a longer frame is cut only if asked): a
    // pattern (raw patches may change it).
    if f.len() > want {
        if k & 8 != 0 {
            f.truncate(want);
        }
    } else {
        let n = f.len();
        f.extend((n..want).map(|i| (i * 13) as u8));
    }
    f
}

/// One chain as the device reads it: its device-writable (address,
/// length) pieces. Follows virtio-queue 0.18's `DescriptorChain` step for
/// step (a loop or a bad index ends the chain; one level of indirection;
/// at most `ttl` descriptors; at most 4 GiB in all).
fn walk(mem: &GuestMemory, l: &Layout, head: u16) -> (Vec<(u64, u64)>, Option<(u64, u64)>) {
    let mut writable = Vec::new();
    let mut indirect = None;
    let (mut table, mut n, mut next, mut ttl) = (l.desc, l.size, head, l.size);
    let mut bytes = 0u32;
    while ttl > 0 && next < n {
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        let Ok(d) = mem.read_obj::<Descriptor>(GuestAddress(at)) else {
            break;
        };
        if d.refers_to_indirect_table() {
            if indirect.is_some() || d.len() % 16 != 0 || d.len() / 16 > u32::from(u16::MAX) {
                break;
            }
            indirect = Some((d.addr().0, u64::from(d.len())));
            table = d.addr().0;
            n = (d.len() / 16) as u16;
            next = 0;
            ttl = n;
            continue;
        }
        let Some(b) = bytes.checked_add(d.len()) else {
            break;
        };
        bytes = b;
        if d.is_write_only() {
            writable.push((d.addr().0, u64::from(d.len())));
        }
        if d.has_next() {
            next = d.next();
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    (writable, indirect)
}

/// The device-writable pieces of every descriptor any chain of queue `l`
/// could reach; `None` where it cannot be told (a descriptor inside a
/// used ring, or too many indirect descriptors to list).
fn reachable_writable(
    mem: &GuestMemory,
    l: &Layout,
    used: &[(u64, u64)],
) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut tables = Vec::new();
    let mut budget = 1u32 << 18;
    for i in 0..u64::from(l.size) {
        let at = l.desc + i * 16;
        if used.iter().any(|&u| overlaps((at, 16), u)) {
            return None;
        }
        let d: Descriptor = mem.read_obj(GuestAddress(at)).ok()?;
        if !d.refers_to_indirect_table() {
            if d.is_write_only() {
                out.push((d.addr().0, u64::from(d.len())));
            }
            continue;
        }
        if d.len() % 16 != 0 || tables.contains(&(d.addr().0, d.len())) {
            continue;
        }
        tables.push((d.addr().0, d.len()));
        for j in 0..u64::from(d.len() / 16) {
            budget = budget.checked_sub(1)?;
            let Some(at) = d.addr().0.checked_add(j * 16) else {
                break;
            };
            if used.iter().any(|&u| overlaps((at, 16), u)) {
                return None;
            }
            let Ok(e) = mem.read_obj::<Descriptor>(GuestAddress(at)) else {
                break;
            };
            if e.is_write_only() && !e.refers_to_indirect_table() {
                out.push((e.addr().0, u64::from(e.len())));
            }
        }
    }
    // A writable buffer over a descriptor table lets the device's own
    // writes (frame bytes the guest asked it to put there) rewrite
    // descriptors it reads later in the same pass: what is reachable then
    // depends on the frames, so it cannot be listed beforehand.
    let tables_too = tables.iter().map(|&(a, n)| (a, u64::from(n)));
    for t in std::iter::once(l.desc_range()).chain(tables_too) {
        if out.iter().any(|&w| overlaps(w, t)) {
            return None;
        }
    }
    Some(out)
}

/// What a call may write: both used rings, and the RX table's writable
/// pieces reachable before or after it; `None` if that cannot be told.
fn allowed(
    l: &[Layout; 2],
    pre: Option<Vec<(u64, u64)>>,
    post: Option<Vec<(u64, u64)>>,
) -> Option<Vec<(u64, u64)>> {
    let mut a = vec![l[0].used_range(), l[1].used_range()];
    a.extend(pre?);
    a.extend(post?);
    Some(a)
}

struct Setup {
    acked: u64,
    vnet_hdr: bool,
    /// The tap takes UDP GSO frames (as on Linux 6.2 and later): the
    /// device merges the guest's datagrams.
    udp_gso: bool,
    locked: bool,
    dhcp: bool,
}

fn net_config(s: &Setup) -> NetConfig {
    NetConfig {
        mac: GUEST_MAC,
        mtu: MTU,
        locked: s.locked,
        dhcp: s.dhcp.then(|| server()),
    }
}

fn server() -> DhcpServer {
    DhcpServer::new(
        GUEST_MAC,
        HOST_MAC,
        Ipv4Addr::new(100, 64, 1, 2),
        Ipv4Addr::new(100, 64, 1, 3),
        31,
        "fuzz",
    )
}

/// Reads what the device wrote to the tap and checks each frame.
fn check_tap_output(peer: &File, s: &Setup, sent: u64) {
    let mut buf = vec![0u8; 1 << 17];
    let mut n_msgs = 0u64;
    let dhcp = server();
    loop {
        // One message a read (SOCK_SEQPACKET); WouldBlock once empty.
        let Ok(n) = (&*peer).read(&mut buf) else {
            break;
        };
        let msg = &buf[..n];
        if s.udp_gso && msg.len() > NET_HDR_LEN && msg[1] == GSO_UDP_L4 {
            n_msgs += check_merged(msg, s);
            continue;
        }
        n_msgs += 1;
        let (gso, frame) = if s.vnet_hdr {
            assert!(msg.len() >= NET_HDR_LEN, "a {}-byte message", msg.len());
            let h: &[u8; NET_HDR_LEN] = msg[..NET_HDR_LEN].try_into().unwrap();
            let hd = Hdr::parse(h);
            let gso = hdr::check_tx(&hd, s.acked)
                .unwrap_or_else(|e| panic!("header {hd:?} ({e:?}) with features {:#x}", s.acked));
            (gso, &msg[NET_HDR_LEN..])
        } else {
            (false, msg)
        };
        let max = if gso {
            MAX_GSO_FRAME
        } else {
            ETH_HLEN + 4 + usize::from(MTU)
        };
        assert!(
            (ETH_HLEN..=max).contains(&frame.len()),
            "a {}-byte frame (gso {gso}) reached the tap",
            frame.len()
        );
        if gso {
            let h: &[u8; NET_HDR_LEN] = msg[..NET_HDR_LEN].try_into().unwrap();
            let hd = Hdr::parse(h);
            let v6 = hd.gso_type & !hdr::GSO_ECN == hdr::GSO_TCPV6;
            assert_eq!(
                check_gso(frame, hd.csum_start, hd.gso_size, v6, MTU),
                Verdict::Pass,
                "a TSO frame whose segments exceed the MTU reached the tap ({hd:?})"
            );
        }
        if s.locked {
            assert_eq!(frame[6..12], GUEST_MAC, "a spoofed frame reached the tap");
        }
        if s.dhcp && !gso {
            assert!(
                dhcp.clone().handle(frame).is_none(),
                "a DHCP request the server answers reached the tap"
            );
        }
    }
    assert_eq!(n_msgs, sent, "frames on the tap against tx_frames");
}

/// Checks a UDP GSO frame the device made of the guest's datagrams
/// (`coalesce`); how many datagrams it holds.
fn check_merged(msg: &[u8], s: &Setup) -> u64 {
    let hd = Hdr::parse(msg[..NET_HDR_LEN].try_into().unwrap());
    let f = &msg[NET_HDR_LEN..];
    assert_eq!(
        (hd.flags, hd.hdr_len, hd.csum_start, hd.csum_offset),
        (hdr::FLAG_NEEDS_CSUM, 42, 34, 6),
        "a merged frame's header"
    );
    let be16 = |at: usize| usize::from(u16::from_be_bytes([f[at], f[at + 1]]));
    assert!(
        f.len() > 42 && f.len() - 14 <= 0xffff,
        "a {}-byte merged frame",
        f.len()
    );
    assert_eq!(
        (&f[12..14], f[14], f[23]),
        (&[8u8, 0][..], 0x45, 17),
        "not UDP/IPv4"
    );
    assert_eq!(be16(16), f.len() - 14, "IP length");
    assert_eq!(be16(38), f.len() - 34, "UDP length");
    assert_eq!(ones_sum(0, &f[14..34]), 0xffff, "IP header checksum");
    let mss = usize::from(hd.gso_size);
    // Each datagram's frame within what a frame sent alone may be.
    assert!(
        mss > 0 && 42 + mss <= ETH_HLEN + 4 + usize::from(MTU),
        "datagrams of {mss} bytes"
    );
    let n = (f.len() - 42).div_ceil(mss);
    assert!((2..=64).contains(&n), "{n} datagrams merged");
    if s.locked {
        assert_eq!(f[6..12], GUEST_MAC, "a spoofed frame reached the tap");
    }
    n as u64
}

/// One call of the device's passes (`fuzz_process`: TX, RX, TX, RX),
/// then the check that it wrote guest memory only where it may: the used
/// rings and the RX chains' writable buffers reachable before or after
/// the call (anywhere, where that cannot be told). Returns what the call
/// did, and what it was allowed to write (`None`: anything).
#[allow(clippy::too_many_arguments)]
fn call(
    mem: &mut Mem,
    l: &[Layout; 2],
    rx: &mut Queue,
    tx: &mut Queue,
    s: &Setup,
    tap: Tap,
    irq: &Arc<TestInterrupt>,
    what: &str,
) -> (bool, Tap, Arc<NetStats>, Option<Vec<(u64, u64)>>) {
    let used = [l[0].used_range(), l[1].used_range()];
    let pre = reachable_writable(&mem.gm, &l[0], &used);
    let (ok, tap, stats) = fuzz_process(&mem.gm, rx, tx, s.acked, tap, net_config(s), irq.clone());
    let post = reachable_writable(&mem.gm, &l[0], &used);
    let allowed = allowed(l, pre, post);
    match &allowed {
        Some(a) => mem.check_writes(a, what),
        None => mem.check_writes(&[(0, u64::MAX)], what),
    }
    (ok, tap, stats, allowed)
}

fn run(data: &[u8], mem: &mut Mem) {
    let mut inp = In(data);
    let cfg = inp.u8();
    let offloads = match cfg >> 6 {
        0 => hdr::OFFLOADS,
        1 => 0,
        2 => hdr::F_CSUM | hdr::F_GUEST_CSUM,
        _ => inp.u64() & hdr::OFFLOADS,
    };
    let vnet_hdr = cfg & 4 == 0;
    let s = Setup {
        acked: VERSION_1
            | if cfg & 1 == 0 { EVENT_IDX } else { 0 }
            | if cfg & 2 == 0 { MRG_RXBUF } else { 0 }
            // The driver accepts offloads only where offered.
            | if vnet_hdr { offloads } else { 0 },
        vnet_hdr,
        udp_gso: vnet_hdr,
        locked: cfg & 8 != 0,
        dhcp: cfg & 16 != 0,
    };
    let custom_rings = cfg & 32 != 0;
    let event_idx = s.acked & EVENT_IDX != 0;

    let mut l = [0usize, 1].map(|q| Layout {
        size: 16,
        desc: RINGS[q][0],
        avail: RINGS[q][1],
        used: RINGS[q][2],
    });
    for q in &mut l {
        q.size = 1 << ((u16::from(inp.u8()) + 4) % 9);
        assert!(q.size <= MAX_QUEUE);
    }
    if custom_rings {
        for q in 0..2 {
            let (d, a, u) = (addr(&mut inp, &l), addr(&mut inp, &l), addr(&mut inp, &l));
            l[q].desc = d & !15;
            l[q].avail = a & !1;
            l[q].used = u & !3;
        }
    }
    let mut next_avail = [0u16; 2];
    let mut avail_n = [0u16; 2];
    for q in 0..2 {
        next_avail[q] = match inp.u8() {
            0..=127 => 0,
            128..=200 => 0u16.wrapping_sub(u16::from(inp.u8() % 8)),
            _ => inp.u16(),
        };
        let size = l[q].size;
        let nb = inp.u8();
        avail_n[q] = match nb {
            0..=239 => (u16::from(nb) + 3) % (size + 1),
            240..=247 => size + 1 + u16::from(nb - 240),
            _ => inp.u16(),
        };
    }
    let mut queues = Vec::new();
    for q in 0..2 {
        let state = QueueState {
            max_size: MAX_QUEUE,
            next_avail: next_avail[q],
            // The device completes every chain it takes (or breaks the
            // queue), so between passes its used index equals its avail
            // index.
            next_used: next_avail[q],
            event_idx_enabled: event_idx,
            size: l[q].size,
            ready: true,
            desc_table: l[q].desc,
            avail_ring: l[q].avail,
            used_ring: l[q].used,
        };
        let Ok(queue) = Queue::try_from(state) else {
            return;
        };
        if !queue.is_valid(&mem.gm) {
            return;
        }
        queues.push(queue);
    }
    let mut tx = queues.pop().unwrap();
    let mut rx = queues.pop().unwrap();

    // The guest's headers and frames.
    let headers: Vec<[u8; NET_HDR_LEN]> = (0..HEADER_SLOTS).map(|_| net_header(&mut inp)).collect();
    let mut udp_id = u16::from(inp.u8()) << 8;
    let small: Vec<Vec<u8>> = (0..FRAME_SLOTS)
        .map(|_| frame(&mut inp, FRAME_SLOT as usize, &mut udp_id))
        .collect();
    let big = frame(&mut inp, BIG_LEN as usize, &mut udp_id);
    let rx_buf_len: u32 = match inp.u8() % 4 {
        0 | 1 => 2048,
        2 => 1526,
        _ => 1 + u32::from(inp.u16() % 2048),
    };

    // What the tap hands over.
    let n_tap = (u16::from(inp.u8()) + 2) % 6;
    let tap_msgs: Vec<Vec<u8>> = (0..n_tap)
        .map(|_| {
            let mut m = if vnet_hdr {
                net_header(&mut inp).to_vec()
            } else {
                Vec::new()
            };
            m.extend_from_slice(&frame(&mut inp, 1 << 17, &mut udp_id));
            m
        })
        .collect();

    // The descriptor tables: the input's, then plain chains once it runs
    // out (TX: a header and a frame; RX: one buffer).
    let tables: Vec<Vec<[u8; 16]>> = (0..2)
        .map(|q| {
            let size = l[q].size;
            (0..size)
                .map(|i| {
                    if !inp.done() {
                        return descriptor(&mut inp, &l, i, size);
                    }
                    let (a, ln, fl) = if q == 0 {
                        (RX_BUFS + u64::from(i) * 0x800, rx_buf_len, F_WRITE)
                    } else if i % 2 == 0 {
                        let k = u64::from(i / 2) % HEADER_SLOTS;
                        (HEADERS + k * 64, NET_HDR_LEN as u32, F_NEXT)
                    } else if i % 8 == 7 {
                        (BIG, big.len() as u32, 0)
                    } else {
                        let k = u64::from(i / 2) % FRAME_SLOTS;
                        (FRAMES + k * FRAME_SLOT, small[k as usize].len() as u32, 0)
                    };
                    let mut d = [0u8; 16];
                    d[0..8].copy_from_slice(&a.to_le_bytes());
                    d[8..12].copy_from_slice(&ln.to_le_bytes());
                    d[12..14].copy_from_slice(&fl.to_le_bytes());
                    d[14..16].copy_from_slice(&((i + 1) % size).to_le_bytes());
                    d
                })
                .collect()
        })
        .collect();
    // The heads made available: by default the plain chains.
    let heads: Vec<Vec<u16>> = (0..2)
        .map(|q| {
            let size = l[q].size;
            let step = if q == 0 { 1 } else { 2 };
            (0..avail_n[q].min(size))
                .map(|k| {
                    let hb = inp.u8();
                    match hb % 8 {
                        0..=5 => (k * step + u16::from(hb >> 3)) % size,
                        6 => size + u16::from(hb >> 3),
                        _ => inp.u16(),
                    }
                })
                .collect()
        })
        .collect();
    let mut flags_events = [(0u16, 0u16); 2];
    for q in 0..2 {
        let f = inp.u8();
        flags_events[q] = (
            u16::from(f & 1),
            next_avail[q].wrapping_add(u16::from(f >> 1 & 3)),
        );
    }
    // Buffers first, rings over them (rings may overlap buffers).
    for (k, h) in headers.iter().enumerate() {
        mem.write(HEADERS + k as u64 * 64, h);
    }
    for (k, f) in small.iter().enumerate() {
        mem.write(FRAMES + k as u64 * FRAME_SLOT, f);
    }
    mem.write(BIG, &big);
    for &at in &INDIRECT {
        let n = u16::from(inp.u8() % 17);
        for i in 0..n {
            let d = descriptor(&mut inp, &l, i, n);
            mem.write(at + u64::from(i) * 16, &d);
        }
    }
    for q in 0..2 {
        let lq = l[q];
        for (i, d) in tables[q].iter().enumerate() {
            mem.write(lq.desc + i as u64 * 16, d);
        }
        let avail_idx = next_avail[q].wrapping_add(avail_n[q]);
        mem.write(lq.avail, &flags_events[q].0.to_le_bytes());
        mem.write(lq.avail + 2, &avail_idx.to_le_bytes());
        for (k, h) in heads[q].iter().enumerate() {
            let slot = next_avail[q].wrapping_add(k as u16) % lq.size;
            mem.write(lq.avail + 4 + u64::from(slot) * 2, &h.to_le_bytes());
        }
        mem.write(
            lq.avail + 4 + u64::from(lq.size) * 2,
            &flags_events[q].1.to_le_bytes(),
        );
        mem.write(lq.used + 2, &next_avail[q].to_le_bytes());
    }
    // Raw patches anywhere, for what the generator above cannot say.
    while !inp.done() {
        let a = addr(&mut inp, &l);
        let n = usize::from(inp.u8() % 32);
        let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
        mem.write(a, &bytes);
    }

    let (mut tap, peer) = Tap::socket_pair(vnet_hdr).expect("socket pair");
    if s.udp_gso {
        tap.assume_udp_gso();
    }
    let peer = File::from(peer);
    for m in &tap_msgs {
        // A full socket drops the rest, as a tap's queue does.
        let _ = (&peer).write(m);
    }

    let used = [l[0].used_range(), l[1].used_range()];
    let rings_overlap = {
        let r = [
            l[0].desc_range(),
            l[0].avail_range(),
            l[0].used_range(),
            l[1].desc_range(),
            l[1].avail_range(),
            l[1].used_range(),
        ];
        (0..6).any(|i| (i + 1..6).any(|j| overlaps(r[i], r[j])))
    };
    let irq = Arc::new(TestInterrupt::default());
    let before = [rx.state(), tx.state()];
    // The RX chains the device may take, as they stand, and what they
    // read the chains from: the RX table and the indirect tables.
    let rx_chains: Vec<(u64, Option<(u64, u64)>)> = (0..l[0].size)
        .map(|h| {
            let (w, ind) = walk(&mem.gm, &l[0], h);
            (w.iter().map(|p| p.1).sum(), ind)
        })
        .collect();
    let mut read_only = vec![
        l[0].desc_range(),
        l[0].avail_range(),
        l[1].desc_range(),
        l[1].avail_range(),
    ];
    read_only.extend(rx_chains.iter().filter_map(|c| c.1));

    let (ok, tap, stats, allowed1) = call(mem, &l, &mut rx, &mut tx, &s, tap, &irq, "first call");
    assert_eq!(
        !ok,
        irq.needs_reset.load(Ordering::Relaxed) > 0,
        "a call fails exactly when it asks for a reset"
    );
    check_tap_output(&peer, &s, stats.tx_frames.load(Ordering::Relaxed));

    // Whether the device's own writes (to the used rings and the RX
    // buffers) may have changed what it read (rings, tables) or what
    // the checks below read (used entries): then only the above holds.
    let moving = rings_overlap
        || allowed1.as_ref().is_none_or(|a| {
            a[2..]
                .iter()
                .any(|&p| used.iter().chain(&read_only).any(|&r| overlaps(p, r)))
        })
        || used
            .iter()
            .any(|&u| read_only.iter().any(|&r| overlaps(u, r)));
    if !moving {
        for (q, lq) in l.iter().enumerate() {
            let done = [rx.next_used(), tx.next_used()][q].wrapping_sub(before[q].next_used);
            for k in 0..done.min(lq.size) {
                let slot = before[q].next_used.wrapping_add(k) % lq.size;
                let at = lq.used + 4 + u64::from(slot) * 8;
                let id = mem.read_u32(at).unwrap();
                let ln = mem.read_u32(at + 4).unwrap();
                assert!(
                    id < u32::from(lq.size),
                    "queue {q}: used id {id} >= size {}",
                    lq.size
                );
                if q == 1 {
                    assert_eq!(ln, 0, "a TX completion with a length");
                } else {
                    let most = rx_chains[id as usize].0;
                    assert!(
                        u64::from(ln) <= most,
                        "RX used len {ln} > the chain's {most} writable bytes"
                    );
                }
            }
        }
    }

    // Another kick with nothing new: no TX chain completed twice.
    if ok {
        let again = tx.state();
        let avail = mem.read_u16(l[1].avail + 2).unwrap();
        let (ok2, _tap, stats2, _) = call(mem, &l, &mut rx, &mut tx, &s, tap, &irq, "second call");
        check_tap_output(&peer, &s, stats2.tx_frames.load(Ordering::Relaxed));
        if ok2 && !moving && avail == again.next_avail {
            assert_eq!(tx.next_used(), again.next_used, "completed nothing twice");
        }
    }
}

fuzz_target!(|data: &[u8]| with_mem(|mem| run(data, mem)));
