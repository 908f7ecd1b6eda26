//! The VM process's built-in DHCP server for one guest on one local interface.
//!
//! I/O free: [`DhcpServer::handle`] takes a whole Ethernet frame the guest
//! sent (virtio-net TX, without the virtio-net header) and returns the whole
//! Ethernet frame to deliver back to the guest (RX), or `None`.
//!
//! It answers only DHCPDISCOVER, DHCPREQUEST and DHCPINFORM from its guest's
//! MAC (Ethernet source and `chaddr` both), sent as IPv4/UDP from port 68 to
//! port 67 at the broadcast address or the server's own address. Everything
//! else (other MACs, VLAN tags, fragments, BOOTREPLYs, DHCPDECLINE,
//! DHCPRELEASE, relayed packets, bad IP header checksums, truncated or
//! oversized frames, inconsistent lengths) yields `None`. Its lease is
//! infinite, so it keeps no lease state.
//!
//! Where the reply goes follows RFC 2131 section 4.1: a DHCPNAK is broadcast;
//! otherwise, if `ciaddr` is set, it is unicast to `ciaddr`; if the client
//! set the BROADCAST flag, it is broadcast (IP and Ethernet); else it is
//! unicast to `yiaddr` at the client's hardware address. busybox udhcpc sends
//! DHCPDISCOVER without the BROADCAST flag (unless `-B`) and, having no
//! address yet, receives on a raw packet socket, which accepts the unicast
//! OFFER at its MAC: its filter checks the UDP port, lengths and checksums,
//! not the destination address.
//!
//! The UDP checksum of what the guest sent is not verified: with checksum
//! offload negotiated a guest may hand over a partial checksum, which only the
//! virtio-net header explains. The IPv4 header checksum is never offloaded
//! and is verified.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};

/// The largest frame looked at: a 1500-byte IP packet in an untagged
/// Ethernet frame. DHCP messages are far smaller.
pub const MAX_FRAME_LEN: usize = 1514;
/// "Infinite" lease time (RFC 2131 section 3.3).
pub const INFINITE_LEASE: u32 = 0xffff_ffff;
/// Replies are padded to at least the BOOTP minimum (RFC 1542 section 2.1).
const MIN_BOOTP_LEN: usize = 300;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const BOOTP_FIXED_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// What [`DhcpServer::handle`] needs of a request.
struct Request {
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    msg_type: Option<MessageType>,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

/// Counters of what the server did, for status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhcpStats {
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
}

/// A DHCP server for one guest. All fields are the configuration; build it
/// with [`DhcpServer::new`] or set the fields directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpServer {
    /// The only client answered.
    pub guest_mac: [u8; 6],
    /// Ethernet source of replies: the host side's (tap's) MAC.
    pub server_mac: [u8; 6],
    /// The host side's address: server identifier and IP source of replies.
    pub server_ip: Ipv4Addr,
    /// The address handed out.
    pub guest_ip: Ipv4Addr,
    /// Subnet mask option (255.255.255.254 on a local interface).
    pub netmask: Ipv4Addr,
    /// Router option; omitted when `None`.
    pub router: Option<Ipv4Addr>,
    /// Domain name server option; omitted when empty.
    pub dns: Vec<Ipv4Addr>,
    /// Host name option, already a valid host name; omitted when `None`.
    pub hostname: Option<String>,
    /// Lease time option; [`INFINITE_LEASE`] by default.
    pub lease_secs: u32,
    /// What it has sent so far.
    pub stats: DhcpStats,
}

