//! `--worker containerd` against a real containerd the test starts on its own socket and root: the built image lands in containerd's namespace with the digest bkrun reports, a second build reuses the first's layers, and nothing of either is left.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A private containerd: its root, state and sockets in the sandbox.
struct Containerd {
    child: Child,
    socket: PathBuf,
    /// containerd's shims keep their sockets and FIFOs in /run/containerd whatever the config
    /// says; made by this test, it is removed after it.
    made_run_dir: bool,
}

const RUN_DIR: &str = "/run/containerd";

impl Containerd {
    fn start(sb: &Sandbox) -> Containerd {
        let dir = sb.mkdir("containerd");
        let socket = dir.join("containerd.sock");
        // CRI is off (no Kubernetes here); the opt plugin's path is set, or containerd 1.6
        // creates /opt/containerd.
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display(),
            s = socket.display()
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let made_run_dir = !Path::new(RUN_DIR).exists();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            child,
            socket,
            made_run_dir,
        };
        let up = wait_until(Duration::from_secs(30), || {
            c.ctr(&["version"]).status.success()
        });
        assert!(
            up,
            "containerd did not start: {}",
            fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// bkrun with the containerd worker on this containerd.
    fn bkrun(&self, sb: &Sandbox) -> Command {
        let mut c = sb.bkrun();
        c.args(["--worker", "containerd", "--containerd-address"])
            .arg(&self.socket);
        c
    }

    /// No task, container or temporary lease of a build is left in containerd.
    fn assert_no_build_left(&self) {
        for what in ["tasks", "containers"] {
            let out = self.ctr(&["-n", "buildkit", what, "ls", "-q"]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "",
                "{what} left in containerd"
            );
        }
        let leases = self.ctr(&["-n", "buildkit", "leases", "ls"]);
        let leases = String::from_utf8_lossy(&leases.stdout).into_owned();
        assert!(
            !leases.contains("buildkit/lease.temporary"),
            "a build's temporary lease is left:\n{leases}"
        );
    }

    /// Stops containerd (SIGTERM, then its exit).
    fn stop(mut self) {
        let _ = stop_with_sigterm(&mut self.child);
        if self.made_run_dir {
            let _ = fs::remove_dir_all(RUN_DIR);
        }
    }
}

fn image_digest(md: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(md).unwrap()).unwrap();
    v["containerimage.digest"].as_str().unwrap().to_string()
}

#[test]
fn containerd_worker_builds_into_containerds_image_store_and_reuses_its_layers() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctr = Containerd::start(&sb);
    let ctx = sb.shell_context("ctx", "RUN echo built-by-containerd > /hello\n");
    let build = |md: &str| {
        let mut c = sb.build_from(ctr.bkrun(&sb), &ctx);
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
    let second = run_ok(&mut build("md2.json"));
    let err = stderr(&second);
    assert_eq!(image_digest(&sb.path("md2.json")), digest, "{err}");
    assert!(
        err.lines().any(|l| l.ends_with(" CACHED")),
        "the second build reuses the first's layers:\n{err}"
    );
    ctr.assert_no_build_left();
    // The cache is leases in containerd's namespace; pruning it through bkrun leaves none.
    run_ok(ctr.bkrun(&sb).args(["prune", "--all"]));
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
    let ctr = Containerd::start(&sb);
    let ctx = sb.shell_context(
        "ctx",
        "RUN --mount=type=secret,id=tok [ \"$(cat /run/secrets/tok)\" = s3cr3t ] && echo secret-ok > /secret\nRUN --mount=type=bind,source=data,target=/d cat /d/note > /from-context\n",
    );
    sb.write("ctx/data/note", "from the context\n");
    let tok = sb.write("tok", "s3cr3t");
    let out = sb.path("out");
    run_ok(
        sb.build_from(ctr.bkrun(&sb), &ctx)
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
    ctr.assert_no_build_left();
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
