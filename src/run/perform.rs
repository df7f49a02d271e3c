//! Running the work against a daemon that serves, until it ends, a signal arrives (the work is stopped: a build cancelled, a program given the signal), or the supervised daemon dies.

use std::future::Future;
use std::pin::Pin;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use signal_hook_tokio::Signals;
use tonic::transport::Channel;

use super::landed;
use super::report::{self, Local};
use super::settle::{BuildJob, Work};
use crate::client;
use crate::client::admin::Request;
use crate::client::connect::{self, Target};
use crate::client::solve::{Built, Outcome};
use crate::host::reaper::{Exit, Reaper};
use crate::host::RealHost;

/// The exit code of a build `--build-timeout` cancelled, as timeout(1)'s.
pub(super) const TIMED_OUT: i32 = 124;

/// How long a build that lost its connection waits to learn whether the daemon died.
const DEATH_NOTICE: Duration = Duration::from_secs(1);

/// How the work ended.
pub(super) enum Ended {
    /// The work ran to its end: every call it made to the daemon returned, so nothing of it
    /// still runs there.
    Done(i32),
    /// It stopped short (a signal, a timeout) or was a program of the user's: the daemon may
    /// still run something of it.
    Code(i32),
    Failed(anyhow::Error),
    /// The supervised daemon exited while the work ran.
    DaemonDied(Exit),
}

/// What the work runs against and may be stopped by.
pub(super) struct Against<'a> {
    pub target: &'a Target,
    /// A connection already open (a pool's choice), else one is made.
    pub opened: Option<Channel>,
    pub reaper: &'a Reaper,
    pub signals: &'a mut Signals,
    pub grace: Duration,
    /// The daemon bkrun started (None: an existing one).
    pub local: Option<&'a Local>,
}

type DaemonExit<'a> = Pin<&'a mut dyn Future<Output = Exit>>;

/// Runs `work` until it ends, a signal arrives, or `daemon_exit` resolves (never, for a daemon
/// bkrun does not supervise).
pub(super) async fn perform(
    work: Work,
    on: Against<'_>,
    daemon_exit: impl Future<Output = Exit>,
) -> Ended {
    tokio::pin!(daemon_exit);
    let daemon_exit: DaemonExit = daemon_exit;
    match work {
        Work::Build(mut job) => {
            let prepared = job.prepared.take();
            build(&job, prepared, on, daemon_exit).await
        }
        Work::Admin(req) => admin(&req, on, daemon_exit).await,
        Work::Exec(argv) => exec(&argv, on, daemon_exit).await,
        Work::Serve(listen) => {
            crate::say_out!("{}", on.target.addr);
            for l in listen {
                crate::say_out!("{l}");
            }
            tokio::select! {
                Some(sig) = on.signals.next() => Ended::Code(128 + sig),
                exit = daemon_exit => Ended::DaemonDied(exit),
            }
        }
    }
}

async fn channel(on_target: &Target, opened: Option<Channel>) -> anyhow::Result<Channel> {
    match opened {
        Some(c) => Ok(c),
        None => connect::connect_target(on_target).await,
    }
}

/// A build, then what is written from its result (metadata, iid and digest files), then one
/// line saying what the cache did, the line saying why it died (if known), and its summary.
/// `prepared`: its parts made while the daemon started (None: made here).
async fn build(
    job: &BuildJob,
    prepared: Option<anyhow::Result<client::solve::Prepared>>,
    on: Against<'_>,
    mut daemon_exit: DaemonExit<'_>,
) -> Ended {
    let spec = &job.spec;
    let started = Instant::now();
    let before = report::memory_before(on.local);
    let build = async {
        let mut prepared = match prepared {
            Some(p) => p?,
            None => client::solve::prepare(spec).await?,
        };
        // Unless said already, after a start-up line said before the daemon served: here for a
        // daemon bkrun did not start, or whose start-up line waited for it to serve.
        prepared.say_warnings();
        let channel = channel(on.target, on.opened).await?;
        crate::timeline::mark("connected");
        let built = client::solve::build(channel, spec, on.target, prepared).await?;
        // Inside the select, so a signal still ends a write to a FIFO nobody reads.
        let written = match (&built.outcome, &spec.metadata_file) {
            (Outcome::Done(response), Some(path)) => {
                client::metadata::write(path, response, &built.cache).await
            }
            _ => Ok(()),
        };
        anyhow::Ok((built, written))
    };
    let (ended, built) = tokio::select! {
        res = build => match res {
            Ok((built, written)) => (settle(job, &built, written).await, Some(built)),
            // The daemon's death often reaches the client as a broken connection before
            // the reaper sees the exit: wait briefly for it, it is the better cause.
            Err(e) if e.is::<client::solve::ConnectionLost>() => {
                match tokio::time::timeout(DEATH_NOTICE, &mut daemon_exit).await {
                    Ok(exit) => (Ended::DaemonDied(exit), None),
                    Err(_) => (Ended::Failed(e), None),
                }
            }
            Err(e) => (Ended::Failed(e), None),
        },
        // Dropping the build cancels the Solve call; the daemon then cancels the job.
        Some(sig) = on.signals.next() => (Ended::Code(128 + sig), None),
        exit = &mut daemon_exit => (Ended::DaemonDied(exit), None),
    };
    let Some(built) = built else {
        return ended;
    };
    say_cache(spec.progress.mode, &built.cache);
    let diagnosis = report::diagnose(&built, before.as_ref(), on.local, &RealHost);
    if let Some(d) = &diagnosis {
        crate::say!("bkrun: {d}");
    }
    let cx = report::Context {
        local: on.local,
        remote: on.local.is_none().then_some(on.target.addr.as_str()),
        took: started.elapsed(),
        exit_code: match &ended {
            Ended::Done(c) | Ended::Code(c) => *c,
            _ => 1,
        },
        diagnosis,
    };
    report::write_summary(spec, &built, cx).await;
    ended
}

