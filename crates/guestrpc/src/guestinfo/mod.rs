//! What the guest tells the host about itself: the `SetGuestInfo` RPCI
//! (§4) and, in [`nicinfo`], the XDR NIC list it carries for key 10, in
//! [`osinfo`] the detailed OS report of key 11.

pub mod nicinfo;
pub mod osinfo;

use core::fmt::Write;

use crate::writer::SliceWriter;
use crate::BufferTooSmall;

/// The RPCI command name. Requests are `"SetGuestInfo  <key> <value>"`, with
/// two spaces: the tools format it as `"%s  %d "`.
pub const SET_GUEST_INFO: &str = "SetGuestInfo";

/// `SetGuestInfo` keys (open-vm-tools guestInfo.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GuestInfoKey {
    /// The guest's host name.
    DnsName = 1,
    /// One IPv4 address, dotted quad.
    IpAddress = 2,
    /// Free disk space.
    DiskFree = 3,
    /// Tools build number.
    BuildNumber = 4,
    /// Full OS name (vmt: "ostype osrelease osversion/arch").
    OsNameFull = 5,
    /// Short OS name (vmt: "FreeBSD", NetBSD: "other-64").
    OsName = 6,
    /// Uptime in 1/100 s.
    Uptime = 7,
    /// Memory.
    Memory = 8,
    /// NIC list, XDR version 2 (binary).
    IpAddressV2 = 9,
    /// NIC list, XDR version 3 (binary; see [`nicinfo`]).
    IpAddressV3 = 10,
    /// Detailed OS information (binary; see [`osinfo`]).
    OsDetailed = 11,
}

impl GuestInfoKey {
    /// The key for its wire number.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => GuestInfoKey::DnsName,
            2 => GuestInfoKey::IpAddress,
            3 => GuestInfoKey::DiskFree,
            4 => GuestInfoKey::BuildNumber,
            5 => GuestInfoKey::OsNameFull,
            6 => GuestInfoKey::OsName,
            7 => GuestInfoKey::Uptime,
            8 => GuestInfoKey::Memory,
            9 => GuestInfoKey::IpAddressV2,
            10 => GuestInfoKey::IpAddressV3,
            11 => GuestInfoKey::OsDetailed,
            _ => return None,
        })
    }

    /// Whether the value is binary (XDR, or key 11's C struct), which
    /// contains NULs and so must not be cut at the first one like the text
    /// values are.
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            GuestInfoKey::IpAddressV2 | GuestInfoKey::IpAddressV3 | GuestInfoKey::OsDetailed
        )
    }
}

/// Writes `"SetGuestInfo  <key> "` into `w`.
fn write_header(w: &mut SliceWriter<'_>, key: GuestInfoKey) -> Result<(), BufferTooSmall> {
    write!(w, "{SET_GUEST_INFO}  {} ", key as u32).map_err(|_| BufferTooSmall)
}

/// Formats `"SetGuestInfo  <key> <value>"` into `buf` and returns it.
///
/// The host replies exactly `"1 "` on success.
pub fn format_set_guest_info<'a>(
    buf: &'a mut [u8],
    key: GuestInfoKey,
    value: &[u8],
) -> Result<&'a [u8], BufferTooSmall> {
    let mut w = SliceWriter::new(buf);
    write_header(&mut w, key)?;
    w.write_bytes(value)?;
    Ok(w.into_written())
}

/// Formats the key-10 request, `"SetGuestInfo  10 "` followed by the NicInfo
/// v3 XDR of `nics` (no address status, as OpenBSD's vmt(4)), into `buf`.
pub fn format_set_guest_info_nics<'a>(
    buf: &'a mut [u8],
    nics: &[nicinfo::NicEntry<'_>],
) -> Result<&'a [u8], nicinfo::EncodeError> {
    format_set_guest_info_nics_with(buf, nics, nicinfo::AddressStatus::Absent)
}

/// [`format_set_guest_info_nics`] with the address entries' status as
/// `status` says (vmtoolsd's: [`nicinfo::AddressStatus::Vmtoolsd`]).
pub fn format_set_guest_info_nics_with<'a>(
    buf: &'a mut [u8],
    nics: &[nicinfo::NicEntry<'_>],
    status: nicinfo::AddressStatus,
) -> Result<&'a [u8], nicinfo::EncodeError> {
    let mut w = SliceWriter::new(buf);
    write_header(&mut w, GuestInfoKey::IpAddressV3)?;
    let n = nicinfo::encode_v3_with(w.spare(), nics, status)?;
    w.advance(n)?;
    Ok(w.into_written())
}

/// Formats the key-11 request, `"SetGuestInfo  11 "` followed by the
/// detailed OS report ([`osinfo`]), into `buf`.
pub fn format_set_guest_info_os<'a>(
    buf: &'a mut [u8],
    short_name: &[u8],
    full_name: &[u8],
    detailed: &[u8],
) -> Result<&'a [u8], BufferTooSmall> {
    let mut w = SliceWriter::new(buf);
    write_header(&mut w, GuestInfoKey::OsDetailed)?;
    let n = osinfo::encode_os_detailed(w.spare(), short_name, full_name, detailed)?;
    w.advance(n)?;
    Ok(w.into_written())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_spaces() {
        let mut buf = [0u8; 64];
        let out = format_set_guest_info(&mut buf, GuestInfoKey::Uptime, b"4200").unwrap();
        assert_eq!(out, b"SetGuestInfo  7 4200");
        assert_eq!(
            format_set_guest_info(&mut [0u8; 10], GuestInfoKey::Uptime, b"1"),
            Err(BufferTooSmall)
        );
    }

    #[test]
    fn keys() {
        for n in 1..=11 {
            assert_eq!(GuestInfoKey::from_u32(n).map(|k| k as u32), Some(n));
        }
        assert_eq!(GuestInfoKey::from_u32(12), None);
        assert!(GuestInfoKey::IpAddressV3.is_binary());
        assert!(GuestInfoKey::OsDetailed.is_binary());
        assert!(!GuestInfoKey::DnsName.is_binary());
    }
}
