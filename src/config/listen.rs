//! The one TLS rule for the daemons bkrun starts: a listener reachable from other hosts needs mutual TLS (or an explicit --insecure-plaintext), whichever of --listen, --buildkitd-flags, BUILDKITD_FLAGS, bkrun.toml or buildkitd's own config file names it.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Result};

/// True when a listener at `addr` (buildkitd's `SCHEME://…` form) can be reached from this host
/// only: a unix socket, or tcp on a loopback address. Anything else — another tcp host, `fd://`
/// (systemd's sockets, whatever they are bound to), a scheme buildkitd may learn later — counts
/// as reachable from other hosts.
pub fn is_local(addr: &str) -> bool {
    let Some((scheme, rest)) = addr.split_once("://") else {
        // buildkitd refuses an address without a scheme; nothing to allow here.
        return false;
    };
    match scheme {
        // npipe is Windows'; buildkitd on Linux serves it as a unix socket.
        "unix" | "npipe" => true,
        "tcp" => loopback_host(rest),
        _ => false,
    }
}

/// `HOST:PORT` (or `[V6]:PORT`) names a loopback host: `localhost`, 127.0.0.0/8, ::1 or
/// ::ffff:127.x. An empty host is every interface.
fn loopback_host(host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Which of buildkitd's server TLS files are set. buildkitd asks clients for a certificate only
/// when a CA is given (tls.RequireAndVerifyClientCert); a certificate and key alone encrypt but
/// let anyone in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: bool,
    pub key: bool,
    pub ca: bool,
}

impl ServerTls {
    pub fn mutual(&self) -> bool {
        self.cert && self.key && self.ca
    }

    /// What the refusal asks for, in buildkitd's flag names.
    fn missing(&self) -> String {
        let missing: Vec<&str> = [
            ("--tlscert", self.cert),
            ("--tlskey", self.key),
            ("--tlscacert", self.ca),
        ]
        .iter()
        .filter(|(_, set)| !set)
        .map(|(f, _)| *f)
        .collect();
        match missing.as_slice() {
            [a, b, c] => format!("{a}, {b} and {c}"),
            [a, b] => format!("{a} and {b} (beside the one given)"),
            [a] => format!("{a} (beside the two given)"),
            _ => String::new(),
        }
    }
}

/// Refuses a gRPC listener at `addr` (named by `origin`, e.g. `BUILDKITD_FLAGS --addr`) that is
/// reachable from other hosts without mutual TLS, unless --insecure-plaintext was given. `fix`
/// names the TLS flags the way `origin` spells them.
pub fn check_grpc(
    origin: &str,
    addr: &str,
    tls: ServerTls,
    fix: &str,
    insecure_plaintext: bool,
) -> Result<()> {
    if is_local(addr) || tls.mutual() || insecure_plaintext {
        return Ok(());
    }
    bail!("{origin} {addr} is reachable from other hosts: {fix} for mutual TLS, or pass --insecure-plaintext");
}

/// Refuses buildkitd's debug listener (pprof, expvar, cache dumps and loads, always plaintext)
/// off loopback, unless --insecure-plaintext was given.
pub fn check_debug(origin: &str, addr: &str, insecure_plaintext: bool) -> Result<()> {
    if is_local(addr) || insecure_plaintext {
        return Ok(());
    }
    bail!("{origin} {addr} serves buildkitd's debug handlers without TLS to other hosts: give a loopback address such as tcp://127.0.0.1:6060, or pass --insecure-plaintext");
}

/// What follows the name `bare` (given without dashes) in `flag`, spelt with one dash or two
/// as Go's flag parsers take it: "" for the bare flag, "=v" with a value; None if `flag` is not
/// that flag.
pub fn after_name<'a>(flag: &'a str, bare: &str) -> Option<&'a str> {
    flag.strip_prefix("--")
        .or_else(|| flag.strip_prefix('-'))
        .and_then(|r| r.strip_prefix(bare))
}

/// Every value `flags` gives `name`, in order, in each spelling buildkitd's flag parser takes
/// (`--name v`, `--name=v`, and the single-dash forms).
pub fn values(flags: &[String], name: &str) -> Vec<String> {
    let bare = name.trim_start_matches('-');
    let mut out = Vec::new();
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        let Some(rest) = after_name(f, bare) else {
            continue;
        };
        if let Some(v) = rest.strip_prefix('=') {
            out.push(v.to_string());
        } else if rest.is_empty() {
            out.extend(it.next().cloned());
        }
    }
    out
}

/// The last non-empty value of `name`: buildkitd takes a TLS flag only when it is not empty.
fn last_set(flags: &[String], name: &str) -> Option<String> {
    values(flags, name).into_iter().rfind(|v| !v.is_empty())
}

/// The `[grpc]` table of a buildkitd.toml that matters here.
#[derive(Debug, Default, PartialEq, Eq)]
struct FileGrpc {
    debug_address: Option<String>,
    tls: ServerTls,
}

