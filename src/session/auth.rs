//! The session's Auth service: registry credentials from the Docker config (`auths`, `credsStore`, `credHelpers`, identity tokens), as `docker login` left them, and the token-authority key that lets the daemon have bkrun fetch registry tokens.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use super::token::{ErrorKind, RegistryTls, TokenClient, TokenRequest};

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

/// How long a host's credentials are reused before the config or helper is asked again: BuildKit's
/// client uses 4m50s, under the 5-minute life of some helpers' answers (Google Artifact Registry
/// through workload identity).
const CREDENTIALS_TTL: Duration = Duration::from_secs(4 * 60 + 50);

/// True unless BUILDKIT_NO_CLIENT_TOKEN is a true value in Go's spelling (buildctl reads it with
/// strconv.ParseBool): the opt-out for clients that cannot reach a registry's token server.
pub fn client_tokens_enabled(no_client_token: Option<&str>) -> bool {
    !matches!(
        no_client_token,
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// Answers the daemon's auth calls from a Docker config: credentials, and registry tokens that
/// bkrun fetches itself so that passwords and refresh tokens stay on this side.
#[derive(Clone)]
pub struct AuthProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<DockerConfig>,
    tokens: TokenClient,
    client_tokens: bool,
    cache: Mutex<HashMap<String, (Instant, Option<Credentials>)>>,
    /// Per registry host, randomness of this process mixed into the token-authority key, so the
    /// daemon (which picks the salt) cannot choose what we derive the key from.
    seeds: Mutex<HashMap<String, [u8; 16]>>,
}

impl AuthProvider {
    /// `registry_tls` is the extra trust per registry host for token requests; `client_tokens`
    /// false (BUILDKIT_NO_CLIENT_TOKEN) leaves token fetching to the daemon.
    pub fn new(
        config: DockerConfig,
        registry_tls: BTreeMap<String, RegistryTls>,
        client_tokens: bool,
    ) -> Self {
        AuthProvider {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                tokens: TokenClient::new(registry_tls),
                client_tokens,
                cache: Mutex::new(HashMap::new()),
                seeds: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn into_server(self) -> AuthServer<Self> {
        AuthServer::new(self)
    }

    /// The host's credentials, from the cache while they are fresh.
    async fn lookup(&self, host: &str) -> Result<Option<Credentials>, Status> {
        if let Some((at, c)) = lock(&self.inner.cache).get(host) {
            if at.elapsed() < CREDENTIALS_TTL {
                return Ok(c.clone());
            }
        }
        let config = self.inner.config.clone();
        let h = host.to_string();
        // Helpers are programs: run them off the async threads.
        let found = tokio::task::spawn_blocking(move || config.credentials(&h))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        lock(&self.inner.cache).insert(host.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// The Ed25519 key that identifies this client's tokens for `host` to the daemon, as BuildKit's
    /// client derives it: HMAC-SHA256 keyed by the daemon's salt, over our seed when there are
    /// credentials. Anonymous clients all derive the same key, so the daemon may share anonymous
    /// tokens between their sessions, and never a logged-in client's.
    async fn authority_key(&self, host: &str, salt: &[u8]) -> Result<Ed25519KeyPair, Status> {
        if !self.inner.client_tokens {
            // Unavailable (like buildctl) makes the daemon ask for credentials instead.
            return Err(Status::unavailable(
                "client-side registry tokens are turned off (BUILDKIT_NO_CLIENT_TOKEN)",
            ));
        }
        let creds = self.lookup(host).await?;
        let seed = {
            let mut seeds = lock(&self.inner.seeds);
            match seeds.get(host) {
                Some(s) => *s,
                None => {
                    let mut s = [0u8; 16];
                    SystemRandom::new()
                        .fill(&mut s)
                        .map_err(|_| Status::internal("no randomness for the token key"))?;
                    seeds.insert(host.to_string(), s);
                    s
                }
            }
        };
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, salt));
        if creds.is_some_and(|c| !c.secret.is_empty()) {
            mac.update(&seed);
        }
        let sum = mac.sign();
        Ed25519KeyPair::from_seed_unchecked(&sum.as_ref()[..32])
            .map_err(|_| Status::internal("cannot derive the token key"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tonic::async_trait]
impl Auth for AuthProvider {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let c = self.lookup(&host).await?.unwrap_or_default();
        Ok(Response::new(CredentialsResponse {
            username: c.username,
            secret: c.secret,
        }))
    }

    /// The daemon calls this only after GetTokenAuthority gave it a key: it then sends us the
    /// challenge (realm, service, scopes) and we fetch the token with the credentials we keep.
    async fn fetch_token(
        &self,
        request: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        let r = request.into_inner();
        let creds = self.lookup(&r.host).await?;
        let req = TokenRequest {
            host: r.host,
            realm: r.realm,
            service: r.service,
            scopes: r.scopes,
            client_id: r.client_id,
        };
        match self.inner.tokens.fetch(&req, creds.as_ref()).await {
            Ok(t) => Ok(Response::new(FetchTokenResponse {
                token: t.token,
                expires_in: t.expires_in,
                issued_at: t.issued_at,
            })),
            Err(e) => Err(match e.kind {
                ErrorKind::Refused => Status::unauthenticated(e.message),
                ErrorKind::Unreachable => Status::unavailable(e.message),
                ErrorKind::Failed => Status::unknown(e.message),
            }),
        }
    }

    /// Without this the daemon never calls FetchToken: on a bearer challenge it asks every session
    /// for a token authority, and only with a key does it route token fetches to the client; an
    /// Unimplemented or Unavailable answer makes it take our credentials and fetch tokens itself.
    async fn get_token_authority(
        &self,
        request: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        let r = request.into_inner();
        let key = self.authority_key(&r.host, &r.salt).await?;
        Ok(Response::new(GetTokenAuthorityResponse {
            public_key: key.public_key().as_ref().to_vec(),
        }))
    }

    /// The daemon reuses a token fetcher of another session only if this session proves it holds
    /// the same key: we sign its random payload (NaCl's signed-message form: signature, then
    /// payload). Unimplemented would be safe (no sharing) but would cost each session its own tokens.
    async fn verify_token_authority(
        &self,
        request: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        let r = request.into_inner();
        let key = self.authority_key(&r.host, &r.salt).await?;
        let mut signed = key.sign(&r.payload).as_ref().to_vec();
        signed.extend_from_slice(&r.payload);
        Ok(Response::new(VerifyTokenAuthorityResponse { signed }))
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

    fn provider(json: &str, client_tokens: bool) -> AuthProvider {
        AuthProvider::new(config(json), BTreeMap::new(), client_tokens)
    }

    async fn authority(p: &AuthProvider, host: &str, salt: &[u8]) -> Vec<u8> {
        p.get_token_authority(Request::new(GetTokenAuthorityRequest {
            host: host.into(),
            salt: salt.to_vec(),
        }))
        .await
        .unwrap()
        .into_inner()
        .public_key
    }

    #[tokio::test]
    async fn token_authority_keys_are_stable_and_private_to_logged_in_clients() {
        let logged_in = r#"{"auths":{"reg.example":{"auth":"dTpw"}}}"#;
        let a = provider(logged_in, true);
        let b = provider(logged_in, true);
        let k = authority(&a, "reg.example", b"salt-1").await;
        assert_eq!(k.len(), 32);
        // Stable for one client, host and daemon salt: the daemon keys its token cache by it.
        assert_eq!(k, authority(&a, "reg.example", b"salt-1").await);
        assert_ne!(k, authority(&a, "reg.example", b"salt-2").await);
        // Another client with the same login has its own seed, so its own key.
        assert_ne!(k, authority(&b, "reg.example", b"salt-1").await);
        // Anonymous clients share one key per salt (anonymous tokens are nobody's secret).
        let anon1 = provider("{}", true);
        let anon2 = provider("{}", true);
        assert_eq!(
            authority(&anon1, "reg.example", b"salt-1").await,
            authority(&anon2, "reg.example", b"salt-1").await
        );
        assert_ne!(k, authority(&anon1, "reg.example", b"salt-1").await);
    }

    #[tokio::test]
    async fn token_authority_proofs_are_nacl_signed_messages() {
        let p = provider(r#"{"auths":{"reg.example":{"auth":"dTpw"}}}"#, true);
        let key = authority(&p, "reg.example", b"salt").await;
        let payload = b"0123456789abcdef0123456789abcdef".to_vec();
        let signed = p
            .verify_token_authority(Request::new(VerifyTokenAuthorityRequest {
                host: "reg.example".into(),
                payload: payload.clone(),
                salt: b"salt".to_vec(),
            }))
            .await
            .unwrap()
            .into_inner()
            .signed;
        assert_eq!(signed.len(), 64 + payload.len());
        assert_eq!(&signed[64..], &payload[..]);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(&payload, &signed[..64])
            .expect("the daemon could not verify our proof");
    }

    #[tokio::test]
    async fn buildkit_no_client_token_hands_tokens_back_to_the_daemon() {
        assert!(client_tokens_enabled(None));
        assert!(client_tokens_enabled(Some("0")));
        assert!(client_tokens_enabled(Some("false")));
        assert!(!client_tokens_enabled(Some("1")));
        assert!(!client_tokens_enabled(Some("true")));
        let p = provider("{}", false);
        // Unavailable is one of the two answers the daemon takes as "fetch tokens yourself".
        let e = p
            .get_token_authority(Request::new(GetTokenAuthorityRequest {
                host: "reg.example".into(),
                salt: b"s".to_vec(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
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
