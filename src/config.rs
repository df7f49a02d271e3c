//! bkrun.toml → settings (serde + toml), merged with flags and the shell wrapper's variables; its [buildkitd] table becomes the daemon's buildkitd.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::Host;

pub mod listen;
mod remote;

pub use remote::{choose_fallback, choose_remote, AddrSource, Remote};

/// What a bkrun.toml may say. Unknown keys are refused so a typo never silently does nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub mode: Option<ModeArg>,
    /// BuildKit's state dir (the cache).
    pub root: Option<PathBuf>,
    /// Where the daemon's socket goes.
    pub socket_dir: Option<PathBuf>,
    /// Seconds to wait for the daemon to serve.
    pub ready_timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL at teardown.
    pub stop_timeout: Option<f64>,
    /// Seconds to wait for another run holding the state dir (0: do not wait).
    pub lock_timeout: Option<f64>,
    /// buildkitd's worker: "oci" or "containerd".
    pub worker: Option<WorkerArg>,
    pub containerd_address: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    /// The directory holding the state dir and the daemon's temp files, at the same path on the node.
    pub containerd_shared_dir: Option<PathBuf>,
    /// The buildkitd binary.
    pub buildkitd_path: Option<String>,
    /// The rootlesskit binary.
    pub rootlesskit_path: Option<String>,
    /// Extra buildkitd flags.
    pub buildkitd_flags: Option<Vec<String>>,
    /// Extra rootlesskit flags (rootless modes).
    pub rootlesskit_flags: Option<Vec<String>>,
    /// The `[buildkitd]` table, written out as the daemon's buildkitd.toml.
    pub buildkitd: Option<DaemonConfig>,
    /// Existing daemons to use instead of starting one: an address, or a list (each entry may be
    /// a comma list or a `{A..B}` pattern); below --addr, BKRUN_ADDR and BUILDKIT_HOST.
    pub addr: Option<AddrList>,
    /// Daemons to build on when no daemon mode can work here and no mode was asked for (the
    /// same grammar as `addr`); below BKRUN_FALLBACK_ADDR.
    pub fallback_addr: Option<AddrList>,
    /// Where RUN cache mounts are kept between runs (a directory or registry://REF); below
    /// --cache-mounts and BKRUN_CACHE_MOUNTS.
    pub cache_mounts: Option<String>,
    /// The largest cache mount saved (e.g. "2g").
    pub cache_mounts_max_size: Option<String>,
    /// The registry cache in one setting, as --cache REF; below --cache and BKRUN_CACHE.
    pub cache: Option<String>,
    /// As --summary FILE (or "none"); below the flag.
    pub summary: Option<String>,
    /// As --summary-format: "markdown" or "json".
    pub summary_format: Option<String>,
    /// As --build-timeout: a Go duration ("45m").
    pub build_timeout: Option<String>,
    /// Warn before the daemon starts when the state dir's filesystem has less free (e.g.
    /// "1GiB"; "0" never warns); below --min-free-space.
    pub min_free_space: Option<String>,
}

/// `addr = "tcp://…"` or `addr = ["tcp://…", …]` in bkrun.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AddrList {
    One(String),
    Many(Vec<String>),
}

impl AddrList {
    fn values(&self) -> Vec<String> {
        match self {
            AddrList::One(a) => vec![a.clone()],
            AddrList::Many(v) => v.clone(),
        }
    }
}

/// The subset of buildkitd.toml pipelines set: registries and garbage collection.
#[derive(Debug, Default, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// Per registry host: mirrors, plain http, insecure TLS, extra CAs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry: BTreeMap<String, RegistryConfig>,
    /// Cache size to keep when garbage collecting, e.g. "10GB" or "20%".
    #[serde(skip_serializing)]
    pub gc_keep_storage: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
}

