//! End-to-end tests of `--cache-mounts` against a real buildkitd in every mode: RUN cache mounts
//! kept in a directory or a password-protected registry carry over between fresh state dirs (new
//! pods), with their sharing, ids, owners and modes; a save killed by SIGKILL leaves the last one
//! usable; the size cap, and a Dockerfile without cache mounts paying nothing.

mod common;

use std::path::{Path, PathBuf};

use common::registry::Registry;
use common::*;

/// Three cache mounts: a plain one with an id, one with owner, mode, odd id and locked sharing,
/// and a private one; each RUN appends the run's number and copies what the mount holds out.
const MOUNTS: &str = r#"ARG RUN
RUN --mount=type=cache,target=/cache,id=lines echo "run $RUN" >> /cache/lines && cp /cache/lines /seen
RUN --mount=type=cache,target=/owned,id=odd:id/with.dots@x,uid=1234,gid=5678,mode=0750,sharing=locked echo "run $RUN" >> /owned/f && stat -c '%u:%g:%a' /owned > /owned-meta && ls -ln /owned/f | awk '{print $3":"$4}' >> /owned-meta && cp /owned/f /owned-seen
RUN --mount=type=cache,target=/priv,sharing=private echo "run $RUN" >> /priv/p && cp /priv/p /priv-seen
"#;

/// `bkrun build` of `ctx` on a fresh state dir `state`, keeping cache mounts in `keep`, its
/// result exported to `out`.
fn build(sb: &Sandbox, ctx: &Path, state: &str, run: u32, keep: &str, out: &Path) -> Command {
    build_with(sb, sb.bkrun_root(state), ctx, run, keep, out)
}

/// The same after `c`: bkrun with its global flags given.
fn build_with(
    sb: &Sandbox,
    mut c: Command,
    ctx: &Path,
    run: u32,
    keep: &str,
    out: &Path,
) -> Command {
    c.arg("build")
        .args(sb.build_args(ctx))
        .arg(format!("--opt=build-arg:RUN={run}"))
        .arg(format!("--cache-mounts={keep}"))
        .arg(local_output(out));
    c
}

use std::process::Command;

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The cache line's counts, e.g. `restored 3` and `saved 3`.
fn cache_line(err: &str) -> &str {
    err.lines()
        .rev()
        .find(|l| l.starts_with("bkrun: cache:"))
        .unwrap_or_else(|| panic!("no cache line in\n{err}"))
}

/// Three runs, each on a fresh state dir (`bkrun` gives bkrun and its global flags for one):
/// the third sees what the first two wrote.
fn three_runs(sb: &Sandbox, keep: &str, bkrun: &dyn Fn(&str) -> Command) {
    let ctx = sb.shell_context("ctx", MOUNTS);
    for run in 1..=3 {
        let out = sb.path(&format!("out{run}"));
        let base = bkrun(&format!("state{run}"));
        let done = run_ok(&mut build_with(sb, base, &ctx, run, keep, &out));
        let err = stderr(&done);
        let line = cache_line(&err);
        let want = if run == 1 { "restored 0" } else { "restored 3" };
        assert!(line.contains(want), "run {run}: {line}");
        assert!(line.contains("saved 3"), "run {run}: {line}");
        let lines: String = (1..=run).map(|r| format!("run {r}\n")).collect();
        assert_eq!(read(out.join("seen")), lines, "run {run}");
        assert_eq!(read(out.join("owned-seen")), lines, "run {run}");
        assert_eq!(read(out.join("priv-seen")), lines, "run {run}");
        // The mount's own owner and mode are the RUN's flags; the file's owner is kept too.
        assert_eq!(
            read(out.join("owned-meta")),
            "1234:5678:750\n0:0\n",
            "run {run}"
        );
    }
}

#[test]
fn cache_mounts_outlive_the_daemon_in_a_directory_in_every_mode() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        // Not there yet: made by the first save (a CI's cache dir, a PVC's subdirectory).
        let keep = sb.path("ci-cache/mounts");
        sb.mkdir("ci-cache");
        three_runs(&sb, keep.to_str().unwrap(), &|state| sb.bkrun_root(state));
        let index = read(keep.join("index.json"));
        assert!(
            index.contains("application/vnd.bkrun.cache-mounts.v1"),
            "{index}"
        );
        sb.assert_clean();
    }
}

#[test]
fn cache_mounts_outlive_the_daemon_in_a_registry_with_a_login() {
    let sb = Sandbox::new(Mode::Privileged);
    let (reg, certs) = Registry::start_auth(&sb);
    let host = reg.host();
    let cfg = sb.write(
        "bkrun.toml",
        &format!(
            "[buildkitd.registry.\"{host}\"]\nhttp = false\nca = [\"{}/ca.pem\"]\n",
            certs.display()
        ),
    );
    let docker = common::registry::docker_login(&sb, "docker", &host, "builder:s3cr3t-pw");
    let keep = format!("registry://{host}/team/app-mounts:main");
    // Without a login the cache is lost, not the build: each side says so in one line.
    let ctx = sb.shell_context("ctx", MOUNTS);
    let mut anon = build_with(
        &sb,
        with_config(sb.bkrun_root("state-anon"), &cfg),
        &ctx,
        0,
        &keep,
        &sb.path("out-anon"),
    );
    anon.env("DOCKER_CONFIG", sb.mkdir("docker-empty"));
    let err = stderr(&run_ok(&mut anon));
    assert!(
        err.contains("building without the saved cache mounts"),
        "{err}"
    );
    assert!(
        err.contains("cannot save the cache mounts to registry://"),
        "{err}"
    );
    three_runs(&sb, &keep, &|state| {
        let mut c = with_config(sb.bkrun_root(state), &cfg);
        c.env("DOCKER_CONFIG", &docker);
        c
    });
    // An artifact of our own type, one zstd layer per mount.
    let m = stored_manifest(&sb.path("registry-data"), "team/app-mounts", "main");
    assert_eq!(
        m["artifactType"], "application/vnd.bkrun.cache-mounts.v1",
        "{m}"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{m}");
    assert!(layers
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"));
    drop(reg);
    sb.assert_clean();
}

/// A tag's manifest as the registry stored it (read from its storage: the registry wants TLS
/// and a login, which this check does not need).
fn stored_manifest(data: &Path, repo: &str, tag: &str) -> serde_json::Value {
    let v2 = data.join("docker/registry/v2");
    let link = read(v2.join(format!(
        "repositories/{repo}/_manifests/tags/{tag}/current/link"
    )));
    let hex = link.trim().trim_start_matches("sha256:");
    let blob = read(v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])));
    serde_json::from_str(&blob).unwrap()
}

