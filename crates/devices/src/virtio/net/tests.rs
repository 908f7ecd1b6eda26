//! The device end to end: feature negotiation and the tap's offloads on
//! real taps (in a network namespace of the test's own), and the queues
//! driven as a guest driver would, over a real tap or a socket pair
//! standing in for one.

use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::coalesce::tests::{datagram, datagram_to, partial_hdr, payload};
use super::coalesce::GSO_UDP_L4;
use super::hdr::{self, *};
use super::tap::Tap;
use super::{Net, NetConfig, NetStats, F_MRG_RXBUF, NET_HDR_LEN};
use crate::virtio::test_ring::{Irq, Ring, RING};
use crate::virtio::{features, Activation, ActiveQueue, GuestMemory, VirtioDevice};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const BASE: u64 = features::VERSION_1 | features::RING_EVENT_IDX | F_MRG_RXBUF;
/// Guest addresses: RX buffers (4 KiB apart) and TX buffers (64 KiB + a
/// page apart, room for a GSO frame).
const RX_BUFS: u64 = 0x10000;
const TX_BUFS: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x11000;

/// Runs `f` on a thread of its own in a new network namespace (taps made
/// there never touch the host's interfaces; the namespace goes when the
/// thread and its taps do). Without the privilege to make one the test is
/// skipped, except under CI=true, where that fails it.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare(2); CLONE_NEWNET moves this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "unshare(CLONE_NEWNET): {e}: root is needed under CI"
            );
            eprintln!("skipping: cannot make a network namespace: {e}");
            return;
        }
        // No IPv6 chatter (router solicitations, MLD) from new links.
        for p in ["default", "all"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1");
        }
        f()
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

fn inet_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is ours.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0, "socket: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(s)
    }
}

/// A struct ifreq naming `name`.
fn ifreq(name: &str) -> [u8; 40] {
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req
}

fn link_up(name: &str) {
    let s = inet_socket();
    let mut req = ifreq(name);
    // SAFETY: the ioctls read and write the ifreq we pass.
    unsafe {
        assert_eq!(
            libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, req.as_mut_ptr()),
            0
        );
        let flags = i16::from_ne_bytes([req[16], req[17]]) | libc::IFF_UP as i16;
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        assert_eq!(
            libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, req.as_mut_ptr()),
            0
        );
    }
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;

