//! Everything decided before a daemon starts: mode, paths, socket address and the exact argv, printable by `bkrun config`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::facts::Facts;
use super::mode::{self, Decision, Mode, ModeArg};
use super::nodepaths;
use super::paths::{self, Paths, PRIVATE_SOCKET_DIR};
use super::storage::{self, Storage};
use crate::config::{flag_value, has_flag, Settings, Worker};
use crate::host::Host;

const NO_SANDBOX: &str = "--oci-worker-no-process-sandbox";
const ENTITLEMENT_FLAG: &str = "--allow-insecure-entitlement";

/// The longest unix socket path the kernel takes (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct Plan {
    pub decision: Decision,
    /// What the decision was made from; a daemon that exits early is explained from them too.
    pub facts: Facts,
    pub paths: Paths,
    /// The socket's file name inside the socket dir.
    pub socket_name: String,
    pub settings: Settings,
    pub buildkitd: PathBuf,
    pub rootlesskit: Option<PathBuf>,
    /// bkrun itself, run as the init of the daemon's own namespaces (None: bkrun's path is
    /// unknown, and the daemon runs without them).
    pub init: Option<PathBuf>,
    /// The state dir's storage and the snapshotter buildkitd will pick (None with the
    /// containerd worker, whose snapshots containerd keeps).
    pub storage: Option<Storage>,
    /// A rootless mode asked for, judged before its namespace probe ran (`deferring_probe`):
    /// `confirm` must judge it again before the daemon is waited for.
    pub probe_pending: bool,
}

/// rootlesskit's flag that gives its child a PID namespace of its own, as its PID 1.
const ROOTLESSKIT_PIDNS: &str = "--pidns";

/// What rootlesskit's boolean flag `name` is set to in `flags` (`--name`, `--name=true|false`,
/// also with one dash, as its flag parser takes them); the last one wins.
fn rootlesskit_bool(flags: &[String], name: &str) -> Option<bool> {
    let bare = name.trim_start_matches('-');
    let mut found = None;
    for f in flags {
        let Some(rest) = crate::config::listen::after_name(f, bare) else {
            continue;
        };
        match rest {
            "" | "=true" | "=1" => found = Some(true),
            "=false" | "=0" => found = Some(false),
            _ => {}
        }
    }
    found
}

/// The run-time locations a plan is filled in with once the run dir exists.
pub struct RunDirs<'a> {
    pub run_dir: &'a Path,
    pub socket_dir: &'a Path,
}

impl Plan {
    /// `stable_socket`: the `daemon` subcommand's fixed `buildkitd.sock`, which sidecars connect to;
    /// ephemeral runs use a per-process name so parallel jobs never share a socket.
    pub fn new(settings: &Settings, host: &dyn Host, stable_socket: bool) -> Result<Plan> {
        let mut plan = Plan::deferring_probe(settings, host, stable_socket)?;
        plan.confirm(host)?;
        Ok(plan)
    }

