//! Replaces secret values with `****` in everything the status stream would print, including secrets split across log chunks.

use std::collections::HashMap;

use crate::proto::moby::buildkit::v1::{StatusResponse, VertexLog};

/// What a secret is replaced with.
pub const MASK: &[u8] = b"****";

/// Secrets to mask in bkrun's own error lines, for the rest of the process: a daemon log's
/// tail or a step's error may hold a value the build was given. Progress views take them in
/// as they come (a registry token a cloud identity gives mid-build).
static IN_ERRORS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Masks `secrets` in every error line printed from now on.
pub fn mask_in_errors(secrets: &[Vec<u8>]) {
    let mut all = IN_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    all.extend(secrets.iter().cloned());
}

/// `line` with every secret given to `mask_in_errors` replaced.
pub fn masked_error_line(line: &str) -> String {
    let all = IN_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    if all.is_empty() {
        return line.to_string();
    }
    let m = Masker::new(all.iter().cloned());
    String::from_utf8_lossy(&m.mask(line.as_bytes())).into_owned()
}

/// Masks secrets in status messages.
///
/// Names, errors, status ids and warnings arrive whole, so they are masked
/// in place. Logs arrive in arbitrary chunks, so a secret may straddle two:
/// the tail of a chunk that could begin a secret is held back and prepended
/// to the next chunk of the same vertex and stream. Held bytes are released
/// when that vertex finishes or at [`flush`](Self::flush).
#[derive(Debug, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    /// Held-back bytes per (vertex, stream), with the chunk they came from.
    held: HashMap<(String, i64), VertexLog>,
    /// Keys of `held` in the order they were first held, so releases are
    /// deterministic.
    order: Vec<(String, i64)>,
    /// How many of `mask_in_errors`' secrets this masker has taken in: some are learnt
    /// mid-build (a registry token a cloud identity gave), after the view started.
    learnt: usize,
}

impl Masker {
    /// Empty secrets are ignored: they would match everywhere.
    pub fn new(secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker {
            secrets,
            ..Masker::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Takes in the secrets `mask_in_errors` was given since last asked.
    fn learn(&mut self) {
        let all = IN_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() == self.learnt {
            return;
        }
        let new = all[self.learnt..].iter().filter(|s| !s.is_empty()).cloned();
        self.secrets.extend(new);
        self.learnt = all.len();
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }

    /// Masks a message; may hold back the end of log chunks.
    pub fn apply(&mut self, mut resp: StatusResponse) -> StatusResponse {
        self.learn();
        if self.secrets.is_empty() {
            return resp;
        }
        for v in &mut resp.vertexes {
            self.mask_string(&mut v.name);
            self.mask_string(&mut v.error);
        }
        for s in &mut resp.statuses {
            self.mask_string(&mut s.id);
            self.mask_string(&mut s.name);
        }
        for w in &mut resp.warnings {
            w.short = self.mask(&w.short);
            for d in &mut w.detail {
                *d = self.mask(d);
            }
            self.mask_string(&mut w.url);
            if let Some(info) = &mut w.info {
                info.data = self.mask(&info.data);
            }
        }
        let mut logs = Vec::with_capacity(resp.logs.len());
        for mut l in std::mem::take(&mut resp.logs) {
            let key = (l.vertex.clone(), l.stream);
            let mut data = match self.held.remove(&key) {
                Some(h) => {
                    self.order.retain(|k| k != &key);
                    let mut d = h.msg;
                    d.extend_from_slice(&l.msg);
                    d
                }
                None => std::mem::take(&mut l.msg),
            };
            let keep = self.unsafe_suffix(&data);
            if keep > 0 {
                let tail = data.split_off(data.len() - keep);
                self.held.insert(
                    key.clone(),
                    VertexLog {
                        msg: tail,
                        ..l.clone()
                    },
                );
                self.order.push(key);
            }
            if !data.is_empty() {
                l.msg = self.mask(&data);
                logs.push(l);
            }
        }
        // A finished vertex will say no more: release what it held.
        for v in &resp.vertexes {
            if v.completed.is_some() {
                logs.extend(self.release(|(d, _)| *d == v.digest));
            }
        }
        resp.logs = logs;
        resp
    }

    /// Everything still held back, as a message to send last (if any).
    pub fn flush(&mut self) -> Option<StatusResponse> {
        let logs = self.release(|_| true);
        (!logs.is_empty()).then(|| StatusResponse {
            logs,
            ..StatusResponse::default()
        })
    }

    fn release(&mut self, pick: impl Fn(&(String, i64)) -> bool) -> Vec<VertexLog> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.order)
            .into_iter()
            .partition(|k| pick(k));
        self.order = keep;
        let held: Vec<VertexLog> = out
            .into_iter()
            .filter_map(|k| self.held.remove(&k))
            .collect();
        held.into_iter()
            .map(|mut l| {
                l.msg = self.mask(&l.msg);
                l
            })
            .collect()
    }

