//! Registry bearer tokens fetched by bkrun itself, for the daemon (the session's FetchToken, so passwords and refresh tokens stay on the client) and for bkrun's own registry client: distribution's token protocol, OAuth2 POST first then GET, as BuildKit's own client does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::credentials::Credentials;
use crate::gocompat::times::parse_rfc3339;

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
/// How much of a server's answer is quoted back (its refusals here, a registry's in src/registry).
pub const MAX_DETAIL: usize = 300;

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
/// `ca` and `insecure`, which the daemon applied to its own token requests for that host, and
/// `http`, which says whether the daemon reaches the registry itself over plain http.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTls {
    pub ca: Vec<PathBuf>,
    pub insecure: bool,
    pub http: Option<bool>,
}

/// Whether the daemon talks to registry `host` over plain http, as BuildKit decides it: `http`
/// in its registry table, else plain http for localhost and loopback addresses only. Every other
/// registry is https, so its challenge (and the realm in it) came over TLS. bkrun's own registry
/// client follows the same rule.
pub fn plain_http_registry(host: &str, tls: Option<&RegistryTls>) -> bool {
    if let Some(http) = tls.and_then(|t| t.http) {
        return http;
    }
    let name = match host.rsplit_once(':') {
        // `[::1]:5000`, `localhost:5000`; a bare `::1` has colons but no port.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// scheme, host and port: where a credential may go is the realm's origin and nothing else.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// How many redirects inside the realm's origin are followed (reqwest's own default).
const MAX_REDIRECTS: usize = 10;

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
    /// A redirect not followed: to another origin than the realm's, with credentials on board.
    Redirected {
        code: u16,
        to: String,
    },
}

/// Fetches tokens; one HTTP client per registry host that has its own TLS settings, and per
/// kind of request: with credentials or without (their redirect rules differ).
pub struct TokenClient {
    tls: BTreeMap<String, RegistryTls>,
    clients: Mutex<HashMap<(String, bool), reqwest::Client>>,
    /// Whether failures suggest BUILDKIT_NO_CLIENT_TOKEN: only when the tokens are the daemon's.
    daemon_fallback: bool,
}

impl TokenClient {
    /// Tokens for the daemon: a failure may be worked around by letting the daemon fetch them.
    pub fn new(tls: BTreeMap<String, RegistryTls>) -> TokenClient {
        TokenClient {
            tls,
            clients: Mutex::new(HashMap::new()),
            daemon_fallback: true,
        }
    }

    /// Tokens for bkrun's own registry requests, where the daemon has no part to take over.
    pub fn for_bkrun(tls: BTreeMap<String, RegistryTls>) -> TokenClient {
        TokenClient {
            daemon_fallback: false,
            ..TokenClient::new(tls)
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
                "http" | "https" => Ok(u),
                other => Err(format!("{other}: is not http or https")),
            });
        let realm = match realm_ok {
            Ok(u) => u,
            Err(e) => {
                return Err(TokenError {
                kind: ErrorKind::Failed,
                message: format!("cannot get a registry token for {}: the registry's challenge names the realm {:?}, which is not an http(s) URL: check the registry's token auth settings: {e}", req.host, req.realm),
            });
            }
        };
        // The challenge of an https registry came over TLS; a password sent to a plain-http
        // realm would not. (Anonymous requests carry nothing to protect.)
        if creds.is_some()
            && realm.scheme() == "http"
            && !plain_http_registry(&req.host, self.tls.get(&req.host))
        {
            let host = &req.host;
            return Err(TokenError {
                kind: ErrorKind::Failed,
                message: format!("cannot get a registry token for {host} from {}: the registry is reached over https but its token realm is plain http, so bkrun will not send it the credentials for {host}: have the registry name an https realm, or, if {host} itself serves plain http, set http = true in bkrun.toml's [buildkitd.registry.\"{host}\"]", realm_for_humans(&req.realm)),
            });
        }
        let client = self.client(&req.host, creds.is_some())?;
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
        result.map_err(|a| explain(req, creds, a, self.daemon_fallback))
    }

    fn client(&self, host: &str, credentials: bool) -> Result<reqwest::Client, TokenError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let tls = self.tls.get(host);
        let key = (
            if tls.is_some() { host } else { "" }.to_string(),
            credentials,
        );
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let c = build_client(tls, credentials).map_err(|message| TokenError {
            kind: ErrorKind::Failed,
            message: format!("cannot set up TLS for the token server of {host}: {message}"),
        })?;
        clients.insert(key, c.clone());
        Ok(c)
    }
}

