use super::*;
use crate::local::{local_addrs, DEFAULT_PREFIX4};
use dhcproto::v4::OptionCode;
use dhcproto::{Decodable, Decoder};

const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0x00, 0x01];
const HOST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd1, 0x00, 0x01];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x11, 0x22, 0x33];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 3);
const XID: u32 = 0x1234_5678;

fn server() -> DhcpServer {
    let a = local_addrs(DEFAULT_PREFIX4, None, 1, 0).unwrap();
    assert_eq!((a.host4, a.guest4), (HOST_IP, GUEST_IP));
    DhcpServer::for_local(&a, GUEST_MAC, HOST_MAC, "my_vm.example")
}

/// RFC 1071 checksum written independently of the server's: sum the
/// 16-bit words in 64 bits and fold once at the end.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut s: u64 = bytes
        .chunks(2)
        .map(|w| u64::from(w[0]) << 8 | u64::from(w[1]))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::new_with_id(
        XID,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    // What busybox udhcpc adds.
    let mut cid = vec![1];
    cid.extend_from_slice(&mac);
    m.opts_mut().insert(DhcpOption::ClientIdentifier(cid));
    m.opts_mut().insert(DhcpOption::MaxMessageSize(576));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::Hostname,
    ]));
    m
}

struct Addr {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
}

const BCAST: Addr = Addr {
    src_mac: GUEST_MAC,
    dst_mac: [0xff; 6],
    src_ip: Ipv4Addr::UNSPECIFIED,
    dst_ip: Ipv4Addr::BROADCAST,
};

fn frame_of(m: &Message, a: &Addr) -> Vec<u8> {
    let mut payload = Vec::new();
    m.encode(&mut Encoder::new(&mut payload)).unwrap();
    let udp_len = 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&a.dst_mac);
    f.extend_from_slice(&a.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&a.src_ip.octets());
    ip.extend_from_slice(&a.dst_ip.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no checksum, as allowed for UDP over IPv4
    f.extend_from_slice(&payload);
    f
}

struct Reply {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    bootp_len: usize,
    msg: Message,
}

/// Parses a reply frame, checking every header field and both checksums.
fn parse(f: &[u8]) -> Reply {
    assert!(f.len() <= MAX_FRAME_LEN);
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..];
    assert_eq!(ip[0], 0x45);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(total, ip.len());
    assert_eq!(ip[6] & 0x3f, 0, "not a fragment");
    assert_eq!(ip[7], 0);
    assert!(ip[8] > 0, "TTL");
    assert_eq!(ip[9], 17);
    assert_eq!(csum(&[&ip[..20]]), 0, "IP header checksum");
    let udp = &ip[20..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 67);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 68);
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    assert_ne!(&udp[6..8], &[0, 0], "UDP checksum present");
    let len = (udp.len() as u16).to_be_bytes();
    assert_eq!(
        csum(&[&ip[12..20], &[0, 17], &len, udp]),
        0,
        "UDP checksum over the pseudo-header"
    );
    let bootp = &udp[8..];
    assert!(bootp.len() >= 300, "BOOTP minimum size");
    Reply {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst_ip: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        bootp_len: bootp.len(),
        msg: Message::decode(&mut Decoder::new(bootp)).unwrap(),
    }
}

fn opt(m: &Message, c: OptionCode) -> Option<DhcpOption> {
    m.opts().get(c).cloned()
}

