//! Opening a gRPC channel to a daemon: `unix://PATH`, or `tcp://HOST:PORT` with mutual TLS (rustls) or explicitly allowed plaintext, retried while the daemon is briefly away, with failures explained.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// TLS material, as buildctl's --tlscacert/--tlscert/--tlskey/--tlsservername/--tlsdir give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Fills what is missing from a --tlsdir holding ca.pem, cert.pem and key.pem, or, as
    /// buildctl also takes them, a Kubernetes TLS secret's ca.crt, tls.crt and tls.key.
    pub fn with_dir(mut self, dir: &Path) -> TlsFiles {
        let pick = |slot: &mut Option<PathBuf>, names: [&str; 2]| {
            if slot.is_none() {
                *slot = names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
            }
        };
        pick(&mut self.ca, ["ca.pem", "ca.crt"]);
        pick(&mut self.cert, ["cert.pem", "tls.crt"]);
        pick(&mut self.key, ["key.pem", "tls.key"]);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none() && self.server_name.is_none()
    }
}

/// Where and how to reach a daemon.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub tls: Option<TlsFiles>,
    /// Plaintext TCP to a non-loopback address was asked for explicitly.
    pub insecure_plaintext: bool,
    /// How long to keep retrying a daemon that refuses or times out (a rolling restart).
    pub retry_for: Duration,
    /// Where the address came from (`--addr`, BKRUN_ADDR, BUILDKIT_HOST), named when it fails.
    pub origin: Option<String>,
}

impl Target {
    pub fn unix(addr: &str) -> Target {
        Target {
            addr: addr.to_string(),
            tls: None,
            insecure_plaintext: false,
            retry_for: Duration::ZERO,
            origin: None,
        }
    }
}

#[derive(Clone)]
enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