/// A token server's HTTP client: the shared settings, and a deadline for the whole exchange.
///
/// With `credentials`, redirects are followed only inside the realm's origin. reqwest's default
/// (0.12) follows any redirect: it drops the Authorization header only when the host or port
/// changes (not on https → http), and re-sends a 307/308's body — the form holding the password
/// or refresh token — wherever the Location points.
fn build_client(tls: Option<&RegistryTls>, credentials: bool) -> Result<reqwest::Client, String> {
    let mut b = client_builder(tls)?.timeout(REQUEST_TIMEOUT);
    if credentials {
        b = b.redirect(reqwest::redirect::Policy::custom(|a| {
            let realm = &a.previous()[0];
            if !same_origin(realm, a.url()) {
                a.stop()
            } else if a.previous().len() > MAX_REDIRECTS {
                a.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                a.follow()
            }
        }));
    }
    b.build().map_err(|e| e.to_string())
}

/// The settings every registry-side HTTP client of bkrun shares: its user agent, the connect
/// timeout, the system's CAs plus the host's own, `insecure`, and proxies from the environment
/// (reqwest's default, as the daemon honoured them).
pub fn client_builder(tls: Option<&RegistryTls>) -> Result<reqwest::ClientBuilder, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT);
    for der in crate::session::tlsroots::system_roots().map_err(|e| format!("{e:#}"))? {
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
    Ok(b)
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
    let detail = if e.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else {
        causes(&e)
    };
    Attempt::Transport(detail, kind)
}

