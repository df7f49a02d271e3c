//! One registry-login file in any of its forms — Docker's config.json, a Kubernetes `.dockerconfigjson` (the same JSON), the legacy `.dockercfg` (no `auths` wrapper), containers' auth.json (keys may name `host/namespace/repo`) — and the logins it holds, asking credential helpers when it names them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

/// Docker Hub's credentials live under its old index URL, whatever host the daemon asks for.
const HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
const HUB_HOSTS: &[&str] = &["registry-1.docker.io", "docker.io", "index.docker.io"];

/// A parsed login file, whatever its form.
#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

/// The keys that make a JSON object a config.json rather than a legacy `.dockercfg`, whose
/// top level is the `auths` map itself.
const CONFIG_KEYS: &[&str] = &[
    "auths",
    "credsStore",
    "credHelpers",
    "HttpHeaders",
    "psFormat",
];

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// A user name and secret for a registry (an identity token has no user name).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Login {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Login {{ username: {:?}, secret: {} bytes }}",
            self.username,
            self.secret.len()
        )
    }
}

/// Where the Docker config is: $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = env("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    env("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

impl DockerConfig {
    /// Parses any of the forms: config.json (also `.dockerconfigjson`, DOCKER_AUTH_CONFIG,
    /// auth.json) or a legacy `.dockercfg`, told apart by their top-level keys as the kubelet
    /// and docker's own loader do. The error names no value (it may sit beside a password).
    pub fn parse(bytes: &[u8]) -> std::result::Result<DockerConfig, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
        let serde_json::Value::Object(top) = v else {
            return Err("not a JSON object".into());
        };
        // Legacy only when every value looks like a login: a config.json with only other
        // settings (currentContext, proxies, …) is an empty config, not a broken .dockercfg.
        let legacy = !top.is_empty()
            && !top.keys().any(|k| CONFIG_KEYS.contains(&k.as_str()))
            && top.values().all(|v| {
                v.as_object().is_some_and(|o| {
                    ["auth", "username", "identitytoken", "email"]
                        .iter()
                        .any(|f| o.contains_key(*f))
                })
            });
        if !legacy {
            // serde's message would quote the offending value, which may be a password.
            return serde_json::from_value(serde_json::Value::Object(top)).map_err(|_| {
                "not a Docker config: a field has the wrong type (auths maps registries to {auth, username, password, identitytoken}; credsStore is a name; credHelpers maps registries to names)".to_string()
            });
        }
        // `.dockercfg`: registry → {auth, email}.
        let auths: HashMap<String, AuthEntry> =
            serde_json::from_value(serde_json::Value::Object(top)).map_err(|_| {
                "a legacy .dockercfg whose entries are not {auth, email}".to_string()
            })?;
        Ok(DockerConfig {
            auths,
            ..DockerConfig::default()
        })
    }

    fn key_for(host: &str) -> &str {
        if HUB_HOSTS.contains(&host) {
            HUB_CONFIG_KEY
        } else {
            host
        }
    }

    /// The registries this file knows (auths keys and credHelpers, as written; credsStore as
    /// `*`), for `bkrun config`.
    pub fn known(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .auths
            .keys()
            .chain(self.cred_helpers.keys())
            .map(|k| canonical(k))
            .collect();
        k.sort();
        k.dedup();
        if let Some(s) = &self.creds_store {
            k.push(format!("* (credsStore {s})"));
        }
        k
    }

    /// Whether this file may have something for `host` (repository `repo`, when known): an
    /// entry, a helper, or a default store that may know it.
    pub fn answers(&self, host: &str, repo: Option<&str>) -> bool {
        self.creds_store.is_some() || self.knows(host, repo)
    }

    /// Whether an `auths` key names a namespace or repository of `host` (`host/team`).
    pub fn has_repository_logins(&self, host: &str) -> bool {
        let prefix = format!("{}/", canonical(host));
        self.auths.keys().any(|k| canonical(k).starts_with(&prefix))
    }

    /// Whether this file names `host` itself (an entry or a helper): then it answers for it,
    /// even with nothing, as docker would; a default store that knows nothing does not.
    pub fn knows(&self, host: &str, repo: Option<&str>) -> bool {
        self.helper_for(host).is_some() || self.entry_for(host, repo).is_some()
    }

    fn helper_for(&self, host: &str) -> Option<&String> {
        let key = Self::key_for(host);
        self.cred_helpers
            .get(key)
            .or_else(|| self.cred_helpers.get(host))
            .or_else(|| {
                let want = canonical(host);
                self.cred_helpers
                    .iter()
                    .find(|(k, _)| canonical(k) == want)
                    .map(|(_, v)| v)
            })
    }

    /// The `auths` entry for `host`: the most specific `host/namespace/repo` key first
    /// (containers-auth.json(5)), then the host, with or without a scheme.
    fn entry_for(&self, host: &str, repo: Option<&str>) -> Option<&AuthEntry> {
        let want = canonical(host);
        let mut candidates = Vec::new();
        if let Some(r) = repo {
            let parts: Vec<&str> = r.split('/').collect();
            for n in (1..=parts.len()).rev() {
                candidates.push(format!("{want}/{}", parts[..n].join("/")));
            }
        }
        candidates.push(want);
        // A key written as asked for first; then any spelling of it (scheme, slash, Hub's
        // names), the shortest key first so the pick does not depend on the map's order.
        candidates.iter().find_map(|c| {
            self.auths.get(c.as_str()).or_else(|| {
                self.auths
                    .iter()
                    .filter(|(k, _)| canonical(k) == *c)
                    .min_by_key(|(k, _)| (k.len(), k.as_str()))
                    .map(|(_, v)| v)
            })
        })
    }

    /// The credentials for `host`, from its credential helper, the default store, or `auths`.
    pub fn credentials(&self, host: &str) -> Result<Option<Login>> {
        self.credentials_for(host, None)
    }

    /// As `credentials`, with the repository (a `namespace/repo` key may answer for it).
    pub fn credentials_for(&self, host: &str, repo: Option<&str>) -> Result<Option<Login>> {
        let key = Self::key_for(host);
        if let Some(helper) = self.helper_for(host) {
            return run_helper(helper, key);
        }
        if let Some(store) = &self.creds_store {
            if let Some(c) = run_helper(store, key)? {
                return Ok(Some(c));
            }
        }
        let Some(e) = self.entry_for(host, repo) else {
            return Ok(None);
        };
        entry_login(e, key)
    }
}

