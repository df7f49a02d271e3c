//! Which existing daemons to use, if any: `--addr`, `BKRUN_ADDR`, `BUILDKIT_HOST` (by the rule below) or bkrun.toml's `addr`, one address or a pool; and the fallback pool (`BKRUN_FALLBACK_ADDR`, bkrun.toml's `fallback_addr`) for where no daemon can start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{AddrList, GlobalFlags};
use crate::host::Host;

/// Where a remote daemon's address came from, named in `bkrun config` and in connection errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    Flag,
    BkrunAddr,
    BuildkitHost,
    ConfigFile,
    /// The fallback pool, used only where no daemon mode can work (src/daemon/fallback.rs).
    FallbackEnv,
    FallbackFile,
}

impl std::fmt::Display for AddrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddrSource::Flag => "--addr",
            AddrSource::BkrunAddr => "BKRUN_ADDR",
            AddrSource::BuildkitHost => "BUILDKIT_HOST",
            AddrSource::ConfigFile => "addr in bkrun.toml",
            AddrSource::FallbackEnv => "BKRUN_FALLBACK_ADDR",
            AddrSource::FallbackFile => "fallback_addr in bkrun.toml",
        })
    }
}

/// The daemons to use: one address, or a pool that a route key orders (src/pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Expanded from the lists and `{A..B}` patterns given; never empty.
    pub addrs: Vec<String>,
    pub source: AddrSource,
}

impl Remote {
    /// The address, or the pool's addresses, for messages.
    pub fn shown(&self) -> String {
        match self.addrs.as_slice() {
            [one] => one.clone(),
            many => format!("a pool of {} ({})", many.len(), many.join(", ")),
        }
    }

    pub fn is_pool(&self) -> bool {
        self.addrs.len() > 1
    }
}

fn remote(values: &[String], source: AddrSource) -> Result<Remote> {
    let addrs = crate::pool::expand(values).map_err(|e| anyhow::anyhow!("{e} (from {source})"))?;
    if addrs.is_empty() {
        bail!("{source} names no daemon: give an address such as tcp://HOST:PORT");
    }
    Ok(Remote { addrs, source })
}

/// The rule for using existing daemons: `--addr` (repeatable) or `BKRUN_ADDR` always;
/// BUILDKIT_HOST unless invoked as buildctl-daemonless.sh (the script never reads it) or it
/// names this user's default socket (what BuildKit's images set for buildctl: `/run/user/UID/
/// buildkit/buildkitd.sock`, `$XDG_RUNTIME_DIR/buildkit/buildkitd.sock`, `/run/buildkit/
/// buildkitd.sock` for root) and no daemon answers there; then bkrun.toml's `addr`. Each may be
/// a list or a pattern (src/pool/pattern.rs). Returns the daemons, if any, and why a
/// BUILDKIT_HOST was not used; fails on a list that does not parse.
pub fn choose_remote(
    args: &GlobalFlags,
    host: &dyn Host,
    file: Option<&AddrList>,
) -> Result<(Option<Remote>, Option<String>)> {
    let flags: Vec<String> = args
        .addr
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    if !flags.is_empty() {
        return Ok((Some(remote(&flags, AddrSource::Flag)?), None));
    }
    if let Some(addr) = host.env("BKRUN_ADDR") {
        return Ok((Some(remote(&[addr], AddrSource::BkrunAddr)?), None));
    }
    let from_file = || -> Result<Option<Remote>> {
        file.map(|f| remote(&f.values(), AddrSource::ConfigFile))
            .transpose()
    };
    let Some(addr) = host.env("BUILDKIT_HOST") else {
        return Ok((from_file()?, None));
    };
    if args.as_daemonless_sh {
        return Ok((
            None,
            Some(format!(
                "BUILDKIT_HOST={addr} is not read when bkrun runs as buildctl-daemonless.sh, as the script does not"
            )),
        ));
    }
    let default_socket = addr
        .strip_prefix("unix://")
        .filter(|p| is_default_socket(Path::new(p), host));
    if let Some(path) = default_socket {
        if !host.socket_answers(Path::new(path)) {
            let why = format!(
                "BUILDKIT_HOST={addr} is this user's default socket (BuildKit's images set it) and no daemon answers there, so bkrun {}; use --addr or BKRUN_ADDR to insist on that address",
                if file.is_some() { "uses addr in bkrun.toml" } else { "starts its own" }
            );
            return Ok((from_file()?, Some(why)));
        }
    }
    Ok((Some(remote(&[addr], AddrSource::BuildkitHost)?), None))
}

/// The fallback pool: `BKRUN_FALLBACK_ADDR` (an empty one counts as unset, as a pod cannot
/// unset an image's variable), else bkrun.toml's `fallback_addr`; the same grammar as `addr`.
/// Parsed now, so a typo fails every run rather than only the one that needs the pool.
pub fn choose_fallback(host: &dyn Host, file: Option<&AddrList>) -> Result<Option<Remote>> {
    if let Some(addr) = host.env("BKRUN_FALLBACK_ADDR") {
        return Ok(Some(remote(&[addr], AddrSource::FallbackEnv)?));
    }
    file.map(|f| remote(&f.values(), AddrSource::FallbackFile))
        .transpose()
}

fn is_default_socket(path: &Path, host: &dyn Host) -> bool {
    let euid = host.euid();
    let mut defaults = vec![PathBuf::from(format!(
        "/run/user/{euid}/buildkit/buildkitd.sock"
    ))];
    if let Some(d) = host.env("XDG_RUNTIME_DIR") {
        defaults.push(Path::new(&d).join("buildkit/buildkitd.sock"));
    }
    if euid == 0 {
        defaults.push(PathBuf::from("/run/buildkit/buildkitd.sock"));
    }
    defaults.iter().any(|d| d == path)
}
