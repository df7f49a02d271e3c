//! The life of one settled invocation, as tini's main reads: become the subreaper and take the signals, then start a daemon (or pick an existing one), wait until it serves, do the work, and finish. Cleanup is owned by guards, so no exit path repeats it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::{Handle, Signals};

use super::log;
use super::perform::{died, perform, Against, Ended};
use super::report::Local;
use super::settle::{Invocation, Pick, Place, Work};
use crate::client;
use crate::client::connect::{self, Target};
use crate::daemon::statelock::{self, StateLock};
use crate::daemon::{diagnose, doctor, Daemon, Plan};
use crate::host::reaper::{self, Reaper};
use crate::host::{Host, RealHost};

/// First report after this long without the daemon serving, then every REPEAT.
const SLOW_START: Duration = Duration::from_secs(3);
const SLOW_START_REPEAT: Duration = Duration::from_secs(10);

/// Runs `inv` to its end: the work's exit code, or why it could not run.
pub(super) async fn run(inv: Invocation) -> Result<i32> {
    let reaper = Reaper::start().context("cannot become a child subreaper")?;
    let mut signals = SignalGuard::install()?;
    match inv.place {
        Place::Remote(pick) => {
            let code = remote(pick, inv.work, &reaper, &mut signals, inv.grace).await;
            // Whatever the work started (an exec'd program's children) goes with it.
            reaper::kill_all_descendants(Duration::from_secs(10)).await;
            code
        }
        Place::Supervised(plan) => supervised(*plan, inv.work, &reaper, &mut signals).await,
    }
}

/// The signal handlers for SIGINT, SIGTERM and SIGHUP, closed however the run ends.
struct SignalGuard {
    signals: Signals,
    handle: Handle,
}

impl SignalGuard {
    fn install() -> Result<SignalGuard> {
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
        let handle = signals.handle();
        Ok(SignalGuard { signals, handle })
    }