/// A legacy ethtool "get" of interface `name`: what the kernel's view of
/// the tap's offloads is.
fn ethtool(name: &str, cmd: u32) -> u32 {
    let s = inet_socket();
    let mut value = [cmd, 0u32];
    let mut req = ifreq(name);
    req[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: SIOCETHTOOL reads the command from and writes the value to
    // the struct ethtool_value the ifreq points to.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL, req.as_mut_ptr()) };
    assert_eq!(
        r,
        0,
        "ethtool {cmd:#x}: {}",
        std::io::Error::last_os_error()
    );
    value[1]
}

fn config() -> NetConfig {
    NetConfig {
        mac: MAC,
        mtu: 1500,
        locked: false,
        dhcp: None,
    }
}

/// A guest driver's view of one activated device.
struct Guest {
    m: GuestMemory,
    rx: Ring,
    tx: Ring,
    irq: Arc<Irq>,
    stats: Arc<NetStats>,
    /// Buffer address of each RX descriptor posted.
    rx_addr: [u64; RING as usize],
    rx_seen: u16,
    tx_sent: u16,
}

impl Guest {
    /// Activates `net` with `acked` (EVENT_IDX in the rings as `acked` says).
    fn start(net: &mut Net, acked: u64) -> Guest {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let ring = |base| Ring {
            base,
            next_desc: 0,
            avail: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let (rx, tx) = (ring(0x1000), ring(0x2000));
        let irq = Arc::new(Irq::default());
        let event_idx = acked & features::RING_EVENT_IDX != 0;
        let queue = |r: &Ring, index| {
            let mut q = r.queue();
            q.set_event_idx(event_idx);
            ActiveQueue {
                index,
                queue: q,
                kick: r.kick.try_clone().unwrap(),
            }
        };
        net.activate(Activation {
            mem: m.clone(),
            acked_features: acked,
            queues: vec![queue(&rx, 0), queue(&tx, 1)],
            interrupt: irq.clone(),
        })
        .unwrap();
        Guest {
            m,
            rx,
            tx,
            irq,
            stats: net.stats(),
            rx_addr: [0; RING as usize],
            rx_seen: 0,
            tx_sent: 0,
        }
    }

    /// Posts `n` RX buffers of `size` bytes (one descriptor each).
    fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let d = self.rx.next_desc;
            let addr = RX_BUFS + 0x1000 * u64::from(d);
            assert!(size <= 0x1000);
            self.rx_addr[usize::from(d)] = addr;
            self.rx.push(&self.m, &[(addr, size, true)]);
        }
    }

    /// Sends `hdr` + `frame` as one chain and waits for its completion.
    fn send(&mut self, hdr: &[u8; NET_HDR_LEN], frame: &[u8]) {
        self.add_tx(hdr, frame);
        self.tx.publish(&self.m);
        let (_, len) = self.tx.wait_used(&self.m, self.tx_sent - 1);
        assert_eq!(len, 0);
    }

    /// Writes `hdr` + `frame` into the next TX slot and adds them as one
    /// chain, header and frame in two descriptors as Linux sends them,
    /// not yet made available.
    fn add_tx(&mut self, hdr: &[u8; NET_HDR_LEN], frame: &[u8]) {
        let at = TX_BUFS + TX_SLOT * u64::from(self.tx_sent % RING);
        self.m.write_slice(hdr, GuestAddress(at)).unwrap();
        self.m
            .write_slice(frame, GuestAddress(at + NET_HDR_LEN as u64))
            .unwrap();
        self.tx.add(
            &self.m,
            &[
                (at, NET_HDR_LEN as u32, false),
                (at + NET_HDR_LEN as u64, frame.len() as u32, false),
            ],
        );
        self.tx_sent += 1;
    }

    /// Sends each of `frames` behind `hdr`, all made available at once
    /// with one kick (a driver that filled its ring before kicking), and
    /// waits for their completions.
    fn send_burst(&mut self, hdr: &[u8; NET_HDR_LEN], frames: &[Vec<u8>]) {
        assert!(
            frames.len() <= usize::from(RING / 2),
            "two descriptors each"
        );
        for frame in frames {
            self.add_tx(hdr, frame);
        }
        self.tx.publish(&self.m);
        self.tx.wait_used(&self.m, self.tx_sent - 1);
    }

    /// The next frame the device placed (waiting for it): its header and
    /// bytes, put together from `num_buffers` buffers.
    fn recv(&mut self) -> ([u8; NET_HDR_LEN], Vec<u8>) {
        let mut data = Vec::new();
        let mut left = 1u16;
        let mut first = true;
        while left > 0 {
            let (id, len) = self.rx.wait_used(&self.m, self.rx_seen);
            self.rx_seen += 1;
            let mut b = vec![0u8; len as usize];
            self.m
                .read_slice(&mut b, GuestAddress(self.rx_addr[id as usize]))
                .unwrap();
            if first {
                assert!(b.len() >= NET_HDR_LEN, "a first buffer of {len} bytes");
                left = u16::from_le_bytes([b[NUM_BUFFERS], b[NUM_BUFFERS + 1]]);
                assert!(left >= 1, "num_buffers 0");
                first = false;
            }
            data.extend_from_slice(&b);
            left -= 1;
        }
        let h = data[..NET_HDR_LEN].try_into().unwrap();
        (h, data.split_off(NET_HDR_LEN))
    }

    /// The next IPv4 frame placed, skipping others.
    fn recv_ipv4(&mut self) -> ([u8; NET_HDR_LEN], Vec<u8>) {
        loop {
            let (h, f) = self.recv();
            if f.len() >= 14 && f[12..14] == [8, 0] {
                return (h, f);
            }
        }
    }

    fn used_rx(&self) -> u16 {
        self.rx.used_idx(&self.m)
    }

    /// What the device put in the used ring's `avail_event` (RX, TX).
    fn rx_avail_event(&self) -> u16 {
        self.m
            .read_obj(GuestAddress(self.rx.used_ring() + 4 + 8 * u64::from(RING)))
            .unwrap()
    }

    fn tx_avail_event(&self) -> u16 {
        self.m
            .read_obj(GuestAddress(self.tx.used_ring() + 4 + 8 * u64::from(RING)))
            .unwrap()
    }

    fn rx_used_flags(&self) -> u16 {
        self.m.read_obj(GuestAddress(self.rx.used_ring())).unwrap()
    }

    fn set_rx_used_event(&self, v: u16) {
        let at = self.rx.avail_ring() + 4 + 2 * u64::from(RING);
        self.m.write_obj(v, GuestAddress(at)).unwrap();
    }

    fn set_rx_avail_flags(&self, v: u16) {
        self.m
            .write_obj(v, GuestAddress(self.rx.avail_ring()))
            .unwrap();
    }

    fn rx_irqs(&self) -> u64 {
        self.irq.used[0].load(Ordering::SeqCst)
    }
}

/// Whether a driver with EVENT_IDX that moves the avail index from `old`
/// to `new` kicks, given `avail_event` (Linux's `vring_need_event`).
fn kicks(avail_event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A header with `flags`, a GSO type and MSS, and a checksum to finish
/// at TCP's place in a TCP/IPv4 frame.
fn vhdr(flags: u8, gso_type: u8, gso_size: u16) -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
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

/// A TCP/IPv4 frame from `src` with `payload` bytes; its TCP checksum
/// field holds the pseudo-header's sum (a partial checksum, as a stack
/// hands it to a device with checksum offload).
fn tcp_frame(src: [u8; 6], payload: usize) -> Vec<u8> {
    let tcp_len = 20 + payload;
    let mut f = Vec::with_capacity(34 + tcp_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let c = !(ones_sum(0, &ip) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&2000u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = ones_sum(0, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 6]) + tcp_len as u32;
    tcp[16..18].copy_from_slice(&(ones_sum(pseudo, &[]) as u16).to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i * 7) as u8));
    f
}

/// Whether the TCP checksum of a TCP/IPv4 frame is right.
fn tcp_checksum_ok(f: &[u8]) -> bool {
    let ip = &f[14..34];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = &f[34..14 + total];
    let mut pseudo = ones_sum(0, &ip[12..20]);
    pseudo = ones_sum(pseudo + 6 + tcp.len() as u32, &[]);
    ones_sum(pseudo, tcp) == 0xffff
}

