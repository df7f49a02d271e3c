//! What each subcommand does, end to end: validate, choose, start the daemon, run the work, tear down, exit with the work's status.

use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::cli::{Cli, Command, DebugCommand, LogFormat};
use crate::client::admin::Request;
use crate::client::connect::{self, Target};
use crate::config::{AddrSource, Settings};
use crate::daemon::doctor;
use crate::daemon::statelock::{self, StateLock};
use crate::daemon::{diagnose, Daemon, Plan};
use crate::host::reaper::{self, Exit, Reaper};
use crate::host::{which, Host, RealHost};
use crate::request;
use crate::request::build::BuildSpec;
use crate::{client, progress};
use clap::CommandFactory;

mod landed;
mod routekey;
mod target;

use target::{describe, listener_flags, remote_targets};

/// The work to do once the daemon serves.
enum Work {
    /// A build driven by bkrun's own client.
    Build(Box<BuildJob>),
    /// Run a program with BUILDKIT_HOST set.
    Exec(Vec<String>),
    /// Ask the daemon about its workers, version or cache, or prune the cache.
    Admin(client::admin::Request),
    /// Keep the daemon up until a signal; also listening on these addresses.
    Serve(Vec<String>),
}

/// A build and what comes with it from the grammar it was typed in.
struct BuildJob {
    spec: BuildSpec,
    /// Files written from the exporter's response once the build succeeded.
    after: request::docker::AfterBuild,
    /// A context or Dockerfile read from stdin; removed when the job ends.
    _stdin_dir: Option<tempfile::TempDir>,
    /// The worker of the daemon bkrun starts, to say where unpushed images went (None: a
    /// remote daemon's, or nothing to say in this progress mode).
    announce_images: Option<crate::config::Worker>,
}

/// Any grammar's command line, normalized into buildctl's, checked into a spec.
fn build_job(
    n: request::docker::Normalized,
    settings: &Settings,
    host: &dyn Host,
) -> Result<BuildJob> {
    let spec = request::build::resolve(&n.args, settings, host)?;
    request::dests::check_after(&n.after, host)?;
    if !matches!(
        spec.progress.mode,
        progress::Mode::Quiet | progress::Mode::RawJson
    ) {
        for note in &n.notes {
            crate::say!("bkrun: {note}");
        }
    }
    let mut spec = spec;
    spec.local_projects = spec
        .locals
        .iter()
        .map(|(name, dir)| (name.clone(), routekey::for_dir(&cwd().join(dir))))
        .collect();
    let quiet = matches!(
        spec.progress.mode,
        progress::Mode::Quiet | progress::Mode::RawJson
    );
    Ok(BuildJob {
        spec,
        after: n.after,
        _stdin_dir: n.stdin_dir,
        announce_images: (settings.remote.is_none() && !quiet).then(|| settings.worker.clone()),
    })
}

/// Runs bkrun and returns its exit status.
pub async fn run(cli: Cli) -> i32 {
    // Generated from the clap definitions; they need no settings, host or daemon.
    match &cli.command {
        Command::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "bkrun", &mut out);
            write_stdout(&String::from_utf8_lossy(&out));
            return 0;
        }
        Command::Man => {
            let mut out = Vec::new();
            let page = clap_mangen::Man::new(Cli::command().version(crate::version::short()));
            return match page.render(&mut out) {
                Ok(()) => {
                    write_stdout(&String::from_utf8_lossy(&out));
                    0
                }
                Err(e) => {
                    print_error(
                        &anyhow::anyhow!("cannot render the man page: {e}"),
                        LogFormat::Text,
                    );
                    1
                }
            };
        }
        // Prints objects for a cluster: no settings, host facts or daemon of this machine.
        Command::Kube(k) => {
            return match kube(k, &cli.global) {
                Ok(()) => 0,
                Err(e) => {
                    print_error(&e, cli.global.log_format);
                    1
                }
            };
        }
        _ => {}
    }
    let format = cli.global.log_format;
    let code = match try_run(cli).await {
        Ok(code) => code,
        Err(e) => {
            print_error(&e, format);
            1
        }
    };
    // However the work ended (success, error, failed build, signal), the daemon is gone by
    // now and no temporary output may outlive bkrun.
    for (path, e) in crate::outputs::temps::sweep() {
        crate::say!(
            "bkrun: cannot remove the temporary output {}: {e}: remove it by hand",
            path.display()
        );
    }
    code
}

