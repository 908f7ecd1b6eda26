//! The `virtio_net_hdr_v1` in front of every frame (virtio 1.2 section
//! 5.1.6): what the guest may put in it when it sends, what it may find
//! in it when it receives, given the features it accepted; and the tap
//! offloads (TUN_F_*) those features allow. Decided without I/O.
//!
//! On a vnet-header tap the header goes to and comes from the kernel
//! unchanged but for `num_buffers` on receive, so these checks are what
//! stands between a guest and the host's `virtio_net_hdr_to_skb`, and
//! between the host and a guest that did not agree to a kind of frame.

use virtio_bindings::virtio_net as vn;

use super::NET_HDR_LEN;

/// The driver may hand over frames with a partial checksum.
pub const F_CSUM: u64 = 1 << vn::VIRTIO_NET_F_CSUM;
/// The driver takes frames with a partial or unchecked checksum.
pub const F_GUEST_CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
/// The driver takes unsegmented TCP over IPv4 / IPv6, and with ECN.
pub const F_GUEST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
pub const F_GUEST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO6;
pub const F_GUEST_ECN: u64 = 1 << vn::VIRTIO_NET_F_GUEST_ECN;
/// The driver may hand over unsegmented TCP over IPv4 / IPv6, with ECN.
pub const F_HOST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO4;
pub const F_HOST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO6;
pub const F_HOST_ECN: u64 = 1 << vn::VIRTIO_NET_F_HOST_ECN;

/// What the device offers on a vnet-header tap, all passed through to
/// the kernel. Not UFO (Linux no longer makes such frames, and a guest
/// asking for it would get none) nor USO (not asked for yet).
pub const OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;

pub const FLAG_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const FLAG_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS: usize = 10;

/// The fields of a header, read from its 12 bytes (little endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Hdr {
    pub fn parse(b: &[u8; NET_HDR_LEN]) -> Hdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// Whether the frame is to be segmented (TSO).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Why a header from the guest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHdr {
    /// A flag other than NEEDS_CSUM (the driver must set no other).
    Flags,
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM.
    Csum,
    /// A segmentation the driver did not negotiate (or UFO/USO, never
    /// offered), or one without NEEDS_CSUM or an MSS.
    Gso,
}

/// Checks the header of a frame the guest sends, given the features it
/// accepted: whether the frame is a GSO frame, or why it is refused.
pub fn check_tx(hdr: &Hdr, acked: u64) -> Result<bool, BadHdr> {
    if hdr.flags & !FLAG_NEEDS_CSUM != 0 {
        return Err(BadHdr::Flags);
    }
    if hdr.flags & FLAG_NEEDS_CSUM != 0 && acked & F_CSUM == 0 {
        return Err(BadHdr::Csum);
    }
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let needs = match hdr.gso_type & !GSO_ECN {
        GSO_NONE if !ecn => return Ok(false),
        GSO_TCPV4 => F_HOST_TSO4,
        GSO_TCPV6 => F_HOST_TSO6,
        _ => return Err(BadHdr::Gso),
    };
    if acked & needs == 0
        || (ecn && acked & F_HOST_ECN == 0)
        || hdr.flags & FLAG_NEEDS_CSUM == 0
        || hdr.gso_size == 0
    {
        return Err(BadHdr::Gso);
    }
    Ok(true)
}

/// The tap offloads (TUN_F_*) matching what the driver accepted for its
/// receive side: the kernel then hands over no frame the guest did not
/// agree to. Segmentation needs checksum offload, as in the kernel's own
/// `tun_set_offload`.
pub fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & F_GUEST_CSUM != 0 {
        f |= libc::TUN_F_CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            f |= libc::TUN_F_TSO4;
        }
        if acked & F_GUEST_TSO6 != 0 {
            f |= libc::TUN_F_TSO6;
        }
        if acked & F_GUEST_ECN != 0 && f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            f |= libc::TUN_F_TSO_ECN;
        }
    }
    f
}

/// Why a frame from the tap cannot be given to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// A segmentation the guest did not accept (a frame queued before
    /// the offloads were narrowed, by a reset and a new driver).
    Gso,
    /// A partial checksum whose place lies outside the frame.
    Csum,
}

