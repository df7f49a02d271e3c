//! bkrun inside real containers under the security settings Kubernetes gives pods: each test is one pod configuration run with podman on the rootfs scripts/rootfs builds; each also writes its results to target/pod-report/<config>.tsv.

mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::podman::{podman, podman_ok};
use common::wait_until;

/// BuildKit's rootless image's ENV lines (moby/buildkit's Dockerfile, stage `rootless`). Every
/// configuration gets them, the root ones too: a pod cannot unset an image's variable, and bkrun
/// must start its own daemon with BUILDKIT_HOST pointing where no daemon runs.
const IMAGE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/home/user"),
    ("USER", "user"),
    ("XDG_RUNTIME_DIR", "/run/user/1000"),
    ("TMPDIR", "/home/user/.local/tmp"),
    (
        "BUILDKIT_HOST",
        "unix:///run/user/1000/buildkit/buildkitd.sock",
    ),
];

/// The seed guide's pipeline command for its privileged and rootless cases, run through sh as
/// its pipeline step does (the pod sets BUILDKITD_FLAGS="").
const GUIDE: &str = "buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --opt filename=Dockerfile \\
  --progress=plain
";

/// The guide's strict case: the same command with the daemon flag set on its command line.
const GUIDE_STRICT: &str = "BUILDKITD_FLAGS=\"--oci-worker-no-process-sandbox\" \\
buildctl-daemonless.sh build \\
  --frontend dockerfile.v0 \\
  --local context=. \\
  --local dockerfile=. \\
  --opt filename=Dockerfile \\
  --progress=plain
";

/// Needs no registry: the context brings the static busybox, and the RUN step proves the daemon
/// can run a process, which is what the modes differ in.
const HELLO_DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo hello > /hello\"]\n";

/// Numbers the pods of this test process.
static NEXT_POD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// SIGKILL of bkrun mid-RUN, then a second build (tests/pod/sigkill.sh).
const SIGKILL_SH: &str = include_str!("pod/sigkill.sh");

/// Lists what a command left in its container (tests/pod/leftovers.sh).
const LEFTOVERS_SH: &str = include_str!("pod/leftovers.sh");

/// What another uid of the pod plants in /tmp (tests/pod/hostile-plant.sh), and root's runs
/// beside it (tests/pod/hostile.sh).
const HOSTILE_PLANT_SH: &str = include_str!("pod/hostile-plant.sh");
const HOSTILE_SH: &str = include_str!("pod/hostile.sh");

