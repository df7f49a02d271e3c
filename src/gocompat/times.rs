//! Go's `time.Time`: RFC 3339 as `time.RFC3339Nano` writes and `time.Parse` reads it (UTC), `String()`'s form, `RFC3339` in the local zone, and the calendar arithmetic under them.

use prost_types::Timestamp;

use super::numbers::fraction;

/// Nanoseconds since the Unix epoch: the one time unit used by the progress renderers.
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

/// Go's RFC 3339 rendering with nanoseconds (`time.RFC3339Nano`) in UTC:
/// trailing zeros of the fraction are dropped, and so is an empty fraction.
pub fn rfc3339_nano(t: Nanos) -> String {
    let secs = t.div_euclid(NANOS_PER_SEC);
    let nanos = t.rem_euclid(NANOS_PER_SEC);
    let (date, sod) = date_and_second(secs);
    format!(
        "{date}T{}{}Z",
        clock(sod),
        fraction(nanos as u64, NANOS_PER_SEC as u64)
    )
}

/// A timestamp as Go's `time.Time` prints in UTC: `2026-11-21 12:11:16.10126057 +0000 UTC`.
/// A missing one is the Unix epoch, as the Go client makes of it.
pub fn go_time(ts: Option<&Timestamp>) -> String {
    let (secs, nanos) = ts.map_or((0, 0), |t| (t.seconds, t.nanos));
    // Keep the fraction in [0, 1s) so a negative nanos field borrows from the seconds.
    let secs = secs + i64::from(nanos).div_euclid(NANOS_PER_SEC);
    let nanos = i64::from(nanos).rem_euclid(NANOS_PER_SEC) as u64;
    let (date, sod) = date_and_second(secs);
    format!(
        "{date} {}{} +0000 UTC",
        clock(sod),
        fraction(nanos, NANOS_PER_SEC as u64)
    )
}

/// A timestamp as Go's `t.Local().Format(time.RFC3339)` writes it: whole seconds, in the local
/// zone (TZ, else /etc/localtime, as Go and the C library both read it), `Z` for UTC.
pub fn rfc3339_local(ts: &Timestamp) -> String {
    let secs = ts.seconds + i64::from(ts.nanos).div_euclid(NANOS_PER_SEC);
    rfc3339_at(secs, local_offset(secs))
}

/// Unix seconds shown at a UTC offset (in seconds), as Go's RFC 3339 layout `Z07:00` does:
/// `Z` for zero, else `±hh:mm` (seconds of the offset are not shown).
pub fn rfc3339_at(secs: i64, offset: i64) -> String {
    let (date, sod) = date_and_second(secs + offset);
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let m = offset.abs() / 60;
        format!("{sign}{:02}:{:02}", m / 60, m % 60)
    };
    format!("{date}T{}{zone}", clock(sod))
}

/// The local zone's UTC offset at `secs`, from the C library (0 when it cannot tell).
fn local_offset(secs: i64) -> i64 {
    // Typed by localtime_r's parameter (libc's time_t alias is deprecated on musl).
    let t = secs as _;
    // SAFETY: localtime_r only writes the tm it is given; a zeroed tm is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    // c_long: already i64 on 64-bit targets, i32 on 32-bit ones.
    #[allow(clippy::useless_conversion)]
    i64::from(tm.tm_gmtoff)
}

/// Unix seconds → (`YYYY-MM-DD`, second of that day).
fn date_and_second(secs: i64) -> (String, i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (format!("{y:04}-{m:02}-{d:02}"), secs.rem_euclid(86_400))
}

/// A second of the day as `HH:MM:SS`.
fn clock(sod: i64) -> String {
    format!("{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Reads an RFC 3339 time (`2006-01-02T15:04:05.999999999Z`, or with a `±hh:mm` offset), the
/// form Go writes for token servers' `issued_at` and buildctl's traces. Fraction digits past
/// nanoseconds are dropped, as Go's parser drops them.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 9)];
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    let zone = &s[i..];
    let offset = if zone.eq_ignore_ascii_case("z") {
        0
    } else if zone.len() == 6 && zone.as_bytes()[3] == b':' {
        let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
        match zone.as_bytes()[0] {
            b'+' => v,
            b'-' => -v,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(Timestamp {
        seconds: days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset,
        nanos,
    })
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

/// Days since 1970-01-01 of a proleptic Gregorian date: the inverse of [`civil_from_days`]
/// (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: secs,
            nanos,
        })
    }

    #[test]
    fn rfc3339_with_offsets_as_go_formats_local_times() {
        assert_eq!(rfc3339_at(1_704_164_645, 0), "2024-01-02T03:04:05Z");
        assert_eq!(rfc3339_at(1_704_164_645, 7200), "2024-01-02T05:04:05+02:00");
        assert_eq!(
            rfc3339_at(1_704_164_645, -16_200),
            "2024-01-01T22:34:05-04:30"
        );
        // Whole seconds only, and a negative nanos field borrows from the seconds.
        let t = Timestamp {
            seconds: 1_704_164_645,
            nanos: -1,
        };
        let want = rfc3339_at(1_704_164_644, local_offset(1_704_164_644));
        assert_eq!(rfc3339_local(&t), want);
    }

    #[test]
    fn timestamps_round_trip() {
        let cases = [
            "2026-11-21T11:51:56.25718609Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.000000001Z",
        ];
        for c in cases {
            assert_eq!(rfc3339_nano(ts_nanos(&parse_rfc3339(c).unwrap())), c);
        }
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_times() {
        let rfc3339_unix = |s: &str| parse_rfc3339(s).map(|t| t.seconds);
        assert_eq!(rfc3339_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_unix("2024-01-02T03:04:05Z"), Some(1_704_164_645));
        assert_eq!(
            rfc3339_unix("2024-01-02T03:04:05.123456789Z"),
            Some(1_704_164_645)
        );
        assert_eq!(
            rfc3339_unix("2024-01-02T05:04:05+02:00"),
            Some(1_704_164_645)
        );
        assert_eq!(
            rfc3339_unix("2024-01-01T22:34:05.5-04:30"),
            Some(1_704_164_645)
        );
        assert_eq!(rfc3339_unix("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "2024-01-02",
            "2024-01-02T03:04:05",
            "2024-13-02T03:04:05Z",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:05+0200",
            "2024-01-02T03:04:05*02:00",
            "2024-01-0xT03:04:05Z",
        ] {
            assert_eq!(rfc3339_unix(bad), None, "{bad}");
        }
    }

    #[test]
    fn fractions_past_nanoseconds_are_dropped() {
        let t = parse_rfc3339("2024-01-02T03:04:05.1234567899Z").unwrap();
        assert_eq!((t.seconds, t.nanos), (1_704_164_645, 123_456_789));
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05.5Z").unwrap().nanos,
            500_000_000
        );
    }

    #[test]
    fn calendar_days_round_trip() {
        for days in [-719_468, -1, 0, 1, 11_016, 20_819, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }

    #[test]
    fn times_print_like_go() {
        assert_eq!(
            go_time(ts(1_795_263_076, 101_260_570).as_ref()),
            "2026-11-21 12:11:16.10126057 +0000 UTC"
        );
        assert_eq!(go_time(None), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(ts(951_782_400, 0).as_ref()),
            "2000-02-29 00:00:00 +0000 UTC"
        );
        assert_eq!(go_time(ts(-1, 0).as_ref()), "1969-12-31 23:59:59 +0000 UTC");
    }
}
