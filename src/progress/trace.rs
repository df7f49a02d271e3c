//! The build's state as learned from the status stream: vertices, their run intervals, statuses, logs and warnings, with progress groups folded into one vertex each; both the plain and the tty views read it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::term::Tail;
use crate::gocompat::durations::log_offset;
use crate::gocompat::times::{opt_nanos, ts_nanos, Nanos};
use crate::proto::moby::buildkit::v1::{
    StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning,
};
use crate::proto::pb::ProgressGroup;

/// How many finished log lines a vertex keeps for the error report.
const LOG_RING_SIZE: usize = 10;

/// One run of a vertex. A vertex may run more than once (a retried or
/// re-requested step), and its duration is the union of its runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interval {
    pub start: Option<Nanos>,
    pub stop: Option<Nanos>,
}

impl Interval {
    /// Length of the run; a run still going counts up to `now`.
    pub fn duration(&self, now: Nanos) -> i64 {
        match (self.start, self.stop) {
            (None, _) => 0,
            (Some(start), None) => now - start,
            (Some(start), Some(stop)) => stop - start,
        }
    }
}

/// Unions overlapping runs. Runs never started are dropped; an open run
/// (no stop) swallows everything after it, since it may still be going.
pub fn merge_intervals(intervals: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut runs: Vec<(Nanos, Option<Nanos>)> = intervals
        .into_iter()
        .filter_map(|i| i.start.map(|s| (s, i.stop)))
        .collect();
    runs.sort_by_key(|r| r.0);
    let mut merged: Vec<(Nanos, Option<Nanos>)> = Vec::new();
    let mut iter = runs.into_iter();
    let Some(mut cur) = iter.next() else {
        return Vec::new();
    };
    for next in iter {
        let Some(cur_stop) = cur.1 else {
            break;
        };
        if cur_stop < next.0 {
            merged.push(cur);
            cur = next;
            continue;
        }
        match next.1 {
            None => {
                cur.1 = None;
                break;
            }
            Some(next_stop) if next_stop > cur_stop => cur.1 = Some(next_stop),
            Some(_) => {}
        }
    }
    merged.push(cur);
    merged
        .into_iter()
        .map(|(s, e)| Interval {
            start: Some(s),
            stop: e,
        })
        .collect()
}

/// The fields of a Vertex message the views use, with times decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VertexInfo {
    pub digest: String,
    pub name: String,
    pub started: Option<Nanos>,
    pub completed: Option<Nanos>,
    pub cached: bool,
    pub error: String,
    pub progress_group: Option<ProgressGroup>,
}

impl From<&Vertex> for VertexInfo {
    fn from(v: &Vertex) -> Self {
        VertexInfo {
            digest: v.digest.clone(),
            name: v.name.clone(),
            started: opt_nanos(&v.started),
            completed: opt_nanos(&v.completed),
            cached: v.cached,
            error: v.error.clone(),
            progress_group: v.progress_group.clone(),
        }
    }
}

/// The latest state of one named status (e.g. "transferring context:").
#[derive(Clone, Debug, Default)]
pub struct StatusInfo {
    pub id: String,
    pub current: i64,
    pub total: i64,
    pub timestamp: Nanos,
    pub started: Option<Nanos>,
    pub completed: Option<Nanos>,
}

/// The last few finished log lines of a vertex, replayed when it fails.
/// It mirrors upstream's ring, quirks included: the slot under the cursor
/// holds the line being written and only advances once a line is complete.
#[derive(Debug, Default)]
pub struct LogRing {
    slots: Vec<Option<Vec<u8>>>,
    pos: usize,
}

impl LogRing {
    /// Stores `line` in the current slot, advancing only if `advance`.
    pub fn put(&mut self, line: Vec<u8>, advance: bool) {
        if self.slots.is_empty() {
            self.slots = vec![None; LOG_RING_SIZE];
        }
        self.slots[self.pos] = Some(line);
        if advance {
            self.pos = (self.pos + 1) % self.slots.len();
        }
    }

