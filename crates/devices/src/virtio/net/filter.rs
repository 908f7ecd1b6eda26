//! What the device lets through from the guest, decided without I/O.

/// Bytes of an Ethernet header (destination, source, type).
pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag adds four bytes to a frame of a given MTU.
const VLAN_TAG: usize = 4;
/// The longest GSO frame (TSO: one TCP segment the kernel cuts up): the
/// largest IP datagram, with its Ethernet and 802.1Q headers.
pub const MAX_GSO_FRAME: usize = ETH_HLEN + VLAN_TAG + 65535;

/// Why a frame from the guest was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than the MTU allows (a GSO frame: longer than
    /// [`MAX_GSO_FRAME`]).
    Giant,
    /// A source MAC other than the interface's, on a locked interface.
    Spoofed,
}

/// Checks a frame (without the virtio header) the guest wants to send;
/// `gso`: its header asks for segmentation, so the frame may exceed the
/// MTU (each segment the kernel makes of it will not).
pub fn check_tx(frame: &[u8], gso: bool, mtu: u16, mac: &[u8; 6], locked: bool) -> Verdict {
    if frame.len() < ETH_HLEN {
        return Verdict::Runt;
    }
    let max = if gso {
        MAX_GSO_FRAME
    } else {
        ETH_HLEN + VLAN_TAG + usize::from(mtu)
    };
    if frame.len() > max {
        return Verdict::Giant;
    }
    if locked && frame[6..12] != mac[..] {
        return Verdict::Spoofed;
    }
    Verdict::Pass
}