    /// `new`, but a rootless mode that is asked for is judged without the namespace probe,
    /// taken as having worked: its answer cannot change the plan, only refuse the mode, so it
    /// runs once the daemon is spawned (`confirm` asks the host for it), off bkrun's start, and
    /// `confirm` refuses the mode then, in the words `new` would have used.
    pub fn deferring_probe(
        settings: &Settings,
        host: &dyn Host,
        stable_socket: bool,
    ) -> Result<Plan> {
        // Not a question of mode: said first, in the same words whatever the mode.
        let Some(buildkitd) = host.which(&settings.buildkitd) else {
            bail!(
                "cannot start buildkitd: {:?} is not on PATH; install BuildKit (scripts/setup does) or set BUILDKITD to its path",
                settings.buildkitd
            );
        };
        // Root with CAP_SYS_ADMIN asking for auto or privileged runs privileged anyway: the
        // namespace probe and the facts only the rootless modes need are skipped there.
        let status = host.process_status();
        let privileged_root = host.euid() == 0
            && status.has_eff(crate::host::CAP_SYS_ADMIN)
            && matches!(settings.mode, ModeArg::Auto | ModeArg::Privileged);
        let containerd = match &settings.worker {
            Worker::Containerd { address, .. } => Some(address.clone()),
            Worker::Oci => None,
        };
        let requested = requested_mode(settings.mode, containerd.is_some())?;
        let mut probe_pending = matches!(requested, ModeArg::Rootless | ModeArg::RootlessStrict);
        let mut facts = if privileged_root {
            let found = (settings.buildkitd.as_str(), buildkitd.clone());
            Facts::privileged_root(host, status, found, &settings.rootlesskit)
        } else {
            let found = (settings.buildkitd.as_str(), Some(buildkitd.clone()));
            Facts::gather_from(host, status, found, &settings.rootlesskit, !probe_pending)
        };
        let decision = match mode::decide(requested, &facts.assuming_namespaces()) {
            Ok(d) => d,
            // Refused whatever the probe says: with its answer too, so the refusal names every
            // blocker, as `new`'s does.
            Err(_) if probe_pending => {
                probe_pending = false;
                facts.probe = Some(host.namespace_probe());
                mode::decide(requested, &facts)?
            }
            Err(e) => return Err(e),
        };
        let paths = choose_paths(settings, host)?;
        if let Some(address) = &containerd {
            if !host.socket_answers(address) {
                bail!(
                    "containerd does not answer at {}: mount the node's containerd socket there (a hostPath volume of /run/containerd/containerd.sock), with containerd's root (/var/lib/containerd) and /run/containerd at the same paths, or pass --containerd-address",
                    address.display()
                );
            }
        }
        let decision = strict_by_flags(decision, &settings.buildkitd_flags);
        // Where the facts found it, if they looked (privileged root's do not).
        let rootlesskit = if decision.mode.is_rootless() {
            facts
                .rootlesskit
                .clone()
                .or_else(|| host.which(&settings.rootlesskit))
        } else {
            None
        };
        let storage = containerd.is_none().then(|| {
            let userns = decision.mode.is_rootless() || facts.user_namespace;
            storage::judge(host, &paths.state_dir, userns, &settings.buildkitd_flags)
        });
        Ok(Plan {
            decision,
            facts,
            paths,
            socket_name: socket_name(stable_socket),
            settings: settings.clone(),
            buildkitd,
            rootlesskit,
            init: host.current_exe(),
            storage,
            probe_pending,
        })
    }

    /// Whether the daemon gets a PID namespace (from rootlesskit or bkrun's init). It needs a
    /// /proc of its own, which a masked /proc (strict mode's reason to be) refuses; there bkrun's
    /// init watches the daemon's processes instead. With the containerd worker the daemon's
    /// mounts must reach containerd, so it gets no mount namespace (and so no PID namespace,
    /// which needs one for its /proc).
    fn pidns(&self) -> bool {
        self.mode() != Mode::RootlessStrict && !self.containerd_worker()
    }

    /// Whether builds run on the node's containerd rather than buildkitd's own OCI worker.
    fn containerd_worker(&self) -> bool {
        matches!(self.settings.worker, Worker::Containerd { .. })
    }

    /// Rootless with the process sandbox: rootlesskit's own PID namespace, its child as PID 1
    /// with a fresh /proc, SIGKILLed with everything in it when rootlesskit dies. The same
    /// guarantee as bkrun's init, with a process, an exec and a mount namespace fewer: a no-op
    /// started and ended under rootlesskit took 33.2 ms with the init's namespace and 30.5 ms
    /// with rootlesskit's (medians of 60, 2 cores). Unless the user's flags say `--pidns=false`.
    fn rootlesskit_pidns(&self) -> bool {
        let users = rootlesskit_bool(&self.settings.rootlesskit_flags, ROOTLESSKIT_PIDNS);
        self.pidns() && self.rootlesskit.is_some() && users != Some(false)
    }

    /// Whether the daemon's own start tries all the namespace probe would: rootlesskit makes the
    /// user namespace, and in its mount namespace changes /'s propagation before anything else
    /// (a refused mount ends it at once: `failed to share mount point: /`), and with its PID
    /// namespace mounts a fresh /proc. A daemon that serves then proves the mode works, so the
    /// probe of a rootless mode asked for is left until a start fails (`confirm`), off the start
    /// of every build that works (0.2–0.45 ms of rootless-strict's spawn → ready, 2 cores).
    pub fn start_proves_namespaces(&self) -> bool {
        self.rootlesskit.is_some()
            && match self.mode() {
                Mode::RootlessStrict => !self.containerd_worker(),
                Mode::Rootless => self.rootlesskit_pidns(),
                Mode::Privileged => false,
            }
    }