/// The options every OFFER/ACK carries.
fn check_config(m: &Message) {
    assert_eq!(
        opt(m, OptionCode::ServerIdentifier),
        Some(DhcpOption::ServerIdentifier(HOST_IP))
    );
    assert_eq!(
        opt(m, OptionCode::SubnetMask),
        Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 254)))
    );
    assert_eq!(
        opt(m, OptionCode::Router),
        Some(DhcpOption::Router(vec![HOST_IP]))
    );
    assert_eq!(
        opt(m, OptionCode::DomainNameServer),
        Some(DhcpOption::DomainNameServer(vec![HOST_IP]))
    );
    assert_eq!(
        opt(m, OptionCode::Hostname),
        Some(DhcpOption::Hostname("my-vm.example".into()))
    );
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.htype(), HType::Eth);
    assert_eq!(m.hlen(), 6);
    assert_eq!(m.hops(), 0);
    assert_eq!(m.xid(), XID);
    assert_eq!(m.chaddr(), &GUEST_MAC);
    assert_eq!(m.giaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn discover_gets_unicast_offer_without_broadcast_flag() {
    let mut s = server();
    let r = parse(
        &s.handle(&frame_of(&msg(MessageType::Discover, GUEST_MAC), &BCAST))
            .unwrap(),
    );
    // RFC 2131 4.1: no ciaddr, BROADCAST clear: unicast to chaddr / yiaddr.
    assert_eq!(r.dst_mac, GUEST_MAC);
    assert_eq!(r.src_mac, HOST_MAC);
    assert_eq!(r.src_ip, HOST_IP);
    assert_eq!(r.dst_ip, GUEST_IP);
    assert_eq!(r.bootp_len, 300);
    let m = &r.msg;
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), GUEST_IP);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(!m.flags().broadcast());
    assert_eq!(
        opt(m, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(0xffff_ffff))
    );
    check_config(m);
    assert_eq!(
        s.stats,
        DhcpStats {
            offers: 1,
            acks: 0,
            naks: 0
        }
    );
}

#[test]
fn discover_with_broadcast_flag_gets_broadcast_offer() {
    let mut s = server();
    let mut d = msg(MessageType::Discover, GUEST_MAC);
    d.set_flags(Flags::default().set_broadcast());
    let r = parse(&s.handle(&frame_of(&d, &BCAST)).unwrap());
    assert_eq!(r.dst_mac, [0xff; 6]);
    assert_eq!(r.dst_ip, Ipv4Addr::BROADCAST);
    assert!(r.msg.flags().broadcast());
    assert_eq!(r.msg.yiaddr(), GUEST_IP);
}

fn request(server_id: Option<Ipv4Addr>, requested: Option<Ipv4Addr>) -> Message {
    let mut m = msg(MessageType::Request, GUEST_MAC);
    if let Some(id) = server_id {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(id));
    }
    if let Some(r) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(r));
    }
    m
}

#[test]
fn request_selecting() {
    let mut s = server();
    let r = parse(
        &s.handle(&frame_of(&request(Some(HOST_IP), Some(GUEST_IP)), &BCAST))
            .unwrap(),
    );
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((r.dst_mac, r.dst_ip), (GUEST_MAC, GUEST_IP));
    assert_eq!(r.msg.yiaddr(), GUEST_IP);
    assert_eq!(
        opt(&r.msg, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(0xffff_ffff))
    );
    check_config(&r.msg);

    // Another server was chosen: stay silent.
    let other = Ipv4Addr::new(10, 0, 0, 1);
    assert!(s
        .handle(&frame_of(&request(Some(other), Some(GUEST_IP)), &BCAST))
        .is_none());
    // Our server id but a foreign address: NAK, broadcast.
    let bad = Ipv4Addr::new(100, 64, 1, 5);
    let r = parse(
        &s.handle(&frame_of(&request(Some(HOST_IP), Some(bad)), &BCAST))
            .unwrap(),
    );
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!((r.dst_mac, r.dst_ip), ([0xff; 6], Ipv4Addr::BROADCAST));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(&r.msg, OptionCode::AddressLeaseTime), None);
    assert_eq!(opt(&r.msg, OptionCode::Router), None);
    assert_eq!(
        opt(&r.msg, OptionCode::ServerIdentifier),
        Some(DhcpOption::ServerIdentifier(HOST_IP))
    );
    assert_eq!(
        s.stats,
        DhcpStats {
            offers: 0,
            acks: 1,
            naks: 1
        }
    );
}