    /// Filled slots, starting from the cursor and wrapping around.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let n = self.slots.len();
        (0..n).filter_map(move |k| self.slots[(self.pos + k) % n].as_deref())
    }
}

/// One vertex as shown to the user: a real vertex, or a progress group that
/// stands in for all of its member vertices.
#[derive(Debug, Default)]
pub struct Vtx {
    pub info: VertexInfo,
    /// Status ids in the order they started; the latest values are in `by_id`.
    pub statuses: Vec<String>,
    pub by_id: HashMap<String, StatusInfo>,
    /// The `#N` number, 0 until first printed.
    pub index: usize,
    /// Log lines not printed yet, each prefixed with its time offset; the
    /// last may be unfinished (`logs_partial`), and `logs_offset` bytes of
    /// it may already be on screen.
    pub logs: Vec<Vec<u8>>,
    pub logs_partial: bool,
    pub logs_offset: usize,
    pub log_ring: LogRing,
    prev: Option<VertexInfo>,
    /// When the current burst of activity began, and how many updates it
    /// had: the plain view uses this to decide which vertex gets the screen.
    pub last_block_time: Option<Nanos>,
    pub count: i64,
    pub status_updates: HashSet<String>,
    pub warnings: Vec<VertexWarning>,
    pub warning_idx: usize,
    /// Runs keyed by start time, so a repeated report of a run replaces it.
    pub intervals: BTreeMap<Nanos, Interval>,
    pub merged: Vec<Interval>,
    /// A progress group stays hidden until a non-weak member starts.
    pub hidden: bool,
    /// For a progress group: its members' latest states, in arrival order.
    members: Vec<VertexInfo>,
    /// The tty view's picture of the recent output.
    pub tail: Option<Tail>,
}

impl Vtx {
    fn bump(&mut self, now: Nanos) {
        if self.count == 0 {
            self.last_block_time = Some(now);
        }
        self.count += 1;
    }

    pub fn most_recent(&self) -> Option<&Interval> {
        self.merged.last()
    }

    pub fn is_started(&self) -> bool {
        !self.merged.is_empty()
    }

    pub fn is_completed(&self) -> bool {
        self.most_recent().is_some_and(|i| i.stop.is_some())
    }

    /// Whether the error means the step was cancelled rather than failed.
    pub fn is_canceled(&self) -> bool {
        self.info.error.ends_with("context canceled")
    }

    fn remerge(&mut self) {
        self.merged = merge_intervals(self.intervals.values().copied());
    }

    /// Splits a chunk of output into pending lines: its first piece
    /// continues an unfinished last line, and each new line starts with
    /// `offset` as upstream prints it.
    fn push_log(&mut self, msg: &[u8], offset: i64) {
        // An empty chunk adds nothing yet leaves the line open, as
        // upstream's splitter does.
        let complete = msg.ends_with(b"\n");
        let body = if complete { &msg[..msg.len() - 1] } else { msg };
        let pieces = (!msg.is_empty())
            .then(|| body.split(|&b| b == b'\n'))
            .into_iter()
            .flatten();
        let mut first = true;
        for piece in pieces {
            if first && self.logs_partial && !self.logs.is_empty() {
                self.logs
                    .last_mut()
                    .expect("non-empty")
                    .extend_from_slice(piece);
            } else {
                let mut line = log_offset(offset).into_bytes();
                line.push(b' ');
                line.extend_from_slice(piece);
                self.logs.push(line);
            }
            first = false;
        }
        self.logs_partial = !complete;
    }

