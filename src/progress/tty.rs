//! The tty view: a frame redrawn in place with a `[+] Building` header, one timed line per step and status, and the last output rows of running steps, modelled on buildctl's.

use std::io::{self, Write};
use std::sync::Arc;

use super::plain::write_error_logs;
use super::trace::{merge_intervals, Interval, StatusInfo, Trace, Vtx};
use super::{Clock, Limiter};
use crate::gocompat::durations::secs;
use crate::gocompat::sizes::{bytes, Digits};
use crate::gocompat::times::Nanos;
use crate::proto::moby::buildkit::v1::{StatusResponse, VertexWarning};

/// Columns the log tails give up to their " => => # " prefix.
const TERM_PAD: usize = 10;
/// Default rows of output shown per running step (BUILDKIT_TTY_LOG_LINES).
pub const DEFAULT_TAIL_ROWS: usize = 6;

const BLUE: &str = "\x1b[34m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const FAINT: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// Reports the terminal's (columns, rows).
pub type SizeFn = Box<dyn Fn() -> (usize, usize) + Send>;

/// One line of the frame before layout.
struct Job {
    name: String,
    status: String,
    intervals: Vec<Interval>,
    completed: bool,
    error: bool,
    canceled: bool,
    /// Index of the step whose output tail may follow this line.
    vtx: Option<usize>,
    show_tail: bool,
}

/// One frame as it is built: what is written, the same lines without
/// colours, and how many rows it has below the header.
#[derive(Default)]
struct Frame {
    painted: Vec<String>,
    text: Vec<String>,
    rows: usize,
}

/// Draws the live view.
pub struct TtyPrinter<W: Write> {
    out: W,
    trace: Trace,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    size: SizeFn,
    phase: String,
    color: bool,
    tail_rows: usize,
    /// Lines below the header in the previous frame, to move back over.
    line_count: usize,
    repeated: bool,
    last_frame: Vec<String>,
}

impl<W: Write> TtyPrinter<W> {
    pub fn new(out: W, clock: Arc<dyn Clock>, size: SizeFn) -> Self {
        let (w, _) = size();
        TtyPrinter {
            out,
            trace: Trace::new(Some(w.saturating_sub(TERM_PAD)), DEFAULT_TAIL_ROWS),
            clock,
            limiter: Limiter::default(),
            size,
            phase: "Building".into(),
            color: true,
            tail_rows: DEFAULT_TAIL_ROWS,
            line_count: 0,
            repeated: false,
            last_frame: Vec::new(),
        }
    }

    /// Whether to colour finished steps (off for NO_COLOR).
    pub fn color(mut self, yes: bool) -> Self {
        self.color = yes;
        self
    }

    /// Rows of output shown under a running step.
    pub fn tail_rows(mut self, rows: usize) -> Self {
        self.tail_rows = rows.max(1);
        self.trace.tail_height = self.tail_rows;
        self
    }

