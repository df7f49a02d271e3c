//! The build's steps as a summary reports them: each step's time, whether it was cached, how it ended, its number in the plain view, and the last lines a failed step printed.

use std::collections::{HashMap, VecDeque};

use super::trace::Trace;
use crate::proto::moby::buildkit::v1::StatusResponse;

/// How many of a step's last output lines are kept for a failure's report.
const TAIL_LINES: usize = 10;

/// And how much of each line: a step that prints megabytes without a newline must not make
/// bkrun hold them.
const LINE_BYTES: usize = 2000;

/// How a step stood when the Status stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Done,
    Cached,
    Failed,
    /// Cancelled (a signal, `--build-timeout`, or a sibling step's failure).
    Canceled,
    /// Started and never finished before the stream ended.
    Running,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Done => "done",
            StepState::Cached => "cached",
            StepState::Failed => "failed",
            StepState::Canceled => "canceled",
            StepState::Running => "running",
        }
    }
}

/// One step (a vertex, or a progress group standing for its members).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub digest: String,
    /// `#N` as the plain view printed it; None in the other views.
    pub number: Option<usize>,
    pub name: String,
    /// The time its runs took together (a run still going counts up to the last time seen).
    pub seconds: f64,
    pub state: StepState,
    pub error: String,
    /// Its last output lines (masked), kept only for a failed step.
    pub log: Vec<String>,
}

/// The steps of `trace` in the order they started; `number` gives the plain view's `#N`.
pub(crate) fn steps(
    trace: &Trace,
    tails: &Tails,
    number: &dyn Fn(&str) -> Option<usize>,
) -> Vec<Step> {
    let last_seen = trace
        .vtxs
        .iter()
        .flat_map(|v| v.merged.iter())
        .filter_map(|i| i.stop.or(i.start))
        .max()
        .unwrap_or(0);
    trace
        .started
        .iter()
        .map(|&i| &trace.vtxs[i])
        .filter(|v| !v.hidden)
        .map(|v| {
            let state = match () {
                _ if v.is_canceled() => StepState::Canceled,
                _ if !v.info.error.is_empty() => StepState::Failed,
                _ if !v.is_completed() => StepState::Running,
                _ if v.info.cached => StepState::Cached,
                _ => StepState::Done,
            };
            let nanos: i64 = v.merged.iter().map(|i| i.duration(last_seen)).sum();
            Step {
                digest: v.info.digest.clone(),
                number: number(&v.info.digest),
                name: v.info.name.clone(),
                seconds: nanos.max(0) as f64 / 1e9,
                state,
                error: v.info.error.clone(),
                log: match state {
                    StepState::Failed => tails.lines(&v.info.digest),
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

/// The last output lines of every step, so a failed one's can be reported.
#[derive(Debug, Default)]
pub(crate) struct Tails {
    by_vertex: HashMap<String, Tail>,
}

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    /// The last line has no newline yet: the next chunk continues it.
    open: bool,
}

impl Tails {
    pub(crate) fn update(&mut self, resp: &StatusResponse) {
        for l in &resp.logs {
            let tail = self.by_vertex.entry(l.vertex.clone()).or_default();
            let text = String::from_utf8_lossy(&l.msg);
            let complete = text.ends_with('\n');
            let body = text.strip_suffix('\n').unwrap_or(&text);
            for (k, piece) in body.split('\n').enumerate() {
                match tail.lines.back_mut() {
                    Some(last) if k == 0 && tail.open => push_clipped(last, piece),
                    _ => {
                        let mut line = String::new();
                        push_clipped(&mut line, piece);
                        tail.lines.push_back(line);
                    }
                }
                if tail.lines.len() > TAIL_LINES {
                    tail.lines.pop_front();
                }
            }
            tail.open = !complete;
        }
    }

    fn lines(&self, digest: &str) -> Vec<String> {
        self.by_vertex
            .get(digest)
            .map(|t| t.lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// `line` with `piece` added, up to LINE_BYTES (cut on a character boundary, marked `…`).
fn push_clipped(line: &mut String, piece: &str) {
    if line.len() >= LINE_BYTES {
        return;
    }
    let room = LINE_BYTES - line.len();
    if piece.len() <= room {
        line.push_str(piece);
        return;
    }
    let mut cut = room;
    while !piece.is_char_boundary(cut) {
        cut -= 1;
    }
    line.push_str(&piece[..cut]);
    line.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::moby::buildkit::v1::VertexLog;

    fn log(vertex: &str, msg: &str) -> StatusResponse {
        StatusResponse {
            logs: vec![VertexLog {
                vertex: vertex.into(),
                msg: msg.as_bytes().to_vec(),
                ..VertexLog::default()
            }],
            ..StatusResponse::default()
        }
    }

    #[test]
    fn tails_join_split_chunks_and_keep_the_last_ten_lines() {
        let mut t = Tails::default();
        t.update(&log("a", "one\ntw"));
        t.update(&log("a", "o\n"));
        assert_eq!(t.lines("a"), ["one", "two"]);
        for i in 0..12 {
            t.update(&log("a", &format!("line {i}\n")));
        }
        let l = t.lines("a");
        assert_eq!(l.len(), TAIL_LINES);
        assert_eq!(l[0], "line 2");
        assert_eq!(l[9], "line 11");
        assert!(t.lines("b").is_empty());
        // A line without end is kept to its first LINE_BYTES.
        for _ in 0..3 {
            t.update(&log("c", &"é".repeat(LINE_BYTES)));
        }
        let c = t.lines("c");
        assert_eq!(c.len(), 1);
        assert!(
            c[0].len() <= LINE_BYTES + '…'.len_utf8() && c[0].ends_with('…'),
            "{}",
            c[0].len()
        );
    }
}
