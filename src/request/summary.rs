//! Where a build's summary goes, settled before any daemon starts: `--summary FILE` and its format, the CI's own place found in the environment (GitHub's step summary, a Buildkite annotation), Tekton's result files, GitLab's dotenv report; and `--build-timeout`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use super::flags::BuildFlags;
use super::output::{Output, OutputKind};
use crate::config::BuildDefaults;
use crate::host::Host;

/// `--summary none`: no summary anywhere, not even where the CI shows it.
pub const NONE: &str = "none";

/// The summary's form in `--summary FILE` (the CI's places always get Markdown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Markdown,
    Json,
}

/// Every place the summary and the image's result files go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SummarySpec {
    /// `--summary FILE`, written whole.
    pub file: Option<PathBuf>,
    pub format: Format,
    /// `$GITHUB_STEP_SUMMARY`: appended to (other steps' summaries stay).
    pub github: Option<PathBuf>,
    /// `buildkite-agent` on PATH under Buildkite (BUILDKITE=true): the summary is an annotation.
    pub buildkite_agent: Option<PathBuf>,
    /// The annotation's `--context`: one per job, so a retried job replaces its own.
    pub buildkite_context: String,
    /// `--tekton-results DIR`: IMAGE_DIGEST and IMAGE_URL written there.
    pub tekton_results: Option<PathBuf>,
    /// `--summary-dotenv FILE`: IMAGE_DIGEST=… and IMAGE_URL=… for GitLab's dotenv report.
    pub dotenv: Option<PathBuf>,
}

impl SummarySpec {
    /// Whether a summary is made at all.
    pub fn wanted(&self) -> bool {
        self.file.is_some()
            || self.github.is_some()
            || self.buildkite_agent.is_some()
            || self.tekton_results.is_some()
            || self.dotenv.is_some()
    }

    /// Where the Markdown or JSON summary goes, for `bkrun config`; "nowhere" when nowhere.
    pub fn describe(&self) -> String {
        let mut places = Vec::new();
        if let Some(f) = &self.file {
            let form = match self.format {
                Format::Markdown => "Markdown",
                Format::Json => "JSON",
            };
            places.push(format!("{} ({form}, --summary)", f.display()));
        }
        if let Some(g) = &self.github {
            places.push(format!("{} (appended, $GITHUB_STEP_SUMMARY)", g.display()));
        }
        if let Some(b) = &self.buildkite_agent {
            places.push(format!("a Buildkite annotation ({} annotate)", b.display()));
        }
        if places.is_empty() {
            "nowhere (give --summary FILE)".into()
        } else {
            places.join(", ")
        }
    }
}

/// Settles the summary's places from the flags, bkrun.toml's defaults and the environment.
pub fn resolve(
    args: &BuildFlags,
    defaults: &BuildDefaults,
    host: &dyn Host,
) -> Result<SummarySpec> {
    let file = args
        .summary
        .clone()
        .or_else(|| defaults.summary.clone().map(PathBuf::from));
    let off = file.as_deref() == Some(Path::new(NONE));
    let format = match args
        .summary_format
        .as_deref()
        .or(defaults.summary_format.as_deref())
    {
        None | Some("markdown") | Some("md") => Format::Markdown,
        Some("json") => Format::Json,
        Some(other) => {
            bail!("--summary-format {other:?} is not a summary format: use markdown or json")
        }
    };
    let mut spec = SummarySpec {
        file: file.filter(|_| !off),
        format,
        tekton_results: args.tekton_results.clone(),
        dotenv: args.summary_dotenv.clone(),
        ..SummarySpec::default()
    };
    if !off {
        spec.github = host.env("GITHUB_STEP_SUMMARY").map(PathBuf::from);
        if host.env("BUILDKITE").as_deref() == Some("true") {
            spec.buildkite_agent = host.which("buildkite-agent");
            spec.buildkite_context = match host.env("BUILDKITE_JOB_ID") {
                Some(id) => format!("bkrun-{id}"),
                None => "bkrun".into(),
            };
        }
    }
    if let Some(dir) = &spec.tekton_results {
        if !dir.is_dir() {
            bail!("--tekton-results {}: no such directory: give the task's results directory ($(results.IMAGE_DIGEST.path)'s parent, /tekton/results)", dir.display());
        }
    }
    Ok(spec)
}