#[test]
fn request_init_reboot() {
    let mut s = server();
    let r = parse(
        &s.handle(&frame_of(&request(None, Some(GUEST_IP)), &BCAST))
            .unwrap(),
    );
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    let r = parse(
        &s.handle(&frame_of(
            &request(None, Some(Ipv4Addr::new(192, 168, 1, 9))),
            &BCAST,
        ))
        .unwrap(),
    );
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(r.dst_ip, Ipv4Addr::BROADCAST);
    // Neither server id, requested address nor ciaddr: nothing to answer.
    assert!(s.handle(&frame_of(&request(None, None), &BCAST)).is_none());
}

#[test]
fn request_renewing_is_unicast_to_ciaddr() {
    let mut s = server();
    let mut m = request(None, None);
    m.set_ciaddr(GUEST_IP);
    let unicast = Addr {
        src_mac: GUEST_MAC,
        dst_mac: HOST_MAC,
        src_ip: GUEST_IP,
        dst_ip: HOST_IP,
    };
    let r = parse(&s.handle(&frame_of(&m, &unicast)).unwrap());
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((r.dst_mac, r.dst_ip), (GUEST_MAC, GUEST_IP));
    assert_eq!(r.msg.ciaddr(), GUEST_IP);
    assert_eq!(r.msg.yiaddr(), GUEST_IP);
    // Rebinding (broadcast) works as well.
    let r = parse(&s.handle(&frame_of(&m, &BCAST)).unwrap());
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    // Renewing a foreign address: NAK.
    m.set_ciaddr(Ipv4Addr::new(100, 64, 1, 7));
    let r = parse(&s.handle(&frame_of(&m, &unicast)).unwrap());
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
    // Unicast to some other host, or to another MAC: not for us.
    let mut m = request(None, None);
    m.set_ciaddr(GUEST_IP);
    let elsewhere = Addr {
        dst_ip: Ipv4Addr::new(100, 64, 2, 2),
        ..unicast
    };
    assert!(s.handle(&frame_of(&m, &elsewhere)).is_none());
    let elsewhere = Addr {
        dst_mac: OTHER_MAC,
        ..unicast
    };
    assert!(s.handle(&frame_of(&m, &elsewhere)).is_none());
}

#[test]
fn inform_gets_config_without_lease() {
    let mut s = server();
    let mut m = msg(MessageType::Inform, GUEST_MAC);
    m.set_ciaddr(GUEST_IP);
    let a = Addr {
        src_ip: GUEST_IP,
        ..BCAST
    };
    let r = parse(&s.handle(&frame_of(&m, &a)).unwrap());
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((r.dst_mac, r.dst_ip), (GUEST_MAC, GUEST_IP));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.msg.ciaddr(), GUEST_IP);
    assert_eq!(opt(&r.msg, OptionCode::AddressLeaseTime), None);
    check_config(&r.msg);
    // INFORM without ciaddr has nowhere to go.
    assert!(s
        .handle(&frame_of(&msg(MessageType::Inform, GUEST_MAC), &BCAST))
        .is_none());
}

#[test]
fn ignores_decline_release_and_server_messages() {
    let mut s = server();
    for kind in [
        MessageType::Decline,
        MessageType::Release,
        MessageType::Offer,
        MessageType::Ack,
        MessageType::Nak,
        MessageType::Unknown(200),
    ] {
        let mut m = msg(kind, GUEST_MAC);
        m.set_ciaddr(GUEST_IP);
        assert!(s.handle(&frame_of(&m, &BCAST)).is_none(), "{kind:?}");
    }
    // A BOOTREPLY, even carrying DISCOVER.
    let mut m = msg(MessageType::Discover, GUEST_MAC);
    m.set_opcode(Opcode::BootReply);
    assert!(s.handle(&frame_of(&m, &BCAST)).is_none());
    // No message type at all (plain BOOTP).
    let mut m = msg(MessageType::Discover, GUEST_MAC);
    m.opts_mut().remove(OptionCode::MessageType);
    assert!(s.handle(&frame_of(&m, &BCAST)).is_none());
    // Relayed.
    let mut m = msg(MessageType::Discover, GUEST_MAC);
    m.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    assert!(s.handle(&frame_of(&m, &BCAST)).is_none());
    assert_eq!(s.stats, DhcpStats::default());
}