impl DaemonConfig {
    /// The buildkitd.toml text.
    pub fn to_toml(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            base: &'a DaemonConfig,
            #[serde(skip_serializing_if = "Option::is_none")]
            worker: Option<Workers>,
        }
        #[derive(Serialize)]
        struct Workers {
            oci: Gc,
            containerd: Gc,
        }
        #[derive(Serialize, Clone)]
        struct Gc {
            gc: bool,
            gckeepstorage: String,
        }
        let worker = self.gc_keep_storage.as_ref().map(|k| {
            let gc = Gc {
                gc: true,
                gckeepstorage: k.clone(),
            };
            Workers {
                oci: gc.clone(),
                containerd: gc,
            }
        });
        Ok(toml::to_string(&Out { base: self, worker })?)
    }
}

/// The mode asked for: on the command line, in $BKRUN_MODE or in bkrun.toml (daemon::mode
/// judges it against the host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    #[default]
    Auto,
    Privileged,
    Rootless,
    RootlessStrict,
}

/// The worker asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerArg {
    Oci,
    Containerd,
}

/// The containerd worker's defaults: containerd's own socket, and the namespace buildx and
/// BuildKit's examples use.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "buildkit";

/// Which worker builds: the OCI worker (runc, started by buildkitd), or the node's containerd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Worker {
    Oci,
    Containerd {
        address: PathBuf,
        namespace: String,
        /// Where everything buildkitd hands containerd by path lives (None: the state dir).
        shared_dir: Option<PathBuf>,
    },
}

/// The global flags as plain values (src/cli/ maps its parsed flags into this): what
/// [`Settings::load`] and the other commands read of the command line.
#[derive(Debug, Clone, Default)]
pub struct GlobalFlags {
    pub mode: Option<ModeArg>,
    pub root: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub buildkitd_flags: Option<String>,
    pub ready_timeout: Option<f64>,
    pub lock_timeout: Option<f64>,
    pub min_free_space: Option<String>,
    pub worker: Option<WorkerArg>,
    pub containerd_address: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub containerd_shared_dir: Option<PathBuf>,
    pub debug: bool,
    pub timeout: Option<f64>,
    pub wait: bool,
    pub addr: Vec<String>,
    pub route_key: Option<String>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub tlsservername: Option<String>,
    pub tlsdir: Option<PathBuf>,
    pub insecure_plaintext: bool,
    pub connect_retry: Option<f64>,
    /// Invoked as buildctl-daemonless.sh, which never reads BUILDKIT_HOST.
    pub as_daemonless_sh: bool,
}

/// The effective settings for one run: flags over environment over bkrun.toml over defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: ModeArg,
    pub root: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Where the ready timeout came from, for `bkrun config`.
    pub ready_timeout_source: &'static str,
    pub stop_timeout: Duration,
    /// How long to wait for another run that holds the state dir; zero: fail at once.
    pub lock_timeout: Duration,
    /// Warn before the start when the state dir's filesystem has less free than this (0: never).
    pub min_free_space: u64,
    /// Where it came from, for `bkrun config`.
    pub min_free_space_source: &'static str,
    /// Which worker buildkitd runs builds with.
    pub worker: Worker,
    pub buildkitd: String,
    pub rootlesskit: String,
    pub buildkitd_flags: Vec<String>,
    pub rootlesskit_flags: Vec<String>,
    pub daemon_config: Option<DaemonConfig>,
    /// Entitlements the daemon bkrun starts grants (`--allow-insecure-entitlement`): those the
    /// work asks for, set by the run layer; the daemon half knows no builds.
    pub entitlements: Vec<String>,
    pub config_file: Option<PathBuf>,
    pub debug: bool,
    /// An existing daemon to use instead of starting one, and where its address came from.
    pub remote: Option<Remote>,
    /// Why a BUILDKIT_HOST in the environment is not used, for `bkrun config` and --debug.
    pub buildkit_host_ignored: Option<String>,
    /// The pool to build on where no daemon mode can work (src/daemon/fallback.rs decides).
    pub fallback: Option<Remote>,
    /// bkrun.toml's defaults for build flags (below the flag and its environment variable).
    pub build_defaults: BuildDefaults,
}

