//! End-to-end tests of bkrun's own BuildKit client against a real buildkitd: builds without buildctl, byte-for-byte parity with buildctl, exports, progress, errors, cancellation.

mod common;

use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A PATH without /usr/local/bin, where buildctl lives; buildkitd is named through BUILDKITD.
fn without_buildctl(c: &mut Command) -> &mut Command {
    c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BUILDKITD", "/usr/local/bin/buildkitd")
}

const MULTI_STAGE: &str = r#"FROM scratch AS base
COPY --from=busybox busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS build
ARG GREETING=unset
RUN echo "$GREETING from the build stage" > /greeting.txt

FROM base AS other
RUN echo "must not be built" > /other.txt && false

FROM scratch AS final
COPY --from=build /greeting.txt /greeting.txt
"#;

#[test]
fn builds_without_buildctl_in_every_mode() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        // The bundled example.
        let ctx = sb.hello_context();
        let out = sb.path("out");
        let mut c = sb.build(&ctx);
        run_ok(without_buildctl(&mut c).arg(local_output(&out)));
        assert!(fs::read_to_string(out.join("hello.txt"))
            .unwrap()
            .starts_with("hello from bkrun"));
        // A multi-stage build with a target and a build arg; the failing stage is never built.
        let ctx = sb.context("multi", MULTI_STAGE);
        let out = sb.path("out-multi");
        let mut c = sb.build(&ctx);
        without_buildctl(&mut c).args([
            "--opt",
            "target=final",
            "--opt",
            "build-arg:GREETING=hello",
        ]);
        run_ok(c.arg(local_output(&out)));
        assert_eq!(
            fs::read_to_string(out.join("greeting.txt")).unwrap(),
            "hello from the build stage\n"
        );
        assert!(!out.join("other.txt").exists());
        sb.assert_clean();
    }
}

#[test]
fn awkward_context_gives_byte_identical_oci_tarballs_to_buildctl() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let ctx = sb.awkward_context("ctx", "FROM scratch\nCOPY . /ctx/\n");
        fs::write(ctx.join(".dockerignore"), "*.log\n").unwrap();
        fs::write(ctx.join("ignored.log"), "not sent\n").unwrap();
        sb.own(&ctx);
        let args = |dest: &str| {
            let mut a = dockerfile_args(&ctx);
            a.extend([
                "--opt=build-arg:SOURCE_DATE_EPOCH=1700000000".into(),
                format!(
                    "--output=type=oci,dest={},rewrite-timestamp=true",
                    sb.path(dest).display()
                ),
                "--progress=quiet".into(),
            ]);
            a
        };
        sb.buildctl_and_bkrun(&args("buildctl.tar"), &args("bkrun.tar"));
        let a = fs::read(sb.path("buildctl.tar")).unwrap();
        let b = fs::read(sb.path("bkrun.tar")).unwrap();
        assert!(a.len() > 10_000, "{mode:?}: suspiciously small tarball");
        assert!(
            a == b,
            "{mode:?}: the OCI tarballs differ ({} vs {} bytes)",
            a.len(),
            b.len()
        );
        sb.assert_clean();
    }
}