/// `bkrun kube`: the objects on stdout, and on stderr where clients connect and what the server
/// certificate must name.
fn kube(args: &crate::cli::KubeArgs, global: &crate::cli::GlobalArgs) -> Result<()> {
    let options = crate::kube::Options::from_args(&args.into(), &global.into())?;
    let text = crate::kube::yaml::render(&crate::kube::pool(&options))?;
    write_stdout(&text);
    let addrs = crate::kube::client_addresses(&options);
    let hosts: Vec<&str> = addrs
        .iter()
        .filter_map(|a| a.strip_prefix("tcp://")?.rsplit_once(':').map(|(h, _)| h))
        .collect();
    // A large StatefulSet's names follow one pattern: the first and the last say it.
    let span = |v: &[&str]| match v {
        [first, .., last] if v.len() > 3 => format!("{first} … {last}"),
        _ => v.join(", "),
    };
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    if addrs.is_empty() {
        // A StatefulSet of no replicas: nothing to connect to yet.
        return Ok(());
    }
    match &options.tls_secret {
        Some(secret) => crate::say!(
            "bkrun: clients connect to {} with --tlsdir holding a client certificate signed by the CA (ca.crt) of Secret {secret}, whose tls.crt must name {} (or the name clients give as --tlsservername)",
            span(&addrs),
            span(&hosts)
        ),
        None => crate::say!(
            "bkrun: clients connect to {} with --insecure-plaintext: any pod that reaches them can run builds",
            span(&addrs)
        ),
    }
    Ok(())
}

/// One line that says what failed and what to do, then the detail, indented; with
/// `--log-format json`, one object a line as buildctl's logrus writes them.
pub fn print_error(e: &anyhow::Error, format: LogFormat) {
    // Secrets stay out of error lines as they stay out of the progress (a log tail can hold one).
    let masked = crate::progress::mask::masked_error_line;
    if format == LogFormat::Json {
        let msg = e
            .chain()
            .map(|c| masked(&c.to_string()))
            .collect::<Vec<_>>()
            .join("\n");
        let line = serde_json::json!({
            "level": "error",
            "msg": msg,
            // logrus's JSON time: RFC 3339 to the second.
            "time": crate::gocompat::times::rfc3339_nano(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64 * 1_000_000_000)
            ),
        });
        crate::say!("{line}");
        return;
    }
    crate::say!("bkrun: {}", masked(&e.to_string()));
    for cause in e.chain().skip(1) {
        for line in cause.to_string().lines() {
            crate::say!("  {}", masked(line));
        }
    }
}

/// Writes a report to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn log(debug: bool, msg: impl FnOnce() -> String) {
    if debug {
        crate::say!("bkrun: {}", msg());
    }
}