fn parse_addr(addr: &str) -> Result<Address> {
    if let Some(path) = addr.strip_prefix("unix://") {
        return Ok(Address::Unix(PathBuf::from(path)));
    }
    if let Some(hp) = addr.strip_prefix("tcp://") {
        let hp = hp.trim_end_matches('/');
        let (host, port) = hp.rsplit_once(':').with_context(|| {
            format!("daemon address {addr:?} has no port: write tcp://HOST:PORT")
        })?;
        let port = port
            .parse()
            .with_context(|| format!("daemon address {addr:?} has a bad port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        return Ok(Address::Tcp { host, port });
    }
    bail!("unsupported daemon address {addr:?}: use unix:///path/to/buildkitd.sock or tcp://HOST:PORT")
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks the target before any connection: the address form, the TLS files, and the plaintext
/// rule. Returns a warning to print, if any.
pub fn validate(t: &Target) -> Result<Option<String>> {
    match parse_addr(&t.addr)? {
        Address::Unix(_) => {
            if t.tls.as_ref().is_some_and(|f| !f.is_empty()) {
                bail!("TLS flags were given for the unix socket {}: TLS is only for tcp:// addresses", t.addr);
            }
            Ok(None)
        }
        Address::Tcp { host, .. } => match &t.tls {
            Some(files) if !files.is_empty() => {
                client_config(files)?;
                Ok(None)
            }
            _ if is_loopback(&host) => Ok(None),
            _ if t.insecure_plaintext => Ok(Some(format!(
                "warning: talking plaintext gRPC to {}: anyone on the path can read and change builds; use --tlscacert/--tlscert/--tlskey",
                t.addr
            ))),
            _ => bail!(
                "refusing plaintext gRPC to {} (not a loopback address): give the daemon's CA and a client certificate (--tlscacert, --tlscert, --tlskey or --tlsdir), or pass --insecure-plaintext",
                t.addr
            ),
        },
    }
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .with_context(|| format!("cannot read {what} {}: check the path", path.display()))
}

/// The rustls client configuration for `files`: the CA (or the system's roots), an optional
/// client certificate, and ALPN h2, which gRPC servers require.
fn client_config(files: &TlsFiles) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            let pem = read_pem("CA certificate", ca)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
                roots.add(cert).with_context(|| {
                    format!("{} holds an unusable CA certificate", ca.display())
                })?;
            }
            if roots.is_empty() {
                bail!(
                    "{} holds no certificate: pass the CA certificate in PEM form",
                    ca.display()
                );
            }
        }
        None => {
            for cert in crate::session::tlsroots::system_roots()? {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let pem = read_pem("client certificate", cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
            if chain.is_empty() {
                bail!(
                    "{} holds no certificate: pass the client certificate in PEM form",
                    cert.display()
                );
            }
            let key_pem = read_pem("client key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .with_context(|| format!("{} is not a PEM private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .with_context(|| {
                    format!(
                        "{} and {} do not make a usable client identity",
                        cert.display(),
                        key.display()
                    )
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--tlscert and --tlskey go together: give both, or neither"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Waits between tries of something that may come back (a daemon restarting): doubling from
/// `first` up to 2 s, for as long as a budget allows. Shared by one daemon's and a pool's retries.
pub(super) struct Backoff {
    started: Instant,
    delay: Duration,
    budget: Duration,
}

impl Backoff {
    pub fn new(first: Duration, budget: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            delay: first,
            budget,
        }
    }

    /// The next wait, when it still fits in the budget.
    pub fn next_wait(&self) -> Option<Duration> {
        (self.started.elapsed() + self.delay < self.budget).then_some(self.delay)
    }

    /// Waits `next_wait`, then doubles it (up to 2 s).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
    }
}

/// Connects to `t`, retrying refused and timed-out connections until `t.retry_for` has passed.
pub async fn connect_target(t: &Target) -> Result<Channel> {
    let (addr, tls) = prepare(t)?;
    let mut backoff = Backoff::new(Duration::from_millis(100), t.retry_for);
    loop {
        match dial(&addr, tls.clone(), &t.addr).await {
            Ok(ch) => return Ok(ch),
            Err(Failure {
                retryable: true,
                explained,
            }) if backoff.next_wait().is_some() => {
                let wait = backoff.next_wait().unwrap_or_default();
                crate::say!("bkrun: {explained}; retrying in {:.1}s", wait.as_secs_f64());
                backoff.wait().await;
            }
            Err(f) => {
                return Err(match &t.origin {
                    Some(origin) => anyhow!(
                    "{} (the address came from {origin}: change or unset it to use another daemon)",
                    f.explained
                ),
                    None => anyhow!(f.explained),
                })
            }
        }
    }
}

/// Connects to a local socket (the supervised daemon).
pub async fn connect(addr: &str) -> Result<Channel> {
    connect_target(&Target::unix(addr)).await
}

/// One attempt at `t`, no retry: a pool moves on to its next daemon instead of waiting.
pub async fn try_once(t: &Target) -> Result<Channel, Failure> {
    let fail = |e: anyhow::Error| Failure {
        retryable: false,
        explained: format!("{e:#}"),
    };
    let (addr, tls) = prepare(t).map_err(fail)?;
    dial(&addr, tls, &t.addr).await
}

/// A TLS client configuration and the files it was read from (named in errors).
type Tls = (Arc<ClientConfig>, TlsFiles);

/// `t`'s address parsed, and its TLS configuration read (tcp:// with TLS files only).
fn prepare(t: &Target) -> Result<(Address, Option<Tls>)> {
    let addr = parse_addr(&t.addr)?;
    let tls = match (&addr, &t.tls) {
        (Address::Tcp { .. }, Some(files)) if !files.is_empty() => {
            Some((Arc::new(client_config(files)?), files.clone()))
        }
        _ => None,
    };
    Ok((addr, tls))
}

/// Why a connection failed, in one line, and whether trying again later may help (refused,
/// timed out, no socket yet) or not (TLS, names, bad files).
#[derive(Debug, Clone)]
pub struct Failure {
    pub retryable: bool,
    pub explained: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.explained)
    }
}

impl std::error::Error for Failure {}

type Io = Box<dyn IoStream>;
trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

async fn dial(
    addr: &Address,
    tls: Option<(Arc<ClientConfig>, TlsFiles)>,
    shown: &str,
) -> Result<Channel, Failure> {
    // The connector keeps its own explanation, since tonic's error would only say "transport error".
    let why: Arc<Mutex<Option<Failure>>> = Arc::default();
    let endpoint = Endpoint::from_static("http://buildkitd.invalid")
        .connect_timeout(DIAL_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let target = addr.clone();
    let shown_owned = shown.to_string();
    let slot = why.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (slot, tls, shown, target) = (
            slot.clone(),
            tls.clone(),
            shown_owned.clone(),
            target.clone(),
        );
        async move {
            match open(&target, tls, &shown).await {
                Ok(io) => Ok(TokioIo::new(io)),
                Err(f) => {
                    let e = std::io::Error::other(f.explained.clone());
                    *slot.lock().unwrap() = Some(f);
                    Err(e)
                }
            }
        }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(ch) => Ok(ch),
        Err(e) => Err(why.lock().unwrap().take().unwrap_or(Failure {
            retryable: true,
            explained: format!("cannot connect to {shown}: {e}"),
        })),
    }
}

async fn open(
    addr: &Address,
    tls: Option<(Arc<ClientConfig>, TlsFiles)>,
    shown: &str,
) -> Result<Io, Failure> {
    let io_failure = |e: std::io::Error| Failure {
        retryable: matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::TimedOut
        ),
        explained: match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                format!("cannot connect to {shown}: connection refused; is the daemon running and listening there?")
            }
            std::io::ErrorKind::NotFound => {
                format!("cannot connect to {shown}: no such socket; is the daemon running?")
            }
            std::io::ErrorKind::TimedOut => {
                format!("cannot connect to {shown}: timed out after {}s; check the address and any firewall in between", DIAL_TIMEOUT.as_secs())
            }
            _ => format!("cannot connect to {shown}: {e}"),
        },
    };
    match addr {
        Address::Unix(p) => Ok(Box::new(UnixStream::connect(p).await.map_err(io_failure)?)),
        Address::Tcp { host, port } => {
            let tcp =
                tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| io_failure(std::io::ErrorKind::TimedOut.into()))?
                    .map_err(io_failure)?;
            let _ = tcp.set_nodelay(true);
            let Some((config, files)) = tls else {
                return Ok(Box::new(tcp));
            };
            let name = files.server_name.clone().unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone()).map_err(|_| Failure {
                retryable: false,
                explained: format!("{name:?} is not a valid TLS server name: fix --tlsservername"),
            })?;
            let stream = TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| Failure {
                    retryable: false,
                    explained: explain_tls(&e, shown, host, &name, &files),
                })?;
            Ok(Box::new(stream))
        }
    }
}