#[test]
fn a_save_killed_midway_leaves_the_last_one_and_the_next_run_says_so() {
    let sb = Sandbox::new(Mode::Privileged);
    // A second run writes 64 MiB of random data, so its save takes long enough to be killed.
    let ctx = sb.shell_context(
        "ctx",
        "ARG RUN\nARG BIG=0\nRUN --mount=type=cache,target=/cache echo \"run $RUN\" >> /cache/lines && cp /cache/lines /seen && if [ $BIG = 1 ]; then head -c 67108864 /dev/urandom > /cache/big; fi\n",
    );
    let keep = sb.path("keep");
    let k = keep.to_str().unwrap();
    run_ok(&mut build(&sb, &ctx, "state1", 1, k, &sb.path("out1")));
    let mut second = build(&sb, &ctx, "state2", 2, k, &sb.path("out2"));
    second.arg("--opt=build-arg:BIG=1");
    let mut child = second.spawn().unwrap();
    // The save marks the directory while it runs: kill bkrun then, as an OOM killer would.
    let marked = wait_until(std::time::Duration::from_secs(120), || {
        std::fs::read_dir(&keep).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".cache-mounts-save.bkrun-")
            })
        })
    });
    assert!(marked, "the second run's save never started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // Its daemon dies with it (parent-death signal); the next run sweeps what it left.
    assert!(wait_until(std::time::Duration::from_secs(20), || sb
        .live_processes()
        .is_empty()));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = run_ok(&mut build(&sb, &ctx, "state3", 3, k, &sb.path("out3")));
    let err = stderr(&out);
    assert!(err.contains("was interrupted"), "{err}");
    assert_eq!(read(sb.path("out3/seen")), "run 1\nrun 3\n", "{err}");
    sb.assert_clean();
}

#[test]
fn the_size_cap_refuses_a_big_mount_in_one_line_and_keeps_its_last_save() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context(
        "ctx",
        "ARG RUN\nRUN --mount=type=cache,target=/cache echo \"run $RUN\" >> /cache/lines && cp /cache/lines /seen && if [ $RUN = 2 ]; then head -c 300000 /dev/zero > /cache/pad; fi\n",
    );
    let keep = sb.path("keep");
    let k = keep.to_str().unwrap();
    let cap = |c: &mut Command| {
        c.arg("--cache-mounts-max-size=100k");
    };
    let mut first = build(&sb, &ctx, "state1", 1, k, &sb.path("out1"));
    cap(&mut first);
    run_ok(&mut first);
    let mut second = build(&sb, &ctx, "state2", 2, k, &sb.path("out2"));
    cap(&mut second);
    let err = stderr(&run_ok(&mut second));
    let refusal: Vec<&str> = err.lines().filter(|l| l.contains("over the cap")).collect();
    assert_eq!(refusal.len(), 1, "{err}");
    assert!(
        refusal[0].contains("--cache-mounts-max-size")
            && refusal[0].contains("its last save stays"),
        "{err}"
    );
    let mut third = build(&sb, &ctx, "state3", 3, k, &sb.path("out3"));
    cap(&mut third);
    run_ok(&mut third);
    assert_eq!(read(sb.path("out3/seen")), "run 1\nrun 3\n");
    sb.assert_clean();
}

#[test]
fn a_dockerfile_without_cache_mounts_pays_nothing_and_from_mounts_are_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let keep = sb.path("keep");
    let k = keep.to_str().unwrap();
    let plain = sb.shell_context("plain", "RUN echo hi > /hi\n");
    let out = run_ok(&mut build(&sb, &plain, "state1", 1, k, &sb.path("out1")));
    let err = stderr(&out);
    // No step of bkrun's own, no gateway, no save: the directory is not even made.
    assert!(!err.contains("[bkrun]"), "{err}");
    assert!(!cache_line(&err).contains("cache mounts"), "{err}");
    assert!(!keep.exists());
    let from = sb.shell_context(
        "from",
        "RUN --mount=type=cache,target=/c,from=busybox,source=/ ls /c > /ls\n",
    );
    let err = stderr(&run_ok(&mut build(
        &sb,
        &from,
        "state2",
        1,
        k,
        &sb.path("out2"),
    )));
    assert!(
        err.contains("the cache mount at /c is not kept between runs"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
fn cache_mounts_outlive_the_daemon_with_the_containerd_worker() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctr = common::containerd::Containerd::start(&sb.mkdir("containerd"));
    let keep = sb.path("keep");
    let socket = ctr.socket.clone();
    three_runs(&sb, keep.to_str().unwrap(), &|state| {
        let mut c = sb.bkrun_root(state);
        c.args(["--worker", "containerd", "--containerd-address"])
            .arg(&socket);
        c
    });
    ctr.assert_no_build_left("buildkit");
    ctr.stop();
    sb.assert_clean();
}