#[test]
fn local_export_tree_equals_buildctls() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let ctx = sb.awkward_context("ctx", "FROM scratch\nCOPY . /\n");
        let args = |dest: &str| {
            let mut a = dockerfile_args(&ctx);
            a.extend([local_output(&sb.path(dest)), "--progress=quiet".into()]);
            a
        };
        sb.buildctl_and_bkrun(&args("out-buildctl"), &args("out-bkrun"));
        let a = describe_tree(&sb.path("out-buildctl"));
        let b = describe_tree(&sb.path("out-bkrun"));
        assert!(a.len() > 20, "{a:?}");
        assert_eq!(a, b, "{mode:?}: exported trees differ");
        // The awkward entries themselves made it through.
        let out = sb.path("out-bkrun");
        assert!(fs::symlink_metadata(out.join("dangling"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(out.join("empty dir").is_dir());
        assert_eq!(
            fs::read_to_string(out.join("ünïcödé/файл.txt")).unwrap(),
            "utf-8\n"
        );
        assert!(out.join("n".repeat(255)).exists());
        sb.assert_clean();
    }
}

#[test]
fn dockerignore_rules_are_honoured() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\nCOPY . /\n");
    for f in [
        "a.log",
        "keep.log",
        "app/main.go",
        "app/tmp/x",
        "tmp/y",
        "secret/key",
        "docs/readme.md",
        "docs/notes.txt",
    ] {
        sb.write(&format!("ctx/{f}"), f);
    }
    sb.write(
        "ctx/.dockerignore",
        "*.log\n!keep.log\n**/tmp\nsecret/\ndocs/*\n!docs/*.md\n",
    );
    let out = sb.path("out");
    run_ok(
        sb.bkrun()
            .arg("build")
            .args(dockerfile_args(&ctx))
            .args(["--progress=quiet".into(), local_output(&out)]),
    );
    for present in ["keep.log", "app/main.go", "docs/readme.md", "Dockerfile"] {
        assert!(out.join(present).exists(), "{present} should be sent");
    }
    for absent in ["a.log", "app/tmp", "tmp", "secret", "docs/notes.txt"] {
        assert!(!out.join(absent).exists(), "{absent} should be ignored");
    }
    sb.assert_clean();
}

/// Many small files: the receiver asks for each one while the daemon is still sending, and once
/// deadlocked with it when those requests could not be sent (it hung at ~19,500 of 20,000 files).
#[test]
fn a_local_export_of_20000_files_completes() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\nCOPY . /\n");
    for d in 0..100 {
        let dir = ctx.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            fs::write(dir.join(format!("f{f:03}")), vec![(d + f) as u8; 4096]).unwrap();
        }
    }
    let out = sb.path("out");
    let mut child = sb
        .bkrun()
        .arg("build")
        .args(dockerfile_args(&ctx))
        .args(["--progress=quiet".into(), local_output(&out)])
        .spawn_ok();
    let mut status = None;
    let done = wait_until(Duration::from_secs(120), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the export hung");
    }
    assert!(status.unwrap().success());
    let files: usize = (0..100)
        .map(|d| fs::read_dir(out.join(format!("d{d:03}"))).unwrap().count())
        .sum();
    assert_eq!(files, 20_000);
    assert_eq!(fs::read(out.join("d099/f199")).unwrap(), vec![42u8; 4096]);
    sb.assert_clean();
}

#[test]
fn tar_to_stdout_through_a_pipe() {
    let sb = Sandbox::new(Mode::RootlessStrict);
    let ctx = sb.hello_context();
    let mut child = sb
        .build(&ctx)
        .args(["--progress=quiet", "--output=type=tar,dest=-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_ok();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg("-")
        .stdin(child.stdout.take().unwrap())
        .output()
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "hello.txt"), "{names}");
    assert!(names.lines().any(|l| l == "bin/busybox"), "{names}");
    sb.assert_clean();
}

