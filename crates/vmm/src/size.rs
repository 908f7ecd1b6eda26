//! Memory sizes as users write them: `512M`, `1G`, `65536K`, `1073741824`.

/// Parses a size in bytes; K, M, G, T suffixes (optionally followed by B,
/// any case) multiply by powers of 1024.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes() {
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse("2GB"), Ok(2 << 30));
        assert_eq!(parse("64k"), Ok(64 << 10));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("lots").is_err());
        assert!(parse("").is_err());
        assert!(parse("-1M").is_err());
        assert!(parse("99999999999T").is_err());
    }
}
