//! The session's Auth service: registry credentials for the daemon from the Docker config (`auths`, `credsStore`, `credHelpers`, identity tokens), as `docker login` left them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use crate::proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};

/// Docker Hub's credentials live under its old index URL, whatever host the daemon asks for.
const HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
const HUB_HOSTS: &[&str] = &["registry-1.docker.io", "docker.io", "index.docker.io"];

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

/// A user name and secret (an identity token has no user name).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, secret: {} bytes }}",
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
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>> {
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
            return Ok(Some(Credentials {
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
            return Ok(Some(Credentials {
                username: u.to_string(),
                secret: p.to_string(),
            }));
        }
        Ok(e.username
            .clone()
            .zip(e.password.clone())
            .map(|(username, secret)| Credentials { username, secret }))
    }
}

fn strip_scheme(k: &str) -> &str {
    k.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

/// Asks `docker-credential-NAME get` for the server's credentials (a JSON answer on stdout).
fn run_helper(name: &str, server: &str) -> Result<Option<Credentials>> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{name}");
    let (exit, stdout, stderr) = crate::reaper::output(Command::new(&program).arg("get"), server.as_bytes())
        .with_context(|| format!("the Docker config names the credential helper {program}, which cannot be run: install it or fix credsStore/credHelpers"))?;
    if exit != crate::reaper::Exit::Code(0) {
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
    Ok(Some(helper_credentials(a.username, a.secret)))
}

/// Helpers store an identity token under the user name `<token>` (docker's convention): it is
/// then a secret with no user name, which the daemon uses as a refresh token, not a password.
fn helper_credentials(username: String, secret: String) -> Credentials {
    if username == "<token>" {
        return Credentials {
            username: String::new(),
            secret,
        };
    }
    Credentials { username, secret }
}

/// Answers the daemon's credential requests from a Docker config.
#[derive(Clone)]
pub struct AuthProvider {
    config: Arc<DockerConfig>,
}

impl AuthProvider {
    pub fn new(config: DockerConfig) -> Self {
        AuthProvider {
            config: Arc::new(config),
        }
    }

    pub fn into_server(self) -> AuthServer<Self> {
        AuthServer::new(self)
    }
}

#[tonic::async_trait]
impl Auth for AuthProvider {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let config = self.config.clone();
        // Helpers are programs: run them off the async threads.
        let found = tokio::task::spawn_blocking(move || config.credentials(&host))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        let c = found.unwrap_or_default();
        Ok(Response::new(CredentialsResponse {
            username: c.username,
            secret: c.secret,
        }))
    }

    // Client-side token signing is not offered: the daemon then asks for credentials and fetches
    // registry tokens itself (Unimplemented is how a client says so).
    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented(
            "bkrun lets the daemon fetch registry tokens",
        ))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "bkrun lets the daemon fetch registry tokens",
        ))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "bkrun lets the daemon fetch registry tokens",
        ))
    }
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
            Some(Credentials {
                username: "user".into(),
                secret: "pa:ss".into()
            })
        );
        assert_eq!(
            c.credentials("registry-1.docker.io").unwrap(),
            Some(Credentials {
                username: String::new(),
                secret: "tok".into()
            })
        );
        assert_eq!(c.credentials("other.example").unwrap(), None);
    }

    #[test]
    fn a_helpers_identity_token_has_no_user_name() {
        assert_eq!(
            helper_credentials("<token>".into(), "refresh".into()),
            Credentials {
                username: String::new(),
                secret: "refresh".into()
            }
        );
        assert_eq!(
            helper_credentials("u".into(), "p".into()).username,
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