#[test]
fn an_unwritable_output_fails_before_the_build_and_a_failed_build_leaves_no_file() {
    let sb = Sandbox::new(Mode::Privileged);
    let t = Instant::now();
    let out = run_fails(sb.bkrun().args([
        "build",
        "--frontend=dockerfile.v0",
        "--output=type=tar,dest=/no/such/dir/x.tar",
    ]));
    assert!(
        stderr(&out).contains("/no/such/dir does not exist"),
        "{}",
        show(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let ctx = sb.context("fail", "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n");
    let dest = sb.path("image.tar");
    run_fails(
        sb.build(&ctx)
            .arg(format!("--output=type=tar,dest={}", dest.display())),
    );
    assert!(!dest.exists(), "a failed build left {}", dest.display());
    assert_eq!(
        fs::read_dir(&sb.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("image.tar"))
            .count(),
        0
    );
    sb.assert_clean();
}

/// Timings and sizes vary between runs; everything else of the plain format must match. A
/// status line shows its duration only when it took over 10 ms, so `SIZE TIME done` and
/// `SIZE done` are the same line with different timing. Likewise a transfer shows a bare
/// `#N transferring context:` line only when a status update caught it before its first byte.
/// bkrun's own start-up line (`bkrun: starting buildkitd …`) comes before the progress. And when
/// a vertex's completion reaches the printer before its first status, the vertex is printed as
/// `#N name / #N DONE` and again in full right after (buildctl did so in one CI run): the bare
/// block is dropped when the next block repeats its header.
fn mask_timings(text: &str) -> String {
    let masked = mask_lines(text);
    let blocks: Vec<&str> = masked.split("\n\n").collect();
    let header = |b: &str| b.lines().next().unwrap_or("").to_string();
    blocks
        .iter()
        .enumerate()
        .filter(|(i, b)| {
            let bare =
                b.lines().count() == 2 && b.lines().nth(1).is_some_and(|l| l.ends_with(" DONE T"));
            !(bare && blocks.get(i + 1).is_some_and(|n| header(n) == header(b)))
        })
        .map(|(_, b)| *b)
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn mask_lines(text: &str) -> String {
    let is_measure = |w: &str| {
        let n = ["kB", "MB", "GB", "B", "s"]
            .iter()
            .find_map(|u| w.strip_suffix(u))
            .unwrap_or(w);
        n.contains('.') && n.parse::<f64>().is_ok() || w.ends_with('B') && n.parse::<u64>().is_ok()
    };
    text.lines()
        .filter(|l| !(l.starts_with('#') && l.ends_with("transferring context:")))
        .filter(|l| !l.starts_with("bkrun: starting buildkitd"))
        .map(|l| {
            l.split(' ')
                .map(|w| if is_measure(w) { "T" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
                .replace("T T done", "T done")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_vertex_printed_bare_then_in_full_masks_as_printed_once() {
    let twice = "#1 [internal] load x\n#1 DONE 0.0s\n\n#1 [internal] load x\n#1 transferring dockerfile: 222B done\n#1 DONE 0.0s\n\n#2 y\n#2 DONE 0.1s";
    let once = "#1 [internal] load x\n#1 transferring dockerfile: 222B done\n#1 DONE 0.0s\n\n#2 y\n#2 DONE 0.1s";
    assert_eq!(mask_timings(twice), mask_timings(once));
    assert_ne!(mask_timings("#2 y\n#2 DONE 0.1s"), mask_timings(once));
}

#[test]
fn plain_progress_matches_buildctls() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context(
        "ctx",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo one; /bin/busybox sleep 0.2; echo two; /bin/busybox sleep 0.2; echo three\"]\nRUN [\"/bin/busybox\", \"true\"]\n",
    );
    fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    let mut args = dockerfile_args(&ctx);
    args.push("--progress=plain".into());
    let (a, b) = sb.buildctl_and_bkrun(&args, &args);
    let (a, mut b) = (stderr(&a), stderr(&b));
    // bkrun's own last line, after the progress, says what the cache did.
    let last = b.trim_end().rfind('\n').map_or(0, |i| i + 1);
    assert!(b[last..].starts_with("bkrun: cache: "), "{b}");
    b.truncate(last);
    assert!(mask_timings(&b).contains("#5 T three"), "{b}");
    assert_eq!(
        mask_timings(&a),
        mask_timings(&b),
        "buildctl:\n{a}\nbkrun:\n{b}"
    );
    sb.assert_clean();
}

#[test]
fn a_failing_run_step_prints_its_logs_the_dockerfile_excerpt_and_the_cause() {
    for mode in [Mode::Privileged, Mode::RootlessStrict] {
        let sb = Sandbox::new(mode);
        let ctx = sb.shell_context("ctx", "RUN echo about to fail && exit 3\nRUN echo never\n");
        let err = stderr(&run_fails(&mut sb.build(&ctx)));
        assert!(err.contains("about to fail"), "{err}");
        assert!(
            err.contains("Dockerfile:4\n--------------------\n"),
            "{err}"
        );
        assert!(
            err.contains("   4 | >>> RUN echo about to fail && exit 3\n"),
            "{err}"
        );
        assert!(err.contains("error: failed to solve: process \"/bin/sh -c echo about to fail && exit 3\" did not complete successfully: exit code: 3"), "{err}");
        sb.assert_clean();
    }
}

#[test]
fn a_dockerfile_syntax_error_points_at_the_line() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\nCOPY a\nRUNN echo\n");
    let err = stderr(&run_fails(&mut sb.build(&ctx)));
    assert!(
        err.contains(">>> RUNN echo") || err.contains(">>> COPY a"),
        "{err}"
    );
    assert!(err.contains("error: failed to solve:"), "{err}");
    sb.assert_clean();
}

#[test]
fn sigint_mid_build_cancels_and_leaves_nothing() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let marker = format!("bkrun-cancel-marker-{}", std::process::id());
        let ctx = sb.shell_context("ctx", &format!("RUN sleep 600; echo {marker}\n"));
        let mut child = sb
            .build(&ctx)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn_ok();
        let running = || {
            fs::read_dir("/proc").unwrap().flatten().any(|e| {
                fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            })
        };
        assert!(
            wait_until(Duration::from_secs(60), running),
            "{mode:?}: the RUN step never started"
        );
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(130), "{mode:?}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{mode:?}: took {:?}",
            t.elapsed()
        );
        assert!(!running(), "{mode:?}: the RUN step survived");
        sb.assert_clean();
    }
}

#[test]
fn several_outputs_in_one_build() {
    let sb = Sandbox::new(Mode::Rootless);
    let ctx = sb.hello_context();
    let (dir, tar) = (sb.path("out-dir"), sb.path("out.tar"));
    run_ok(sb.build(&ctx).args([
        local_output(&dir),
        format!("--output=type=tar,dest={}", tar.display()),
    ]));
    assert!(dir.join("hello.txt").exists());
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout)
        .lines()
        .any(|l| l == "hello.txt"));
    sb.assert_clean();
}

#[test]
fn rawjson_progress_is_one_object_per_line() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let out = run_ok(sb.build(&ctx).arg("--progress=rawjson"));
    let err = stderr(&out);
    let mut logs = String::new();
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for l in v["logs"].as_array().into_iter().flatten() {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(l["data"].as_str().unwrap())
                .unwrap();
            logs.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(logs.contains("hello from bkrun"), "{err}");
    sb.assert_clean();
}

#[test]
fn auto_progress_on_a_terminal_is_the_live_view() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let mut cmdline = vec![
        sb.bin.display().to_string(),
        "--root".into(),
        sb.path("state").display().to_string(),
        "build".into(),
    ];
    cmdline.extend(
        sb.build_args(&ctx)
            .into_iter()
            .filter(|a| !a.starts_with("--progress")),
    );
    // `script` gives bkrun a pseudo-terminal, as an interactive shell would.
    let out = run_ok(
        sb.command("script")
            .args(["-qec", &shell_words::join(&cmdline), "/dev/null"])
            .env("TERM", "xterm"),
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("[+] Building"), "{screen}");
    assert!(screen.contains("FINISHED"), "{screen}");
    assert!(
        screen.contains("\x1b["),
        "the live view redraws with escape sequences: {screen}"
    );
    sb.assert_clean();
}