/// One line that says what went wrong with the TLS handshake and what to do.
pub fn explain_tls(
    e: &std::io::Error,
    shown: &str,
    host: &str,
    name: &str,
    files: &TlsFiles,
) -> String {
    let ca = files
        .ca
        .as_ref()
        .map_or("the system's CA store".to_string(), |p| {
            p.display().to_string()
        });
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let what = match inner {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            format!("the daemon's certificate is not signed by a CA in {ca}: pass the CA that signed it with --tlscacert")
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => {
            if host.parse::<IpAddr>().is_ok() && files.server_name.is_none() {
                format!("the daemon's certificate has no IP SAN for {host}: pass --tlsservername with a DNS name from the certificate")
            } else {
                format!("the daemon's certificate is not valid for {name:?}: pass --tlsservername with a name from its SAN list")
            }
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "the daemon's certificate has expired (or this machine's clock is wrong): renew the server certificate".to_string()
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. })) => {
            "the daemon's certificate is not valid yet (or this machine's clock is wrong)".to_string()
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))
        | Some(rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate))
            if files.cert.is_none() =>
        {
            "the daemon wants a client certificate: pass --tlscert and --tlskey (or --tlsdir)".to_string()
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("the daemon refused the TLS handshake ({alert:?}): check that it trusts the CA of --tlscert")
        }
        Some(rustls::Error::InvalidMessage(_)) => {
            "the daemon does not speak TLS there: drop the TLS flags if it is plaintext, or check the port".to_string()
        }
        _ => format!("TLS handshake failed: {e}"),
    };
    format!("cannot connect to {shown}: {what}")
}

/// Explains a failed call whose cause lies in the connection (e.g. a TLS 1.3 server that rejects
/// the missing client certificate only after the handshake). None when it is not about that.
pub fn explain_call(status: &tonic::Status, t: &Target) -> Option<String> {
    // The TLS alert is deep in the source chain (tonic → hyper → io → rustls), not in the message.
    let mut text = format!("{status:?}");
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(&format!(" / {e} {e:?}"));
        source = e.source();
    }
    // With TLS 1.3 a server refuses a client certificate only after the handshake, and the alert
    // often reaches us as nothing more than a closed connection.
    // hyper says "connection was not ready" when the server closed it before the first
    // request could go out: how a TLS server meets a plaintext client on a busy machine.
    let closed = text.contains("connection closed")
        || text.contains("broken pipe")
        || text.contains("reset by peer")
        || text.contains("connection was not ready");
    let alert_missing =
        text.contains("CertificateRequired") || text.contains("certificate required");
    let alert_bad = text.contains("BadCertificate")
        || text.contains("UnknownCA")
        || text.contains("bad certificate");
    match &t.tls {
        Some(f) if f.cert.is_none() && (alert_missing || closed) => Some(format!(
            "{} closed the connection after the TLS handshake, as a daemon that wants a client certificate does: pass --tlscert and --tlskey (or --tlsdir)",
            t.addr
        )),
        Some(f) if f.cert.is_some() && (alert_bad || alert_missing || closed) => Some(format!(
            "{} rejected the client certificate: it must be signed by a CA the daemon trusts (its --tlscacert)",
            t.addr
        )),
        None if t.addr.starts_with("tcp://") && (closed || status.code() == tonic::Code::Unavailable) => Some(format!(
            "{} closed the connection: if the daemon serves TLS, pass --tlscacert, --tlscert and --tlskey",
            t.addr
        )),
        _ => None,
    }
}

