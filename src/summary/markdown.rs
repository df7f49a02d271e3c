//! The summary as Markdown, for the pages CI systems render (GitHub's step summary, Buildkite's annotations): a heading with the result, a table of the run's facts, then outputs, slowest steps, warnings and the failure, each section only when it has something to say.

use std::fmt::Write as _;

use super::{Attestation, Failure, OutputEntry, Report, StepEntry, Warning};

/// The Markdown summary of `r`, ending with a newline (appended summaries stay apart).
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let result = match r.result {
        "succeeded" => "succeeded",
        "timed-out" => "timed out",
        _ => "failed",
    };
    let _ = writeln!(
        md,
        "### bkrun build {result} in {}\n",
        secs(r.build_seconds)
    );
    facts(&mut md, r);
    // A failed build wrote none of its outputs.
    if !r.outputs.is_empty() && r.exit_code == 0 {
        md.push_str("\n#### Outputs\n\n");
        for o in &r.outputs {
            let _ = writeln!(md, "- {}", output(o));
        }
        if !r.attestations.is_empty() {
            let a: Vec<String> = r.attestations.iter().map(attestation).collect();
            let _ = writeln!(md, "- attestations: {}", a.join(", "));
        }
    }
    if !r.slowest_steps.is_empty() {
        md.push_str("\n#### Slowest steps\n\n| step | time | state |\n|---|--:|---|\n");
        for s in &r.slowest_steps {
            let _ = writeln!(md, "| {} | {} | {} |", step(s), secs(s.seconds), s.state);
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(md, "\n#### Warnings ({})\n", r.warnings.len());
        for w in &r.warnings {
            let _ = writeln!(md, "- {}", warning(w));
        }
    }
    if let Some(f) = &r.failure {
        failure(&mut md, f);
    }
    md
}

fn attestation(a: &Attestation) -> String {
    if a.params.is_empty() {
        a.kind.clone()
    } else {
        format!("{} ({})", a.kind, code(&a.params))
    }
}

/// The table of the run's facts: daemon, platforms, cache.
fn facts(md: &mut String, r: &Report) {
    md.push_str("| | |\n|---|---|\n");
    if let Some(d) = &r.daemon {
        let _ = writeln!(
            md,
            "| daemon | {} ({}), served after {} |",
            cell(&d.mode),
            cell(&d.why),
            secs(d.start_seconds)
        );
    }
    if let Some(addr) = &r.remote {
        let _ = writeln!(md, "| daemon | existing, at {} |", code(addr));
    }
    if !r.platforms.is_empty() {
        let p: Vec<String> = r.platforms.iter().map(|p| code(p)).collect();
        let _ = writeln!(md, "| platforms | {} |", p.join(", "));
    }
    let _ = writeln!(
        md,
        "| cache | {} of {} steps cached |",
        r.cache.steps_cached, r.cache.steps_total
    );
    let _ = writeln!(md, "| exit code | {} |", r.exit_code);
}

fn output(o: &OutputEntry) -> String {
    let mut s = o.kind.clone();
    for n in &o.names {
        let _ = write!(s, " {}", code(n));
    }
    if let Some(d) = &o.digest {
        let _ = write!(s, " {}", code(d));
    }
    if let Some(d) = &o.dest {
        let _ = write!(s, " → {}", code(d));
    }
    if o.pushed {
        s.push_str(" (pushed)");
    }
    s
}

fn step(s: &StepEntry) -> String {
    match s.number {
        Some(n) => format!("#{n} {}", code(&s.name)),
        None => code(&s.name),
    }
}

fn warning(w: &Warning) -> String {
    let mut s = String::new();
    if let Some(l) = &w.location {
        let _ = write!(s, "**{}** ", inline(l));
    }
    s.push_str(&inline(&w.message));
    if let Some(u) = &w.url {
        let _ = write!(s, " ([docs]({u}))");
    }
    s
}

/// The failure: the diagnosis first (what to change), the step and BuildKit's error, its last
/// log lines and the Dockerfile lines around it.
fn failure(md: &mut String, f: &Failure) {
    md.push_str("\n#### Failure\n\n");
    if let Some(d) = &f.diagnosis {
        let _ = writeln!(md, "**{}**\n", inline(d));
    }
    if let Some(s) = &f.step {
        let _ = writeln!(md, "Step {} failed after {}.\n", step(s), secs(s.seconds));
    }
    if !f.error.is_empty() {
        fenced(md, "", &f.error);
    }
    if !f.log.is_empty() {
        md.push_str("Its last output lines:\n\n");
        fenced(md, "", &f.log.join("\n"));
    }
    if let Some(x) = &f.excerpt {
        fenced(md, "dockerfile", x.trim_end());
    }
}

/// A fenced block whose fence is longer than any run of backticks in `text`.
fn fenced(md: &mut String, lang: &str, text: &str) {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(md, "{fence}{lang}\n{}\n{fence}\n", text.trim_end());
}

/// An inline code span that holds any text on one line.
fn code(s: &str) -> String {
    let one = s.replace(['\n', '\r'], " ").replace('|', "\\|");
    if one.contains('`') {
        format!("`` {one} ``")
    } else {
        format!("`{one}`")
    }
}

/// Text inside a table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// Text inline: one line, Markdown's active characters escaped.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.replace(['\n', '\r'], " ").chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Seconds to a tenth, as the progress shows a step's time.
fn secs(s: f64) -> String {
    format!("{s:.1}s")
}