/// bkrun.toml's settings that are build flags' defaults: the request layer applies them.
#[derive(Debug, Clone, Default)]
pub struct BuildDefaults {
    pub cache_mounts: Option<String>,
    pub cache_mounts_max_size: Option<String>,
    pub cache: Option<String>,
    pub summary: Option<String>,
    pub summary_format: Option<String>,
    pub build_timeout: Option<String>,
}

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A build's layers, its cache and the image export together need room; below 1 GiB most
/// builds of a real image fail part way with ENOSPC.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 1 << 30;
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for another pipeline's build on a shared cache to finish, short enough that a
/// stuck one is reported within a CI step's usual limits.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

impl Settings {
    pub fn load(args: &GlobalFlags, host: &dyn Host) -> Result<Settings> {
        let (file, config_file) = match find_config(args, host) {
            Some(path) => (read_config(&path)?, Some(path)),
            None => (FileConfig::default(), None),
        };
        let buildkitd_flags = buildkitd_flags(
            args,
            host,
            file.buildkitd_flags.clone().unwrap_or_default(),
            config_file.as_deref(),
        )?;
        let (ready_timeout, ready_timeout_source) = ready_timeout(args, host, file.ready_timeout)?;
        let stop_timeout = match file.stop_timeout {
            Some(s) => secs("stop_timeout in bkrun.toml", s)?,
            None => DEFAULT_STOP_TIMEOUT,
        };
        let lock_timeout = match (args.lock_timeout, file.lock_timeout) {
            (Some(s), _) => non_negative_secs("--lock-timeout", s)?,
            (None, Some(s)) => non_negative_secs("lock_timeout in bkrun.toml", s)?,
            (None, None) => DEFAULT_LOCK_TIMEOUT,
        };
        let worker = worker(args, &file)?;
        let (min_free_space, min_free_space_source) = min_free_space(args, &file)?;
        let daemon_config = file.buildkitd;
        let (remote, buildkit_host_ignored) = choose_remote(args, host, file.addr.as_ref())?;
        let fallback = choose_fallback(host, file.fallback_addr.as_ref())?;
        if daemon_config.is_some() && has_flag(&buildkitd_flags, "--config") {
            bail!("both bkrun.toml's [buildkitd] table and a buildkitd --config flag are set: keep one of them");
        }
        Ok(Settings {
            mode: args.mode.or(file.mode).unwrap_or_default(),
            root: args.root.clone().or(file.root),
            socket_dir: file.socket_dir,
            ready_timeout,
            ready_timeout_source,
            stop_timeout,
            lock_timeout,
            min_free_space,
            min_free_space_source,
            worker,
            buildkitd: host
                .env("BUILDKITD")
                .or(file.buildkitd_path)
                .unwrap_or_else(|| "buildkitd".into()),
            rootlesskit: host
                .env("ROOTLESSKIT")
                .or(file.rootlesskit_path)
                .unwrap_or_else(|| "rootlesskit".into()),
            buildkitd_flags,
            rootlesskit_flags: file.rootlesskit_flags.unwrap_or_default(),
            daemon_config,
            entitlements: Vec::new(),
            config_file,
            debug: args.debug,
            remote,
            buildkit_host_ignored,
            fallback,
            build_defaults: BuildDefaults {
                cache_mounts: file.cache_mounts,
                cache_mounts_max_size: file.cache_mounts_max_size,
                cache: file.cache,
                summary: file.summary,
                summary_format: file.summary_format,
                build_timeout: file.build_timeout,
            },
        })
    }
}