    /// Recomputes a group from its members; returns (changed, newly started,
    /// newly revealed).
    fn refresh_group(&mut self) -> (bool, bool, bool) {
        let mut next = self.info.clone();
        next.cached = true;
        let already_started = self.is_started();
        let was_hidden = self.hidden;
        let (mut changed, mut newly_started) = (false, false);
        for m in &self.members {
            if let Some(start) = m.started {
                let run = Interval {
                    start: Some(start),
                    stop: m.completed,
                };
                if self.intervals.get(&start) != Some(&run) {
                    changed = true;
                }
                if !already_started {
                    newly_started = true;
                }
                self.intervals.insert(start, run);
                if !m.progress_group.as_ref().is_some_and(|g| g.weak) {
                    self.hidden = false;
                }
            }
            // Cached only if every member is; the error is the first found,
            // and a second error also reveals the group (as upstream does).
            next.cached = next.cached && m.cached;
            if next.error.is_empty() {
                next.error = m.error.clone();
            } else {
                self.hidden = false;
            }
        }
        if self.info.cached != next.cached || self.info.error != next.error {
            changed = true;
        }
        self.info = next;
        let mut newly_revealed = false;
        if !self.hidden && was_hidden {
            changed = true;
            newly_revealed = true;
        }
        self.remerge();
        (changed, newly_started, newly_revealed)
    }
}

/// Everything known about the build so far.
#[derive(Debug, Default)]
pub struct Trace {
    pub vtxs: Vec<Vtx>,
    by_digest: HashMap<String, usize>,
    /// Digests in order of first sighting: our stand-in for the iteration
    /// order of upstream's maps, which is random there.
    pub digest_order: Vec<String>,
    /// Vertices in the order they started (groups: when revealed).
    pub started: Vec<usize>,
    /// Digests with news the plain view has not printed yet.
    pub updates: HashSet<String>,
    groups: HashMap<String, usize>,
    /// Time of the first start seen, and the local clock's lead over the
    /// daemon's, so the tty view can time things with the local clock.
    pub start_time: Option<Nanos>,
    pub local_time_diff: i64,
    /// Width of the tty's log tails; None for the plain view (no tails).
    pub tail_width: Option<usize>,
    /// Rows of the tty's log tails.
    pub tail_height: usize,
}

impl Trace {
    pub fn new(tail_width: Option<usize>, tail_height: usize) -> Self {
        Trace {
            tail_width,
            tail_height,
            ..Trace::default()
        }
    }

    /// The vertex a digest (or progress group id) maps to.
    pub fn lookup(&self, digest: &str) -> Option<usize> {
        self.by_digest.get(digest).copied()
    }

    pub fn get(&self, digest: &str) -> Option<&Vtx> {
        self.lookup(digest).map(|i| &self.vtxs[i])
    }

    fn bind(&mut self, digest: &str, idx: usize) {
        if self.by_digest.insert(digest.to_string(), idx).is_none() {
            self.digest_order.push(digest.to_string());
        }
    }

    fn new_vtx(&mut self, info: VertexInfo, hidden: bool) -> usize {
        let tail = self
            .tail_width
            .map(|w| Tail::new(w.max(1), self.tail_height));
        self.vtxs.push(Vtx {
            info,
            hidden,
            tail,
            ..Vtx::default()
        });
        self.vtxs.len() - 1
    }

    /// Notes a vertex report, marking the vertex updated if it changed.
    fn vertex_event(&mut self, idx: usize, v: &VertexInfo, now: Nanos) {
        if v.started.is_none() {
            return;
        }
        let vtx = &mut self.vtxs[idx];
        let old = vtx.prev.take().unwrap_or_default();
        // A report carrying a completion always counts as news: upstream
        // compares those by pointer, which differ between messages.
        let changed = v.digest != old.digest
            || v.name != old.name
            || v.started != old.started
            || v.completed.is_some()
            || v.cached != old.cached
            || v.error != old.error;
        if changed {
            vtx.bump(now);
            self.updates.insert(v.digest.clone());
        }
        vtx.prev = Some(v.clone());
    }

