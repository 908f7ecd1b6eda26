//! NicInfo version 3: the guest's NICs and addresses as XDR, the value of
//! `SetGuestInfo  10` (INFO_IPADDRESS_V3; OpenBSD vmt and vmtoolsd send it).
//!
//! # Layout
//! From open-vm-tools' `lib/guestRpc/nicinfo.x` (checked against it; the
//! limits are its constants):
//!
//! ```text
//! union GuestNicProto switch (NicInfoVersion ver) {   // ver = 3
//!    case NIC_INFO_V3: NicInfoV3 *nicInfoV3;          // optional: bool, then the struct
//! };
//! struct NicInfoV3 {
//!    GuestNicV3          nics<16>;                    // NICINFO_MAX_NICS
//!    InetCidrRouteEntry  routes<100>;                 // not decoded
//!    DnsConfigInfo      *dnsConfigInfo;               // not decoded
//!    WinsConfigInfo     *winsConfigInfo;              // not decoded
//!    DhcpConfigInfo     *dhcpConfigInfov4;            // not decoded
//!    DhcpConfigInfo     *dhcpConfigInfov6;            // not decoded
//! };
//! struct GuestNicV3 {
//!    string              macAddress<18>;              // NICINFO_MAC_LEN: "aa:bb:cc:dd:ee:ff"
//!    IpAddressEntry      ips<2048>;                   // NICINFO_MAX_IPS
//!    DnsConfigInfo      *dnsConfigInfo;
//!    WinsConfigInfo     *winsConfigInfo;
//!    DhcpConfigInfo     *dhcpConfigInfov4;
//!    DhcpConfigInfo     *dhcpConfigInfov6;
//! };
//! struct IpAddressEntry {
//!    TypedIpAddress      ipAddressAddr;
//!    unsigned int        ipAddressPrefixLength;
//!    IpAddressOrigin    *ipAddressOrigin;             // enum, optional
//!    IpAddressStatus    *ipAddressStatus;             // enum, optional
//! };
//! struct TypedIpAddress {
//!    InetAddressType     ipAddressAddrType;           // 1 = IPv4, 2 = IPv6
//!    opaque              ipAddressAddr<255>;          // network byte order
//! };
//! struct DnsConfigInfo {
//!    DnsHostname        *hostName;                    // string<255>
//!    DnsHostname        *domainName;
//!    TypedIpAddress      serverList<16>;
//!    DnsHostname         searchSuffixes<10>;
//! };
//! struct WinsConfigInfo { TypedIpAddress primary; TypedIpAddress secondary; };
//! struct DhcpConfigInfo { bool enabled; string dhcpSettings<16384>; };
//! ```
//!
//! The encoder keeps to the schema's limits (a real XDR decoder, VMware's,
//! rejects the whole report over one MAC string of 19 characters); the
//! decoder accepts somewhat larger ones (a MAC up to 64 bytes, longer
//! lists) so that a guest is not refused over a limit it got wrong; memory
//! stays bounded by the 64 KiB message either way.

use core::net::IpAddr;

use crate::xdr::Writer;
use crate::BufferTooSmall;

/// `NicInfoVersion` of this format.
pub const NIC_INFO_V3: u32 = 3;
/// `InetAddressType` of an IPv4 address (4 bytes).
pub const IAT_IPV4: u32 = 1;
/// `InetAddressType` of an IPv6 address (16 bytes).
pub const IAT_IPV6: u32 = 2;
/// `IpAddressStatus` "preferred": vmtoolsd's default for IPv4 addresses.
pub const IAS_PREFERRED: u32 = 1;
/// `IpAddressStatus` "unknown": vmtoolsd's default for IPv6 addresses.
pub const IAS_UNKNOWN: u32 = 5;
/// Most NICs in one report (`NICINFO_MAX_NICS`).
pub const MAX_NICS: u32 = 16;
/// Most addresses per NIC (`NICINFO_MAX_IPS`).
pub const MAX_IPS: u32 = 2048;
/// Longest MAC string in a report (`NICINFO_MAC_LEN`; vmtoolsd's
/// `aa:bb:cc:dd:ee:ff` has 17).
pub const NICINFO_MAC_LEN: usize = 18;
/// Longest MAC string the decoder accepts.
pub const MAX_MAC_LEN: u32 = 64;
/// Longest address opaque (`InetAddress<255>`).
pub const MAX_ADDR_LEN: u32 = 255;

/// One address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpEntry {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

/// One NIC to encode: borrowed, so a guest can build the report on its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicEntry<'a> {
    /// MAC as `aa:bb:cc:dd:ee:ff` (at most [`NICINFO_MAC_LEN`] bytes).
    pub mac: &'a str,
    /// Its addresses.
    pub addrs: &'a [IpEntry],
}