/// The free space below which the start warns: --min-free-space, bkrun.toml, or 1 GiB.
fn min_free_space(args: &GlobalFlags, file: &FileConfig) -> Result<(u64, &'static str)> {
    let (given, from) = match (&args.min_free_space, &file.min_free_space) {
        (Some(v), _) => (v, "--min-free-space"),
        (None, Some(v)) => (v, "min_free_space in bkrun.toml"),
        (None, None) => return Ok((DEFAULT_MIN_FREE_SPACE, "default")),
    };
    match crate::gocompat::sizes::parse_size(given) {
        Ok(n) if n >= 0 => Ok((n as u64, from)),
        _ => bail!("{from} {given:?} is not a size: write e.g. 1GiB, 500MB, or 0 to never warn"),
    }
}

/// buildkitd's flags: bkrun.toml's `file_flags`, then those of --buildkitd-flags (or else
/// BUILDKITD_FLAGS), each source checked by name for a listener it may not open.
fn buildkitd_flags(
    args: &GlobalFlags,
    host: &dyn Host,
    file_flags: Vec<String>,
    config_file: Option<&Path>,
) -> Result<Vec<String>> {
    let (env_flags, env_source) = match &args.buildkitd_flags {
        Some(f) => (Some(f.clone()), "--buildkitd-flags"),
        None => (host.env("BUILDKITD_FLAGS"), "BUILDKITD_FLAGS"),
    };
    let env_flags = match env_flags {
        Some(f) => shell_words::split(&f).with_context(|| {
            format!(
                "BUILDKITD_FLAGS/--buildkitd-flags has unbalanced quotes: fix the quoting in {f:?}"
            )
        })?,
        None => Vec::new(),
    };
    // Settled here, before anything starts: an address off loopback without mutual TLS is
    // refused whichever of these named it (src/daemon/listen.rs).
    let file_source = match config_file {
        Some(p) => format!("buildkitd_flags in {}", p.display()),
        None => "buildkitd_flags in bkrun.toml".into(),
    };
    listen::check_daemon_flags(
        &[
            listen::FlagSource {
                name: file_source,
                flags: &file_flags,
            },
            listen::FlagSource {
                name: env_source.into(),
                flags: &env_flags,
            },
        ],
        host.env("BUILDKITD_DEBUGADDR").as_deref(),
        args.insecure_plaintext,
    )?;
    let mut buildkitd_flags = file_flags;
    buildkitd_flags.extend(env_flags);
    Ok(buildkitd_flags)
}

/// How long to wait for the daemon to serve, and which setting said so: --ready-timeout, then
/// the shell wrapper's BUILDCTL_CONNECT_RETRIES_MAX, then bkrun.toml's `file_value`.
fn ready_timeout(
    args: &GlobalFlags,
    host: &dyn Host,
    file_value: Option<f64>,
) -> Result<(Duration, &'static str)> {
    Ok(if let Some(s) = args.ready_timeout {
        (secs("--ready-timeout", s)?, "--ready-timeout")
    } else if let Some(n) = host.env("BUILDCTL_CONNECT_RETRIES_MAX") {
        let n: u64 = n.parse().with_context(|| {
            format!("BUILDCTL_CONNECT_RETRIES_MAX must be a whole number, not {n:?}")
        })?;
        (script_budget(n), "BUILDCTL_CONNECT_RETRIES_MAX")
    } else if let Some(s) = file_value {
        (secs("ready_timeout in bkrun.toml", s)?, "bkrun.toml")
    } else {
        (DEFAULT_READY_TIMEOUT, "default")
    })
}

/// The worker (--worker, else bkrun.toml's), with containerd's settings checked; the containerd
/// settings without that worker are refused rather than ignored.
fn worker(args: &GlobalFlags, file: &FileConfig) -> Result<Worker> {
    match args.worker.or(file.worker) {
        Some(WorkerArg::Containerd) => containerd_worker(args, file),
        Some(WorkerArg::Oci) | None => {
            if args.containerd_address.is_some()
                || args.containerd_namespace.is_some()
                || args.containerd_shared_dir.is_some()
            {
                bail!("--containerd-address, --containerd-namespace and --containerd-shared-dir need --worker containerd: add it, or drop them");
            }
            // The file's own keys contradict it unless a flag chose the worker for this run.
            let in_file = file.containerd_address.is_some()
                || file.containerd_namespace.is_some()
                || file.containerd_shared_dir.is_some();
            if in_file && args.worker.is_none() {
                bail!("bkrun.toml sets containerd_address, containerd_namespace or containerd_shared_dir, but its worker is oci: add worker = \"containerd\" to it, or drop those keys");
            }
            Ok(Worker::Oci)
        }
    }
}

