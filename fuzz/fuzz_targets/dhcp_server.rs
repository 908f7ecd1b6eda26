//! The local interface's DHCP server (`netcfg::dhcp`) fed whole frames
//! from the input, as the VM process's virtio-net TX path hands them to
//! it: any frame a guest sends. It must never panic, answer only frames
//! from its guest's MAC, and every answer must be a well-formed frame:
//! an Ethernet header with our MAC as source, IPv4 with a correct header
//! checksum, UDP from port 67 to 68 with lengths that agree.
//!
//! The first input byte picks whether the frame is left as it is or given
//! a valid Ethernet/IPv4/UDP/BOOTP prefix from the guest's MAC (so that
//! the fuzzer spends its time in the DHCP part too).
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use netcfg::dhcp::DhcpServer;

const GUEST: [u8; 6] = [0xfe, 0xe1, 0xba, 1, 2, 3];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame whose headers are right and whose BOOTP/DHCP part is `body`.
fn wrap(body: &[u8]) -> Vec<u8> {
    let udp_len = 8 + body.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0, 68, 0, 67, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    f.extend_from_slice(body);
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let frame = if mode & 1 == 0 { rest.to_vec() } else { wrap(rest) };
    let mut s = DhcpServer::new(
        GUEST,
        HOST,
        Ipv4Addr::new(100, 64, 1, 2),
        Ipv4Addr::new(100, 64, 1, 3),
        31,
        "fuzz",
    );
    let Some(reply) = s.handle(&frame) else {
        return;
    };
    // Only frames from the guest get answers.
    assert!(frame.len() >= 14 && frame[6..12] == GUEST, "answered a stranger");
    // The answer's headers are right.
    assert!(reply.len() >= 14 + 20 + 8, "short reply");
    assert_eq!(&reply[6..12], &HOST);
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    let ip = &reply[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip_checksum(ip), 0, "IP header checksum");
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(ip_len, reply.len() - 14);
    let udp = &reply[34..];
    assert_eq!(&udp[0..4], &[0, 67, 0, 68]);
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
});
