//! The command lines people already have, against a real buildkitd and a docker-registry on 127.0.0.1: GitLab's BuildKit page verbatim through buildctl-daemonless.sh, a docker/buildx-style build, kaniko's executor, and buildctl's drop-in conventions.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::Registry;
use common::*;

/// `bkrun` installed under `name` (a symlink), as images install it.
fn as_program(sb: &Sandbox, name: &str) -> PathBuf {
    let link = sb.path(&format!("bin/{name}"));
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    if !link.exists() {
        std::os::unix::fs::symlink(&sb.bin, &link).unwrap();
    }
    sb.own(link.parent().unwrap());
    link
}

/// A context whose Dockerfile is `dockerfile`, with the static busybox beside it.
fn busybox_context(sb: &Sandbox, name: &str, dockerfile: &str) -> PathBuf {
    let ctx = sb.context(name, dockerfile);
    fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    sb.own(&ctx);
    ctx
}

/// One of GitLab's `script:` lines, run by sh in `ctx` with the job's variables, bkrun on PATH
/// as buildctl-daemonless.sh.
fn gitlab_job(sb: &Sandbox, ctx: &Path, script: &str, vars: &[(&str, String)]) -> Command {
    let bin = as_program(sb, "buildctl-daemonless.sh");
    let mut c = sb.command("sh");
    c.arg("-ec").arg(script).current_dir(ctx).env(
        "PATH",
        format!(
            "{}:/usr/local/bin:/usr/bin:/bin",
            bin.parent().unwrap().display()
        ),
    );
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

// The job scripts of GitLab's "Build Docker images with BuildKit" page, verbatim.
const PUSH: &str = "buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --output type=image,name=$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA,push=true
";
const MULTI_PLATFORM: &str = "buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --opt platform=linux/amd64,linux/arm64 \\
  --output type=image,name=$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA,push=true
";
const CACHED: &str = "buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --export-cache type=registry,ref=$CACHE_IMAGE \\
  --import-cache type=registry,ref=$CACHE_IMAGE \\
  --output type=image,name=$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA,push=true
";
const PROXY: &str = "buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --build-arg http_proxy=$http_proxy \\
  --build-arg https_proxy=$https_proxy \\
  --build-arg no_proxy=$no_proxy \\
  --output type=image,name=$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA,push=true
";

#[test]
fn gitlabs_buildkit_page_verbatim_in_rootless_strict() {
    // GitLab's jobs run moby/buildkit:rootless as uid 1000 with this flag.
    let sb = Sandbox::new(Mode::Rootless);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let image = format!("{}/group/app", reg.host());
    let job = |ctx: &Path, script: &str, extra: &[(&str, String)]| {
        let mut vars = vec![
            (
                "BUILDKITD_FLAGS",
                "--oci-worker-no-process-sandbox".to_string(),
            ),
            ("CI_REGISTRY_IMAGE", image.clone()),
            ("CI_COMMIT_SHA", "0123abcd".to_string()),
        ];
        vars.extend(extra.iter().cloned());
        gitlab_job(&sb, ctx, script, &vars)
    };
    let with_cfg = [("BKRUN_CONFIG", cfg.display().to_string())];

    // Rootless push.
    let ctx = busybox_context(
        &sb,
        "app",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built-here\"]\n",
    );
    let out = run_ok(&mut job(&ctx, PUSH, &with_cfg));
    assert!(stderr(&out).contains("rootless-strict"), "{}", show(&out));
    assert!(reg.digest("group/app", "0123abcd").starts_with("sha256:"));

    // Multi-platform: an index with both platforms (no RUN step, so no emulator is needed).
    let multi = busybox_context(&sb, "multi", "FROM scratch\nCOPY busybox /bin/busybox\n");
    run_ok(&mut job(&multi, MULTI_PLATFORM, &with_cfg));
    let index = reg.manifest("group/app", "0123abcd");
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("not an index: {index}"))
        .iter()
        .map(|m| {
            m["platform"]["architecture"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        platforms.contains(&"amd64".into()) && platforms.contains(&"arm64".into()),
        "{index}"
    );

    // Registry cache: a second job on a fresh state dir takes the RUN step from the cache.
    let cache_vars = |state: &str| {
        vec![
            ("BKRUN_CONFIG", cfg.display().to_string()),
            ("CACHE_IMAGE", format!("{image}:cache")),
            ("XDG_DATA_HOME", sb.mkdir(state).display().to_string()),
        ]
    };
    // The RUN step's output line shows only where it ran.
    let ran = |log: &str| {
        log.lines()
            .any(|l| l.starts_with('#') && l.split(' ').nth(2) == Some("built-here"))
    };
    // The image push and the cache export upload the same layer to one repository at once;
    // Debian's docker-registry (distribution 2.8) now and then answers one of the two uploads
    // "provided digest did not match uploaded content". That is the test registry's race, not
    // the build's: the job is run once more then, on a fresh state dir.
    let cold = {
        let first = output(&mut job(&ctx, CACHED, &cache_vars("state-a")));
        if !first.status.success()
            && stderr(&first).contains("provided digest did not match uploaded content")
        {
            run_ok(&mut job(&ctx, CACHED, &cache_vars("state-a2")))
        } else {
            assert!(first.status.success(), "{}", show(&first));
            first
        }
    };
    assert!(ran(&stderr(&cold)), "{}", show(&cold));
    let warm = run_ok(&mut job(&ctx, CACHED, &cache_vars("state-b")));
    assert!(
        !ran(&stderr(&warm)),
        "the RUN step ran again:\n{}",
        show(&warm)
    );

    // Proxy variables passed with --build-arg reach the RUN step.
    let proxy_ctx = busybox_context(
        &sb,
        "proxy",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo proxy=$http_proxy\"]\n",
    );
    let mut vars = with_cfg.to_vec();
    vars.extend([
        ("http_proxy", "http://proxy.invalid:3128".to_string()),
        ("https_proxy", "http://proxy.invalid:3128".to_string()),
        ("no_proxy", "127.0.0.1".to_string()),
    ]);
    let out = run_ok(&mut job(&proxy_ctx, PROXY, &vars));
    assert!(
        stderr(&out).contains("proxy=http://proxy.invalid:3128"),
        "{}",
        show(&out)
    );

    // A registry mirror through BUILDKITD_FLAGS=--config: docker.io/bkrunmirror/base comes from
    // the local registry, so the base must first be pushed there.
    let base = busybox_context(&sb, "base", "FROM scratch\nCOPY busybox /bin/busybox\n");
    run_ok(
        with_config(sb.bkrun(), &cfg)
            .arg("build")
            .args([
                "-t",
                &format!("{}/bkrunmirror/base:1", reg.host()),
                "--push",
            ])
            .arg(&base),
    );
    let toml = sb.write(
        "buildkit.toml",
        &format!(
            "[registry.\"docker.io\"]\n  mirrors = [\"{host}\"]\n[registry.\"{host}\"]\n  http = true\n",
            host = reg.host()
        ),
    );
    let mirrored = busybox_context(
        &sb,
        "mirrored",
        "FROM bkrunmirror/base:1\nRUN [\"/bin/busybox\", \"true\"]\n",
    );
    let flags = format!(
        "--oci-worker-no-process-sandbox --config {}",
        toml.display()
    );
    let mut c = job(&mirrored, PUSH, &[]);
    c.env("BUILDKITD_FLAGS", flags);
    run_ok(&mut c);
    drop(reg);
    sb.assert_clean();
}

#[test]
fn docker_style_tag_push_target_args_and_a_named_context() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let tools = sb.busybox_dir();
    let ctx = sb.context(
        "app",
        "FROM scratch AS base\nCOPY --from=tools busybox /bin/busybox\n\
         FROM base AS final\nARG MSG\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo $MSG > /msg\"]\n\
         FROM base AS broken\nRUN [\"/bin/busybox\", \"false\"]\n",
    );
    let repo = format!("{}/docker/app", reg.host());
    let (iid, meta) = (sb.path("iid"), sb.path("meta.json"));
    let out = run_ok(
        with_config(sb.bkrun(), &cfg)
            .arg("build")
            .args(["-t", &format!("{repo}:1"), "-t", &format!("{repo}:latest")])
            .args(["--push", "--target", "final", "--build-arg", "MSG=hi"])
            .arg(format!("--build-context=tools={}", tools.display()))
            .arg(format!("--iidfile={}", iid.display()))
            .arg(format!("--metadata-file={}", meta.display()))
            .arg("--progress=plain")
            .arg(&ctx),
    );
    assert!(
        stderr(&out).contains("[final 1/1] RUN") && stderr(&out).contains("echo hi"),
        "{}",
        show(&out)
    );
    let digest = reg.digest("docker/app", "1");
    assert_eq!(reg.digest("docker/app", "latest"), digest);
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], digest.as_str());
    // As buildx writes it: the config digest, or with buildx's default provenance (an index
    // with an attestation manifest, no one config) the index digest.
    let id = meta["containerimage.config.digest"]
        .as_str()
        .unwrap_or(digest.as_str());
    assert_eq!(fs::read_to_string(&iid).unwrap(), id);
    // A Dockerfile on stdin (`-f -`) with the same context, written out locally.
    let dest = sb.path("out");
    let mut c = sb.bkrun();
    c.arg("build")
        .args(["-f", "-", "-o"])
        .arg(&dest)
        .arg(format!("--build-context=tools={}", tools.display()))
        .arg(&ctx)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn_ok();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"FROM scratch\nCOPY --from=tools busybox /bb\n",
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(dest.join("bb").is_file());
    // --load has no daemon to load into: refused before anything starts, with the way round.
    let out = run_fails(sb.bkrun().args(["build", "--load", "-t", "x"]).arg(&ctx));
    assert!(
        stderr(&out).contains("--output type=docker,dest="),
        "{}",
        show(&out)
    );
    drop(reg);
    sb.assert_clean();
}