    /// Judges a rootless mode asked for again with the namespace probe's answer, once
    /// `deferring_probe` left it pending: the refusal `new` gives, or nothing to say.
    pub fn confirm(&mut self, host: &dyn Host) -> Result<()> {
        if !std::mem::take(&mut self.probe_pending) {
            return Ok(());
        }
        self.facts.probe = Some(host.namespace_probe());
        let requested = requested_mode(self.settings.mode, self.containerd_worker())?;
        mode::decide(requested, &self.facts)?;
        Ok(())
    }

    pub fn mode(&self) -> Mode {
        self.decision.mode
    }

    pub fn socket_path(&self, socket_dir: &Path) -> Result<PathBuf> {
        let p = socket_dir.join(&self.socket_name);
        if p.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows: choose a shorter socket_dir in bkrun.toml or a shorter TMPDIR",
                p.display()
            );
        }
        Ok(p)
    }

    /// The full argv: bkrun's init and rootlesskit with their flags first (whichever is
    /// outermost, see below), then buildkitd and its flags.
    pub fn argv(&self, dirs: &RunDirs) -> Result<Vec<String>> {
        let pidns = self.pidns();
        let users_pidns = rootlesskit_bool(&self.settings.rootlesskit_flags, ROOTLESSKIT_PIDNS);
        let rootlesskit_pidns = self.rootlesskit_pidns();
        let mut argv = Vec::new();
        // The watchdog (no PID namespace) goes outermost, around rootlesskit: bkrun can then
        // start it without waiting for its exec (host/guard.rs), and as the owner of
        // rootlesskit's user namespace it may kill every process in it. The namespaced init
        // must be inside, where it may make the namespaces.
        if !pidns {
            if let Some(exe) = &self.init {
                argv.extend(super::nsinit::wrap(exe, false, &[]));
            }
        }
        if let Some(rk) = &self.rootlesskit {
            argv.push(rk.display().to_string());
            // Its state dir in our run dir, so nothing of it outlives the run.
            argv.push(format!(
                "--state-dir={}",
                dirs.run_dir.join("rootlesskit").display()
            ));
            argv.extend(self.settings.rootlesskit_flags.iter().cloned());
            if rootlesskit_pidns && users_pidns.is_none() {
                argv.push(ROOTLESSKIT_PIDNS.into());
            }
        }
        if pidns && !rootlesskit_pidns {
            if let Some(exe) = &self.init {
                argv.extend(super::nsinit::wrap(exe, true, &[]));
            }
        }
        argv.push(self.buildkitd.display().to_string());
        argv.push(format!(
            "--addr=unix://{}",
            self.socket_path(dirs.socket_dir)?.display()
        ));
        if flag_value(&self.settings.buildkitd_flags, "--root").is_none() {
            argv.push(format!("--root={}", self.paths.state_dir.display()));
        }
        // A private trace socket: the default (/run/buildkit/otel-grpc.sock) is shared by every
        // daemon on the host and is not writable in rootless mode when XDG_RUNTIME_DIR is unset.
        if !has_flag(&self.settings.buildkitd_flags, "--otel-socket-path") {
            argv.push(format!(
                "--otel-socket-path={}",
                dirs.run_dir.join("otel-grpc.sock").display()
            ));
        }
        if self.settings.daemon_config.is_some() {
            argv.push(format!(
                "--config={}",
                dirs.run_dir.join("buildkitd.toml").display()
            ));
        }
        if self.mode() == Mode::RootlessStrict
            && !self
                .settings
                .buildkitd_flags
                .iter()
                .any(|f| f.starts_with("--oci-worker-no-process-sandbox"))
        {
            argv.push("--oci-worker-no-process-sandbox".into());
        }
        // It is the user's own daemon, serving this one build: it grants what the build asks for.
        for e in &self.settings.entitlements {
            if !self.grants_already(e) {
                argv.push(format!("{ENTITLEMENT_FLAG}={e}"));
            }
        }
        if let Worker::Containerd {
            address, namespace, ..
        } = &self.settings.worker
        {
            argv.push("--oci-worker=false".into());
            argv.push("--containerd-worker=true".into());
            argv.push(format!("--containerd-worker-addr={}", address.display()));
            argv.push(format!("--containerd-worker-namespace={namespace}"));
        }
        if self.settings.debug && !self.settings.buildkitd_flags.iter().any(|f| f == "--debug") {
            argv.push("--debug".into());
        }
        argv.extend(self.settings.buildkitd_flags.iter().cloned());
        Ok(argv)
    }

    /// Whether the daemon flags given (BUILDKITD_FLAGS, bkrun.toml) already grant `e`.
    fn grants_already(&self, e: &str) -> bool {
        let flags = &self.settings.buildkitd_flags;
        flags.iter().enumerate().any(|(i, f)| {
            f.strip_prefix(ENTITLEMENT_FLAG)
                .and_then(|rest| rest.strip_prefix('='))
                .map_or(
                    f == ENTITLEMENT_FLAG && flags.get(i + 1).is_some_and(|v| v == e),
                    |v| v == e,
                )
        })
    }

    /// Variables set for the daemon beyond bkrun's own environment.
    pub fn env(&self, dirs: &RunDirs) -> Vec<(String, String)> {
        // The daemon's temp files (e.g. the per-step ssh agent socket dirs, which it does not always
        // remove) go into the run dir, which goes away with the run.
        let mut env = vec![(
            "TMPDIR".to_string(),
            dirs.run_dir.join("tmp").display().to_string(),
        )];
        // Rootless buildkitd and rootlesskit keep runtime files under XDG_RUNTIME_DIR; a pod sets
        // none, so they get the private run dir rather than falling back to root-only /run paths.
        if self.mode().is_rootless() && self.paths.runtime_dir.is_none() {
            env.push((
                "XDG_RUNTIME_DIR".to_string(),
                dirs.run_dir.display().to_string(),
            ));
        }
        env
    }

    /// What `bkrun config` prints.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let placeholder = Path::new("$TMPDIR/bkrun-XXXXXX");
        let socket_dir = self.paths.socket_dir.as_deref().unwrap_or(placeholder);
        let dirs = RunDirs {
            run_dir: placeholder,
            socket_dir,
        };
        let st = &self.settings;
        let _ = writeln!(
            s,
            "mode:            {} ({})",
            self.mode(),
            self.decision.reason
        );
        let _ = writeln!(
            s,
            "config file:     {}",
            st.config_file
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string())
        );
        let _ = writeln!(
            s,
            "state dir:       {} ({})",
            self.paths.state_dir.display(),
            self.paths
                .state_fallback
                .as_deref()
                .unwrap_or("kept: it is the cache")
        );
        if let Some(store) = &self.storage {
            let _ = writeln!(s, "state dir fs:    {}", storage::fs_line(store));
            let _ = writeln!(s, "snapshotter:     {} ({})", store.snapshotter, store.why);
            for w in &store.warnings {
                let _ = writeln!(s, "warning:         {w}");
            }
        }
        let _ = writeln!(
            s,
            "socket dir:      {}",
            self.paths
                .socket_dir
                .as_ref()
                .map_or(PRIVATE_SOCKET_DIR.into(), |p| p.display().to_string())
        );
        let _ = writeln!(
            s,
            "socket:          {}",
            self.socket_path(socket_dir)
                .map_or_else(|e| e.to_string(), |p| p.display().to_string())
        );
        let _ = writeln!(
            s,
            "run dir:         {} (removed at exit)",
            placeholder.display()
        );
        let _ = writeln!(
            s,
            "ready timeout:   {:?} ({})",
            st.ready_timeout, st.ready_timeout_source
        );
        let _ = writeln!(s, "stop timeout:    {:?}", st.stop_timeout);
        let _ = writeln!(s, "lock timeout:    {:?}", st.lock_timeout);
        match self.argv(&dirs) {
            Ok(argv) => {
                let _ = writeln!(s, "daemon argv:     {}", shell_words::join(&argv));
            }
            Err(e) => {
                let _ = writeln!(s, "daemon argv:     ({e})");
            }
        }
        if let Some(dc) = &st.daemon_config {
            let _ = writeln!(s, "buildkitd.toml:");
            for line in dc.to_toml().unwrap_or_default().lines() {
                let _ = writeln!(s, "    {line}");
            }
        }
        s
    }
}

