//! Starting one buildkitd (directly or under rootlesskit), waiting until it serves, and tearing it down without leaving anything behind.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

use super::leases;
use super::plan::{Plan, RunDirs};
use super::ready::{self, ReadyBy};
use super::statelock::StateLock;
use super::sweep::{self, Owner, Swept};
use crate::config::Worker;
use crate::host::reaper::{self, Child, Exit, Reaper};
use crate::host::Host;

/// Lines of the daemon log shown when it fails.
const LOG_TAIL_LINES: usize = 25;

/// A running daemon. Call `stop` (or `fail`) to end it; both remove the run dir.
pub struct Daemon {
    child: Child,
    /// `unix://…`: what BUILDKIT_HOST is set to.
    pub addr: String,
    socket: PathBuf,
    run_dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    notify: Option<UnixDatagram>,
    started: Instant,
    stop_timeout: Duration,
    argv: Vec<String>,
    /// Where teardown's signals and unmounts go (the real machine, or the fake in tests).
    host: Arc<dyn Host>,
    /// The state dir, held for the daemon's life; released clean only after a clean stop.
    state: Option<StateLock>,
    /// Marks the run dir as this run's while it lives.
    _owner: Owner,
    /// Whether the daemon served: a daemon that never did changed nothing in the state dir.
    served: bool,
    /// What runs that died had left, removed before this one started.
    pub swept: Swept,
    /// With the containerd worker: its socket and namespace, and when the daemon was spawned,
    /// for removing the temporary leases it leaves there.
    containerd: Option<(PathBuf, String, std::time::SystemTime, PathBuf)>,
    /// Whether bkrun's `__nsinit` runs under the daemon, printing its timeline marks to the
    /// daemon's log (a daemon started as PID 1 by bkrun itself has had them noted already).
    under_init: bool,
    /// What the stop's SIGTERM goes to, when not `child`: rootlesskit under bkrun's watchdog
    /// init (a pidfd of it), so that the signal is not passed on by the init first.
    stop_target: Option<OwnedFd>,
    /// Whether the daemon surely runs in a mount namespace of its own: as the PID 1 bkrun
    /// cloned (its / made a slave, so nothing propagates back), or under rootlesskit (a mount
    /// namespace of a new user namespace, whose mounts never propagate out). Its snapshot mounts
    /// then die with it, and teardown does not read the mount table for them.
    contained: bool,
}