#[test]
fn offloads_are_offered_only_on_a_tap_with_a_vnet_header() {
    in_netns(|| {
        let base = features::RING_EVENT_IDX | features::RING_INDIRECT_DESC | F_MRG_RXBUF;
        let with = Net::new(Tap::open("vnet0").unwrap(), config(), "with".into());
        assert_eq!(with.features() & hdr::OFFLOADS, hdr::OFFLOADS);
        assert_eq!(with.features() & base, base);
        let without = Net::new(
            Tap::open_with("plain0", false).unwrap(),
            config(),
            "without".into(),
        );
        assert_eq!(without.features() & hdr::OFFLOADS, 0);
        assert_eq!(without.features() & base, base);
        // Neither UFO nor USO nor a control queue.
        for f in [10, 14, 17, 54, 55, 56] {
            assert_eq!(with.features() & 1 << f, 0, "feature bit {f}");
        }
    });
}

/// A tap opened by hand (as vmd's hostnet does), with or without
/// IFF_VNET_HDR, left attached to the descriptor returned.
fn raw_tap(name: &str, vnet_hdr: bool) -> OwnedFd {
    // SAFETY: open(2), then TUNSETIFF with an ifreq we own.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req = ifreq(name);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        req[16..18].copy_from_slice(&(flags as i16).to_ne_bytes());
        assert_eq!(
            libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()),
            0
        );
        fd
    }
}

#[test]
fn a_passed_down_tap_is_asked_whether_it_has_a_vnet_header() {
    in_netns(|| {
        let t = Tap::from_fd(raw_tap("hn0", true), "hn0".into()).unwrap();
        assert!(t.vnet_hdr());
        let mut size: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes an int.
        assert_eq!(
            unsafe { libc::ioctl(t.fd(), libc::TUNGETVNETHDRSZ, &mut size) },
            0
        );
        assert_eq!(size, NET_HDR_LEN as libc::c_int, "set to virtio 1.x's");
        let t = Tap::from_fd(raw_tap("hn1", false), "hn1".into()).unwrap();
        assert!(!t.vnet_hdr());
        // Not a tap at all.
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(Tap::from_fd(null.into(), "null".into()).is_err());
    });
}

#[test]
fn the_taps_offloads_follow_what_the_driver_accepted() {
    in_netns(|| {
        let mut net = Net::new(Tap::open("off0").unwrap(), config(), "off".into());
        let stats = net.stats();
        assert_eq!(ethtool("off0", ETHTOOL_GTXCSUM), 0, "none before a driver");
        assert_eq!(ethtool("off0", ETHTOOL_GTSO), 0);

        // Checksums and TSO4 both ways.
        let acked = BASE | F_CSUM | F_HOST_TSO4 | F_GUEST_CSUM | F_GUEST_TSO4;
        let _g = Guest::start(&mut net, acked);
        assert_eq!(
            stats.offloads.load(Ordering::Relaxed),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        assert_eq!(ethtool("off0", ETHTOOL_GTXCSUM), 1);
        assert_eq!(ethtool("off0", ETHTOOL_GTSO), 1);

        // A reset takes them back.
        net.reset();
        assert_eq!(stats.offloads.load(Ordering::Relaxed), 0);
        assert_eq!(ethtool("off0", ETHTOOL_GTXCSUM), 0);
        assert_eq!(ethtool("off0", ETHTOOL_GTSO), 0);

        // Checksums only (what a driver sending TSO but taking none
        // accepts): no segmentation offload on the guest's receive side.
        let acked = BASE | F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_GUEST_CSUM;
        let _g = Guest::start(&mut net, acked);
        assert_eq!(stats.offloads.load(Ordering::Relaxed), libc::TUN_F_CSUM);
        assert_eq!(ethtool("off0", ETHTOOL_GTXCSUM), 1);
        assert_eq!(ethtool("off0", ETHTOOL_GTSO), 0);
        net.reset();

        // All of them.
        let _g = Guest::start(&mut net, BASE | hdr::OFFLOADS);
        assert_eq!(
            stats.offloads.load(Ordering::Relaxed),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        net.reset();
    });
}

#[test]
fn a_tso_frame_passes_the_mtu_check_and_the_kernel_takes_it() {
    in_netns(|| {
        let mut net = Net::new(Tap::open("tso0").unwrap(), config(), "tso".into());
        link_up("tso0");
        let mut g = Guest::start(&mut net, BASE | hdr::OFFLOADS);
        // 9000 bytes of TCP payload, to be cut at 1448.
        let frame = tcp_frame(MAC, 9000);
        g.send(&vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448), &frame);
        assert_eq!(g.stats.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(g.stats.tx_gso.load(Ordering::Relaxed), 1);
        assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 0);
        // The same frame without GSO is over the MTU; with segments
        // over it too.
        g.send(&[0; NET_HDR_LEN], &frame);
        assert_eq!(g.stats.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 1);
        g.send(&vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1461), &frame);
        assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 2);
        // An MTU-sized one with a partial checksum goes.
        g.send(&vhdr(FLAG_NEEDS_CSUM, 0, 0), &tcp_frame(MAC, 1460));
        assert_eq!(g.stats.tx_frames.load(Ordering::Relaxed), 2);
        // Over 64 KiB, even with GSO: dropped before the kernel sees it.
        g.send(
            &vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448),
            &tcp_frame(MAC, 65536),
        );
        assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 3);
        net.reset();
    });
}

