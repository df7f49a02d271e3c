//! A build's summary: what it made, the mode and why, the daemon's start and the build's time, the slowest steps, what the cache did, BuildKit's warnings, and on failure why; as Markdown where the CI shows it and as a stable JSON document for tools (docs/summary.md has the schema).

mod markdown;
pub mod why;
mod write;

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::progress::{Step, StepState};
use crate::proto::moby::buildkit::v1::VertexWarning;
use crate::request::build::BuildSpec;
use crate::request::csv::parse_bool;
use crate::request::output::{Destination, Output, OutputKind};

pub use markdown::markdown;
pub use write::write;

/// The JSON document's schema name; a change that is not an addition gets a new version.
pub const SCHEMA: &str = "bkrun.summary/v1";

/// How many of the slowest steps the summary names.
const SLOWEST: usize = 5;

/// The whole summary, serialized as the JSON form.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// succeeded, failed or timed-out.
    pub result: &'static str,
    pub exit_code: i32,
    /// The daemon bkrun started (None: an existing daemon was used).
    pub daemon: Option<Daemon>,
    /// The existing daemon's address, when one was used.
    pub remote: Option<String>,
    pub build_seconds: f64,
    /// `--opt platform=…` / `--platform`, as given (empty: the daemon's own).
    pub platforms: Vec<String>,
    /// The outputs asked for; only a succeeded build wrote them.
    pub outputs: Vec<OutputEntry>,
    /// The attestations asked of the frontend (`attest:KIND` options: --sbom, --provenance,
    /// --attest, or the docker-style default); BuildKit attaches them to image outputs.
    pub attestations: Vec<Attestation>,
    pub cache: Cache,
    /// The slowest steps, slowest first (at most five).
    pub slowest_steps: Vec<StepEntry>,
    pub warnings: Vec<Warning>,
    pub failure: Option<Failure>,
}

/// The daemon bkrun started for the build.
#[derive(Clone, Debug, Serialize)]
pub struct Daemon {
    pub mode: String,
    pub why: String,
    /// From its start until it served.
    pub start_seconds: f64,
}

/// One `--output`, with what the daemon answered for it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputEntry {
    #[serde(rename = "type")]
    pub kind: String,
    /// Image names (type=image/registry, and oci/docker with name=).
    pub names: Vec<String>,
    /// The image's (or image index's) digest, from the exporter's response.
    pub digest: Option<String>,
    pub pushed: bool,
    /// Where a file or directory output went (`-`: stdout).
    pub dest: Option<String>,
}

/// One attestation asked for: its kind and BuildKit's parameters for it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Attestation {
    /// sbom or provenance.
    pub kind: String,
    /// The option's value as sent, less `type=` (e.g. `mode=min,inline-only=true`,
    /// `generator=IMAGE`).
    pub params: String,
}

/// What the cache did: steps cached of the steps that finished.
#[derive(Clone, Debug, Serialize)]
pub struct Cache {
    pub steps_cached: usize,
    pub steps_total: usize,
    /// The same line bkrun prints when the build ends.
    pub line: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepEntry {
    /// `#N` in the plain progress, when it was printed there.
    pub number: Option<usize>,
    pub name: String,
    pub seconds: f64,
    /// done, cached, failed, canceled or running.
    pub state: &'static str,
}

/// One of BuildKit's warnings (the Dockerfile checks, deprecated options).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Warning {
    pub message: String,
    pub detail: Vec<String>,
    pub url: Option<String>,
    /// `Dockerfile:3`, when BuildKit named the place.
    pub location: Option<String>,
}

/// Why the build failed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failure {
    /// The one line that says what happened and what to change (OOM, disk, timeout), if known.
    pub diagnosis: Option<String>,
    /// The failing step, as the progress named it.
    pub step: Option<StepEntry>,
    /// BuildKit's error.
    pub error: String,
    /// The failing step's last output lines.
    pub log: Vec<String>,
    /// The Dockerfile lines around the failing instruction, as buildctl prints them.
    pub excerpt: Option<String>,
}

/// What the run knows besides the spec when the build has ended.
pub struct Ended<'a> {
    pub exit_code: i32,
    pub timed_out: bool,
    pub daemon: Option<Daemon>,
    pub remote: Option<String>,
    pub took: Duration,
    /// The exporter's response, when the build succeeded.
    pub response: Option<&'a HashMap<String, String>>,
    pub steps: &'a [Step],
    pub warnings: &'a [VertexWarning],
    pub cache: &'a crate::progress::CacheStats,
    /// BuildKit's error and its Dockerfile excerpt, when it failed.
    pub error: Option<(String, Option<String>)>,
    pub diagnosis: Option<String>,
}

