//! Sizes with a unit, like scan_scaled(3): `512M`, `1g`, `1.5G`, `2048K`, `1073741824`.

use crate::types::{MIB, MIN_MEMORY};

/// Parses a size for memory (`memory`, `vmctl start -m`) or a disk image (`vmctl create -s`).
///
/// A number of bytes, optionally with a fraction and one of the units `B`, `K`, `M`, `G`, `T`
/// (any case, powers of 1024). The result is rounded up to a whole MiB and must be at least
/// [`MIN_MEMORY`] (2M). The error names the input: `invalid size "12Q": unknown unit "Q"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_scaled(s).map_err(|why| format!("invalid size \"{s}\": {why}"))?;
    let rounded = bytes
        .div_ceil(MIB)
        .checked_mul(MIB)
        .ok_or_else(|| format!("invalid size \"{s}\": too large"))?;
    if rounded < MIN_MEMORY {
        return Err(format!(
            "invalid size \"{s}\": must be at least {}",
            format_size(MIN_MEMORY)
        ));
    }
    Ok(rounded)
}

/// Bytes, before any rounding.
fn parse_scaled(s: &str) -> Result<u64, String> {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int, rest) = s.split_at(int_end);
    if int.is_empty() {
        return Err("expected a number with an optional unit B, K, M, G or T".into());
    }
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            r.split_at(end)
        }
        None => ("", rest),
    };
    let shift = match unit {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        u => {
            return Err(if u.chars().count() == 1 {
                format!("unknown unit \"{u}\" (use B, K, M, G or T)")
            } else {
                format!("unknown unit \"{u}\" (one letter of B, K, M, G or T)")
            })
        }
    };
    let too_large = || "too large".to_string();
    let scale = 1u64 << shift;
    let whole: u64 = int.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(scale).ok_or_else(too_large)?;
    // The fraction, exactly: digits / 10^n * scale, rounded down. Only the first 12 digits
    // count (scale < 2^41, so the product fits in a u128 easily).
    let digits = &frac[..frac.len().min(12)];
    if !digits.is_empty() {
        let num: u128 = digits.parse().map_err(|_| too_large())?;
        let den = 10u128.pow(digits.len() as u32);
        let part = (num * scale as u128 / den) as u64;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// The shortest exact form of a size: `512M`, `1G`, `1536M`, `4096` (bytes).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        let scale = 1u64 << shift;
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("512m"), Ok(512 * MIB));
        assert_eq!(parse_size("1g"), Ok(1024 * MIB));
        assert_eq!(parse_size("1G"), Ok(1024 * MIB));
        assert_eq!(parse_size("2048K"), Ok(2 * MIB));
        assert_eq!(parse_size("2048k"), Ok(2 * MIB));
        assert_eq!(parse_size("1073741824"), Ok(1024 * MIB));
        assert_eq!(parse_size("1073741824B"), Ok(1024 * MIB));
        assert_eq!(parse_size("1t"), Ok(1024 * 1024 * MIB));
        assert_eq!(parse_size("1.5G"), Ok(1536 * MIB));
        assert_eq!(parse_size("2.M"), Ok(2 * MIB));
    }

    #[test]
    fn rounds_up_to_mib() {
        assert_eq!(parse_size("2097153"), Ok(3 * MIB));
        assert_eq!(parse_size("3000K"), Ok(3 * MIB));
        assert_eq!(parse_size("2.0001M"), Ok(3 * MIB));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_size("0"),
            Err("invalid size \"0\": must be at least 2M".into())
        );
        assert_eq!(
            parse_size("1M"),
            Err("invalid size \"1M\": must be at least 2M".into())
        );
        assert_eq!(
            parse_size("12Q"),
            Err("invalid size \"12Q\": unknown unit \"Q\" (use B, K, M, G or T)".into())
        );
        assert_eq!(
            parse_size("12MB"),
            Err(
                "invalid size \"12MB\": unknown unit \"MB\" (one letter of B, K, M, G or T)".into()
            )
        );
        let e = "expected a number with an optional unit B, K, M, G or T";
        assert_eq!(parse_size(""), Err(format!("invalid size \"\": {e}")));
        assert_eq!(parse_size("M"), Err(format!("invalid size \"M\": {e}")));
        assert_eq!(parse_size("-1G"), Err(format!("invalid size \"-1G\": {e}")));
        assert_eq!(parse_size(" 1G"), Err(format!("invalid size \" 1G\": {e}")));
        assert_eq!(
            parse_size("99999999999T"),
            Err("invalid size \"99999999999T\": too large".into())
        );
        assert_eq!(
            parse_size("99999999999999999999999"),
            Err("invalid size \"99999999999999999999999\": too large".into())
        );
        assert_eq!(
            parse_size("18446744073709551615"),
            Err("invalid size \"18446744073709551615\": too large".into())
        );
    }

    #[test]
    fn format() {
        assert_eq!(format_size(512 * MIB), "512M");
        assert_eq!(format_size(1024 * MIB), "1G");
        assert_eq!(format_size(1536 * MIB), "1536M");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(2048), "2K");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for s in ["512M", "1G", "3G", "1536M"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