/// Sends `frame` behind a 10-byte `virtio_net_hdr` out of interface
/// `name` from a packet socket (PACKET_VNET_HDR): a GSO frame the host
/// stack hands to the tap.
fn inject(name: &str, h: &[u8; NET_HDR_LEN], frame: &[u8]) {
    // SAFETY: socket(2), setsockopt(2), sendto(2) with buffers we own.
    unsafe {
        let s = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let s = OwnedFd::from_raw_fd(s);
        let one: libc::c_int = 1;
        assert_eq!(
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                4
            ),
            0
        );
        let cname = std::ffi::CString::new(name).unwrap();
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = libc::if_nametoindex(cname.as_ptr()) as i32;
        let mut msg = h[..10].to_vec();
        msg.extend_from_slice(frame);
        let n = libc::sendto(
            s.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            n,
            msg.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn the_kernel_hands_the_guest_a_tso_frame_only_if_it_accepted_them() {
    in_netns(|| {
        let mut net = Net::new(Tap::open("gso0").unwrap(), config(), "gso".into());
        link_up("gso0");
        let frame = tcp_frame([0x02, 0, 0, 0, 0, 7], 3000);
        let h = vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448);

        // A driver without offloads gets the frame cut into MSS-sized
        // segments with their checksums finished.
        let mut g = Guest::start(&mut net, BASE);
        g.post_rx(8, 2048);
        inject("gso0", &h, &frame);
        let mut got = 0;
        while got < 3000 {
            let (rh, f) = g.recv_ipv4();
            assert_eq!(rh[..NUM_BUFFERS], [0; NUM_BUFFERS], "a plain header");
            assert!(f.len() <= 1514, "a segment of {} bytes", f.len());
            assert!(tcp_checksum_ok(&f), "checksum finished");
            got += f.len() - 54;
        }
        assert_eq!(got, 3000);
        assert_eq!(g.stats.rx_gso.load(Ordering::Relaxed), 0);
        net.reset();

        // One that accepted TSO4 gets it whole, spread over two merged
        // buffers, with the header saying what to do.
        let mut g = Guest::start(&mut net, BASE | F_GUEST_CSUM | F_GUEST_TSO4);
        g.post_rx(8, 2048);
        inject("gso0", &h, &frame);
        let (rh, f) = g.recv_ipv4();
        let got = Hdr::parse(&rh);
        assert_eq!(got.gso_type, GSO_TCPV4);
        assert_eq!(got.gso_size, 1448);
        assert_eq!(got.flags & FLAG_NEEDS_CSUM, FLAG_NEEDS_CSUM);
        assert_eq!((got.csum_start, got.csum_offset), (34, 16));
        assert_eq!(u16::from_le_bytes([rh[10], rh[11]]), 2, "num_buffers");
        assert_eq!(f, frame);
        assert_eq!(g.stats.rx_gso.load(Ordering::Relaxed), 1);
        net.reset();
    });
}

#[test]
fn the_locked_filter_looks_behind_the_header() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut cfg = config();
    cfg.locked = true;
    let mut net = Net::new(tap, cfg, "locked".into());
    let mut g = Guest::start(&mut net, BASE | hdr::OFFLOADS);
    // A partial checksum and TSO: the header goes to the tap unchanged.
    let h = vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448);
    let ours = tcp_frame(MAC, 5000);
    g.send(&h, &ours);
    let mut theirs = ours.clone();
    theirs[11] ^= 1;
    g.send(&h, &theirs);
    g.send(&vhdr(0, 0, 0), &theirs[..1000]);
    assert_eq!(g.stats.tx_spoofed.load(Ordering::Relaxed), 2);
    assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 2);
    assert_eq!(g.stats.tx_frames.load(Ordering::Relaxed), 1);
    let mut want = h.to_vec();
    want.extend_from_slice(&ours);
    assert_eq!(read_peer(&peer), Some(want));
    assert_eq!(read_peer(&peer), None);
    net.reset();
}

