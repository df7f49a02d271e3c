//! Registry bearer tokens fetched by bkrun itself for the daemon (the session's FetchToken), so passwords and refresh tokens stay on the client: distribution's token protocol, OAuth2 POST first then GET, as BuildKit's own client does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::credentials::Credentials;
use crate::gofmt::times::parse_rfc3339;

/// Token servers and registries see who asked: bkrun, not the daemon.
pub const USER_AGENT: &str = concat!("bkrun/", env!("CARGO_PKG_VERSION"));

/// BuildKit's lifetime for a token whose server gave none (seconds).
const DEFAULT_EXPIRES_IN: i64 = 60;
/// The OAuth client id the daemon asks for; used when a request carries none.
const DEFAULT_CLIENT_ID: &str = "buildkit-client";
/// Below the daemon's 60 s deadline for the whole FetchToken call, so the user sees our error
/// (which says what to do) rather than the daemon's bare timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Token answers are a few KiB; anything bigger is not one.
const MAX_BODY: usize = 1 << 20;
/// How much of a refusal's body is quoted back.
const MAX_DETAIL: usize = 300;

/// What the daemon asks for: a token for `scopes` at `host`, from the challenge's realm and service.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub host: String,
    pub realm: String,
    pub service: String,
    pub scopes: Vec<String>,
    pub client_id: String,
}

/// A bearer token as the daemon wants it: lifetime in seconds, issue time in Unix seconds (0 when
/// the server gave none, so the daemon counts from when it got the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expires_in: i64,
    pub issued_at: i64,
}

/// Extra trust for one registry host's token requests: bkrun.toml's `[buildkitd.registry."HOST"]`
/// `ca` and `insecure`, which the daemon applied to its own token requests for that host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTls {
    pub ca: Vec<PathBuf>,
    pub insecure: bool,
}

/// Why a token could not be had; `message` is the one line shown to the user.
#[derive(Debug)]
pub struct TokenError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The token server refused the credentials (or their absence).
    Refused,
    /// The token server could not be reached or did not answer in time.
    Unreachable,
    /// Anything else: a bad realm, an answer without a token, a local TLS setting.
    Failed,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenError {}

/// How one HTTP exchange with the token server failed, before it is explained.
#[derive(Debug)]
enum Attempt {
    Status {
        code: u16,
        reason: String,
        body: String,
    },
    Transport(String, ErrorKind),
    BadAnswer(String),
}

