//! bkrun's own clock marks for `BKRUN_TIMELINE=1`: where each millisecond between exec and exit goes, printed as one line at exit for the bench (BENCHMARKS.md's timeline and own-segment rows).
//!
//! Marks are CLOCK_MONOTONIC nanoseconds, the clock a parent can read on its side of the exec
//! and the wait, so the bench can time exec → first mark and last mark → reaped too. Off (one
//! relaxed load per mark) unless the variable is set when bkrun starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The variable that turns the marks on.
pub const ENV: &str = "BKRUN_TIMELINE";

/// The prefix of the one line `report` prints; the bench finds it by this.
pub const PREFIX: &str = "bkrun: timeline (CLOCK_MONOTONIC ns):";

static ON: AtomicBool = AtomicBool::new(false);
static MARKS: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Reads the variable once, first thing in main, and marks `main`. The environment is read
/// here directly, not through host/: it is bkrun's own diagnostics switch, like
/// MALLOC_ARENA_MAX, read before anything else runs.
pub fn init() {
    init_as("main");
}

/// `init` for a process that is not bkrun's main one: `__nsinit` marks its start as `first`.
pub fn init_as(first: &'static str) {
    if std::env::var_os(ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        ON.store(true, Ordering::Relaxed);
        mark(first);
    }
}

/// Whether marks are being kept.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Notes that `what` happened now.
pub fn mark(what: &'static str) {
    if on() {
        let t = now();
        if let Ok(mut m) = MARKS.lock() {
            m.push((what, t));
        }
    }
}

/// Notes that `what` happened at `ns` (CLOCK_MONOTONIC), read by another process of the run.
pub fn mark_at(what: &'static str, ns: u64) {
    if on() {
        if let Ok(mut m) = MARKS.lock() {
            m.push((what, ns));
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Takes in the marks another process of the run printed in `text` (`__nsinit`'s, in the
/// daemon's log), for names this process knows: `known` maps a printed name to its mark.
pub fn merge(text: &str, known: &[&'static str]) {
    if !on() {
        return;
    }
    let Some(theirs) = parse(text) else {
        return;
    };
    if let Ok(mut m) = MARKS.lock() {
        for (name, t) in theirs {
            if let Some(k) = known.iter().find(|k| **k == name) {
                m.push((k, t));
            }
        }
    }
}

/// The marks as one line, `PREFIX name=ns name=ns …`, in time order (merged marks land
/// where they happened); None when off.
pub fn line() -> Option<String> {
    if !on() {
        return None;
    }
    let mut marks = MARKS.lock().ok()?.clone();
    marks.sort_by_key(|(_, t)| *t);
    let mut s = String::from(PREFIX);
    for (what, t) in marks.iter() {
        s.push_str(&format!(" {what}={t}"));
    }
    Some(s)
}

/// Marks `exit` and prints the line on stderr: the last thing bkrun does.
pub fn report() {
    if on() {
        mark("exit");
        if let Some(l) = line() {
            crate::say!("{l}");
        }
    }
}

/// Parses a line `line` printed: the marks in order. For the bench and the tests.
pub fn parse(text: &str) -> Option<Vec<(String, u64)>> {
    let rest = text.lines().find_map(|l| l.strip_prefix(PREFIX))?;
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_parses_back_into_its_marks_in_order() {
        let text = format!("#1 DONE\n{PREFIX} main=5 spawn=9 exit=12\n");
        assert_eq!(
            parse(&text).unwrap(),
            vec![
                ("main".to_string(), 5),
                ("spawn".to_string(), 9),
                ("exit".to_string(), 12)
            ]
        );
        assert!(parse("no marks here").is_none());
        assert!(parse(&format!("{PREFIX} main=x")).is_none());
    }
}