/// What a configuration must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Builds, and the start-up line names this mode.
    Builds(&'static str),
    /// Exits 1 before any daemon starts; the first stderr line names this pod-spec change.
    Refused(&'static str),
}

/// One pod configuration: who the container runs as and its securityContext, as podman flags.
struct Config {
    name: &'static str,
    uid: u32,
    gid: u32,
    /// A `hostUsers: false` pod: podman's `--userns=auto` with 65536 ids, as Kubernetes gives.
    userns: bool,
    /// Only the build and doctor, not the guide's command, SIGKILL and hostile neighbours:
    /// configurations whose point is the mode verdict.
    light: bool,
    security: Vec<String>,
    /// Files bind-mounted read-only over the image's (content, container path): the changes
    /// doctor names, applied as a user would in their image.
    files: Vec<(String, &'static str)>,
    /// podman's --network: none, as the pods need no network; host, to reach a daemon the test
    /// runs on this machine's loopback.
    network: &'static str,
    /// BUILDKITD_FLAGS in the pod's env; the guide sets it to "" in its privileged and rootless pods.
    buildkitd_flags: Option<&'static str>,
    guide: &'static str,
    expect: Expect,
}

fn config(name: &'static str) -> Config {
    let unconfined = || vec!["--security-opt".into(), "seccomp=unconfined".into()];
    let (uid, security, buildkitd_flags, guide, expect): (u32, Vec<String>, _, _, _) = match name {
        "privileged" => (
            0,
            vec!["--privileged".into()],
            Some(""),
            GUIDE,
            Expect::Builds("privileged"),
        ),
        // No seccompProfile in the pod is Unconfined on most clusters; /proc is masked (procMount
        // Default), so the process sandbox cannot mount a fresh /proc.
        "rootless" => (
            1000,
            unconfined(),
            Some(""),
            GUIDE,
            Expect::Builds("rootless-strict"),
        ),
        "strict" => (
            1000,
            unconfined(),
            Some("--oci-worker-no-process-sandbox"),
            GUIDE_STRICT,
            Expect::Builds("rootless-strict"),
        ),
        // procMount: Unmasked.
        "unmasked" => (
            1000,
            [
                unconfined(),
                vec!["--security-opt".into(), "unmask=ALL".into()],
            ]
            .concat(),
            Some(""),
            GUIDE,
            Expect::Builds("rootless"),
        ),
        // seccompProfile: RuntimeDefault; podman's own default profile allows unshare, so the
        // test brings one that refuses what containerd's refuses without CAP_SYS_ADMIN.
        "runtime-default" => (
            1000,
            vec![
                "--security-opt".into(),
                format!("seccomp={}", data("seccomp-runtime-default.json").display()),
            ],
            Some(""),
            GUIDE,
            Expect::Refused("seccompProfile: {type: Unconfined}"),
        ),
        // allowPrivilegeEscalation: false sets no_new_privs, which voids newuidmap's file capabilities.
        "no-new-privs" => (
            1000,
            [
                unconfined(),
                vec!["--security-opt".into(), "no-new-privileges".into()],
            ]
            .concat(),
            Some(""),
            GUIDE,
            Expect::Refused("allowPrivilegeEscalation"),
        ),
        // runAsUser: 0 without privileged: no CAP_SYS_ADMIN, and the image has no subordinate
        // ids for root, so rootlesskit cannot map a user namespace either.
        "root-unprivileged" => (
            0,
            unconfined(),
            Some(""),
            GUIDE,
            Expect::Refused("privileged: true"),
        ),
        // An image with Debian's setuid newuidmap/newgidmap instead of file capabilities: writing a
        // uid_map for a namespace another uid owns needs CAP_SYS_ADMIN, which the pod lacks.
        "setuid-newuidmap" => {
            let mut flags = unconfined();
            for tool in ["newuidmap", "newgidmap"] {
                let host = format!("/usr/bin/{tool}");
                let mode = fs::metadata(&host)
                    .unwrap_or_else(|e| panic!("{host}: {e}: run scripts/setup"))
                    .permissions()
                    .mode();
                assert!(
                    mode & 0o4000 != 0,
                    "{host} is not setuid: Debian's uidmap package makes it so"
                );
                flags.extend(["--volume".into(), format!("{host}:{host}:ro")]);
            }
            (1000, flags, Some(""), GUIDE, Expect::Refused("newuidmap"))
        }
        // The restricted Pod Security Standard: runAsNonRoot, allowPrivilegeEscalation: false,
        // capabilities drop ALL, seccompProfile RuntimeDefault. No daemon mode can work.
        "restricted" => (
            1000,
            vec![
                "--security-opt".into(),
                format!("seccomp={}", data("seccomp-runtime-default.json").display()),
                "--security-opt".into(),
                "no-new-privileges".into(),
                "--cap-drop=ALL".into(),
            ],
            Some(""),
            GUIDE,
            Expect::Refused("no daemon mode can work here"),
        ),
        // hostUsers: false as uid 1000 of the image: the pod's namespace maps 65536 ids, the
        // image's subordinate range 100000-165535 lies outside them.
        "userns-user" => (
            1000,
            [unconfined(), vec![USERNS.into()]].concat(),
            Some(""),
            GUIDE,
            Expect::Refused("100000-165535 (/etc/subuid) lie outside the ids this user namespace maps (65536 ids: 0-65535"),
        ),
        // hostUsers: false as root with privileged: true (images/userns.yaml).
        "userns-root" => (
            0,
            vec!["--privileged".into(), USERNS.into()],
            Some(""),
            GUIDE,
            Expect::Builds("privileged"),
        ),
        // OpenShift's restricted SCC: an arbitrary uid in group 0 without a passwd entry, every
        // capability dropped, allowPrivilegeEscalation: false, RuntimeDefault seccomp.
        "restricted-scc" => (
            RESTRICTED_UID,
            vec![
                // podman writes a passwd entry for a --user it does not find; the kubelet does not.
                "--passwd=false".into(),
                "--cap-drop=ALL".into(),
                "--security-opt".into(),
                "no-new-privileges".into(),
                "--security-opt".into(),
                format!("seccomp={}", data("seccomp-runtime-default.json").display()),
            ],
            Some(""),
            GUIDE,
            Expect::Refused("allowPrivilegeEscalation"),
        ),
        // hostUsers: false as uid 1000 with a subordinate range inside the pod's 65536 ids: the
        // image change that makes rootless work there (unsafe on a node without user namespaces,
        // where 1001-65535 are the node's own ids, so bkrun's images do not ship it).
        "userns-user-inner-range" => (
            1000,
            [unconfined(), vec![USERNS.into()]].concat(),
            Some(""),
            GUIDE,
            Expect::Builds("rootless-strict"),
        ),
        // The arbitrary uid of restricted-scc under an SCC that allows what doctor names
        // (Unconfined seccomp, privilege escalation), with the image change it names: a passwd
        // entry (HOME=/, as OpenShift's) and a subordinate range for it.
        "arbitrary-uid" => (
            RESTRICTED_UID,
            [unconfined(), vec!["--passwd=false".into()]].concat(),
            Some(""),
            GUIDE,
            Expect::Builds("rootless-strict"),
        ),
        _ => unreachable!("no pod configuration {name}"),
    };
    let files = match name {
        "userns-user-inner-range" => ["/etc/subuid", "/etc/subgid"]
            .map(|f| ("user:1001:64535\n".to_string(), f))
            .to_vec(),
        "arbitrary-uid" => {
            let image = |f: &str| fs::read_to_string(rootfs().join(f)).unwrap();
            let subids = "builder:200000:65536\n";
            vec![
                (
                    format!(
                        "{}builder:x:{RESTRICTED_UID}:0:builder:/:/usr/sbin/nologin\n",
                        image("etc/passwd")
                    ),
                    "/etc/passwd",
                ),
                (format!("{}{subids}", image("etc/subuid")), "/etc/subuid"),
                (format!("{}{subids}", image("etc/subgid")), "/etc/subgid"),
            ]
        }
        _ => Vec::new(),
    };
    Config {
        name,
        uid,
        gid: if uid == RESTRICTED_UID { 0 } else { uid },
        userns: security.iter().any(|f| f == USERNS),
        light: matches!(
            name,
            "userns-user"
                | "userns-root"
                | "restricted-scc"
                | "userns-user-inner-range"
                | "arbitrary-uid"
        ),
        security,
        files,
        network: "none",
        buildkitd_flags,
        guide,
        expect,
    }
}

/// podman's stand-in for `hostUsers: false`: a user namespace of 65536 ids of its own.
const USERNS: &str = "--userns=auto:size=65536";

/// An arbitrary uid as OpenShift's restricted SCC assigns (the rootfs has no entry for it).
const RESTRICTED_UID: u32 = 1000680000;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pod")
        .join(file)
}

/// The rootfs scripts/rootfs built (scripts/test passes its path).
fn rootfs() -> PathBuf {
    let dir = std::env::var_os("BKRUN_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/bkrun-test/rootfs"));
    assert!(
        dir.join(".bkrun-rootfs-complete").exists(),
        "no pod rootfs at {}: run scripts/rootfs (scripts/test does)",
        dir.display()
    );
    dir
}

