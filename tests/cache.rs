//! End-to-end tests of `type=local` caches against a real buildkitd: a cache directory written by one daemon makes a fresh daemon's steps CACHED, with the directory served through bkrun's session content store.

mod common;

use std::path::Path;

use common::*;

const DOCKERFILE: &str = "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo expensive > /step.txt\n";
const STEPS: [&str; 2] = ["RUN [\"/bin/busybox\", \"--install\"", "RUN echo expensive"];

fn step_block<'a>(log: &'a str, step: &str) -> &'a str {
    log.split("\n\n")
        .find(|b| b.contains(step))
        .unwrap_or_else(|| panic!("no {step} in\n{log}"))
}

/// Blob files of the cache directory.
fn blobs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn local_cache_round_trip_between_fresh_daemons() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let ctx = sb.context("ctx", DOCKERFILE);
        // Not there yet: the pipeline's first run imports nothing and creates it.
        let cache = sb.path("ci-cache/buildkit");
        let flags = [
            format!("--import-cache=type=local,src={}", cache.display()),
            format!(
                "--export-cache=type=local,dest={},mode=max",
                cache.display()
            ),
        ];
        sb.mkdir("ci-cache");

        let t = std::time::Instant::now();
        let cold = run_ok(
            sb.bkrun_root("state-a")
                .arg("build")
                .args(sb.build_args(&ctx))
                .args(&flags),
        );
        let cold_time = t.elapsed();
        let log = String::from_utf8_lossy(&cold.stderr);
        assert!(
            log.contains("--import-cache type=local,src=") && log.contains("skipped"),
            "{mode:?}: the empty cache should be reported:\n{log}"
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cache.join("index.json")).unwrap()).unwrap();
        let tagged = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
            .unwrap_or_else(|| panic!("no latest in {index}"));
        let manifest = tagged["digest"].as_str().unwrap();
        let first_blobs = blobs(&cache);
        assert!(
            first_blobs.contains(&manifest.trim_start_matches("sha256:").to_string()),
            "{mode:?}: the tagged manifest is stored: {first_blobs:?}"
        );
        assert!(first_blobs.len() >= 4, "{mode:?}: {first_blobs:?}");
        assert!(
            !cache.join("ingest").exists(),
            "{mode:?}: unfinished writes were left in the cache dir"
        );
        assert!(cache.join("oci-layout").exists());

        // A fresh daemon: everything it needs comes from the directory.
        let t = std::time::Instant::now();
        let warm = run_ok(
            sb.bkrun_root("state-b")
                .arg("build")
                .args(sb.build_args(&ctx))
                .args(&flags),
        );
        let warm_time = t.elapsed();
        let log = String::from_utf8_lossy(&warm.stderr);
        for step in STEPS {
            assert!(
                step_block(&log, step).contains("CACHED"),
                "{mode:?}: {step} was not taken from the local cache:\n{log}"
            );
        }
        assert!(!log.contains("skipped"), "{log}");

        // A changed step with reset=true: the old step's blobs go, the cache dir stays.
        let ctx2 = sb.context("ctx2", &DOCKERFILE.replace("expensive", "changed"));
        run_ok(
            sb.bkrun_root("state-b")
                .arg("build")
                .args(sb.build_args(&ctx2))
                .arg(format!("--import-cache=type=local,src={}", cache.display()))
                .arg(format!(
                    "--export-cache=type=local,dest={},mode=max,reset=true",
                    cache.display()
                )),
        );
        let after = blobs(&cache);
        assert!(
            !after.contains(&manifest.trim_start_matches("sha256:").to_string()),
            "{mode:?}: reset=true kept the replaced manifest: {after:?}"
        );
        assert!(cache.join("index.json").exists());
        eprintln!(
            "{mode:?}: local cache export {cold_time:?}, import on a fresh daemon {warm_time:?}"
        );
        sb.assert_clean();
    }
}

#[test]
fn bad_local_cache_flags_fail_before_any_daemon_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\n");
    let file = sb.write("not-a-dir", "x");
    for (flag, says) in [
        (
            format!("--export-cache=type=local,dest={}", file.display()),
            "not a directory",
        ),
        ("--export-cache=type=local".to_string(), "needs dest=DIR"),
        ("--import-cache=type=local".to_string(), "needs src=DIR"),
    ] {
        let out = sb
            .bkrun()
            .arg("build")
            .args(sb.build_args(&ctx))
            .arg(&flag)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {}", show(&out));
        assert!(err.contains(says), "{flag}: {err}");
        assert!(
            !err.contains("buildkitd"),
            "{flag}: a daemon was started: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    sb.assert_clean();
}

#[test]
fn local_caches_are_interchangeable_with_buildctl() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", DOCKERFILE);
    let by_buildctl = sb.path("by-buildctl");
    let by_bkrun = sb.path("by-bkrun");
    // buildctl writes a cache, bkrun on a fresh daemon uses it ...
    run_ok(
        sb.buildctl_build("state-a")
            .args(sb.build_args(&ctx))
            .arg(format!(
                "--export-cache=type=local,dest={},mode=max",
                by_buildctl.display()
            )),
    );
    let out = run_ok(
        sb.bkrun_root("state-b")
            .arg("build")
            .args(sb.build_args(&ctx))
            .arg(format!(
                "--import-cache=type=local,src={}",
                by_buildctl.display()
            ))
            .arg(format!(
                "--export-cache=type=local,dest={},mode=max",
                by_bkrun.display()
            )),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    for step in STEPS {
        assert!(
            step_block(&log, step).contains("CACHED"),
            "bkrun from buildctl's cache:\n{log}"
        );
    }
    // ... and buildctl on another fresh daemon uses the one bkrun wrote.
    let out = run_ok(
        sb.buildctl_build("state-c")
            .args(sb.build_args(&ctx))
            .arg(format!(
                "--import-cache=type=local,src={}",
                by_bkrun.display()
            )),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    for step in STEPS {
        assert!(
            step_block(&log, step).contains("CACHED"),
            "buildctl from bkrun's cache:\n{log}"
        );
    }
    sb.assert_clean();
}
