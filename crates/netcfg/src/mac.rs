//! The MAC address a VM interface gets when vm.conf gives it no `lladdr`.

/// A locally administered unicast MAC for interface `index` of a VM
/// known by `key` (its name): stable across restarts (a guest's DHCP
/// lease and its udev names survive them), different between VMs and
/// interfaces, in the fe:e1:ba range OpenBSD's vmd uses.
pub fn stable_mac(key: &[u8], index: u8) -> [u8; 6] {
    // FNV-1a: small, stable across releases (unlike std's hasher).
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
    fn stable_macs_are_local_unicast_and_distinct() {
        let a = stable_mac(b"web1", 0);
        assert_eq!(a, stable_mac(b"web1", 0));
        assert_ne!(a, stable_mac(b"web1", 1));
        assert_ne!(a, stable_mac(b"web2", 0));
        assert_eq!(a[0] & 3, 2, "locally administered, unicast");
        // Pinned: a MAC that changed between releases would change guests'
        // leases and interface names.
        assert_eq!(&a[..3], &[0xfe, 0xe1, 0xba]);
    }
}
