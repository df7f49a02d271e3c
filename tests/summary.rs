//! The build summary and why builds die, against a real buildkitd: the JSON and Markdown of a passing, a failing and a multi-platform build; $GITHUB_STEP_SUMMARY appended to; a stand-in buildkite-agent given the annotation; Tekton's result files and GitLab's dotenv equal to the registry's digest; `--build-timeout` (exit 124); a state dir on a full tmpfs; a step killed by the OOM killer in a memory cgroup with a limit.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::*;

fn json(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The lines of the Markdown section headed `#### NAME`, up to the next heading.
fn section<'a>(md: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("#### {name}");
    md.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.starts_with("###"))
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn a_multi_platform_push_reports_its_digest_in_the_summary_tekton_and_dotenv() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let image = format!("{}/bkrun/summary:1", reg.host());
    // No RUN step, so both platforms build without an emulator; CMD in shell form draws
    // BuildKit's JSONArgsRecommended check.
    let ctx = sb.context("multi", "FROM scratch\nCOPY Dockerfile /\nCMD echo hi\n");
    let results = sb.mkdir("tekton-results");
    let github = sb.write("step_summary.md", "# an earlier step\n");
    let (sum, env) = (sb.path("summary.json"), sb.path("build.env"));
    let mut c = with_config(sb.bkrun(), &cfg);
    c.env("GITHUB_STEP_SUMMARY", &github)
        .arg("build")
        .args(dockerfile_args(&ctx))
        .args([
            "--progress=plain".to_string(),
            "--opt=platform=linux/amd64,linux/arm64".into(),
            format!("--output=type=image,name={image},push=true"),
            format!("--summary={}", sum.display()),
            "--summary-format=json".into(),
            format!("--tekton-results={}", results.display()),
            format!("--summary-dotenv={}", env.display()),
        ]);
    run_ok(&mut c);
    let digest = reg.digest("bkrun/summary", "1");
    let j = json(&sum);
    assert_eq!(j["schema"], "bkrun.summary/v1");
    assert_eq!(
        (j["result"].as_str(), j["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(
        j["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let out = &j["outputs"][0];
    assert_eq!(
        (out["type"].as_str(), out["pushed"].as_bool()),
        (Some("image"), Some(true))
    );
    assert_eq!(out["names"], serde_json::json!([image]));
    assert_eq!(out["digest"], digest.as_str());
    assert_eq!(j["daemon"]["mode"], "privileged");
    assert!(j["daemon"]["start_seconds"].as_f64().unwrap() > 0.0, "{j}");
    let warnings = j["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .starts_with("JSONArgsRecommended")
            && w["location"] == "Dockerfile:3"),
        "{j}"
    );
    // Tekton's files hold the value alone; GitLab's dotenv one KEY=value a line.
    assert_eq!(
        fs::read_to_string(results.join("IMAGE_DIGEST")).unwrap(),
        digest
    );
    assert_eq!(
        fs::read_to_string(results.join("IMAGE_URL")).unwrap(),
        image
    );
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        format!("IMAGE_DIGEST={digest}\nIMAGE_URL={image}\n")
    );
    // The step summary is appended to: the earlier step's stays first.
    let md = fs::read_to_string(&github).unwrap();
    assert!(
        md.starts_with("# an earlier step\n\n### bkrun build succeeded in "),
        "{md}"
    );
    assert_eq!(
        section(&md, "Outputs"),
        [format!("- image `{image}` `{digest}` (pushed)")]
    );
    assert!(
        section(&md, "Warnings (1)")[0].starts_with("- **Dockerfile:3** JSONArgsRecommended"),
        "{md}"
    );
    drop(reg);
    sb.assert_clean();
}

/// A stand-in `buildkite-agent` that keeps its arguments and its stdin in `dir`.
fn buildkite_agent(sb: &Sandbox) -> PathBuf {
    let dir = sb.mkdir("bk-bin");
    let agent = dir.join("buildkite-agent");
    fs::write(
        &agent,
        format!(
            "#!/bin/sh\necho \"$@\" > {d}/args\ncat > {d}/stdin\n",
            d = dir.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_passing_build_annotates_buildkite_and_writes_its_markdown() {
    let sb = Sandbox::new(Mode::Privileged);
    let bk = buildkite_agent(&sb);
    let ctx = sb.hello_context();
    let (out, md_file) = (sb.path("out"), sb.path("summary.md"));
    let mut c = sb.build(&ctx);
    c.env("BUILDKITE", "true")
        .env("BUILDKITE_JOB_ID", "job-7")
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bk.display()),
        )
        .args([
            local_output(&out),
            format!("--summary={}", md_file.display()),
        ]);
    let ran = run_ok(&mut c);
    assert_eq!(
        fs::read_to_string(bk.join("args")).unwrap(),
        "annotate --context bkrun-job-7 --style success\n"
    );
    let md = fs::read_to_string(&md_file).unwrap();
    assert_eq!(fs::read_to_string(bk.join("stdin")).unwrap(), md);
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("### bkrun build succeeded in "),
        "{md}"
    );
    // The facts table: a header, its rule, then rows of two cells.
    assert_eq!(&lines[2..4], ["| | |", "|---|---|"]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| daemon | privileged (")),
        "{md}"
    );
    assert!(lines.contains(&"| exit code | 0 |"), "{md}");
    assert_eq!(
        section(&md, "Outputs"),
        [format!("- local → `{}`", out.display())]
    );
    let slow = section(&md, "Slowest steps");
    assert_eq!(&slow[..2], ["| step | time | state |", "|---|--:|---|"]);
    assert!((1..=5).contains(&(slow.len() - 2)), "{md}");
    for row in &slow[2..] {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells.len(), 3, "{row}");
        assert!(cells[0].starts_with("| #"), "{row}");
        assert!(cells[1].ends_with('s'), "{row}");
    }
    // The log has no new line besides the cache line.
    let err = stderr(&ran);
    assert!(!err.contains("summary"), "{err}");
    sb.assert_clean();
}

#[test]
fn a_failing_build_summary_names_the_step_its_last_lines_and_the_dockerfile_lines() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context("failing", "RUN echo first line; echo second line; exit 3\n");
    let github = sb.path("step_summary.md");
    let sum = sb.path("summary.json");
    let mut c = sb.build(&ctx);
    c.env("GITHUB_STEP_SUMMARY", &github).args([
        format!("--summary={}", sum.display()),
        "--summary-format=json".into(),
    ]);
    run_fails(&mut c);
    let j = json(&sum);
    assert_eq!(
        (j["result"].as_str(), j["exit_code"].as_i64()),
        (Some("failed"), Some(1))
    );
    let f = &j["failure"];
    let step = f["step"]["name"].as_str().unwrap();
    assert!(
        step.ends_with("RUN echo first line; echo second line; exit 3"),
        "{f}"
    );
    assert!(f["step"]["number"].as_u64().unwrap() > 0, "{f}");
    assert_eq!(f["log"], serde_json::json!(["first line", "second line"]));
    assert!(f["error"].as_str().unwrap().contains("exit code: 3"), "{f}");
    let excerpt = f["excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("Dockerfile:4\n"), "{excerpt}");
    assert!(excerpt.contains(">>> RUN echo first line"), "{excerpt}");
    let md = fs::read_to_string(&github).unwrap();
    assert!(md.starts_with("\n### bkrun build failed in "), "{md}");
    let failure = section(&md, "Failure");
    assert!(failure[0].starts_with("Step #"), "{failure:?}");
    assert!(failure.contains(&"Its last output lines:"), "{failure:?}");
    assert!(failure.contains(&"```dockerfile"), "{failure:?}");
    sb.assert_clean();
}

#[test]
fn build_timeout_cancels_the_build_names_the_running_step_and_exits_124() {
    // Rootless-strict runs steps without a process sandbox, where a cancelled step's processes
    // are the ones that used to be left behind.
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let ctx = sb.shell_context("slow", "RUN sleep 120\n");
        let sum = sb.path("summary.json");
        let started = Instant::now();
        let out = output(sb.build(&ctx).args([
            "--build-timeout=4s".to_string(),
            format!("--summary={}", sum.display()),
            "--summary-format=json".into(),
        ]));
        assert_eq!(out.status.code(), Some(124), "{mode:?}: {}", show(&out));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.starts_with("bkrun: the build ran longer than --build-timeout 4s"))
            .unwrap_or_else(|| panic!("{mode:?}: {err}"));
        assert!(line.contains("was cancelled; still running: #"), "{line}");
        assert!(line.contains("RUN sleep 120"), "{line}");
        let j = json(&sum);
        assert_eq!(j["result"], "timed-out");
        assert_eq!(j["exit_code"], 124);
        let diagnosis = j["failure"]["diagnosis"].as_str().unwrap();
        assert!(diagnosis.contains("RUN sleep 120"), "{j}");
        sb.assert_clean();
    }
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            // Private, as bkrun wants a state dir.
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_dir_is_named_with_its_free_space_and_warned_of_before() {
    let sb = Sandbox::new(Mode::Privileged);
    let small = Tmpfs::mount(sb.mkdir("small-state"), "48m");
    let ctx = sb.shell_context("big", "RUN dd if=/dev/zero of=/big bs=1M count=100\n");
    let mut c = sb.command(&sb.bin);
    c.args(["--mode", "privileged", "--root"]).arg(&small.0);
    let out = run_fails(&mut sb.build_from(c, &ctx));
    let err = stderr(&out);
    let state = small.0.display().to_string();
    assert!(
        err.contains(&format!("bkrun: warning: the state dir {state} has only ")),
        "{err}"
    );
    assert!(err.contains("less than --min-free-space 1.0 GiB"), "{err}");
    let why = err
        .lines()
        .find(|l| {
            l.starts_with(
                "bkrun: the build ran out of disk space (no space left on device): the state dir ",
            )
        })
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        why.contains(&format!("{state} is on a filesystem with ")),
        "{why}"
    );
    assert!(why.contains("free of 48.0 MiB"), "{why}");
    assert!(why.contains("emptyDir sizeLimit"), "{why}");
    sb.assert_clean();
    drop(small);
}