async fn try_run(cli: Cli) -> Result<i32> {
    let host = RealHost;
    let mut settings = Settings::load(&(&cli.global).into(), &host)?;
    let work = match &cli.command {
        Command::Config => {
            let key = || {
                match given_route_key(&cli.global) {
                Some(k) => (k, "--route-key".to_string()),
                None => (
                    routekey::for_dir(&cwd()),
                    "the current directory's; a build routes by its context and platforms, --route-key overrides".to_string(),
                ),
            }
            };
            write_stdout(&describe(&settings, &host, &cli.global, key)?);
            return Ok(0);
        }
        Command::Completion { .. } | Command::Man | Command::Kube(_) => {
            unreachable!("answered in run()")
        }
        Command::Doctor { format } => {
            // Never starts a daemon: facts, verdicts and versions only.
            let report = doctor::Report::gather(&settings, &host);
            let text = match doctor::Format::from(*format) {
                doctor::Format::Text => report.text(),
                doctor::Format::Json => format!("{:#}\n", report.json()),
            };
            write_stdout(&text);
            return Ok(report.exit_code());
        }
        Command::Exec { command } => {
            if which(&command[0], host.env("PATH").as_deref()).is_none() {
                crate::say!(
                    "bkrun: cannot run {:?}: command not found; check PATH or give its full path",
                    command[0]
                );
                return Ok(127);
            }
            Work::Exec(command.clone())
        }
        Command::Build(args) => {
            // Settled here, before a daemon exists: a bad --output fails in milliseconds.
            let n = request::docker::normalize(&(&**args).into(), &mut std::io::stdin().lock())?;
            Work::Build(Box::new(build_job(n, &settings, &host)?))
        }
        Command::Kaniko(k) => {
            let t = request::kaniko::translate(&(&**k).into())?;
            if !t.registries.is_empty() {
                if let Some(r) = &settings.remote {
                    bail!("kaniko's registry flags (--insecure, --insecure-registry, --skip-tls-verify, --registry-mirror, --registry-certificate) configure the daemon bkrun starts; the daemon at {} (from {}) has its own configuration: drop them, or configure that daemon", r.shown(), r.source);
                }
                let dc = settings.daemon_config.get_or_insert_with(Default::default);
                for (host, over) in t.registries {
                    let r = dc.registry.entry(host).or_default();
                    r.http = over.http.or(r.http);
                    r.insecure = over.insecure.or(r.insecure);
                    r.mirrors.extend(over.mirrors);
                    r.ca.extend(over.ca);
                }
            }
            Work::Build(Box::new(build_job(t.build, &settings, &host)?))
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
        Command::Prune(p) => {
            Work::Admin(Request::Prune((&client::admin::PruneFlags::from(p)).into()))
        }
        Command::PruneHistories { format } => Work::Admin(Request::PruneHistories {
            // Checked here, so a template bkrun cannot run fails before any daemon starts.
            format: format
                .as_deref()
                .map(client::histories::parse_format)
                .transpose()?,
        }),
        Command::Daemon(d) => {
            let listen = listener_flags(d, cli.global.insecure_plaintext)?;
            settings.buildkitd_flags.extend(listen);
            Work::Serve(d.listen.clone())
        }
    };
    match (&settings.remote, &work) {
        // `bkrun daemon` in BuildKit's rootless image serves at the image's BUILDKIT_HOST; a
        // bkrun.toml shared by clients and daemons names the pool the daemon is part of.
        (Some(r), Work::Serve(_))
            if matches!(r.source, AddrSource::BuildkitHost | AddrSource::ConfigFile) => {}
        (Some(r), Work::Serve(_)) => {
            bail!("bkrun daemon starts its own daemon: drop {}", r.source)
        }
        (Some(r), _) => {
            let targets = remote_targets(&cli.global, r)?;
            // Every address is checked before any is dialled: a typo in the third fails now.
            let mut warnings = Vec::new();
            for t in &targets {
                if let Some(w) = connect::validate(t)? {
                    warnings.push(w);
                }
            }
            for w in warnings {
                crate::say!("bkrun: {w}");
            }
            log(settings.debug, || {
                format!("using the daemon at {} (from {})", r.shown(), r.source)
            });
            let pick = if r.is_pool() {
                let key = given_route_key(&cli.global).unwrap_or_else(|| match &work {
                    Work::Build(job) => routekey::for_build(&job.spec, &cwd()),
                    _ => routekey::for_dir(&cwd()),
                });
                let ordered = crate::pool::order(&key, &r.addrs)
                    .into_iter()
                    .map(|i| targets[i].clone())
                    .collect();
                Pick::Pool { ordered, key }
            } else {
                Pick::One(targets.into_iter().next().expect("a remote has an address"))
            };
            return remote(pick, work, settings.stop_timeout).await;
        }
        (None, _) => {}
    }
    if let Some(why) = &settings.buildkit_host_ignored {
        log(settings.debug, || why.clone());
    }
    if let Work::Build(job) = &work {
        settings.entitlements = request::entitlement::daemon_grants(&job.spec.allow);
        // The daemon runs here, so this machine's emulators are the build's. A handler without
        // the F flag fails in build containers with a misleading "no such file or directory".
        if let Some(platforms) = job.spec.opts.get("platform") {
            for why in crate::host::binfmt::unusable_platforms(platforms, &host.binfmt()) {
                crate::say!("bkrun: warning: {why}");
            }
        }
    }
    let plan = Plan::new(&settings, &host, matches!(work, Work::Serve(_)))?;
    log(settings.debug, || {
        format!("mode {} ({})", plan.mode(), plan.decision.reason)
    });
    supervise(plan, work).await
}

/// --route-key or BKRUN_ROUTE_KEY, unless empty.
fn given_route_key(g: &crate::cli::GlobalArgs) -> Option<String> {
    g.route_key.clone().filter(|k| !k.is_empty())
}

/// The directory bkrun runs in, from which relative contexts and the default route key are read.
fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// The existing daemon to use: one, or a pool in the route key's order.
enum Pick {
    One(Target),
    Pool { ordered: Vec<Target>, key: String },
}

/// buildctl runs the `debug` subcommands bkrun does not answer itself.
fn buildctl(host: &dyn Host) -> Result<String> {
    let name = host.env("BUILDCTL").unwrap_or_else(|| "buildctl".into());
    match host.which(&name) {
        Some(p) => Ok(p.display().to_string()),
        None => bail!("cannot find buildctl ({name:?} is not on PATH): install BuildKit's buildctl (scripts/setup does) or set BUILDCTL"),
    }
}

/// How long a build that lost its connection waits to learn whether the daemon died.
const DEATH_NOTICE: Duration = Duration::from_secs(1);

/// How the work ended.
enum Ended {
    Code(i32),
    Failed(anyhow::Error),
    /// The supervised daemon exited while the work ran.
    DaemonDied(Exit),
}

/// Runs the work against the daemon at `target` until it ends, a signal arrives (the work is
/// stopped: a build is cancelled, a program gets the signal), or `daemon_exit` resolves.
async fn perform(
    work: Work,
    target: &Target,
    opened: Option<tonic::transport::Channel>,
    reaper: &Reaper,
    signals: &mut Signals,
    grace: Duration,
    daemon_exit: impl std::future::Future<Output = Exit>,
) -> Ended {
    tokio::pin!(daemon_exit);
    match work {
        Work::Build(job) => {
            let spec = &job.spec;
            let build = async {
                let channel = match opened {
                    Some(c) => c,
                    None => connect::connect_target(target).await?,
                };
                let outcome = client::solve::build(channel, spec, target).await?;
                // Inside the select, so a signal still ends a write to a FIFO nobody reads.
                if let (client::solve::Outcome::Done(response), Some(path)) =
                    (&outcome, &spec.metadata_file)
                {
                    client::metadata::write(path, response).await?;
                }
                anyhow::Ok(outcome)
            };
            tokio::select! {
                res = build => match res {
                    Ok(client::solve::Outcome::Done(response)) => {
                        if let Some(worker) = &job.announce_images {
                            for line in landed::lines(&spec.outputs, &response, worker) {
                                crate::say!("{line}");
                            }
                        }
                        match client::metadata::write_after(&job.after, &response).await {
                            Ok(()) => Ended::Code(0),
                            Err(e) => Ended::Failed(e),
                        }
                    }
                    Ok(client::solve::Outcome::Failed) => Ended::Code(1),
                    // The daemon's death often reaches the client as a broken connection before
                    // the reaper sees the exit: wait briefly for it, it is the better cause.
                    Err(e) if e.is::<client::solve::ConnectionLost>() => {
                        match tokio::time::timeout(DEATH_NOTICE, &mut daemon_exit).await {
                            Ok(exit) => Ended::DaemonDied(exit),
                            Err(_) => Ended::Failed(e),
                        }
                    }
                    Err(e) => Ended::Failed(e),
                },
                // Dropping the build cancels the Solve call; the daemon then cancels the job.
                Some(sig) = signals.next() => Ended::Code(128 + sig),
                exit = &mut daemon_exit => Ended::DaemonDied(exit),
            }
        }
        Work::Admin(req) => {
            let answer = async {
                let channel = match opened {
                    Some(c) => c,
                    None => connect::connect_target(target).await?,
                };
                client::admin::run(channel, &req, &mut std::io::stdout()).await
            };
            tokio::select! {
                res = answer => match res {
                    Ok(()) => Ended::Code(0),
                    Err(e) => match connect::explain_error(&e, target) {
                        Some(why) => Ended::Failed(anyhow::anyhow!("{why}")),
                        None => Ended::Failed(e),
                    },
                },
                // Dropping the call cancels it; a prune stops where it is.
                Some(sig) = signals.next() => Ended::Code(128 + sig),
                exit = &mut daemon_exit => Ended::DaemonDied(exit),
            }
        }
        Work::Exec(argv) => {
            let mut cmd = Proc::new(&argv[0]);
            cmd.args(&argv[1..])
                .env("BUILDKIT_HOST", &target.addr)
                .stdin(Stdio::inherit());
            let mut child = match reaper.spawn(&mut cmd) {
                Ok(c) => c,
                Err(e) => {
                    return Ended::Failed(anyhow::anyhow!(
                        "cannot run {:?}: {e}; check the command and PATH",
                        argv[0]
                    ))
                }
            };
            tokio::select! {
                exit = child.wait() => Ended::Code(exit.code()),
                Some(sig) = signals.next() => {
                    // Pass the signal on so the work can stop cleanly (buildctl cancels the build), then insist.
                    child.signal(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        child.signal(Signal::SIGKILL);
                        child.wait().await;
                    }
                    Ended::Code(128 + sig)
                }
                exit = &mut daemon_exit => {
                    child.terminate(grace).await;
                    Ended::DaemonDied(exit)
                }
            }
        }
        Work::Serve(listen) => {
            crate::say_out!("{}", target.addr);
            for l in listen {
                crate::say_out!("{l}");
            }
            tokio::select! {
                Some(sig) = signals.next() => Ended::Code(128 + sig),
                exit = &mut daemon_exit => Ended::DaemonDied(exit),
            }
        }
    }
}

fn install_signals() -> Result<Signals> {
    Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")
}

/// Work against an existing daemon: nothing to start or stop. Of a pool, the first daemon in
/// the route key's order that serves, named in one line.
async fn remote(pick: Pick, work: Work, grace: Duration) -> Result<i32> {
    let reaper = Reaper::start().context("cannot become a child subreaper")?;
    let mut signals = install_signals()?;
    let (target, opened) = match pick {
        Pick::One(t) => (t, None),
        Pick::Pool { ordered, key } => {
            let chosen = tokio::select! {
                c = client::failover::first_serving(&ordered) => c,
                Some(sig) = signals.next() => {
                    signals.handle().close();
                    return Ok(128 + sig);
                }
            };
            let chosen = match chosen {
                Ok(c) => c,
                Err(e) => {
                    signals.handle().close();
                    return Err(e);
                }
            };
            if announces(&work) {
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
            (ordered[chosen.index].clone(), Some(chosen.channel))
        }
    };
    let ended = perform(
        work,
        &target,
        opened,
        &reaper,
        &mut signals,
        grace,
        std::future::pending(),
    )
    .await;
    signals.handle().close();
    reaper::kill_all_descendants(Duration::from_secs(10)).await;
    match ended {
        Ended::Code(c) => Ok(c),
        Ended::Failed(e) => Err(e),
        Ended::DaemonDied(_) => unreachable!("a remote daemon is not watched"),
    }
}

/// Whether the work's output leaves room for bkrun's own start-up lines on stderr: not when
/// the user asked for quiet, nor for rawjson, which tools read line by line.
fn announces(work: &Work) -> bool {
    match work {
        Work::Build(job) => !matches!(
            job.spec.progress.mode,
            progress::Mode::Quiet | progress::Mode::RawJson
        ),
        _ => true,
    }
}

/// First report after this long without the daemon serving, then every REPEAT.
const SLOW_START: Duration = Duration::from_secs(3);
const SLOW_START_REPEAT: Duration = Duration::from_secs(10);

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

/// The one line for a daemon that ended while the work ran (not asked to): how it ended, and
/// what to look at.
fn died(exit: Exit, building: bool) -> String {
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

async fn supervise(plan: Plan, work: Work) -> Result<i32> {
    let debug = plan.settings.debug;
    let grace = plan.settings.stop_timeout;
    let announce = announces(&work);
    let reaper = Reaper::start().context("cannot become a child subreaper")?;
    let mut signals = install_signals()?;
    let handle = signals.handle();
    let state_dir = plan.paths.state_dir.clone();
    statelock::create_state_dir(&state_dir)?;
    // Remembered in the state dir for this buildkitd file: `buildkitd --version` run beside the
    // daemon's own start slows that start (BENCHMARKS.md). Only a first run asks.
    let version = announce.then(|| {
        let buildkitd = plan.buildkitd.clone();
        let cache = state_dir.join(doctor::VERSION_CACHE);
        tokio::task::spawn_blocking(move || doctor::version_cached(&buildkitd, &cache))
    });
    let lock_timeout = plan.settings.lock_timeout;
    let state = tokio::select! {
        s = StateLock::acquire(&state_dir, lock_timeout, |holder| {
            crate::say!(
                "bkrun: state dir {} is in use by {holder}; waiting up to {}s for it (--lock-timeout)",
                state_dir.display(),
                lock_timeout.as_secs()
            );
        }) => s?,
        Some(sig) = signals.next() => {
            handle.close();
            return Ok(128 + sig);
        }
    };
    let started = Instant::now();
    let mut daemon = Daemon::start(&plan, &reaper, std::sync::Arc::new(RealHost), state)?;
    if !daemon.swept.is_empty() && announce {
        crate::say!("bkrun: {}", daemon.swept);
    }
    log(debug, || {
        format!(
            "started {} (pid {})",
            shell_words::join(daemon.argv()),
            daemon.pid()
        )
    });
    if let Some(version) = version {
        let v = match tokio::time::timeout(Duration::from_secs(2), version).await {
            Ok(Ok(Some(v))) => format!("buildkitd {v}"),
            _ => "buildkitd".into(),
        };
        crate::say!(
            "bkrun: starting {v}, {} ({})",
            plan.mode(),
            plan.decision.why
        );
    }

    let log_path = daemon.log_path().to_path_buf();
    let addr = daemon.addr.clone();
    let ready = tokio::select! {
        r = daemon.wait_ready(plan.settings.ready_timeout, client::probe::until_serving(addr)) => r,
        _ = report_slow_start(started, plan.settings.ready_timeout, log_path.clone()), if announce => unreachable!("never resolves"),
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
            // A daemon that could not start in this container usually says why in its log:
            // name the pod-spec change first.
            let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let err = match diagnose::explain(&log_text, &plan.facts) {
                Some(why) => anyhow::anyhow!("buildkitd exited before it was ready: {why}"),
                None => not_ready.into_error(daemon.argv()),
            };
            handle.close();
            return Err(daemon.fail(err).await);
        }
    }

    let target = Target::unix(&daemon.addr);
    if let Some(pid) = daemon.unclean_before() {
        let repaired = async {
            let channel = connect::connect_target(&target).await?;
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
    let building = matches!(work, Work::Build(_));
    let ended = perform(
        work,
        &target,
        None,
        &reaper,
        &mut signals,
        grace,
        daemon.exited(),
    )
    .await;
    handle.close();
    let code = match ended {
        Ended::Code(c) => c,
        Ended::Failed(e) => {
            daemon.stop().await;
            return Err(e);
        }
        Ended::DaemonDied(exit) => {
            // Under rootlesskit the exit seen is rootlesskit's; buildkitd's own is in the log.
            let log_text = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
            let exit = diagnose::rootless_child_exit(&log_text).unwrap_or(exit);
            let err = anyhow::anyhow!("{}", died(exit, building));
            return Err(daemon.fail(err).await);
        }
    };
    let t = Instant::now();
    let exit = daemon.stop().await;
    log(debug, || {
        format!(
            "daemon stopped ({exit}) in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        )
    });
    Ok(code)
}