/// Fetches tokens; one HTTP client per registry host that has its own TLS settings.
pub struct TokenClient {
    tls: BTreeMap<String, RegistryTls>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl TokenClient {
    pub fn new(tls: BTreeMap<String, RegistryTls>) -> TokenClient {
        TokenClient {
            tls,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The token for `req`, fetched with `creds` (none: anonymously). Nothing is cached here: the
    /// daemon keeps each token for 90% of its lifetime and asks again when a registry rejects one,
    /// which a client-side cache would answer with the rejected token.
    pub async fn fetch(
        &self,
        req: &TokenRequest,
        creds: Option<&Credentials>,
    ) -> Result<Token, TokenError> {
        let creds = creds.filter(|c| !c.secret.is_empty());
        let realm_ok = reqwest::Url::parse(&req.realm)
            .map_err(|e| e.to_string())
            .and_then(|u| match u.scheme() {
                "http" | "https" => Ok(()),
                other => Err(format!("{other}: is not http or https")),
            });
        if let Err(e) = realm_ok {
            return Err(TokenError {
                kind: ErrorKind::Failed,
                message: format!("cannot get a registry token for {}: the registry's challenge names the realm {:?}, which is not an http(s) URL: check the registry's token auth settings: {e}", req.host, req.realm),
            });
        }
        let client = self.client(&req.host)?;
        let result = match creds {
            Some(c) => {
                // Like BuildKit's client: the OAuth2 POST first; registries without it answer 404
                // (GCR) or 401 (Artifactory), or 405, which only means "use GET" when there is a
                // user name to send as basic auth.
                match oauth_post(&client, req, c).await {
                    Err(Attempt::Status { code, .. })
                        if code == 404
                            || code == 401
                            || (code == 405 && !c.username.is_empty()) =>
                    {
                        get_token(&client, req, Some(c)).await
                    }
                    other => other,
                }
            }
            None => get_token(&client, req, None).await,
        };
        result.map_err(|a| explain(req, creds, a))
    }

    fn client(&self, host: &str) -> Result<reqwest::Client, TokenError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let tls = self.tls.get(host);
        let key = if tls.is_some() { host } else { "" };
        if let Some(c) = clients.get(key) {
            return Ok(c.clone());
        }
        let c = build_client(tls).map_err(|message| TokenError {
            kind: ErrorKind::Failed,
            message: format!("cannot set up TLS for the token server of {host}: {message}"),
        })?;
        clients.insert(key.to_string(), c.clone());
        Ok(c)
    }
}

/// An HTTP client with the system's CAs plus the registry's own; proxies from the environment
/// (HTTPS_PROXY, NO_PROXY…), as the daemon honoured them for its token requests.
fn build_client(tls: Option<&RegistryTls>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    for der in crate::tlsroots::system_roots().map_err(|e| format!("{e:#}"))? {
        if let Ok(c) = reqwest::Certificate::from_der(&der) {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(t) = tls {
        for path in &t.ca {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "the CA file {} is not PEM certificates: {e}",
                    path.display()
                )
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b = b.danger_accept_invalid_certs(t.insecure);
    }
    b.build().map_err(|e| e.to_string())
}

/// distribution's OAuth2 token request: a form POST with a password grant (user name and
/// password) or, for an identity token, a refresh-token grant.
async fn oauth_post(
    client: &reqwest::Client,
    req: &TokenRequest,
    c: &Credentials,
) -> Result<Token, Attempt> {
    let resp = client
        .post(&req.realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(oauth_form(req, c))
        .send()
        .await
        .map_err(transport)?;
    parse_answer(resp, Flavour::OAuth).await
}

/// The POST body; the scope is one space-separated field there, unlike GET's repeated parameter.
fn oauth_form(req: &TokenRequest, c: &Credentials) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    if !req.scopes.is_empty() {
        f.append_pair("scope", &req.scopes.join(" "));
    }
    f.append_pair("service", &req.service);
    let client_id = if req.client_id.is_empty() {
        DEFAULT_CLIENT_ID
    } else {
        &req.client_id
    };
    f.append_pair("client_id", client_id);
    if c.username.is_empty() {
        f.append_pair("grant_type", "refresh_token");
        f.append_pair("refresh_token", &c.secret);
    } else {
        f.append_pair("grant_type", "password");
        f.append_pair("username", &c.username);
        f.append_pair("password", &c.secret);
    }
    f.finish()
}

/// distribution's token request: GET on the realm with service and scope parameters, basic auth
/// when there are credentials.
async fn get_token(
    client: &reqwest::Client,
    req: &TokenRequest,
    creds: Option<&Credentials>,
) -> Result<Token, Attempt> {
    let url = get_url(&req.realm, &req.service, &req.scopes)?;
    let mut r = client.get(url);
    if let Some(c) = creds {
        r = r.basic_auth(&c.username, Some(&c.secret));
    }
    parse_answer(r.send().await.map_err(transport)?, Flavour::Get).await
}

/// The realm with `service` and one `scope` per scope appended to whatever query it has.
fn get_url(realm: &str, service: &str, scopes: &[String]) -> Result<reqwest::Url, Attempt> {
    // fetch() checked the realm already.
    let mut url =
        reqwest::Url::parse(realm).map_err(|e| Attempt::BadAnswer(format!("bad realm: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        if !service.is_empty() {
            q.append_pair("service", service);
        }
        for s in scopes {
            q.append_pair("scope", s);
        }
    }
    Ok(url)
}

fn transport(e: reqwest::Error) -> Attempt {
    let kind = if e.is_builder() {
        ErrorKind::Failed
    } else {
        ErrorKind::Unreachable
    };
    // The innermost causes say what went wrong (refused, unknown CA, timed out); reqwest's own
    // top line only repeats the URL, which the explanation already names.
    let mut detail = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&e);
    while let Some(c) = cause {
        detail.push(c.to_string());
        cause = c.source();
    }
    let detail = if e.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else if detail.len() > 1 {
        detail[1..].join(": ")
    } else {
        detail.join("")
    };
    Attempt::Transport(detail, kind)
}

#[derive(Clone, Copy)]
enum Flavour {
    Get,
    OAuth,
}

/// The token JSON both endpoints answer with (a superset: GET's `token`, OAuth's `access_token`).
#[derive(Deserialize, Default)]
struct Answer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    issued_at: Option<String>,
}

async fn parse_answer(mut resp: reqwest::Response, flavour: Flavour) -> Result<Token, Attempt> {
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Attempt::BadAnswer(format!(
                "the answer is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    // Go's client (and so the daemon) takes any status below 400 as an answer.
    if status.as_u16() < 200 || status.as_u16() >= 400 {
        return Err(Attempt::Status {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    parse_token(&body, flavour).map_err(Attempt::BadAnswer)
}

/// A token answer's JSON → the daemon's fields. GET answers carry `token` and/or `access_token`
/// (the latter wins, as in containerd); OAuth answers must carry `access_token`.
fn parse_token(body: &[u8], flavour: Flavour) -> Result<Token, String> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not token JSON ({e})"))?;
    let token = match flavour {
        Flavour::OAuth => a.access_token,
        Flavour::Get if !a.access_token.is_empty() => a.access_token,
        Flavour::Get => a.token,
    };
    if token.is_empty() {
        return Err("the answer holds no token".into());
    }
    // A zero or negative lifetime would make the daemon think the token never expires.
    let expires_in = a
        .expires_in
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_EXPIRES_IN);
    // An issue time we cannot read is left out: the daemon then counts from when it got the token.
    let issued_at = a
        .issued_at
        .as_deref()
        .and_then(parse_rfc3339)
        .map_or(0, |t| t.seconds);
    Ok(Token {
        token,
        expires_in,
        issued_at,
    })
}

/// The one line the user reads: what failed (registry, token server, status), what to do, then
/// what the server said. Secrets never appear: the server's words are scrubbed of ours.
fn explain(req: &TokenRequest, creds: Option<&Credentials>, a: Attempt) -> TokenError {
    let host = &req.host;
    let realm = realm_for_humans(&req.realm);
    let what = format!("cannot get a registry token for {host} from {realm}");
    let off = "or set BUILDKIT_NO_CLIENT_TOKEN=1 to let the daemon fetch tokens itself";
    let (kind, message) = match a {
        Attempt::Status { code, reason, body } => {
            let status = format!("HTTP {code} {reason}").trim_end().to_string();
            let said = server_said(&body, creds);
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(" (the token server said: {said})")
            };
            match (code, creds) {
                (401 | 403, None) => (
                    ErrorKind::Refused,
                    format!("{what}: {status}: {host} wants credentials and the Docker config has none for it: run `docker login {host}`{said}"),
                ),
                (401 | 403, Some(_)) => (
                    ErrorKind::Refused,
                    format!("{what}: {status}: the credentials in the Docker config for {host} were refused: run `docker login {host}` again{said}"),
                ),
                _ => (
                    ErrorKind::Failed,
                    format!("{what}: {status}: check that the registry and its token server work, then retry{said}"),
                ),
            }
        }
        Attempt::Transport(detail, kind) => {
            let hint = if detail.to_lowercase().contains("certificate") {
                format!("trust its CA (the system's CA store, or `ca` in bkrun.toml's [buildkitd.registry.\"{host}\"]), {off}")
            } else {
                format!("check the network and proxy settings (HTTPS_PROXY, NO_PROXY), {off}")
            };
            (
                kind,
                format!("{what}: no connection to the token server: {hint}: {detail}"),
            )
        }
        Attempt::BadAnswer(detail) => (
            ErrorKind::Failed,
            format!("{what}: the token server's answer is unusable: check the registry's token server, {off}: {detail}"),
        ),
    };
    TokenError { kind, message }
}

/// The realm without any query or user info: enough to find the server, nothing sensitive.
fn realm_for_humans(realm: &str) -> String {
    match reqwest::Url::parse(realm) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => format!("{realm:?}"),
    }
}

/// The refusal's body on one short line, with our secret blotted out should a server echo it.
fn server_said(body: &str, creds: Option<&Credentials>) -> String {
    let mut text = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(c) = creds.filter(|c| c.secret.len() >= 4) {
        text = text.replace(&c.secret, "****");
    }
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    /// A token server on 127.0.0.1 that answers each connection with the next canned answer and
    /// hands back the raw requests it got; it stops after the last answer or 10 s.
    fn fake(answers: Vec<(u16, &'static str)>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let h = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = Vec::new();
            for (code, body) in answers {
                let mut s = loop {
                    match l.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return seen,
                    }
                };
                s.set_nonblocking(false).unwrap();
                seen.push(read_request(&mut s));
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            seen
        });
        (port, h)
    }

    fn read_request(s: &mut std::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap() == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        head + &String::from_utf8_lossy(&body)
    }

    fn request(port: u16, query: &str) -> TokenRequest {
        TokenRequest {
            host: "reg.example:5000".into(),
            realm: format!("http://127.0.0.1:{port}/token{query}"),
            service: "reg service".into(),
            scopes: vec![
                "repository:team/app:pull".into(),
                "repository:base:pull,push".into(),
            ],
            client_id: "buildkit-client".into(),
        }
    }

    fn creds(u: &str, s: &str) -> Credentials {
        Credentials {
            username: u.into(),
            secret: s.into(),
        }
    }

    fn client() -> TokenClient {
        TokenClient::new(BTreeMap::new())
    }

    #[tokio::test]
    async fn anonymous_tokens_come_from_a_get_with_service_and_scopes() {
        let (port, server) = fake(vec![(
            200,
            r#"{"token":"anon-tok","expires_in":300,"issued_at":"2024-01-02T03:04:05Z"}"#,
        )]);
        let t = client().fetch(&request(port, "?a=1"), None).await.unwrap();
        assert_eq!(
            t,
            Token {
                token: "anon-tok".into(),
                expires_in: 300,
                issued_at: 1_704_164_645
            }
        );
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 1);
        let first = seen[0].lines().next().unwrap();
        assert_eq!(
            first,
            "GET /token?a=1&service=reg+service&scope=repository%3Ateam%2Fapp%3Apull&scope=repository%3Abase%3Apull%2Cpush HTTP/1.1"
        );
        let lower = seen[0].to_lowercase();
        assert!(lower.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())));
        assert!(!lower.contains("authorization:"), "{}", seen[0]);
    }

