//! Parsing and printing of sizes, token counts and durations.
//!
//! Conventions: memory sizes print in binary units (KiB, MiB, GiB); bandwidth
//! is always GB/s with 1 GB = 1e9 bytes, as nccl-tests and nixlbench do.

use crate::error::{Error, Result};
use std::time::Duration;

/// A positive integer, optionally with a k/K suffix meaning x1024 ("32k" = 32768),
/// the way prompt lengths are spoken of.
pub fn parse_token_count(s: &str) -> Result<u32> {
    let t = s.trim();
    let (digits, mult) = match t.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1024u64),
        None => (t, 1u64),
    };
    if digits.starts_with('-') {
        return Err(Error::usage(format!("'{s}' is negative: token counts must be positive")));
    }
    let n: u64 = digits.parse().map_err(|_| {
        Error::usage(format!("'{s}' is not a token count (expected a positive integer such as 8192 or 32k)"))
    })?;
    let n = n
        .checked_mul(mult)
        .filter(|&n| n <= u32::MAX as u64)
        .ok_or_else(|| Error::usage(format!("'{s}' is too large")))?;
    if n == 0 {
        return Err(Error::usage(format!("'{s}' is zero: token counts must be positive")));
    }
    Ok(n as u32)
}

/// A comma-separated list of token counts, kept in the order given.
pub fn parse_token_list(s: &str) -> Result<Vec<u32>> {
    list_items(s, "the list of prompt lengths")?.into_iter().map(parse_token_count).collect()
}

/// The items of a comma-separated list; an empty list or an empty item
/// (`1k,,2k`, a trailing comma) is refused, as a typo would be.
pub fn list_items<'a>(s: &'a str, what: &str) -> Result<Vec<&'a str>> {
    if s.trim().is_empty() {
        return Err(Error::usage(format!("{what} is empty")));
    }
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    match items.iter().position(|i| i.is_empty()) {
        Some(at) => Err(Error::usage(format!(
            "{what} '{s}' has an empty item (item {}): remove the extra comma",
            at + 1
        ))),
        None => Ok(items),
    }
}

/// A positive integer with a name for the error message.
pub fn parse_positive(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(Error::usage(format!("{what} '{s}' is negative")));
    }
    match t.parse::<u64>() {
        Ok(0) => Err(Error::usage(format!("{what} must be at least 1, got 0"))),
        Ok(n) => Ok(n),
        Err(_) => Err(Error::usage(format!("{what} '{s}' is not a positive integer"))),
    }
}

/// A byte size such as 4096, 64KiB, 4MiB, 1GiB, 1G (= 1e9), 512k (= 512 KiB).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(Error::usage(format!("size '{s}' is negative")));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| Error::usage(format!("'{s}' is not a size (try 4096, 64KiB or 4MiB)")))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KiB" => 1024.0,
        "m" | "M" | "MiB" => 1024.0 * 1024.0,
        "g" | "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(Error::usage(format!(
                "unknown size unit '{other}' in '{s}' (use B, KiB, MiB, GiB, KB, MB or GB)"
            )))
        }
    };
    let bytes = value * mult;
    if bytes < 1.0 || !bytes.is_finite() {
        return Err(Error::usage(format!("size '{s}' must be at least 1 byte")));
    }
    // No buffer, GPU or request of a benchmark is a pebibyte; past it, u64 arithmetic nears its end.
    if bytes > (1u64 << 50) as f64 {
        return Err(Error::usage(format!("size '{s}' is past 1 PiB, the most kvxfer takes")));
    }
    Ok(bytes.round() as u64)
}

/// The shortest and longest durations a flag takes: a deadline shorter than
/// a millisecond can only fail, one past 30 days is no deadline, and
/// deadlines must stay far from where `Instant` arithmetic overflows.
pub const SHORTEST: Duration = Duration::from_millis(1);
pub const LONGEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration: "10s", "500ms", "2m" (humantime), or a bare number of
/// seconds; from 1 ms to 30 days.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(Error::usage(format!("duration '{s}' is negative")));
    }
    let range = "it takes 1 ms to 30 days";
    let d = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > LONGEST.as_secs_f64() => {
            return Err(Error::usage(format!("duration '{s}' is past 30 days: {range}")))
        }
        Ok(secs) if secs.is_finite() => Duration::from_secs_f64(secs),
        _ => humantime::parse_duration(t).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => {
                Error::usage(format!("duration '{s}' is past 30 days: {range}"))
            }
            _ => Error::usage(format!("'{s}' is not a duration (try 30, 30s or 500ms)")),
        })?,
    };
    if d.is_zero() {
        return Err(Error::usage(format!("duration '{s}' must be above zero: {range}")));
    }
    if d < SHORTEST {
        return Err(Error::usage(format!("duration '{s}' is under 1 ms: {range}")));
    }
    if d > LONGEST {
        return Err(Error::usage(format!("duration '{s}' is past 30 days: {range}")));
    }
    Ok(d)
}

/// 1536 -> "1.5 KiB"; exact for whole units ("32 MiB").
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// Nanoseconds in the unit that keeps three or four significant digits.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// Bytes over nanoseconds in GB/s (1 GB = 1e9 bytes). Zero time gives zero.
pub fn gbps(bytes: u64, ns: f64) -> f64 {
    if ns <= 0.0 {
        0.0
    } else {
        bytes as f64 / ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts() {
        assert_eq!(parse_token_count("128").unwrap(), 128);
        assert_eq!(parse_token_count("32k").unwrap(), 32768);
        assert_eq!(parse_token_count("128K").unwrap(), 131072);
        assert!(parse_token_count("0").is_err());
        assert!(parse_token_count("-5").unwrap_err().message.contains("negative"));
        assert!(parse_token_count("abc").is_err());
        assert_eq!(parse_token_list("128, 1k,8192").unwrap(), vec![128, 1024, 8192]);
        assert!(parse_token_list(",").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("4M").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("18446744073709551616").unwrap_err().message.contains("past 1 PiB"));
        assert_eq!(fmt_bytes(16 << 20), "16 MiB");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(fmt_bytes(100), "100 B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0").is_err());
        // Bounded: no Duration overflow, no deadline that can only fail.
        for (bad, says) in [
            ("1e30", "past 30 days"),
            ("18446744073709551616", "past 30 days"),
            ("99999999999999999999999s", "past 30 days"),
            ("31days", "past 30 days"),
            ("1ns", "under 1 ms"),
            ("0.0000001", "under 1 ms"),
            ("nan", "not a duration"),
            ("inf", "not a duration"),
        ] {
            let e = parse_duration(bad).unwrap_err().message;
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(parse_duration("30days").unwrap(), LONGEST);
        assert_eq!(parse_duration("1ms").unwrap(), SHORTEST);
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(fmt_ns(1500.0), "1.5 us");
        assert_eq!(fmt_ns(2_500_000.0), "2.50 ms");
    }

    #[test]
    fn bandwidth_is_decimal() {
        // 1e9 bytes in one second is 1 GB/s.
        assert_eq!(gbps(1_000_000_000, 1e9), 1.0);
        assert_eq!(gbps(5, 0.0), 0.0);
    }
}
