//! Addressing of `local interface`s, exactly as OpenBSD's vmd does it.
//!
//! Source: OpenBSD `usr.sbin/vmd/priv.c`, `vm_priv_addr()` and
//! `vm_priv_addr6()` (and their caller `vm_priv_ifconfig()`, which gives the
//! host side its /31 and /96 netmasks). The rule, in vmd's own words:
//!
//! 1. "Encode the VM ID as a per-VM subnet range N, 100.64.N.0/24":
//!    `addr = vmid << 8`.
//! 2. "Assign a /31 subnet M per VM interface, 100.64.N.M/31. Each subnet
//!    contains exactly two IP addresses; skip the first subnet to avoid a
//!    gateway address ending with .0": `addr |= (idx + 1) * 2`.
//! 3. "Use the first address for the gateway, the second for the VM":
//!    `if (isvm) addr++`.
//! 4. "Convert to network byte order and add the prefix":
//!    `addr = htonl(addr) | prefix` (an OR, not an addition).
//! 5. "Validate the results: the address should not exceed the prefix (eg.
//!    VM ID to high); up to 126 interfaces can be encoded per VM":
//!    fails if `(addr & mask) != prefix || idx >= 0x7f`.
//!
//! IPv6 (`local inet6`, vm.conf(5); default prefix `fd00::/8`): start from the
//! IPv6 prefix, copy the *VM's* IPv4 address (from the rule above, `isvm` = 1,
//! for both sides) into bytes 8..12 ("Encode the VM IPv4 address as subnet,
//! fd00::NN:NN:0:0/96"), then set the last byte to 1 for the host side or 2
//! for the VM. vmd gives the host side a /96 mask. (vmd itself never checks
//! the IPv6 prefix length; its vm.conf parser accepts at most /64, which is
//! what [`local_addr6`] checks too, so the prefix never overlaps bytes 8..16.)
//!
//! One deliberate difference: vmd's check (step 5) lets an id that reaches
//! into the prefix bits through when those bits are already set in the
//! prefix, aliasing another VM's address; that is refused here (see
//! [`local_addr4`]).
//!
//! `vmid` is vmd's VM id (the one `vmctl status` shows, `vm->vm_vmid`), and
//! `idx` the interface's index in the VM's interface list, from 0.
//!
//! Worked example (default prefixes, VM id 1, first interface): host
//! 100.64.1.2/31, guest 100.64.1.3; IPv6 host fd00::6440:103:0:1/96, guest
//! fd00::6440:103:0:2.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// vm.conf(5): `local prefix` defaults to 100.64.0.0/10.
pub const DEFAULT_PREFIX4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// vm.conf(5): `local inet6 prefix` defaults to fd00::/8.
pub const DEFAULT_PREFIX6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8);
/// vmd accepts interface indexes below 0x7f (`idx >= 0x7f` is an error).
pub const MAX_INTERFACE_INDEX: u32 = 0x7e;
/// Prefix length of each side's IPv4 address (a point-to-point /31).
pub const PREFIX_LEN4: u8 = 31;
/// Prefix length vmd gives the host side's IPv6 address.
pub const PREFIX_LEN6: u8 = 96;

/// Why no address could be computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAddrError {
    /// The IPv4 prefix length is over 32 (or IPv6 over 64).
    BadPrefixLen(u8),
    /// The interface index is 0x7f or more.
    InterfaceIndex(u32),
    /// The VM id does not fit in the prefix ("dhcp address range exceeded").
    RangeExceeded { vmid: u32, idx: u32 },
}

impl fmt::Display for LocalAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPrefixLen(l) => write!(f, "invalid local prefix length /{l}"),
            Self::InterfaceIndex(i) => write!(
                f,
                "local interface index {i} out of range (at most {MAX_INTERFACE_INDEX})"
            ),
            Self::RangeExceeded { vmid, idx } => write!(
                f,
                "local prefix too small: address range exceeded for vm id {vmid} interface {idx}"
            ),
        }
    }
}