/// Tekton's and GitLab's result files name an image: the build must make one.
pub fn check_image_results(spec: &SummarySpec, outputs: &[Output]) -> Result<()> {
    let flag = match (&spec.tekton_results, &spec.dotenv) {
        (Some(_), _) => "--tekton-results",
        (None, Some(_)) => "--summary-dotenv",
        (None, None) => return Ok(()),
    };
    let makes_image = outputs.iter().any(|o| {
        matches!(
            o.kind,
            OutputKind::Image | OutputKind::Oci | OutputKind::Docker
        )
    });
    if !makes_image {
        bail!("{flag} writes the image's digest, and this build exports no image: add --output type=image,name=…,push=true (or -t NAME --push)");
    }
    Ok(())
}

/// `--build-timeout DURATION` (Go's syntax: 90s, 30m, 1h30m) or bkrun.toml's `build_timeout`.
pub fn build_timeout(args: &BuildFlags, defaults: &BuildDefaults) -> Result<Option<Duration>> {
    let (given, from) = match (&args.build_timeout, &defaults.build_timeout) {
        (Some(v), _) => (v, "--build-timeout"),
        (None, Some(v)) => (v, "build_timeout in bkrun.toml"),
        (None, None) => return Ok(None),
    };
    let nanos = crate::gocompat::durations::parse_go_duration(given).map_err(|e| {
        anyhow::anyhow!("{from} {given:?} is not a duration ({e}): write e.g. 45m, 1h30m or 90s")
    })?;
    if nanos <= 0 {
        bail!("{from} {given:?} must be longer than zero: write e.g. 45m, or leave it out for no limit");
    }
    Ok(Some(Duration::from_nanos(nanos as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn flags(summary: Option<&str>, format: Option<&str>) -> BuildFlags {
        BuildFlags {
            summary: summary.map(PathBuf::from),
            summary_format: format.map(str::to_string),
            ..BuildFlags::default()
        }
    }

    #[test]
    fn the_ci_places_come_from_the_environment_and_none_turns_them_off() {
        let mut h = FakeHost::root();
        h.env = vec![
            ("GITHUB_STEP_SUMMARY", "/gh/step_summary"),
            ("BUILDKITE", "true"),
        ];
        h.programs = vec!["buildkite-agent"];
        let s = resolve(&flags(None, None), &BuildDefaults::default(), &h).unwrap();
        assert_eq!(s.github.as_deref(), Some(Path::new("/gh/step_summary")));
        assert_eq!(
            s.buildkite_agent.as_deref(),
            Some(Path::new("/usr/bin/buildkite-agent"))
        );
        assert!(s.wanted());
        let off = resolve(&flags(Some("none"), None), &BuildDefaults::default(), &h).unwrap();
        assert!(!off.wanted(), "{off:?}");
        assert_eq!(
            resolve(
                &flags(None, None),
                &BuildDefaults::default(),
                &FakeHost::root()
            )
            .unwrap(),
            SummarySpec::default()
        );
    }

    #[test]
    fn format_and_file_come_from_flags_over_bkrun_toml() {
        let d = BuildDefaults {
            summary: Some("/from/toml.md".into()),
            summary_format: Some("json".into()),
            ..BuildDefaults::default()
        };
        let s = resolve(&flags(None, None), &d, &FakeHost::root()).unwrap();
        assert_eq!(s.file.as_deref(), Some(Path::new("/from/toml.md")));
        assert_eq!(s.format, Format::Json);
        let s = resolve(
            &flags(Some("x.md"), Some("markdown")),
            &d,
            &FakeHost::root(),
        )
        .unwrap();
        assert_eq!(
            (s.file.unwrap(), s.format),
            ("x.md".into(), Format::Markdown)
        );
        let e = resolve(&flags(None, Some("yaml")), &d, &FakeHost::root()).unwrap_err();
        assert!(e.to_string().contains("use markdown or json"), "{e}");
    }

    #[test]
    fn build_timeouts_are_go_durations() {
        let f = |v: &str| BuildFlags {
            build_timeout: Some(v.into()),
            ..BuildFlags::default()
        };
        let d = BuildDefaults::default();
        assert_eq!(
            build_timeout(&f("1h30m"), &d).unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert!(build_timeout(&f("0s"), &d).is_err());
        let e = build_timeout(&f("ten"), &d).unwrap_err().to_string();
        assert!(
            e.starts_with("--build-timeout \"ten\" is not a duration"),
            "{e}"
        );
        let toml = BuildDefaults {
            build_timeout: Some("2m".into()),
            ..BuildDefaults::default()
        };
        assert_eq!(
            build_timeout(&BuildFlags::default(), &toml).unwrap(),
            Some(Duration::from_secs(120))
        );
    }
}
