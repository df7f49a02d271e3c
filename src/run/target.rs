//! Where the work goes, settled from flags: the remote daemon's target (address, TLS files, how long to retry), `bkrun daemon`'s extra listeners, and what `bkrun config` says of it all.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::cli::{DaemonArgs, GlobalArgs};
use crate::client::connect::{Target, TlsFiles};
use crate::config::{Remote, Settings};
use crate::daemon::Plan;
use crate::host::Host;

/// What `bkrun config` prints: what the next command will do (start a daemon, and how, or
/// connect, and where the address came from; for a pool, which daemon the route key picks),
/// then the settings, and the fallback pool with whether it stands in. `key` is the route key
/// and what it was made from.
pub(super) fn describe(
    settings: &Settings,
    host: &dyn Host,
    g: &GlobalArgs,
    key: impl FnOnce() -> (String, String),
) -> Result<String> {
    let fallback = crate::daemon::fallback::judge_here(settings, host);
    let mut s = match (&settings.remote, &fallback) {
        (Some(r), _) => connect_text(g, r, "", key)?,
        (None, Some(f)) if f.is_used() => {
            connect_text(g, f.pool(), "no daemon can start here, so builds ", key)?
        }
        (None, _) => start_text(settings, host)?,
    };
    if let Some(f) = &fallback {
        let pool = f.pool();
        let used = if f.is_used() { "used" } else { "not used" };
        s.push_str(&format!(
            "fallback:        {} (from {}), {used}: {}\n",
            pool.addrs.join(", "),
            pool.source,
            f.why()
        ));
    }
    Ok(s)
}

/// The lines for an existing daemon or pool: where, from which setting, with which TLS files,
/// and for a pool the route key's pick.
fn connect_text(
    g: &GlobalArgs,
    r: &Remote,
    lead: &str,
    key: impl FnOnce() -> (String, String),
) -> Result<String> {
    let targets = remote_targets(g, r)?;
    let target = &targets[0];
    let tls = match &target.tls {
        Some(t) => format!(
            "ca {}, cert {}, key {}",
            shown(&t.ca),
            shown(&t.cert),
            shown(&t.key)
        ),
        None => "none".into(),
    };
    let tail = format!(
        "tls:             {tls}\nconnect retry:   {:?}\n",
        target.retry_for
    );
    if !r.is_pool() {
        return Ok(format!(
            "daemon:          {lead}connect to {} (from {}); no daemon is started\n{tail}",
            r.addrs[0], r.source
        ));
    }
    let (key, made_from) = key();
    let order = crate::pool::order(&key, &r.addrs);
    let then: Vec<&str> = order[1..].iter().map(|&i| r.addrs[i].as_str()).collect();
    Ok(format!(
        "daemon:          {lead}connect to one of a pool of {} (from {}); no daemon is started\npool:            {}\nroute key:       {key:?} ({made_from})\npicks:           {} (then {}, if it does not serve)\n{tail}",
        r.addrs.len(),
        r.source,
        r.addrs.join(", "),
        r.addrs[order[0]],
        then.join(", "),
    ))
}

/// The lines for the daemon bkrun would start: its mode and why, then its plan.
fn start_text(settings: &Settings, host: &dyn Host) -> Result<String> {
    let plan = Plan::new(settings, host, false)?;
    let mut s = format!(
        "daemon:          start buildkitd, {} ({})\n",
        plan.mode(),
        plan.decision.why
    );
    if let Some(lost) = plan.decision.given_up {
        s.push_str(&format!("given up:        {lost}\n"));
    }
    if let Some(why) = &settings.buildkit_host_ignored {
        s.push_str(&format!("BUILDKIT_HOST:   not used: {why}\n"));
    }
    s.push_str(&plan.describe());
    Ok(s)
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map_or("none".into(), |p| p.display().to_string())
}