/// Checks a TSO frame's headers against what its virtio header says
/// (`csum_start`, the MSS `gso_size`, TCP over IPv4 or, `v6`, IPv6): the
/// segments the kernel cuts from it must each fit the MTU, as a plain
/// frame must. They are the frame's link, IP and TCP headers and up to
/// `gso_size` bytes, the kernel finding the headers in the frame itself,
/// so the headers must be where `csum_start` says: TCP right after the
/// IP header (no IPv6 extension headers).
pub fn check_gso(frame: &[u8], csum_start: u16, gso_size: u16, v6: bool, mtu: u16) -> Verdict {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (l3, ethertype) = match be16(12) {
        Some(0x8100) => (ETH_HLEN + VLAN_TAG, be16(16)),
        t => (ETH_HLEN, t),
    };
    let Some(&ver_ihl) = frame.get(l3) else {
        return Verdict::Giant;
    };
    let l4 = if v6 {
        if ethertype != Some(0x86dd) || ver_ihl >> 4 != 6 || frame.get(l3 + 6) != Some(&6) {
            return Verdict::Giant;
        }
        l3 + 40
    } else {
        let ihl = usize::from(ver_ihl & 0xf) * 4;
        if ethertype != Some(0x0800)
            || ver_ihl >> 4 != 4
            || ihl < 20
            || frame.get(l3 + 9) != Some(&6)
        {
            return Verdict::Giant;
        }
        l3 + ihl
    };
    let Some(&doff) = frame.get(l4 + 12) else {
        return Verdict::Giant;
    };
    let tcp = usize::from(doff >> 4) * 4;
    if usize::from(csum_start) != l4 || tcp < 20 || l4 + tcp > frame.len() {
        return Verdict::Giant;
    }
    if l4 + tcp + usize::from(gso_size) > l3 + usize::from(mtu) {
        return Verdict::Giant;
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        let mac = [2, 0, 0, 0, 0, 1];
        let mut f = vec![0u8; 60];
        f[6..12].copy_from_slice(&mac);
        assert_eq!(check_tx(&f, false, 1500, &mac, true), Verdict::Pass);
        assert_eq!(check_tx(&f[..13], false, 1500, &mac, false), Verdict::Runt);
        assert_eq!(check_tx(&f[..13], true, 1500, &mac, false), Verdict::Runt);
        assert_eq!(
            check_tx(&vec![0; 1519], false, 1500, &mac, false),
            Verdict::Giant
        );
        assert_eq!(
            check_tx(&vec![0; 1518], false, 1500, &mac, false),
            Verdict::Pass
        );
        f[11] = 2;
        assert_eq!(check_tx(&f, false, 1500, &mac, true), Verdict::Spoofed);
        assert_eq!(check_tx(&f, true, 1500, &mac, true), Verdict::Spoofed);
        assert_eq!(check_tx(&f, false, 1500, &mac, false), Verdict::Pass);
    }

    #[test]
    fn gso_frames_may_exceed_the_mtu_up_to_64k() {
        let mac = [2, 0, 0, 0, 0, 1];
        let mut f = vec![0u8; MAX_GSO_FRAME];
        f[6..12].copy_from_slice(&mac);
        assert_eq!(check_tx(&f, true, 1500, &mac, true), Verdict::Pass);
        assert_eq!(check_tx(&f[..9000], true, 1500, &mac, true), Verdict::Pass);
        assert_eq!(
            check_tx(&f[..9000], false, 1500, &mac, true),
            Verdict::Giant
        );
        f.push(0);
        assert_eq!(check_tx(&f, true, 1500, &mac, true), Verdict::Giant);
    }

    /// A TCP/IPv4 (or IPv6) frame of `payload` bytes.
    fn tcp(v6: bool, vlan: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0, 0, 5]);
        }
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 6, 64]);
            f.resize(f.len() + 32, 0);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6]);
            f.resize(f.len() + 10, 0);
        }
        let mut t = [0u8; 20];
        t[12] = 5 << 4;
        f.extend_from_slice(&t);
        f.resize(f.len() + payload, 0);
        f
    }

    #[test]
    fn tso_segments_must_fit_the_mtu() {
        let f = tcp(false, false, 9000);
        // 14 + 20 + 20 + 1460 = 1514: a full-sized segment.
        assert_eq!(check_gso(&f, 34, 1460, false, 1500), Verdict::Pass);
        assert_eq!(check_gso(&f, 34, 1448, false, 1500), Verdict::Pass);
        assert_eq!(check_gso(&f, 34, 1461, false, 1500), Verdict::Giant);
        assert_eq!(check_gso(&f, 34, 8960, false, 9000), Verdict::Pass);
        // The headers must be where csum_start says, and be TCP/IPv4.
        assert_eq!(check_gso(&f, 30, 1400, false, 1500), Verdict::Giant);
        assert_eq!(check_gso(&f, 34, 1400, true, 1500), Verdict::Giant);
        let mut udp = f.clone();
        udp[23] = 17;
        assert_eq!(check_gso(&udp, 34, 1400, false, 1500), Verdict::Giant);
        // IP options and TCP options count.
        let mut opts = f.clone();
        opts[14] = 0x46;
        opts[38 + 12] = 6 << 4;
        assert_eq!(check_gso(&opts, 38, 1452, false, 1500), Verdict::Pass);
        assert_eq!(check_gso(&opts, 38, 1453, false, 1500), Verdict::Giant);
        // A VLAN tag is not part of the MTU.
        let v = tcp(false, true, 9000);
        assert_eq!(check_gso(&v, 38, 1460, false, 1500), Verdict::Pass);
        assert_eq!(check_gso(&v, 38, 1461, false, 1500), Verdict::Giant);
        // IPv6: 40 bytes of header, no extension headers.
        let f6 = tcp(true, false, 9000);
        assert_eq!(check_gso(&f6, 54, 1440, true, 1500), Verdict::Pass);
        assert_eq!(check_gso(&f6, 54, 1441, true, 1500), Verdict::Giant);
        let mut ext = f6.clone();
        ext[20] = 0; // hop-by-hop options first
        assert_eq!(check_gso(&ext, 54, 1000, true, 1500), Verdict::Giant);
        // Truncated headers.
        assert_eq!(check_gso(&f[..40], 34, 100, false, 1500), Verdict::Giant);
        assert_eq!(check_gso(&f[..10], 34, 100, false, 1500), Verdict::Giant);
    }
}
