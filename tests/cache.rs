//! End-to-end tests of caches against a real buildkitd: `type=local` cache directories (written by one daemon, they make a fresh daemon's steps CACHED, served through bkrun's session content store), `--cache REF` on a docker-registry on 127.0.0.1 (per-branch tags with the default branch's as the fallback), and the line that says what the cache did.

mod common;

use std::path::Path;

use common::registry::Registry;
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

/// `bkrun: cache: N of M steps cached…` in `err`, as (N, M).
fn cache_line(err: &str) -> (usize, usize) {
    let line = err
        .lines()
        .find(|l| l.starts_with("bkrun: cache: "))
        .unwrap_or_else(|| panic!("no cache line in\n{err}"));
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words[3], "of", "{line}");
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

/// The `#N CACHED` lines of plain progress.
fn cached_lines(err: &str) -> usize {
    err.lines()
        .filter(|l| l.starts_with('#') && l.ends_with(" CACHED"))
        .count()
}

#[test]
fn registry_cache_in_one_flag_falls_back_to_the_default_branch() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let cache = format!("{}/app/cache", reg.host());
    let ctx = sb.shell_context("ctx", "RUN echo expensive > /step.txt\n");
    let build = |state: &str, branch: &str| {
        let mut c = sb.build_from(with_config(sb.bkrun_root(state), &cfg), &ctx);
        c.args(["--cache", &cache, "--cache-branch", branch]);
        c
    };
    let t = std::time::Instant::now();
    let meta = sb.path("meta-a.json");
    let out = run_ok(build("state-a", "main").arg(format!("--metadata-file={}", meta.display())));
    let cold = t.elapsed();
    let err = stderr(&out);
    // Nothing to import yet: the import of :main fails, the build does not.
    assert!(
        err.contains("registry cache imported in")
            && err.contains("(1 of 1 refs unavailable), exported in"),
        "{err}"
    );
    assert_eq!(cache_line(&err).0, 0, "{err}");
    let manifest = reg.manifest("app/cache", "main");
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let bkrun = &meta["bkrun"];
    assert!(
        bkrun["registry_cache"]["export_seconds"].as_f64().unwrap() > 0.0,
        "{meta}"
    );
    assert!(
        bkrun["registry_cache"]["import_seconds"].is_number(),
        "{meta}"
    );
    assert_eq!(bkrun["steps"]["cached"], 0, "{meta}");
    assert!(meta["containerimage.digest"].is_null(), "{meta}");

    // A new branch on a fresh daemon: its own tag is not there yet, main's is.
    let t = std::time::Instant::now();
    let out = run_ok(build("state-b", "feature/x").arg("--debug"));
    let warm = t.elapsed();
    let err = stderr(&out);
    assert!(
        err.contains(&format!("bkrun: registry cache: import {cache}:feature-x then {cache}:main; export {cache}:feature-x (mode=max); {cache} from --cache; branch feature-x (\"feature/x\") from --cache-branch; default branch main from bkrun's default")),
        "{err}"
    );
    for step in ["RUN [\"/bin/busybox\", \"--install\"", "RUN echo expensive"] {
        assert!(
            step_block(&err, step).contains("CACHED"),
            "{step} was not taken from {cache}:main:\n{err}"
        );
    }
    let (cached, total) = cache_line(&err);
    assert_eq!((cached, total), (cached_lines(&err), cached), "{err}");
    assert!(cached >= 3, "{err}");
    reg.manifest("app/cache", "feature-x");
    eprintln!("--cache: export to :main {cold:?}, import from :main on a fresh daemon {warm:?}");
    drop(reg);
    sb.assert_clean();
}

#[test]
fn the_cache_line_counts_what_plain_progress_shows_cached() {
    let sb = Sandbox::new(Mode::Privileged);
    let first = sb.shell_context("first", "RUN echo one > /one\nRUN echo two > /two\n");
    run_ok(&mut sb.build(&first));
    // The same first steps, then a changed one and a new one: some cached, some run.
    let second = sb.shell_context(
        "second",
        "RUN echo one > /one\nRUN echo changed > /two\nRUN echo three > /three\n",
    );
    let out = run_ok(sb.build(&second).arg("--metadata-file=meta.json"));
    let err = stderr(&out);
    let (cached, total) = cache_line(&err);
    assert_eq!(cached, cached_lines(&err), "{err}");
    // COPY busybox, RUN --install and RUN echo one are cached; the last two RUN steps ran.
    assert_eq!((cached, total), (3, 5), "{err}");
    assert!(
        err.trim_end()
            .ends_with("bkrun: cache: 3 of 5 steps cached"),
        "{err}"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["bkrun"],
        serde_json::json!({"steps": {"cached": 3, "total": 5}})
    );

    // A failing build says it too, after the error; quiet and rawjson (a JSON stream) do not.
    let broken = sb.shell_context("broken", "RUN echo one > /one\nRUN exit 3\n");
    let err = stderr(&run_fails(&mut sb.build(&broken)));
    assert!(
        err.trim_end()
            .ends_with("bkrun: cache: 3 of 3 steps cached"),
        "{err}"
    );
    for quiet in ["--progress=quiet", "--progress=rawjson"] {
        let out = run_fails(sb.build(&broken).arg(quiet));
        assert!(!stderr(&out).contains("bkrun: cache:"), "{}", stderr(&out));
    }
    sb.assert_clean();
}

#[test]
fn the_registry_cache_is_checked_before_any_daemon_starts_and_shown_by_config() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\n");
    let t = std::time::Instant::now();
    let out = run_fails(sb.build(&ctx).args(["--cache", "127.0.0.1:5000/App"]));
    assert_eq!(
        stderr(&out).trim_end(),
        "bkrun: --cache 127.0.0.1:5000/App is not an image reference (repository name must be lowercase): give a repository in lower case, e.g. 127.0.0.1:5000/app/cache (bkrun adds :BRANCH)"
    );
    sb.assert_no_daemon_started(t);
    let out = run_ok(
        sb.bkrun()
            .env("BKRUN_CACHE", "127.0.0.1:5000/app/cache")
            .env("CI_COMMIT_REF_NAME", "feat/y")
            .env("CI_DEFAULT_BRANCH", "trunk")
            .arg("config"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("registry cache:  import 127.0.0.1:5000/app/cache:feat-y then 127.0.0.1:5000/app/cache:trunk; export 127.0.0.1:5000/app/cache:feat-y (mode=max); 127.0.0.1:5000/app/cache from BKRUN_CACHE; branch feat-y (\"feat/y\") from CI_COMMIT_REF_NAME; default branch trunk from CI_DEFAULT_BRANCH\n"),
        "{text}"
    );
    sb.assert_clean();
}