#[test]
fn secrets_reach_run_steps_and_never_the_output() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let tok = sb.write("tok.txt", "hunter2-file-secret\n");
        let ctx = sb.shell_context(
            "ctx",
            "RUN --mount=type=secret,id=tok --mount=type=secret,id=api sh -c 'wc -c < /run/secrets/tok > /tok.len; cat /run/secrets/tok; echo \"api=$(cat /run/secrets/api)\"'\n",
        );
        let out_dir = sb.path("out");
        let out = run_ok(
            sb.build(&ctx)
                .env("API_KEY", "sup3r-env-value")
                .arg(format!("--secret=id=tok,src={}", tok.display()))
                .arg("--secret=id=api,env=API_KEY")
                .arg(local_output(&out_dir)),
        );
        assert_eq!(
            fs::read_to_string(out_dir.join("tok.len")).unwrap().trim(),
            "20"
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("hunter2") && !all.contains("sup3r"),
            "a secret leaked:\n{all}"
        );
        assert!(all.contains("api=****"), "{all}");
        sb.assert_clean();
    }
}

/// The masking cases a real build's output must meet: a line of a multi-line secret printed on
/// its own, the value printed without its trailing newline (and the line after it intact), and
/// a secret too short to mask, shown in clear after a one-line warning naming it.
#[test]
fn each_line_of_a_secret_is_masked_and_a_short_one_is_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let multi = sb.write("multi.txt", "first-line-of-key\nsecond-line-of-key\n");
    let ctx = sb.shell_context(
        "ctx",
        "RUN --mount=type=secret,id=multi --mount=type=secret,id=pin sh -c 'sed -n 2p /run/secrets/multi; printf \"%s\" \"$(cat /run/secrets/multi)\"; echo; cat /run/secrets/multi; echo MARK-AFTER; echo \"pin=$(cat /run/secrets/pin)\"'\n",
    );
    let out = run_ok(
        sb.build(&ctx)
            .env("PIN", "42")
            .arg(format!("--secret=id=multi,src={}", multi.display()))
            .arg("--secret=id=pin,env=PIN")
            .arg("--no-cache"),
    );
    let err = stderr(&out);
    assert!(
        !err.contains("first-line-of-key") && !err.contains("second-line-of-key"),
        "a line of the secret leaked:\n{err}"
    );
    assert!(err.contains("****"), "{err}");
    // The step's output line, not its title: the newline the secret ended with still ends it.
    assert!(
        err.lines()
            .any(|l| l.starts_with('#') && l.ends_with(" MARK-AFTER")),
        "{err}"
    );
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("bkrun: warning: --secret id=pin is shorter than"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        err.contains("pin=42"),
        "a short secret is left as it is:\n{err}"
    );
    sb.assert_clean();
}