    /// Folds one StatusResponse into the state. `now` is the local clock.
    ///
    /// Vertices come first, so that the statuses, warnings and logs of the
    /// same message find the vertex they name; a group is recomputed once,
    /// after all of its members in the message are in.
    pub fn update(&mut self, s: &StatusResponse, now: Nanos) {
        let mut groups: Vec<String> = Vec::new();
        for v in &s.vertexes {
            let info = VertexInfo::from(v);
            if self.start_time.is_none() {
                self.start_time = info.started;
            }
            match &v.progress_group {
                Some(pg) => {
                    if !groups.contains(&pg.id) {
                        groups.push(pg.id.clone());
                    }
                    self.member_report(pg, info);
                }
                None => self.vertex_report(info, now),
            }
        }
        for id in &groups {
            self.group_refresh(id, now);
        }
        for st in &s.statuses {
            self.status_report(st, now);
        }
        // Warnings do not mark the vertex as updated: they are printed the
        // next time the vertex is, as upstream does.
        for w in &s.warnings {
            let Some(idx) = self.lookup(&w.vertex) else {
                continue;
            };
            let vtx = &mut self.vtxs[idx];
            vtx.warnings.push(w.clone());
            vtx.bump(now);
        }
        for l in &s.logs {
            self.log_report(l, now);
        }
    }

    /// Records a group member's report in its group, making the group
    /// (hidden) on first sight; the member's digest then names the group.
    fn member_report(&mut self, pg: &ProgressGroup, info: VertexInfo) {
        let gi = match self.groups.get(&pg.id) {
            Some(&gi) => gi,
            None => {
                let group = VertexInfo {
                    digest: pg.id.clone(),
                    name: pg.name.clone(),
                    ..VertexInfo::default()
                };
                let gi = self.new_vtx(group, true);
                self.groups.insert(pg.id.clone(), gi);
                self.bind(&pg.id, gi);
                gi
            }
        };
        let digest = info.digest.clone();
        let members = &mut self.vtxs[gi].members;
        match members.iter_mut().find(|m| m.digest == info.digest) {
            Some(m) => *m = info,
            None => members.push(info),
        }
        self.bind(&digest, gi);
    }

    /// Takes the report of a vertex outside any group: its info, its place
    /// in the start order when it first starts, and the run it reports.
    fn vertex_report(&mut self, info: VertexInfo, now: Nanos) {
        let prev = self.lookup(&info.digest);
        let idx = match prev {
            Some(idx) => idx,
            None => {
                let idx = self.new_vtx(VertexInfo::default(), false);
                self.bind(&info.digest, idx);
                idx
            }
        };
        self.vertex_event(idx, &info, now);
        let was_started = self.vtxs[idx].is_started();
        if let Some(start) = info.started {
            if prev.is_none() || !was_started {
                if self.local_time_diff == 0 {
                    self.local_time_diff = now - start;
                }
                self.started.push(idx);
            }
        }
        let run = Interval {
            start: info.started,
            stop: info.completed,
        };
        let vtx = &mut self.vtxs[idx];
        // A late duplicate of the initial, unstarted report must not
        // wipe what a started report told us.
        if prev.is_none() || !was_started || info.started.is_some() {
            vtx.info = info;
        }
        if let Some(start) = run.start {
            vtx.intervals.insert(start, run);
            vtx.remerge();
        }
    }

    /// Recomputes a group from its members after a message named some of
    /// them; a group still hidden takes no part in the views yet.
    fn group_refresh(&mut self, id: &str, now: Nanos) {
        let gi = self.groups[id];
        let (changed, newly_started, newly_revealed) = self.vtxs[gi].refresh_group();
        if newly_started && self.local_time_diff == 0 {
            if let Some(start) = self.vtxs[gi].merged.first().and_then(|i| i.start) {
                self.local_time_diff = now - start;
            }
        }
        if self.vtxs[gi].hidden {
            return;
        }
        if newly_revealed {
            self.started.push(gi);
        }
        if changed {
            self.vtxs[gi].bump(now);
            self.updates.insert(self.vtxs[gi].info.digest.clone());
        }
    }