    /// The word in the header ("Building").
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.to_string();
        self
    }

    /// Takes one message; redraws unless the last frame is under 100ms old.
    pub fn update(&mut self, resp: &StatusResponse) -> io::Result<()> {
        let (w, _) = (self.size)();
        let tail_w = w.saturating_sub(TERM_PAD).max(1);
        if self.trace.tail_width != Some(tail_w) {
            self.trace.tail_width = Some(tail_w);
            for v in &mut self.trace.vtxs {
                if let Some(t) = &mut v.tail {
                    t.resize(tail_w);
                }
            }
        }
        let now = self.clock.now_nanos();
        self.trace.update(resp, now);
        if self.limiter.allow(now) {
            self.draw(false)?;
        }
        Ok(())
    }

    /// Redraws (timers move even when nothing arrives).
    pub fn refresh(&mut self) -> io::Result<()> {
        self.draw(false)
    }

    /// Draws the complete final frame, then failed steps' output.
    pub fn finish(&mut self) -> io::Result<()> {
        self.draw(true)?;
        write_error_logs(&mut self.out, &self.trace)?;
        self.out.flush()
    }

    /// The text of the last frame drawn, one entry per line, without colours.
    pub fn last_frame(&self) -> &[String] {
        &self.last_frame
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// The frame's lines before layout, in start order: each step, then
    /// its statuses and warnings, with times moved to the local clock.
    fn jobs(&self) -> Vec<Job> {
        let t = &self.trace;
        let shift = |x: Option<Nanos>| x.map(|x| x + t.local_time_diff);
        let mut jobs = Vec::new();
        for &idx in &t.started {
            let v = &t.vtxs[idx];
            let mut name = v.info.name.replace('\t', " ");
            let (mut error, mut canceled) = (false, false);
            if !v.info.error.is_empty() {
                if v.is_canceled() {
                    canceled = true;
                    name = format!("CANCELED {name}");
                } else {
                    error = true;
                    name = format!("ERROR {name}");
                }
            }
            if v.info.cached {
                name = format!("CACHED {name}");
            }
            let runs = v.intervals.values().map(|i| Interval {
                start: shift(i.start),
                stop: shift(i.stop),
            });
            jobs.push(Job {
                name,
                status: String::new(),
                intervals: merge_intervals(runs),
                completed: v.intervals.values().all(|i| i.stop.is_some()),
                error,
                canceled,
                vtx: Some(idx),
                show_tail: false,
            });
            for id in &v.statuses {
                jobs.push(status_job(&v.by_id[id], t.local_time_diff));
            }
            for w in &v.warnings {
                let run = v.most_recent().copied().unwrap_or_default();
                jobs.push(warning_job(w, run, t.local_time_diff));
            }
        }
        jobs
    }

    /// Picks which running steps show their output tail, and which lines
    /// fit on screen; returns the jobs to draw.
    fn layout(&mut self, mut jobs: Vec<Job>, height: usize, all: bool) -> Vec<Job> {
        let tail_bytes = |j: &Job, t: &Trace| -> Option<(usize, usize)> {
            let v: &Vtx = &t.vtxs[j.vtx?];
            v.tail.as_ref().map(|tail| (tail.bytes, tail.shown))
        };
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        let mut in_use = 0i64;
        for (i, j) in jobs.iter().enumerate() {
            if !j.completed {
                in_use += 1;
                if let Some((b, shown)) = tail_bytes(j, &self.trace) {
                    if b > 0 {
                        candidates.push((i, b + shown * 50));
                    }
                }
            }
        }
        candidates.sort_by_key(|&(_, rank)| std::cmp::Reverse(rank));
        let mut free = height as i64 - 2 - in_use;
        let limit = self.tail_rows as i64 + 3;
        let mut hidden_rows = 0i64;
        for (i, _) in candidates {
            if free <= limit {
                break;
            }
            jobs[i].show_tail = true;
            let idx = jobs[i].vtx.expect("candidates are steps");
            let used = self.trace.vtxs[idx]
                .tail
                .as_ref()
                .map_or(0, |t| t.used_height());
            hidden_rows += used as i64;
            free -= limit;
        }
        if all {
            return jobs;
        }
        wrap_height(jobs, height as i64 - 2 - hidden_rows)
    }

    /// Draws one frame over the previous one; `all` draws every line (the
    /// final frame) instead of what fits the terminal's height.
    fn draw(&mut self, all: bool) -> io::Result<()> {
        let (width, height) = (self.size)();
        let width = width.max(1);
        let now = self.clock.now_nanos();
        let jobs = self.jobs();
        let jobs = self.layout(jobs, height, all);

        let mut frame = Frame::default();
        let header = self.header(now, width, all);
        frame.painted.push(format!("{header}\n"));
        frame.text.push(header.trim_end().to_string());
        for j in &jobs {
            let Some(line) = job_line(j, now, width) else {
                continue;
            };
            frame.text.push(line.trim_end().to_string());
            frame.painted.push(match self.job_color(j) {
                Some(c) => format!("{c}{line}\n{RESET}"),
                None => format!("{line}\n"),
            });
            frame.rows += 1;
            if j.show_tail {
                self.push_tail(&mut frame, j.vtx.expect("tails belong to steps"));
            }
        }
        self.write_frame(frame, width)
    }

    /// The "[+] Building 1.0s (2/3)" line, padded to the width.
    fn header(&self, now: Nanos, width: usize, all: bool) -> String {
        let (done, total) = self.counts();
        let start = self
            .trace
            .start_time
            .map_or(now, |s| s + self.trace.local_time_diff);
        let status = if all && done > 0 && done == total {
            "FINISHED"
        } else {
            ""
        };
        let header = format!(
            "[+] {} {:.1}s ({done}/{total}) {status}",
            self.phase,
            secs(now - start)
        );
        cut(
            &format!("{} ", pad(&header, width.saturating_sub(1))),
            width,
        )
    }

    /// Finished lines are coloured by outcome, when colour is on.
    fn job_color(&self, j: &Job) -> Option<&'static str> {
        if !j.completed || !self.color {
            None
        } else if j.canceled {
            Some(YELLOW)
        } else if j.error {
            Some(RED)
        } else {
            Some(BLUE)
        }
    }

    /// Adds a step's output tail under its line, faint when colour is on.
    fn push_tail(&mut self, frame: &mut Frame, idx: usize) {
        let Some(tail) = &mut self.trace.vtxs[idx].tail else {
            return;
        };
        for l in tail.lines() {
            let row = format!(" => => # {l}");
            frame.text.push(row.clone());
            frame.painted.push(if self.color {
                format!("{FAINT}{row}\n{RESET}")
            } else {
                format!("{row}\n")
            });
            frame.rows += 1;
        }
        // Tails shown longer rank higher when the next layout picks them.
        tail.shown += 1;
    }

    /// Writes the frame in one go: back up over the previous frame, draw,
    /// and blank what is left of a longer previous frame.
    fn write_frame(&mut self, frame: Frame, width: usize) -> io::Result<()> {
        let mut buf = String::new();
        if self.repeated {
            buf.push_str(&format!("\x1b[{}A", self.line_count + 1));
        }
        buf.push_str("\x1b[0G");
        self.repeated = true;
        buf.push_str(HIDE_CURSOR);
        for f in &frame.painted {
            buf.push_str(f);
        }
        if self.line_count > frame.rows {
            let diff = self.line_count - frame.rows;
            for _ in 0..diff {
                buf.push_str(&" ".repeat(width));
                buf.push('\n');
            }
            buf.push_str(&format!("\x1b[{diff}A\x1b[0G"));
        }
        buf.push_str(SHOW_CURSOR);
        self.line_count = frame.rows;
        self.last_frame = frame.text;
        self.out.write_all(buf.as_bytes())?;
        self.out.flush()
    }

    /// (finished, total) steps for the header; group members are not counted
    /// themselves (the group is).
    fn counts(&self) -> (usize, usize) {
        let t = &self.trace;
        let mut done = 0;
        let mut total = 0;
        for d in &t.digest_order {
            let Some(v) = t.get(d) else { continue };
            if v.info.progress_group.is_some() || v.hidden {
                continue;
            }
            total += 1;
            if v.is_completed() {
                done += 1;
            }
        }
        (done, total)
    }
}

