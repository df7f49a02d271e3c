//! Settling an invocation once: the command line, bkrun.toml, the environment and the host read into one immutable value (the work, where it runs: a daemon bkrun supervises or an existing daemon or pool, the settings and paths) before anything starts. Nothing after this reads a flag again or patches the settings.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::target::{describe, listener_flags, remote_targets};
use super::{log, write_stdout};
use crate::cli::{Cli, Command, DebugCommand, GlobalArgs};
use crate::client::admin::Request;
use crate::client::connect::{self, Target};
use crate::config::{AddrSource, Remote, Settings};
use crate::daemon::{apparmor, doctor, Plan};
use crate::host::{which, Host};
use crate::request::build::BuildSpec;
use crate::request::routekey;
use crate::{client, daemon, progress, request};

/// What settling found.
pub(super) enum Settled {
    /// Answered while settling (`config`, `doctor`, a command not found): the exit code.
    Answered(i32),
    Run(Box<Invocation>),
    /// `bkrun push`, checked: it needs no daemon.
    Push(Box<super::push::PushJob>),
}

/// A whole invocation, settled: what to do and where.
pub(super) struct Invocation {
    pub work: Work,
    pub place: Place,
    /// How long work and daemon get to stop after SIGTERM.
    pub grace: Duration,
}

/// Where the work runs.
pub(super) enum Place {
    /// A daemon bkrun starts and supervises, as planned (its settings and paths).
    Supervised(Box<Plan>),
    /// An existing daemon: one, or a pool in the route key's order.
    Remote(Pick),
}

/// The existing daemon to use: one, or a pool in the route key's order.
pub(super) enum Pick {
    One(Target),
    Pool { ordered: Vec<Target>, key: String },
}

/// The work to do once the daemon serves.
pub(super) enum Work {
    /// A build driven by bkrun's own client.
    Build(Box<BuildJob>),
    /// Run a program with BUILDKIT_HOST set.
    Exec(Vec<String>),
    /// Ask the daemon about its workers, version or cache, or prune the cache.
    Admin(Request),
    /// Keep the daemon up until a signal; also listening on these addresses.
    Serve(Vec<String>),
}

impl Work {
    /// Whether the work's output leaves room for bkrun's own start-up lines on stderr: not
    /// when the user asked for quiet, nor for rawjson, which tools read line by line.
    pub fn announces(&self) -> bool {
        match self {
            Work::Build(job) => !job.quiet(),
            _ => true,
        }
    }
}

/// A build and what comes with it from the grammar it was typed in.
pub(super) struct BuildJob {
    pub spec: BuildSpec,
    /// Files written from the exporter's response once the build succeeded.
    pub after: request::docker::AfterBuild,
    /// A context or Dockerfile read from stdin; removed when the job ends.
    _stdin_dir: Option<tempfile::TempDir>,
    /// The worker of the daemon bkrun starts, to say where unpushed images went (None: a
    /// remote daemon's, or nothing to say in this progress mode).
    pub announce_images: Option<crate::config::Worker>,
    /// The build's parts made while the daemon bkrun started was not ready yet (lifecycle).
    pub prepared: Option<Result<crate::client::solve::Prepared>>,
}

impl BuildJob {
    fn quiet(&self) -> bool {
        matches!(
            self.spec.progress.mode,
            progress::Mode::Quiet | progress::Mode::RawJson
        )
    }
}

/// Reads `cli`, bkrun.toml and the host into the invocation to run.
pub(super) fn settle(cli: &Cli, host: &dyn Host) -> Result<Settled> {
    let mut settings = Settings::load(&(&cli.global).into(), host)?;
    crate::timeline::mark("loaded");
    let mut work = match work(cli, &mut settings, host)? {
        Step::Answered(code) => return Ok(Settled::Answered(code)),
        Step::Push(job) => return Ok(Settled::Push(job)),
        Step::Work(w) => w,
    };
    crate::timeline::mark("specified");
    let grace = settings.stop_timeout;
    let place = match existing_daemon(&cli.global, &settings, &work)? {
        Some(pick) => Place::Remote(pick),
        None => match fallback(&cli.global, &settings, &mut work, host)? {
            Some(pick) => Place::Remote(pick),
            None => Place::Supervised(Box::new(plan(settings, &work, host)?)),
        },
    };
    Ok(Settled::Run(Box::new(Invocation { work, place, grace })))
}

enum Step {
    Answered(i32),
    Push(Box<super::push::PushJob>),
    Work(Work),
}