/// The next message the device wrote to the tap's other end, if any.
fn read_peer(peer: &OwnedFd) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 70000];
    // SAFETY: reads at most b.len() bytes into b.
    let n = unsafe { libc::read(peer.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
    (n >= 0).then(|| {
        b.truncate(n as usize);
        b
    })
}

/// The next message the device writes to the tap's other end, waiting
/// for it.
fn wait_peer(peer: &OwnedFd) -> Vec<u8> {
    let t = Instant::now();
    loop {
        if let Some(m) = read_peer(peer) {
            return m;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "nothing written");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn write_peer(peer: &OwnedFd, msg: &[u8]) {
    // SAFETY: writes msg.
    let n = unsafe { libc::write(peer.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    assert_eq!(n, msg.len() as isize);
}

#[test]
fn headers_asking_for_what_was_not_negotiated_are_dropped() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut net = Net::new(tap, config(), "strict".into());
    // Checksum offload, no TSO.
    let mut g = Guest::start(&mut net, BASE | F_CSUM | F_GUEST_CSUM);
    let f = tcp_frame(MAC, 3000);
    g.send(&vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448), &f);
    g.send(&vhdr(FLAG_NEEDS_CSUM, GSO_TCPV6, 1448), &f);
    g.send(&vhdr(FLAG_DATA_VALID, 0, 0), &f[..1000]);
    g.send(&vhdr(FLAG_NEEDS_CSUM, 0, 0), &f[..1000]);
    assert_eq!(g.stats.tx_bad_hdr.load(Ordering::Relaxed), 3);
    assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 3);
    assert_eq!(read_peer(&peer).map(|m| m.len()), Some(1012));
    assert_eq!(read_peer(&peer), None);
    net.reset();

    // No offloads at all: not even a partial checksum.
    let mut g = Guest::start(&mut net, BASE);
    g.send(&vhdr(FLAG_NEEDS_CSUM, 0, 0), &f[..1000]);
    assert_eq!(g.stats.tx_bad_hdr.load(Ordering::Relaxed), 4);
    assert_eq!(read_peer(&peer), None);
    net.reset();
}

#[test]
fn a_tap_without_a_vnet_header_gets_bare_frames_and_gives_plain_headers() {
    let (tap, peer) = Tap::socket_pair(false).unwrap();
    let mut net = Net::new(tap, config(), "plain".into());
    assert_eq!(net.features() & hdr::OFFLOADS, 0);
    let mut g = Guest::start(&mut net, BASE);
    let f = tcp_frame(MAC, 100);
    g.send(&[0; NET_HDR_LEN], &f);
    assert_eq!(read_peer(&peer), Some(f.clone()));
    g.post_rx(2, 2048);
    write_peer(&peer, &f);
    let (h, got) = g.recv();
    assert_eq!(h, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got, f);
    wait_for("an RX interrupt", || {
        g.irq.used[0].load(Ordering::SeqCst) == 1
    });
    net.reset();
}

#[test]
fn a_gso_frame_the_guest_did_not_accept_is_dropped_on_receive() {
    // (The kernel makes none once the offloads are set; this is the
    // frame queued before a reset narrowed them.)
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut net = Net::new(tap, config(), "rxgso".into());
    let mut msg = vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448).to_vec();
    msg.extend_from_slice(&tcp_frame([2, 0, 0, 0, 0, 9], 3000));
    let mut g = Guest::start(&mut net, BASE | F_GUEST_CSUM);
    g.post_rx(4, 2048);
    write_peer(&peer, &msg);
    // A small frame with a partial checksum after it: delivered as is.
    let mut small = vhdr(FLAG_NEEDS_CSUM, 0, 0).to_vec();
    small.extend_from_slice(&tcp_frame([2, 0, 0, 0, 0, 9], 100));
    write_peer(&peer, &small);
    let (h, f) = g.recv();
    assert_eq!(h[0], FLAG_NEEDS_CSUM);
    assert_eq!(f, small[NET_HDR_LEN..]);
    assert_eq!(g.stats.rx_dropped.load(Ordering::Relaxed), 1);
    net.reset();

    // Without GUEST_CSUM the device finishes the checksum itself.
    let mut g = Guest::start(&mut net, BASE);
    g.post_rx(4, 2048);
    write_peer(&peer, &small);
    let (h, f) = g.recv();
    assert_eq!(h[0], 0);
    assert!(tcp_checksum_ok(&f));
    assert_eq!(f[..50], small[NET_HDR_LEN..NET_HDR_LEN + 50]);
    net.reset();
}

#[test]
fn rx_buffers_are_refilled_without_a_kick_per_frame_with_event_idx() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut net = Net::new(tap, config(), "eventidx".into());
    let mut g = Guest::start(&mut net, BASE);
    let f = tcp_frame([2, 0, 0, 0, 0, 9], 100);
    let mut msg = vec![0u8; NET_HDR_LEN];
    msg.extend_from_slice(&f);
    // TX: all taken, the next chain posted is to be kicked.
    for n in 1..=2 {
        g.send(&[0; NET_HDR_LEN], &tcp_frame(MAC, 10));
        wait_for("TX avail_event", || kicks(g.tx_avail_event(), n + 1, n));
    }
    g.post_rx(4, 2048);
    for _ in 0..2 {
        write_peer(&peer, &msg);
        g.recv();
    }
    // Buffers remain: the driver posting more need not kick.
    let ev = g.rx_avail_event();
    assert!(!kicks(ev, 5, 4), "avail_event {ev}");
    // One interrupt (used_event 0) for both.
    wait_for("one interrupt", || g.rx_irqs() == 1);

    // Three more frames for two buffers: the device runs dry and asks
    // for a kick at the next buffer.
    for _ in 0..3 {
        write_peer(&peer, &msg);
    }
    g.recv();
    g.recv();
    wait_for("avail_event", || kicks(g.rx_avail_event(), 5, 4));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.used_rx(), 4, "the fifth frame waits");
    assert_eq!(g.rx_irqs(), 1, "no interrupt before used_event");
    // Ask for an interrupt at the next frame; post (and kick).
    g.set_rx_used_event(4);
    g.post_rx(1, 2048);
    g.recv();
    wait_for("a second interrupt", || g.rx_irqs() == 2);

    // A frame bigger than the one buffer left: it waits for more, and the
    // device asks for a kick at the next buffer, not at the one it saw.
    g.post_rx(1, 2048);
    std::thread::sleep(Duration::from_millis(20));
    let mut big = vec![0u8; NET_HDR_LEN];
    big.extend_from_slice(&tcp_frame([2, 0, 0, 0, 0, 9], 3000));
    write_peer(&peer, &big);
    wait_for("avail_event", || kicks(g.rx_avail_event(), 7, 6));
    assert_eq!(g.used_rx(), 5);
    g.post_rx(1, 2048);
    let (_, got) = g.recv();
    assert_eq!(got, big[NET_HDR_LEN..]);
    assert_eq!(g.stats.rx_frames.load(Ordering::Relaxed), 6);
    assert_eq!(g.stats.rx_dropped.load(Ordering::Relaxed), 0);
    net.reset();
}

