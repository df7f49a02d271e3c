//! The summary's JSON and Markdown forms from a made-up build: a success with images and files, a failure with its diagnosis, log and Dockerfile lines.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::progress::{CacheStats, Step, StepState};
use crate::proto::moby::buildkit::v1::VertexWarning;
use crate::proto::pb::{Position, Range, SourceInfo};
use crate::request::output::parse;

fn step(n: usize, name: &str, secs: f64, state: StepState) -> Step {
    Step {
        digest: format!("sha256:{n}"),
        number: Some(n),
        name: name.into(),
        seconds: secs,
        state,
        error: String::new(),
        log: vec![],
    }
}

fn spec(outputs: &[&str], platform: Option<&str>) -> BuildSpec {
    let args = crate::request::flags::BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        ..Default::default()
    };
    let host = crate::host::fake::FakeHost::user();
    let settings = crate::config::Settings::load(&Default::default(), &host).unwrap();
    let mut s = crate::request::build::resolve(&args, &settings, &host).unwrap();
    s.outputs = outputs.iter().map(|o| parse(o, false).unwrap()).collect();
    if let Some(p) = platform {
        s.opts.insert("platform".into(), p.into());
    }
    s
}

fn warning() -> VertexWarning {
    VertexWarning {
        short: b"JSONArgsRecommended: JSON arguments recommended for CMD".to_vec(),
        url: "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/".into(),
        info: Some(SourceInfo {
            filename: "Dockerfile".into(),
            ..SourceInfo::default()
        }),
        ranges: vec![Range {
            start: Some(Position {
                line: 3,
                character: 0,
            }),
            end: Some(Position {
                line: 3,
                character: 0,
            }),
        }],
        ..VertexWarning::default()
    }
}

