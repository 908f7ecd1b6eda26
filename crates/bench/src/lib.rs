//! Shared pieces of the benchmarks.

pub mod rawloop;

/// Parses `pio: count=N cycles=C` from a guest's console output.
pub fn parse_pio(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.starts_with("pio: count="))?;
    let mut count = None;
    let mut cycles = None;
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("count=") {
            count = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("cycles=") {
            cycles = v.parse().ok();
        }
    }
    Some((count?, cycles?))
}

/// Median of a non-empty sample.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pio_line() {
        let out = "testguest pio: boot\npio: count=1000 cycles=52000000\n";
        assert_eq!(parse_pio(out), Some((1000, 52_000_000)));
        assert_eq!(parse_pio("nothing"), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