#[test]
fn without_event_idx_the_flags_do_the_same() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut net = Net::new(tap, config(), "flags".into());
    let mut g = Guest::start(&mut net, BASE & !features::RING_EVENT_IDX);
    let mut msg = vec![0u8; NET_HDR_LEN];
    msg.extend_from_slice(&tcp_frame([2, 0, 0, 0, 0, 9], 100));
    g.post_rx(2, 2048);
    write_peer(&peer, &msg);
    g.recv();
    // Buffers remain: NO_NOTIFY.
    wait_for("NO_NOTIFY", || g.rx_used_flags() == 1);
    wait_for("one interrupt", || g.rx_irqs() == 1);
    // The driver does not want interrupts now.
    g.set_rx_avail_flags(1);
    write_peer(&peer, &msg);
    g.recv();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.rx_irqs(), 1);
    // Dry: notifications back on.
    g.set_rx_avail_flags(0);
    write_peer(&peer, &msg);
    wait_for("kick wanted", || g.rx_used_flags() == 0);
    g.post_rx(1, 2048);
    g.recv();
    wait_for("a second interrupt", || g.rx_irqs() == 2);
    net.reset();
}

/// A DHCPDISCOVER from `mac`, behind Ethernet, IPv4 and UDP headers.
fn discover(mac: [u8; 6]) -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0..4].copy_from_slice(&[1, 1, 6, 0]);
    bootp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    bootp[10] = 0x80; // broadcast
    bootp[28..34].copy_from_slice(&mac);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 1, 255]);
    let udp_len = 8 + bootp.len();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[16..20].copy_from_slice(&[255; 4]);
    let c = !(ones_sum(0, &ip) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0, 68, 0, 67]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&bootp);
    f
}

#[test]
fn dhcp_is_answered_with_headers_on_both_sides() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut cfg = config();
    cfg.locked = true;
    cfg.dhcp = Some(netcfg::dhcp::DhcpServer::new(
        MAC,
        [2, 0, 0, 0, 0, 1],
        std::net::Ipv4Addr::new(100, 64, 1, 2),
        std::net::Ipv4Addr::new(100, 64, 1, 3),
        31,
        "web1",
    ));
    let mut net = Net::new(tap, cfg, "dhcp".into());
    let mut g = Guest::start(&mut net, BASE | hdr::OFFLOADS);
    g.post_rx(2, 2048);
    // A partial UDP checksum, as a Linux guest with CSUM may send.
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = FLAG_NEEDS_CSUM;
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&6u16.to_le_bytes());
    g.send(&h, &discover(MAC));
    let (rh, offer) = g.recv();
    assert_eq!(rh, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(offer[6..12], [2, 0, 0, 0, 0, 1], "from the server");
    assert_eq!(offer[23], 17, "UDP");
    assert_eq!(g.stats.dhcp_replies.load(Ordering::Relaxed), 1);
    assert_eq!(read_peer(&peer), None, "nothing reached the tap");
    // Spoofed DHCP is dropped before the server sees it.
    g.send(&h, &discover([2, 0, 0, 0, 0, 0x43]));
    assert_eq!(g.stats.tx_spoofed.load(Ordering::Relaxed), 1);
    assert_eq!(g.stats.dhcp_replies.load(Ordering::Relaxed), 1);
    net.reset();
}

