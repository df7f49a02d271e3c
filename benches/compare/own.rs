//! bkrun's own segments of a daemonless build, timed inside each run from its BKRUN_TIMELINE marks: exec → daemon spawn, the init's start → the daemon's exec (privileged: the PID 1 bkrun clones, until buildkitd's exec; rootless-strict: the watchdog init bkrun clones, until rootlesskit's exec; rootless has none, rootlesskit making the PID namespace), READY=1 → Solve sent, build result → SIGTERM, and daemon reaped → exit seen.
//!
//! buildkitd's start varies by tens of ms from run to run, so a difference of medians between
//! separate runs cannot resolve 5 ms; these segments are bkrun's alone, measured in the same run.
//! Marks are CLOCK_MONOTONIC ns, as are the bench's spawn and exit stamps.

use std::fmt::Write as _;

use crate::procs::Run;
use crate::report::Row;
use crate::stats::{fmt, median, Series, Unit};

/// The marks bkrun prints, in the order they happen, with the bench's own stamps around them:
/// `exec` (its execve past the point of no return) before and `seen` (its exit seen) after.
const ORDER: &[&str] = &[
    "exec",
    "main",
    "parsed",
    "runtime",
    "loaded",
    "specified",
    "settled",
    "locked",
    "swept",
    "spawn",
    "nsinit",
    "nsexec",
    "ready",
    "connected",
    "session",
    "solve",
    "result",
    "status",
    "closed",
    "worked",
    "stop",
    "sigterm",
    "reaped",
    "cleaned",
    "exit",
    "seen",
];

/// Spans that are not bkrun's own code, and whose: buildkitd's start, build and stop, and
/// the clone of the init (privileged: buildkitd's PID 1; rootless-strict: the watchdog).
const OTHERS: &[(&str, &str, &str)] = &[
    (
        "spawn",
        "nsinit",
        "the clone of the init: privileged, buildkitd's PID 1; rootless-strict, the watchdog",
    ),
    (
        "nsexec",
        "ready",
        "buildkitd; rootless-strict: rootlesskit's start, then buildkitd's",
    ),
    ("solve", "result", "buildkitd"),
    ("sigterm", "reaped", "buildkitd"),
];

/// Marks made beside the chain above, on bkrun's main thread while the daemon starts: shown
/// from the mark they follow, with what they are.
const BESIDE: &[(&str, &str, &str)] = &[
    (
        "spawn",
        "services",
        "the build's masks, session services and progress view, prepared beside the daemon's start",
    ),
    (
        "spawn",
        "ready",
        "the daemon's whole start; rootless: rootlesskit's, with its PID namespace, and buildkitd's",
    ),
];

/// The own segments' names, in `Marks::own`'s order.
const SEGMENTS: [&str; 5] = [
    "exec → daemon spawn",
    "the init's start → buildkitd's exec",
    "READY=1 → Solve sent",
    "build result → SIGTERM",
    "daemon reaped → exit",
];

/// One run's marks (ms since exec), keyed by name.
pub struct Marks(Vec<(&'static str, f64)>);

impl Marks {
    /// The run's marks with the bench's spawn and exit stamps; None if bkrun printed none.
    pub fn of(run: &Run) -> Option<Marks> {
        let printed = bkrun::timeline::parse(&run.stderr)?;
        let at = |ns: u64| ns.saturating_sub(run.started_ns) as f64 / 1e6;
        let mut v = vec![("exec", 0.0)];
        let beside = BESIDE.iter().map(|(_, to, _)| to);
        for name in ORDER[1..ORDER.len() - 1].iter().chain(beside) {
            if let Some((_, ns)) = printed.iter().find(|(k, _)| k == name) {
                v.push((name, at(*ns)));
            }
        }
        v.push(("seen", at(run.exit.at_ns)));
        Some(Marks(v))
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, t)| *t)
    }

    fn span(&self, from: &str, to: &str) -> Option<f64> {
        Some(self.get(to)? - self.get(from)?)
    }

    /// exec → spawn, nsinit → nsexec, ready → solve, result → sigterm, reaped → seen: bkrun's
    /// own. A run without bkrun's init (rootless: rootlesskit makes the PID namespace) has
    /// neither of its marks, and no init segment.
    pub fn own(&self) -> Option<[f64; 5]> {
        let init = match (self.get("nsinit"), self.get("nsexec")) {
            (None, None) => 0.0,
            _ => self.span("nsinit", "nsexec")?,
        };
        Some([
            self.span("exec", "spawn")?,
            init,
            self.span("ready", "solve")?,
            self.span("result", "sigterm")?,
            self.span("reaped", "seen")?,
        ])
    }
}

/// The segment rows for one mode: their sum per run (median, IQR) against the 5 ms target,
/// then each segment's median.
pub fn rows(mode: &str, runs: &[Marks]) -> Vec<Row> {
    let own: Vec<[f64; 5]> = runs.iter().filter_map(Marks::own).collect();
    let mut sum = Series::default();
    let mut parts: [Series; 5] = Default::default();
    for o in &own {
        sum.push(o.iter().sum());
        for (s, v) in parts.iter_mut().zip(o) {
            s.push(*v);
        }
    }
    let met = match sum.median() {
        Some(m) if m <= 5.0 => "met",
        Some(_) => "**not met**",
        None => "n/a",
    };
    let mut rows = vec![Row {
        measure: format!(
            "bkrun's own segments, {mode}: {}, timed inside each run (n={})",
            SEGMENTS.join(" + "),
            own.len()
        ),
        bkrun: format!("{} {}", sum.cell(&Unit::Ms), sum.iqr()),
        other_name: String::new(),
        other: String::new(),
        ratio: String::new(),
        target: "≤ 5 ms".into(),
        met: met.into(),
    }];
    for (name, s) in SEGMENTS.iter().zip(&parts) {
        rows.push(Row {
            measure: format!("… {mode}: {name}"),
            bkrun: format!("{} {}", s.cell(&Unit::Ms), s.iqr()),
            other_name: String::new(),
            other: String::new(),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        });
    }
    rows
}

/// The timeline: per mode, the median of each span between consecutive marks, buildkitd's own
/// spans marked as such.
pub fn timeline(by_mode: &[(&str, Vec<Marks>)]) -> String {
    let mut s =
        String::from("\n## bkrun's timeline per mode (BKRUN_TIMELINE marks, medians in ms)\n\n");
    s.push_str("| span |");
    for (mode, runs) in by_mode {
        let _ = write!(s, " {mode} (n={}) |", runs.len());
    }
    s.push_str("\n|---|");
    for _ in by_mode {
        s.push_str("---:|");
    }
    s.push('\n');
    for w in ORDER.windows(2) {
        let who = OTHERS
            .iter()
            .find(|(a, b, _)| (*a, *b) == (w[0], w[1]))
            .map(|(_, _, who)| format!(" ({who})"))
            .unwrap_or_default();
        span_row(&mut s, w[0], w[1], &who, by_mode);
    }
    for (from, to, what) in BESIDE {
        span_row(&mut s, from, to, &format!(" ({what})"), by_mode);
    }
    s
}

/// One line of the timeline: the span's median in each mode.
fn span_row(s: &mut String, from: &str, to: &str, who: &str, by_mode: &[(&str, Vec<Marks>)]) {
    let _ = write!(s, "| {from} → {to}{who} |");
    for (_, runs) in by_mode {
        let v: Vec<f64> = runs.iter().filter_map(|m| m.span(from, to)).collect();
        let _ = write!(s, " {} |", fmt(median(&v), &Unit::Ms));
    }
    s.push('\n');
}