/// The rootfs as an image in podman's store, imported once per recipe: podman 4.3 runs a
/// `--rootfs` directory in no user namespace of its own (runc finds no id mappings), while an
/// image's layers it gives any namespace through idmapped mounts.
fn rootfs_image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = rootfs();
        let target = fs::read_link(&dir).unwrap_or_else(|_| dir.clone());
        let recipe = target.file_name().unwrap().to_string_lossy().into_owned();
        let name = format!("localhost/bkrun-test-{recipe}:latest");
        let exists = podman()
            .args(["image", "exists", &name])
            .status()
            .unwrap()
            .success();
        if !exists {
            // tar keeps newuidmap's file capabilities (security.capability), as an image layer does.
            let script = format!(
                "tar -C {} --xattrs --xattrs-include=security.capability -c . | podman import --quiet - {name}",
                dir.display()
            );
            let mut sh = std::process::Command::new("sh");
            sh.env("CONTAINERS_CONF", common::podman::containers_conf());
            let out = sh.args(["-c", &script]).output().unwrap();
            assert!(
                out.status.success(),
                "importing the rootfs as {name} failed\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        name
    })
}

/// A program on this machine's PATH (buildkitd and buildctl as scripts/setup installed them).
fn host_program(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: run scripts/setup"))
}

/// One finished command: how it ended and what it printed.
struct Ran {
    code: i32,
    secs: f64,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The mode from bkrun's start-up line, `bkrun: starting buildkitd v…, MODE (WHY)`.
    fn mode(&self) -> Option<String> {
        let line = self.startup_line()?;
        let after = line.split_once(", ")?.1;
        Some(after.split(" (").next().unwrap_or(after).trim().to_string())
    }

    fn startup_line(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find(|l| l.starts_with("bkrun: starting buildkitd "))
    }

    /// The first line bkrun printed of its own other than the start-up line.
    fn first_error(&self) -> Option<&str> {
        self.stderr.lines().find(|l| {
            l.starts_with("bkrun: ")
                    && !l.starts_with("bkrun: starting buildkitd ")
                    // What the run found and fixed: said, but not an error.
                    && !l.starts_with("bkrun: removed ")
                    && !l.starts_with("bkrun: the last run on ")
                    && !l.contains("cannot create the state dir")
                    && !l.starts_with("bkrun: cache: ")
        })
    }

    /// The start-up line comes before the first progress line, so a CI log shows it first.
    fn startup_before_progress(&self) -> bool {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let startup = lines
            .iter()
            .position(|l| l.starts_with("bkrun: starting buildkitd "));
        let progress = lines.iter().position(|l| l.starts_with('#'));
        match (startup, progress) {
            (Some(s), Some(p)) => s < p,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn show(&self) -> String {
        format!(
            "exit {} after {:.2}s\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.secs, self.stdout, self.stderr
        )
    }
}

/// A running container standing in for the pod; removed when dropped, even by a panic.
struct Pod {
    name: String,
    /// The host side of its volumes: workspace/, cache/ and tmp/ (the emptyDirs).
    dir: tempfile::TempDir,
}

impl Pod {
    /// Starts `command` as the container's PID 1 in configuration `cfg`, with the image's
    /// environment, the cache and /tmp as emptyDirs, and a workspace holding `dockerfile` and
    /// busybox. `extra_volumes` are more (host dir name under the pod's dir, container path).
    fn start(
        cfg: &Config,
        dockerfile: &str,
        extra_volumes: &[(&str, &str)],
        command: &[&str],
    ) -> Pod {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bkrun-pod-{}-", cfg.name))
            .tempdir()
            .unwrap();
        let pod = Pod {
            // Unique within the run too: two tests may use one configuration at once.
            name: format!(
                "bkrun-pod-{}-{}-{}",
                cfg.name,
                std::process::id(),
                NEXT_POD.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            dir,
        };
        // A leftover of an earlier run of this same process id would make `podman run` fail.
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &pod.name])
            .output();
        let workspace = pod.host("workspace");
        fs::create_dir(&workspace).unwrap();
        fs::write(workspace.join("Dockerfile"), dockerfile).unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("static busybox missing: run scripts/setup");
        fs::copy(busybox, workspace.join("busybox")).unwrap();
        // emptyDirs: the cache belongs to the pod's user (as the image's VOLUME does for uid
        // 1000, and fsGroup would); the others are world-writable, as the kubelet makes them.
        let cache = if cfg.uid == 0 {
            "/var/lib/buildkit"
        } else {
            "/home/user/.local/share/buildkit"
        };
        let mut volumes = vec![
            ("workspace", "/workspace"),
            ("cache", cache),
            ("tmp", "/tmp"),
        ];
        volumes.extend_from_slice(extra_volumes);
        for (host, _) in &volumes[1..] {
            fs::create_dir_all(pod.host(host)).unwrap();
        }
        for (host, _) in &volumes {
            chown_tree(&pod.host(host), cfg.uid);
        }
        for (host, _) in &volumes[2..] {
            fs::set_permissions(pod.host(host), fs::Permissions::from_mode(0o1777)).unwrap();
        }

        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            pod.name.clone(),
            "--user".into(),
            format!("{}:{}", cfg.uid, cfg.gid),
            "--network".into(),
            cfg.network.into(),
            "--workdir".into(),
            "/workspace".into(),
        ];
        args.extend(cfg.security.iter().cloned());
        let flags_env = cfg.buildkitd_flags.map(|f| ("BUILDKITD_FLAGS", f));
        for (k, v) in IMAGE_ENV.iter().copied().chain(flags_env) {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        // The fresh bkrun and the pinned BuildKit are mounted, not baked in, so the rootfs only
        // changes with its package list.
        // BKRUN_TEST_BIN, as for the sandboxes (tests/common), runs the pods on another build.
        let bkrun = std::env::var_os("BKRUN_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bkrun")));
        let binaries = [
            (bkrun, "/usr/bin/bkrun"),
            (host_program("buildkitd"), "/usr/bin/buildkitd"),
            (host_program("buildctl"), "/usr/bin/buildctl"),
        ];
        for (host, inside) in &binaries {
            args.extend(["--volume".into(), format!("{}:{inside}:ro", host.display())]);
        }
        for (i, (content, inside)) in cfg.files.iter().enumerate() {
            let host = pod.host(&format!("file-{i}"));
            fs::write(&host, content).unwrap();
            fs::set_permissions(&host, fs::Permissions::from_mode(0o644)).unwrap();
            args.extend(["--volume".into(), format!("{}:{inside}:ro", host.display())]);
        }
        // In its own user namespace the container sees the host's owners as nobody: podman's
        // U option gives the volumes to the container's user instead, as the kubelet does.
        let owned = if cfg.userns { ":U" } else { "" };
        for (host, inside) in &volumes {
            args.extend([
                "--volume".into(),
                format!("{}:{inside}{owned}", pod.host(host).display()),
            ]);
        }
        if cfg.userns {
            args.push(rootfs_image().to_string());
        } else {
            // `:O` gives this container an overlay of its own over the shared read-only rootfs.
            args.extend(["--rootfs".into(), format!("{}:O", rootfs().display())]);
        }
        args.extend(command.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        pod
    }