#[test]
fn a_burst_of_one_flows_datagrams_goes_to_the_tap_as_one_udp_gso_frame() {
    let (mut tap, peer) = Tap::socket_pair(true).unwrap();
    tap.assume_udp_gso();
    let mut net = Net::new(tap, config(), "merge".into());
    let mut g = Guest::start(&mut net, BASE);
    let flow: Vec<Vec<u8>> = (0..5)
        .map(|i| datagram(100 + i as u16, 40000, &payload(i, 1000), false))
        .collect();
    // Another port: a run of its own.
    let other = datagram(105, 40001, &payload(9, 1000), false);
    let mut burst = flow.clone();
    burst.push(other.clone());
    g.send_burst(&[0; NET_HDR_LEN], &burst);

    // Merged datagrams are written once the pass has taken them all,
    // just after their used entries.
    let m = wait_peer(&peer);
    let (h, f) = m.split_at(NET_HDR_LEN);
    let h = Hdr::parse(h.try_into().unwrap());
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size),
        (FLAG_NEEDS_CSUM, GSO_UDP_L4, 1000)
    );
    // The first one's headers, but for the lengths and checksums.
    for r in [0..16, 18..24, 26..38] {
        assert_eq!(f[r.clone()], flow[0][r]);
    }
    let payloads: Vec<u8> = flow.iter().flat_map(|d| d[42..].to_vec()).collect();
    assert_eq!(f[42..], payloads[..]);
    // Then the other, as it came, and nothing else.
    assert_eq!(wait_peer(&peer), [&[0; NET_HDR_LEN][..], &other].concat());
    assert_eq!(read_peer(&peer), None);
    let bytes: usize = burst.iter().map(Vec::len).sum();
    assert_eq!(g.stats.tx_frames.load(Ordering::Relaxed), 6);
    assert_eq!(g.stats.tx_bytes.load(Ordering::Relaxed), bytes as u64);
    assert_eq!(g.stats.tx_merged.load(Ordering::Relaxed), 5);

    // One at a time, nothing waits to be merged.
    let next = datagram(106, 40001, &payload(10, 1000), false);
    g.send(&[0; NET_HDR_LEN], &next);
    assert_eq!(wait_peer(&peer), [&[0; NET_HDR_LEN][..], &next].concat());
    assert_eq!(g.stats.tx_merged.load(Ordering::Relaxed), 5);
    net.reset();

    // A TSO frame queued after datagrams goes after them.
    let mut g = Guest::start(&mut net, BASE | hdr::OFFLOADS);
    for d in &flow[..2] {
        g.add_tx(&[0; NET_HDR_LEN], d);
    }
    let tso = vhdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448);
    let tcp = tcp_frame(MAC, 3000);
    g.add_tx(&tso, &tcp);
    g.tx.publish(&g.m);
    g.tx.wait_used(&g.m, g.tx_sent - 1);
    let merged = wait_peer(&peer);
    assert_eq!(merged[1], GSO_UDP_L4, "the datagrams first");
    assert_eq!(wait_peer(&peer), [&tso[..], &tcp].concat());
    net.reset();
}

#[test]
fn without_udp_gso_on_the_tap_datagrams_go_one_by_one() {
    let (tap, peer) = Tap::socket_pair(true).unwrap();
    let mut net = Net::new(tap, config(), "one".into());
    let mut g = Guest::start(&mut net, BASE);
    let flow: Vec<Vec<u8>> = (0..4)
        .map(|i| datagram(i as u16, 40000, &payload(i, 500), false))
        .collect();
    g.send_burst(&[0; NET_HDR_LEN], &flow);
    for d in &flow {
        assert_eq!(read_peer(&peer), Some([&[0; NET_HDR_LEN][..], d].concat()));
    }
    assert_eq!(g.stats.tx_merged.load(Ordering::Relaxed), 0);
    net.reset();
}

/// Linux's release as (major, minor).
fn kernel_release() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Makes bridge `name` with `ports` and brings all of them up (the old
/// bridge ioctls: this module's tests use no netlink).
fn bridge(name: &str, ports: &[&str]) {
    const SIOCBRADDBR: libc::c_ulong = 0x89a0;
    const SIOCBRADDIF: libc::c_ulong = 0x89a2;
    let s = inet_socket();
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: SIOCBRADDBR reads the name; SIOCBRADDIF the ifreq we pass.
    unsafe {
        assert_eq!(libc::ioctl(s.as_raw_fd(), SIOCBRADDBR, cname.as_ptr()), 0);
        for p in ports {
            let cp = std::ffi::CString::new(*p).unwrap();
            let index = libc::if_nametoindex(cp.as_ptr()) as i32;
            let mut req = ifreq(name);
            req[16..20].copy_from_slice(&index.to_ne_bytes());
            assert_eq!(
                libc::ioctl(s.as_raw_fd(), SIOCBRADDIF, req.as_mut_ptr()),
                0,
                "add {p} to {name}: {}",
                std::io::Error::last_os_error()
            );
            link_up(p);
        }
    }
    link_up(name);
}

/// Gives `name` the address `ip`/31.
fn set_addr(name: &str, ip: [u8; 4]) {
    let s = inet_socket();
    for (req_no, a) in [
        (libc::SIOCSIFADDR, ip),
        (libc::SIOCSIFNETMASK, [255, 255, 255, 254]),
    ] {
        let mut req = ifreq(name);
        req[16..18].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        req[20..24].copy_from_slice(&a);
        // SAFETY: the ioctl reads the ifreq we pass.
        assert_eq!(
            unsafe { libc::ioctl(s.as_raw_fd(), req_no, req.as_mut_ptr()) },
            0
        );
    }
}

fn hw_addr(name: &str) -> [u8; 6] {
    let s = inet_socket();
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass.
    assert_eq!(
        unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, req.as_mut_ptr()) },
        0
    );
    req[18..24].try_into().unwrap()
}

