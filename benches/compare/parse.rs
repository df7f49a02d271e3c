//! Reading what the tools print: bkrun's `--debug` timings and the byte counts and durations of plain-progress status lines.

use std::time::Duration;

use anyhow::{Context, Result};
use regex::Regex;

use crate::procs::tail;

/// Milliseconds, the unit of most rows.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A number from bkrun's --debug line, e.g. "daemon ready after 123.4 ms".
pub fn debug_ms(stderr: &str, re: &str) -> Result<f64> {
    let re = Regex::new(re).unwrap();
    let c = re
        .captures(stderr)
        .with_context(|| format!("no /{re}/ in bkrun's --debug output:\n{}", tail(stderr, 20)))?;
    Ok(c[1].parse()?)
}

/// A finished plain-progress status line, e.g. `#3 transferring context: 1.07GB 2.3s done`:
/// its bytes and seconds (None when it took too little for a duration to be printed). Of several
/// (the .dockerignore load is also "transferring context") the largest wins.
fn status_line(stderr: &str, what: &str) -> Option<(f64, Option<f64>)> {
    let re = Regex::new(&format!(
        r"(?m)^#\d+ {}:? ([\d.]+)(B|kB|MB|GB|TB)(?: ([\d.]+)s)? done\s*$",
        regex::escape(what)
    ))
    .unwrap();
    re.captures_iter(stderr)
        .map(|c| {
            let unit = match &c[2] {
                "kB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                "TB" => 1e12,
                _ => 1.0,
            };
            let bytes = c[1].parse::<f64>().unwrap_or(0.0) * unit;
            (bytes, c.get(3).and_then(|s| s.as_str().parse().ok()))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// MB/s from a status line; None when the line is missing or had no duration.
pub fn rate(stderr: &str, what: &str) -> Option<f64> {
    let (bytes, secs) = status_line(stderr, what)?;
    secs.filter(|s| *s > 0.0).map(|s| bytes / s / 1e6)
}

/// Seconds from a status line; None when the line is missing or took too little to show any.
pub fn took(stderr: &str, what: &str) -> Option<f64> {
    status_line(stderr, what)?.1
}
