//! What each subcommand does, end to end: validate, choose, start the daemon, run the work, tear down, exit with the work's status.

use std::process::{Command as Proc, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::cli::{Cli, Command, DebugCommand};
use crate::client::admin::Request;
use crate::config::Settings;
use crate::daemon::{Daemon, Plan};
use crate::host::{which, Host, RealHost};
use crate::reaper::Reaper;
use crate::spec;
use crate::spec::build::BuildSpec;
use crate::{client, progress};

/// The work to do once the daemon serves.
enum Work {
    /// A build driven by bkrun's own client.
    Build(Box<BuildSpec>),
    /// Run a program with BUILDKIT_HOST set.
    Exec(Vec<String>),
    /// Ask the daemon about its workers, version or cache, or prune the cache.
    Admin(client::admin::Request),
    /// Keep the daemon up until a signal.
    Serve,
}

/// Runs bkrun and returns its exit status.
pub async fn run(cli: Cli) -> i32 {
    match try_run(cli).await {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            1
        }
    }
}

/// One line that says what failed and what to do, then the detail, indented.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("bkrun: {e}");
    for cause in e.chain().skip(1) {
        for line in cause.to_string().lines() {
            eprintln!("  {line}");
        }
    }
}

fn log(debug: bool, msg: impl FnOnce() -> String) {
    if debug {
        eprintln!("bkrun: {}", msg());
    }
}

async fn try_run(cli: Cli) -> Result<i32> {
    let host = RealHost;
    let settings = Settings::load(&cli.global, &host)?;
    let work = match &cli.command {
        Command::Config => {
            let plan = Plan::new(&settings, &host, false)?;
            print!("{}", plan.describe());
            return Ok(0);
        }
        Command::Exec { command } => {
            if which(&command[0], host.env("PATH").as_deref()).is_none() {
                eprintln!(
                    "bkrun: cannot run {:?}: command not found; check PATH or give its full path",
                    command[0]
                );
                return Ok(127);
            }
            Work::Exec(command.clone())
        }
        Command::Build(args) => {
            // Validated here, before a daemon exists: a bad --output fails in milliseconds.
            Work::Build(Box::new(spec::build::parse(args)?))
        }
        Command::Debug { command } => match command {
            DebugCommand::Workers(l) => Work::Admin(Request::Workers {
                filters: l.filter.clone(),
                verbose: l.verbose,
            }),
            DebugCommand::Info => Work::Admin(Request::Info),
            DebugCommand::Buildctl(args) => {
                let mut argv = vec![buildctl(&host)?, "debug".into()];
                argv.extend(args.iter().cloned());
                Work::Exec(argv)
            }
        },
        Command::Du(l) => Work::Admin(Request::DiskUsage {
            filters: l.filter.clone(),
            verbose: l.verbose,
        }),
        Command::Prune(p) => Work::Admin(Request::Prune(p.to_request())),
        Command::Daemon => Work::Serve,
    };
    let plan = Plan::new(&settings, &host, matches!(work, Work::Serve))?;
    log(settings.debug, || {
        format!("mode {} ({})", plan.mode(), plan.decision.reason)
    });
    supervise(plan, work).await
}

/// buildctl runs the `debug` subcommands bkrun does not answer itself.
fn buildctl(host: &dyn Host) -> Result<String> {
    let name = host.env("BUILDCTL").unwrap_or_else(|| "buildctl".into());
    match host.which(&name) {
        Some(p) => Ok(p.display().to_string()),
        None => bail!("cannot find buildctl ({name:?} is not on PATH): install BuildKit's buildctl (scripts/setup does) or set BUILDCTL"),
    }
}