/// Makes the header at the front of `buf` (header then frame, from the
/// tap) say only what the driver accepted (`acked`): a partial checksum
/// is finished here for a driver without GUEST_CSUM, DATA_VALID cleared
/// for it, any other flag cleared (and the fields they explained); a GSO frame it did not accept is
/// refused (segmenting it is the kernel's work: it does, once the
/// offloads say so). `num_buffers` is left for the device to write.
pub fn fix_rx(buf: &mut [u8], acked: u64) -> Result<(), RxDrop> {
    let Some((h, frame)) = buf.split_first_chunk_mut::<NET_HDR_LEN>() else {
        return Err(RxDrop::Csum);
    };
    let hdr = Hdr::parse(h);
    let allowed = tap_offloads(acked);
    if hdr.gso_type != GSO_NONE {
        let needs = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 => libc::TUN_F_TSO4,
            GSO_TCPV6 => libc::TUN_F_TSO6,
            _ => return Err(RxDrop::Gso),
        };
        let ecn = if hdr.gso_type & GSO_ECN != 0 {
            libc::TUN_F_TSO_ECN
        } else {
            0
        };
        if allowed & (needs | ecn) != needs | ecn {
            return Err(RxDrop::Gso);
        }
    }
    let mut flags = hdr.flags & (FLAG_NEEDS_CSUM | FLAG_DATA_VALID);
    if allowed & libc::TUN_F_CSUM == 0 {
        if flags & FLAG_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if !complete_checksum(frame, start, at) {
                return Err(RxDrop::Csum);
            }
        }
        flags = 0;
    }
    h[0] = flags;
    if flags & FLAG_NEEDS_CSUM == 0 && hdr.gso_type == GSO_NONE {
        // Nothing left for the other fields to describe.
        h[2..NUM_BUFFERS].fill(0);
    }
    Ok(())
}