/// The UDP/IPv4 frames read from tap `fd` (no vnet header) until `n`
/// came or a second passed.
fn read_udp_frames(fd: &OwnedFd, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let t = Instant::now();
    while got.len() < n && t.elapsed() < Duration::from_millis(500) {
        match read_peer(fd) {
            Some(f) if f.len() > 34 && f[12..14] == [8, 0] && f[23] == 17 => got.push(f),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    got
}

#[test]
fn merged_datagrams_leave_the_kernel_as_the_guest_sent_them() {
    in_netns(|| {
        let tap = Tap::open("merge0").unwrap();
        if kernel_release() < (6, 2) {
            // Taps take no UDP GSO frames before 6.2: none are made.
            assert!(!tap.udp_gso());
            return;
        }
        assert!(tap.udp_gso(), "a tap on Linux 6.2 or later takes UDP GSO");
        let mut net = Net::new(tap, config(), "merge".into());
        // A second tap on the same bridge, which takes no offloads: what
        // the bridge sends it the kernel segments and checksums itself.
        let wire = raw_tap("wire0", false);
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(wire.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        bridge("br0", &["merge0", "wire0"]);
        set_addr("br0", [100, 64, 1, 2]);
        let sock = std::net::UdpSocket::bind("100.64.1.2:5000").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let br_mac = hw_addr("br0");

        for partial in [false, true] {
            let (acked, h) = if partial {
                (BASE | F_CSUM, partial_hdr())
            } else {
                (BASE, [0; NET_HDR_LEN])
            };
            let mut g = Guest::start(&mut net, acked);
            let size = |i: usize| if i == 7 { 333 } else { 1400 };
            // Through the bridge to a station it does not know: out of
            // wire0, segmented. IP identifications wrap in the run.
            let fwd: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    let id = 0xfffc_u16.wrapping_add(i as u16);
                    datagram_to(
                        [2, 0, 0, 0, 0, 0x99],
                        id,
                        40000,
                        &payload(i, size(i)),
                        partial,
                    )
                })
                .collect();
            g.send_burst(&h, &fwd);
            let merged0 = if partial { 16 } else { 0 };
            assert_eq!(g.stats.tx_merged.load(Ordering::Relaxed), merged0 + 8);
            let mut want = fwd.clone();
            if partial {
                for w in &mut want {
                    assert!(complete_checksum(w, 34, 40));
                }
            }
            assert_eq!(read_udp_frames(&wire, 9), want, "partial: {partial}");

            // To the host: the bridge's own address, for the socket.
            let local: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    datagram_to(
                        br_mac,
                        7 + i as u16,
                        40001,
                        &payload(i + 8, size(i)),
                        partial,
                    )
                })
                .collect();
            g.send_burst(&h, &local);
            assert_eq!(g.stats.tx_merged.load(Ordering::Relaxed), merged0 + 16);
            let mut b = [0u8; 2048];
            for (i, d) in local.iter().enumerate() {
                let (n, from) = sock.recv_from(&mut b).expect("a datagram");
                assert_eq!(from, "100.64.1.3:40001".parse().unwrap());
                assert_eq!(b[..n], d[42..], "datagram {i}");
            }
            assert_eq!(g.stats.tx_dropped.load(Ordering::Relaxed), 0);
            net.reset();
        }
    });
}

#[test]
fn an_answer_queued_while_the_device_polls_goes_without_a_kick() {
    for acked in [BASE, BASE & !features::RING_EVENT_IDX] {
        let event_idx = acked & features::RING_EVENT_IDX != 0;
        let (tap, peer) = Tap::socket_pair(true).unwrap();
        let mut net = Net::new(tap, config(), "poll".into());
        // A window this test's guest answers within for sure.
        net.poll_fixed(Duration::from_secs(5));
        let mut g = Guest::start(&mut net, acked);
        g.post_rx(2, 2048);
        // A first exchange, kicked as usual, once the device's thread
        // is in its loop (it may not be yet: a frame there before it
        // would be taken by its first pass, which does not poll).
        let question = datagram_to(MAC, 1, 5000, &payload(0, 64), false);
        write_peer(&peer, &[&[0; NET_HDR_LEN][..], &question].concat());
        assert_eq!(g.recv().1, question);
        let answer = datagram(1, 40000, &payload(1, 64), false);
        g.send(&[0; NET_HDR_LEN], &answer);
        assert!(wait_peer(&peer).ends_with(&answer));
        g.post_rx(1, 2048);

        write_peer(&peer, &[&[0; NET_HDR_LEN][..], &question].concat());
        assert_eq!(g.recv().1, question);
        // The device polls, having asked for no kick.
        wait_for("kicks suppressed", || {
            if event_idx {
                g.tx_avail_event() == g.tx_sent.wrapping_sub(1)
            } else {
                // VIRTQ_USED_F_NO_NOTIFY
                g.m.read_obj::<u16>(GuestAddress(g.tx.used_ring())).unwrap() == 1
            }
        });
        // The answer, made available without a kick, is sent.
        let answer = datagram(2, 40000, &payload(2, 64), false);
        g.add_tx(&[0; NET_HDR_LEN], &answer);
        g.tx.publish_quietly(&g.m);
        g.tx.wait_used(&g.m, 1);
        assert_eq!(wait_peer(&peer), [&[0; NET_HDR_LEN][..], &answer].concat());
        // And kicks are asked for again.
        wait_for("kicks asked for again", || {
            if event_idx {
                g.tx_avail_event() == 2
            } else {
                g.m.read_obj::<u16>(GuestAddress(g.tx.used_ring())).unwrap() == 0
            }
        });
        net.reset();
    }
}
