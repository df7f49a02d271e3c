//! Registry access for a build, settled before a daemon starts: where the Docker config with the logins is, whether bkrun fetches registry tokens itself, and the TLS trust bkrun.toml gives registry hosts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::csv::parse_bool;
use crate::config::DaemonConfig;

/// How the session answers the daemon's registry questions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The Docker config file the logins are read from (it may not exist: no logins).
    pub docker_config: Option<PathBuf>,
    /// bkrun fetches registry tokens itself, keeping passwords on this side; false
    /// (BUILDKIT_NO_CLIENT_TOKEN) leaves that to the daemon.
    pub client_tokens: bool,
    /// Extra TLS trust per registry host for the tokens bkrun fetches.
    pub tls: BTreeMap<String, RegistryTls>,
    /// Every source of logins in precedence order, and the cloud identity's variables
    /// (creds/); empty: only `docker_config`.
    pub sources: crate::creds::Sources,
}

/// bkrun.toml's `[buildkitd.registry."HOST"]` `ca`, `insecure` and `http`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTls {
    pub ca: Vec<PathBuf>,
    pub insecure: bool,
    /// Whether the daemon reaches the registry over plain http (None: BuildKit's default).
    pub http: Option<bool>,
}

impl RegistryAuth {
    /// The credential store over these settings: every source read and parsed (a broken one
    /// fails here); `docker_config` alone when no sources were located.
    pub fn store(&self) -> anyhow::Result<crate::creds::Store> {
        let mut sources = self.sources.clone();
        if sources.inputs.is_empty() {
            if let Some(p) = &self.docker_config {
                sources.inputs.push(crate::creds::Input::File {
                    path: p.clone(),
                    via: "the Docker config",
                });
            }
        }
        crate::creds::Store::open(&sources, self.session_tls())
    }

    /// The TLS trust per host in the session's terms, for the two clients that reach registries
    /// from bkrun: the session's token requests and bkrun's own registry client.
    pub fn session_tls(&self) -> BTreeMap<String, crate::session::token::RegistryTls> {
        self.tls
            .iter()
            .map(|(host, t)| {
                let tls = crate::session::token::RegistryTls {
                    ca: t.ca.clone(),
                    insecure: t.insecure,
                    http: t.http,
                };
                (host.clone(), tls)
            })
            .collect()
    }
}

/// True unless BUILDKIT_NO_CLIENT_TOKEN is a true value in Go's spelling (buildctl reads it with
/// strconv.ParseBool): the opt-out for clients that cannot reach a registry's token server.
pub fn client_tokens_enabled(no_client_token: Option<&str>) -> bool {
    no_client_token.and_then(parse_bool) != Some(true)
}

/// bkrun.toml's registry CAs and `insecure`: the daemon applies them to its own token requests
/// for those hosts, so bkrun's token requests for them trust the same. `http` says which
/// registries are plain http, whose token realms may be too.
pub fn tls_from(daemon_config: Option<&DaemonConfig>) -> BTreeMap<String, RegistryTls> {
    let Some(d) = daemon_config else {
        return BTreeMap::new();
    };
    d.registry
        .iter()
        .filter(|(_, r)| !r.ca.is_empty() || r.insecure == Some(true) || r.http.is_some())
        .map(|(host, r)| {
            let tls = RegistryTls {
                ca: r.ca.iter().map(PathBuf::from).collect(),
                insecure: r.insecure == Some(true),
                http: r.http,
            };
            (host.clone(), tls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_no_client_token_is_read_as_go_reads_booleans() {
        assert!(client_tokens_enabled(None));
        assert!(client_tokens_enabled(Some("0")));
        assert!(client_tokens_enabled(Some("false")));
        assert!(!client_tokens_enabled(Some("1")));
        assert!(!client_tokens_enabled(Some("true")));
    }

    #[test]
    fn registry_tls_comes_from_bkrun_toml() {
        let file = crate::config::parse_config(
            r#"
[buildkitd.registry."reg.example:5000"]
ca = ["/etc/reg-ca.pem"]
[buildkitd.registry."plain.example"]
http = true
[buildkitd.registry."self-signed.example"]
insecure = true
"#,
        )
        .unwrap();
        let tls = tls_from(file.buildkitd.as_ref());
        assert_eq!(
            tls.keys().collect::<Vec<_>>(),
            ["plain.example", "reg.example:5000", "self-signed.example"]
        );
        assert_eq!(tls["plain.example"].http, Some(true));
        assert_eq!(tls["reg.example:5000"].http, None);
        assert_eq!(
            tls["reg.example:5000"].ca,
            [PathBuf::from("/etc/reg-ca.pem")]
        );
        assert!(!tls["reg.example:5000"].insecure);
        assert!(tls["self-signed.example"].insecure);
        assert!(tls_from(None).is_empty());
        let session = RegistryAuth {
            tls,
            ..Default::default()
        }
        .session_tls();
        assert_eq!(session["plain.example"].http, Some(true));
        assert!(session["self-signed.example"].insecure);
        assert_eq!(
            session["reg.example:5000"].ca,
            [PathBuf::from("/etc/reg-ca.pem")]
        );
    }
}