    /// Length of the longest suffix of `data` that is a proper prefix of a
    /// secret and does not start inside a complete match.
    fn unsafe_suffix(&self, data: &[u8]) -> usize {
        let floor = self.last_match_end(data);
        let max = self.secrets.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        let start = data.len().saturating_sub(max).max(floor);
        (start..data.len())
            .find(|&i| {
                let tail = &data[i..];
                self.secrets
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |i| data.len() - i)
    }

    fn last_match_end(&self, data: &[u8]) -> usize {
        let mut end = 0;
        let mut i = 0;
        while i < data.len() {
            match self.match_at(data, i) {
                Some(n) => {
                    i += n;
                    end = i;
                }
                None => i += 1,
            }
        }
        end
    }

    fn match_at(&self, data: &[u8], i: usize) -> Option<usize> {
        self.secrets
            .iter()
            .find(|s| data[i..].starts_with(s))
            .map(|s| s.len())
    }

    /// `data` with every secret replaced, scanning left to right and
    /// preferring the longest secret at each position.
    pub fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            match self.match_at(data, i) {
                Some(n) => {
                    out.extend_from_slice(MASK);
                    i += n;
                }
                None => {
                    out.push(data[i]);
                    i += 1;
                }
            }
        }
        out
    }

    fn mask_string(&self, s: &mut String) {
        if self.secrets.iter().any(|sec| contains(s.as_bytes(), sec)) {
            *s = String::from_utf8_lossy(&self.mask(s.as_bytes())).into_owned();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_masked_once_the_build_has_its_secrets() {
        // A value no other test uses: the list is the process's, shared by every test.
        let line = "    time=x level=error msg=\"auth failed for tok-9f3e1c77\"";
        assert_eq!(masked_error_line(line), line);
        mask_in_errors(&[b"tok-9f3e1c77".to_vec()]);
        assert_eq!(
            masked_error_line(line),
            "    time=x level=error msg=\"auth failed for ****\""
        );
    }
    use crate::proto::moby::buildkit::v1::Vertex;

    fn log(v: &str, msg: &[u8]) -> VertexLog {
        VertexLog {
            vertex: v.into(),
            stream: 1,
            msg: msg.to_vec(),
            ..VertexLog::default()
        }
    }

    fn logs_of(r: &StatusResponse) -> Vec<u8> {
        r.logs.iter().flat_map(|l| l.msg.clone()).collect()
    }

    #[test]
    fn secrets_learnt_mid_build_are_masked_too() {
        let mut m = Masker::new([b"hunter2".to_vec()]);
        // A registry token a cloud identity gave after the view started.
        mask_in_errors(&[b"ecr-token-learnt-late".to_vec()]);
        let r = m.apply(StatusResponse {
            logs: vec![log("a", b"auth ecr-token-learnt-late hunter2\n")],
            ..StatusResponse::default()
        });
        assert_eq!(logs_of(&r), b"auth **** ****\n");
    }

    #[test]
    fn masks_whole_fields() {
        let mut m = Masker::new([b"hunter2".to_vec(), Vec::new()]);
        let r = m.apply(StatusResponse {
            vertexes: vec![Vertex {
                name: "RUN echo hunter2".into(),
                error: "bad hunter2!".into(),
                ..Vertex::default()
            }],
            logs: vec![log("a", b"pw=hunter2\n")],
            ..StatusResponse::default()
        });
        assert_eq!(r.vertexes[0].name, "RUN echo ****");
        assert_eq!(r.vertexes[0].error, "bad ****!");
        assert_eq!(logs_of(&r), b"pw=****\n");
    }

    #[test]
    fn masks_across_chunks() {
        let mut m = Masker::new([b"hunter2".to_vec()]);
        let a = m.apply(StatusResponse {
            logs: vec![log("a", b"pw=hun")],
            ..StatusResponse::default()
        });
        assert_eq!(logs_of(&a), b"pw=");
        let b = m.apply(StatusResponse {
            logs: vec![log("a", b"ter2 ok\nh")],
            ..StatusResponse::default()
        });
        assert_eq!(logs_of(&b), b"**** ok\n");
        // A false alarm is released at the end.
        assert_eq!(logs_of(&m.flush().unwrap()), b"h");
        assert!(m.flush().is_none());
    }

    #[test]
    fn releases_when_vertex_completes() {
        let mut m = Masker::new([b"secret".to_vec()]);
        m.apply(StatusResponse {
            logs: vec![log("a", b"se")],
            ..StatusResponse::default()
        });
        let r = m.apply(StatusResponse {
            vertexes: vec![Vertex {
                digest: "a".into(),
                completed: Some(prost_types::Timestamp::default()),
                ..Vertex::default()
            }],
            ..StatusResponse::default()
        });
        assert_eq!(logs_of(&r), b"se");
    }

    #[test]
    fn longest_secret_wins() {
        let m = Masker::new([b"ab".to_vec(), b"abcd".to_vec()]);
        assert_eq!(m.mask(b"xabcdyab"), b"x****y****");
    }
}
