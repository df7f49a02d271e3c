//! Renders times, durations and byte sizes the way buildctl's Go code prints them, so our text matches byte for byte.

use prost_types::Timestamp;

/// Nanoseconds since the Unix epoch: the one time unit used by the renderers.
/// (An i64 covers years 1678..2262, far more than a build log needs.)
pub type Nanos = i64;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A protobuf timestamp as nanoseconds since the epoch.
pub fn ts_nanos(ts: &Timestamp) -> Nanos {
    ts.seconds
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(i64::from(ts.nanos))
}

/// An optional protobuf timestamp as nanoseconds since the epoch.
pub fn opt_nanos(ts: &Option<Timestamp>) -> Option<Nanos> {
    ts.as_ref().map(ts_nanos)
}

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

/// A byte count as tonistiigi/units prints it with `%.2f`: plain bytes below
/// 1000 ("123B"), otherwise two decimals and a decimal (SI) unit ("1.23kB").
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    // The unit is the largest power of 1000 not above |n|; the sign only
    // flips the comparison, as upstream walks towards the value's sign.
    let mut i = 0;
    let mut base: i64 = 1;
    loop {
        let next = match base.checked_mul(1000) {
            Some(next) if i + 1 < UNITS.len() => next,
            _ => break,
        };
        let reached = if n >= 0 { n >= next } else { n <= -next };
        if !reached {
            break;
        }
        base = next;
        i += 1;
    }
    if i == 0 {
        return format!("{n}B");
    }
    format!("{:.2}{}", n as f64 / base as f64, UNITS[i])
}

/// Go's RFC 3339 rendering with nanoseconds (`time.RFC3339Nano`) in UTC:
/// trailing zeros of the fraction are dropped, and so is an empty fraction.
pub fn rfc3339_nano(t: Nanos) -> String {
    let secs = t.div_euclid(NANOS_PER_SEC);
    let nanos = t.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by the
/// well-known era arithmetic (400-year cycles of 146097 days).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses the RFC 3339 form above back into nanoseconds; tests use it to
/// replay recorded buildctl traces. Only the UTC `Z` suffix is accepted.
#[cfg(test)]
pub fn parse_rfc3339(s: &str) -> Option<Nanos> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (dp.next()??, dp.next()??, dp.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut tp = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (tp.next()??, tp.next()??, tp.next()??);
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse::<i64>().ok()?
    };
    // Inverse of civil_from_days.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) * NANOS_PER_SEC + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_follow_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(2), "2B");
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(1000), "1.00kB");
        assert_eq!(bytes(1_982_256), "1.98MB");
        assert_eq!(bytes(479), "479B");
        assert_eq!(bytes(12_345_678_901), "12.35GB");
    }

    #[test]
    fn log_offsets_shrink_precision() {
        assert_eq!(log_offset(90_000_000), "0.090");
        assert_eq!(log_offset(12_345_000_000), "12.35");
        assert_eq!(log_offset(123_456_000_000), "123.5");
        assert_eq!(log_offset(-1_000_000), "-0.001");
    }

    #[test]
    fn timestamps_round_trip() {
        let cases = [
            "2026-11-21T11:51:56.25718609Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.000000001Z",
        ];
        for c in cases {
            assert_eq!(rfc3339_nano(parse_rfc3339(c).unwrap()), c);
        }
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
    }
}