/// Reads buildkitd's config file's `grpc.debugAddress` and `[grpc.tls]`. A file that cannot be
/// read or parsed contributes nothing: buildkitd itself then refuses to start, saying why.
/// `grpc.address` is not read: bkrun always passes `--addr`, and buildkitd then ignores it.
fn file_grpc(path: &Path) -> FileGrpc {
    let Ok(text) = std::fs::read_to_string(path) else {
        return FileGrpc::default();
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return FileGrpc::default();
    };
    let grpc = table.get("grpc").and_then(|g| g.as_table());
    let tls = grpc.and_then(|g| g.get("tls")).and_then(|t| t.as_table());
    let set = |key: &str| {
        tls.and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty())
    };
    FileGrpc {
        debug_address: grpc
            .and_then(|g| g.get("debugAddress"))
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(String::from),
        tls: ServerTls {
            cert: set("cert"),
            key: set("key"),
            ca: set("ca"),
        },
    }
}

/// Where a group of buildkitd flags came from, as the refusal names it.
pub struct FlagSource<'a> {
    pub name: String,
    pub flags: &'a [String],
}

/// The rule over the extra buildkitd flags bkrun passes (each group named by where it came
/// from), the config file a `--config` among them names, and BUILDKITD_DEBUGADDR, which
/// buildkitd reads from the environment it inherits. TLS counts from any of them, as buildkitd
/// merges them: a flag over the file's `[grpc.tls]`.
pub fn check_daemon_flags(
    sources: &[FlagSource],
    debugaddr_env: Option<&str>,
    insecure_plaintext: bool,
) -> Result<()> {
    let all: Vec<String> = sources
        .iter()
        .flat_map(|s| s.flags.iter().cloned())
        .collect();
    let file = last_set(&all, "--config")
        .map(|p| (p.clone(), file_grpc(Path::new(&p))))
        .unwrap_or_default();
    let tls = ServerTls {
        cert: last_set(&all, "--tlscert").is_some() || file.1.tls.cert,
        key: last_set(&all, "--tlskey").is_some() || file.1.tls.key,
        ca: last_set(&all, "--tlscacert").is_some() || file.1.tls.ca,
    };
    let fix = format!("give {} among the daemon's flags", tls.missing());
    for s in sources {
        for addr in values(s.flags, "--addr") {
            check_grpc(
                &format!("{} --addr", s.name),
                &addr,
                tls,
                &fix,
                insecure_plaintext,
            )?;
        }
    }
    // buildkitd's debug listener: a flag (or its variable) wins over the config file.
    let mut debug_flag = false;
    for s in sources {
        for addr in values(s.flags, "--debugaddr") {
            debug_flag = true;
            check_debug(
                &format!("{} --debugaddr", s.name),
                &addr,
                insecure_plaintext,
            )?;
        }
    }
    if !debug_flag {
        if let Some(addr) = debugaddr_env.filter(|a| !a.is_empty()) {
            check_debug("BUILDKITD_DEBUGADDR", addr, insecure_plaintext)?;
        } else if let Some(addr) = &file.1.debug_address {
            check_debug(
                &format!("grpc.debugAddress in {}", file.0),
                addr,
                insecure_plaintext,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unix_sockets_and_loopback_are_local() {
        for a in [
            "unix:///run/buildkit/buildkitd.sock",
            "tcp://127.0.0.1:1234",
            "tcp://127.8.9.1:1234",
            "tcp://localhost:1234",
            "tcp://LOCALHOST:1234",
            "tcp://[::1]:1234",
            "tcp://[::ffff:127.0.0.1]:1234",
        ] {
            assert!(is_local(a), "{a}");
        }
        for a in [
            "tcp://0.0.0.0:1234",
            "tcp://:1234",
            "tcp://[::]:1234",
            "tcp://10.0.0.5:1234",
            "tcp://buildkitd.example:1234",
            "tcp://localhost.example:1234",
            "fd://",
            "vsock://2:1234",
            "127.0.0.1:1234",
        ] {
            assert!(!is_local(a), "{a}");
        }
    }

    #[test]
    fn mutual_tls_is_all_three_files() {
        let all = ServerTls {
            cert: true,
            key: true,
            ca: true,
        };
        assert!(all.mutual());
        assert!(!ServerTls { ca: false, ..all }.mutual());
        assert_eq!(
            ServerTls { ca: false, ..all }.missing(),
            "--tlscacert (beside the two given)"
        );
        assert_eq!(
            ServerTls::default().missing(),
            "--tlscert, --tlskey and --tlscacert"
        );
    }

    fn check(name: &str, flags: &[&str], insecure: bool) -> Result<()> {
        let flags = strings(flags);
        check_daemon_flags(
            &[FlagSource {
                name: name.into(),
                flags: &flags,
            }],
            None,
            insecure,
        )
    }

    #[test]
    fn an_addr_in_the_daemon_flags_follows_the_rule_in_every_spelling() {
        for flags in [
            &["--addr", "tcp://0.0.0.0:1234"][..],
            &["--addr=tcp://0.0.0.0:1234"],
            &["-addr", "tcp://0.0.0.0:1234"],
            &[
                "--debug",
                "--addr=unix:///x.sock",
                "--addr=tcp://0.0.0.0:1234",
            ],
        ] {
            let e = check("BUILDKITD_FLAGS", flags, false).unwrap_err();
            assert_eq!(
                e.to_string(),
                "BUILDKITD_FLAGS --addr tcp://0.0.0.0:1234 is reachable from other hosts: give --tlscert, --tlskey and --tlscacert among the daemon's flags for mutual TLS, or pass --insecure-plaintext",
                "{flags:?}"
            );
            assert!(check("BUILDKITD_FLAGS", flags, true).is_ok());
        }
        assert!(check(
            "BUILDKITD_FLAGS",
            &["--addr", "tcp://127.0.0.1:1234"],
            false
        )
        .is_ok());
        assert!(check("BUILDKITD_FLAGS", &["--addr=unix:///s.sock"], false).is_ok());
        // Other flags that merely start alike are not addresses.
        assert!(check("BUILDKITD_FLAGS", &["--address-x=tcp://0.0.0.0:1"], false).is_ok());
    }

    #[test]
    fn mutual_tls_flags_anywhere_in_the_daemon_flags_allow_it() {
        let tls = [
            "--tlscert=/c/cert.pem",
            "--tlskey",
            "/c/key.pem",
            "--tlscacert=/c/ca.pem",
        ];
        let mut with_tls = tls.to_vec();
        with_tls.push("--addr=tcp://0.0.0.0:1234");
        assert!(check("--buildkitd-flags", &with_tls, false).is_ok());
        // Server TLS without a client CA lets any client in.
        let e = check(
            "--buildkitd-flags",
            &["--tlscert=/c", "--tlskey=/k", "--addr=tcp://0.0.0.0:1"],
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("give --tlscacert (beside the two given) among the daemon's flags"),
            "{e}"
        );
        // An emptied flag is unset, as buildkitd reads it.
        let e = check(
            "--buildkitd-flags",
            &[
                "--tlscert=/c",
                "--tlskey=/k",
                "--tlscacert=",
                "--addr=tcp://0.0.0.0:1",
            ],
            false,
        );
        assert!(e.is_err());
        // TLS in bkrun.toml's flags covers an address in BUILDKITD_FLAGS: one daemon gets both.
        let file = strings(&tls);
        let env = strings(&["--addr=tcp://0.0.0.0:1234"]);
        let sources = [
            FlagSource {
                name: "buildkitd_flags in /etc/bkrun/bkrun.toml".into(),
                flags: &file,
            },
            FlagSource {
                name: "BUILDKITD_FLAGS".into(),
                flags: &env,
            },
        ];
        assert!(check_daemon_flags(&sources, None, false).is_ok());
        // Without it, the refusal names where the address came from.
        let e = check_daemon_flags(&sources[1..], None, false).unwrap_err();
        assert!(e.to_string().starts_with("BUILDKITD_FLAGS --addr "), "{e}");
    }

    #[test]
    fn the_config_file_a_config_flag_names_gives_tls_and_a_debug_address() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("buildkitd.toml");
        std::fs::write(
            &conf,
            "[grpc]\ndebugAddress = \"tcp://0.0.0.0:6060\"\n[grpc.tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n",
        )
        .unwrap();
        let config = format!("--config={}", conf.display());
        assert!(check(
            "BUILDKITD_FLAGS",
            &[&config, "--addr=tcp://0.0.0.0:1"],
            false
        )
        .is_err());
        let e = check("BUILDKITD_FLAGS", &[&config], false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("grpc.debugAddress in {} tcp://0.0.0.0:6060 serves buildkitd's debug handlers without TLS to other hosts: give a loopback address such as tcp://127.0.0.1:6060, or pass --insecure-plaintext", conf.display())
        );
        // A --debugaddr flag wins over the file's, as in buildkitd.
        assert!(check(
            "BUILDKITD_FLAGS",
            &[
                &config,
                "--debugaddr=tcp://127.0.0.1:6060",
                "--addr=tcp://0.0.0.0:1"
            ],
            false
        )
        .is_ok());
        // A missing file gives nothing (buildkitd says why it cannot read it).
        assert!(check(
            "BUILDKITD_FLAGS",
            &["--config=/no/such.toml", "--addr=tcp://0.0.0.0:1"],
            false
        )
        .is_err());
    }

    #[test]
    fn debug_listeners_off_loopback_need_insecure_plaintext() {
        let e = check(
            "--buildkitd-flags",
            &["--debugaddr", "tcp://0.0.0.0:6060"],
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--buildkitd-flags --debugaddr tcp://0.0.0.0:6060 serves"),
            "{e}"
        );
        assert!(check(
            "--buildkitd-flags",
            &["--debugaddr=tcp://0.0.0.0:6060"],
            true
        )
        .is_ok());
        let e = check_daemon_flags(&[], Some("tcp://0.0.0.0:6060"), false).unwrap_err();
        assert!(e.to_string().starts_with("BUILDKITD_DEBUGADDR "), "{e}");
        assert!(check_daemon_flags(&[], Some("tcp://localhost:6060"), false).is_ok());
    }
}