/// The work the command asks for, with the settings it changes (kaniko's registry flags,
/// `bkrun daemon`'s listeners) folded in; `config` and `doctor` are answered here.
fn work(cli: &Cli, settings: &mut Settings, host: &dyn Host) -> Result<Step> {
    let work = match &cli.command {
        Command::Config => return config(cli, settings, host),
        Command::Doctor {
            apparmor_profile: true,
            ..
        } => {
            let programs = apparmor::programs(host, &settings.buildkitd, &settings.rootlesskit);
            write_stdout(&apparmor::profile(&programs));
            return Ok(Step::Answered(0));
        }
        Command::Doctor { format, .. } => {
            // Never starts a daemon: facts, verdicts and versions only.
            let report = doctor::Report::gather(settings, host);
            let text = match doctor::Format::from(*format) {
                doctor::Format::Text => report.text(),
                doctor::Format::Json => format!("{:#}\n", report.json()),
            };
            write_stdout(&text);
            return Ok(Step::Answered(report.exit_code()));
        }
        Command::Completion { .. } | Command::Man | Command::Kube(_) => {
            unreachable!("answered from the command line alone (run/meta.rs)")
        }
        Command::Exec { command } => {
            if which(&command[0], host.env("PATH").as_deref()).is_none() {
                crate::say!(
                    "bkrun: cannot run {:?}: command not found; check PATH or give its full path",
                    command[0]
                );
                return Ok(Step::Answered(127));
            }
            Work::Exec(command.clone())
        }
        Command::Build(args) => {
            // Settled here, before a daemon exists: a bad --output fails in milliseconds.
            let n = request::docker::normalize(&(&**args).into(), &mut std::io::stdin().lock())?;
            Work::Build(Box::new(build_job(n, settings, host)?))
        }
        Command::Kaniko(k) => kaniko(k, settings, host)?,
        Command::Push(p) => {
            return Ok(Step::Push(Box::new(super::push::settle(
                p, settings, host,
            )?)))
        }
        Command::Debug { command } => debug(command, host)?,
        Command::Du(l) => Work::Admin(Request::DiskUsage {
            filters: l.filter.clone(),
            verbose: l.verbose,
        }),
        Command::Prune(p) => {
            let mut flags = client::admin::PruneFlags::from(p);
            // Already checked as a size by Settings::load; "0" keeps no free space, as in buildctl.
            flags.min_free_space = cli
                .global
                .min_free_space
                .as_deref()
                .and_then(|v| crate::gocompat::sizes::parse_size(v).ok());
            Work::Admin(Request::Prune((&flags).into()))
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
    Ok(Step::Work(work))
}

/// `bkrun config`: what the next command would do.
fn config(cli: &Cli, settings: &Settings, host: &dyn Host) -> Result<Step> {
    let key = || {
        match given_route_key(&cli.global) {
        Some(k) => (k, "--route-key".to_string()),
        None => (
            routekey::for_dir(&cwd()),
            "the current directory's; a build routes by its context and platforms, --route-key overrides".to_string(),
        ),
    }
    };
    let mut text = describe(settings, host, &cli.global, key)?;
    text.push_str(&registry_cache(settings, host));
    text.push_str(&cache_mounts(settings, host));
    text.push_str(&credentials(host));
    text.push_str(&summary(settings, host));
    write_stdout(&text);
    Ok(Step::Answered(0))
}

/// `bkrun config`'s lines for registry logins: each source with the registries it knows, the
/// cloud identities set up here, and for each registry named anywhere the source that answers
/// it (never a secret); a source that cannot be read says why.
fn credentials(host: &dyn Host) -> String {
    let sources = crate::creds::locate(&|k| host.env_raw(k));
    let store = match crate::creds::Store::open(&sources, Default::default()) {
        Ok(s) => s,
        Err(e) => return format!("credentials:     not usable: {e:#}\n"),
    };
    let mut s = store.describe();
    for (registry, from) in store.registries() {
        s.push_str(&format!("registry login:  {registry} from {from}\n"));
    }
    s
}

/// `bkrun config`'s line for the registry cache BKRUN_CACHE or bkrun.toml's `cache` asks for
/// (a build's --cache flags would change it), its branch read as a build in the current
/// directory would; nothing when neither is set.
fn registry_cache(settings: &Settings, host: &dyn Host) -> String {
    let dir = cwd();
    let given = request::regcache::Given {
        from_file: settings.build_defaults.cache.as_deref(),
        checkout: Some(&dir),
        ..Default::default()
    };
    match request::regcache::settle(given, &|k| host.env(k)) {
        Ok(Some(r)) => format!("registry cache:  {}\n", r.describe()),
        Ok(None) => String::new(),
        Err(e) => format!("registry cache:  not usable: {e}\n"),
    }
}

/// `bkrun config`'s line for where BKRUN_CACHE_MOUNTS or bkrun.toml's `cache_mounts` keeps RUN
/// cache mounts; nothing when neither is set.
fn cache_mounts(settings: &Settings, host: &dyn Host) -> String {
    let env = |k: &str| host.env_raw(k);
    match request::cachemounts::resolve(None, None, &env, &settings.build_defaults) {
        Ok(Some(c)) => format!(
            "cache mounts:    {} (from {}), mounts over {} not saved\n",
            c.store,
            c.source,
            crate::cachemount::human(c.max_size)
        ),
        Ok(None) => String::new(),
        Err(e) => format!("cache mounts:    not usable: {e}\n"),
    }
}

/// `bkrun config`'s lines for where a build's summary goes (the CI's places found in the
/// environment, bkrun.toml's `summary`), bkrun.toml's build timeout, and the free space below
/// which the start warns.
fn summary(settings: &Settings, host: &dyn Host) -> String {
    let none = request::flags::BuildFlags::default();
    let defaults = &settings.build_defaults;
    let mut text = match request::summary::resolve(&none, defaults, host) {
        Ok(s) => format!("summary:         {}\n", s.describe()),
        Err(e) => format!("summary:         not usable: {e}\n"),
    };
    match request::summary::build_timeout(&none, defaults) {
        Ok(Some(t)) => text.push_str(&format!(
            "build timeout:   {} (build_timeout in bkrun.toml)\n",
            crate::gocompat::durations::go_duration(t.as_nanos() as i64)
        )),
        Ok(None) => {}
        Err(e) => text.push_str(&format!("build timeout:   not usable: {e}\n")),
    }
    text.push_str(&format!(
        "min free space:  {} ({})\n",
        crate::cachemount::human(settings.min_free_space),
        settings.min_free_space_source
    ));
    text
}

/// kaniko's executor: its build, and its registry flags as the started daemon's configuration.
fn kaniko(k: &crate::cli::KanikoArgs, settings: &mut Settings, host: &dyn Host) -> Result<Work> {
    let t = request::kaniko::translate(&k.into())?;
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
    Ok(Work::Build(Box::new(build_job(t.build, settings, host)?)))
}

fn debug(command: &DebugCommand, host: &dyn Host) -> Result<Work> {
    Ok(match command {
        DebugCommand::Workers(l) => Work::Admin(Request::Workers {
            filters: l.filter.clone(),
            verbose: l.verbose,
        }),
        DebugCommand::Info => Work::Admin(Request::Info),
        DebugCommand::Buildctl(args) => {
            let mut argv = vec![buildctl(host)?, "debug".into()];
            argv.extend(args.iter().cloned());
            Work::Exec(argv)
        }
    })
}

/// Any grammar's command line, normalized into buildctl's, checked into a spec.
fn build_job(
    n: request::docker::Normalized,
    settings: &Settings,
    host: &dyn Host,
) -> Result<BuildJob> {
    let spec = request::build::resolve(&n.args, settings, host)?;
    if let Some(r) = &spec.registry_cache {
        log(settings.debug, || {
            format!("registry cache: {}", r.describe())
        });
    }
    if let Some(c) = &spec.cache_mounts {
        log(settings.debug, || {
            format!("cache mounts: {} (from {})", c.store, c.source)
        });
    }
    request::dests::check_after(&n.after, host)?;
    let mut job = BuildJob {
        spec,
        after: n.after,
        _stdin_dir: n.stdin_dir,
        announce_images: None,
        prepared: None,
    };
    if !job.quiet() {
        for note in &n.notes {
            crate::say!("bkrun: {note}");
        }
        job.announce_images = settings.remote.is_none().then(|| settings.worker.clone());
    }
    Ok(job)
}

/// The existing daemon (or pool) to use, when the settings name one.
fn existing_daemon(g: &GlobalArgs, settings: &Settings, work: &Work) -> Result<Option<Pick>> {
    let Some(r) = &settings.remote else {
        return Ok(None);
    };
    if let Work::Serve(_) = work {
        // `bkrun daemon` in BuildKit's rootless image serves at the image's BUILDKIT_HOST; a
        // bkrun.toml shared by clients and daemons names the pool the daemon is part of.
        if matches!(r.source, AddrSource::BuildkitHost | AddrSource::ConfigFile) {
            return Ok(None);
        }
        bail!("bkrun daemon starts its own daemon: drop {}", r.source)
    }
    use_remote(g, settings, r, work).map(Some)
}

/// The pool of BKRUN_FALLBACK_ADDR or bkrun.toml's `fallback_addr`, for a build or `exec`
/// where no daemon can start (src/daemon/fallback.rs judges), said in one line with why and
/// where. Other work (`prune` above all) never reaches a shared pool unasked.
fn fallback(
    g: &GlobalArgs,
    settings: &Settings,
    work: &mut Work,
    host: &dyn Host,
) -> Result<Option<Pick>> {
    let doing = match work {
        Work::Build(_) => "building on",
        Work::Exec(_) => "running the command against",
        _ => return Ok(None),
    };
    let Some(f) = daemon::fallback::judge_here(settings, host) else {
        return Ok(None);
    };
    let pool = f.pool();
    if !f.is_used() {
        log(settings.debug, || {
            format!(
                "fallback {} (from {}) not used: {}",
                pool.shown(),
                pool.source,
                f.why()
            )
        });
        return Ok(None);
    }
    // Said before the pool is checked or dialled, so a refusal that follows has its context.
    let line = f.line(doing);
    if work.announces() {
        crate::say!("bkrun: {line}");
        if let Some(w) = not_for_the_pool(settings) {
            crate::say!("bkrun: warning: {w}");
        }
    } else {
        log(settings.debug, || line.clone());
    }
    if let Work::Build(job) = work {
        // Unpushed images stay in the pool's daemon, not in a worker of this machine's.
        job.announce_images = None;
    }
    use_remote(g, settings, pool, work).map(Some)
}

/// The settings that configure a daemon bkrun starts, which the pool's daemons do not take: said
/// so a build that needs them (an insecure registry, say) is not a mystery.
fn not_for_the_pool(settings: &Settings) -> Option<String> {
    let mut given = Vec::new();
    if !settings.buildkitd_flags.is_empty() {
        given.push("buildkitd's flags (BUILDKITD_FLAGS, --buildkitd-flags or buildkitd_flags)");
    }
    if settings.daemon_config.is_some() {
        given.push("bkrun.toml's [buildkitd] table or kaniko's registry flags");
    }
    (!given.is_empty()).then(|| {
        format!(
            "{} configure only a daemon bkrun starts, not the pool's: set them on the pool's daemons (bkrun kube --buildkitd-flags, --buildkitd-config)",
            given.join(" and ")
        )
    })
}

/// The daemon or pool `r`, every address checked before any is dialled (so a typo in the third
/// fails now), ordered for `work` when it is a pool.
fn use_remote(g: &GlobalArgs, settings: &Settings, r: &Remote, work: &Work) -> Result<Pick> {
    let targets = remote_targets(g, r)?;
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
    Ok(pick(g, r, targets, work))
}

/// One daemon, or a pool ordered by the route key.
fn pick(g: &GlobalArgs, r: &Remote, targets: Vec<Target>, work: &Work) -> Pick {
    if !r.is_pool() {
        return Pick::One(targets.into_iter().next().expect("a remote has an address"));
    }
    let key = given_route_key(g).unwrap_or_else(|| match work {
        Work::Build(job) => routekey::for_build(&job.spec, &cwd()),
        _ => routekey::for_dir(&cwd()),
    });
    let ordered = crate::pool::order(&key, &r.addrs)
        .into_iter()
        .map(|i| targets[i].clone())
        .collect();
    Pick::Pool { ordered, key }
}

/// The daemon bkrun starts for `work`: the settings the build grants it, and the plan.
fn plan(mut settings: Settings, work: &Work, host: &dyn Host) -> Result<Plan> {
    if let Some(why) = &settings.buildkit_host_ignored {
        log(settings.debug, || why.clone());
    }
    if let Work::Build(job) = work {
        settings.entitlements = request::entitlement::daemon_grants(&job.spec.allow);
        // The daemon runs here, so this machine's emulators are the build's. A handler without
        // the F flag fails in build containers with a misleading "no such file or directory".
        if let Some(platforms) = job.spec.opts.get("platform") {
            for why in crate::host::binfmt::unusable_platforms(platforms, &host.binfmt()) {
                crate::say!("bkrun: warning: {why}");
            }
        }
    }
    // Its probe, if pending, runs beside the daemon's start; lifecycle confirms the mode then.
    let plan = Plan::deferring_probe(&settings, host, matches!(work, Work::Serve(_)))?;
    log(settings.debug, || {
        format!("mode {} ({})", plan.mode(), plan.decision.reason)
    });
    Ok(plan)
}

/// --route-key or BKRUN_ROUTE_KEY, unless empty.
fn given_route_key(g: &GlobalArgs) -> Option<String> {
    g.route_key.clone().filter(|k| !k.is_empty())
}

/// The directory bkrun runs in, from which relative contexts and the default route key are read.
fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// buildctl runs the `debug` subcommands bkrun does not answer itself.
fn buildctl(host: &dyn Host) -> Result<String> {
    let name = host.env("BUILDCTL").unwrap_or_else(|| "buildctl".into());
    match host.which(&name) {
        Some(p) => Ok(p.display().to_string()),
        None => bail!("cannot find buildctl ({name:?} is not on PATH): install BuildKit's buildctl (scripts/setup does) or set BUILDCTL"),
    }
}