/// Finishes a partial checksum: the Internet checksum of `frame[start..]`
/// (whose field at `at` holds the pseudo-header's sum) stored at `at`,
/// as the kernel's `skb_checksum_help` does. False if the field does not
/// lie inside the checksummed part.
pub fn complete_checksum(frame: &mut [u8], start: usize, at: usize) -> bool {
    if at < start || at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let mut sum: u32 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // 0 means "no checksum" to UDP; 0xffff is the same sum.
    let c = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8, gso_size: u16) -> Hdr {
        Hdr {
            flags,
            gso_type,
            gso_size,
            ..Hdr::default()
        }
    }

    #[test]
    fn tx_headers_say_only_what_was_negotiated() {
        let all = OFFLOADS;
        assert_eq!(check_tx(&Hdr::default(), 0), Ok(false));
        assert_eq!(check_tx(&hdr(FLAG_NEEDS_CSUM, 0, 0), all), Ok(false));
        assert_eq!(check_tx(&hdr(FLAG_NEEDS_CSUM, 0, 0), 0), Err(BadHdr::Csum));
        assert_eq!(
            check_tx(&hdr(FLAG_DATA_VALID, 0, 0), all),
            Err(BadHdr::Flags)
        );
        let tso4 = hdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 1448);
        assert_eq!(check_tx(&tso4, all), Ok(true));
        assert_eq!(check_tx(&tso4, F_CSUM | F_HOST_TSO6), Err(BadHdr::Gso));
        let tso6 = hdr(FLAG_NEEDS_CSUM, GSO_TCPV6, 1428);
        assert_eq!(check_tx(&tso6, F_CSUM | F_HOST_TSO6), Ok(true));
        let ecn = hdr(FLAG_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1448);
        assert_eq!(check_tx(&ecn, F_CSUM | F_HOST_TSO4), Err(BadHdr::Gso));
        assert_eq!(check_tx(&ecn, F_CSUM | F_HOST_TSO4 | F_HOST_ECN), Ok(true));
        // ECN alone, UFO, USO, no checksum, no MSS.
        assert_eq!(check_tx(&hdr(0, GSO_ECN, 0), all), Err(BadHdr::Gso));
        assert_eq!(
            check_tx(&hdr(FLAG_NEEDS_CSUM, 3, 1400), all),
            Err(BadHdr::Gso)
        );
        assert_eq!(
            check_tx(&hdr(FLAG_NEEDS_CSUM, 5, 1400), all),
            Err(BadHdr::Gso)
        );
        assert_eq!(check_tx(&hdr(0, GSO_TCPV4, 1448), all), Err(BadHdr::Gso));
        assert_eq!(
            check_tx(&hdr(FLAG_NEEDS_CSUM, GSO_TCPV4, 0), all),
            Err(BadHdr::Gso)
        );
    }

    #[test]
    fn offloads_follow_the_receive_features() {
        use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(F_CSUM | F_HOST_TSO4 | F_HOST_TSO6), 0);
        assert_eq!(tap_offloads(F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4
        );
        assert_eq!(
            tap_offloads(OFFLOADS),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        // No segmentation without checksums, no ECN without segmentation.
        assert_eq!(tap_offloads(F_GUEST_TSO4 | F_GUEST_TSO6), 0);
        assert_eq!(tap_offloads(F_GUEST_CSUM | F_GUEST_ECN), TUN_F_CSUM);
    }

    /// A UDP/IPv4 frame whose checksum field holds the pseudo-header sum.
    fn partial_udp() -> Vec<u8> {
        let payload = b"hello, checksum!x"; // odd length
        let udp_len = 8 + payload.len();
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&1234u16.to_be_bytes());
        f.extend_from_slice(&5678u16.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        // Pseudo header: addresses, protocol, length.
        let mut s: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp_len as u32;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        f.extend_from_slice(&(s as u16).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The ones' complement sum over the UDP pseudo header and datagram
    /// of a frame from `partial_udp`: 0xffff when the checksum is right.
    fn verify_udp(f: &[u8]) -> u16 {
        let udp = &f[34..];
        let mut s: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp.len() as u32;
        for w in udp.chunks(2) {
            s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn a_partial_checksum_is_finished_for_a_guest_without_guest_csum() {
        let frame = partial_udp();
        let mut buf = vec![0u8; NET_HDR_LEN];
        buf[0] = FLAG_NEEDS_CSUM | 4; // and RSC_INFO, never passed on
        buf[6..8].copy_from_slice(&34u16.to_le_bytes());
        buf[8..10].copy_from_slice(&6u16.to_le_bytes());
        buf.extend_from_slice(&frame);

        let mut with = buf.clone();
        assert_eq!(fix_rx(&mut with, F_GUEST_CSUM), Ok(()));
        assert_eq!(with[0], FLAG_NEEDS_CSUM, "passed on to a GUEST_CSUM driver");
        assert_eq!(with[NET_HDR_LEN..], frame[..]);

        assert_eq!(fix_rx(&mut buf, 0), Ok(()));
        assert_eq!(buf[..NUM_BUFFERS], [0; NUM_BUFFERS]);
        assert_eq!(verify_udp(&buf[NET_HDR_LEN..]), 0xffff);

        // A checksum field outside the frame.
        let mut bad = vec![FLAG_NEEDS_CSUM, 0, 0, 0, 0, 0, 60, 0, 6, 0, 0, 0];
        bad.extend_from_slice(&frame[..40]);
        assert_eq!(fix_rx(&mut bad, 0), Err(RxDrop::Csum));
        // DATA_VALID only for a GUEST_CSUM driver.
        let mut dv = vec![FLAG_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dv.extend_from_slice(&frame);
        assert_eq!(fix_rx(&mut dv.clone(), F_GUEST_CSUM), Ok(()));
        assert_eq!(fix_rx(&mut dv, 0), Ok(()));
        assert_eq!(dv[0], 0);
    }

    #[test]
    fn gso_frames_reach_only_a_guest_that_accepted_them() {
        let mut buf = vec![
            FLAG_NEEDS_CSUM,
            GSO_TCPV4,
            54,
            0,
            0xa8,
            5,
            34,
            0,
            16,
            0,
            0,
            0,
        ];
        buf.resize(NET_HDR_LEN + 3000, 0);
        let tso4 = F_GUEST_CSUM | F_GUEST_TSO4;
        assert_eq!(fix_rx(&mut buf.clone(), tso4), Ok(()));
        assert_eq!(fix_rx(&mut buf.clone(), F_GUEST_CSUM), Err(RxDrop::Gso));
        assert_eq!(fix_rx(&mut buf.clone(), F_GUEST_TSO4), Err(RxDrop::Gso));
        assert_eq!(
            fix_rx(&mut buf.clone(), F_GUEST_CSUM | F_GUEST_TSO6),
            Err(RxDrop::Gso)
        );
        buf[1] = GSO_TCPV4 | GSO_ECN;
        assert_eq!(fix_rx(&mut buf.clone(), tso4), Err(RxDrop::Gso));
        assert_eq!(fix_rx(&mut buf.clone(), tso4 | F_GUEST_ECN), Ok(()));
        buf[1] = 3; // UFO
        assert_eq!(fix_rx(&mut buf.clone(), OFFLOADS), Err(RxDrop::Gso));
        assert_eq!(fix_rx(&mut [0u8; 11], OFFLOADS), Err(RxDrop::Csum));
    }

    #[test]
    fn checksums_match_a_known_value() {
        // RFC 1071's example words, summed from offset 0 into a field
        // appended at the end (initially zero).
        let mut f = vec![0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0];
        assert!(complete_checksum(&mut f, 0, 8));
        // Sum 0x2ddf0 -> 0xddf2; complement 0x220d.
        assert_eq!(&f[8..], &[0x22, 0x0d]);
        assert!(!complete_checksum(&mut f, 4, 2));
        assert!(!complete_checksum(&mut f, 0, 9));
        assert!(!complete_checksum(&mut f, 0, usize::MAX));
    }
}