impl Daemon {
    /// Removes what dead runs left, prepares the directories and spawns the daemon on the state
    /// dir `state` holds; it does not wait for it to serve.
    pub fn start(
        plan: &Plan,
        reaper: &Reaper,
        host: Arc<dyn Host>,
        state: StateLock,
    ) -> Result<Daemon> {
        let swept = sweep::sweep(
            host.as_ref(),
            &plan.paths.temp_dir,
            plan.paths.socket_dir.as_deref(),
        );
        crate::timeline::mark("swept");
        let run_dir = create_run_dir(&plan.paths.temp_dir)?;
        let socket_dir = plan
            .paths
            .socket_dir
            .clone()
            .unwrap_or_else(|| run_dir.path().to_path_buf());
        prepare_socket_dir(&socket_dir)?;
        let socket = plan.socket_path(&socket_dir)?;
        remove_stale_socket(&socket)?;
        let owner = sweep::claim(run_dir.path(), &socket)?;
        let dirs = RunDirs {
            run_dir: run_dir.path(),
            socket_dir: &socket_dir,
        };
        let argv = plan.argv(&dirs)?;
        fill_run_dir(plan, run_dir.path())?;
        let notify_path = run_dir.path().join("notify.sock");
        let notify =
            ready::bind_notify_socket(&notify_path).context("cannot bind the notify socket")?;
        let log_path = run_dir.path().join("buildkitd.log");
        // Private: it can hold what a build printed.
        let log = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&log_path)
            .context("cannot create the daemon log")?;
        let env = plan.env(&dirs);
        let containerd = containerd_leases(plan);
        crate::timeline::mark("spawn");
        let started = Instant::now();
        // Privileged: buildkitd itself as PID 1 of its own namespaces (host/pid1.rs).
        // Rootless-strict: rootlesskit under bkrun's watchdog init, both cloned by bkrun
        // (host/guard.rs). Else, or where those are refused, bkrun's own init, spawned directly:
        // it guards itself against bkrun's death, so it can be spawned by vfork.
        let own_init = argv.get(1).is_some_and(|a| a == super::nsinit::ARG)
            && crate::host::reaper::on_main_thread();
        let mut stop_target = None;
        let direct = if !own_init {
            None
        } else if let Some(daemon) = as_pid1(&argv) {
            spawn_as_pid1(reaper, daemon, &env, &notify_path, &log)?
        } else if let Some(program) = watched(&argv) {
            spawn_guarded(reaper, &argv[0], program, &env, &notify_path, &log)?.map(
                |(child, program)| {
                    stop_target = program;
                    child
                },
            )
        } else {
            None
        };
        let under_init = direct.is_none() && argv.iter().any(|a| a == super::nsinit::ARG);
        let contained = direct.is_some() || plan.rootlesskit.is_some();
        let child = match direct {
            Some(child) => child,
            None => {
                let mut cmd = daemon_command(&argv, env, &notify_path, log)?;
                let spawned = if own_init {
                    cmd.env(super::nsinit::PARENT_ENV, std::process::id().to_string());
                    reaper.spawn_self_guarded(&mut cmd)
                } else {
                    reaper.spawn(&mut cmd)
                };
                spawned.with_context(|| cannot_start(&argv[0]))?
            }
        };
        Ok(Daemon {
            child,
            addr: format!("unix://{}", socket.display()),
            socket,
            run_dir: Some(run_dir),
            log_path,
            notify: Some(notify),
            started,
            stop_timeout: plan.settings.stop_timeout,
            argv,
            host,
            state: Some(state),
            _owner: owner,
            served: false,
            swept,
            containerd,
            under_init,
            stop_target,
            contained,
        })
    }

    /// Whether the previous run on this state dir ended without a clean stop (its owner's pid).
    pub fn unclean_before(&self) -> Option<&str> {
        self.state.as_ref()?.unclean_before.as_deref()
    }

    pub fn pid(&self) -> i32 {
        self.child.pid
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the daemon serves, for at most `timeout`: its READY=1 or `probe` (which
    /// resolves once the daemon answers), whichever comes first. Returns the time from spawn to
    /// ready and which came first. On failure the caller should hand the error to `fail`.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        probe: impl std::future::Future<Output = ()>,
    ) -> Result<(Duration, ReadyBy), NotReady> {
        let notify = self.notify.take();
        let mut child = self.child.clone();
        let by = tokio::select! {
            _ = async { match &notify { Some(n) => ready::notified(n).await, None => std::future::pending().await } } => ReadyBy::Notify,
            _ = probe => ReadyBy::Probe,
            exit = child.wait() => return Err(NotReady::Exited(exit)),
            _ = tokio::time::sleep(timeout) => return Err(NotReady::Timeout(timeout)),
        };
        self.served = true;
        Ok((self.started.elapsed(), by))
    }

    /// Resolves when the daemon exits on its own.
    pub async fn exited(&self) -> Exit {
        self.child.clone().wait().await
    }

    /// SIGTERM the daemon (rootlesskit passes it on) and kill what it started, wait the grace
    /// period, SIGKILL, then kill every other descendant of bkrun and remove the socket and run
    /// dir. The state dir stays.
    pub async fn stop(self) -> Exit {
        self.stop_with(true).await
    }

    /// As `stop`, for a daemon on which no call of the caller's is still running: nothing it
    /// started for them can delay its graceful stop, so its process tree is not read for them
    /// while it stops (0.5 ms of its rootless-strict stop, three Go processes' threads to list).
    /// What outlives it is killed after it, as always.
    pub async fn stop_idle(self) -> Exit {
        self.stop_with(false).await
    }

    async fn stop_with(mut self, kill_jobs: bool) -> Exit {
        crate::timeline::mark("stop");
        let sent = self
            .stop_target
            .as_ref()
            .is_some_and(|t| crate::host::guard::signal(t, Signal::SIGTERM));
        if !sent {
            self.child.signal(Signal::SIGTERM);
        }
        crate::timeline::mark("sigterm");
        // After the SIGTERM, not before: the scan (about 0.3 ms of /proc reads) then runs while
        // buildkitd shuts down, which takes milliseconds and waits for these very processes.
        if kill_jobs {
            self.kill_build_processes();
        }
        let exit = self.child.wait_or_kill(self.stop_timeout).await;
        crate::timeline::mark("reaped");
        if crate::timeline::on() && self.under_init {
            // The init's marks, printed to the daemon's log (bkrun's private run dir).
            if let Ok(log) = fs::read_to_string(&self.log_path) {
                crate::timeline::merge(&log, &super::nsinit::MARKS);
            }
        }
        self.remove_temporary_leases().await;
        self.cleanup().await;
        crate::timeline::mark("cleaned");
        // buildkitd exits 1 ("context canceled") after a graceful stop; one that had to be
        // killed may have left records half-written.
        self.release_state(matches!(exit, Exit::Code(_)));
        exit
    }

    /// With the containerd worker, once the daemon is gone: its temporary leases would pin
    /// snapshots in the node's containerd after the pod is gone (see leases.rs).
    async fn remove_temporary_leases(&self) {
        let Some((socket, namespace, since, state_dir)) = &self.containerd else {
            return;
        };
        if !self.served {
            return;
        }
        if let Err(e) = leases::remove_temporary(socket, namespace, *since, state_dir).await {
            crate::say!("bkrun: warning: the temporary leases buildkitd left in containerd's namespace {namespace} were not removed ({e:#}); they keep their snapshots until a buildkitd starts on that namespace again, or `ctr -n {namespace} leases rm` removes them");
        }
    }

    /// Lets go of the state dir; `clean` (or a daemon that never served, so changed nothing)
    /// tells the next run there is nothing to repair.
    fn release_state(&mut self, clean: bool) {
        if let Some(s) = self.state.take() {
            if clean || !self.served {
                s.release_clean();
            }
        }
    }

    /// Like `stop`, but keeps the daemon log and returns `err` with the log's tail attached.
    pub async fn fail(mut self, err: anyhow::Error) -> anyhow::Error {
        self.kill_build_processes();
        self.child.terminate(self.stop_timeout).await;
        self.remove_temporary_leases().await;
        // After it served, a daemon that failed (died mid-build) left the state dir unclean.
        self.release_state(false);
        let kept = keep_log(&self.log_path);
        // Read before cleanup, which removes the log if it could not be kept.
        let tail = log_tail(&kept, LOG_TAIL_LINES);
        self.cleanup().await;
        // The headline stays first; the log is the detail under it.
        anyhow!(
            "daemon log (kept at {}), last lines:\n{tail}",
            kept.display()
        )
        .context(format!("{err:#}"))
    }

    /// Kills what buildkitd itself started (runc, RUN step processes) as it is asked to stop.
    /// The work is over by now; and without a process sandbox buildkitd cannot kill a RUN step's
    /// processes itself, so it would otherwise wait on them through the whole grace period.
    fn kill_build_processes(&self) {
        kill_build_processes(self.host.as_ref(), self.child.pid);
    }

    async fn cleanup(&mut self) {
        reaper::kill_all_descendants(Duration::from_secs(10)).await;
        if let Some(d) = self.run_dir.take() {
            sweep::remove_run_files(self.host.as_ref(), &self.socket, &d.keep(), self.contained);
        }
    }
}