    #[tokio::test]
    async fn a_password_goes_in_an_oauth_post_form() {
        let (port, server) = fake(vec![(200, r#"{"access_token":"oauth-tok","scope":"x"}"#)]);
        let t = client()
            .fetch(&request(port, ""), Some(&creds("builder", "p&ss w=rd")))
            .await
            .unwrap();
        assert_eq!(t.token, "oauth-tok");
        assert_eq!(t.expires_in, DEFAULT_EXPIRES_IN);
        assert_eq!(t.issued_at, 0);
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("POST /token HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0]
            .to_lowercase()
            .contains("content-type: application/x-www-form-urlencoded; charset=utf-8"));
        let body = seen[0].split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            body,
            "scope=repository%3Ateam%2Fapp%3Apull+repository%3Abase%3Apull%2Cpush&service=reg+service&client_id=buildkit-client&grant_type=password&username=builder&password=p%26ss+w%3Drd"
        );
    }

    #[tokio::test]
    async fn an_identity_token_is_a_refresh_token_grant() {
        let (port, server) = fake(vec![(200, r#"{"access_token":"from-refresh"}"#)]);
        let mut req = request(port, "");
        req.client_id.clear();
        req.scopes.clear();
        let t = client()
            .fetch(&req, Some(&creds("", "idtok")))
            .await
            .unwrap();
        assert_eq!(t.token, "from-refresh");
        let seen = server.join().unwrap();
        let body = seen[0].split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            body,
            "service=reg+service&client_id=buildkit-client&grant_type=refresh_token&refresh_token=idtok"
        );
    }

    #[tokio::test]
    async fn registries_without_oauth_get_basic_auth_on_get() {
        for code in [404u16, 401, 405] {
            let (port, server) = fake(vec![(code, "{}"), (200, r#"{"token":"basic-tok"}"#)]);
            let t = client()
                .fetch(&request(port, ""), Some(&creds("builder", "pw")))
                .await
                .unwrap();
            assert_eq!(t.token, "basic-tok");
            let seen = server.join().unwrap();
            assert_eq!(seen.len(), 2);
            assert!(seen[1].starts_with("GET /token?service="), "{}", seen[1]);
            // base64("builder:pw")
            assert!(
                seen[1].contains("\r\nauthorization: Basic YnVpbGRlcjpwdw==\r\n")
                    || seen[1].contains("\r\nAuthorization: Basic YnVpbGRlcjpwdw==\r\n"),
                "{}",
                seen[1]
            );
        }
    }

    #[tokio::test]
    async fn a_405_without_a_user_name_is_final() {
        let (port, server) = fake(vec![(405, ""), (200, r#"{"token":"never"}"#)]);
        let e = client()
            .fetch(&request(port, ""), Some(&creds("", "idtok")))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Failed);
        assert!(e.message.contains("HTTP 405 Method Not Allowed"), "{e}");
        drop(server);
    }

    #[tokio::test]
    async fn refusals_name_the_registry_the_realm_and_the_login() {
        let (port, server) = fake(vec![(401, r#"{"details":"no anonymous access"}"#)]);
        let e = client()
            .fetch(&request(port, "?secret-looking=1"), None)
            .await
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert_eq!(
            e.message,
            format!("cannot get a registry token for reg.example:5000 from http://127.0.0.1:{port}/token: HTTP 401 Unauthorized: reg.example:5000 wants credentials and the Docker config has none for it: run `docker login reg.example:5000` (the token server said: {{\"details\":\"no anonymous access\"}})")
        );

        // Refused credentials: the same, and a server echoing our password does not leak it.
        let (port, server) = fake(vec![
            (401, "{}"),
            (403, "{\"details\":\"bad password s3cr3t-pw\"}\n"),
        ]);
        let e = client()
            .fetch(&request(port, ""), Some(&creds("builder", "s3cr3t-pw")))
            .await
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert!(
            e.message.contains("HTTP 403 Forbidden: the credentials in the Docker config for reg.example:5000 were refused: run `docker login reg.example:5000` again"),
            "{e}"
        );
        assert!(!e.message.contains("s3cr3t"), "{e}");
        assert!(e.message.contains("bad password ****"), "{e}");
        assert!(!e.message.contains('\n'), "{e}");
    }

    #[tokio::test]
    async fn unreachable_and_useless_servers_say_what_to_do() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = client().fetch(&request(port, ""), None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(
            e.message.contains("no connection to the token server"),
            "{e}"
        );
        assert!(e.message.contains("BUILDKIT_NO_CLIENT_TOKEN=1"), "{e}");

        let (port, server) = fake(vec![(200, r#"{"expires_in":5}"#)]);
        let e = client().fetch(&request(port, ""), None).await.unwrap_err();
        server.join().unwrap();
        assert_eq!(e.kind, ErrorKind::Failed);
        assert!(e.message.ends_with("the answer holds no token"), "{e}");

        for realm in ["not a url", "ftp://127.0.0.1/token"] {
            let mut req = request(1, "");
            req.realm = realm.into();
            let e = client().fetch(&req, None).await.unwrap_err();
            assert!(
                e.message.contains(
                    "which is not an http(s) URL: check the registry's token auth settings"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn token_answers() {
        let get = |b: &str| parse_token(b.as_bytes(), Flavour::Get);
        let oauth = |b: &str| parse_token(b.as_bytes(), Flavour::OAuth);
        // access_token wins over token on GET (containerd canonicalises to it).
        assert_eq!(
            get(r#"{"token":"a","access_token":"b","expires_in":120}"#).unwrap(),
            Token {
                token: "b".into(),
                expires_in: 120,
                issued_at: 0
            }
        );
        assert_eq!(get(r#"{"token":"a"}"#).unwrap().token, "a");
        // OAuth answers must carry access_token.
        assert!(oauth(r#"{"token":"a"}"#).is_err());
        // No, zero or negative lifetimes become BuildKit's 60 s.
        for body in [
            r#"{"token":"a"}"#,
            r#"{"token":"a","expires_in":0}"#,
            r#"{"token":"a","expires_in":-5}"#,
        ] {
            assert_eq!(get(body).unwrap().expires_in, 60, "{body}");
        }
        // An unreadable issue time is dropped, not fatal.
        assert_eq!(
            get(r#"{"token":"a","issued_at":"yesterday"}"#)
                .unwrap()
                .issued_at,
            0
        );
        assert!(get("<html>").unwrap_err().contains("not token JSON"));
    }

    #[test]
    fn the_realm_shown_has_no_query_or_user_info() {
        assert_eq!(
            realm_for_humans("https://u:p@auth.example/token?account=x#f"),
            "https://auth.example/token"
        );
        assert_eq!(realm_for_humans("::"), "\"::\"");
    }
}