    /// The next signal: its number.
    async fn next(&mut self) -> Option<i32> {
        self.signals.next().await
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Work against an existing daemon: nothing to start or stop. Of a pool, the first daemon in
/// the route key's order that serves, named in one line.
async fn remote(
    pick: Pick,
    work: Work,
    reaper: &Reaper,
    signals: &mut SignalGuard,
    grace: Duration,
) -> Result<i32> {
    let (target, opened) = match pick {
        Pick::One(t) => (t, None),
        Pick::Pool { ordered, key } => {
            let chosen = tokio::select! {
                c = client::failover::first_serving(&ordered) => c?,
                Some(sig) = signals.next() => return Ok(128 + sig),
            };
            if work.announces() {
                announce_choice(&ordered, &chosen, &key);
            }
            (ordered[chosen.index].clone(), Some(chosen.channel))
        }
    };
    let on = Against {
        target: &target,
        opened,
        reaper,
        signals: &mut signals.signals,
        grace,
        local: None,
    };
    match perform(work, on, std::future::pending()).await {
        Ended::Done(c) | Ended::Code(c) => Ok(c),
        Ended::Failed(e) => Err(e),
        Ended::DaemonDied(_) => unreachable!("a remote daemon is not watched"),
    }
}

/// `bkrun: using ADDR, choice N of M for route key …; passed over …`.
fn announce_choice(ordered: &[Target], chosen: &client::failover::Chosen, key: &str) {
    let passed = chosen
        .passed
        .iter()
        .map(|(a, why)| format!("{a} ({why})"))
        .collect::<Vec<_>>()
        .join(", ");
    let passed = if passed.is_empty() {
        passed
    } else {
        format!("; passed over {passed}")
    };
    crate::say!(
        "bkrun: using {}, choice {} of {} for route key {key:?}{passed}",
        ordered[chosen.index].addr,
        chosen.index + 1,
        ordered.len()
    );
}

/// Work on a daemon bkrun starts: lock the state dir, start, wait until it serves, repair what
/// an unclean end left, do the work, stop. The daemon is stopped (or failed, its log kept) on
/// every path that started it.
async fn supervised(
    mut plan: Plan,
    mut work: Work,
    reaper: &Reaper,
    signals: &mut SignalGuard,
) -> Result<i32> {
    let announce = work.announces();
    statelock::create_state_dir(&plan.paths.state_dir)?;
    if plan.paths.state_fallback.is_some() {
        // Made in a shared temp dir: another user may have made it first.
        if let Some(why) = RealHost.others_can_write(&plan.paths.state_dir) {
            anyhow::bail!(
                "the state dir {} is not private: {why}; remove it, or pass --root with a directory only you can write to",
                plan.paths.state_dir.display()
            );
        }
    }
    // Remembered in the state dir for this buildkitd file: `buildkitd --version` run beside the
    // daemon's own start slows that start (BENCHMARKS.md). Only a first run asks.
    let version = announce.then(|| {
        let buildkitd = plan.buildkitd.clone();
        let cache = plan.paths.state_dir.join(doctor::VERSION_CACHE);
        match doctor::version_from_cache(&buildkitd, &cache) {
            Some(v) => Version::Known(v),
            None => Version::Asked(tokio::task::spawn_blocking(move || {
                doctor::version_cached(&buildkitd, &cache)
            })),
        }
    });
    let state = tokio::select! {
        s = lock_state(&plan) => s?,
        Some(sig) = signals.next() => return Ok(128 + sig),
    };
    crate::timeline::mark("locked");
    let started = Instant::now();
    let daemon = Daemon::start(&plan, reaper, Arc::new(RealHost), state)?;
    // A rootless mode asked for: its namespace probe is left until a start fails where the
    // start itself tries all it would (Plan::start_proves_namespaces), and so is the start-up
    // line, so that a refusal is still the first line. Else the probe runs now (forked by
    // `confirm`, unless a mode from bkrun.toml had it started in main), while rootlesskit
    // starts, and refuses the mode before anything is said of the start or waited for.
    let line = if plan.probe_pending && plan.start_proves_namespaces() {
        StartLine::Unsaid(version)
    } else {
        if let Err(e) = plan.confirm(&RealHost) {
            daemon.stop().await;
            return Err(e);
        }
        say_started(&plan, &daemon, announce, version).await;
        StartLine::Said
    };
    // A build's parts are made while buildkitd starts (it serves only tens of ms later, and its
    // READY=1 waits in the notify socket meanwhile); a signal still stops the run.
    if let Work::Build(job) = &mut work {
        let mut prepared = tokio::select! {
            p = client::solve::prepare(&job.spec) => p,
            Some(sig) = signals.next() => {
                daemon.stop().await;
                return Ok(128 + sig);
            }
        };
        if let StartLine::Said = line {
            if let Ok(p) = &mut prepared {
                p.say_warnings();
            }
        }
        job.prepared = Some(prepared);
    }
    // A build's OOM diagnosis baseline, read while the daemon starts rather than after it serves.
    let memory = matches!(work, Work::Build(_))
        .then(|| crate::host::cgroup::memory(&RealHost))
        .flatten();
    let waited = wait_ready(&mut plan, daemon, started, announce, line, signals).await?;
    let (daemon, dialled) = match waited {
        Readiness::Serving(d, dialled) => {
            crate::timeline::mark("ready");
            (d, dialled)
        }
        Readiness::Signalled(d, code) => {
            d.stop().await;
            return Ok(code);
        }
    };
    let local = Local {
        mode: plan.mode().to_string(),
        why: plan.decision.why.clone(),
        start: started.elapsed(),
        state_dir: plan.paths.state_dir.clone(),
        memory,
    };
    let target = Target::unix(&daemon.addr);
    repair_if_unclean(&plan, &daemon, &target, announce).await;
    let building = matches!(work, Work::Build(_));
    let on = Against {
        target: &target,
        // The probe's connection, made while the daemon started.
        opened: dialled,
        reaper,
        signals: &mut signals.signals,
        grace: plan.settings.stop_timeout,
        local: Some(&local),
    };
    let ended = perform(work, on, daemon.exited()).await;
    crate::timeline::mark("worked");
    finish(&plan, daemon, ended, building).await
}

/// The state dir's lock, waiting (and saying so) while another run holds it.
async fn lock_state(plan: &Plan) -> Result<StateLock> {
    let (dir, timeout) = (&plan.paths.state_dir, plan.settings.lock_timeout);
    StateLock::acquire(dir, timeout, |holder| {
        crate::say!(
            "bkrun: state dir {} is in use by {holder}; waiting up to {}s for it (--lock-timeout)",
            dir.display(),
            timeout.as_secs()
        );
    })
    .await
}

/// The start-up line: said, or waiting for the start with what it will say (a rootless mode
/// asked for, whose namespace probe waits for the start too, so that a refusal is the first
/// line).
enum StartLine {
    Said,
    Unsaid(Option<Version>),
}

/// buildkitd's version for the start-up line: from the state dir's cache, or being asked.
enum Version {
    Known(String),
    Asked(tokio::task::JoinHandle<Option<String>>),
}

/// The start-up lines: runs swept, the argv (`--debug`), and which daemon starts and why.
async fn say_started(plan: &Plan, daemon: &Daemon, announce: bool, version: Option<Version>) {
    if !daemon.swept.is_empty() && announce {
        crate::say!("bkrun: {}", daemon.swept);
    }
    if let (Some(why), true) = (&plan.paths.state_fallback, announce) {
        crate::say!("bkrun: {why}");
    }
    log(plan.settings.debug, || {
        format!(
            "started {} (pid {})",
            shell_words::join(daemon.argv()),
            daemon.pid()
        )
    });
    if let Some(version) = version {
        let v = match version {
            Version::Known(v) => format!("buildkitd {v}"),
            Version::Asked(asked) => {
                match tokio::time::timeout(Duration::from_secs(2), asked).await {
                    Ok(Ok(Some(v))) => format!("buildkitd {v}"),
                    _ => "buildkitd".into(),
                }
            }
        };
        crate::say!(
            "bkrun: starting {v}, {} ({}){}",
            plan.mode(),
            plan.decision.why,
            plan.decision
                .given_up
                .map_or(String::new(), |g| format!(": {g}"))
        );
        // Said before the build, not found after it: a slow snapshotter or a mount that breaks
        // setuid programs costs the whole build.
        for w in plan.storage.iter().flat_map(|s| &s.warnings) {
            crate::say!("bkrun: warning: {w}");
        }
        let dir = &plan.paths.state_dir;
        let min = plan.settings.min_free_space;
        if let Some(w) = RealHost
            .statfs(dir)
            .and_then(|fs| crate::summary::why::low_space(dir, &fs, min))
        {
            crate::say!("bkrun: warning: {w}");
        }
    }
}

/// How waiting for the daemon ended, when it did not fail.
enum Readiness {
    /// With the readiness probe's connection, if it dialled one.
    Serving(Daemon, Option<tonic::transport::Channel>),
    /// A signal came first: its exit code (the caller stops the daemon).
    Signalled(Daemon, i32),
}

/// Waits until the daemon serves. An error: it never served, and has been stopped with its log
/// kept. A start-up line still unsaid is said once the daemon serves, or has failed for
/// another reason than the mode.
async fn wait_ready(
    plan: &mut Plan,
    mut daemon: Daemon,
    started: Instant,
    announce: bool,
    line: StartLine,
    signals: &mut SignalGuard,
) -> Result<Readiness> {
    let limit = plan.settings.ready_timeout;
    let log_path = daemon.log_path().to_path_buf();
    let dialled = client::probe::Dialled::default();
    let probe = client::probe::until_serving(daemon.addr.clone(), dialled.clone());
    let ready = tokio::select! {
        r = daemon.wait_ready(limit, probe) => r,
        _ = report_slow_start(started, limit, log_path.clone()), if announce => unreachable!("never resolves"),
        Some(sig) = signals.next() => return Ok(Readiness::Signalled(daemon, 128 + sig)),
    };
    match ready {
        Ok((took, by)) => {
            log(plan.settings.debug, || {
                format!(
                    "daemon ready after {:.1} ms ({by}) at {}",
                    took.as_secs_f64() * 1e3,
                    daemon.addr
                )
            });
            if let StartLine::Unsaid(version) = line {
                say_started(plan, &daemon, announce, version).await;
            }
            Ok(Readiness::Serving(daemon, dialled.take()))
        }
        Err(not_ready) => {
            // A rootless mode asked for, whose probe waited for this: refused, it is the mode
            // that cannot work here, in the words and with the pod-spec fields a refusal names.
            if let Err(refused) = plan.confirm(&RealHost) {
                daemon.stop().await;
                return Err(refused);
            }
            if let StartLine::Unsaid(version) = line {
                say_started(plan, &daemon, announce, version).await;
            }
            // A daemon that could not start in this container usually says why in its log:
            // name the pod-spec change first.
            let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let err = match diagnose::explain(&log_text, &plan.facts.whole(&RealHost)) {
                Some(why) => anyhow::anyhow!("buildkitd exited before it was ready: {why}"),
                None => not_ready.into_error(daemon.argv()),
            };
            Err(daemon.fail(err).await)
        }
    }
}

/// Says, while the daemon is not serving yet, how long it has taken, so a slow node is not
/// mistaken for a hang. Never resolves.
async fn report_slow_start(started: Instant, limit: Duration, log: PathBuf) {
    let mut next = SLOW_START;
    loop {
        tokio::time::sleep_until((started + next).into()).await;
        crate::say!(
            "bkrun: waiting for buildkitd to serve: {}s so far, giving up after {}s (--ready-timeout); its log: {}",
            next.as_secs(),
            limit.as_secs(),
            log.display()
        );
        next += SLOW_START_REPEAT;
    }
}

/// After an unclean end of the last run on this state dir, the local-source records it may
/// have left half-updated are pruned, so this build transfers its context afresh.
async fn repair_if_unclean(plan: &Plan, daemon: &Daemon, target: &Target, announce: bool) {
    let Some(pid) = daemon.unclean_before() else {
        return;
    };
    let repaired = async {
        let channel = connect::connect_target(target).await?;
        client::admin::prune_local_sources(channel).await
    };
    match repaired.await {
        Ok((n, size)) if announce => crate::say!(
            "bkrun: the last run on {} (pid {pid}) did not stop cleanly: removed {n} local-source cache record(s) ({}) it may have left inconsistent, so this build transfers its context afresh",
            plan.paths.state_dir.display(),
            crate::gocompat::sizes::bytes(size, crate::gocompat::sizes::Digits::Two)
        ),
        Ok(_) => {}
        Err(e) => crate::say!("bkrun: warning: cannot repair the state dir after an unclean end ({e:#}); if the build fails to compute a cache key, run `bkrun prune --filter type==source.local`"),
    }
}

/// Stops the daemon after the work: the work's code; its error; or, when the daemon died
/// under it, how (with its log kept).
async fn finish(plan: &Plan, daemon: Daemon, ended: Ended, building: bool) -> Result<i32> {
    match ended {
        Ended::Done(code) | Ended::Code(code) => {
            // Work that ran to its end left nothing running in the daemon.
            let idle = matches!(ended, Ended::Done(_));
            let t = Instant::now();
            let exit = if idle {
                daemon.stop_idle().await
            } else {
                daemon.stop().await
            };
            log(plan.settings.debug, || {
                format!(
                    "daemon stopped ({exit}) in {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                )
            });
            Ok(code)
        }
        Ended::Failed(e) => {
            daemon.stop().await;
            Err(e)
        }
        Ended::DaemonDied(exit) => {
            // Under rootlesskit the exit seen is rootlesskit's; buildkitd's own is in the log.
            let log_text = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
            let exit = diagnose::rootless_child_exit(&log_text).unwrap_or(exit);
            let err = anyhow::anyhow!("{}", died(exit, building));
            Err(daemon.fail(err).await)
        }
    }
}