impl std::error::Error for LocalAddrError {}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// `vm_priv_addr()`: the IPv4 address of the host side (`is_vm` false) or the
/// guest (`is_vm` true) of interface `idx` of VM `vmid`, out of `prefix/len`.
/// The prefix's host bits are cleared first (vmd stores it masked).
pub fn local_addr4(
    prefix: Ipv4Addr,
    len: u8,
    vmid: u32,
    idx: u32,
    is_vm: bool,
) -> Result<Ipv4Addr, LocalAddrError> {
    if len > 32 {
        return Err(LocalAddrError::BadPrefixLen(len));
    }
    if idx >= 0x7f {
        return Err(LocalAddrError::InterfaceIndex(idx));
    }
    let mask = mask4(len);
    let prefix = u32::from(prefix) & mask;
    // vmd computes `vmid << 8` in 32 bits, where a large id would wrap around
    // and pass the check; compute it wide and refuse anything that does not fit.
    let mut addr = (u64::from(vmid) << 8) | u64::from((idx + 1) * 2);
    if is_vm {
        addr += 1;
    }
    let Ok(addr) = u32::try_from(addr) else {
        return Err(LocalAddrError::RangeExceeded { vmid, idx });
    };
    // vmd ORs the offset into the prefix and checks only that the prefix
    // bits are unchanged; an offset that reaches into the prefix bits can
    // then alias another VM's address (with 100.64.0.0/10, VM id 16385 would
    // get VM 1's 100.64.1.2, as 0x40 is already set in the prefix's second
    // octet). Refuse any offset outside the host bits instead.
    if addr & mask != 0 {
        return Err(LocalAddrError::RangeExceeded { vmid, idx });
    }
    let addr = addr | prefix;
    if addr & mask != prefix {
        return Err(LocalAddrError::RangeExceeded { vmid, idx });
    }
    Ok(Ipv4Addr::from(addr))
}

/// `vm_priv_addr6()`: the IPv6 address of the host side (`is_vm` false, last
/// byte 1) or the guest (last byte 2), out of `prefix6/len6`, with the guest's
/// IPv4 address from `prefix4/len4` in bytes 8..12.
pub fn local_addr6(
    prefix6: Ipv6Addr,
    len6: u8,
    prefix4: Ipv4Addr,
    len4: u8,
    vmid: u32,
    idx: u32,
    is_vm: bool,
) -> Result<Ipv6Addr, LocalAddrError> {
    if len6 > 64 {
        return Err(LocalAddrError::BadPrefixLen(len6));
    }
    let v4 = local_addr4(prefix4, len4, vmid, idx, true)?;
    let mask = if len6 == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len6))
    };
    let mut b = (u128::from(prefix6) & mask).to_be_bytes();
    b[8..12].copy_from_slice(&v4.octets());
    b[15] = if is_vm { 2 } else { 1 };
    Ok(Ipv6Addr::from(b))
}

/// Both sides of one local interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddrs {
    /// The host side (the tap): gateway and DNS for the guest; /31.
    pub host4: Ipv4Addr,
    /// The guest's address, handed out by the built-in DHCP server; /31.
    pub guest4: Ipv4Addr,
    /// With `local inet6`: the host side's IPv6 address (/96) and the guest's.
    pub inet6: Option<(Ipv6Addr, Ipv6Addr)>,
}

impl LocalAddrs {
    /// The /31 netmask both IPv4 sides use.
    pub fn netmask4(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask4(PREFIX_LEN4))
    }
}