/// The mode asked for, as the worker allows it: containerd, not buildkitd, starts the build
/// containers, so auto means privileged there and no rootless mode applies.
fn requested_mode(mode: ModeArg, containerd: bool) -> Result<ModeArg> {
    Ok(match (mode, containerd) {
        (ModeArg::Auto, true) => ModeArg::Privileged,
        (ModeArg::Rootless | ModeArg::RootlessStrict, true) => bail!(
            "--worker containerd runs builds through the node's containerd, as root: use --mode privileged (or auto) in a pod with `securityContext.privileged: true`"
        ),
        (m, _) => m,
    })
}

/// The state, socket and temp dirs, with the ones the user gave checked private, and a
/// containerd worker's temp dir moved into the dir shared with the node.
pub fn choose_paths(settings: &Settings, host: &dyn Host) -> Result<Paths> {
    // A --root in BUILDKITD_FLAGS is where the cache is, as it was with the shell wrapper.
    let flag_root = flag_value(&settings.buildkitd_flags, "--root").map(PathBuf::from);
    let root = settings.root.clone().or(flag_root);
    let mut paths = paths::choose(host, root.as_deref(), settings.socket_dir.as_deref())?;
    // buildkitd and rootlesskit take these by path: a directory someone else can write to
    // lets them swap what is in it for links while the daemon (maybe root) works there.
    let given = [
        (
            "the state dir",
            root.as_deref(),
            "--root (or root in bkrun.toml)",
        ),
        (
            "the socket dir",
            settings.socket_dir.as_deref(),
            "socket_dir in bkrun.toml",
        ),
    ];
    for (what, dir, flag) in given {
        if let Some(why) = dir.and_then(|d| host.others_can_write(d)) {
            bail!(
                "{what} {} is not private: {why}; give {flag} a directory only uid {} can write to (a missing one is created 0700)",
                dir.unwrap_or(Path::new("")).display(),
                host.euid()
            );
        }
    }
    if paths.state_fallback.is_some() {
        if let Some(why) = host.others_can_write(&paths.state_dir) {
            bail!(
                "the state dir {} is not private: {why}; remove it, or give --root a directory only uid {} can write to",
                paths.state_dir.display(),
                host.euid()
            );
        }
    }
    if let Worker::Containerd { shared_dir, .. } = &settings.worker {
        // containerd mounts what buildkitd hands it (snapshots, secrets, ssh sockets, its
        // temp files) by path, from the node: the run dir, and so the daemon's TMPDIR, lives
        // in the shared dir, which holds the state dir and must be the same path on the node.
        let shared = shared_dir
            .clone()
            .unwrap_or_else(|| paths.state_dir.clone());
        nodepaths::check(host, &shared, &paths.state_dir)?;
        paths.temp_dir = shared;
    }
    Ok(paths)
}

