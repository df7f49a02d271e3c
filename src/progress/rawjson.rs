//! The rawjson view: each StatusResponse as one line of JSON shaped like buildctl's (Go's encoding of client.SolveStatus), for tools that post-process progress.

use std::collections::HashMap;
use std::io::{self, Write};

use base64::Engine as _;

use crate::gocompat::times::{rfc3339_nano, ts_nanos};
use crate::proto::moby::buildkit::v1::{
    StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning,
};
use crate::proto::pb;

/// Writes one JSON object per message.
///
/// Key names, key order, what is omitted when empty, base64 for bytes, the
/// RFC 3339 times and Go's string escaping (`<`, `>`, `&` as \u00XX) all
/// follow what buildctl emits. Times are the daemon's, as received: buildctl
/// additionally shifts them to its own start time, which we do not.
pub struct RawJsonPrinter<W: Write> {
    out: W,
}

impl<W: Write> RawJsonPrinter<W> {
    pub fn new(out: W) -> Self {
        RawJsonPrinter { out }
    }

    pub fn update(&mut self, resp: &StatusResponse) -> io::Result<()> {
        let mut line = encode(resp);
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The JSON text for one message, without the trailing newline.
pub fn encode(resp: &StatusResponse) -> String {
    let mut o = Obj::new();
    o.list_nonempty("vertexes", &resp.vertexes, vertex);
    o.list_nonempty("statuses", &resp.statuses, status);
    o.list_nonempty("logs", &resp.logs, log);
    o.list_nonempty("warnings", &resp.warnings, warning);
    o.finish()
}

fn vertex(v: &Vertex) -> String {
    let mut o = Obj::new();
    o.str_nonempty("digest", &v.digest);
    o.list_nonempty("inputs", &v.inputs, |s| quote(s));
    o.str_nonempty("name", &v.name);
    if let Some(t) = &v.started {
        o.raw("started", quote(&rfc3339_nano(ts_nanos(t))));
    }
    if let Some(t) = &v.completed {
        o.raw("completed", quote(&rfc3339_nano(ts_nanos(t))));
    }
    if v.cached {
        o.raw("cached", "true".into());
    }
    o.str_nonempty("error", &v.error);
    if let Some(g) = &v.progress_group {
        o.raw("progressGroup", progress_group(g));
    }
    o.finish()
}

fn status(s: &VertexStatus) -> String {
    let mut o = Obj::new();
    o.raw("id", quote(&s.id));
    o.str_nonempty("vertex", &s.vertex);
    o.str_nonempty("name", &s.name);
    if s.total != 0 {
        o.raw("total", s.total.to_string());
    }
    o.raw("current", s.current.to_string());
    // Go's zero time for a missing timestamp is the Unix epoch here.
    o.raw(
        "timestamp",
        quote(&rfc3339_nano(s.timestamp.as_ref().map_or(0, ts_nanos))),
    );
    if let Some(t) = &s.started {
        o.raw("started", quote(&rfc3339_nano(ts_nanos(t))));
    }
    if let Some(t) = &s.completed {
        o.raw("completed", quote(&rfc3339_nano(ts_nanos(t))));
    }
    o.finish()
}

fn log(l: &VertexLog) -> String {
    let mut o = Obj::new();
    o.str_nonempty("vertex", &l.vertex);
    if l.stream != 0 {
        o.raw("stream", l.stream.to_string());
    }
    // An empty message is absent on the wire, hence nil (null) in Go.
    o.raw(
        "data",
        if l.msg.is_empty() {
            "null".into()
        } else {
            b64(&l.msg)
        },
    );
    o.raw(
        "timestamp",
        quote(&rfc3339_nano(l.timestamp.as_ref().map_or(0, ts_nanos))),
    );
    o.finish()
}

fn warning(w: &VertexWarning) -> String {
    let mut o = Obj::new();
    o.str_nonempty("vertex", &w.vertex);
    if w.level != 0 {
        o.raw("level", w.level.to_string());
    }
    if !w.short.is_empty() {
        o.raw("short", b64(&w.short));
    }
    o.list_nonempty("detail", &w.detail, |d| b64(d));
    o.str_nonempty("url", &w.url);
    if let Some(si) = &w.info {
        o.raw("sourceInfo", source_info(si));
    }
    o.list_nonempty("range", &w.ranges, range);
    o.finish()
}

fn progress_group(g: &pb::ProgressGroup) -> String {
    let mut o = Obj::new();
    o.str_nonempty("id", &g.id);
    o.str_nonempty("name", &g.name);
    if g.weak {
        o.raw("weak", "true".into());
    }
    o.finish()
}

fn source_info(si: &pb::SourceInfo) -> String {
    let mut o = Obj::new();
    o.str_nonempty("filename", &si.filename);
    if !si.data.is_empty() {
        o.raw("data", b64(&si.data));
    }
    if let Some(d) = &si.definition {
        o.raw("definition", definition(d));
    }
    o.str_nonempty("language", &si.language);
    o.finish()
}

fn definition(d: &pb::Definition) -> String {
    let mut o = Obj::new();
    o.list_nonempty("def", &d.def, |b| b64(b));
    o.map_nonempty("metadata", &d.metadata, op_metadata);
    if let Some(s) = &d.source {
        // Capitalised: that is the Go field's JSON name.
        o.raw("Source", source(s));
    }
    o.finish()
}

fn op_metadata(m: &pb::OpMetadata) -> String {
    let mut o = Obj::new();
    if m.ignore_cache {
        o.raw("ignore_cache", "true".into());
    }
    o.map_nonempty("description", &m.description, |s| quote(s));
    if let Some(e) = &m.export_cache {
        let mut eo = Obj::new();
        if e.value {
            eo.raw("Value", "true".into());
        }
        o.raw("export_cache", eo.finish());
    }
    o.map_nonempty("caps", &m.caps, |b| b.to_string());
    if let Some(g) = &m.progress_group {
        o.raw("progress_group", progress_group(g));
    }
    if let Some(r) = &m.linux_resources {
        let mut ro = Obj::new();
        let signed = [("memory", r.memory), ("memorySwap", r.memory_swap)];
        let unsigned = [("cpuShares", r.cpu_shares), ("cpuPeriod", r.cpu_period)];
        let nums = signed
            .iter()
            .map(|&(k, v)| (k, v.to_string(), v == 0))
            .chain(unsigned.iter().map(|&(k, v)| (k, v.to_string(), v == 0)))
            .chain([("cpuQuota", r.cpu_quota.to_string(), r.cpu_quota == 0)]);
        for (k, v, zero) in nums {
            if !zero {
                ro.raw(k, v);
            }
        }
        ro.str_nonempty("cpusetCpus", &r.cpuset_cpus);
        ro.str_nonempty("cpusetMems", &r.cpuset_mems);
        o.raw("linux_resources", ro.finish());
    }
    o.finish()
}

fn source(s: &pb::Source) -> String {
    let mut o = Obj::new();
    o.map_nonempty("locations", &s.locations, |l| {
        let mut lo = Obj::new();
        lo.list_nonempty("locations", &l.locations, |loc| {
            let mut x = Obj::new();
            if loc.source_index != 0 {
                x.raw("sourceIndex", loc.source_index.to_string());
            }
            x.list_nonempty("ranges", &loc.ranges, range);
            x.finish()
        });
        lo.finish()
    });
    o.list_nonempty("infos", &s.infos, source_info);
    o.finish()
}

fn range(r: &pb::Range) -> String {
    let mut o = Obj::new();
    if let Some(p) = &r.start {
        o.raw("start", position(p));
    }
    if let Some(p) = &r.end {
        o.raw("end", position(p));
    }
    o.finish()
}

fn position(p: &pb::Position) -> String {
    let mut o = Obj::new();
    if p.line != 0 {
        o.raw("line", p.line.to_string());
    }
    if p.character != 0 {
        o.raw("character", p.character.to_string());
    }
    o.finish()
}

fn b64(b: &[u8]) -> String {
    format!(
        "\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// A JSON string as Go's encoder writes it, HTML-significant characters escaped too.
pub fn quote(s: &str) -> String {
    crate::gocompat::jsonstr::quote(s, crate::gocompat::jsonstr::Html::Escaped)
}

/// Builds one JSON object, keys in insertion order.
struct Obj {
    buf: String,
}

impl Obj {
    fn new() -> Self {
        Obj {
            buf: String::from("{"),
        }
    }

    fn raw(&mut self, key: &str, value: String) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push_str(&quote(key));
        self.buf.push(':');
        self.buf.push_str(&value);
    }

    fn str_nonempty(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.raw(key, quote(value));
        }
    }

    fn list_nonempty<T>(&mut self, key: &str, items: &[T], f: impl Fn(&T) -> String) {
        if !items.is_empty() {
            let parts: Vec<String> = items.iter().map(f).collect();
            self.raw(key, format!("[{}]", parts.join(",")));
        }
    }

    /// A map, keys sorted as Go's encoder sorts them.
    fn map_nonempty<T>(&mut self, key: &str, map: &HashMap<String, T>, f: impl Fn(&T) -> String) {
        if map.is_empty() {
            return;
        }
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let mut inner = Obj::new();
        for k in keys {
            inner.raw(k, f(&map[k]));
        }
        self.raw(key, inner.finish());
    }

    fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_string_escapes() {
        assert_eq!(
            quote("a&&b <c> \"q\"\n\u{1}"),
            r#""a\u0026\u0026b \u003cc\u003e \"q\"\n\u0001""#
        );
    }
}