/// This run's dir in `temp_dir`. Private (0700; tempfile's default is the umask's): it holds
/// the daemon's log and temp files, and the sweep judges only run dirs of this mode.
fn create_run_dir(temp_dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("bkrun-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(temp_dir)
        .with_context(|| {
            format!(
                "cannot create bkrun's run dir in {}: make TMPDIR (or /tmp) writable, e.g. an emptyDir volume at /tmp",
                temp_dir.display()
            )
        })
}

/// What the daemon finds in the run dir before it starts: bkrun.toml's [buildkitd] table as
/// buildkitd.toml, and its temp dir.
fn fill_run_dir(plan: &Plan, run_dir: &Path) -> Result<()> {
    if let Some(dc) = &plan.settings.daemon_config {
        fs::write(run_dir.join("buildkitd.toml"), dc.to_toml()?)
            .context("cannot write buildkitd.toml into the run dir")?;
    }
    fs::create_dir(run_dir.join("tmp")).context("cannot create the daemon's temp dir")?;
    Ok(())
}

/// The daemon's command: its output to a new log at `log_path`, readiness to `notify_path`.
fn daemon_command(
    argv: &[String],
    env: Vec<(String, String)>,
    notify_path: &Path,
    log: fs::File,
) -> Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .env("NOTIFY_SOCKET", notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal reaches bkrun, which stops it in order.
        .process_group(0);
    Ok(cmd)
}

/// The error line when the daemon (or what starts it) cannot be executed.
fn cannot_start(program: &str) -> String {
    format!("cannot start {program}: check that it exists and is executable (set BUILDKITD or ROOTLESSKIT to override)")
}

/// The daemon's own argv when `argv` runs it under bkrun's init in a PID namespace
/// (`bkrun __nsinit --pidns -- DAEMON…`): what `spawn_as_pid1` can start without the init. The
/// daemon's path must have a slash: execve does not search PATH, std's Command (the init's
/// way) does.
fn as_pid1(argv: &[String]) -> Option<&[String]> {
    match argv {
        [_, init, pidns, dashes, daemon @ ..]
            if init == super::nsinit::ARG
                && pidns == "--pidns"
                && dashes == "--"
                && daemon.first().is_some_and(|d| d.contains('/')) =>
        {
            Some(daemon)
        }
        _ => None,
    }
}

/// The program `argv` runs under bkrun's init as its watchdog (`bkrun __nsinit -- PROGRAM…`,
/// rootless-strict's rootlesskit): what `spawn_guarded` can start without waiting for the init.
/// The program's path must have a slash, as in `as_pid1`.
fn watched(argv: &[String]) -> Option<&[String]> {
    match argv {
        [_, init, dashes, program @ ..]
            if init == super::nsinit::ARG
                && dashes == "--"
                && program.first().is_some_and(|p| p.contains('/')) =>
        {
            Some(program)
        }
        _ => None,
    }
}

/// The environment std's Command would give the daemon: bkrun's, with the daemon's variables
/// and its NOTIFY_SOCKET set over it, as `NAME=value`.
fn daemon_env(env: &[(String, String)], notify_path: &Path) -> Vec<std::ffi::OsString> {
    let notify = notify_path.as_os_str().to_os_string();
    let set: Vec<(std::ffi::OsString, std::ffi::OsString)> = env
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .chain([("NOTIFY_SOCKET".into(), notify)])
        .collect();
    let kept: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .collect();
    let mut whole: Vec<std::ffi::OsString> = kept
        .into_iter()
        .chain(set)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    whole.shrink_to_fit();
    whole
}

/// Starts `program` (rootlesskit) with bkrun's watchdog init as its parent, by clones from
/// bkrun (host/guard.rs): the init's exec runs beside the program's start instead of before
/// it. Returns the init and a pidfd of the program (None if the kernel has no pidfd_open);
/// None when a clone is refused: the caller then spawns the init the plain way.
fn spawn_guarded(
    reaper: &Reaper,
    exe: &str,
    program: &[String],
    env: &[(String, String)],
    notify_path: &Path,
    log: &fs::File,
) -> Result<Option<(Child, Option<OwnedFd>)>> {
    use crate::host::guard::{Refused, Spec};
    use std::os::fd::AsFd;
    let null = fs::File::open("/dev/null").context("cannot open /dev/null")?;
    let init_argv = [
        exe.to_string(),
        super::nsinit::ARG.to_string(),
        super::nsinit::ADOPT.to_string(),
    ];
    let mut init_env: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, _)| k != super::nsinit::PARENT_ENV)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    init_env.push(format!("{}={}", super::nsinit::PARENT_ENV, std::process::id()).into());
    let spec = Spec {
        init_argv: &init_argv,
        init_env,
        init_death_signal: super::nsinit::PARENT_GONE as i32,
        argv: program,
        env: daemon_env(env, notify_path),
        stdin: null.as_fd(),
        log: log.as_fd(),
    };
    match reaper.spawn_guarded(&spec) {
        Ok((child, started)) => {
            crate::timeline::mark_at(super::nsinit::MARKS[0], started.began_ns);
            crate::timeline::mark_at(super::nsinit::MARKS[1], started.exec_ns);
            Ok(Some((child, started.program)))
        }
        Err(Refused::Clone(_)) => Ok(None),
        Err(Refused::Exec(e)) => Err(anyhow::Error::from(e).context(cannot_start(&program[0]))),
        Err(Refused::Init(e)) => Err(anyhow::Error::from(e).context(cannot_start(exe))),
    }
}