#[test]
fn ignores_other_macs() {
    let mut s = server();
    // Another MAC in both places.
    let other = Addr {
        src_mac: OTHER_MAC,
        ..BCAST
    };
    assert!(s
        .handle(&frame_of(&msg(MessageType::Discover, OTHER_MAC), &other))
        .is_none());
    // Our MAC in chaddr only, or in the Ethernet source only.
    assert!(s
        .handle(&frame_of(&msg(MessageType::Discover, GUEST_MAC), &other))
        .is_none());
    assert!(s
        .handle(&frame_of(&msg(MessageType::Discover, OTHER_MAC), &BCAST))
        .is_none());
    // A chaddr longer than 6 bytes.
    let mut long = GUEST_MAC.to_vec();
    long.extend_from_slice(&[1, 2]);
    let mut m = msg(MessageType::Discover, GUEST_MAC);
    m.set_chaddr(&long);
    assert!(s.handle(&frame_of(&m, &BCAST)).is_none());
}

fn discover_frame() -> Vec<u8> {
    frame_of(&msg(MessageType::Discover, GUEST_MAC), &BCAST)
}

fn fix_ip_csum(f: &mut [u8]) {
    let ihl = (usize::from(f[14] & 0x0f) * 4).clamp(20, f.len() - 14);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&[&f[14..14 + ihl]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn bad_headers_are_ignored() {
    let mut s = server();
    let good = discover_frame();
    assert!(s.handle(&good).is_some());
    let set16 =
        |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    let ip_total = good.len() as u16 - 14;
    let udp_total = ip_total - 20;
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation, bool)> = vec![
        ("ethertype", Box::new(move |f| set16(f, 12, 0x86dd)), false),
        ("vlan tag", Box::new(move |f| set16(f, 12, 0x8100)), false),
        ("ip version", Box::new(|f| f[14] = 0x65), true),
        ("ihl < 5", Box::new(|f| f[14] = 0x44), true),
        ("ihl huge", Box::new(|f| f[14] = 0x4f), true),
        (
            "ip len +1",
            Box::new(move |f| set16(f, 16, ip_total + 1)),
            true,
        ),
        ("ip len max", Box::new(move |f| set16(f, 16, 0xffff)), true),
        ("ip len 0", Box::new(move |f| set16(f, 16, 0)), true),
        ("ip len 27", Box::new(move |f| set16(f, 16, 27)), true),
        (
            "ip len -1",
            Box::new(move |f| set16(f, 16, ip_total - 1)),
            true,
        ),
        ("fragment", Box::new(move |f| set16(f, 20, 0x2000)), true),
        ("frag offset", Box::new(move |f| set16(f, 20, 0x0001)), true),
        ("tcp", Box::new(|f| f[23] = 6), true),
        ("bad ip csum", Box::new(|f| f[24] ^= 1), false),
        (
            "udp len +1",
            Box::new(move |f| set16(f, 38, udp_total + 1)),
            false,
        ),
        ("udp len 7", Box::new(move |f| set16(f, 38, 7)), false),
        ("udp len 0", Box::new(move |f| set16(f, 38, 0)), false),
        (
            "udp len short",
            Box::new(move |f| set16(f, 38, 8 + 239)),
            false,
        ),
        ("src port", Box::new(move |f| set16(f, 34, 1068)), false),
        ("dst port", Box::new(move |f| set16(f, 36, 68)), false),
        ("magic", Box::new(|f| f[42 + 236] = 0), false),
        ("htype", Box::new(|f| f[43] = 6), false),
        ("hlen 16", Box::new(|f| f[44] = 16), false),
        ("hlen 255", Box::new(|f| f[44] = 255), false),
        ("dst ip", Box::new(|f| f[33] = 254), true),
    ];
    for (name, mutate, fix_csum) in cases {
        let mut f = good.clone();
        mutate(&mut f);
        if fix_csum {
            fix_ip_csum(&mut f);
        }
        assert!(s.handle(&f).is_none(), "{name}");
    }
    // Ethernet padding after the IP packet is fine (total length rules).
    let mut f = good.clone();
    f.extend_from_slice(&[0; 30]);
    assert!(s.handle(&f).is_some());
    // A UDP length shorter than the IP payload: the rest is padding, but the
    // DHCP message must still be whole.
    let mut f = good.clone();
    f.extend_from_slice(&[0; 4]);
    set16(&mut f, 16, ip_total + 4);
    fix_ip_csum(&mut f);
    assert!(s.handle(&f).is_some());
    // IP options are skipped.
    let mut f = good[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    f.extend_from_slice(&good[34..]);
    f[14] = 0x46;
    set16(&mut f, 16, ip_total + 4);
    fix_ip_csum(&mut f);
    assert!(s.handle(&f).is_some());
    // Oversized frames are refused, even well-formed ones.
    let mut f = good.clone();
    f.resize(MAX_FRAME_LEN + 1, 0);
    assert!(s.handle(&f).is_none());
    let mut f = good.clone();
    f.resize(MAX_FRAME_LEN, 0);
    assert!(s.handle(&f).is_some());
    assert!(s.handle(&vec![0xff; 65536]).is_none());
    assert!(s.handle(&[]).is_none());
}

#[test]
fn truncated_at_every_length() {
    let mut s = server();
    for f in [
        discover_frame(),
        frame_of(&request(Some(HOST_IP), Some(GUEST_IP)), &BCAST),
    ] {
        for n in 0..f.len() {
            assert!(s.handle(&f[..n]).is_none(), "truncated to {n}");
        }
        assert!(s.handle(&f).is_some());
    }
}

#[test]
fn truncated_dhcp_with_consistent_lengths() {
    // Shorten the DHCP payload and fix every length and checksum: the
    // headers agree, the message itself is cut short.
    let mut s = server();
    let good = discover_frame();
    for n in 42..good.len() {
        let mut f = good[..n].to_vec();
        let ip_len = (n - 14) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        fix_ip_csum(&mut f);
        // Only the options' end may go; the fixed part and cookie are required.
        let r = s.handle(&f);
        if n < 42 + 240 {
            assert!(r.is_none(), "{n}");
        }
    }
}

#[test]
fn oversized_dhcp_options() {
    let mut s = server();
    let mut m = msg(MessageType::Discover, GUEST_MAC);
    // Fill the message up to the frame limit with vendor options.
    for code in 224..=228u8 {
        m.opts_mut()
            .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                code.into(),
                vec![0xaa; 180],
            )));
    }
    let f = frame_of(&m, &BCAST);
    assert!(f.len() <= MAX_FRAME_LEN, "{}", f.len());
    assert!(s.handle(&f).is_some());
    // Two more push it over.
    for code in [231u8, 232] {
        m.opts_mut()
            .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                code.into(),
                vec![0xaa; 255],
            )));
    }
    let f = frame_of(&m, &BCAST);
    assert!(f.len() > MAX_FRAME_LEN);
    assert!(s.handle(&f).is_none());
}