async fn supervise(plan: Plan, work: Work) -> Result<i32> {
    let debug = plan.settings.debug;
    let grace = plan.settings.stop_timeout;
    let reaper = Reaper::start().context("cannot become a child subreaper")?;
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let handle = signals.handle();
    let mut daemon = Daemon::start(&plan, &RealHost, &reaper)?;
    log(debug, || {
        format!(
            "started {} (pid {})",
            shell_words::join(daemon.argv()),
            daemon.pid()
        )
    });

    let ready = tokio::select! {
        r = daemon.wait_ready(plan.settings.ready_timeout) => r,
        Some(sig) = signals.next() => {
            daemon.stop().await;
            handle.close();
            return Ok(128 + sig);
        }
    };
    match ready {
        Ok((took, by)) => log(debug, || {
            format!(
                "daemon ready after {:.1} ms ({by}) at {}",
                took.as_secs_f64() * 1e3,
                daemon.addr
            )
        }),
        Err(not_ready) => {
            let err = not_ready.into_error(daemon.argv());
            handle.close();
            return Err(daemon.fail(err).await);
        }
    }

    let code = match work {
        Work::Build(spec) => {
            let channel = client::connect::connect(&daemon.addr).await?;
            let build = client::solve::build(channel, &spec, progress::Options::from_env());
            tokio::select! {
                res = build => match res {
                    Ok(client::solve::Outcome::Done(_)) => 0,
                    Ok(client::solve::Outcome::Failed) => 1,
                    Err(e) => {
                        daemon.stop().await;
                        handle.close();
                        return Err(e);
                    }
                },
                // Dropping the build cancels the Solve call; the daemon then cancels the job.
                Some(sig) = signals.next() => 128 + sig,
                exit = daemon.exited() => {
                    let err = anyhow::anyhow!("buildkitd died during the build ({exit}): read its log below");
                    handle.close();
                    return Err(daemon.fail(err).await);
                }
            }
        }
        Work::Admin(req) => {
            let addr = daemon.addr.clone();
            let answer = async move {
                let channel = client::connect::connect(&addr).await?;
                client::admin::run(channel, &req, &mut std::io::stdout()).await
            };
            tokio::select! {
                res = answer => match res {
                    Ok(()) => 0,
                    Err(e) => {
                        daemon.stop().await;
                        handle.close();
                        return Err(e);
                    }
                },
                // Dropping the call cancels it; a prune stops where it is.
                Some(sig) = signals.next() => 128 + sig,
                exit = daemon.exited() => {
                    let err = anyhow::anyhow!("buildkitd died before it answered ({exit}): read its log below");
                    handle.close();
                    return Err(daemon.fail(err).await);
                }
            }
        }
        Work::Exec(argv) => {
            let mut cmd = Proc::new(&argv[0]);
            cmd.args(&argv[1..])
                .env("BUILDKIT_HOST", &daemon.addr)
                .stdin(Stdio::inherit());
            let mut child = match reaper.spawn(&mut cmd) {
                Ok(c) => c,
                Err(e) => {
                    daemon.stop().await;
                    bail!("cannot run {:?}: {e}; check the command and PATH", argv[0]);
                }
            };
            tokio::select! {
                exit = child.wait() => exit.code(),
                Some(sig) = signals.next() => {
                    // Pass the signal on so the work can stop cleanly (buildctl cancels the build), then insist.
                    child.signal(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        child.signal(Signal::SIGKILL);
                        child.wait().await;
                    }
                    128 + sig
                }
                exit = daemon.exited() => {
                    child.terminate(grace).await;
                    let err = anyhow::anyhow!("buildkitd died during the build ({exit}): read its log below; the build was stopped");
                    handle.close();
                    return Err(daemon.fail(err).await);
                }
            }
        }
        Work::Serve => {
            println!("{}", daemon.addr);
            tokio::select! {
                Some(sig) = signals.next() => 128 + sig,
                exit = daemon.exited() => {
                    let err = anyhow::anyhow!("buildkitd stopped on its own ({exit}): read its log below");
                    handle.close();
                    return Err(daemon.fail(err).await);
                }
            }
        }
    };
    let t = Instant::now();
    let exit = daemon.stop().await;
    handle.close();
    log(debug, || {
        format!(
            "daemon stopped ({exit}) in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        )
    });
    Ok(code)
}
