//! The plain view: the same text buildctl prints with `--progress=plain`, line for line, so CI logs look and grep the same.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use super::trace::{merge_intervals, StatusInfo, Trace};
use super::{Clock, Limiter};
use crate::gocompat::durations::secs;
use crate::gocompat::sizes::{bytes, Digits};
use crate::gocompat::times::Nanos;
use crate::proto::moby::buildkit::v1::StatusResponse;

/// A vertex that started talking steals the screen from the current one only
/// after the current one held it this long (scaled by its share of traffic).
const ANTI_FLICKER: f64 = 5.0;
/// A vertex silenced for longer than this gets the screen back.
const MAX_DELAY: i64 = 10_000_000_000;
/// A running status line is reprinted only after this long...
const MIN_TIME_DELTA: i64 = 5_000_000_000;
/// ...or after this much progress (a fraction of the total).
const MIN_PROGRESS_DELTA: f64 = 0.05;
/// Names are cut to this many bytes when PROGRESS_NO_TRUNC=0.
const TRUNC_NAME: usize = 72;

/// Prints the status stream as buildctl's plain progress does.
///
/// Feed it with [`update`](Self::update); call [`refresh`](Self::refresh)
/// about every 150ms while nothing arrives (updates closer than 100ms apart
/// are batched, as upstream does), and [`finish`](Self::finish) at the end.
pub struct PlainPrinter<W: Write> {
    out: W,
    trace: Trace,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    /// The digest whose block is open on screen ("" when none).
    current: String,
    /// Last printed (current, timestamp) per status id, to thin out repeats.
    last: HashMap<String, (i64, Nanos)>,
    not_first: bool,
    next_index: usize,
    truncate_names: bool,
}

/// Share of recent traffic and silence of one vertex competing for the screen.
struct Stat {
    block_time: i64,
    speed: f64,
    share: f64,
    over_limit: bool,
}

impl<W: Write> PlainPrinter<W> {
    pub fn new(out: W, clock: Arc<dyn Clock>) -> Self {
        PlainPrinter {
            out,
            trace: Trace::new(None, 0),
            clock,
            limiter: Limiter::default(),
            current: String::new(),
            last: HashMap::new(),
            not_first: false,
            next_index: 0,
            truncate_names: false,
        }
    }

    /// The `#N` a step was printed with; None when it was not (yet).
    pub fn number(&self, digest: &str) -> Option<usize> {
        self.trace.get(digest).map(|v| v.index).filter(|&n| n > 0)
    }

    /// Cut vertex names at 72 bytes with "..." (upstream does this when
    /// PROGRESS_NO_TRUNC=0).
    pub fn truncate_names(mut self, yes: bool) -> Self {
        self.truncate_names = yes;
        self
    }

    /// Takes one message; prints unless the last print was under 100ms ago.
    pub fn update(&mut self, resp: &StatusResponse) -> io::Result<()> {
        let now = self.clock.now_nanos();
        self.trace.update(resp, now);
        if self.limiter.allow(now) {
            self.print()?;
        }
        Ok(())
    }

    /// Prints whatever is pending.
    pub fn refresh(&mut self) -> io::Result<()> {
        self.print()
    }