#[test]
fn kaniko_executor_pushes_twice_with_digest_file_cache_and_tarball() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let ctx = busybox_context(
        &sb,
        "app",
        "FROM scratch\nCOPY busybox /bin/busybox\nARG V\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran-v=$V\"]\n",
    );
    let executor = as_program(&sb, "executor");
    let repo = format!("{}/kaniko/app", reg.host());
    let run = |state: &str, digest: &Path, tar: &Path| {
        let mut c = sb.command(&executor);
        c.arg(format!("--context=dir://{}", ctx.display()))
            .args(["--dockerfile", "Dockerfile"])
            .args(["--destination", &format!("{repo}:1")])
            .args(["--destination", &format!("{repo}:2")])
            .args(["--build-arg", "V=7", "--cache=true", "--insecure"])
            .arg(format!("--cache-repo={}/kaniko/cache", reg.host()))
            .arg(format!("--digest-file={}", digest.display()))
            .arg(format!("--tar-path={}", tar.display()))
            .args(["--snapshot-mode=redo", "--use-new-run"])
            // Each run its own state dir, so the second can only get the RUN step from the cache.
            .env(
                "BKRUN_CONFIG",
                sb.write(
                    &format!("{state}.toml"),
                    &format!("root = \"{}\"\n", sb.mkdir(state).display()),
                ),
            );
        run_ok(&mut c)
    };
    let (d1, t1) = (sb.path("digest-1"), sb.path("image-1.tar"));
    let out = run("state-a", &d1, &t1);
    assert!(
        stderr(&out).contains("--snapshot-mode, --use-new-run have no meaning"),
        "{}",
        show(&out)
    );
    let digest = fs::read_to_string(&d1).unwrap();
    assert_eq!(digest, reg.digest("kaniko/app", "1"));
    assert_eq!(digest, reg.digest("kaniko/app", "2"));
    let listing = Command::new("tar").arg("tf").arg(&t1).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("manifest.json"));
    let (d2, t2) = (sb.path("digest-2"), sb.path("image-2.tar"));
    // The RUN step's output line (`#N 0.012 ran-v=7`) shows only where it ran: on the cold
    // build, not on the fresh daemon that imported the registry cache.
    let ran = |log: &str| {
        log.lines()
            .any(|l| l.starts_with('#') && l.split(' ').nth(2) == Some("ran-v=7"))
    };
    assert!(ran(&stderr(&out)), "{}", show(&out));
    let warm = run("state-b", &d2, &t2);
    assert!(
        !ran(&stderr(&warm)),
        "the RUN step ran again:\n{}",
        show(&warm)
    );
    assert_eq!(fs::read_to_string(&d2).unwrap(), digest);
    drop(reg);
    sb.assert_clean();
}