/// Starts the daemon itself as PID 1 of new PID and mount namespaces (host/pid1.rs), with
/// the environment, standard streams and process group the init would have given it. None
/// when the namespaces or their /proc are refused here: the caller then starts the init, which
/// tries again and falls back to watching the daemon's processes, saying why.
fn spawn_as_pid1(
    reaper: &Reaper,
    daemon: &[String],
    env: &[(String, String)],
    notify_path: &Path,
    log: &fs::File,
) -> Result<Option<Child>> {
    use crate::host::pid1::{Refused, Spec};
    use std::os::fd::AsFd;
    let null = fs::File::open("/dev/null").context("cannot open /dev/null")?;
    let spec = Spec {
        argv: daemon,
        env: daemon_env(env, notify_path),
        stdin: null.as_fd(),
        log: log.as_fd(),
    };
    match reaper.spawn_pid1(&spec) {
        Ok((child, started)) => {
            crate::timeline::mark_at(super::nsinit::MARKS[0], started.began_ns);
            crate::timeline::mark_at(super::nsinit::MARKS[1], started.exec_ns);
            Ok(Some(child))
        }
        Err(Refused::Namespaces(_)) => Ok(None),
        Err(Refused::Exec(e)) => Err(anyhow::Error::from(e).context(cannot_start(&daemon[0]))),
    }
}