/// What went wrong under a reqwest error: its innermost causes (refused, unknown CA, timed out).
/// reqwest's own top line only repeats the URL, which the explanation already names.
pub fn causes(e: &reqwest::Error) -> String {
    let mut detail = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        detail.push(c.to_string());
        cause = c.source();
    }
    if detail.len() > 1 {
        detail[1..].join(": ")
    } else {
        detail.join("")
    }
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
    // Resolved against the URL asked, so the message names a whole origin.
    let resp_location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(|l| match resp.url().join(l) {
            Ok(u) => realm_for_humans(u.as_str()),
            Err(_) => format!("{l:?}"),
        });
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Attempt::BadAnswer(format!(
                "the answer is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    // A redirect comes back only when the policy stopped it: it left the realm's origin.
    if status.is_redirection() {
        let to = resp_location.unwrap_or_else(|| "no Location".into());
        return Err(Attempt::Redirected {
            code: status.as_u16(),
            to,
        });
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
fn explain(
    req: &TokenRequest,
    creds: Option<&Credentials>,
    a: Attempt,
    daemon_fallback: bool,
) -> TokenError {
    let host = &req.host;
    let realm = realm_for_humans(&req.realm);
    let what = format!("cannot get a registry token for {host} from {realm}");
    let off = if daemon_fallback {
        ", or set BUILDKIT_NO_CLIENT_TOKEN=1 to let the daemon fetch tokens itself"
    } else {
        ""
    };
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
                format!("trust its CA (the system's CA store, or `ca` in bkrun.toml's [buildkitd.registry.\"{host}\"]){off}")
            } else {
                format!("check the network and proxy settings (HTTPS_PROXY, NO_PROXY){off}")
            };
            (
                kind,
                format!("{what}: no connection to the token server: {hint}: {detail}"),
            )
        }
        Attempt::BadAnswer(detail) => (
            ErrorKind::Failed,
            format!("{what}: the token server's answer is unusable: check the registry's token server{off}: {detail}"),
        ),
        // Not the daemon either: it would follow the redirect with the same credentials.
        Attempt::Redirected { code, to } => (
            ErrorKind::Failed,
            format!("{what}: the token server redirected (HTTP {code}) to {to}, outside the realm the registry named, and bkrun sends the credentials for {host} only to that realm: have the registry name the server that answers as its token realm"),
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
    let secrets: Vec<&str> = creds.map(|c| c.secret.as_str()).into_iter().collect();
    one_line(body, &secrets)
}

/// A server's text on one line of at most MAX_DETAIL bytes, each of `secrets` (of 4 bytes or
/// more) shown as `****`: what a registry or token server said, fit for an error line.
pub fn one_line(text: &str, secrets: &[&str]) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(s, "****");
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
        fake_with(
            answers
                .into_iter()
                .map(|(c, b)| (c, b, String::new()))
                .collect(),
        )
    }

    /// `fake` whose answers also carry header lines (each ending in CRLF), e.g. a Location.
    fn fake_with(
        answers: Vec<(u16, &'static str, String)>,
    ) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let h = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = Vec::new();
            for (code, body, headers) in answers {
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
                    "HTTP/1.1 {code} X\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

    /// The client of a plain-http registry (`http = true`), whose plain-http realm may have
    /// its credentials.
    fn client() -> TokenClient {
        let plain = RegistryTls {
            http: Some(true),
            ..Default::default()
        };
        TokenClient::new(BTreeMap::from([("reg.example:5000".to_string(), plain)]))
    }

    /// A port where a connection would be noticed: after the fetch, `nobody_came` says whether
    /// one arrived.
    fn watched_port() -> (u16, TcpListener) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        (l.local_addr().unwrap().port(), l)
    }

    /// True when no client connected: a connect completes in the kernel's backlog, so one the
    /// fetch made is there to accept by the time the fetch returned.
    fn nobody_came(l: &TcpListener) -> bool {
        matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_carries_no_credentials() {
        for code in [301u16, 302, 303, 307, 308] {
            for c in [creds("builder", "pw-123"), creds("", "refresh-123")] {
                let (other, watch) = watched_port();
                let to = format!("Location: http://127.0.0.1:{other}/token\r\n");
                let (port, server) = fake_with(vec![(code, "", to)]);
                let e = client()
                    .fetch(&request(port, ""), Some(&c))
                    .await
                    .unwrap_err();
                server.join().unwrap();
                assert!(
                    nobody_came(&watch),
                    "HTTP {code}: the redirect was followed"
                );
                assert_eq!(e.kind, ErrorKind::Failed);
                assert_eq!(
                    e.message,
                    format!("cannot get a registry token for reg.example:5000 from http://127.0.0.1:{port}/token: the token server redirected (HTTP {code}) to http://127.0.0.1:{other}/token, outside the realm the registry named, and bkrun sends the credentials for reg.example:5000 only to that realm: have the registry name the server that answers as its token realm")
                );
            }
        }
        // The GET with basic auth (after a POST the server does not take) is held the same way.
        let (other, watch) = watched_port();
        let to = format!("Location: http://127.0.0.1:{other}/token\r\n");
        let (port, server) = fake_with(vec![(404, "", String::new()), (307, "", to)]);
        let e = client()
            .fetch(&request(port, ""), Some(&creds("builder", "pw")))
            .await
            .unwrap_err();
        let seen = server.join().unwrap();
        assert!(seen[1].starts_with("GET /token?"), "{seen:?}");
        assert!(nobody_came(&watch));
        assert!(e.message.contains("redirected (HTTP 307)"), "{e}");
    }

    #[tokio::test]
    async fn redirects_inside_the_realm_are_followed() {
        let (port, server) = fake_with(vec![
            (307, "", "Location: /token/v2\r\n".into()),
            (200, r#"{"access_token":"moved"}"#, String::new()),
        ]);
        let t = client()
            .fetch(&request(port, ""), Some(&creds("builder", "pw")))
            .await
            .unwrap();
        assert_eq!(t.token, "moved");
        let seen = server.join().unwrap();
        assert!(seen[1].starts_with("POST /token/v2 HTTP/1.1"), "{seen:?}");
        assert!(seen[1].ends_with("&password=pw"), "{seen:?}");
        // Without credentials there is nothing to keep in: reqwest's own rules apply.
        let (other, other_server) = fake(vec![(200, r#"{"token":"elsewhere"}"#)]);
        let to = format!("Location: http://127.0.0.1:{other}/token\r\n");
        let (port, server) = fake_with(vec![(302, "", to)]);
        let t = client().fetch(&request(port, ""), None).await.unwrap();
        assert_eq!(t.token, "elsewhere");
        server.join().unwrap();
        other_server.join().unwrap();
    }

    #[tokio::test]
    async fn a_plain_http_realm_of_an_https_registry_gets_no_credentials() {
        let (port, watch) = watched_port();
        // No bkrun.toml entry: reg.example:5000 is https, as the daemon reaches it.
        let https_registry = TokenClient::new(BTreeMap::new());
        for c in [creds("builder", "pw"), creds("", "refresh")] {
            let e = https_registry
                .fetch(&request(port, ""), Some(&c))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Failed);
            assert_eq!(
                e.message,
                format!("cannot get a registry token for reg.example:5000 from http://127.0.0.1:{port}/token: the registry is reached over https but its token realm is plain http, so bkrun will not send it the credentials for reg.example:5000: have the registry name an https realm, or, if reg.example:5000 itself serves plain http, set http = true in bkrun.toml's [buildkitd.registry.\"reg.example:5000\"]")
            );
        }
        assert!(nobody_came(&watch));
        drop(watch);
        // Anonymous requests carry nothing, and go.
        let (port, server) = fake(vec![(200, r#"{"token":"anon"}"#)]);
        let t = https_registry
            .fetch(&request(port, ""), None)
            .await
            .unwrap();
        assert_eq!(t.token, "anon");
        server.join().unwrap();
    }

    #[test]
    fn plain_http_registries_are_those_buildkit_reaches_over_http() {
        let http = |v| RegistryTls {
            http: Some(v),
            ..Default::default()
        };
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
            "::1",
        ] {
            assert!(plain_http_registry(host, None), "{host}");
            assert!(!plain_http_registry(host, Some(&http(false))), "{host}");
        }
        for host in ["reg.example:5000", "docker.io", "10.0.0.1:5000"] {
            assert!(!plain_http_registry(host, None), "{host}");
            assert!(plain_http_registry(host, Some(&http(true))), "{host}");
        }
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_origin(
            &u("https://a.example/t"),
            &u("https://a.example:443/x?y")
        ));
        assert!(!same_origin(
            &u("https://a.example/t"),
            &u("http://a.example/t")
        ));
        assert!(!same_origin(
            &u("https://a.example/t"),
            &u("https://a.example:8443/t")
        ));
        assert!(!same_origin(
            &u("https://a.example/t"),
            &u("https://b.example/t")
        ));
    }

    /// An https token server on 127.0.0.1 (certificate from a CA made with openssl) that answers
    /// each TLS connection with the next canned answer. The same port also records any request
    /// that arrives in plaintext, which is what an https → http redirect to it would send.
    /// Returns the port, the CA file, a stop switch and (TLS requests, plaintext requests).
    #[allow(clippy::type_complexity)]
    fn tls_fake(
        dir: &std::path::Path,
        answers: impl FnOnce(u16) -> Vec<(u16, String)>,
    ) -> (
        u16,
        PathBuf,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<(Vec<String>, Vec<String>)>,
    ) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio_rustls::rustls;
        std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        let ok = std::process::Command::new("sh")
            .arg("-ec")
            .arg("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=bkrun-token-test-ca 2>/dev/null
                  openssl req -newkey rsa:2048 -nodes -keyout key.pem -out req.csr -subj /CN=127.0.0.1 2>/dev/null
                  openssl x509 -req -in req.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 1 -extfile ext 2>/dev/null")
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "openssl could not make the test certificates");
        let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let answers = answers(port);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let h = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut answers = answers.into_iter();
            let (mut tls, mut plain) = (Vec::new(), Vec::new());
            loop {
                let mut s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(_) if stopped.load(Ordering::SeqCst) || Instant::now() > deadline => {
                        return (tls, plain)
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                let mut first = [0u8; 1];
                if s.peek(&mut first).unwrap_or(0) == 0 {
                    continue;
                }
                // 0x16: a TLS handshake record; anything else is plaintext HTTP.
                if first[0] != 0x16 {
                    plain.push(read_request(&mut s));
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{{\"token\":\"leak\"}}");
                    continue;
                }
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let req = read_tls_request(&mut t);
                tls.push(req);
                let (code, headers) = answers.next().unwrap_or((500, String::new()));
                let _ = write!(
                    t,
                    "HTTP/1.1 {code} X\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = t.flush();
                t.conn.send_close_notify();
                let _ = t.flush();
            }
        });
        (port, dir.join("ca.pem"), stop, h)
    }

    fn read_tls_request(s: &mut impl Read) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
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
        let _ = s.read_exact(&mut body);
        head + &String::from_utf8_lossy(&body)
    }

    #[tokio::test]
    async fn an_https_realm_redirecting_to_http_keeps_the_credentials() {
        // Same host, same port, only the scheme changes: reqwest's default keeps the
        // Authorization header there and re-sends a 307's form.
        for (answers, c, asked) in [
            (vec![307u16], creds("builder", "pw-post"), "POST"),
            (vec![308], creds("", "refresh-post"), "POST"),
            (vec![404, 302], creds("builder", "pw-get"), "GET"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            // The Location names this very port, over http.
            let (port, ca, stop, server) = tls_fake(dir.path(), |port| {
                answers
                    .iter()
                    .map(|&code| {
                        let h = if code == 404 {
                            String::new()
                        } else {
                            format!("Location: http://127.0.0.1:{port}/token\r\n")
                        };
                        (code, h)
                    })
                    .collect()
            });
            let tls = RegistryTls {
                ca: vec![ca],
                ..Default::default()
            };
            let tokens = TokenClient::new(BTreeMap::from([("reg.example:5000".to_string(), tls)]));
            let mut req = request(port, "");
            req.realm = format!("https://127.0.0.1:{port}/token");
            let e = tokens.fetch(&req, Some(&c)).await.unwrap_err();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let (over_tls, in_plaintext) = server.join().unwrap();
            assert!(in_plaintext.is_empty(), "{asked}: leaked: {in_plaintext:?}");
            assert!(over_tls.last().unwrap().starts_with(asked), "{over_tls:?}");
            assert!(
                e.message.contains(&format!(
                    "to http://127.0.0.1:{port}/token, outside the realm the registry named"
                )),
                "{e}"
            );
            assert!(
                !e.message.contains("pw-") && !e.message.contains("refresh-"),
                "{e}"
            );
        }
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