/// The remote daemons of --addr, BKRUN_ADDR, BUILDKIT_HOST or bkrun.toml, in the order given,
/// each with buildctl's TLS flags (a pool shares one client identity).
pub(super) fn remote_targets(g: &GlobalArgs, remote: &Remote) -> Result<Vec<Target>> {
    let mut tls = TlsFiles {
        ca: g.tlscacert.clone(),
        cert: g.tlscert.clone(),
        key: g.tlskey.clone(),
        server_name: g.tlsservername.clone(),
    };
    if let Some(dir) = &g.tlsdir {
        if !dir.is_dir() {
            bail!("--tlsdir {} is not a directory: give the directory holding ca.pem, cert.pem and key.pem", dir.display());
        }
        tls = tls.with_dir(dir);
    }
    // buildctl's --wait waits as long as it takes; its --timeout is how long it tries.
    let retry = match (g.connect_retry, g.wait, g.timeout) {
        (Some(r), _, _) => r,
        (None, true, _) => f64::from(u32::MAX),
        (None, false, Some(t)) => t,
        (None, false, None) => DEFAULT_CONNECT_RETRY_SECS,
    };
    if !(retry.is_finite() && retry >= 0.0) {
        bail!("--connect-retry must be a number of seconds, not {retry}");
    }
    Ok(remote
        .addrs
        .iter()
        .map(|addr| Target {
            addr: addr.clone(),
            tls: (!tls.is_empty()).then(|| tls.clone()),
            insecure_plaintext: g.insecure_plaintext,
            retry_for: Duration::from_secs_f64(retry),
            origin: Some(remote.source.to_string()),
        })
        .collect())
}

/// How long a remote daemon may be away (a rolling restart) before the build fails.
const DEFAULT_CONNECT_RETRY_SECS: f64 = 15.0;

