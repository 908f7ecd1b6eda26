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

/// A locally administered unicast MAC for interface `index` of a VM
/// known by `key` (its name): stable across restarts, different between
/// VMs and interfaces, in the fe:e1:ba range OpenBSD's vmd uses.
pub fn stable_mac(key: &[u8], index: u8) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(std::iter::once(&index)) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0xfe, 0xe1, 0xba, b[0], b[1], b[2]]
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

    #[test]
    fn stable_macs_are_local_unicast_and_distinct() {
        let a = stable_mac(b"web1", 0);
        assert_eq!(a, stable_mac(b"web1", 0));
        assert_ne!(a, stable_mac(b"web1", 1));
        assert_ne!(a, stable_mac(b"web2", 0));
        assert_eq!(a[0] & 3, 2, "locally administered, unicast");
    }
}
