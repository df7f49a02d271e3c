//! After a build: why it died, in one line (the OOM killer, a full disk, `--build-timeout`), and its summary put where the CI shows it; both from what the build's progress, its error and the host's counters say.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::solve::{Built, Outcome};
use crate::host::cgroup::{self, Memory};
use crate::host::Host;
use crate::request::build::BuildSpec;
use crate::summary::{self, why};

/// The daemon bkrun started for this work, as the summary and the diagnosis need it.
pub(super) struct Local {
    pub mode: String,
    pub why: String,
    /// From its start until it served.
    pub start: Duration,
    pub state_dir: PathBuf,
    /// The memory cgroup's counters, read while the daemon started (a few file reads that
    /// would otherwise sit between its READY=1 and the Solve).
    pub memory: Option<Memory>,
}

/// The memory cgroup's counters before the build started, to tell an OOM kill during it from
/// one before; known only where bkrun started the daemon (a remote daemon's cgroup is not ours).
pub(super) fn memory_before(local: Option<&Local>) -> Option<Memory> {
    local.and_then(|l| l.memory.clone())
}

/// The one line that says why a build that ended as `built` died; None when it succeeded or
/// nothing is known beyond BuildKit's error.
pub(super) fn diagnose(
    built: &Built,
    before: Option<&Memory>,
    local: Option<&Local>,
    host: &dyn Host,
) -> Option<String> {
    match &built.outcome {
        Outcome::Done(_) => None,
        Outcome::TimedOut(limit) => Some(why::timed_out(*limit, &built.steps)),
        Outcome::Failed(f) => {
            let after = before.and_then(|_| cgroup::memory(host));
            why::oom(before, after.as_ref(), &built.steps).or_else(|| {
                // A step's own write that found the disk full says so only in its output.
                let mut text = f.message.clone();
                for s in built.steps.iter().filter(|s| !s.log.is_empty()) {
                    text.push('\n');
                    text.push_str(&s.log.join("\n"));
                }
                let dir = local.map(|l| l.state_dir.as_path());
                let fs = dir.and_then(|d| host.statfs(d));
                why::disk_full(&text, dir, fs.as_ref())
            })
        }
    }
}

/// What the run adds to the build's own account for its summary.
pub(super) struct Context<'a> {
    pub local: Option<&'a Local>,
    pub remote: Option<&'a str>,
    pub took: Duration,
    pub exit_code: i32,
    pub diagnosis: Option<String>,
}

/// Writes the build's summary wherever `spec` says; a place that cannot be written is one
/// warning line, and the build's result stands.
pub(super) async fn write_summary(spec: &BuildSpec, built: &Built, cx: Context<'_>) {
    if !spec.summary.wanted() {
        return;
    }
    let (response, error) = match &built.outcome {
        Outcome::Done(r) => (Some(r), None),
        Outcome::Failed(f) => (None, Some((f.message.clone(), f.excerpt.clone()))),
        Outcome::TimedOut(_) => (None, None),
    };
    let ended = summary::Ended {
        exit_code: cx.exit_code,
        timed_out: matches!(built.outcome, Outcome::TimedOut(_)),
        daemon: cx.local.map(|l| summary::Daemon {
            mode: l.mode.clone(),
            why: l.why.clone(),
            start_seconds: (l.start.as_secs_f64() * 100.0).round() / 100.0,
        }),
        remote: cx.remote.map(str::to_string),
        took: cx.took,
        response,
        steps: &built.steps,
        warnings: &built.warnings,
        cache: &built.cache,
        error,
        diagnosis: cx.diagnosis,
    };
    let report = summary::report(spec, &ended);
    for line in summary::write(&report, &spec.summary).await {
        crate::say!("bkrun: warning: {line}");
    }
}