/// With the containerd worker: where to remove the temporary leases the daemon leaves, and
/// from when (taken just before the spawn, so every lease of this daemon's is younger).
fn containerd_leases(plan: &Plan) -> Option<(PathBuf, String, std::time::SystemTime, PathBuf)> {
    match &plan.settings.worker {
        Worker::Containerd {
            address, namespace, ..
        } => Some((
            address.clone(),
            namespace.clone(),
            std::time::SystemTime::now(),
            plan.paths.state_dir.clone(),
        )),
        Worker::Oci => None,
    }
}

/// Kills what the buildkitd under `root` (itself, or under rootlesskit) started: runc and the
/// RUN steps' processes, parents first so none is left to start more. Not buildkitd itself,
/// nor rootlesskit: they get SIGTERM next, to stop in order.
fn kill_build_processes(host: &dyn Host, root: i32) {
    let daemon = std::iter::once(root)
        .chain(host.descendants(root))
        .find(|p| host.comm(*p).as_deref() == Some("buildkitd"));
    if let Some(d) = daemon {
        for pid in host.descendants(d) {
            let _ = host.kill(pid, Signal::SIGKILL);
        }
    }
}

/// Why waiting for the daemon ended without it serving.
#[derive(Debug)]
pub enum NotReady {
    Exited(Exit),
    Timeout(Duration),
}

impl NotReady {
    pub fn into_error(self, argv: &[String]) -> anyhow::Error {
        match self {
            NotReady::Exited(exit) => anyhow!(
                "buildkitd exited before it was ready ({exit}): read its log below, then fix the daemon flags (BUILDKITD_FLAGS, --buildkitd-flags) or the state dir\n  argv: {}",
                shell_words::join(argv)
            ),
            NotReady::Timeout(t) => anyhow!(
                "buildkitd did not serve within {:.0}s: raise --ready-timeout (or ready_timeout in bkrun.toml) if it is only slow, else read its log below",
                t.as_secs_f64()
            ),
        }
    }
}

/// Moves the daemon log out of the run dir before that goes, into a new private directory of
/// this user's beside it (`bkrun-log-XXXXXX`, 0700, random: no one can guess or pre-plant the
/// name in a shared /tmp). The sweep leaves it: it holds no owner lock.
fn keep_log(log: &Path) -> PathBuf {
    let Some(temp_dir) = log.parent().and_then(Path::parent) else {
        return log.to_path_buf();
    };
    let kept = tempfile::Builder::new()
        .prefix("bkrun-log-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(temp_dir)
        .map(|d| d.keep().join("buildkitd.log"));
    match kept {
        Ok(k) if fs::rename(log, &k).is_ok() => k,
        Ok(k) => {
            if let Some(d) = k.parent() {
                let _ = fs::remove_dir(d);
            }
            log.to_path_buf()
        }
        Err(_) => log.to_path_buf(),
    }
}

/// The last `n` lines of a log file (or why it can't be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            if lines.is_empty() {
                "    (the log is empty)".into()
            } else {
                lines[start..]
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}

