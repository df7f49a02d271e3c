//! What `bkrun --version` says: bkrun's version and commit, and the buildkitd it would start.

use crate::host::{Host, RealHost};

/// `0.1.0 (commit 0123456789ab)`.
pub fn short() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("BKRUN_COMMIT"),
        ")"
    )
}

/// The short version, then the buildkitd found ($BUILDKITD, else on PATH) and its version.
pub fn long() -> &'static str {
    let host = RealHost;
    let name = host.env("BUILDKITD").unwrap_or_else(|| "buildkitd".into());
    let daemon = match host.which(&name) {
        Some(path) => match crate::daemon::doctor::version_of(&path) {
            Some(v) => format!("buildkitd {v} ({})", path.display()),
            None => format!("buildkitd of unknown version ({})", path.display()),
        },
        None => {
            format!("buildkitd: {name:?} not found on PATH (install BuildKit, or set BUILDKITD)")
        }
    };
    // Built once per process, for clap, which wants a static string.
    Box::leak(format!("{}\n{daemon}", short()).into_boxed_str())
}
