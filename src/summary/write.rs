//! Puts the summary where the spec says, through the one writer for files in shared directories: `--summary FILE` (Markdown or JSON), appended to $GITHUB_STEP_SUMMARY, as a Buildkite annotation, and the image's digest and name as Tekton result files and a GitLab dotenv report.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{markdown, Report};
use crate::request::summary::{Format, SummarySpec};

/// Writes `report` to every place in `spec`. Each place that fails is one line in the result;
/// the others are still written (the build's own result stands).
pub async fn write(report: &Report, spec: &SummarySpec) -> Vec<String> {
    let md = markdown(report);
    let mut failed = Vec::new();
    let mut note = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            failed.push(format!("cannot write {what}: {e:#}"));
        }
    };
    if let Some(f) = &spec.file {
        let text = match spec.format {
            Format::Markdown => md.clone(),
            Format::Json => json(report),
        };
        let r = crate::outputs::write_file(f, text.as_bytes()).await;
        note(
            &format!("the --summary {}", f.display()),
            r.map_err(Into::into),
        );
    }
    if let Some(g) = &spec.github {
        note(
            &format!("the step summary {} ($GITHUB_STEP_SUMMARY)", g.display()),
            append(g, &md).await,
        );
    }
    if let Some(agent) = &spec.buildkite_agent {
        note(
            "the Buildkite annotation",
            annotate(agent, &spec.buildkite_context, report, md.clone()).await,
        );
    }
    // A failed build made no image: its result files are left as they were.
    let image = image_result(report).filter(|_| report.result == "succeeded");
    if image.is_none() {
        return failed;
    }
    if let Some(dir) = &spec.tekton_results {
        note("Tekton's result files", tekton(dir, image).await);
    }
    if let Some(f) = &spec.dotenv {
        note(
            &format!("the --summary-dotenv {}", f.display()),
            dotenv(f, image).await,
        );
    }
    failed
}

/// The JSON form: one pretty object and a newline.
pub fn json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
    s.push('\n');
    s
}

/// GitHub shows what every step appended: never replace another step's summary.
async fn append(path: &Path, md: &str) -> Result<()> {
    let mut f = crate::outputs::open_append(path, 0o644).await?;
    // A blank line keeps this summary apart from what an earlier step left unterminated.
    f.write_all(format!("\n{md}").as_bytes())?;
    Ok(())
}

/// `buildkite-agent annotate --context … --style …` with the Markdown on stdin.
async fn annotate(agent: &Path, context: &str, report: &Report, md: String) -> Result<()> {
    let style = match (report.result, report.warnings.is_empty()) {
        ("succeeded", true) => "success",
        ("succeeded", false) => "warning",
        _ => "error",
    };
    let mut cmd = std::process::Command::new(agent);
    cmd.args(["annotate", "--context", context, "--style", style]);
    let ran =
        tokio::task::spawn_blocking(move || crate::host::reaper::output(&mut cmd, md.as_bytes()))
            .await?;
    let (exit, _, stderr) = ran.with_context(|| format!("cannot run {}", agent.display()))?;
    if exit.code() != 0 {
        let why = String::from_utf8_lossy(&stderr);
        bail!(
            "{} annotate {exit}: {}",
            agent.display(),
            why.lines().last().unwrap_or_default()
        );
    }
    Ok(())
}

/// The image the result files name: the first output with a digest, and its first name.
fn image_result(report: &Report) -> Option<(&str, &str)> {
    report.outputs.iter().find_map(|o| {
        Some((
            o.digest.as_deref()?,
            o.names.first().map_or("", String::as_str),
        ))
    })
}

/// Tekton's IMAGE_DIGEST and IMAGE_URL, each a file holding the value alone.
async fn tekton(dir: &Path, image: Option<(&str, &str)>) -> Result<()> {
    let Some((digest, url)) = image else {
        bail!("the build exported no image digest");
    };
    crate::outputs::write_file(&dir.join("IMAGE_DIGEST"), digest.as_bytes()).await?;
    crate::outputs::write_file(&dir.join("IMAGE_URL"), url.as_bytes()).await?;
    Ok(())
}

/// `IMAGE_DIGEST=…` and `IMAGE_URL=…` lines, as GitLab's dotenv report reads them.
async fn dotenv(file: &Path, image: Option<(&str, &str)>) -> Result<()> {
    let Some((digest, url)) = image else {
        bail!("the build exported no image digest");
    };
    let text = format!("IMAGE_DIGEST={digest}\nIMAGE_URL={url}\n");
    crate::outputs::write_file(file, text.as_bytes()).await?;
    Ok(())
}