/// A cgroup v1 memory cgroup with a limit, removed when dropped (with buildkit's own below it).
struct MemoryCgroup(PathBuf);

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for d in ["buildkit", ""] {
            let _ = fs::remove_dir(self.0.join(d));
        }
    }
}

#[test]
fn a_step_past_the_memory_limit_is_named_with_the_limit_and_the_peak() {
    if fs::metadata("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_err() {
        eprintln!("skipped: no cgroup v1 memory controller here (tested through the host fake)");
        return;
    }
    let sb = Sandbox::new(Mode::Privileged);
    let name = format!("bkrun-test-oom-{}", std::process::id());
    let cg = MemoryCgroup(Path::new("/sys/fs/cgroup/memory").join(&name));
    fs::create_dir(&cg.0).unwrap();
    fs::write(
        cg.0.join("memory.limit_in_bytes"),
        (256u64 << 20).to_string(),
    )
    .unwrap();
    // The build's containers go below bkrun's own cgroup, as in a pod.
    let conf = sb.write(
        "buildkitd.toml",
        &format!("[worker.oci]\n  defaultCgroupParent = \"{name}\"\n"),
    );
    let ctx = sb.shell_context(
        "hungry",
        "RUN dd if=/dev/zero of=/dev/null bs=600M count=1\n",
    );
    let mut c = sb.command("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cg.0.display()
        ))
        .arg("sh")
        .arg(&sb.bin)
        .args(["--mode", "privileged", "--root"])
        .arg(sb.path("state"))
        .arg(format!("--buildkitd-flags=--config {}", conf.display()));
    let out = run_fails(&mut sb.build_from(c, &ctx));
    let err = stderr(&out);
    let why = err
        .lines()
        .find(|l| l.contains("was killed by the OOM killer"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(why.starts_with("bkrun: step #"), "{why}");
    assert!(
        why.contains("RUN dd if=/dev/zero of=/dev/null bs=600M count=1 was killed"),
        "{why}"
    );
    assert!(
        why.contains("the container's limit is 256.0 MiB and the build peaked at 256.0 MiB; raise resources.limits.memory ("),
        "{why}"
    );
    sb.assert_clean();
}

#[test]
fn every_grammar_takes_the_summary_flags_and_checks_them_before_any_daemon() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("plain", "FROM scratch\nCOPY Dockerfile /\n");
    let refused = |extra: &[&str], says: &str| {
        let t0 = Instant::now();
        let out = run_fails(
            sb.build(&ctx)
                .arg(local_output(&sb.path("out")))
                .args(extra),
        );
        assert!(stderr(&out).contains(says), "{}", show(&out));
        sb.assert_no_daemon_started(t0);
    };
    refused(
        &["--summary=/proc/self/no-such-dir/s.md"],
        "its parent directory /proc/self/no-such-dir does not exist",
    );
    refused(
        &["--summary-format=yaml"],
        "is not a summary format: use markdown or json",
    );
    refused(
        &["--build-timeout=ten"],
        "--build-timeout \"ten\" is not a duration",
    );
    let results = sb.mkdir("results");
    refused(
        &[&format!("--tekton-results={}", results.display())],
        "--tekton-results writes the image's digest, and this build exports no image",
    );

    // docker/buildx-style: a context PATH last.
    let md = sb.path("docker.md");
    run_ok(sb.bkrun().args([
        "build".to_string(),
        format!("--summary={}", md.display()),
        "-o".into(),
        format!("type=local,dest={}", sb.path("out-docker").display()),
        ctx.display().to_string(),
    ]));
    let md = fs::read_to_string(&md).unwrap();
    assert!(md.starts_with("### bkrun build succeeded in "), "{md}");

    // kaniko's executor.
    let sum = sb.path("kaniko.json");
    let tar = sb.path("kaniko.tar");
    run_ok(sb.bkrun().args([
        "kaniko".to_string(),
        format!("--context=dir://{}", ctx.display()),
        "--dockerfile=Dockerfile".into(),
        "--no-push".into(),
        format!("--tar-path={}", tar.display()),
        format!("--summary={}", sum.display()),
        "--summary-format=json".into(),
    ]));
    let j = json(&sum);
    assert_eq!(j["result"], "succeeded");
    assert_eq!(j["outputs"][0]["dest"], tar.display().to_string());
    assert!(
        j["outputs"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{j}"
    );
    sb.assert_clean();
}

#[test]
fn bkrun_config_says_where_the_summary_goes_and_the_limits_from_bkrun_toml() {
    let sb = Sandbox::new(Mode::Privileged);
    let cfg = sb.write(
        "bkrun.toml",
        "summary_format = \"json\"\nbuild_timeout = \"45m\"\nmin_free_space = \"2GiB\"\n",
    );
    let github = sb.write("step_summary.md", "");
    let mut c = with_config(sb.bkrun(), &cfg);
    c.env("GITHUB_STEP_SUMMARY", &github).arg("config");
    let text = String::from_utf8(run_ok(&mut c).stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    assert_eq!(
        line("summary:"),
        format!(
            "summary:         {} (appended, $GITHUB_STEP_SUMMARY)",
            github.display()
        )
    );
    assert_eq!(
        line("build timeout:"),
        "build timeout:   45m0s (build_timeout in bkrun.toml)"
    );
    assert_eq!(
        line("min free space:"),
        "min free space:  2.0 GiB (min_free_space in bkrun.toml)"
    );
    sb.assert_clean();
}