#[test]
fn a_missing_secret_file_fails_before_a_daemon_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let t = Instant::now();
    let err = stderr(&run_fails(
        sb.build(&ctx).arg("--secret=id=tok,src=/no/such/secret"),
    ));
    assert!(
        err.starts_with("bkrun: --secret id=tok: cannot read /no/such/secret"),
        "{err}"
    );
    sb.assert_no_daemon_started(t);
    sb.assert_clean();
}

#[test]
fn proxy_variables_reach_run_steps_unless_set_by_the_user() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context("ctx", "RUN echo \"$HTTPS_PROXY $NO_PROXY\" > /proxy.txt\n");
    let out = sb.path("out");
    run_ok(
        sb.build(&ctx)
            .env("HTTPS_PROXY", "http://proxy.invalid:3128")
            .env("NO_PROXY", "from-env")
            .arg("--opt=build-arg:NO_PROXY=from-user")
            .arg(local_output(&out)),
    );
    assert_eq!(
        fs::read_to_string(out.join("proxy.txt")).unwrap(),
        "http://proxy.invalid:3128 from-user\n"
    );
    sb.assert_clean();
}

/// A context "ctx" with `dockerfile` and agentls, a static helper that lists (and with -sign,
/// tests) the agent's keys: the image has no ssh-add.
fn agentls_context(sb: &Sandbox, dockerfile: &str) -> std::path::PathBuf {
    let ctx = sb.context("ctx", dockerfile);
    let go = Command::new("go")
        .args(["build", "-o"])
        .arg(ctx.join("agentls"))
        .arg(".")
        .current_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/agentls"
        ))
        .env("CGO_ENABLED", "0")
        .output()
        .unwrap();
    assert!(go.status.success(), "{}", show(&go));
    sb.own(&ctx);
    ctx
}

/// ssh-keygen as the sandbox's user, so a rootless bkrun can read the key.
fn keygen(sb: &Sandbox, name: &str, args: &[&str]) -> std::path::PathBuf {
    let key = sb.path(name);
    run_ok(
        sb.command("ssh-keygen")
            .args(["-q", "-N", ""])
            .args(args)
            .arg("-f")
            .arg(&key),
    );
    key
}