/// xorshift64*: a seeded generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn randomized_mutations_never_panic() {
    let mut s = server();
    let mut renew = request(None, None);
    renew.set_ciaddr(GUEST_IP);
    let mut inform = msg(MessageType::Inform, GUEST_MAC);
    inform.set_ciaddr(GUEST_IP);
    let seeds = [
        discover_frame(),
        frame_of(&request(Some(HOST_IP), Some(GUEST_IP)), &BCAST),
        frame_of(&request(None, Some(GUEST_IP)), &BCAST),
        frame_of(&renew, &BCAST),
        frame_of(&inform, &BCAST),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut answered = 0;
    for i in 0..60_000 {
        let mut f = seeds[i % seeds.len()].clone();
        match rng.below(4) {
            // Flip bytes anywhere, then (usually) repair the IP checksum so
            // the mutation reaches the DHCP parser.
            0 | 1 => {
                for _ in 0..1 + rng.below(6) {
                    let at = if rng.below(2) == 0 {
                        42 + 236 + rng.below(f.len() - 278) // the options
                    } else {
                        rng.below(f.len())
                    };
                    f[at] = rng.next() as u8;
                }
            }
            // Cut or extend.
            2 => {
                let n = rng.below(f.len() + 64);
                f.resize(n, rng.next() as u8);
            }
            // Random option bytes after the cookie.
            _ => {
                f.truncate(42 + 240);
                for _ in 0..rng.below(300) {
                    f.push(rng.next() as u8);
                }
                let ip_len = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&ip_len.to_be_bytes());
                f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
            }
        }
        if f.len() >= 34 && rng.below(8) != 0 {
            fix_ip_csum(&mut f);
        }
        if let Some(r) = s.handle(&f) {
            answered += 1;
            let r = parse(&r);
            assert_eq!(r.msg.chaddr(), &GUEST_MAC);
            assert_eq!(r.src_ip, HOST_IP);
        }
    }
    // The mutations must not all have been rejected by the first checks.
    assert!(answered > 1000, "{answered}");
}