/// buildkitd flags for `bkrun daemon --listen …`: a TCP listener off loopback needs TLS with
/// client certificates, or an explicit --insecure-plaintext.
pub(super) fn listener_flags(d: &DaemonArgs, insecure_plaintext: bool) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for l in &d.listen {
        if !l.starts_with("tcp://") {
            bail!("--listen {l:?} must be tcp://HOST:PORT (the unix socket is always there)");
        }
        // The same rule as every other address the daemon is given (src/config/listen.rs).
        let tls = crate::config::listen::ServerTls {
            cert: d.tls_server_cert.is_some(),
            key: d.tls_server_key.is_some(),
            ca: d.tls_client_ca.is_some(),
        };
        crate::config::listen::check_grpc(
            "--listen",
            l,
            tls,
            "give --tls-server-cert, --tls-server-key and --tls-client-ca",
            insecure_plaintext,
        )?;
        flags.push(format!("--addr={l}"));
    }
    for (flag, file) in [
        ("--tlscert", &d.tls_server_cert),
        ("--tlskey", &d.tls_server_key),
        ("--tlscacert", &d.tls_client_ca),
    ] {
        if let Some(f) = file {
            if !f.is_file() {
                bail!(
                    "{} does not exist: give the path of the PEM file",
                    f.display()
                );
            }
            flags.push(format!("{flag}={}", f.display()));
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrSource;

    fn remote(addr: &str) -> Remote {
        Remote {
            addrs: vec![addr.into()],
            source: AddrSource::BuildkitHost,
        }
    }

    fn remote_target(g: &GlobalArgs, r: &Remote) -> Result<Target> {
        Ok(remote_targets(g, r)?.remove(0))
    }

    #[test]
    fn retry_follows_connect_retry_then_wait_then_timeout() {
        let t = |g: GlobalArgs| remote_target(&g, &remote("tcp://b:1")).unwrap().retry_for;
        assert_eq!(t(GlobalArgs::default()), Duration::from_secs(15));
        let timeout = GlobalArgs {
            timeout: Some(5.0),
            ..Default::default()
        };
        assert_eq!(t(timeout.clone()), Duration::from_secs(5));
        let wait = GlobalArgs {
            wait: true,
            ..timeout
        };
        assert!(t(wait.clone()) > Duration::from_secs(3600));
        let explicit = GlobalArgs {
            connect_retry: Some(2.0),
            ..wait
        };
        assert_eq!(t(explicit), Duration::from_secs(2));
        let bad = GlobalArgs {
            connect_retry: Some(-1.0),
            ..Default::default()
        };
        assert!(remote_target(&bad, &remote("tcp://b:1")).is_err());
    }

    #[test]
    fn config_shows_the_pool_and_which_daemon_the_key_picks() {
        let h = crate::host::fake::FakeHost::user();
        let mut settings = Settings::load(&Default::default(), &h).unwrap();
        settings.remote = Some(Remote {
            addrs: vec![
                "tcp://a:1234".into(),
                "tcp://b:1234".into(),
                "tcp://c:1234".into(),
            ],
            source: AddrSource::Flag,
        });
        let key = || ("/src/app".to_string(), "--route-key".to_string());
        let s = describe(&settings, &h, &GlobalArgs::default(), key).unwrap();
        assert!(s.contains("one of a pool of 3 (from --addr)"), "{s}");
        assert!(
            s.contains("pool:            tcp://a:1234, tcp://b:1234, tcp://c:1234\n"),
            "{s}"
        );
        assert!(
            s.contains("route key:       \"/src/app\" (--route-key)"),
            "{s}"
        );
        // The order crate::pool::rendezvous pins for this key.
        assert!(
            s.contains("picks:           tcp://b:1234 (then tcp://a:1234, tcp://c:1234, if"),
            "{s}"
        );
    }

    #[test]
    fn config_says_where_the_fallback_stands_in_and_where_it_does_not() {
        let pool = ("BKRUN_FALLBACK_ADDR", "tcp://a:1234,tcp://b:1234");
        let key = || ("/src/app".to_string(), "--route-key".to_string());
        let h = crate::host::fake::FakeHost {
            env: vec![pool],
            ..crate::host::fake::FakeHost::restricted()
        };
        let settings = Settings::load(&Default::default(), &h).unwrap();
        let s = describe(&settings, &h, &GlobalArgs::default(), key).unwrap();
        assert!(
            s.starts_with("daemon:          no daemon can start here, so builds connect to one of a pool of 2 (from BKRUN_FALLBACK_ADDR); no daemon is started\npool:            tcp://a:1234, tcp://b:1234\n"),
            "{s}"
        );
        assert!(
            s.contains("\nfallback:        tcp://a:1234, tcp://b:1234 (from BKRUN_FALLBACK_ADDR), used: privileged: bkrun runs as uid 1000, not root; rootless, rootless-strict: "),
            "{s}"
        );
        // A daemon named outright wins, and the fallback says why it is not used.
        let h = crate::host::fake::FakeHost {
            env: vec![pool, ("BKRUN_ADDR", "tcp://c:1234")],
            ..crate::host::fake::FakeHost::restricted()
        };
        let settings = Settings::load(&Default::default(), &h).unwrap();
        let s = describe(&settings, &h, &GlobalArgs::default(), key).unwrap();
        assert!(
            s.starts_with("daemon:          connect to tcp://c:1234 (from BKRUN_ADDR)"),
            "{s}"
        );
        assert!(
            s.ends_with(
                "(from BKRUN_FALLBACK_ADDR), not used: BKRUN_ADDR names the daemon to use\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn the_target_names_where_its_address_came_from() {
        let t = remote_target(&GlobalArgs::default(), &remote("unix:///s")).unwrap();
        assert_eq!(t.origin.as_deref(), Some("BUILDKIT_HOST"));
        assert!(t.tls.is_none());
    }

    #[test]
    fn listeners_off_loopback_need_mutual_tls_or_an_explicit_plaintext() {
        let d = |listen: &str| DaemonArgs {
            listen: vec![listen.into()],
            ..Default::default()
        };
        assert_eq!(
            listener_flags(&d("tcp://127.0.0.1:1234"), false).unwrap(),
            ["--addr=tcp://127.0.0.1:1234"]
        );
        assert_eq!(
            listener_flags(&d("tcp://[::1]:1234"), false).unwrap(),
            ["--addr=tcp://[::1]:1234"]
        );
        let e = listener_flags(&d("tcp://0.0.0.0:1234"), false).unwrap_err();
        assert!(e.to_string().contains("--tls-client-ca"), "{e}");
        assert!(listener_flags(&d("tcp://0.0.0.0:1234"), true).is_ok());
        let e = listener_flags(&d("unix:///x.sock"), false).unwrap_err();
        assert!(e.to_string().contains("tcp://HOST:PORT"), "{e}");
        // Named TLS files must exist.
        let tls = DaemonArgs {
            tls_server_cert: Some("/no/cert.pem".into()),
            tls_server_key: Some("/no/key.pem".into()),
            tls_client_ca: Some("/no/ca.pem".into()),
            ..d("tcp://0.0.0.0:1234")
        };
        assert!(listener_flags(&tls, false)
            .unwrap_err()
            .to_string()
            .contains("/no/cert.pem"));
    }
}