/// Makes the socket dir 0700 if bkrun creates it, and checks it is writable either way.
fn prepare_socket_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| {
            format!("cannot create socket dir {}: make its parent writable, or set socket_dir in bkrun.toml", dir.display())
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    if nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
    {
        bail!(
            "socket dir {} is not writable by uid {}: fix its owner or mode, or set socket_dir in bkrun.toml (or XDG_RUNTIME_DIR)",
            dir.display(),
            nix::unistd::geteuid()
        );
    }
    Ok(())
}

/// A socket file left by a killed run is removed; one a live daemon answers on is refused.
fn remove_stale_socket(socket: &Path) -> Result<()> {
    if fs::symlink_metadata(socket).is_err() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another daemon already serves at {}: stop it, or use it directly with `buildctl --addr unix://{}`",
            socket.display(),
            socket.display()
        );
    }
    fs::remove_file(socket)
        .with_context(|| format!("cannot remove stale socket {}", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_init_in_a_pid_namespace_is_left_out_for_a_direct_start() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let init = v(&[
            "/bin/bkrun",
            "__nsinit",
            "--pidns",
            "--",
            "/bin/buildkitd",
            "--debug",
        ]);
        assert_eq!(as_pid1(&init), Some(&init[4..]));
        // The watchdog (no --pidns), rootlesskit's argv, and an init with nothing to run.
        assert_eq!(
            as_pid1(&v(&["/bin/bkrun", "__nsinit", "--", "/bin/buildkitd"])),
            None
        );
        assert_eq!(
            as_pid1(&v(&[
                "/bin/rootlesskit",
                "/bin/bkrun",
                "__nsinit",
                "--pidns",
                "--",
                "b"
            ])),
            None
        );
        assert_eq!(
            as_pid1(&v(&["/bin/bkrun", "__nsinit", "--pidns", "--"])),
            None
        );
        assert_eq!(as_pid1(&v(&["/bin/buildkitd", "--debug"])), None);
        // A bare name is left to the init, whose spawn searches PATH.
        assert_eq!(
            as_pid1(&v(&[
                "/bin/bkrun",
                "__nsinit",
                "--pidns",
                "--",
                "buildkitd"
            ])),
            None
        );
    }

    #[test]
    fn only_the_watchdog_around_a_program_is_started_by_clones() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let strict = v(&[
            "/bin/bkrun",
            "__nsinit",
            "--",
            "/usr/bin/rootlesskit",
            "/usr/bin/buildkitd",
        ]);
        assert_eq!(watched(&strict), Some(&strict[3..]));
        // The namespaced init, a program found through PATH, no init: the plain way.
        assert_eq!(
            watched(&v(&[
                "/bin/bkrun",
                "__nsinit",
                "--pidns",
                "--",
                "/bin/buildkitd"
            ])),
            None
        );
        assert_eq!(
            watched(&v(&["/bin/bkrun", "__nsinit", "--", "rootlesskit"])),
            None
        );
        assert_eq!(watched(&v(&["/usr/bin/rootlesskit", "--", "/x"])), None);
    }

    #[test]
    fn tail_takes_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        fs::write(
            &p,
            (1..=30).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        let t = log_tail(&p, 3);
        assert_eq!(t, "    line 28\n    line 29\n    line 30");
    }

    #[test]
    fn teardown_kills_only_what_buildkitd_started_parents_first() {
        use crate::host::fake::FakeHost;
        // rootlesskit (10) → buildkitd (11) → runc (12) → RUN step (13) → its child (14);
        // something else of bkrun's (20) is left to the last sweep.
        let h = FakeHost {
            procs: vec![
                (11, 10, "buildkitd"),
                (12, 11, "runc"),
                (13, 12, "sh"),
                (14, 13, "sleep"),
                (20, 1, "ssh-agent"),
            ],
            ..FakeHost::user()
        };
        kill_build_processes(&h, 10);
        assert_eq!(
            h.effects(),
            ["kill 12 SIGKILL", "kill 13 SIGKILL", "kill 14 SIGKILL"]
        );
    }

    #[test]
    fn socket_dir_is_made_private() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("a/b");
        prepare_socket_dir(&s).unwrap();
        assert_eq!(
            fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