/// A status's line: its bytes so far (of the total when known), timed by
/// its own start and completion, moved by `diff` to the local clock.
fn status_job(s: &StatusInfo, diff: i64) -> Job {
    let shift = |x: Option<Nanos>| x.map(|x| x + diff);
    let status = if s.total != 0 {
        format!(
            "{} / {}",
            bytes(s.current, Digits::Two),
            bytes(s.total, Digits::Two)
        )
    } else if s.current != 0 {
        bytes(s.current, Digits::Two)
    } else {
        String::new()
    };
    Job {
        name: format!("=> {}", s.id),
        status,
        intervals: vec![Interval {
            start: shift(s.started),
            stop: shift(s.completed),
        }],
        completed: s.completed.is_some(),
        error: false,
        canceled: false,
        vtx: None,
        show_tail: false,
    }
}

/// A warning's line, timed by its step's latest `run`. It never counts as
/// completed and is marked canceled, as upstream's warning lines are.
fn warning_job(w: &VertexWarning, run: Interval, diff: i64) -> Job {
    let shift = |x: Option<Nanos>| x.map(|x| x + diff);
    Job {
        name: format!("WARN: {}", String::from_utf8_lossy(&w.short)),
        status: String::new(),
        intervals: vec![Interval {
            start: shift(run.start),
            stop: shift(run.stop),
        }],
        completed: false,
        error: false,
        canceled: true,
        vtx: None,
        show_tail: false,
    }
}

