//! The Authorization bkrun sends a registry: logins from the credential store (creds/: files, DOCKER_AUTH_CONFIG, cloud identities; looked up once per repository), basic auth or bearer tokens from the session's token client, kept for their lifetime per repository in memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;

use super::challenge::Challenge;
use super::errors::Access;
use crate::creds::Store;
use crate::session::credentials::Credentials;
use crate::session::token::{Token, TokenClient, TokenError, TokenRequest};

/// An Authorization header's value, never shown: it holds a password or a token.
#[derive(Clone)]
pub struct Header(pub String);

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({} bytes)", self.0.len())
    }
}

/// What one repository's requests carry, once its registry challenged us.
#[derive(Clone, Debug)]
struct Grant {
    header: Header,
    access: Access,
    /// None: basic auth, which does not expire.
    until: Option<Instant>,
}

impl Grant {
    fn serves(&self, access: Access) -> bool {
        (self.access == Access::Push || access == Access::Pull)
            && self.until.is_none_or(|t| Instant::now() < t)
    }
}

/// Logins and grants for one registry client's lifetime.
pub struct Authz {
    store: Arc<Store>,
    tokens: TokenClient,
    logins: Mutex<HashMap<String, Option<Credentials>>>,
    /// By (registry host, repository).
    grants: Mutex<HashMap<(String, String), Grant>>,
}

impl Authz {
    pub fn new(store: Store, tokens: TokenClient) -> Authz {
        Authz {
            store: Arc::new(store),
            tokens,
            logins: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
        }
    }

    /// The header a request to `repository` at `host` carries before any challenge, if an
    /// earlier one was answered for the access it needs.
    pub fn cached(&self, host: &str, repository: &str, access: Access) -> Option<Header> {
        let grants = lock(&self.grants);
        let g = grants.get(&(host.to_string(), repository.to_string()))?;
        g.serves(access).then(|| g.header.clone())
    }

    /// `host`'s login for `repo` (containers' auth.json may hold a login for it alone); a
    /// credential helper may run or a cloud identity be asked: off the async threads.
    pub async fn login_for(&self, host: &str, repo: Option<&str>) -> Result<Option<Credentials>> {
        let key = match repo {
            Some(r) => format!("{host}/{r}"),
            None => host.to_string(),
        };
        if let Some(c) = lock(&self.logins).get(&key) {
            return Ok(c.clone());
        }
        let (store, h, r) = (
            self.store.clone(),
            host.to_string(),
            repo.map(str::to_string),
        );
        let found = tokio::task::spawn_blocking(move || store.lookup(&h, r.as_deref()))
            .await
            .context("the credential look-up did not finish")??
            .filter(|c| !c.secret.is_empty());
        lock(&self.logins).insert(key, found.clone());
        Ok(found)
    }

    /// Answers `challenge` for `repository` with `creds`, keeps the grant, and returns its
    /// header; Ok(None) when the registry wants basic auth and there is no login to send.
    pub async fn answer(
        &self,
        challenge: &Challenge,
        host: &str,
        repository: &str,
        access: Access,
        creds: Option<&Credentials>,
    ) -> Result<Option<Header>, TokenError> {
        let grant = match challenge {
            Challenge::Basic => {
                let Some(c) = creds else { return Ok(None) };
                let pair = format!("{}:{}", c.username, c.secret);
                Grant {
                    header: Header(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )),
                    access: Access::Push,
                    until: None,
                }
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let req = TokenRequest {
                    host: host.to_string(),
                    realm: realm.clone(),
                    service: service.clone(),
                    scopes: scopes(repository, access, scope.as_deref()),
                    client_id: String::new(),
                };
                let t = self.tokens.fetch(&req, creds).await?;
                Grant {
                    header: Header(format!("Bearer {}", t.token)),
                    access,
                    until: Some(Instant::now() + lifetime(&t)),
                }
            }
        };
        let header = grant.header.clone();
        lock(&self.grants).insert((host.to_string(), repository.to_string()), grant);
        Ok(Some(header))
    }

    /// Forgets a grant the registry no longer takes (a token revoked or expired early).
    pub fn forget(&self, host: &str, repository: &str) {
        lock(&self.grants).remove(&(host.to_string(), repository.to_string()));
    }
}

/// The scopes a token is asked for: ours for the repository, and the challenge's own when it
/// names something else (a registry may want more than we would ask).
fn scopes(repository: &str, access: Access, challenged: Option<&str>) -> Vec<String> {
    let mut s = vec![format!("repository:{repository}:{}", access.actions())];
    for c in challenged.into_iter().flat_map(str::split_whitespace) {
        if !s.iter().any(|x| x == c) {
            s.push(c.to_string());
        }
    }
    s
}

/// How long a token is used: 90% of its lifetime, as the daemon keeps them, so a token is not
/// sent in its last seconds and refused mid-push.
fn lifetime(t: &Token) -> Duration {
    Duration::from_secs(u64::try_from(t.expires_in).unwrap_or(60)).mul_f64(0.9)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ours_plus_what_the_registry_named() {
        assert_eq!(
            scopes("cache/m", Access::Push, None),
            ["repository:cache/m:pull,push"]
        );
        assert_eq!(
            scopes(
                "cache/m",
                Access::Pull,
                Some("repository:cache/m:pull repository:base:pull")
            ),
            ["repository:cache/m:pull", "repository:base:pull"]
        );
    }

    #[test]
    fn grants_serve_their_access_until_they_expire() {
        let g = |access, until| Grant {
            header: Header("Bearer secret-token".into()),
            access,
            until,
        };
        let later = Some(Instant::now() + Duration::from_secs(60));
        assert!(g(Access::Push, later).serves(Access::Pull));
        assert!(!g(Access::Pull, later).serves(Access::Push));
        assert!(g(Access::Push, None).serves(Access::Push));
        assert!(!g(Access::Pull, Some(Instant::now())).serves(Access::Pull));
        assert!(!format!("{:?}", g(Access::Push, None)).contains("secret"));
        let t = Token {
            token: String::new(),
            expires_in: 300,
            issued_at: 0,
        };
        assert_eq!(lifetime(&t), Duration::from_secs(270));
    }

    #[tokio::test]
    async fn basic_auth_without_a_login_is_no_answer() {
        let a = Authz::new(Store::empty(), TokenClient::for_bkrun(Default::default()));
        let h = a
            .answer(&Challenge::Basic, "reg:5000", "r", Access::Pull, None)
            .await
            .unwrap();
        assert!(h.is_none());
        let c = Credentials {
            username: "builder".into(),
            secret: "pw".into(),
        };
        let h = a
            .answer(&Challenge::Basic, "reg:5000", "r", Access::Pull, Some(&c))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.0, "Basic YnVpbGRlcjpwdw==");
        assert!(a.cached("reg:5000", "r", Access::Push).is_some());
        assert!(a.cached("reg:5000", "other", Access::Pull).is_none());
        a.forget("reg:5000", "r");
        assert!(a.cached("reg:5000", "r", Access::Pull).is_none());
    }
}