/// RFC 952/1123 host name from a VM name: letters, digits and `-` in labels
/// of at most 63 characters separated by `.`, no label starting or ending
/// with `-`, at most 253 characters. Other characters become `-`, empty labels
/// are dropped. `None` when nothing valid is left.
pub fn sanitize_hostname(name: &str) -> Option<String> {
    let mut out = String::new();
    for label in name.split('.') {
        let mapped: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(63)
            .collect();
        let label = mapped.trim_matches('-');
        if label.is_empty() {
            continue;
        }
        let extra = label.len() + usize::from(!out.is_empty());
        if out.len() + extra > 253 {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(label);
    }
    (!out.is_empty()).then_some(out)
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl DhcpServer {
    /// A server handing `guest_ip`/`prefix_len` to `guest_mac`, with router
    /// and DNS = `server_ip`, the host name made from `vm_name`, and an
    /// infinite lease. `prefix_len` over 32 is taken as 32.
    pub fn new(
        guest_mac: [u8; 6],
        server_mac: [u8; 6],
        server_ip: Ipv4Addr,
        guest_ip: Ipv4Addr,
        prefix_len: u8,
        vm_name: &str,
    ) -> Self {
        let len = u32::from(prefix_len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        DhcpServer {
            guest_mac,
            server_mac,
            server_ip,
            guest_ip,
            netmask: Ipv4Addr::from(mask),
            router: Some(server_ip),
            dns: vec![server_ip],
            hostname: sanitize_hostname(vm_name),
            lease_secs: INFINITE_LEASE,
            stats: DhcpStats::default(),
        }
    }

    /// The server for a `local interface` with the addresses from
    /// [`crate::local::local_addrs`].
    pub fn for_local(
        addrs: &crate::local::LocalAddrs,
        guest_mac: [u8; 6],
        server_mac: [u8; 6],
        vm_name: &str,
    ) -> Self {
        Self::new(
            guest_mac,
            server_mac,
            addrs.host4,
            addrs.guest4,
            crate::local::PREFIX_LEN4,
            vm_name,
        )
    }

    /// Handles one frame from the guest; the reply frame, if any.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let payload = self.dhcp_payload(frame)?;
        let req = self.check_bootp(payload)?;
        let reply = self.answer(&req)?;
        match reply.opts().msg_type() {
            Some(MessageType::Offer) => self.stats.offers += 1,
            Some(MessageType::Ack) => self.stats.acks += 1,
            Some(MessageType::Nak) => self.stats.naks += 1,
            _ => {}
        }
        self.frame(&req, &reply)
    }

    /// The UDP payload of a frame from our guest to port 67, or `None`.
    fn dhcp_payload<'a>(&self, f: &'a [u8]) -> Option<&'a [u8]> {
        if f.len() < ETH_HLEN + IP_HLEN + UDP_HLEN || f.len() > MAX_FRAME_LEN {
            return None;
        }
        let dst_mac: [u8; 6] = f[0..6].try_into().ok()?;
        if f[6..12] != self.guest_mac
            || be16(f, 12) != ETHERTYPE_IPV4
            || (dst_mac != BROADCAST_MAC && dst_mac != self.server_mac)
        {
            return None;
        }
        let ip = &f[ETH_HLEN..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2));
        if ip[0] >> 4 != 4 || ihl < IP_HLEN || total < ihl + UDP_HLEN || total > ip.len() {
            return None;
        }
        // Neither more fragments nor a fragment offset.
        if be16(ip, 6) & 0x3fff != 0 || ip[9] != 17 || fold(ones_sum(0, &ip[..ihl])) != 0 {
            return None;
        }
        let dst = ip_at(ip, 16);
        if dst != Ipv4Addr::BROADCAST && dst != self.server_ip {
            return None;
        }
        let udp = &ip[ihl..total];
        let ulen = usize::from(be16(udp, 4));
        if be16(udp, 0) != CLIENT_PORT
            || be16(udp, 2) != SERVER_PORT
            || ulen < UDP_HLEN
            || ulen > udp.len()
        {
            return None;
        }
        Some(&udp[UDP_HLEN..ulen])
    }

    /// Parses a BOOTREQUEST from our guest's Ethernet `chaddr`.
    ///
    /// The request is parsed here, not by dhcproto: its option decoder
    /// panics on some malformed options (`debug_assert!`s on option lengths,
    /// e.g. option 94 with a length other than 3, and `len - 3` in option 81),
    /// and a guest must not be able to crash its VM process. Only the options
    /// needed are read: message type (53), requested address (50) and server
    /// identifier (54); one of those with a wrong length, or an option running
    /// past the end, makes the whole message malformed.
    fn check_bootp(&self, p: &[u8]) -> Option<Request> {
        if p.len() < BOOTP_FIXED_LEN + MAGIC_COOKIE.len()
            || p[0] != 1 // BOOTREQUEST
            || p[1] != 1 // Ethernet
            || p[2] != 6
            || p[28..34] != self.guest_mac
            || p[BOOTP_FIXED_LEN..BOOTP_FIXED_LEN + 4] != MAGIC_COOKIE
            // giaddr: a relay agent has no business on a point-to-point link.
            || p[24..28] != [0; 4]
        {
            return None;
        }
        let mut req = Request {
            xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            flags: be16(p, 10),
            ciaddr: ip_at(p, 12),
            msg_type: None,
            requested: None,
            server_id: None,
        };
        let mut opts = &p[BOOTP_FIXED_LEN + 4..];
        while let [code, rest @ ..] = opts {
            match *code {
                0 => {
                    opts = rest;
                    continue;
                }
                255 => break,
                _ => {}
            }
            let [len, rest @ ..] = rest else {
                return None;
            };
            let len = usize::from(*len);
            if rest.len() < len {
                return None;
            }
            let (data, rest) = rest.split_at(len);
            opts = rest;
            // RFC 3396 would concatenate repeated options; for these fixed
            // size ones a repeat is malformed.
            let (slot_len, seen) = match *code {
                53 => (1, req.msg_type.is_some()),
                50 => (4, req.requested.is_some()),
                54 => (4, req.server_id.is_some()),
                _ => continue,
            };
            if len != slot_len || seen {
                return None;
            }
            match *code {
                53 => req.msg_type = Some(MessageType::from(data[0])),
                50 => req.requested = Some(ip_at(data, 0)),
                _ => req.server_id = Some(ip_at(data, 0)),
            }
        }
        Some(req)
    }

    fn answer(&self, req: &Request) -> Option<Message> {
        let ciaddr = req.ciaddr;
        match req.msg_type? {
            MessageType::Discover => Some(self.reply(req, MessageType::Offer)),
            MessageType::Request => {
                let wanted = match (req.server_id, req.requested) {
                    // SELECTING: the client chose another server's offer.
                    (Some(id), _) if id != self.server_ip => return None,
                    (Some(_), Some(r)) => r,
                    // RFC 2131 requires the requested address in SELECTING;
                    // some clients put it in ciaddr instead.
                    (Some(_), None) if !ciaddr.is_unspecified() => ciaddr,
                    (Some(_), None) => return None,
                    // INIT-REBOOT.
                    (None, Some(r)) => r,
                    // RENEWING / REBINDING.
                    (None, None) if !ciaddr.is_unspecified() => ciaddr,
                    (None, None) => return None,
                };
                if wanted == self.guest_ip {
                    Some(self.reply(req, MessageType::Ack))
                } else {
                    Some(self.nak(req))
                }
            }
            // RFC 2131 4.3.5: configuration only, to the client's address.
            MessageType::Inform if !ciaddr.is_unspecified() => {
                Some(self.reply(req, MessageType::Ack))
            }
            _ => None,
        }
    }

    fn base(&self, req: &Request) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_hops(0)
            .set_xid(req.xid)
            .set_secs(0)
            .set_flags(Flags::new(req.flags & 0x8000))
            .set_ciaddr(Ipv4Addr::UNSPECIFIED)
            .set_yiaddr(Ipv4Addr::UNSPECIFIED)
            .set_siaddr(Ipv4Addr::UNSPECIFIED)
            .set_giaddr(Ipv4Addr::UNSPECIFIED)
            .set_chaddr(&self.guest_mac);
        m
    }

    fn reply(&self, req: &Request, kind: MessageType) -> Message {
        let inform = req.msg_type == Some(MessageType::Inform);
        let mut m = self.base(req);
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(self.server_ip));
        if inform {
            // RFC 2131 4.3.5: no yiaddr, no lease time.
            m.set_ciaddr(req.ciaddr);
        } else {
            if kind == MessageType::Ack {
                m.set_ciaddr(req.ciaddr);
            }
            m.set_yiaddr(self.guest_ip);
            o.insert(DhcpOption::AddressLeaseTime(self.lease_secs));
        }
        o.insert(DhcpOption::SubnetMask(self.netmask));
        if let Some(r) = self.router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !self.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(self.dns.clone()));
        }
        if let Some(h) = &self.hostname {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        m.set_opts(o);
        m
    }

    fn nak(&self, req: &Request) -> Message {
        let mut m = self.base(req);
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(MessageType::Nak));
        o.insert(DhcpOption::ServerIdentifier(self.server_ip));
        m.set_opts(o);
        m
    }

    /// The reply as an Ethernet frame, addressed as RFC 2131 4.1 says.
    fn frame(&self, req: &Request, reply: &Message) -> Option<Vec<u8>> {
        let mut bootp = Vec::with_capacity(MIN_BOOTP_LEN);
        reply.encode(&mut Encoder::new(&mut bootp)).ok()?;
        if bootp.len() < MIN_BOOTP_LEN {
            bootp.resize(MIN_BOOTP_LEN, 0);
        }
        let nak = reply.opts().has_msg_type(MessageType::Nak);
        let (dst_mac, dst_ip) = if nak {
            (BROADCAST_MAC, Ipv4Addr::BROADCAST)
        } else if !req.ciaddr.is_unspecified() {
            (self.guest_mac, req.ciaddr)
        } else if req.flags & 0x8000 != 0 {
            (BROADCAST_MAC, Ipv4Addr::BROADCAST)
        } else {
            (self.guest_mac, reply.yiaddr())
        };
        let udp_len = UDP_HLEN + bootp.len();
        let ip_len = IP_HLEN + udp_len;
        if ETH_HLEN + ip_len > MAX_FRAME_LEN {
            return None;
        }
        let mut f = Vec::with_capacity(ETH_HLEN + ip_len);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&self.server_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let src = self.server_ip.octets();
        let dst = dst_ip.octets();
        let mut ip = [0u8; IP_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let csum = fold(ones_sum(0, &ip));
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut udp = [0u8; UDP_HLEN];
        udp[0..2].copy_from_slice(&SERVER_PORT.to_be_bytes());
        udp[2..4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let mut sum = ones_sum(0, &src);
        sum = ones_sum(sum, &dst);
        sum += 17 + udp_len as u32;
        sum = ones_sum(sum, &udp);
        sum = ones_sum(sum, &bootp);
        let csum = match fold(sum) {
            0 => 0xffff,
            c => c,
        };
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend_from_slice(&bootp);
        Some(f)
    }
}

#[cfg(test)]
mod tests;