/// Why a report could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer is too small.
    BufferTooSmall,
    /// A MAC string longer than [`NICINFO_MAC_LEN`]: VMware's decoder would
    /// refuse the whole report.
    MacTooLong,
    /// More than [`MAX_NICS`] NICs.
    TooManyNics,
    /// More than [`MAX_IPS`] addresses on one NIC.
    TooManyAddrs,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EncodeError::BufferTooSmall => "buffer too small",
            EncodeError::MacTooLong => "MAC string longer than 18 characters",
            EncodeError::TooManyNics => "more than 16 NICs",
            EncodeError::TooManyAddrs => "more than 2048 addresses on a NIC",
        })
    }
}

impl From<BufferTooSmall> for EncodeError {
    fn from(_: BufferTooSmall) -> Self {
        EncodeError::BufferTooSmall
    }
}

/// What goes into each address entry's optional fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressStatus {
    /// Neither origin nor status, as OpenBSD's vmt(4) sends them.
    #[default]
    Absent,
    /// No origin, and the status vmtoolsd gives an address it has no better
    /// knowledge of: [`IAS_PREFERRED`] for IPv4, [`IAS_UNKNOWN`] for IPv6
    /// (open-vm-tools `GuestInfoAddIpAddress`).
    Vmtoolsd,
}