/// The shell wrapper's way to ask for strict mode: BUILDKITD_FLAGS=--oci-worker-no-process-sandbox.
fn strict_by_flags(decision: Decision, buildkitd_flags: &[String]) -> Decision {
    if decision.mode == Mode::Rootless && has_flag(buildkitd_flags, NO_SANDBOX) {
        return Decision {
            mode: Mode::RootlessStrict,
            reason: format!("the daemon flags include {NO_SANDBOX}"),
            why: format!("BUILDKITD_FLAGS has {NO_SANDBOX}"),
            given_up: None,
        };
    }
    decision
}

/// `stable_socket`: `buildkitd.sock`; otherwise a name no other bkrun picks at the same time.
fn socket_name(stable_socket: bool) -> String {
    if stable_socket {
        return "buildkitd.sock".to_string();
    }
    // The PID alone is not unique: every PID-namespaced bkrun is PID 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bkrun-{}-{nanos:08x}.sock", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::host::NsProbe;

    /// The plan for `host`, with the mode asked for (None: auto); the daemon half takes settings,
    /// never the command line.
    fn plan(host: &FakeHost, mode: Option<ModeArg>) -> Plan {
        let mut s = Settings::load(&Default::default(), host).unwrap();
        if let Some(m) = mode {
            s.mode = m;
        }
        Plan::new(&s, host, true).unwrap()
    }

    fn dirs() -> (PathBuf, PathBuf) {
        (
            PathBuf::from("/tmp/bkrun-x"),
            PathBuf::from("/run/buildkit"),
        )
    }

    /// The plan's argv with the run and socket dirs of `dirs`.
    fn argv_of(p: &Plan) -> Vec<String> {
        let (r, s) = dirs();
        p.argv(&RunDirs {
            run_dir: &r,
            socket_dir: &s,
        })
        .unwrap()
    }

    #[test]
    fn config_names_the_snapshotter_and_its_warnings() {
        let p = plan(&FakeHost::root(), None);
        let d = p.describe();
        assert!(d.contains("state dir fs:    ext4\n"), "{d}");
        assert!(
            d.contains("snapshotter:     overlayfs (overlayfs works on ext4)\n"),
            "{d}"
        );
        assert!(!d.contains("warning:"), "{d}");
        // Root in a container whose own filesystem holds /var/lib/buildkit, without fuse.
        let h = FakeHost {
            filesystems: vec![("/", 0x794c_7630, false, false)],
            ..FakeHost::root()
        };
        let d = plan(&h, None).describe();
        assert!(
            d.contains("snapshotter:     native (the state dir is on overlayfs"),
            "{d}"
        );
        assert!(
            d.contains("warning:         buildkitd will use the native snapshotter"),
            "{d}"
        );
    }

    #[test]
    fn privileged_argv() {
        let p = plan(&FakeHost::root(), None);
        let argv = argv_of(&p);
        assert_eq!(
            argv,
            [
                "/usr/local/bin/bkrun",
                "__nsinit",
                "--pidns",
                "--",
                "/usr/bin/buildkitd",
                "--addr=unix:///run/buildkit/buildkitd.sock",
                "--root=/var/lib/buildkit",
                "--otel-socket-path=/tmp/bkrun-x/otel-grpc.sock"
            ]
        );
    }

    #[test]
    fn strict_argv_runs_under_rootlesskit_without_sandbox() {
        let h = FakeHost {
            env: vec![
                ("HOME", "/home/u"),
                (
                    "BUILDKITD_FLAGS",
                    "--debug --oci-worker-snapshotter='native'",
                ),
            ],
            ..FakeHost::user()
        };
        let p = plan(&h, Some(ModeArg::RootlessStrict));
        let argv = argv_of(&p);
        assert_eq!(
            argv,
            [
                "/usr/local/bin/bkrun",
                "__nsinit",
                "--",
                "/usr/bin/rootlesskit",
                "--state-dir=/tmp/bkrun-x/rootlesskit",
                "/usr/bin/buildkitd",
                "--addr=unix:///run/buildkit/buildkitd.sock",
                "--root=/home/u/.local/share/buildkit",
                "--otel-socket-path=/tmp/bkrun-x/otel-grpc.sock",
                "--oci-worker-no-process-sandbox",
                "--debug",
                "--oci-worker-snapshotter=native",
            ]
        );
    }

    #[test]
    fn rootless_argv_gives_the_pid_namespace_to_rootlesskit() {
        let h = FakeHost {
            env: vec![("HOME", "/home/u")],
            ..FakeHost::user()
        };
        let p = plan(&h, Some(ModeArg::Rootless));
        assert_eq!(
            argv_of(&p)[..4],
            [
                "/usr/bin/rootlesskit",
                "--state-dir=/tmp/bkrun-x/rootlesskit",
                "--pidns",
                "/usr/bin/buildkitd",
            ]
        );
        // The user's own word on it is kept, and without rootlesskit's namespace bkrun's
        // init makes one.
        for (flags, expect) in [
            (vec!["--pidns"], vec!["--pidns", "/usr/bin/buildkitd"]),
            (
                vec!["-pidns=true"],
                vec!["-pidns=true", "/usr/bin/buildkitd"],
            ),
            (
                vec!["--pidns=false"],
                vec![
                    "--pidns=false",
                    "/usr/local/bin/bkrun",
                    "__nsinit",
                    "--pidns",
                    "--",
                    "/usr/bin/buildkitd",
                ],
            ),
        ] {
            let mut p = p.clone();
            p.settings.rootlesskit_flags = flags.iter().map(|f| f.to_string()).collect();
            let argv = argv_of(&p);
            assert_eq!(argv[2..2 + expect.len()], expect, "{flags:?}");
        }
    }

    #[test]
    fn rootlesskit_booleans_read_as_its_parser_reads_them() {
        let f = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            rootlesskit_bool(&v, "--pidns")
        };
        assert_eq!(f(&[]), None);
        assert_eq!(f(&["--pidns"]), Some(true));
        assert_eq!(f(&["--pidns", "--pidns=false"]), Some(false));
        assert_eq!(f(&["-pidns=0", "--pidns=1"]), Some(true));
        assert_eq!(f(&["--pidnsx", "--net=slirp4netns"]), None);
    }

    #[test]
    fn no_sandbox_flag_means_strict() {
        let h = FakeHost {
            env: vec![
                ("HOME", "/home/u"),
                ("BUILDKITD_FLAGS", "--oci-worker-no-process-sandbox"),
            ],
            ..FakeHost::user()
        };
        let p = plan(&h, None);
        assert_eq!(p.mode(), Mode::RootlessStrict);
        let argv = argv_of(&p);
        assert_eq!(argv.iter().filter(|a| *a == NO_SANDBOX).count(), 1);
    }

    #[test]
    fn root_from_buildkitd_flags_is_the_state_dir() {
        let h = FakeHost {
            env: vec![("BUILDKITD_FLAGS", "--root \"/my cache\"")],
            ..FakeHost::root()
        };
        let p = plan(&h, None);
        assert_eq!(p.paths.state_dir, Path::new("/my cache"));
        let argv = argv_of(&p);
        assert_eq!(argv.iter().filter(|a| a.starts_with("--root")).count(), 1);
    }

    #[test]
    fn rootless_in_a_pod_gets_a_private_runtime_dir() {
        let (r, s) = dirs();
        let d = RunDirs {
            run_dir: &r,
            socket_dir: &s,
        };
        let p = plan(&FakeHost::user(), None);
        let tmp = ("TMPDIR".to_string(), "/tmp/bkrun-x/tmp".to_string());
        assert_eq!(
            p.env(&d),
            [
                tmp.clone(),
                ("XDG_RUNTIME_DIR".to_string(), "/tmp/bkrun-x".to_string())
            ]
        );
        let h = FakeHost {
            env: vec![("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")],
            usable_dirs: vec!["/run/user/1000"],
            ..FakeHost::user()
        };
        let p = plan(&h, None);
        assert_eq!(p.env(&d), std::slice::from_ref(&tmp));
        let root = plan(&FakeHost::root(), None);
        assert_eq!(root.env(&d), [tmp]);
    }

    #[test]
    fn the_start_proves_the_namespaces_where_rootlesskit_makes_them_all() {
        let h = FakeHost::user();
        let strict = plan(&h, Some(ModeArg::RootlessStrict));
        assert!(strict.start_proves_namespaces());
        // Its PID namespace is what mounts the fresh /proc the process sandbox needs.
        let mut rootless = plan(&h, Some(ModeArg::Rootless));
        assert!(rootless.start_proves_namespaces());
        for (flags, proves) in [(vec!["--pidns"], true), (vec!["--pidns=false"], false)] {
            rootless.settings.rootlesskit_flags = flags.iter().map(|f| f.to_string()).collect();
            assert_eq!(rootless.start_proves_namespaces(), proves, "{flags:?}");
        }
        assert!(!plan(&FakeHost::root(), None).start_proves_namespaces());
    }

    #[test]
    fn a_rootless_mode_asked_for_is_refused_by_its_probe_once_it_ran() {
        let mut h = FakeHost::user();
        h.probe.clone_userns = Some(Err(nix::errno::Errno::EPERM));
        let mut s = Settings::load(&Default::default(), &h).unwrap();
        for mode in [ModeArg::Rootless, ModeArg::RootlessStrict] {
            s.mode = mode;
            let refused = Plan::new(&s, &h, false).unwrap_err().to_string();
            assert!(refused.contains("cannot work here"), "{refused}");
            // Planned without the probe, the mode is refused only once it has answered, in
            // the same words; the facts then hold the answer for a later diagnosis.
            let mut p = Plan::deferring_probe(&s, &h, false).unwrap();
            assert!(p.probe_pending && p.facts.probe.is_none());
            assert_eq!(p.confirm(&h).unwrap_err().to_string(), refused);
            assert_eq!(p.facts.probe, Some(h.probe));
            // Confirmed once: nothing is probed or refused again.
            assert!(!p.probe_pending && p.confirm(&h).is_ok());
            // Refused before the probe ran (no subordinate ids too): the same every-blocker
            // refusal as `new`'s, the user namespace's among them.
            let mut no_ids = FakeHost {
                subids: false,
                ..FakeHost::user()
            };
            no_ids.probe = h.probe;
            let refused = Plan::new(&s, &no_ids, false).unwrap_err().to_string();
            let early = Plan::deferring_probe(&s, &no_ids, false).unwrap_err();
            assert_eq!(early.to_string(), refused);
            assert!(refused.contains("creating a user namespace"), "{refused}");
        }
        // Where the probe picks the mode (auto), it runs before the plan is made.
        s.mode = ModeArg::Auto;
        let e = Plan::deferring_probe(&s, &h, false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no daemon mode can work here"), "{e}");
        h.probe = NsProbe::ALL_OK;
        let p = Plan::deferring_probe(&s, &h, false).unwrap();
        assert!(!p.probe_pending && p.facts.probe == Some(NsProbe::ALL_OK));
    }

    #[test]
    fn entitlements_are_granted_once() {
        let h = FakeHost {
            env: vec![(
                "BUILDKITD_FLAGS",
                "--allow-insecure-entitlement network.host",
            )],
            ..FakeHost::root()
        };
        let mut s = Settings::load(&Default::default(), &h).unwrap();
        s.entitlements = vec!["network.host".into(), "security.insecure".into()];
        let p = Plan::new(&s, &h, true).unwrap();
        let argv = argv_of(&p);
        // After bkrun's own flags, before the user's.
        let after = argv
            .iter()
            .position(|a| a.starts_with("--otel-socket-path"))
            .unwrap()
            + 1;
        assert_eq!(
            argv[after..],
            [
                "--allow-insecure-entitlement=security.insecure",
                "--allow-insecure-entitlement",
                "network.host"
            ]
        );
    }

    #[test]
    fn the_containerd_worker_is_privileged_and_shares_its_paths_with_the_node() {
        let mut h = FakeHost::root();
        h.sockets = vec!["/run/containerd/containerd.sock"];
        let mut s = Settings::load(&Default::default(), &h).unwrap();
        s.worker = Worker::Containerd {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "buildkit".into(),
            shared_dir: None,
        };
        let p = Plan::new(&s, &h, false).unwrap();
        assert_eq!(p.mode(), Mode::Privileged);
        assert_eq!(p.paths.temp_dir, p.paths.state_dir);
        let argv = argv_of(&p);
        assert!(!argv.iter().any(|a| a == "--pidns"), "{argv:?}");
        for flag in [
            "--oci-worker=false",
            "--containerd-worker=true",
            "--containerd-worker-addr=/run/containerd/containerd.sock",
            "--containerd-worker-namespace=buildkit",
        ] {
            assert!(argv.iter().any(|a| a == flag), "{flag} missing: {argv:?}");
        }
        s.mode = ModeArg::Rootless;
        let e = Plan::new(&s, &h, false).unwrap_err().to_string();
        assert!(e.contains("--mode privileged"), "{e}");
        h.sockets = vec![];
        s.mode = ModeArg::Auto;
        let e = Plan::new(&s, &h, false).unwrap_err().to_string();
        assert!(
            e.starts_with("containerd does not answer at /run/containerd/containerd.sock"),
            "{e}"
        );
        // A shared dir of its own holds the temp files, and must hold the state dir.
        h.sockets = vec!["/run/containerd/containerd.sock"];
        s.root = Some("/srv/shared/buildkit".into());
        s.worker = Worker::Containerd {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "buildkit".into(),
            shared_dir: Some("/srv/shared".into()),
        };
        let p = Plan::new(&s, &h, false).unwrap();
        assert_eq!(p.paths.temp_dir, Path::new("/srv/shared"));
        s.root = Some("/var/lib/elsewhere".into());
        let e = Plan::new(&s, &h, false).unwrap_err().to_string();
        assert!(
            e.contains("is not inside --containerd-shared-dir /srv/shared"),
            "{e}"
        );
    }

    #[test]
    fn too_long_socket_paths_are_refused() {
        let p = plan(&FakeHost::root(), None);
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(p
            .socket_path(&long)
            .unwrap_err()
            .to_string()
            .contains("107"));
    }
}