/// Assembles the report of a build that ended as `e` says.
pub fn report(spec: &BuildSpec, e: &Ended) -> Report {
    let result = match (e.timed_out, e.exit_code) {
        (true, _) => "timed-out",
        (false, 0) => "succeeded",
        _ => "failed",
    };
    Report {
        schema: SCHEMA,
        result,
        exit_code: e.exit_code,
        daemon: e.daemon.clone(),
        remote: e.remote.clone(),
        build_seconds: round(e.took.as_secs_f64()),
        platforms: platforms(spec),
        outputs: spec
            .outputs
            .iter()
            .map(|o| output_entry(o, e.response))
            .collect(),
        attestations: attestations(spec),
        cache: Cache {
            steps_cached: e.cache.steps_cached,
            steps_total: e.cache.steps_total,
            line: e.cache.line().trim_start_matches("bkrun: ").to_string(),
        },
        slowest_steps: slowest(e.steps),
        warnings: e.warnings.iter().map(warning).collect(),
        failure: (e.exit_code != 0).then(|| failure(e)),
    }
}

/// The `attest:KIND` frontend options, less those turned off (`disabled=true`).
fn attestations(spec: &BuildSpec) -> Vec<Attestation> {
    spec.opts
        .iter()
        .filter_map(|(k, v)| {
            let kind = k.strip_prefix("attest:")?;
            let off = v.split(',').any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "disabled" && parse_bool(v.trim()) == Some(true)
                })
            });
            // buildx repeats the kind as `type=KIND` in the value; the summary says it once.
            let params: Vec<&str> = v
                .split(',')
                .filter(|p| !p.trim().starts_with("type="))
                .collect();
            (!off).then(|| Attestation {
                kind: kind.to_string(),
                params: params.join(","),
            })
        })
        .collect()
}

fn round(secs: f64) -> f64 {
    (secs * 100.0).round() / 100.0
}

fn platforms(spec: &BuildSpec) -> Vec<String> {
    spec.opts
        .get("platform")
        .map(|p| p.split(',').map(str::trim).map(str::to_string).collect())
        .unwrap_or_default()
}

fn output_entry(o: &Output, response: Option<&HashMap<String, String>>) -> OutputEntry {
    let names = o
        .attrs
        .get("name")
        .map(|n| {
            n.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let digest = match o.kind {
        OutputKind::Image | OutputKind::Oci | OutputKind::Docker => response
            .and_then(|r| r.get("containerimage.digest"))
            .cloned(),
        _ => None,
    };
    let dest = match o.destination() {
        Destination::Dir(d) | Destination::Layout(d) | Destination::File(d) => {
            Some(d.display().to_string())
        }
        Destination::Stdout => Some("-".into()),
        Destination::Daemon => None,
    };
    OutputEntry {
        kind: o.kind.as_str().to_string(),
        names,
        digest,
        pushed: o.kind == OutputKind::Image
            && o.attrs.get("push").and_then(|v| parse_bool(v)) == Some(true),
        dest,
    }
}

fn step_entry(s: &Step) -> StepEntry {
    StepEntry {
        number: s.number,
        name: s.name.clone(),
        seconds: round(s.seconds),
        state: s.state.as_str(),
    }
}

/// The slowest steps that ran (a cached step took no time of its own).
fn slowest(steps: &[Step]) -> Vec<StepEntry> {
    let mut ran: Vec<&Step> = steps
        .iter()
        .filter(|s| s.state != StepState::Cached)
        .collect();
    ran.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    ran.into_iter().take(SLOWEST).map(step_entry).collect()
}

fn warning(w: &VertexWarning) -> Warning {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
    let line = w
        .ranges
        .first()
        .and_then(|r| r.start.as_ref())
        .map(|p| p.line);
    let location = w.info.as_ref().map(|i| match line {
        Some(l) if l > 0 => format!("{}:{l}", i.filename),
        _ => i.filename.clone(),
    });
    Warning {
        message: text(&w.short),
        detail: w
            .detail
            .iter()
            .map(|d| text(d))
            .filter(|d| !d.is_empty())
            .collect(),
        url: Some(w.url.clone()).filter(|u| !u.is_empty()),
        location,
    }
}

fn failure(e: &Ended) -> Failure {
    let failed = e.steps.iter().find(|s| s.state == StepState::Failed);
    let (error, excerpt) = e.error.clone().unwrap_or_default();
    Failure {
        diagnosis: e.diagnosis.clone(),
        step: failed.map(step_entry),
        error: match (error.is_empty(), failed) {
            (true, Some(s)) => s.error.clone(),
            _ => error,
        },
        log: failed.map(|s| s.log.clone()).unwrap_or_default(),
        excerpt,
    }
}

#[cfg(test)]
mod tests;
