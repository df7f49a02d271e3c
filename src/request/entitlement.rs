//! `--allow` entitlements: the names BuildKit v0.32 knows, checked before any daemon starts, and which of them the daemon must be started with.

use anyhow::{bail, Result};

/// `RUN --network=host`.
pub const NETWORK_HOST: &str = "network.host";
/// `RUN --security=insecure`.
pub const SECURITY_INSECURE: &str = "security.insecure";
/// `RUN --device=NAME` (CDI devices); `device=NAME[,alias=A]` grants one device.
pub const DEVICE: &str = "device";

/// Checks each `--allow` value as BuildKit parses it (a name, or `device=…`), so a typo fails
/// here rather than as a Solve error after the daemon started.
pub fn check(allow: &[String]) -> Result<()> {
    for a in allow {
        let name = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
        match name {
            NETWORK_HOST | SECURITY_INSECURE if name.len() == a.len() => {}
            NETWORK_HOST | SECURITY_INSECURE => {
                bail!("--allow {a}: {name} takes no value: write --allow {name}")
            }
            DEVICE if name.len() == a.len() || a.len() > name.len() + 1 => {}
            DEVICE => bail!("--allow {a}: name the device (--allow device=NAME) or allow every device (--allow device)"),
            _ => bail!(
                "--allow {a}: unknown entitlement: use {NETWORK_HOST}, {SECURITY_INSECURE} or {DEVICE}[=NAME]"
            ),
        }
    }
    Ok(())
}

/// The entitlements a daemon must be started with (`--allow-insecure-entitlement`) for a build
/// that asks for `allow`, each once. buildkitd refuses every entitlement it was not started with,
/// except `device`: it grants that itself whenever CDI is enabled (the default), and with CDI
/// disabled there is no device to grant.
pub fn daemon_grants(allow: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in allow {
        if matches!(a.as_str(), NETWORK_HOST | SECURITY_INSECURE) && !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn known_names_pass_and_others_are_named() {
        check(&v(&[
            "network.host",
            "security.insecure",
            "device",
            "device=vendor.com/gpu=0,alias=gpu",
        ]))
        .unwrap();
        for (bad, says) in [
            ("network", "unknown entitlement"),
            ("network.host=1", "takes no value"),
            ("device=", "name the device"),
            ("", "unknown entitlement"),
        ] {
            let e = check(&v(&[bad])).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--allow {bad}:")), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn only_network_and_insecure_need_the_daemon_flag() {
        assert_eq!(
            daemon_grants(&v(&[
                "device=gpu",
                "security.insecure",
                "network.host",
                "security.insecure"
            ])),
            ["security.insecure", "network.host"]
        );
    }
}