#[test]
fn ssh_agent_keys_reach_run_steps() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let ctx = agentls_context(
            &sb,
            // Forwarded read-only by default: it signs, and refuses to remove keys. raw=true
            // forwards the socket as it is.
            "FROM scratch\nCOPY agentls /agentls\nRUN --mount=type=ssh [\"/agentls\", \"-sign\"]\nRUN --mount=type=ssh,id=deploy [\"/agentls\"]\n",
        );
        // A test agent holding one key, run as the sandbox's user.
        let sock = sb.path("agent.sock");
        let key = keygen(&sb, "key", &["-t", "ed25519", "-C", "bkrun-test-key"]);
        let mut agent = sb
            .command("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn_ok();
        assert!(wait_until(Duration::from_secs(10), || sock.exists()));
        run_ok(sb.command("ssh-add").arg(&key).env("SSH_AUTH_SOCK", &sock));

        let out = sb
            .build(&ctx)
            .env("SSH_AUTH_SOCK", &sock)
            .args(["--ssh", "default"])
            .arg(format!("--ssh=deploy={},raw=true", sock.display()))
            .output()
            .unwrap();
        let still_there = sb
            .command("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        let _ = agent.kill();
        let _ = agent.wait();
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        let err = stderr(&out);
        assert_eq!(
            err.matches("key: bkrun-test-key").count(),
            2,
            "{mode:?}: {err}"
        );
        assert!(
            String::from_utf8_lossy(&still_there.stdout).contains("bkrun-test-key"),
            "{mode:?}: the build changed the user's agent: {}",
            show(&still_there)
        );
        sb.assert_clean();
    }
}

#[test]
fn ssh_key_files_are_served_without_an_agent() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let ctx = agentls_context(
            &sb,
            "FROM scratch\nCOPY agentls /agentls\nRUN --mount=type=ssh [\"/agentls\", \"-sign\"]\nRUN --mount=type=ssh,id=deploy [\"/agentls\", \"-sign\"]\n",
        );
        // No comment in the ed25519 file, so the agent names it by its path, as ssh-add does.
        let ed = keygen(&sb, "id_ed25519", &["-t", "ed25519", "-C", ""]);
        let rsa = keygen(
            &sb,
            "id_rsa",
            &["-t", "rsa", "-b", "3072", "-C", "bkrun-rsa-key"],
        );
        let t = Instant::now();
        // The sandbox's environment has no SSH_AUTH_SOCK: no ssh-agent runs anywhere.
        let out = sb
            .build(&ctx)
            .arg(format!("--ssh=default={}", ed.display()))
            .arg(format!("--ssh=deploy={},{}", rsa.display(), ed.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        eprintln!("{mode:?}: build with key files in {:?}", t.elapsed());
        let err = stderr(&out);
        let ed = ed.display().to_string();
        for (line, count) in [
            ("keys: 1\n".to_string(), 1),
            ("keys: 2\n".to_string(), 1),
            (format!("key: {ed}\n"), 2),
            ("key: bkrun-rsa-key\n".to_string(), 1),
            // Each signature was checked inside RUN against the listed public key.
            (format!("verified: {ed} ssh-ed25519\n"), 2),
            // SHA-1 ssh-rsa is refused: ring signs RSA only with SHA-2 (docs/builds.md).
            ("verified: bkrun-rsa-key ssh-rsa\n".to_string(), 0),
            ("refused: bkrun-rsa-key ssh-rsa\n".to_string(), 1),
            ("verified: bkrun-rsa-key rsa-sha2-256\n".to_string(), 1),
            ("verified: bkrun-rsa-key rsa-sha2-512\n".to_string(), 1),
            ("remove refused\n".to_string(), 2),
        ] {
            assert_eq!(
                err.matches(&line).count(),
                count,
                "{mode:?} {line:?}: {err}"
            );
        }
        sb.assert_clean();
    }
}