    fn host(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `podman exec` in /tmp as `user` (UID:GID), with the container's environment.
    fn exec_as(&self, user: &str, args: &[&str]) -> Ran {
        self.exec_with(&["--user", user, "--workdir", "/tmp"], args)
    }

    /// `podman exec` in the workspace, as the container's user and with its environment.
    fn exec(&self, args: &[&str]) -> Ran {
        self.exec_with(&["--workdir", "/workspace"], args)
    }

    /// `podman exec` with `options` before the container's name, timed.
    fn exec_with(&self, options: &[&str], args: &[&str]) -> Ran {
        let start = Instant::now();
        let out = podman()
            .arg("exec")
            .args(options)
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            secs: start.elapsed().as_secs_f64(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// What `ran` left in the container. A daemon log bkrun kept (in its private dir) and named
    /// on stderr is by design, not a leftover; it is removed so the next command starts clean.
    fn leftovers(&self, ran: &Ran) -> Vec<String> {
        let check = self.exec(&["sh", "-c", LEFTOVERS_SH]);
        assert_eq!(check.code, 0, "the leftover check failed: {}", check.show());
        let mut left = Vec::new();
        for line in check.stdout.lines() {
            match line.strip_prefix("temp ") {
                // A private bkrun-log-* dir holding buildkitd.log.
                Some(path) if path.contains("/bkrun-log-") && ran.stderr.contains(path) => {
                    self.exec(&["rm", "-rf", path]);
                }
                _ => left.push(line.to_string()),
            }
        }
        left
    }

    /// Removes the container and checks podman no longer lists it.
    fn remove(self) -> Result<(), String> {
        let name = self.name.clone();
        drop(self);
        let listed = || {
            let out = podman_ok(&["ps", "--all", "--format", "{{.Names}}"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == name)
        };
        // podman 4.3 now and then fails a forced removal while the container's processes are
        // still being torn down (seen once in about 20 runs after the SIGKILL step); the second
        // try finds them gone. Its error is kept for the report should every try fail.
        let mut last = String::new();
        for _ in 0..5 {
            if !listed() {
                return Ok(());
            }
            let out = podman()
                .args(["rm", "--force", "--time", "0", &name])
                .output()
                .unwrap();
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("podman ps --all still lists {name}: {last}"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

fn chown_tree(p: &Path, uid: u32) {
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(uid));
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
    let _ = chown(p, Some(uid), Some(uid));
}

/// The rows of one configuration's table and what went wrong, asserted only once the table is written.
struct Report {
    config: &'static str,
    rows: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn new(config: &'static str) -> Report {
        Report {
            config,
            rows: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn row(&mut self, command: &str, ran: &Ran, left: &[String]) {
        let cell = |s: Option<&str>| s.unwrap_or("-").replace('\t', " ");
        self.rows.push(format!(
            "{}\t{command}\t{}\t{:.2}\t{}\t{}\t{}",
            self.config,
            ran.code,
            ran.secs,
            cell(ran.mode().as_deref()),
            cell(ran.first_error()),
            if left.is_empty() {
                "-".to_string()
            } else {
                left.join("; ")
            },
        ));
        if !left.is_empty() {
            self.problems
                .push(format!("{command} left behind:\n  {}", left.join("\n  ")));
        }
    }

    fn check(&mut self, ok: bool, command: &str, what: &str, ran: &Ran) {
        if !ok {
            self.problems
                .push(format!("{command}: {what}\n{}", ran.show()));
        }
    }

    /// A build (the guide's or bkrun's) ended as the configuration expects.
    fn build_outcome(&mut self, command: &str, expect: Expect, ran: &Ran) {
        match expect {
            Expect::Builds(mode) => {
                self.check(ran.code == 0, command, "expected exit 0", ran);
                self.check(
                    ran.mode().as_deref() == Some(mode),
                    command,
                    &format!("expected the start-up line to name mode {mode}"),
                    ran,
                );
                self.check(
                    ran.startup_before_progress(),
                    command,
                    "expected the start-up line before the progress output",
                    ran,
                );
            }
            Expect::Refused(field) => {
                self.check(ran.code == 1, command, "expected exit 1", ran);
                let first = ran.stderr.lines().next().unwrap_or("");
                self.check(
                    first.starts_with("bkrun: ") && first.contains(field),
                    command,
                    &format!("expected the first stderr line to be bkrun's, naming `{field}`"),
                    ran,
                );
                self.check(
                    ran.startup_line().is_none(),
                    command,
                    "expected no daemon to start",
                    ran,
                );
            }
        }
    }

    /// Writes target/pod-report/<config>.tsv, then fails the test with every problem found.
    fn finish(self) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("pod-report");
        fs::create_dir_all(&dir).unwrap();
        let mut text =
            String::from("config\tcommand\texit\tseconds\tmode\tfirst bkrun error\tleft behind\n");
        for r in &self.rows {
            text.push_str(r);
            text.push('\n');
        }
        fs::write(dir.join(format!("{}.tsv", self.config)), &text).unwrap();
        assert!(
            self.problems.is_empty(),
            "pod configuration {}:\n{text}\n{}",
            self.config,
            self.problems.join("\n\n")
        );
    }
}

/// `bkrun build` of the workspace's Dockerfile, as the guide's pods run it.
const BUILD: &[&str] = &[
    "bkrun",
    "build",
    "--frontend",
    "dockerfile.v0",
    "--local",
    "context=.",
    "--local",
    "dockerfile=.",
];

/// The guide's command, `bkrun build` with a local output, and `bkrun doctor` in both formats,
/// each checked for its outcome and for what it left in the pod.
fn run_configuration(name: &'static str) {
    let cfg = config(name);
    let pod = Pod::start(&cfg, HELLO_DOCKERFILE, &[], &["sleep", "infinity"]);
    let mut report = Report::new(cfg.name);

    if !cfg.light {
        let ran = pod.exec(&["sh", "-c", cfg.guide]);
        let left = pod.leftovers(&ran);
        report.row("guide", &ran, &left);
        report.build_outcome("guide", cfg.expect, &ran);
    }

    let ran = pod.exec(&[BUILD, &["--output", "type=local,dest=/tmp/out"]].concat());
    let left = pod.leftovers(&ran);
    report.row("build", &ran, &left);
    report.build_outcome("build", cfg.expect, &ran);
    if let Expect::Builds(_) = cfg.expect {
        let hello = fs::read_to_string(pod.host("tmp/out/hello")).unwrap_or_default();
        report.check(
            hello == "hello\n",
            "build",
            "expected /tmp/out/hello to say hello",
            &ran,
        );
    }

    // Asked for, rootless mode is refused by the namespace probe that runs once rootlesskit's
    // start has failed (Plan::start_proves_namespaces, Plan::confirm): the same refusal, before
    // any start-up line (which waits for the start), nothing left running.
    if cfg.name == "runtime-default" {
        let ran = pod.exec(&[&BUILD[..1], &["--mode", "rootless"], &BUILD[1..]].concat());
        let left = pod.leftovers(&ran);
        report.row("build --mode rootless", &ran, &left);
        report.build_outcome("build --mode rootless", cfg.expect, &ran);
        report.check(
            ran.stderr
                .starts_with("bkrun: --mode rootless cannot work here: creating a user namespace"),
            "build --mode rootless",
            "expected the mode's refusal, from the probe",
            &ran,
        );
    }

    let ran = pod.exec(&["bkrun", "doctor"]);
    let left = pod.leftovers(&ran);
    report.row("doctor", &ran, &left);
    doctor_outcome(&mut report, "doctor", cfg.expect, &ran);
    if let Expect::Refused(field) = cfg.expect {
        report.check(
            ran.stdout.contains(field) || ran.stderr.contains(field),
            "doctor",
            &format!("expected the report to name `{field}`"),
            &ran,
        );
    }

    let ran = pod.exec(&["bkrun", "doctor", "--format", "json"]);
    let left = pod.leftovers(&ran);
    report.row("doctor --format json", &ran, &left);
    doctor_outcome(&mut report, "doctor --format json", cfg.expect, &ran);
    if let Err(e) = check_doctor_json(&ran.stdout, cfg.expect) {
        report.check(false, "doctor --format json", &e, &ran);
    }
    if cfg.name == "restricted-scc" {
        if let Err(e) = every_blocker_listed(&ran.stdout) {
            report.check(false, "doctor --format json", &e, &ran);
        }
    }
    if cfg.light {
        if let Err(e) = pod.remove() {
            report.problems.push(e);
        }
        report.finish();
        return;
    }

    // The containerd worker needs the state dir at its node path: the pod's cache volume (a
    // bind of a test dir, as an emptyDir is) is refused before anything starts.
    if let Expect::Builds("privileged") = cfg.expect {
        let ran = pod.exec(&[BUILD, &["--worker", "containerd"]].concat());
        let left = pod.leftovers(&ran);
        report.row("build --worker containerd", &ran, &left);
        report.check(
            ran.code != 0
                && ran.stderr.contains("/var/lib/buildkit is mounted from ")
                && ran
                    .stderr
                    .contains("hostPath.path is /var/lib/buildkit too"),
            "build --worker containerd",
            "expected the refusal to name the hostPath rule",
            &ran,
        );
    }

    // Root in the pod, against what any other uid of the pod can plant in the shared /tmp.
    if cfg.uid == 0 {
        if let Expect::Builds(_) = cfg.expect {
            hostile_user(&pod, &mut report);
        }
    }

    // Last: what a SIGKILL leaves re-parented to the pod's PID 1 stays a zombie (see below).
    if let Expect::Builds(_) = cfg.expect {
        sigkill_mid_run(&pod, &mut report);
    }

    if let Err(e) = pod.remove() {
        report.problems.push(e);
    }
    report.finish();
}

/// What nobody (uid 65534) plants in the pod's shared /tmp, then root's bkrun runs with
/// TMPDIR=/tmp (tests/pod/hostile.sh): the planted run dirs and socket records are left alone
/// and a build succeeds, a tar output and a metadata file through nobody's symlink and FIFO
/// are refused in one line, and root's files are untouched.
fn hostile_user(pod: &Pod, report: &mut Report) {
    let plant = pod.exec(&["sh", "-c", "printf precious > /root/victim; chmod 600 /root/victim; mkdir -p /root/victim-dir; printf precious > /root/victim-dir/f"]);
    report.check(
        plant.code == 0,
        "hostile: victims",
        "expected exit 0",
        &plant,
    );
    let plant = pod.exec_as("65534:65534", &["sh", "-c", HOSTILE_PLANT_SH]);
    report.check(
        plant.code == 0,
        "hostile: plant as nobody",
        "expected exit 0",
        &plant,
    );
    let ran = pod.exec(&["sh", "-c", HOSTILE_SH]);
    report.row("hostile", &ran, &[]);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let want = [
        "build 0",
        "tar 1 lines 1 refused symlink",
        "metadata 1 lines 1 refused FIFO",
        "victim precious",
        "victim-dir precious",
        "planted bkrun-fifo bkrun-huge bkrun-link bkrun-x img.tar m.json",
    ];
    report.check(
        lines == want,
        "hostile",
        &format!("expected {want:?}, got {lines:?}"),
        &ran,
    );
    let clean = pod.exec(&[
        "sh",
        "-c",
        "cd /tmp && rm -rf bkrun-x bkrun-fifo bkrun-link bkrun-huge img.tar m.json out-hostile",
    ]);
    report.check(
        clean.code == 0,
        "hostile: clean up",
        "expected exit 0",
        &clean,
    );
    let left = pod.leftovers(&ran);
    report.row("hostile (after)", &ran, &left);
}

/// bkrun SIGKILLed while a RUN step with a background process runs: nothing of the run survives
/// it (the daemon's PID namespace, or the watchdog where /proc is masked), and the next build
/// removes the run dir and socket it left, repairs the state dir, and builds.
fn sigkill_mid_run(pod: &Pod, report: &mut Report) {
    let ran = pod.exec(&["sh", "-c", SIGKILL_SH]);
    // The killed bkrun's own children end re-parented to PID 1, here `sleep infinity`, which
    // never reaps: zombies, dead and holding nothing. A pod's real PID 1 (a shell, tini, the
    // pause container of a shared PID namespace) reaps them; bkrun, being dead, cannot.
    let mut left = pod.leftovers(&ran);
    left.retain(|l| !l.ends_with("state Z"));
    report.row("SIGKILL mid-RUN, then build", &ran, &left);
    report.check(
        ran.code == 0,
        "SIGKILL",
        "expected the build after it to succeed",
        &ran,
    );
    report.check(
        ran.stdout.contains("exit 137"),
        "SIGKILL",
        "expected the killed bkrun to end with 137",
        &ran,
    );
    let survivors: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("left "))
        .collect();
    report.check(
        survivors.is_empty(),
        "SIGKILL",
        &format!("expected nothing of the killed run alive: {survivors:?}"),
        &ran,
    );
    report.check(
        ran.stderr.contains("did not stop cleanly") && ran.stderr.contains("removed 1 run dir"),
        "SIGKILL",
        "expected the next run to sweep the dead run's dir and repair the state dir",
        &ran,
    );
}

/// Under the restricted SCC each rootless mode lists every blocker in the order to fix them
/// (allowPrivilegeEscalation and the capabilities, seccomp's refusal of user namespaces, the
/// missing passwd entry and subordinate range), and doctor names the mode that needs fewest.
fn every_blocker_listed(stdout: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(stdout).map_err(|e| e.to_string())?;
    let want = [
        "no_new_privs is set",
        "drop the one newuidmap's file capabilities need",
        "seccomp profile (RuntimeDefault)",
        "has no passwd entry",
        "/etc/subuid or /etc/subgid has no range for uid 1000680000",
    ];
    for m in [1, 2] {
        let reasons: Vec<&str> = v["modes"][m]["blockers"]
            .as_array()
            .ok_or("no blockers")?
            .iter()
            .filter_map(|b| b["reason"].as_str())
            .collect();
        let found: Vec<usize> = want
            .iter()
            .filter_map(|w| reasons.iter().position(|r| r.contains(w)))
            .collect();
        let in_order = found.windows(2).all(|w| w[0] < w[1]);
        if found.len() != want.len() || !in_order {
            return Err(format!(
                "mode {m}: expected {want:?} in this order, got {reasons:#?}"
            ));
        }
    }
    if v["fewest_changes"] != "privileged" {
        return Err(format!(
            "expected fewest_changes privileged, got {}",
            v["fewest_changes"]
        ));
    }
    Ok(())
}

fn doctor_outcome(report: &mut Report, command: &str, expect: Expect, ran: &Ran) {
    let want = match expect {
        Expect::Builds(_) => 0,
        Expect::Refused(_) => 1,
    };
    report.check(
        ran.code == want,
        command,
        &format!("expected exit {want}"),
        ran,
    );
    // It starts nothing, so it is quick even on a loaded machine; the time includes podman exec.
    report.check(
        ran.secs < 2.0,
        command,
        "expected it to finish well under a second",
        ran,
    );
}

/// `bkrun doctor --format json`: one object with the mode auto picks, each mode's verdict,
/// the facts and the versions found.
fn check_doctor_json(stdout: &str, expect: Expect) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(stdout).map_err(|e| format!("not one JSON object: {e}"))?;
    for key in ["auto", "modes", "facts", "versions"] {
        if v.get(key).is_none() {
            return Err(format!("no \"{key}\" key"));
        }
    }
    let modes = v["modes"].as_array().ok_or("\"modes\" is not an array")?;
    for m in modes {
        for key in ["mode", "works", "reason", "fix"] {
            if m.get(key).is_none() {
                return Err(format!("a mode without \"{key}\": {m}"));
            }
        }
    }
    let auto = &v["auto"];
    match expect {
        Expect::Builds(mode) if auto != mode => {
            Err(format!("\"auto\" is {auto}, expected {mode:?}"))
        }
        Expect::Refused(_) if !auto.is_null() => Err(format!("\"auto\" is {auto}, expected null")),
        _ => {
            if let Some(mode) = auto.as_str() {
                let works = modes
                    .iter()
                    .any(|m| m["mode"] == mode && m["works"] == true);
                if !works {
                    return Err(format!(
                        "auto picks {mode}, which \"modes\" says cannot work"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[test]
fn privileged() {
    run_configuration("privileged");
}

#[test]
fn rootless() {
    run_configuration("rootless");
}

#[test]
fn strict() {
    run_configuration("strict");
}

#[test]
fn unmasked() {
    run_configuration("unmasked");
}

#[test]
fn runtime_default() {
    run_configuration("runtime-default");
}

#[test]
fn no_new_privs() {
    run_configuration("no-new-privs");
}

#[test]
fn root_unprivileged() {
    run_configuration("root-unprivileged");
}

#[test]
fn setuid_newuidmap() {
    run_configuration("setuid-newuidmap");
}

#[test]
fn userns_user() {
    run_configuration("userns-user");
}

#[test]
fn userns_root() {
    run_configuration("userns-root");
}

#[test]
fn restricted_scc() {
    run_configuration("restricted-scc");
}

#[test]
fn userns_user_inner_range() {
    run_configuration("userns-user-inner-range");
}

#[test]
fn arbitrary_uid() {
    run_configuration("arbitrary-uid");
}

/// Processes on this machine whose command line holds `needle`.
/// The restricted configuration, where no daemon can start, with BKRUN_FALLBACK_ADDR naming a
/// `bkrun daemon` with mutual TLS on this machine's loopback (the pod shares the host's network):
/// the build runs there and says in one line why and where; without the variable, or with a
/// mode asked for, the same pod fails with the explanation; nothing is left in the pod or here.
#[test]
fn restricted_builds_on_the_fallback_pool_and_says_why_and_where() {
    use common::tls::{free_port, make_certs, stop_daemon, tls_daemon};
    let sb = common::Sandbox::new(common::Mode::Privileged);
    let certs = sb.mkdir("certs");
    make_certs(&certs);
    let port = free_port();
    let (daemon, _unix) = tls_daemon(&sb, "pool", &certs, port);
    let addr = format!("tcp://127.0.0.1:{port}");

    let mut cfg = config("restricted");
    cfg.network = "host";
    let pod = Pod::start(
        &cfg,
        HELLO_DOCKERFILE,
        &[("tls", "/tls")],
        &["sleep", "infinity"],
    );
    // The client certificate as a mounted Secret: the pod's user reads it.
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        fs::copy(certs.join("tlsdir").join(f), pod.host("tls").join(f)).unwrap();
    }
    chown_tree(&pod.host("tls"), cfg.uid);
    let mut report = Report::new("restricted-fallback");
    let client = [
        "bkrun",
        "--tlsdir",
        "/tls",
        "--tlsservername",
        "buildkitd.test",
    ];
    let build = [
        &client[..],
        &BUILD[1..],
        &["--output", "type=local,dest=/tmp/out"],
    ]
    .concat();
    let with_pool = format!("BKRUN_FALLBACK_ADDR={addr}");
    let in_workspace = ["--workdir", "/workspace"];

    // No fallback: the explanation, as before.
    let ran = pod.exec(&build);
    report.row("build", &ran, &pod.leftovers(&ran));
    report.build_outcome("build", cfg.expect, &ran);

    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &build,
    );
    report.row("build with BKRUN_FALLBACK_ADDR", &ran, &pod.leftovers(&ran));
    let line = ran.stderr.lines().next().unwrap_or("");
    report.check(ran.code == 0, "fallback", "expected exit 0", &ran);
    report.check(
        line.starts_with("bkrun: no daemon can start in this container (privileged: bkrun runs as uid 1000, not root; ")
            && line.ends_with(&format!("): building on the daemon at {addr} (BKRUN_FALLBACK_ADDR)")),
        "fallback",
        "expected the first line to say why no daemon can start and where the build goes",
        &ran,
    );
    report.check(
        ran.startup_line().is_none(),
        "fallback",
        "expected no daemon to start in the pod",
        &ran,
    );
    let hello = fs::read_to_string(pod.host("tmp/out/hello")).unwrap_or_default();
    report.check(
        hello == "hello\n",
        "fallback",
        "expected /tmp/out/hello",
        &ran,
    );
    eprintln!("the fallback build:\n{}", ran.stderr);

    // exec goes there too, with BUILDKIT_HOST set to it; du (as prune) never reaches a shared
    // pool unasked.
    let exec = [
        &client[..],
        &["exec", "--", "sh", "-c", "echo $BUILDKIT_HOST"],
    ]
    .concat();
    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &exec,
    );
    report.row("exec with BKRUN_FALLBACK_ADDR", &ran, &pod.leftovers(&ran));
    report.check(
        ran.code == 0
            && ran.stdout.trim() == addr
            && ran.stderr.lines().next().unwrap_or("").ends_with(&format!(
                "): running the command against the daemon at {addr} (BKRUN_FALLBACK_ADDR)"
            )),
        "exec",
        "expected the command to run against the pool",
        &ran,
    );
    let du = [&client[..], &["du"]].concat();
    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &du,
    );
    report.row("du with BKRUN_FALLBACK_ADDR", &ran, &pod.leftovers(&ran));
    report.check(
        ran.code == 1
            && ran
                .stderr
                .starts_with("bkrun: no daemon mode can work here: "),
        "du",
        "expected the explanation, not the pool",
        &ran,
    );

    // A mode asked for never falls back.
    let strict = [&client[..], &["--mode", "rootless-strict"], &BUILD[1..]].concat();
    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &strict,
    );
    report.row(
        "build --mode rootless-strict with BKRUN_FALLBACK_ADDR",
        &ran,
        &pod.leftovers(&ran),
    );
    report.check(
        ran.code == 1
            && ran
                .stderr
                .starts_with("bkrun: --mode rootless-strict cannot work here: "),
        "--mode rootless-strict",
        "expected the mode's refusal, not the fallback",
        &ran,
    );

    // config and doctor say the pool would be used.
    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &[&client[..], &["config"]].concat(),
    );
    report.row(
        "config with BKRUN_FALLBACK_ADDR",
        &ran,
        &pod.leftovers(&ran),
    );
    report.check(
        ran.code == 0
            && ran.stdout.starts_with(&format!(
                "daemon:          no daemon can start here, so builds connect to {addr} (from BKRUN_FALLBACK_ADDR); no daemon is started\n"
            ))
            && ran
                .stdout
                .contains(&format!("fallback:        {addr} (from BKRUN_FALLBACK_ADDR), used: ")),
        "config",
        "expected the fallback, used",
        &ran,
    );
    eprintln!("bkrun config:\n{}", ran.stdout);
    let ran = pod.exec_with(
        &[&in_workspace[..], &["--env", with_pool.as_str()]].concat(),
        &["bkrun", "doctor"],
    );
    report.row(
        "doctor with BKRUN_FALLBACK_ADDR",
        &ran,
        &pod.leftovers(&ran),
    );
    report.check(
        ran.stdout.contains(&format!(
            "fallback              {addr} (from BKRUN_FALLBACK_ADDR), used: "
        )) && ran.stdout.contains(&format!(
            "builds on the daemon at {addr} (from BKRUN_FALLBACK_ADDR)"
        )),
        "doctor",
        "expected the fallback and its use",
        &ran,
    );
    eprintln!("bkrun doctor:\n{}", ran.stdout);

    if let Err(e) = pod.remove() {
        report.problems.push(e);
    }
    stop_daemon(daemon);
    report.finish();
    sb.assert_clean();
}

fn host_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle)
            && e.file_name().to_str() != Some(&std::process::id().to_string())
        {
            found.push(format!("{}: {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Entries named bkrun-* in a host directory.
fn bkrun_entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bkrun-"))
        .map(|e| e.path())
        .collect()
}

#[test]
fn sigterm_to_bkrun_as_pid_1_mid_run_exits_143_and_leaves_nothing() {
    let cfg = config("rootless");
    // The RUN step's shell keeps `token` in its command line (visible from the host; the last
    // echo stops it from exec'ing sleep in its place), and prints `token-42`, which the
    // Dockerfile's own text (echoed in the step's header) does not contain.
    let token = format!("bkrun-pod-sigterm-{}", std::process::id());
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo {token}-$((40+2)); /bin/busybox sleep 60; echo done\"]\n"
    );
    // TMPDIR is a volume here so the host can look in it once the container has stopped.
    let pod = Pod::start(
        &cfg,
        &dockerfile,
        &[("localtmp", "/home/user/.local/tmp")],
        &[BUILD, &["--progress=plain"]].concat(),
    );
    let logs = || {
        let out = podman().args(["logs", &pod.name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let printed = format!("{token}-42");
    let started = wait_until(Duration::from_secs(60), || {
        logs().lines().any(|l| l.trim_end().ends_with(&printed))
    });
    assert!(
        started,
        "the RUN step never printed its marker:\n{}",
        logs()
    );
    assert!(
        !host_processes(&token).is_empty(),
        "the RUN step is not visible from the host, so its absence later would prove nothing"
    );

    let start = Instant::now();
    podman_ok(&["stop", "--time", "10", &pod.name]);
    let secs = start.elapsed().as_secs_f64();
    let inspect = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &pod.name]);
    let code: i32 = String::from_utf8_lossy(&inspect.stdout)
        .trim()
        .parse()
        .unwrap();
    let log = logs();
    let ran = Ran {
        code,
        secs,
        stdout: String::new(),
        stderr: log.clone(),
    };
    let mut left: Vec<String> = host_processes(&token);
    for dir in ["tmp", "localtmp"] {
        left.extend(
            bkrun_entries(&pod.host(dir))
                .iter()
                .map(|p| p.display().to_string()),
        );
    }
    let mut report = Report::new("sigterm");
    report.row("podman stop (bkrun is PID 1, mid-RUN)", &ran, &left);
    report.check(
        code == 143,
        "podman stop",
        "expected exit 143 (128+SIGTERM)",
        &ran,
    );
    // podman stop --time 10 sends SIGKILL after ten seconds; bkrun must be done long before.
    report.check(
        secs < 5.0,
        "podman stop",
        "expected bkrun to stop within 5 s",
        &ran,
    );
    report.check(
        ran.mode().as_deref() == Some("rootless-strict"),
        "podman stop",
        "expected the start-up line to name mode rootless-strict",
        &ran,
    );
    if let Err(e) = pod.remove() {
        report.problems.push(e);
    }
    report.finish();
}