#[test]
fn hostnames() {
    assert_eq!(sanitize_hostname("web1").as_deref(), Some("web1"));
    assert_eq!(sanitize_hostname("my_vm").as_deref(), Some("my-vm"));
    assert_eq!(sanitize_hostname("-a-.b..c_").as_deref(), Some("a.b.c"));
    assert_eq!(sanitize_hostname("___"), None);
    assert_eq!(sanitize_hostname(""), None);
    assert_eq!(
        sanitize_hostname("héllo wörld").as_deref(),
        Some("h-llo-w-rld")
    );
    let long = "x".repeat(100);
    assert_eq!(sanitize_hostname(&long).unwrap().len(), 63);
    let many = vec!["abcdefghij"; 40].join(".");
    let h = sanitize_hostname(&many).unwrap();
    assert!(h.len() <= 253 && !h.ends_with('.'), "{h}");
    // No host name option when nothing is left.
    let mut s = server();
    s.hostname = sanitize_hostname("__");
    let r = parse(&s.handle(&discover_frame()).unwrap());
    assert_eq!(opt(&r.msg, OptionCode::Hostname), None);
}

#[test]
fn new_computes_netmask() {
    let s = DhcpServer::new(GUEST_MAC, HOST_MAC, HOST_IP, GUEST_IP, 24, "vm");
    assert_eq!(s.netmask, Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(s.router, Some(HOST_IP));
    assert_eq!(s.dns, vec![HOST_IP]);
    assert_eq!(s.lease_secs, INFINITE_LEASE);
    let s = DhcpServer::new(GUEST_MAC, HOST_MAC, HOST_IP, GUEST_IP, 0, "vm");
    assert_eq!(s.netmask, Ipv4Addr::UNSPECIFIED);
    let s = DhcpServer::new(GUEST_MAC, HOST_MAC, HOST_IP, GUEST_IP, 40, "vm");
    assert_eq!(s.netmask, Ipv4Addr::BROADCAST);
}

#[test]
fn hostile_options() {
    let mut s = server();
    let good = discover_frame();
    // Rebuild the options area: cookie at 42 + 236, options after it.
    let with_opts = |opts: &[u8]| {
        let mut f = good[..42 + 240].to_vec();
        f.extend_from_slice(opts);
        let ip_len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        fix_ip_csum(&mut f);
        f
    };
    assert!(s.handle(&with_opts(&[53, 1, 1, 255])).is_some());
    // No End option: tolerated.
    assert!(s.handle(&with_opts(&[53, 1, 1])).is_some());
    // Options dhcproto's decoder asserts on (94 must be 3 long, 81 at least 3).
    assert!(s
        .handle(&with_opts(&[94, 1, 0, 81, 0, 53, 1, 1, 255]))
        .is_some());
    // Wrong lengths, repeats, and an option running past the end.
    for bad in [
        &[53, 2, 1, 1, 255][..],
        &[53, 0, 255],
        &[53, 1, 1, 53, 1, 3, 255],
        &[53, 1, 1, 54, 3, 1, 2, 3, 255],
        &[53, 1, 1, 50, 5, 1, 2, 3, 4, 5, 255],
        &[53, 1, 1, 12, 200, b'x'],
        &[53],
    ] {
        assert!(s.handle(&with_opts(bad)).is_none(), "{bad:?}");
    }
}
