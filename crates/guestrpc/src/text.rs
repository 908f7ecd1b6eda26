//! Byte-string helpers for the text parts of the protocol.
//!
//! Guest messages are bytes, not UTF-8, and often carry a trailing NUL or a
//! whole NUL-padded buffer (§4), so parsing works on `&[u8]` and never
//! indexes: every split point comes from a search in the same slice.

// Some helpers serve only the host side.
#![cfg_attr(not(feature = "alloc"), allow(dead_code))]

/// The text before the first NUL (all of `b` when there is none).
pub(crate) fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => b.get(..i).unwrap_or(b),
        None => b,
    }
}

/// Splits at the first space: the word before it and, when there is a space,
/// everything after it (possibly empty).
pub(crate) fn split_word(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == b' ') {
        Some(i) => (b.get(..i).unwrap_or(b), b.get(i + 1..)),
        None => (b, None),
    }
}

/// `b` without leading spaces.
pub(crate) fn skip_spaces(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
    b.get(start..).unwrap_or(&[])
}

/// `b` without leading or trailing ASCII whitespace.
pub(crate) fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// A decimal number that makes up all of `b` (after trimming whitespace).
pub(crate) fn parse_u64(b: &[u8]) -> Option<u64> {
    core::str::from_utf8(trim(b)).ok()?.parse().ok()
}

/// As [`parse_u64`], for 32-bit values.
pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    core::str::from_utf8(trim(b)).ok()?.parse().ok()
}

/// The longest valid UTF-8 prefix of `b`: used where a `&str` must be
/// produced without allocating and a malformed tail can only be dropped.
pub(crate) fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => b
            .get(..e.valid_up_to())
            .and_then(|p| core::str::from_utf8(p).ok())
            .unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(until_nul(b"ab\0cd"), b"ab");
        assert_eq!(until_nul(b"ab"), b"ab");
        assert_eq!(
            split_word(b"info-get x y"),
            (&b"info-get"[..], Some(&b"x y"[..]))
        );
        assert_eq!(split_word(b"ping"), (&b"ping"[..], None));
        assert_eq!(split_word(b"log "), (&b"log"[..], Some(&b""[..])));
        assert_eq!(skip_spaces(b"  7 x"), b"7 x");
        assert_eq!(skip_spaces(b"   "), b"");
        assert_eq!(parse_u32(b" 42\n"), Some(42));
        assert_eq!(parse_u32(b"4x"), None);
        assert_eq!(utf8_prefix(b"ok\xffno"), "ok");
    }
}
