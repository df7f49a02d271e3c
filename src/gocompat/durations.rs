//! Go's `time.Duration`: printed as `String()` does (`48h0m0s`, `1.5s`), read as `time.ParseDuration` does, and the seconds buildctl's progress shows.

use anyhow::{bail, Result};

use super::numbers::decimal;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A duration in seconds, computed as Go's `Duration.Seconds` does (whole
/// seconds plus the fraction), so rounding at the printed precision agrees.
pub fn secs(d: i64) -> f64 {
    let whole = d / NANOS_PER_SEC;
    let frac = d % NANOS_PER_SEC;
    whole as f64 + frac as f64 / 1e9
}

/// A log line's offset from its vertex start: three decimals under 10s, two
/// under 100s, one beyond — the precision buildctl uses for `#N 0.123 ...`.
pub fn log_offset(d: i64) -> String {
    let s = secs(d);
    let prec = if s < 10.0 {
        3
    } else if s < 100.0 {
        2
    } else {
        1
    };
    format!("{s:.prec$}")
}

/// A duration as Go prints one: `48h0m0s`, `1m1s`, `1.5s`, `300ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n == 0 {
        return "0s".into();
    }
    if n < 1_000_000_000 {
        let (scale, unit) = match n {
            0..1_000 => (1, "ns"),
            1_000..1_000_000 => (1_000, "µs"),
            _ => (1_000_000, "ms"),
        };
        return format!("{sign}{}{unit}", decimal(n / scale, n % scale, scale));
    }
    let secs = n / 1_000_000_000;
    let frac = n % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = decimal(s, frac, 1_000_000_000);
    match (h, secs >= 60) {
        (0, false) => format!("{sign}{s}s"),
        (0, true) => format!("{sign}{m}m{s}s"),
        _ => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// Reads a Go duration: `90s`, `1h30m`, `1.5h`, `300ms`, `0`; units ns, us (µs), ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("invalid duration {s:?}: use e.g. 48h, 90m, 1h30m or 30s");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let w: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        total = total.saturating_add(w.saturating_mul(scale));
        if !frac.is_empty() {
            // Digits past what the unit can hold in nanoseconds cannot change the result.
            let f = &frac[..frac.len().min(18)];
            let num: u128 = f.parse().map_err(|_| bad())?;
            total = total.saturating_add(num.saturating_mul(scale) / 10u128.pow(f.len() as u32));
        }
        rest = next;
    }
    if total > i64::MAX as u128 {
        bail!("duration {s:?} is too long");
    }
    Ok(if neg { -(total as i64) } else { total as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_offsets_shrink_precision() {
        assert_eq!(log_offset(90_000_000), "0.090");
        assert_eq!(log_offset(12_345_000_000), "12.35");
        assert_eq!(log_offset(123_456_000_000), "123.5");
        assert_eq!(log_offset(-1_000_000), "-0.001");
    }

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1500, "1.5µs"),
            (1_500_000, "1.5ms"),
            (999_999_999, "999.999999ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (61_000_000_000, "1m1s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_004_000_000, "1h2m3.004s"),
            (-5_400_000_000_000, "-1h30m0s"),
            (i64::MAX, "2562047h47m16.854775807s"),
        ];
        for (n, s) in cases {
            assert_eq!(go_duration(n), s, "{n}");
        }
    }

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("2h45m10.5s", 9_910_500_000_000),
            ("1µs", 1_000),
            ("0", 0),
            ("-1m", -60_000_000_000),
            ("+5s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
        ];
        for (s, n) in cases {
            assert_eq!(parse_go_duration(s).unwrap(), n, "{s}");
        }
        for s in ["", "5", "1x", "h", ".s", "1..5s", "9999999999h"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
    }
}