/// The containerd worker's socket, namespace and shared dir: each flag over bkrun.toml's key.
fn containerd_worker(args: &GlobalFlags, file: &FileConfig) -> Result<Worker> {
    let address = args
        .containerd_address
        .clone()
        .or_else(|| file.containerd_address.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_ADDRESS));
    // buildkitd takes a plain path: with unix:// it exits ("invalid authority").
    let address = match address.to_str().and_then(|a| a.strip_prefix("unix://")) {
        Some(p) => PathBuf::from(p),
        None => address,
    };
    let namespace = args
        .containerd_namespace
        .clone()
        .or_else(|| file.containerd_namespace.clone())
        .unwrap_or_else(|| DEFAULT_CONTAINERD_NAMESPACE.into());
    if namespace.is_empty()
        || !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("--containerd-namespace {namespace:?} is not a containerd namespace name: use letters, digits, '.', '_' and '-'");
    }
    let shared_dir = args
        .containerd_shared_dir
        .clone()
        .or_else(|| file.containerd_shared_dir.clone());
    if let Some(dir) = shared_dir.as_ref().filter(|d| !d.is_absolute()) {
        bail!("--containerd-shared-dir {} is not an absolute path: containerd resolves it on the node, so give the full path", dir.display());
    }
    Ok(Worker::Containerd {
        address,
        namespace,
        shared_dir,
    })
}

/// How long buildctl-daemonless.sh waits for N retries: sleeps of 100 ms + 20 ms per try, tries 0..=N.
pub fn script_budget(max: u64) -> Duration {
    let ms: u64 = (0..=max).map(|t| 100 + 20 * t).sum();
    Duration::from_millis(ms)
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("{what} must be a positive number of seconds, not {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn non_negative_secs(what: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("{what} must be zero (do not wait) or a positive number of seconds, not {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// True when `flags` sets `name`, as `--name value` or `--name=value`.
pub fn has_flag(flags: &[String], name: &str) -> bool {
    flag_value(flags, name).is_some() || flags.iter().any(|f| f == name)
}

/// The last value `flags` gives `name` (as `--name=v` or `--name v`); later ones win, as in buildkitd.
pub fn flag_value(flags: &[String], name: &str) -> Option<String> {
    let mut found = None;
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if let Some(v) = f.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        } else if f == name {
            found = it.next().cloned();
        }
    }
    found
}

fn find_config(args: &GlobalFlags, host: &dyn Host) -> Option<PathBuf> {
    if let Some(p) = &args.config {
        return Some(p.clone());
    }
    if let Some(p) = host.env("BKRUN_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let user = host
        .env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| host.env("HOME").map(|h| Path::new(&h).join(".config")))
        .map(|d| d.join("bkrun/bkrun.toml"));
    user.into_iter()
        .chain(std::iter::once(PathBuf::from("/etc/bkrun/bkrun.toml")))
        .find(|p| p.is_file())
}

pub fn read_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read config file {}: check the path given to --config",
            path.display()
        )
    })?;
    parse_config(&text).with_context(|| {
        format!(
            "config file {} is not valid: fix it and retry",
            path.display()
        )
    })
}