    /// Takes a status's latest values; a status joins its vertex's list
    /// when it first reports a start.
    fn status_report(&mut self, st: &VertexStatus, now: Nanos) {
        let Some(idx) = self.lookup(&st.vertex) else {
            return;
        };
        let vtx = &mut self.vtxs[idx];
        let info = StatusInfo {
            id: st.id.clone(),
            current: st.current,
            total: st.total,
            timestamp: st.timestamp.as_ref().map(ts_nanos).unwrap_or(0),
            started: opt_nanos(&st.started),
            completed: opt_nanos(&st.completed),
        };
        let prev_started = vtx.by_id.get(&st.id).is_some_and(|p| p.started.is_some());
        if info.started.is_some() && !prev_started {
            vtx.statuses.push(st.id.clone());
        }
        vtx.by_id.insert(st.id.clone(), info);
        vtx.status_updates.insert(st.id.clone());
        self.updates.insert(vtx.info.digest.clone());
        vtx.bump(now);
    }

    /// Takes a chunk of a vertex's output: into the tty's tail as is, and
    /// into the plain view's pending lines, stamped with the time since
    /// the vertex's latest run began.
    fn log_report(&mut self, l: &VertexLog, now: Nanos) {
        let Some(idx) = self.lookup(&l.vertex) else {
            return;
        };
        let vtx = &mut self.vtxs[idx];
        if let Some(tail) = &mut vtx.tail {
            tail.write(&l.msg);
        }
        let ts = l.timestamp.as_ref().map(ts_nanos).unwrap_or(0);
        let offset = vtx
            .most_recent()
            .and_then(|i| i.start)
            .map_or(0, |start| ts - start);
        vtx.push_log(&l.msg, offset);
        self.updates.insert(vtx.info.digest.clone());
        vtx.bump(now);
    }

    /// Vertices that failed (not cancelled), in start order, for the error
    /// report printed after the progress.
    pub fn failed(&self) -> impl Iterator<Item = &Vtx> {
        self.started
            .iter()
            .map(|&i| &self.vtxs[i])
            .filter(|v| !v.info.error.is_empty() && !v.is_canceled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(a: i64, b: Option<i64>) -> Interval {
        Interval {
            start: Some(a),
            stop: b,
        }
    }

    #[test]
    fn merging_runs() {
        assert!(merge_intervals([]).is_empty());
        assert_eq!(
            merge_intervals([iv(0, Some(1)), Interval::default()]),
            vec![iv(0, Some(1))]
        );
        assert_eq!(
            merge_intervals([iv(7, Some(8)), iv(0, Some(1)), iv(2, Some(3))]),
            vec![iv(0, Some(1)), iv(2, Some(3)), iv(7, Some(8))]
        );
        assert_eq!(
            merge_intervals([iv(0, Some(10)), iv(1, Some(2)), iv(9, Some(12))]),
            vec![iv(0, Some(12))]
        );
        assert_eq!(
            merge_intervals([iv(0, Some(2)), iv(1, None), iv(5, Some(6))]),
            vec![iv(0, None)]
        );
        assert_eq!(
            merge_intervals([iv(0, None), iv(5, Some(6))]),
            vec![iv(0, None)]
        );
        // Touching runs merge: a stop equal to the next start is not "before".
        assert_eq!(
            merge_intervals([iv(0, Some(2)), iv(2, Some(3))]),
            vec![iv(0, Some(3))]
        );
    }

    #[test]
    fn ring_keeps_last_ten_oldest_first() {
        let mut r = LogRing::default();
        for i in 0..12u8 {
            r.put(vec![b'a' + i], true);
        }
        let got: Vec<u8> = r.lines().map(|l| l[0]).collect();
        assert_eq!(got, (2..12u8).map(|i| b'a' + i).collect::<Vec<_>>());
    }
}
