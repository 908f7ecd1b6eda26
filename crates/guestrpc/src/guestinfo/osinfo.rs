//! The detailed OS report, the value of `SetGuestInfo  11`
//! (INFO_OS_DETAILED), which modern vmtoolsd sends instead of keys 5 and 6
//! when the host takes it.
//!
//! # Layout
//! open-vm-tools' `HostinfoDetailedDataHeader` (lib/include/hostinfo.h) as
//! it lies in the guest's memory (x86: little-endian, the struct padded to
//! a multiple of 4), followed by the detailed data, a NUL-terminated string
//! of `name='value'` pairs (`prettyName='Debian GNU/Linux 12 (bookworm)'
//! familyName='Linux' ...`):
//!
//! ```text
//! offset  size
//!      0     4  version            HOSTINFO_STRUCT_HEADER_VERSION = 1
//!      4   129  shortName          NUL-terminated, e.g. "debian12-64" (key 6's value)
//!    133   513  fullName           NUL-terminated, e.g. "Linux 6.1.0 Debian ..." (key 5's)
//!    646     2  padding
//!    648     n  detailed data      NUL-terminated
//! ```
//!
//! vmtoolsd sends the header and the string with its NUL
//! (guestInfoServer.c, `GuestInfoSendData`): binary, so the host must not
//! cut the value at the first NUL as it does for the text keys.

use crate::BufferTooSmall;

/// `HOSTINFO_STRUCT_HEADER_VERSION`.
pub const HEADER_VERSION: u32 = 1;
/// Room for the short name with its NUL (`MAX_OS_NAME_LEN + 1`).
pub const SHORT_NAME_SIZE: usize = 129;
/// Room for the full name with its NUL (`MAX_OS_FULLNAME_LEN + 1`).
pub const FULL_NAME_SIZE: usize = 513;
/// Where the short name starts.
const SHORT_NAME_AT: usize = 4;
/// Where the full name starts.
const FULL_NAME_AT: usize = SHORT_NAME_AT + SHORT_NAME_SIZE;
/// `sizeof(HostinfoDetailedDataHeader)`: where the detailed data starts.
pub const HEADER_SIZE: usize = (FULL_NAME_AT + FULL_NAME_SIZE).next_multiple_of(4);

/// At most `size - 1` bytes of `s`, up to its first NUL: what `Str_Strcpy`
/// into a field of `size` bytes keeps room for.
fn field(s: &[u8], size: usize) -> &[u8] {
    let s = crate::text::until_nul(s);
    s.get(..size - 1).unwrap_or(s)
}

/// Writes the report (header, then `detailed` and its NUL) into `buf`;
/// its length. Names longer than their fields are cut to fit.
pub fn encode_os_detailed(
    buf: &mut [u8],
    short_name: &[u8],
    full_name: &[u8],
    detailed: &[u8],
) -> Result<usize, BufferTooSmall> {
    let detailed = crate::text::until_nul(detailed);
    let len = HEADER_SIZE + detailed.len() + 1;
    let out = buf.get_mut(..len).ok_or(BufferTooSmall)?;
    out.fill(0);
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = out.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, &HEADER_VERSION.to_le_bytes());
    put(SHORT_NAME_AT, field(short_name, SHORT_NAME_SIZE));
    put(FULL_NAME_AT, field(full_name, FULL_NAME_SIZE));
    put(HEADER_SIZE, detailed);
    Ok(len)
}

#[cfg(feature = "alloc")]
pub use decode::{decode_os_detailed, OsDetailed};

#[cfg(feature = "alloc")]
mod decode {
    use alloc::string::String;

    use super::*;
    use crate::text::until_nul;

    /// A decoded detailed OS report.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct OsDetailed {
        /// The short name (`debian12-64`), as key 6 would carry it.
        pub short_name: String,
        /// The full name, as key 5 would carry it.
        pub full_name: String,
        /// The `name='value'` pairs, as sent.
        pub detailed: String,
    }

    /// Decodes a report of [`HEADER_VERSION`]; `None` for anything shorter
    /// than the header or of another version. Strings are the guest's
    /// bytes up to their NUL (or the field's end), made valid UTF-8.
    pub fn decode_os_detailed(data: &[u8]) -> Option<OsDetailed> {
        let version = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
        if version != HEADER_VERSION {
            return None;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(until_nul(b)).into_owned();
        Some(OsDetailed {
            short_name: text(data.get(SHORT_NAME_AT..FULL_NAME_AT)?),
            full_name: text(data.get(FULL_NAME_AT..FULL_NAME_AT + FULL_NAME_SIZE)?),
            detailed: text(data.get(HEADER_SIZE..).unwrap_or_default()),
        })
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use alloc::vec;

    use super::*;

    #[test]
    fn layout_and_round_trip() {
        assert_eq!(HEADER_SIZE, 648, "sizeof(HostinfoDetailedDataHeader)");
        let mut buf = vec![0xAAu8; 1024];
        let n = encode_os_detailed(
            &mut buf,
            b"debian12-64",
            b"Linux 6.1.0 Debian GNU/Linux 12 (bookworm)",
            b"familyName='Linux' prettyName='Debian GNU/Linux 12 (bookworm)'",
        )
        .unwrap();
        assert_eq!(n, 648 + 62 + 1);
        assert_eq!(&buf[..4], &[1, 0, 0, 0]);
        assert_eq!(&buf[4..16], b"debian12-64\0");
        assert_eq!(&buf[133..138], b"Linux");
        assert_eq!(buf[n - 1], 0, "the string's NUL is sent");
        assert!(buf[646..648].iter().all(|&b| b == 0));
        let d = decode_os_detailed(&buf[..n]).unwrap();
        assert_eq!(d.short_name, "debian12-64");
        assert_eq!(d.full_name, "Linux 6.1.0 Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            d.detailed,
            "familyName='Linux' prettyName='Debian GNU/Linux 12 (bookworm)'"
        );
        assert_eq!(
            encode_os_detailed(&mut buf[..n - 1], b"a", b"b", &[b'x'; 62]),
            Err(BufferTooSmall)
        );
    }

    #[test]
    fn long_names_are_cut_and_bad_input_refused() {
        let mut buf = vec![0u8; 1024];
        let n = encode_os_detailed(&mut buf, &[b's'; 200], &[b'f'; 600], b"").unwrap();
        assert_eq!(n, HEADER_SIZE + 1);
        let d = decode_os_detailed(&buf[..n]).unwrap();
        assert_eq!(d.short_name.len(), 128);
        assert_eq!(d.full_name.len(), 512);
        assert_eq!(d.detailed, "");
        // No NUL anywhere: each field ends where it ends.
        let mut raw = vec![b'x'; 700];
        raw[..4].copy_from_slice(&1u32.to_le_bytes());
        let d = decode_os_detailed(&raw).unwrap();
        assert_eq!((d.short_name.len(), d.full_name.len()), (129, 513));
        assert_eq!(d.detailed.len(), 700 - 648);
        assert_eq!(decode_os_detailed(&raw[..645]), None);
        raw[0] = 2;
        assert_eq!(decode_os_detailed(&raw), None);
        assert_eq!(decode_os_detailed(b""), None);
    }
}