#[test]
fn an_encrypted_ssh_key_fails_before_a_daemon_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let key = keygen(&sb, "id_ed25519", &["-t", "ed25519", "-N", "pass"]);
    let t = Instant::now();
    let err = stderr(&run_fails(
        sb.build(&ctx)
            .arg(format!("--ssh=default={}", key.display())),
    ));
    let k = key.display();
    assert!(
        err.starts_with(&format!(
            "bkrun: --ssh default: the key file {k} is passphrase-protected"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("load it with ssh-add {k} and pass --ssh default")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    sb.assert_no_daemon_started(t);
    sb.assert_clean();
}

#[test]
fn several_platforms_make_an_index_and_missing_emulation_is_explained() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM scratch\nCOPY busybox /bin/busybox\n");
    fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    let tar = sb.path("multi.tar");
    run_ok(
        sb.bkrun()
            .arg("build")
            .args(dockerfile_args(&ctx))
            .args(["--progress=plain", "--opt=platform=linux/amd64,linux/arm64"])
            .arg(format!("--output=type=oci,dest={}", tar.display())),
    );
    let index = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("index.json")
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    let nested = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .replace(':', "/");
    let inner = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg(format!("blobs/{nested}"))
        .output()
        .unwrap();
    let inner: serde_json::Value = serde_json::from_slice(&inner.stdout).unwrap();
    let archs: Vec<&str> = inner["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    assert!(
        archs.contains(&"amd64") && archs.contains(&"arm64"),
        "{inner}"
    );

    // A RUN step running an arm64 binary needs an emulator this machine has not got. The
    // binary is busybox with its ELF machine field set to AArch64, which is all the kernel checks.
    if !std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        let mut elf = fs::read("/bin/busybox").unwrap();
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        fs::write(ctx.join("arm64-tool"), elf).unwrap();
        fs::set_permissions(
            ctx.join("arm64-tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY arm64-tool /arm64-tool\nRUN [\"/arm64-tool\"]\n",
        )
        .unwrap();
        let out = run_fails(sb.build(&ctx).arg("--opt=platform=linux/arm64"));
        assert!(
            stderr(&out).contains("install QEMU's binfmt handlers"),
            "{}",
            show(&out)
        );
    }
    sb.assert_clean();
}

#[test]
fn trace_and_ref_files_are_written() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let trace = sb.path("trace.json");
    let ref_file = sb.path("ref");
    fs::write(&trace, "").unwrap();
    let build = |progress: &str| {
        run_ok(
            sb.build(&ctx)
                .arg(format!("--progress={progress}"))
                .arg(format!("--trace={}", trace.display()))
                .arg(format!("--ref-file={}", ref_file.display())),
        )
    };
    build("quiet");
    let first = fs::read_to_string(&ref_file).unwrap();
    assert_eq!(first.len(), 25, "{first:?}");
    assert!(first.bytes().all(|b| b.is_ascii_alphanumeric()));
    let lines = fs::read_to_string(&trace).unwrap().lines().count();
    // Whatever the view, the trace is the rawjson of the same stream; a second build appends.
    let out = build("rawjson");
    let text = fs::read_to_string(&trace).unwrap();
    let second: Vec<&str> = text.lines().skip(lines).collect();
    assert!(lines > 0 && !second.is_empty());
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.is_object());
    }
    assert_eq!(
        second.join("\n").trim(),
        stderr(&out).trim(),
        "the trace equals the rawjson view"
    );
    assert_ne!(fs::read_to_string(&ref_file).unwrap(), first);
    sb.assert_clean();
}

#[test]
fn a_source_policy_file_reaches_the_daemon() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let policy = sb.write(
        "policy.json",
        r#"{"rules":[{"action":"DENY","selector":{"identifier":"local://busybox","match_type":"EXACT"}}]}"#,
    );
    let out = run_fails(
        sb.build(&ctx)
            .arg(format!("--source-policy-file={}", policy.display())),
    );
    assert!(stderr(&out).contains("denied by policy"), "{}", show(&out));
    // A broken file is refused before any daemon starts.
    let bad = sb.write("bad.json", r#"{"rules":[{"action":"BLOCK"}]}"#);
    let out = sb
        .build(&ctx)
        .arg(format!("--source-policy-file={}", bad.display()))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("is not a source policy") && err.contains("BLOCK"),
        "{err}"
    );
    sb.assert_clean();
}