    /// Prints what is pending, then the last log lines of each failed step.
    pub fn finish(&mut self) -> io::Result<()> {
        self.print()?;
        write_error_logs(&mut self.out, &self.trace)?;
        self.out.flush()
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// Prints pending news, choosing which vertex gets the screen.
    fn print(&mut self) -> io::Result<()> {
        let (completed, mut rest) = self.pending();
        let current = self.current.clone();
        self.print_completed(&completed, &current)?;
        if rest.is_empty() {
            return self.resume_running(&current);
        }
        if rest.contains(&current) {
            self.print_vtx(&current)?;
        }
        // The open vertex competes for the screen too, even when it had
        // nothing new to say.
        if !current.is_empty() && !rest.contains(&current) {
            rest.push(current.clone());
        }
        self.switch_screen(&rest, &completed, &current)
    }

    /// The digests with unprinted news, split into (completed, the rest),
    /// each in order of first sighting.
    fn pending(&self) -> (Vec<String>, Vec<String>) {
        let t = &self.trace;
        let mut completed: Vec<String> = Vec::new();
        let mut rest: Vec<String> = Vec::new();
        for dgst in t.digest_order.iter().filter(|d| t.updates.contains(*d)) {
            let Some(v) = t.get(dgst) else { continue };
            // Group members are shown through their group.
            if v.info.progress_group.is_some() || v.hidden {
                continue;
            }
            if v.is_completed() {
                completed.push(dgst.clone());
            } else {
                rest.push(dgst.clone());
            }
        }
        (completed, rest)
    }

    /// Finished vertices go first, the open one before the others, then
    /// the others in the order they stopped.
    fn print_completed(&mut self, completed: &[String], current: &str) -> io::Result<()> {
        if completed.iter().any(|d| d == current) {
            self.print_vtx(current)?;
        }
        let stop = |d: &String| {
            self.trace
                .get(d)
                .and_then(|v| v.most_recent())
                .and_then(|i| i.stop)
        };
        let mut by_stop: Vec<(Option<Nanos>, String)> =
            completed.iter().map(|d| (stop(d), d.clone())).collect();
        by_stop.sort_by_key(|(s, _)| *s);
        for (_, dgst) in by_stop {
            if dgst != current {
                self.print_vtx(&dgst)?;
            }
        }
        Ok(())
    }

    /// No running vertex has news: a running open vertex keeps the screen,
    /// and without one the first running vertex is put back on it.
    fn resume_running(&mut self, current: &str) -> io::Result<()> {
        if let Some(v) = self.trace.get(current) {
            if v.is_started() && !v.is_completed() {
                return Ok(());
            }
        }
        let t = &self.trace;
        let open = t.digest_order.iter().find(|d| {
            t.get(d).is_some_and(|v| {
                v.is_started() && !v.is_completed() && v.info.progress_group.is_none() && !v.hidden
            })
        });
        if let Some(dgst) = open.cloned() {
            self.print_vtx(&dgst)?;
        }
        Ok(())
    }

    /// Decides whether to switch to another talking vertex: the busiest
    /// wins when the current one has hogged the screen long enough, and
    /// one kept waiting too long wins outright.
    fn switch_screen(
        &mut self,
        rest: &[String],
        completed: &[String],
        current: &str,
    ) -> io::Result<()> {
        let now = self.clock.now_nanos();
        let (stats, max) = self.screen_stats(rest, current, now);
        if completed.iter().any(|d| d == current) || current.is_empty() {
            return self.print_vtx(&max);
        }
        if let Some(d) = rest
            .iter()
            .find(|d| stats.get(d.as_str()).is_some_and(|s| s.over_limit))
        {
            return self.print_vtx(d);
        }
        if let Some(s) = stats.get(current) {
            if 1.0 / (1.0 - s.share) * ANTI_FLICKER < secs(s.block_time) {
                return self.print_vtx(&max);
            }
        }
        Ok(())
    }

    /// Each competing vertex's silence and share of the traffic, and the
    /// vertex that would take the screen: each one faster than the pick so
    /// far, or kept waiting too long, becomes the pick.
    fn screen_stats<'a>(
        &self,
        rest: &'a [String],
        current: &str,
        now: Nanos,
    ) -> (HashMap<&'a str, Stat>, String) {
        let mut stats: HashMap<&str, Stat> = HashMap::new();
        let mut sum = 0.0;
        let mut max = String::new();
        for dgst in rest {
            let Some(v) = self.trace.get(dgst) else {
                continue;
            };
            let Some(lbt) = v.last_block_time else {
                continue;
            };
            let block_time = now - lbt;
            let speed = v.count as f64 / secs(block_time);
            let over_limit = block_time > MAX_DELAY && *dgst != current;
            sum += speed;
            let beats = stats.get(max.as_str()).is_none_or(|m| m.speed < speed);
            stats.insert(
                dgst,
                Stat {
                    block_time,
                    speed,
                    share: 0.0,
                    over_limit,
                },
            );
            if over_limit || max.is_empty() || beats {
                max = dgst.clone();
            }
        }
        for s in stats.values_mut() {
            s.share = s.speed / sum;
        }
        (stats, max)
    }

