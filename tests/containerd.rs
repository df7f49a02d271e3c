//! `--worker containerd` against a real containerd the test starts on its own socket and root: the built image lands in containerd's namespace with the digest bkrun reports, a second build reuses the first's layers, and nothing of either is left.

mod common;

use std::fs;
use std::path::Path;

use common::containerd::Containerd;
use common::*;

fn image_digest(md: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(md).unwrap()).unwrap();
    v["containerimage.digest"].as_str().unwrap().to_string()
}

#[test]
fn containerd_worker_builds_into_containerds_image_store_and_reuses_its_layers() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctr = Containerd::start(&sb.mkdir("containerd"));
    let ctx = sb.shell_context("ctx", "RUN echo built-by-containerd > /hello\n");
    let build = |md: &str| {
        let mut c = sb.build_from(ctr.bkrun_in(&sb), &ctx);
        c.arg("--output=type=image,name=example.test/bkrun/hello:1,unpack=true")
            .arg(format!("--metadata-file={}", sb.path(md).display()));
        c
    };
    let first = run_ok(&mut build("md1.json"));
    let digest = image_digest(&sb.path("md1.json"));
    let said = format!(
        "bkrun: image example.test/bkrun/hello:1 ({digest}) is in containerd's image store at {}, namespace buildkit, unpacked for its snapshotter; not pushed",
        ctr.socket.display()
    );
    assert!(stderr(&first).contains(&said), "{}", show(&first));
    let check = ctr.ctr(&["-n", "buildkit", "images", "check"]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check
            .lines()
            .any(|l| l.starts_with("example.test/bkrun/hello:1 ") && l.trim_end().ends_with("true")),
        "the image is not unpacked:\n{check}"
    );
    let images = ctr.ctr(&["-n", "buildkit", "images", "ls"]);
    let listing = String::from_utf8_lossy(&images.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("example.test/bkrun/hello:1 ") && l.contains(&digest)),
        "the image is not in containerd with digest {digest}:\n{listing}\n{}",
        show(&first)
    );
    // Before the next daemon's start-up sweep hides them: the first build's leases are gone.
    ctr.assert_no_build_left("buildkit");
    let second = run_ok(&mut build("md2.json"));
    let err = stderr(&second);
    assert_eq!(image_digest(&sb.path("md2.json")), digest, "{err}");
    assert!(
        err.lines().any(|l| l.ends_with(" CACHED")),
        "the second build reuses the first's layers:\n{err}"
    );
    ctr.assert_no_build_left("buildkit");
    // The cache is leases in containerd's namespace; pruning it through bkrun leaves none.
    run_ok(ctr.bkrun_in(&sb).args(["prune", "--all"]));
    let leases = ctr.ctr(&["-n", "buildkit", "leases", "ls", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&leases.stdout).trim(),
        "",
        "leases left after prune --all"
    );
    ctr.stop();
    sb.assert_clean();
}

/// What buildkitd hands containerd by path (a secret's tmpfs, a part of the context bound with
/// `source=`, which buildkitd itself mounts in its temp dir) reaches RUN steps that containerd
/// starts: the shared directory, here the sandbox's state dir, is the same path for both.
#[test]
fn secrets_and_the_context_reach_run_steps_through_containerd() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctr = Containerd::start(&sb.mkdir("containerd"));
    let ctx = sb.shell_context(
        "ctx",
        "RUN --mount=type=secret,id=tok [ \"$(cat /run/secrets/tok)\" = s3cr3t ] && echo secret-ok > /secret\nRUN --mount=type=bind,source=data,target=/d cat /d/note > /from-context\n",
    );
    sb.write("ctx/data/note", "from the context\n");
    let tok = sb.write("tok", "s3cr3t");
    let out = sb.path("out");
    run_ok(
        sb.build_from(ctr.bkrun_in(&sb), &ctx)
            .arg(format!("--secret=id=tok,src={}", tok.display()))
            .arg(format!("--output=type=local,dest={}", out.display())),
    );
    assert_eq!(
        fs::read_to_string(out.join("secret")).unwrap(),
        "secret-ok\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("from-context")).unwrap(),
        "from the context\n"
    );
    ctr.assert_no_build_left("buildkit");
    ctr.stop();
    sb.assert_clean();
}

/// A socket nobody serves is refused before any daemon starts, naming what to mount.
#[test]
fn a_missing_containerd_is_explained_before_anything_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let t = std::time::Instant::now();
    let out = run_fails(
        sb.bkrun()
            .args(["--worker", "containerd", "--containerd-address"])
            .arg(sb.path("nothing.sock"))
            .args(["build", "--frontend", "dockerfile.v0"]),
    );
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "bkrun: containerd does not answer at {}: mount the node's containerd socket",
            sb.path("nothing.sock").display()
        )),
        "{err}"
    );
    sb.assert_no_daemon_started(t);
    sb.assert_clean();
}
