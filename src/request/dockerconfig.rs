//! The Docker config of whoever runs bkrun (`auths`, `credsStore`, `credHelpers`, identity tokens), as `docker login` left it: where it is, and the registry logins it holds, asking credential helpers when it names them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

/// Docker Hub's credentials live under its old index URL, whatever host the daemon asks for.
const HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
const HUB_HOSTS: &[&str] = &["registry-1.docker.io", "docker.io", "index.docker.io"];

/// A parsed config.json.
#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

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
    /// Reads the config; a missing file is an empty config, a broken one an error.
    pub fn load(path: Option<&Path>) -> Result<DockerConfig> {
        let Some(path) = path else {
            return Ok(DockerConfig::default());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "the Docker config {} is not valid JSON: fix it or log in again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the Docker config {}", path.display()))
            }
        }
    }

    fn key_for(host: &str) -> &str {
        if HUB_HOSTS.contains(&host) {
            HUB_CONFIG_KEY
        } else {
            host
        }
    }

    /// The credentials for `host`, from its credential helper, the default store, or `auths`.
    pub fn credentials(&self, host: &str) -> Result<Option<Login>> {
        let key = Self::key_for(host);
        if let Some(helper) = self
            .cred_helpers
            .get(key)
            .or_else(|| self.cred_helpers.get(host))
        {
            return run_helper(helper, key);
        }
        if let Some(store) = &self.creds_store {
            if let Some(c) = run_helper(store, key)? {
                return Ok(Some(c));
            }
        }
        let entry = self.auths.get(key).or_else(|| {
            self.auths
                .iter()
                .find(|(k, _)| strip_scheme(k) == host)
                .map(|(_, v)| v)
        });
        let Some(e) = entry else { return Ok(None) };
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
}

fn strip_scheme(k: &str) -> &str {
    k.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
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