    /// Prints one vertex's news, opening its block if another one was open.
    fn print_vtx(&mut self, dgst: &str) -> io::Result<()> {
        let Some(idx) = self.trace.lookup(dgst) else {
            return Ok(());
        };
        if self.trace.vtxs[idx].index == 0 {
            self.next_index += 1;
            self.trace.vtxs[idx].index = self.next_index;
        }
        if dgst != self.current {
            self.open_block(idx)?;
        }
        let open_status = self.print_statuses(idx)?;
        self.print_warnings(idx)?;
        self.print_logs(idx)?;
        self.current = dgst.to_string();
        if self.trace.vtxs[idx].is_completed() && !open_status {
            self.close_block(idx)?;
        }
        self.trace.updates.remove(dgst);
        Ok(())
    }

    /// Ends the open vertex's block with "#N ..." and starts this one's
    /// with its number and name, a blank line between blocks.
    fn open_block(&mut self, idx: usize) -> io::Result<()> {
        let out = &mut self.out;
        if let Some(old) = self.trace.lookup(&self.current) {
            let old = &mut self.trace.vtxs[old];
            if old.logs_partial {
                out.write_all(b"\n")?;
            }
            // Its unfinished line will be reprinted whole next time.
            old.logs_offset = 0;
            old.count = 0;
            writeln!(out, "#{} ...", old.index)?;
        }
        if self.not_first {
            out.write_all(b"\n")?;
        }
        self.not_first = true;
        let v = &self.trace.vtxs[idx];
        let name = v.info.name.as_bytes();
        write!(out, "#{} ", v.index)?;
        if self.truncate_names && name.len() > TRUNC_NAME {
            out.write_all(&name[..TRUNC_NAME])?;
            out.write_all(b"...\n")?;
        } else {
            out.write_all(name)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Prints the statuses that changed enough since last shown; returns
    /// whether one is still running (the block then stays open).
    fn print_statuses(&mut self, idx: usize) -> io::Result<bool> {
        let v = &mut self.trace.vtxs[idx];
        let mut open_status = false;
        for id in &v.statuses {
            if !v.status_updates.contains(id) {
                continue;
            }
            let s = &v.by_id[id];
            if s.completed.is_none() && !moved_enough(self.last.get(id), s) {
                continue;
            }
            self.last.insert(id.clone(), (s.current, s.timestamp));
            if s.completed.is_none() {
                open_status = true;
            }
            writeln!(self.out, "#{} {}{}", v.index, s.id, status_details(s))?;
        }
        v.status_updates.clear();
        Ok(open_status)
    }

    /// Prints the warnings that arrived since the vertex was last printed.
    fn print_warnings(&mut self, idx: usize) -> io::Result<()> {
        let v = &mut self.trace.vtxs[idx];
        for w in &v.warnings[v.warning_idx..] {
            write!(self.out, "#{} WARN: ", v.index)?;
            self.out.write_all(&w.short)?;
            self.out.write_all(b"\n")?;
        }
        v.warning_idx = v.warnings.len();
        Ok(())
    }

    /// Prints the pending log lines, leaving an unfinished last line open
    /// and remembering how much of it is on screen.
    fn print_logs(&mut self, idx: usize) -> io::Result<()> {
        let out = &mut self.out;
        let v = &mut self.trace.vtxs[idx];
        let n = v.logs.len();
        for (i, line) in v.logs.iter().enumerate() {
            let shown = if i == 0 && v.logs_offset != 0 {
                // The start of this line is already on screen.
                let rest = &line[v.logs_offset.min(line.len())..];
                out.write_all(rest)?;
                rest
            } else {
                write!(out, "#{} ", v.index)?;
                out.write_all(line)?;
                &line[..]
            };
            if i != n - 1 || !v.logs_partial {
                out.write_all(b"\n")?;
            }
            v.log_ring.put(shown.to_vec(), !v.logs_partial);
        }
        if n > 0 {
            if v.logs_partial {
                v.logs.drain(..n - 1);
                v.logs_offset = v.logs[0].len();
            } else {
                v.logs.clear();
                v.logs_offset = 0;
            }
        }
        Ok(())
    }

    /// Closes a finished vertex's block with its outcome: ERROR, CANCELED,
    /// CACHED, or DONE with the time its runs took together.
    fn close_block(&mut self, idx: usize) -> io::Result<()> {
        let out = &mut self.out;
        let v = &mut self.trace.vtxs[idx];
        self.current.clear();
        v.count = 0;
        if v.logs_partial {
            out.write_all(b"\n")?;
        }
        if !v.info.error.is_empty() {
            if v.is_canceled() {
                writeln!(out, "#{} CANCELED", v.index)?;
            } else {
                write!(out, "#{} ERROR: ", v.index)?;
                out.write_all(v.info.error.as_bytes())?;
                out.write_all(b"\n")?;
            }
        } else if v.info.cached {
            writeln!(out, "#{} CACHED", v.index)?;
        } else {
            let runs = merge_intervals(v.intervals.values().copied());
            if runs.is_empty() {
                writeln!(out, "#{} DONE", v.index)?;
            } else {
                let total: f64 = runs.iter().map(|r| secs(r.duration(0))).sum();
                writeln!(out, "#{} DONE {total:.1}s", v.index)?;
            }
        }
        Ok(())
    }
}

/// Whether a running status moved enough since it was `last` printed (as
/// (current, timestamp)) to be printed again: 5% of its total, or 5s.
fn moved_enough(last: Option<&(i64, Nanos)>, s: &StatusInfo) -> bool {
    let Some(&(cur, ts)) = last else {
        return true;
    };
    let progress = if s.total > 0 {
        (s.current - cur) as f64 / s.total as f64
    } else {
        0.0
    };
    progress >= MIN_PROGRESS_DELTA || s.timestamp - ts >= MIN_TIME_DELTA
}

/// What follows a status's id on its line: the bytes so far (of the total
/// when known), the time taken once over 10ms, and "done" when finished.
fn status_details(s: &StatusInfo) -> String {
    let mut details = if s.total != 0 {
        format!(
            " {} / {}",
            bytes(s.current, Digits::Two),
            bytes(s.total, Digits::Two)
        )
    } else if s.current != 0 {
        format!(" {}", bytes(s.current, Digits::Two))
    } else {
        String::new()
    };
    if let Some(start) = s.started {
        let took = secs(s.completed.unwrap_or(s.timestamp) - start);
        if took > 0.01 {
            details.push_str(&format!(" {took:.1}s"));
        }
    }
    if s.completed.is_some() {
        details.push_str(" done");
    }
    details
}

/// The report after the progress: each failed step's last log lines between
/// "------" rules. What is replayed follows upstream exactly, including an
/// unfinished last line appearing twice.
pub(crate) fn write_error_logs(out: &mut impl Write, t: &Trace) -> io::Result<()> {
    for v in t.failed() {
        out.write_all(b"------\n > ")?;
        out.write_all(v.info.name.as_bytes())?;
        out.write_all(b":\n")?;
        for line in v.logs.iter().map(Vec::as_slice).chain(v.log_ring.lines()) {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        out.write_all(b"------\n")?;
    }
    Ok(())
}