/// How a build that ran to its end ends the work: what is written and said after a success,
/// 1 for a failure (already shown), 124 for `--build-timeout` (as timeout(1) exits).
async fn settle(job: &BuildJob, built: &Built, written: anyhow::Result<()>) -> Ended {
    match &built.outcome {
        Outcome::Done(response) => {
            if let Err(e) = written {
                return Ended::Failed(e);
            }
            if let Some(worker) = &job.announce_images {
                for line in landed::lines(&job.spec.outputs, response, worker) {
                    crate::say!("{line}");
                }
            }
            match client::metadata::write_after(&job.after, response).await {
                Ok(()) => Ended::Done(0),
                Err(e) => Ended::Failed(e),
            }
        }
        Outcome::Failed(_) => Ended::Done(1),
        // The Solve was cancelled: the daemon may still be ending the job's steps.
        Outcome::TimedOut(_) => Ended::Code(TIMED_OUT),
    }
}

/// The build's last line: what the cache did, whether the build succeeded or failed; only
/// beside progress that is shown. Quiet means nothing of bkrun's own on stderr (as its start-up
/// lines), and rawjson's stderr is a stream of JSON objects tools parse line by line;
/// `--metadata-file` has the numbers in every mode.
fn say_cache(mode: crate::progress::Mode, cache: &crate::progress::CacheStats) {
    use crate::progress::Mode;
    if !matches!(mode, Mode::Quiet | Mode::RawJson) {
        crate::say!("{}", cache.line());
    }
}

/// A question to the daemon (workers, du, prune, …), answered on stdout.
async fn admin(req: &Request, on: Against<'_>, daemon_exit: DaemonExit<'_>) -> Ended {
    let target = on.target;
    let answer = async {
        let channel = channel(target, on.opened).await?;
        client::admin::run(channel, req, &mut std::io::stdout()).await
    };
    tokio::select! {
        res = answer => match res {
            Ok(()) => Ended::Done(0),
            Err(e) => match connect::explain_error(&e, target) {
                Some(why) => Ended::Failed(anyhow::anyhow!("{why}")),
                None => Ended::Failed(e),
            },
        },
        // Dropping the call cancels it; a prune stops where it is.
        Some(sig) = on.signals.next() => Ended::Code(128 + sig),
        exit = daemon_exit => Ended::DaemonDied(exit),
    }
}

/// A program run with BUILDKIT_HOST set; a signal is passed on to it, then insisted on.
async fn exec(argv: &[String], on: Against<'_>, daemon_exit: DaemonExit<'_>) -> Ended {
    let mut cmd = Proc::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("BUILDKIT_HOST", &on.target.addr)
        .stdin(Stdio::inherit());
    let mut child = match on.reaper.spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            return Ended::Failed(anyhow::anyhow!(
                "cannot run {:?}: {e}; check the command and PATH",
                argv[0]
            ))
        }
    };
    let grace = on.grace;
    tokio::select! {
        exit = child.wait() => Ended::Code(exit.code()),
        Some(sig) = on.signals.next() => {
            // Pass the signal on so the work can stop cleanly (buildctl cancels the build), then insist.
            child.signal(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                child.signal(Signal::SIGKILL);
                child.wait().await;
            }
            Ended::Code(128 + sig)
        }
        exit = daemon_exit => {
            child.terminate(grace).await;
            Ended::DaemonDied(exit)
        }
    }
}

/// The one line for a daemon that ended while the work ran (not asked to): how it ended, and
/// what to look at.
pub(super) fn died(exit: Exit, building: bool) -> String {
    let during = if building {
        "during the build"
    } else {
        "while bkrun was using it"
    };
    match exit {
        // Nothing of bkrun's sends SIGKILL before the work ends; the kernel's OOM killer does.
        Exit::Signal(9) => format!("buildkitd was killed by SIGKILL {during}: if no one killed it, the kernel's OOM killer did (see dmesg; give the job more memory); its log is below"),
        Exit::Signal(_) => format!("buildkitd was {exit} {during}: its log is below"),
        Exit::Code(_) => format!("buildkitd exited with {exit} {during}: its log below says why"),
    }
}