/// One `auths` entry's login: an identity token, `auth` (base64 user:password), or both fields.
fn entry_login(e: &AuthEntry, key: &str) -> Result<Option<Login>> {
    if let Some(t) = e.identity_token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Login {
            username: String::new(),
            secret: t.clone(),
        }));
    }
    if let Some(a) = e.auth.as_ref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| {
                anyhow!("the Docker config's auth for {key} is not base64: log in again")
            })?;
        let text = String::from_utf8_lossy(&raw);
        let (u, p) = text.split_once(':').ok_or_else(|| {
            anyhow!("the Docker config's auth for {key} is not user:password: log in again")
        })?;
        return Ok(Some(Login {
            username: u.to_string(),
            secret: p.to_string(),
        }));
    }
    Ok(e.username
        .clone()
        .zip(e.password.clone())
        .map(|(username, secret)| Login { username, secret }))
}

/// A key or host as compared: no scheme, no trailing slash, Docker Hub's names as one, and
/// docker's `/v1/` path of old index URLs dropped.
fn canonical(k: &str) -> String {
    let k = k
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k.strip_suffix("/v1").unwrap_or(k);
    let k = k.strip_suffix("/v2").unwrap_or(k);
    let (host, rest) = k.split_once('/').map_or((k, ""), |(h, r)| (h, r));
    let host = if HUB_HOSTS.contains(&host) {
        "docker.io"
    } else {
        host
    };
    if rest.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{rest}")
    }
}

/// Asks `docker-credential-NAME get` for the server's credentials (a JSON answer on stdout).
fn run_helper(name: &str, server: &str) -> Result<Option<Login>> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{name}");
    let (exit, stdout, stderr) = crate::host::reaper::output(Command::new(&program).arg("get"), server.as_bytes())
        .with_context(|| format!("the Docker config names the credential helper {program}, which cannot be run: install it or fix credsStore/credHelpers"))?;
    if exit != crate::host::reaper::Exit::Code(0) {
        let said = String::from_utf8_lossy(&stdout).trim().to_string()
            + String::from_utf8_lossy(&stderr).trim();
        // Helpers answer "credentials not found" for servers they don't know: that's no credentials.
        if said.to_lowercase().contains("not found") {
            return Ok(None);
        }
        bail!("{program} get failed for {server}: {said}");
    }
    let a: Answer = serde_json::from_slice(&stdout)
        .with_context(|| format!("{program} get answered something that is not its JSON"))?;
    Ok(Some(helper_login(a.username, a.secret)))
}

/// Helpers store an identity token under the user name `<token>` (docker's convention): it is
/// then a secret with no user name, which the daemon uses as a refresh token, not a password.
fn helper_login(username: String, secret: String) -> Login {
    if username == "<token>" {
        return Login {
            username: String::new(),
            secret,
        };
    }
    Login { username, secret }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn auths_entries_and_identity_tokens() {
        let c = config(
            r#"{"auths":{"reg.example:5000":{"auth":"dXNlcjpwYTpzcw=="},"https://index.docker.io/v1/":{"identitytoken":"tok"}}}"#,
        );
        assert_eq!(
            c.credentials("reg.example:5000").unwrap(),
            Some(Login {
                username: "user".into(),
                secret: "pa:ss".into()
            })
        );
        assert_eq!(
            c.credentials("registry-1.docker.io").unwrap(),
            Some(Login {
                username: String::new(),
                secret: "tok".into()
            })
        );
        assert_eq!(c.credentials("other.example").unwrap(), None);
    }

    #[test]
    fn a_helpers_identity_token_has_no_user_name() {
        assert_eq!(
            helper_login("<token>".into(), "refresh".into()),
            Login {
                username: String::new(),
                secret: "refresh".into()
            }
        );
        assert_eq!(
            helper_login("u".into(), "p".into()).username,
            "u".to_string()
        );
    }

    #[test]
    fn a_missing_helper_is_named() {
        let c = config(r#"{"credHelpers":{"reg.example":"no-such-helper-here"}}"#);
        let e = format!("{:#}", c.credentials("reg.example").unwrap_err());
        assert!(e.contains("docker-credential-no-such-helper-here"), "{e}");
    }

    #[test]
    fn config_location() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(
            config_path(&env),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        let env = |k: &str| (k == "DOCKER_CONFIG").then(|| "/cfg".to_string());
        assert_eq!(config_path(&env), Some(PathBuf::from("/cfg/config.json")));
    }
}
