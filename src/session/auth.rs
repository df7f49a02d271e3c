//! The session's Auth service: registry credentials from an injected source (bkrun's Docker config), and the token-authority key that lets the daemon have bkrun fetch registry tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tonic::{Request, Response, Status};

use super::credentials::{CredentialSource, Credentials};
use super::token::{ErrorKind, RegistryTls, TokenClient, TokenRequest};

use crate::proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use crate::proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};

/// How long a host's credentials are reused before the config or helper is asked again: BuildKit's
/// client uses 4m50s, under the 5-minute life of some helpers' answers (Google Artifact Registry
/// through workload identity).
const CREDENTIALS_TTL: Duration = Duration::from_secs(4 * 60 + 50);

/// Answers the daemon's auth calls from a credential source: credentials, and registry tokens
/// that bkrun fetches itself so that passwords and refresh tokens stay on this side.
#[derive(Clone)]
pub struct AuthProvider {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn CredentialSource>,
    tokens: TokenClient,
    client_tokens: bool,
    cache: Mutex<HashMap<String, (Instant, Option<Credentials>)>>,
    /// Per registry host, randomness of this process mixed into the token-authority key, so the
    /// daemon (which picks the salt) cannot choose what we derive the key from.
    seeds: Mutex<HashMap<String, [u8; 16]>>,
}

impl AuthProvider {
    /// `source` finds each host's credentials; `registry_tls` is the extra trust per registry
    /// host for token requests; `client_tokens` false (BUILDKIT_NO_CLIENT_TOKEN) leaves token
    /// fetching to the daemon.
    pub fn new(
        source: Arc<dyn CredentialSource>,
        registry_tls: BTreeMap<String, RegistryTls>,
        client_tokens: bool,
    ) -> Self {
        AuthProvider {
            inner: Arc::new(Inner {
                source,
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
        self.lookup_for(host, None).await
    }

    /// The credentials for `repo` at `host` when the repository is known (a token request's
    /// scope names it), else the host's.
    async fn lookup_for(
        &self,
        host: &str,
        repo: Option<&str>,
    ) -> Result<Option<Credentials>, Status> {
        let key = match repo {
            Some(r) => format!("{host}/{r}"),
            None => host.to_string(),
        };
        if let Some((at, c)) = lock(&self.inner.cache).get(&key) {
            if at.elapsed() < CREDENTIALS_TTL {
                return Ok(c.clone());
            }
        }
        let source = self.inner.source.clone();
        let (h, r) = (host.to_string(), repo.map(str::to_string));
        // A look-up may run a credential helper or ask a cloud identity: off the async threads.
        let found = tokio::task::spawn_blocking(move || match r {
            Some(r) => source.credentials_for(&h, &r),
            None => source.credentials(&h),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        // Not Unavailable: the daemon would take that for "fetch tokens yourself" (and then ask
        // again), and bkrun for a lost connection; the message is the one line to show.
        .map_err(|e| Status::permission_denied(format!("{e:#}")))?;
        lock(&self.inner.cache).insert(key, (Instant::now(), found.clone()));
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
        // A login for one repository makes this session's tokens for the host private too:
        // the daemon must not share them with anonymous sessions under the shared key.
        let logged_in = creds.is_some_and(|c| !c.secret.is_empty())
            || self.inner.source.has_repository_logins(host);
        if logged_in {
            mac.update(&seed);
        }
        let sum = mac.sign();
        Ed25519KeyPair::from_seed_unchecked(&sum.as_ref()[..32])
            .map_err(|_| Status::internal("cannot derive the token key"))
    }
}

/// The repository a token request is for, when its scopes name exactly one.
fn scope_repository(scopes: &[String]) -> Option<&str> {
    let mut repos = scopes.iter().filter_map(|s| {
        let rest = s.strip_prefix("repository:")?;
        rest.rsplit_once(':').map(|(name, _)| name)
    });
    let first = repos.next()?;
    repos.all(|r| r == first).then_some(first)
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
        let creds = self
            .lookup_for(&r.host, scope_repository(&r.scopes))
            .await?;
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

    /// One login for one host, as a Docker config would give it.
    struct Fixed(Option<(&'static str, Credentials)>);

    impl CredentialSource for Fixed {
        fn credentials(&self, host: &str) -> anyhow::Result<Option<Credentials>> {
            Ok(self
                .0
                .as_ref()
                .filter(|(h, _)| *h == host)
                .map(|(_, c)| c.clone()))
        }
    }

    /// `reg.example` logged in as u:p.
    fn logged_in() -> Fixed {
        Fixed(Some((
            "reg.example",
            Credentials {
                username: "u".into(),
                secret: "p".into(),
            },
        )))
    }

    fn provider(source: Fixed, client_tokens: bool) -> AuthProvider {
        AuthProvider::new(Arc::new(source), BTreeMap::new(), client_tokens)
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
        let a = provider(logged_in(), true);
        let b = provider(logged_in(), true);
        let k = authority(&a, "reg.example", b"salt-1").await;
        assert_eq!(k.len(), 32);
        // Stable for one client, host and daemon salt: the daemon keys its token cache by it.
        assert_eq!(k, authority(&a, "reg.example", b"salt-1").await);
        assert_ne!(k, authority(&a, "reg.example", b"salt-2").await);
        // Another client with the same login has its own seed, so its own key.
        assert_ne!(k, authority(&b, "reg.example", b"salt-1").await);
        // Anonymous clients share one key per salt (anonymous tokens are nobody's secret).
        let anon1 = provider(Fixed(None), true);
        let anon2 = provider(Fixed(None), true);
        assert_eq!(
            authority(&anon1, "reg.example", b"salt-1").await,
            authority(&anon2, "reg.example", b"salt-1").await
        );
        assert_ne!(k, authority(&anon1, "reg.example", b"salt-1").await);
    }

    #[tokio::test]
    async fn token_authority_proofs_are_nacl_signed_messages() {
        let p = provider(logged_in(), true);
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

    /// No login for the host, one for a repository of it (containers' auth.json).
    struct RepoOnly;

    impl CredentialSource for RepoOnly {
        fn credentials(&self, _host: &str) -> anyhow::Result<Option<Credentials>> {
            Ok(None)
        }

        fn has_repository_logins(&self, _host: &str) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn a_repository_login_keeps_the_hosts_tokens_out_of_the_anonymous_key() {
        let repo = AuthProvider::new(Arc::new(RepoOnly), BTreeMap::new(), true);
        let anon = provider(Fixed(None), true);
        assert_ne!(
            authority(&repo, "reg.example", b"salt").await,
            authority(&anon, "reg.example", b"salt").await
        );
    }

    #[test]
    fn a_token_requests_repository_is_its_scopes_one_repository() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scope_repository(&s(&["repository:team/app:pull,push"])),
            Some("team/app")
        );
        assert_eq!(
            scope_repository(&s(&["repository:a:pull", "repository:a:push"])),
            Some("a")
        );
        // Two repositories (a cross-repository mount): the host's login, not one of theirs.
        assert_eq!(
            scope_repository(&s(&["repository:a:pull", "repository:b:push"])),
            None
        );
        assert_eq!(scope_repository(&s(&["registry:catalog:*"])), None);
    }

    #[tokio::test]
    async fn buildkit_no_client_token_hands_tokens_back_to_the_daemon() {
        let p = provider(Fixed(None), false);
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
}