/// Encodes `GuestNicProto { ver: 3, nicsV3: Some(NicInfoV3 { nics, .. }) }`
/// into `buf` and returns its length. No routes, no DNS/WINS/DHCP data, and
/// no address origin or status: all optional, as in OpenBSD's report.
pub fn encode_v3(buf: &mut [u8], nics: &[NicEntry<'_>]) -> Result<usize, EncodeError> {
    encode_v3_with(buf, nics, AddressStatus::Absent)
}

/// [`encode_v3`] with the address entries' status as `status` says.
pub fn encode_v3_with(
    buf: &mut [u8],
    nics: &[NicEntry<'_>],
    status: AddressStatus,
) -> Result<usize, EncodeError> {
    if nics.len() > MAX_NICS as usize {
        return Err(EncodeError::TooManyNics);
    }
    let mut w = Writer::new(buf);
    w.u32(NIC_INFO_V3)?;
    w.bool(true)?;
    w.u32(nics.len() as u32)?;
    for nic in nics {
        if nic.mac.len() > NICINFO_MAC_LEN {
            return Err(EncodeError::MacTooLong);
        }
        if nic.addrs.len() > MAX_IPS as usize {
            return Err(EncodeError::TooManyAddrs);
        }
        w.opaque(nic.mac.as_bytes())?;
        w.u32(nic.addrs.len() as u32)?;
        for a in nic.addrs {
            let default_status = match a.addr {
                IpAddr::V4(v4) => {
                    w.u32(IAT_IPV4)?;
                    w.opaque(&v4.octets())?;
                    IAS_PREFERRED
                }
                IpAddr::V6(v6) => {
                    w.u32(IAT_IPV6)?;
                    w.opaque(&v6.octets())?;
                    IAS_UNKNOWN
                }
            };
            w.u32(u32::from(a.prefix_len))?;
            w.bool(false)?; // ipAddressOrigin
            match status {
                AddressStatus::Absent => w.bool(false)?,
                AddressStatus::Vmtoolsd => {
                    w.bool(true)?;
                    w.u32(default_status)?;
                }
            }
        }
        for _ in 0..4 {
            w.bool(false)?; // dnsConfigInfo, winsConfigInfo, dhcpConfigInfov4/v6
        }
    }
    w.u32(0)?; // routes
    for _ in 0..4 {
        w.bool(false)?; // dnsConfigInfo, winsConfigInfo, dhcpConfigInfov4/v6
    }
    Ok(w.len())
}

#[cfg(feature = "alloc")]
pub use decode::{decode_v3, Nic};

#[cfg(feature = "alloc")]
mod decode {
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::xdr::{Reader, XdrError};

    /// Longest host name, domain or DHCP settings string skipped over.
    const MAX_STRING: u32 = 65536;
    /// Most entries in a skipped list (DNS servers, search suffixes).
    const MAX_LIST: u32 = 1024;

    /// A decoded NIC.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    pub struct Nic {
        /// MAC address as the guest wrote it (not validated).
        pub mac: String,
        /// Its IPv4 and IPv6 addresses; other address types are skipped.
        pub addrs: Vec<IpEntry>,
    }

    /// Decodes the NICs of a `GuestNicProto` version 3; what follows them
    /// (routes, global DNS/WINS/DHCP) is not needed and not read, and
    /// trailing bytes are ignored. Never panics; allocation is bounded by
    /// the input length.
    pub fn decode_v3(data: &[u8]) -> Result<Vec<Nic>, XdrError> {
        let mut r = Reader::new(data);
        if r.u32()? != NIC_INFO_V3 {
            return Err(XdrError::BadValue);
        }
        let Some(count) = r.optional(|r| r.count(MAX_NICS))? else {
            return Ok(Vec::new());
        };
        let mut nics = Vec::new();
        for _ in 0..count {
            nics.push(nic(&mut r)?);
        }
        Ok(nics)
    }

    fn nic(r: &mut Reader<'_>) -> Result<Nic, XdrError> {
        let mac = String::from_utf8_lossy(r.opaque(MAX_MAC_LEN)?).into_owned();
        let n = r.count(MAX_IPS)?;
        let mut addrs = Vec::new();
        for _ in 0..n {
            let addr = typed_addr(r)?;
            let prefix = r.u32()?;
            r.optional(Reader::u32)?; // origin
            r.optional(Reader::u32)?; // status
            if let Some(addr) = addr {
                addrs.push(IpEntry {
                    addr,
                    prefix_len: u8::try_from(prefix).unwrap_or(u8::MAX),
                });
            }
        }
        r.optional(skip_dns)?;
        r.optional(skip_wins)?;
        r.optional(skip_dhcp)?;
        r.optional(skip_dhcp)?;
        Ok(Nic { mac, addrs })
    }

    /// A `TypedIpAddress`: `Some` for well-formed IPv4/IPv6, `None` for other
    /// types (zoned, DNS names) which are skipped rather than refused.
    fn typed_addr(r: &mut Reader<'_>) -> Result<Option<IpAddr>, XdrError> {
        let kind = r.u32()?;
        let bytes = r.opaque(MAX_ADDR_LEN)?;
        Ok(match (kind, bytes.len()) {
            (IAT_IPV4, 4) => {
                let mut o = [0u8; 4];
                o.copy_from_slice(bytes);
                Some(IpAddr::V4(Ipv4Addr::from(o)))
            }
            (IAT_IPV6, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(bytes);
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        })
    }

    fn skip_dns(r: &mut Reader<'_>) -> Result<(), XdrError> {
        r.optional(|r| r.opaque(MAX_STRING))?; // hostName
        r.optional(|r| r.opaque(MAX_STRING))?; // domainName
        for _ in 0..r.count(MAX_LIST)? {
            typed_addr(r)?; // serverList
        }
        for _ in 0..r.count(MAX_LIST)? {
            r.opaque(MAX_STRING)?; // searchSuffixes
        }
        Ok(())
    }

    fn skip_wins(r: &mut Reader<'_>) -> Result<(), XdrError> {
        typed_addr(r)?;
        typed_addr(r)?;
        Ok(())
    }

    fn skip_dhcp(r: &mut Reader<'_>) -> Result<(), XdrError> {
        r.bool()?;
        r.opaque(MAX_STRING)?;
        Ok(())
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::xdr::XdrError;

    fn sample() -> (Vec<IpEntry>, Vec<IpEntry>) {
        (
            vec![
                IpEntry {
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                    prefix_len: 24,
                },
                IpEntry {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix_len: 128,
                },
            ],
            vec![],
        )
    }

    #[test]
    fn round_trip() {
        let (a, b) = sample();
        let nics = [
            NicEntry {
                mac: "00:11:22:33:44:55",
                addrs: &a,
            },
            NicEntry {
                mac: "00:11:22:33:44:66",
                addrs: &b,
            },
        ];
        let mut buf = [0u8; 512];
        let n = encode_v3(&mut buf, &nics).unwrap();
        let got = decode_v3(&buf[..n]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mac, "00:11:22:33:44:55");
        assert_eq!(got[0].addrs, a);
        assert!(got[1].addrs.is_empty());
        // Every proper prefix is truncated data, never a panic.
        for cut in 0..n {
            assert!(
                decode_v3(&buf[..cut]).is_err() || cut >= n - 20,
                "cut {cut}"
            );
        }
        assert_eq!(
            encode_v3(&mut buf[..n - 1], &nics),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn exact_bytes_of_one_ipv4() {
        let a = [IpEntry {
            addr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
            prefix_len: 24,
        }];
        let mut buf = [0u8; 256];
        let n = encode_v3(
            &mut buf,
            &[NicEntry {
                mac: "aa:bb:cc:dd:ee:ff",
                addrs: &a,
            }],
        )
        .unwrap();
        let mut want: Vec<u8> = Vec::new();
        for w in [3u32, 1, 1, 17] {
            want.extend_from_slice(&w.to_be_bytes());
        }
        want.extend_from_slice(b"aa:bb:cc:dd:ee:ff\0\0\0");
        for w in [1u32, 1, 4] {
            want.extend_from_slice(&w.to_be_bytes());
        }
        want.extend_from_slice(&[192, 168, 1, 2]);
        for w in [24u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
            want.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(&buf[..n], &want[..]);
    }

    #[test]
    fn rejects_other_versions_and_limits() {
        assert_eq!(decode_v3(&2u32.to_be_bytes()), Err(XdrError::BadValue));
        let mut d = Vec::new();
        for w in [3u32, 1, 17] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_v3(&d), Err(XdrError::TooLong));
        let mut d = Vec::new();
        for w in [3u32, 0] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_v3(&d), Ok(Vec::new()));
    }

    #[test]
    fn skips_per_nic_options() {
        let mut d = Vec::new();
        let words = |d: &mut Vec<u8>, ws: &[u32]| {
            for w in ws {
                d.extend_from_slice(&w.to_be_bytes());
            }
        };
        words(&mut d, &[3, 1, 1, 4]);
        d.extend_from_slice(b"m:ac");
        words(&mut d, &[1, 1, 4, 0x0a00_0001, 8, 1, 4, 1, 1]);
        // dns: hostName "h", no domain, one server, one suffix "s"
        words(&mut d, &[1, 1, 1]);
        d.extend_from_slice(b"h\0\0\0");
        words(&mut d, &[0, 1, 1, 4, 0x0808_0808, 1, 1]);
        d.extend_from_slice(b"s\0\0\0");
        // wins
        words(&mut d, &[1, 1, 4, 1, 1, 4, 2]);
        // dhcp v4, v6
        words(&mut d, &[1, 1, 0, 1, 0, 0]);
        let nics = decode_v3(&d).unwrap();
        assert_eq!(nics[0].mac, "m:ac");
        assert_eq!(
            nics[0].addrs[0].addr,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(nics[0].addrs[0].prefix_len, 8);
    }

    /// The schema's limits hold on the encoding side: a MAC string of 19
    /// characters (which VMware's decoder refuses, and the whole report
    /// with it), a 17th NIC, a 2049th address.
    #[test]
    fn the_encoder_keeps_to_the_schema() {
        let mut buf = vec![0u8; 1 << 17];
        let long = [NicEntry {
            mac: "00:11:22:33:44:55:6",
            addrs: &[],
        }];
        assert_eq!(encode_v3(&mut buf, &long), Err(EncodeError::MacTooLong));
        let at_limit = [NicEntry {
            mac: "00:11:22:33:44:55:",
            addrs: &[],
        }];
        let n = encode_v3(&mut buf, &at_limit).unwrap();
        assert_eq!(decode_v3(&buf[..n]).unwrap()[0].mac.len(), NICINFO_MAC_LEN);
        let nic = NicEntry {
            mac: "00:11:22:33:44:55",
            addrs: &[],
        };
        assert_eq!(
            encode_v3(&mut buf, &[nic; 17]),
            Err(EncodeError::TooManyNics)
        );
        assert!(encode_v3(&mut buf, &[nic; 16]).is_ok());
        let one = IpEntry {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            prefix_len: 8,
        };
        let many = vec![one; MAX_IPS as usize + 1];
        let nic = NicEntry {
            mac: "00:11:22:33:44:55",
            addrs: &many,
        };
        assert_eq!(encode_v3(&mut buf, &[nic]), Err(EncodeError::TooManyAddrs));
        let nic = NicEntry {
            mac: "00:11:22:33:44:55",
            addrs: &many[1..],
        };
        assert!(encode_v3(&mut buf, &[nic]).is_ok());
    }

    /// vmtoolsd's entries: no origin, status "preferred" for IPv4 and
    /// "unknown" for IPv6; the decoder reads them as any other.
    #[test]
    fn vmtoolsd_address_status() {
        let (a, _) = sample();
        let mut buf = [0u8; 512];
        let nics = [NicEntry {
            mac: "00:11:22:33:44:55",
            addrs: &a,
        }];
        let n = encode_v3_with(&mut buf, &nics, AddressStatus::Vmtoolsd).unwrap();
        let bare = encode_v3(&mut [0u8; 512], &nics).unwrap();
        assert_eq!(n, bare + 8, "one status word and its flag more per address");
        let words: Vec<u32> = buf[..n]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        // version, present, 1 NIC, its MAC (1 + 5 words), 2 addresses;
        // the IPv4 entry: type, length, address, prefix, origin absent,
        // status present.
        assert_eq!(&words[..4], &[3, 1, 1, 17]);
        assert_eq!(words[9], 2);
        assert_eq!(
            &words[10..17],
            &[1, 4, 0x0a00_0005, 24, 0, 1, IAS_PREFERRED]
        );
        assert_eq!(&words[17..19], &[2, 16]);
        assert_eq!(&words[23..27], &[128, 0, 1, IAS_UNKNOWN]);
        assert_eq!(decode_v3(&buf[..n]).unwrap()[0].addrs, a);
    }
}
