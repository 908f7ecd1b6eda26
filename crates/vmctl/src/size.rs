//! Sizes as people write them (`512M`, `1.5G`) and as `vmctl status`
//! shows them: the scan_scaled(3) / fmt_scaled(3) conventions of OpenBSD,
//! in powers of 1024.

/// Unit letters in order of scale: bytes, kilo, mega, ... (powers of 1024).
const UNITS: [u8; 7] = *b"BKMGTPE";

pub const MIB: u64 = 1 << 20;

/// Parses a size: a number with an optional fraction and an optional unit
/// `B`, `K`, `M`, `G`, `T`, `P` or `E` (case-insensitive; powers of 1024;
/// bytes when there is none). `1.5G` is 1610612736. Fractions of a byte
/// are dropped.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size \"{s}\": expected a number with an optional unit K, M, G or T");
    let s_trim = s.trim();
    let int_end = s_trim
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(s_trim.len());
    let (int, rest) = s_trim.split_at(int_end);
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(r) => r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let shift = match unit.as_bytes() {
        [] => 0,
        [c] => match UNITS.iter().position(|u| u.eq_ignore_ascii_case(c)) {
            Some(i) => 10 * i as u32,
            None => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let too_large = || format!("invalid size \"{s}\": too large");
    let scale = 1u64 << shift;
    let whole = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(scale).ok_or_else(too_large)?;
    // The fraction, digit by digit: scale/10 + scale/100 + ... stays exact
    // enough and never overflows.
    let mut div = 1u128;
    for d in frac.bytes().take(18) {
        div *= 10;
        let part = u128::from(d - b'0') * u128::from(scale) / div;
        bytes = bytes.checked_add(part as u64).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Formats a byte count in at most four significant characters, as
/// fmt_scaled(3) does: `512B`, `1.0K`, `26.5M`, `512M`, `1.0G`, `0B`.
/// Below 100 units one decimal is shown; from 100 units on the number is
/// rounded to a whole one.
pub fn fmt_scaled(n: u64) -> String {
    if n == 0 {
        return "0B".into();
    }
    // The largest unit that leaves fewer than 1024 * 1024 of it... i.e. the
    // unit u such that n / 1024^u < 1024 (with bytes only below 1024).
    let mut unit = 0usize;
    while unit + 1 < UNITS.len() && n / 1024 >= 1u64 << (10 * unit) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{n}B");
    }
    let scale = 1u64 << (10 * unit);
    let mut whole = n / scale;
    // Tenths of a unit, rounded to nearest from the next unit down.
    let below = (n % scale) >> (10 * (unit - 1));
    let mut tenths = (10 * below + 512) / 1024;
    if tenths >= 10 {
        whole += 1;
        tenths = 0;
    }
    if whole >= 100 {
        if tenths >= 5 {
            whole += 1;
        }
        format!("{whole}{}", UNITS[unit] as char)
    } else {
        format!("{whole}.{tenths}{}", UNITS[unit] as char)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".5M"), Ok(512 << 10));
        assert_eq!(parse_size("1.25"), Ok(1));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
    }

    #[test]
    fn rejects_bad_sizes() {
        for s in ["", "M", "-1", "1X", "1MB", "1 G x", "1.2.3", "abc", "."] {
            assert!(parse_size(s).is_err(), "{s:?} parsed");
        }
        assert!(parse_size("16E").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn humanizes_like_fmt_scaled() {
        assert_eq!(fmt_scaled(0), "0B");
        assert_eq!(fmt_scaled(1), "1B");
        assert_eq!(fmt_scaled(1023), "1023B");
        assert_eq!(fmt_scaled(1024), "1.0K");
        assert_eq!(fmt_scaled(1536), "1.5K");
        assert_eq!(fmt_scaled(100 * 1024), "100K");
        assert_eq!(fmt_scaled(512 << 20), "512M");
        assert_eq!(fmt_scaled(1 << 30), "1.0G");
        assert_eq!(fmt_scaled(26 * MIB + MIB / 2), "26.5M");
        assert_eq!(fmt_scaled(3 << 29), "1.5G");
        // 1023.9K rounds up into the next whole K, as fmt_scaled does.
        assert_eq!(fmt_scaled(1024 * 1024 - 10), "1024K");
        // 9.96M: tenths round to 10, carrying into the whole part.
        assert_eq!(fmt_scaled(10 * MIB - 40 * 1024), "10.0M");
        assert_eq!(fmt_scaled(150 * MIB + 600 * 1024), "151M");
        assert_eq!(fmt_scaled(2 << 40), "2.0T");
        assert_eq!(fmt_scaled(u64::MAX), "16.0E");
    }
}