#[test]
fn a_success_lists_images_with_digests_files_slowest_steps_and_warnings() {
    let steps: Vec<Step> = (1..=7)
        .map(|i| step(i, &format!("[{i}/7] RUN s{i}"), i as f64, StepState::Done))
        .chain([step(8, "[0/7] FROM x", 9.0, StepState::Cached)])
        .collect();
    let response = HashMap::from([("containerimage.digest".into(), "sha256:abc".into())]);
    let cache = CacheStats {
        steps_cached: 1,
        steps_total: 8,
        ..CacheStats::default()
    };
    let spec = spec(
        &[
            "type=image,name=r.test/app:1,push=true",
            "type=local,dest=out",
        ],
        Some("linux/amd64,linux/arm64"),
    );
    let mut spec = spec;
    spec.opts.insert(
        "attest:provenance".into(),
        "mode=min,inline-only=true".into(),
    );
    // Turned off: not listed.
    spec.opts
        .insert("attest:sbom".into(), "type=sbom,disabled=true".into());
    let ended = Ended {
        exit_code: 0,
        timed_out: false,
        daemon: Some(Daemon {
            mode: "privileged".into(),
            why: "root with CAP_SYS_ADMIN".into(),
            start_seconds: 0.8,
        }),
        remote: None,
        took: Duration::from_millis(12_340),
        response: Some(&response),
        steps: &steps,
        warnings: &[warning()],
        cache: &cache,
        error: None,
        diagnosis: None,
    };
    let r = report(&spec, &ended);
    let j: serde_json::Value = serde_json::from_str(&write::json(&r)).unwrap();
    assert_eq!(j["schema"], SCHEMA);
    assert_eq!(j["result"], "succeeded");
    assert_eq!(
        j["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(j["outputs"][0]["names"][0], "r.test/app:1");
    assert_eq!(j["outputs"][0]["digest"], "sha256:abc");
    assert_eq!(j["outputs"][0]["pushed"], true);
    assert_eq!(j["outputs"][1]["dest"], "out");
    assert_eq!(j["outputs"][1]["digest"], serde_json::Value::Null);
    let slow: Vec<&str> = j["slowest_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        slow,
        [
            "[7/7] RUN s7",
            "[6/7] RUN s6",
            "[5/7] RUN s5",
            "[4/7] RUN s4",
            "[3/7] RUN s3"
        ]
    );
    assert_eq!(j["cache"]["steps_cached"], 1);
    assert_eq!(j["warnings"][0]["location"], "Dockerfile:3");
    assert_eq!(j["failure"], serde_json::Value::Null);
    assert_eq!(j["daemon"]["mode"], "privileged");

    success_markdown(&r);
}

/// The Markdown of the success above: heading, facts table, outputs, slowest steps, warnings.
fn success_markdown(r: &Report) {
    let md = markdown(r);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "### bkrun build succeeded in 12.3s");
    assert!(
        lines.contains(&"| daemon | privileged (root with CAP_SYS_ADMIN), served after 0.8s |"),
        "{md}"
    );
    assert!(
        lines.contains(&"| platforms | `linux/amd64`, `linux/arm64` |"),
        "{md}"
    );
    assert!(
        lines.contains(&"- image `r.test/app:1` `sha256:abc` (pushed)"),
        "{md}"
    );
    assert!(
        lines.contains(&"| #7 `[7/7] RUN s7` | 7.0s | done |"),
        "{md}"
    );
    assert!(lines.contains(&"- **Dockerfile:3** JSONArgsRecommended: JSON arguments recommended for CMD ([docs](https://docs.docker.com/go/dockerfile/rule/json-args-recommended/))"), "{md}");
    assert!(
        lines.contains(&"- attestations: provenance (`mode=min,inline-only=true`)"),
        "{md}"
    );
    assert!(!md.contains("#### Failure"));
}

#[test]
fn a_failure_shows_the_diagnosis_step_log_and_dockerfile_lines() {
    let mut failed = step(4, "[2/2] RUN make", 2.5, StepState::Failed);
    failed.error = "process \"/bin/sh -c make\" did not complete successfully: exit code: 2".into();
    failed.log = vec!["cc -c x.c".into(), "x.c:1: error: ``` oops".into()];
    let steps = [failed];
    let excerpt = "Dockerfile:2\n--------------------\n   2 | >>> RUN make\n--------------------\n";
    let spec = spec(&["type=local,dest=out"], None);
    let ended = Ended {
        exit_code: 1,
        timed_out: false,
        daemon: None,
        remote: Some("tcp://b:1234".into()),
        took: Duration::from_secs(3),
        response: None,
        steps: &steps,
        warnings: &[],
        cache: &CacheStats::default(),
        error: Some(("failed to solve: exit code: 2".into(), Some(excerpt.into()))),
        diagnosis: Some("step #4 was killed by the OOM killer: raise it".into()),
    };
    let r = report(&spec, &ended);
    let j: serde_json::Value = serde_json::from_str(&write::json(&r)).unwrap();
    assert_eq!(j["result"], "failed");
    assert_eq!(j["failure"]["step"]["number"], 4);
    assert_eq!(j["failure"]["log"][1], "x.c:1: error: ``` oops");
    assert_eq!(j["failure"]["excerpt"], excerpt);
    assert_eq!(j["remote"], "tcp://b:1234");
    let md = markdown(&r);
    assert!(md.starts_with("### bkrun build failed in 3.0s\n"), "{md}");
    let failure = md.split("#### Failure\n\n").nth(1).unwrap();
    assert!(
        failure.starts_with("**step \\#4 was killed by the OOM killer: raise it**\n"),
        "{failure}"
    );
    assert!(
        failure.contains("Step #4 `[2/2] RUN make` failed after 2.5s."),
        "{failure}"
    );
    // The log holds three backticks: its fence is longer, so the block stays whole.
    assert!(
        failure.contains("````\ncc -c x.c\nx.c:1: error: ``` oops\n````"),
        "{failure}"
    );
    assert!(
        failure.contains("```dockerfile\nDockerfile:2\n"),
        "{failure}"
    );
}