/// A job's line, uncoloured: " => name [status]" padded to put its timer
/// at the right edge; None when it never ran or the name gets under 12
/// columns (too narrow to say anything useful).
fn job_line(j: &Job, now: Nanos, width: usize) -> Option<String> {
    if j.intervals.is_empty() {
        return None;
    }
    let mut dt: f64 = j.intervals.iter().map(|i| secs(i.duration(now))).sum();
    if dt < 0.05 {
        dt = 0.0;
    }
    let timer = format!(" {dt:3.1}s");
    // Room for the name: the prefix, the timer and its newline, and
    // one column of margin are taken.
    let mut left = width as i64 - 4 - (timer.len() as i64 + 1) - 1;
    let mut show_status = false;
    if !j.status.is_empty() && left + j.status.len() as i64 > 20 {
        show_status = true;
        left -= j.status.len() as i64 + 1;
    }
    if left < 12 {
        return None;
    }
    let mut line = format!(" => {}", cut(&j.name, left as usize));
    if show_status {
        line.push(' ');
        line.push_str(&j.status);
    }
    Some(format!(
        "{} {timer}",
        pad(
            &line,
            (width as i64 - timer.len() as i64 - 2).max(0) as usize
        )
    ))
}

/// Keeps the last `limit` lines, but brings back running ones that would be
/// cut, in place of the oldest finished ones.
fn wrap_height(jobs: Vec<Job>, limit: i64) -> Vec<Job> {
    if limit < 0 {
        return Vec::new();
    }
    let limit = limit as usize;
    if jobs.len() <= limit {
        return jobs;
    }
    let cut_at = jobs.len() - limit;
    let mut jobs = jobs;
    let visible = jobs.split_off(cut_at);
    let invisible: Vec<Job> = jobs.into_iter().filter(|j| !j.completed).collect();
    if invisible.is_empty() {
        return visible;
    }
    let mut budget = invisible.len() as i64;
    let mut kept = Vec::with_capacity(visible.len());
    for j in visible.into_iter() {
        if !j.completed || budget <= 0 {
            kept.push(j);
        }
        budget -= 1;
    }
    let free = limit - kept.len();
    let mut out: Vec<Job> = invisible.into_iter().rev().take(free).collect();
    out.reverse();
    out.extend(kept);
    out
}

/// `s` padded with spaces to `w` characters.
fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n >= w {
        s.to_string()
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// `s` cut to at most `w` characters.
fn cut(s: &str, w: usize) -> String {
    s.chars().take(w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, completed: bool) -> Job {
        Job {
            name: name.into(),
            status: String::new(),
            intervals: Vec::new(),
            completed,
            error: false,
            canceled: false,
            vtx: None,
            show_tail: false,
        }
    }

    #[test]
    fn wrapping_keeps_running_lines() {
        let jobs = vec![
            job("a", false),
            job("b", true),
            job("c", true),
            job("d", true),
            job("e", false),
        ];
        let names: Vec<String> = wrap_height(jobs, 3).into_iter().map(|j| j.name).collect();
        assert_eq!(names, ["a", "d", "e"]);
    }
}
