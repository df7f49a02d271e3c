//! bkrun.toml → settings (serde + toml), merged with flags and the shell wrapper's variables; its [buildkitd] table becomes the daemon's buildkitd.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::GlobalArgs;
use crate::daemon::mode::ModeArg;
use crate::host::Host;

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
    pub buildkitd: String,
    pub rootlesskit: String,
    pub buildkitd_flags: Vec<String>,
    pub rootlesskit_flags: Vec<String>,
    pub daemon_config: Option<DaemonConfig>,
    pub config_file: Option<PathBuf>,
    pub debug: bool,
}

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Settings {
    pub fn load(args: &GlobalArgs, host: &dyn Host) -> Result<Settings> {
        let (file, config_file) = match find_config(args, host) {
            Some(path) => (read_config(&path)?, Some(path)),
            None => (FileConfig::default(), None),
        };
        let mut buildkitd_flags = file.buildkitd_flags.unwrap_or_default();
        let env_flags = args
            .buildkitd_flags
            .clone()
            .or_else(|| host.env("BUILDKITD_FLAGS"));
        if let Some(f) = env_flags {
            buildkitd_flags.extend(shell_words::split(&f).with_context(|| {
                format!("BUILDKITD_FLAGS/--buildkitd-flags has unbalanced quotes: fix the quoting in {f:?}")
            })?);
        }
        let (ready_timeout, ready_timeout_source) = if let Some(s) = args.ready_timeout {
            (secs("--ready-timeout", s)?, "--ready-timeout")
        } else if let Some(n) = host.env("BUILDCTL_CONNECT_RETRIES_MAX") {
            let n: u64 = n.parse().with_context(|| {
                format!("BUILDCTL_CONNECT_RETRIES_MAX must be a whole number, not {n:?}")
            })?;
            (script_budget(n), "BUILDCTL_CONNECT_RETRIES_MAX")
        } else if let Some(s) = file.ready_timeout {
            (secs("ready_timeout in bkrun.toml", s)?, "bkrun.toml")
        } else {
            (DEFAULT_READY_TIMEOUT, "default")
        };
        let stop_timeout = match file.stop_timeout {
            Some(s) => secs("stop_timeout in bkrun.toml", s)?,
            None => DEFAULT_STOP_TIMEOUT,
        };
        let daemon_config = file.buildkitd;
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
            config_file,
            debug: args.debug,
        })
    }
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

fn find_config(args: &GlobalArgs, host: &dyn Host) -> Option<PathBuf> {
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