/// The addresses of interface `idx` of VM `vmid`: IPv4 out of `prefix4`
/// (address, length), and IPv6 out of `prefix6` when `local inet6` is on.
pub fn local_addrs(
    prefix4: (Ipv4Addr, u8),
    prefix6: Option<(Ipv6Addr, u8)>,
    vmid: u32,
    idx: u32,
) -> Result<LocalAddrs, LocalAddrError> {
    let (p4, l4) = prefix4;
    let host4 = local_addr4(p4, l4, vmid, idx, false)?;
    let guest4 = local_addr4(p4, l4, vmid, idx, true)?;
    let inet6 = match prefix6 {
        Some((p6, l6)) => Some((
            local_addr6(p6, l6, p4, l4, vmid, idx, false)?,
            local_addr6(p6, l6, p4, l4, vmid, idx, true)?,
        )),
        None => None,
    };
    Ok(LocalAddrs {
        host4,
        guest4,
        inet6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_prefix_examples() {
        // The comment's own example: 100.64.N.M/31 with M = (idx + 1) * 2.
        let a = local_addrs(DEFAULT_PREFIX4, Some(DEFAULT_PREFIX6), 1, 0).unwrap();
        assert_eq!(a.host4, v4("100.64.1.2"));
        assert_eq!(a.guest4, v4("100.64.1.3"));
        assert_eq!(a.netmask4(), v4("255.255.255.254"));
        let (h6, g6) = a.inet6.unwrap();
        assert_eq!(h6, v6("fd00::6440:103:0:1"));
        assert_eq!(g6, v6("fd00::6440:103:0:2"));

        let a = local_addrs(DEFAULT_PREFIX4, None, 3, 2).unwrap();
        assert_eq!(a.host4, v4("100.64.3.6"));
        assert_eq!(a.guest4, v4("100.64.3.7"));
        assert_eq!(a.inet6, None);

        // VM id 0 is representable too (vmd ids start at 1, but the rule is total).
        let a = local_addrs(DEFAULT_PREFIX4, None, 0, 0).unwrap();
        assert_eq!((a.host4, a.guest4), (v4("100.64.0.2"), v4("100.64.0.3")));
        // ids above 255 carry into the third octet's neighbours: 100.64.0.0/10
        // leaves 14 bits for the id.
        let a = local_addrs(DEFAULT_PREFIX4, None, 256, 0).unwrap();
        assert_eq!(a.host4, v4("100.65.0.2"));
        let a = local_addrs(DEFAULT_PREFIX4, None, (1 << 14) - 1, 126).unwrap();
        assert_eq!(a.host4, v4("100.127.255.254"));
        assert_eq!(a.guest4, v4("100.127.255.255"));
    }

    #[test]
    fn limits() {
        assert_eq!(
            local_addrs(DEFAULT_PREFIX4, None, 1 << 14, 0),
            Err(LocalAddrError::RangeExceeded {
                vmid: 1 << 14,
                idx: 0
            })
        );
        assert_eq!(
            local_addrs(DEFAULT_PREFIX4, None, 1, 127),
            Err(LocalAddrError::InterfaceIndex(127))
        );
        assert!(local_addrs(DEFAULT_PREFIX4, None, 1, 126).is_ok());
        // A /24 prefix holds only VM id 0.
        let p = (v4("10.0.0.0"), 24);
        assert_eq!(local_addr4(p.0, p.1, 0, 0, true), Ok(v4("10.0.0.3")));
        assert!(local_addr4(p.0, p.1, 1, 0, false).is_err());
        // A /16 holds ids up to 255.
        let p = (v4("192.168.0.0"), 16);
        assert_eq!(
            local_addr4(p.0, p.1, 255, 0, false),
            Ok(v4("192.168.255.2"))
        );
        assert!(local_addr4(p.0, p.1, 256, 0, false).is_err());
        // A huge id that would wrap in vmd's 32-bit arithmetic is refused.
        assert!(local_addr4(v4("0.0.0.0"), 0, u32::MAX, 0, true).is_err());
        assert_eq!(
            local_addr4(v4("0.0.0.0"), 0, 0x00ff_ffff, 0, true),
            Ok(v4("255.255.255.3"))
        );
        assert_eq!(
            local_addr4(v4("10.0.0.0"), 33, 1, 0, true),
            Err(LocalAddrError::BadPrefixLen(33))
        );
        assert_eq!(
            local_addr6(v6("fd00::"), 65, v4("10.0.0.0"), 8, 1, 0, true),
            Err(LocalAddrError::BadPrefixLen(65))
        );
        // Host bits in the prefix are ignored, as vmd stores it masked.
        assert_eq!(
            local_addr4(v4("100.64.200.9"), 10, 1, 0, false),
            Ok(v4("100.64.1.2"))
        );
        // The IPv6 address fails when the IPv4 one does.
        assert!(local_addrs(DEFAULT_PREFIX4, Some(DEFAULT_PREFIX6), 1 << 14, 0).is_err());
        assert!(LocalAddrError::RangeExceeded { vmid: 1, idx: 0 }
            .to_string()
            .contains("too small"));
    }

    #[test]
    fn custom_inet6_prefix() {
        let a = local_addrs(
            (v4("10.0.0.0"), 8),
            Some((v6("fd12:3456:789a:1::"), 64)),
            2,
            1,
        )
        .unwrap();
        assert_eq!((a.host4, a.guest4), (v4("10.0.2.4"), v4("10.0.2.5")));
        let (h, g) = a.inet6.unwrap();
        assert_eq!(h, v6("fd12:3456:789a:1:a00:205:0:1"));
        assert_eq!(g, v6("fd12:3456:789a:1:a00:205:0:2"));
    }
}