/// Explains an error from any call to `t`, when it carries a gRPC status about the connection.
pub fn explain_error(e: &anyhow::Error, t: &Target) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<tonic::Status>())
        .and_then(|s| explain_call(s, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Target {
        Target {
            addr: addr.into(),
            tls: None,
            insecure_plaintext: false,
            retry_for: Duration::ZERO,
            origin: None,
        }
    }

    #[test]
    fn plaintext_only_to_loopback_unless_asked() {
        assert!(validate(&tcp("tcp://127.0.0.1:1234")).unwrap().is_none());
        assert!(validate(&tcp("tcp://localhost:1234")).unwrap().is_none());
        assert!(validate(&tcp("tcp://[::1]:1234")).unwrap().is_none());
        let e = validate(&tcp("tcp://10.1.2.3:1234"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--insecure-plaintext") && e.contains("--tlscacert"),
            "{e}"
        );
        let t = Target {
            insecure_plaintext: true,
            ..tcp("tcp://buildkit.example:1234")
        };
        assert!(validate(&t).unwrap().unwrap().starts_with("warning:"));
    }

    #[test]
    fn addresses_are_checked() {
        assert!(validate(&tcp("tcp://host"))
            .unwrap_err()
            .to_string()
            .contains("no port"));
        assert!(validate(&tcp("http://x:1"))
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
        let t = Target {
            tls: Some(TlsFiles {
                ca: Some("/x".into()),
                ..Default::default()
            }),
            ..tcp("unix:///s")
        };
        assert!(validate(&t)
            .unwrap_err()
            .to_string()
            .contains("only for tcp://"));
    }

    #[test]
    fn tls_files_must_be_readable_and_paired() {
        let t = Target {
            tls: Some(TlsFiles {
                ca: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            }),
            ..tcp("tcp://10.0.0.1:1")
        };
        assert!(validate(&t)
            .unwrap_err()
            .to_string()
            .contains("cannot read CA certificate /nonexistent/ca.pem"));
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cert.pem"), "x").unwrap();
        let files = TlsFiles::default().with_dir(d.path());
        assert_eq!(files.cert, Some(d.path().join("cert.pem")));
        assert!(files.key.is_none());
        let t = Target {
            tls: Some(files),
            ..tcp("tcp://10.0.0.1:1")
        };
        assert!(
            format!("{:#}", validate(&t).unwrap_err()).contains("go together")
                || format!("{:#}", validate(&t).unwrap_err()).contains("PEM")
        );
    }

    #[test]
    fn tls_errors_are_explained() {
        let files = TlsFiles {
            ca: Some("ca.pem".into()),
            ..Default::default()
        };
        let err = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let s = explain_tls(
            &err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            "tcp://h:1",
            "h",
            "h",
            &files,
        );
        assert!(s.contains("not signed by a CA in ca.pem"), "{s}");
        let s = explain_tls(
            &err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
            "tcp://127.0.0.1:1",
            "127.0.0.1",
            "127.0.0.1",
            &files,
        );
        assert!(
            s.contains("no IP SAN for 127.0.0.1") && s.contains("--tlsservername"),
            "{s}"
        );
        let s = explain_tls(
            &err(rustls::Error::InvalidCertificate(CertificateError::Expired)),
            "tcp://h:1",
            "h",
            "h",
            &files,
        );
        assert!(s.contains("expired"), "{s}");
        let s = explain_tls(
            &err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            )),
            "tcp://h:1",
            "h",
            "h",
            &files,
        );
        assert!(s.contains("--tlscert"), "{s}");
    }

    #[tokio::test]
    async fn refused_connections_name_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect_target(&tcp(&format!("tcp://127.0.0.1:{port}")))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("tcp://127.0.0.1:{port}")) && e.contains("connection refused"),
            "{e}"
        );
    }
}