pub fn parse_config(text: &str) -> Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn parses_a_full_config() {
        let c = parse_config(
            r#"
            mode = "rootless-strict"
            root = "/cache/buildkit"
            ready_timeout = 30
            buildkitd_flags = ["--debug"]
            [buildkitd]
            gc_keep_storage = "10GB"
            [buildkitd.registry."127.0.0.1:5000"]
            http = true
            insecure = true
            [buildkitd.registry."docker.io"]
            mirrors = ["mirror.example:5000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.mode, Some(ModeArg::RootlessStrict));
        assert_eq!(c.ready_timeout, Some(30.0));
        let toml = c.buildkitd.unwrap().to_toml().unwrap();
        let back: toml::Value = toml::from_str(&toml).unwrap();
        assert_eq!(
            back["registry"]["127.0.0.1:5000"]["http"].as_bool(),
            Some(true)
        );
        assert_eq!(
            back["registry"]["docker.io"]["mirrors"][0].as_str(),
            Some("mirror.example:5000")
        );
        assert_eq!(
            back["worker"]["oci"]["gckeepstorage"].as_str(),
            Some("10GB")
        );
        assert!(back.get("gc_keep_storage").is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_config("mdoe = \"auto\"").unwrap_err();
        assert!(format!("{e:#}").contains("mdoe"), "{e:#}");
        let e = parse_config("[buildkitd.registry.\"x\"]\nhtpp = true").unwrap_err();
        assert!(format!("{e:#}").contains("htpp"), "{e:#}");
    }

    fn remote_of(
        args: GlobalFlags,
        env: Vec<(&'static str, &'static str)>,
        answering: Vec<&'static str>,
    ) -> (Option<Remote>, Option<String>) {
        let h = FakeHost {
            env,
            sockets: answering,
            ..FakeHost::user()
        };
        choose_remote(&args, &h, None).unwrap()
    }

    const IMAGE_HOST: &str = "unix:///run/user/1000/buildkit/buildkitd.sock";

    #[test]
    fn the_rootless_images_buildkit_host_starts_a_daemon() {
        let env = vec![
            ("BUILDKIT_HOST", IMAGE_HOST),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let (r, why) = remote_of(GlobalFlags::default(), env.clone(), vec![]);
        assert_eq!(r, None);
        assert!(why.unwrap().contains("no daemon answers there"));
        // A daemon serving there (a sidecar, `bkrun daemon`) is used.
        let (r, _) = remote_of(
            GlobalFlags::default(),
            env.clone(),
            vec!["/run/user/1000/buildkit/buildkitd.sock"],
        );
        assert_eq!(r.unwrap().source, AddrSource::BuildkitHost);
        // As buildctl-daemonless.sh it is never read.
        let script = GlobalFlags {
            as_daemonless_sh: true,
            ..Default::default()
        };
        let (r, why) = remote_of(script, env, vec!["/run/user/1000/buildkit/buildkitd.sock"]);
        assert_eq!(r, None);
        assert!(why.unwrap().contains("buildctl-daemonless.sh"));
    }

    #[test]
    fn other_addresses_mean_a_remote_daemon() {
        let (r, _) = remote_of(
            GlobalFlags::default(),
            vec![("BUILDKIT_HOST", "tcp://buildkitd:1234")],
            vec![],
        );
        assert_eq!(
            r,
            Some(Remote {
                addrs: vec!["tcp://buildkitd:1234".into()],
                source: AddrSource::BuildkitHost
            })
        );
        let (r, _) = remote_of(
            GlobalFlags::default(),
            vec![("BUILDKIT_HOST", "unix:///shared/buildkitd.sock")],
            vec![],
        );
        assert_eq!(r.unwrap().source, AddrSource::BuildkitHost);
        // bkrun's own variable and the flag always win, even over the image's default.
        let (r, _) = remote_of(
            GlobalFlags::default(),
            vec![("BKRUN_ADDR", IMAGE_HOST), ("BUILDKIT_HOST", "tcp://x:1")],
            vec![],
        );
        assert_eq!(r.unwrap().source, AddrSource::BkrunAddr);
        let flag = GlobalFlags {
            addr: vec![IMAGE_HOST.into()],
            ..Default::default()
        };
        let (r, _) = remote_of(flag, vec![], vec![]);
        assert_eq!(r.unwrap().source, AddrSource::Flag);
        // An emptied BUILDKIT_HOST (a pod can't unset an image's variable) is unset.
        let (r, why) = remote_of(GlobalFlags::default(), vec![("BUILDKIT_HOST", "")], vec![]);
        assert_eq!((r, why), (None, None));
    }

    #[test]
    fn lists_and_patterns_name_a_pool_wherever_an_address_goes() {
        let flags = GlobalFlags {
            addr: vec!["tcp://a:1,tcp://b:1".into(), "tcp://c-{0..1}:1".into()],
            ..Default::default()
        };
        let (r, _) = remote_of(flags, vec![("BKRUN_ADDR", "tcp://x:1")], vec![]);
        let r = r.unwrap();
        assert_eq!(
            r.addrs,
            ["tcp://a:1", "tcp://b:1", "tcp://c-0:1", "tcp://c-1:1"]
        );
        assert!(r.is_pool() && r.shown().starts_with("a pool of 4 (tcp://a:1, "));
        let (r, _) = remote_of(
            GlobalFlags::default(),
            vec![("BUILDKIT_HOST", "tcp://b-{0..2}.b:1234")],
            vec![],
        );
        assert_eq!(r.unwrap().addrs.len(), 3);
        // A list that does not parse fails, naming where it came from.
        let h = FakeHost {
            env: vec![("BKRUN_ADDR", "tcp://b-{0,1}:1")],
            ..FakeHost::user()
        };
        let e = choose_remote(&GlobalFlags::default(), &h, None).unwrap_err();
        assert!(e.to_string().contains("BKRUN_ADDR"), "{e}");
    }

    #[test]
    fn bkrun_toml_addr_comes_last() {
        let c = parse_config("addr = [\"tcp://b-{0..1}:1\", \"tcp://c:1\"]").unwrap();
        let file = c.addr.unwrap();
        let h = |env| FakeHost {
            env,
            ..FakeHost::user()
        };
        let (r, _) = choose_remote(&GlobalFlags::default(), &h(vec![]), Some(&file)).unwrap();
        let r = r.unwrap();
        assert_eq!(r.addrs, ["tcp://b-0:1", "tcp://b-1:1", "tcp://c:1"]);
        assert_eq!(r.source.to_string(), "addr in bkrun.toml");
        let env = vec![("BUILDKIT_HOST", "tcp://x:1")];
        let (r, _) = choose_remote(&GlobalFlags::default(), &h(env), Some(&file)).unwrap();
        assert_eq!(r.unwrap().source, AddrSource::BuildkitHost);
        // The image's default socket with no daemon there gives way to the file, and says so.
        let env = vec![
            ("BUILDKIT_HOST", IMAGE_HOST),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let (r, why) = choose_remote(&GlobalFlags::default(), &h(env), Some(&file)).unwrap();
        assert_eq!(r.unwrap().source, AddrSource::ConfigFile);
        assert!(why.unwrap().contains("uses addr in bkrun.toml"));
        let one = parse_config("addr = \"tcp://b:1\"").unwrap();
        assert_eq!(one.addr, Some(AddrList::One("tcp://b:1".into())));
    }

    #[test]
    fn containerd_keys_in_a_file_whose_worker_is_oci_are_refused_unless_a_flag_chose() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str, worker| {
            let path = dir.path().join("bkrun.toml");
            std::fs::write(&path, text).unwrap();
            let args = GlobalFlags {
                config: Some(path),
                worker,
                ..Default::default()
            };
            Settings::load(&args, &FakeHost::root()).map(|s| s.worker)
        };
        let e = load("containerd_shared_dir = \"/srv/x\"\n", None).unwrap_err();
        assert!(e.to_string().contains("add worker = \"containerd\""), "{e}");
        assert_eq!(
            load("containerd_shared_dir = \"/srv/x\"\n", Some(WorkerArg::Oci)).unwrap(),
            Worker::Oci
        );
        let w = load(
            "worker = \"containerd\"\ncontainerd_shared_dir = \"/srv/x\"\n",
            None,
        )
        .unwrap();
        assert!(
            matches!(w, Worker::Containerd { shared_dir: Some(d), .. } if d == Path::new("/srv/x"))
        );
    }

    #[test]
    fn an_address_off_loopback_is_refused_whichever_source_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bkrun.toml");
        let load = |file: &str, flag: Option<&str>, env: Vec<(&'static str, &'static str)>| {
            std::fs::write(&path, file).unwrap();
            let args = GlobalFlags {
                config: Some(path.clone()),
                buildkitd_flags: flag.map(String::from),
                ..Default::default()
            };
            let h = FakeHost {
                env,
                ..FakeHost::root()
            };
            Settings::load(&args, &h).map(|s| s.buildkitd_flags)
        };
        let open = "--addr tcp://0.0.0.0:1234";
        let e = load("", None, vec![("BUILDKITD_FLAGS", open)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BUILDKITD_FLAGS --addr tcp://0.0.0.0:1234 is reachable from other hosts: give --tlscert, --tlskey and --tlscacert among the daemon's flags for mutual TLS, or pass --insecure-plaintext"
        );
        let e = load("", Some(open), vec![]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--buildkitd-flags --addr tcp://0.0.0.0:1234 is reachable"),
            "{e}"
        );
        let e = load(
            "buildkitd_flags = [\"--addr=tcp://[::]:1234\"]\n",
            None,
            vec![],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string().split(" is reachable").next().unwrap(),
            format!(
                "buildkitd_flags in {} --addr tcp://[::]:1234",
                path.display()
            )
        );
        // Loopback and unix sockets are this host's alone; mutual TLS makes the rest fine.
        assert!(load("", Some("--addr tcp://127.0.0.1:1234"), vec![]).is_ok());
        assert!(load("", None, vec![("BUILDKITD_FLAGS", "--addr=unix:///b.sock")]).is_ok());
        let flags = load(
            "buildkitd_flags = [\"--tlscert=/c\", \"--tlskey=/k\", \"--tlscacert=/ca\"]\n",
            None,
            vec![("BUILDKITD_FLAGS", open)],
        )
        .unwrap();
        assert!(flags.iter().any(|f| f == "tcp://0.0.0.0:1234"), "{flags:?}");
        // --insecure-plaintext is the explicit way out.
        std::fs::write(&path, "").unwrap();
        let args = GlobalFlags {
            config: Some(path.clone()),
            buildkitd_flags: Some(open.into()),
            insecure_plaintext: true,
            ..Default::default()
        };
        assert!(Settings::load(&args, &FakeHost::root()).is_ok());
    }

    #[test]
    fn the_buildkitd_table_cannot_name_a_listener() {
        // The daemon's buildkitd.toml is rendered from this table only, which has no [grpc]: an
        // address (or TLS) there is refused as an unknown key, never passed on. (Its grpc.address
        // would be ignored anyway: buildkitd takes --addr over the file's, and bkrun always
        // passes one.)
        let e = parse_config("[buildkitd.grpc]\naddress = [\"tcp://0.0.0.0:1234\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("grpc"), "{e:#}");
    }

    #[test]
    fn script_budget_matches_the_shell_wrapper() {
        // Ten retries: 11 sleeps of 100..=300 ms.
        assert_eq!(script_budget(10), Duration::from_millis(2200));
    }

    #[test]
    fn flag_values_are_found_in_both_spellings() {
        let f: Vec<String> = ["--root", "/a", "--debug", "--root=/b"]
            .map(String::from)
            .to_vec();
        assert_eq!(flag_value(&f, "--root").as_deref(), Some("/b"));
        assert!(has_flag(&f, "--debug"));
        assert!(!has_flag(&f, "--config"));
    }
}