#[test]
fn buildctl_drop_in_conventions() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = busybox_context(&sb, "app", "FROM scratch\nCOPY busybox /bin/busybox\n");
    let script = as_program(&sb, "buildctl-daemonless.sh");
    // Go-style single-dash flags, a boolean with =false, and buildctl's global --timeout.
    let dest = sb.path("out");
    let mut c = sb.command(&script);
    c.args(["--timeout", "5", "build", "-frontend", "dockerfile.v0"])
        .arg(format!("-local=context={}", ctx.display()))
        .arg(format!("-local=dockerfile={}", ctx.display()))
        .arg("--no-cache=false")
        .arg(format!("--output=type=local,dest={}", dest.display()))
        .args(["--root", &sb.path("state").display().to_string()]);
    run_ok(&mut c);
    assert!(dest.join("bin/busybox").is_file());
    // A usage error exits 1, as buildctl's does.
    let theirs = sb
        .command("buildctl")
        .args(["build", "--frobnicate"])
        .output()
        .unwrap();
    let ours = sb
        .command(&script)
        .args(["build", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(theirs.status.code(), Some(1), "{}", show(&theirs));
    assert_eq!(ours.status.code(), theirs.status.code(), "{}", show(&ours));
    sb.assert_clean();
}

/// Bad flag values, the issue's and generated ones, refused by the real binary in under a second
/// with a line naming the flag, and no daemon started (its state dir stays empty).
#[test]
fn bad_flag_values_never_start_a_daemon() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};
    use std::time::{Duration, Instant};

    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let mut cases: Vec<(&str, String)> = vec![
        ("--output", "type=local,dest=".into()),
        ("--output", r#"type=local,dest="a"b""#.into()),
        ("--output", "type=cacheonly".into()),
        ("--output", "type=local,dest=a,dest=b".into()),
        ("--local", "=/tmp".into()),
        ("--export-cache", "type=local,dest=/tmp/caché".into()),
        ("--import-cache", "type=registry,ref=Not A Ref".into()),
        ("--secret", "id=z,src=/dev/zero".into()),
        ("--opt", "x".repeat(100_000)),
    ];
    // A few generated values of a shape every parser refuses: a bare quote inside a field.
    let mut runner = TestRunner::new(Config::default());
    let bare_quote = "[a-z]{1,8}=[a-z]{1,8}\"[a-z\"]{0,8}";
    for flag in ["--output", "--secret", "--import-cache", "--export-cache"] {
        let v = bare_quote.new_tree(&mut runner).unwrap().current();
        cases.push((flag, v));
    }
    for (flag, value) in cases {
        let t = Instant::now();
        let out = run_fails(sb.build(&ctx).arg(format!("{flag}={value}")));
        let took = t.elapsed();
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("bkrun: {flag}")),
            "{flag}={value:.80}: {err:.2000}"
        );
        assert!(first.len() < 1000, "{flag}: {} bytes", first.len());
        assert!(
            took < Duration::from_secs(1),
            "{flag}={value:.80}: {took:?}"
        );
        sb.assert_no_daemon_started(t);
    }
    sb.assert_clean();
}
