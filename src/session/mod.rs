//! BuildKit client sessions: we open `Control.Session` and serve gRPC to the daemon through it.
//!
//! The daemon reaches client-side features (build context, secrets, auth,
//! exports) only through a session: the client opens the bidi
//! `Control.Session` stream, announces itself in request metadata, and then
//! acts as an HTTP/2 gRPC *server* on the bytes of that stream while the
//! daemon dials in as the client.

pub mod auth;
pub mod content;
pub mod credentials;
pub mod filesend;
pub mod filesync;
mod h2serve;
mod health;
mod packets;
mod raw;
pub mod secrets;
pub mod ssh;
pub mod ssh_agent;
pub mod sshkey;
pub mod tlsroots;
pub mod token;
mod tunnel;

use std::convert::Infallible;
use std::io::Read;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Channel;

use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::BytesMessage;

pub use health::HealthService;
pub use tunnel::{OutgoingMessage, Tunnel};

/// Session id, read by the daemon to find this session for a Solve.
pub const HEADER_SESSION_ID: &str = "x-docker-expose-session-uuid";
/// Human-readable session name (defined upstream; informational only).
pub const HEADER_SESSION_NAME: &str = "x-docker-expose-session-name";
/// Key the daemon uses to share cached local sources between sessions.
pub const HEADER_SESSION_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
/// One value per served method path; the daemon only calls listed methods.
pub const HEADER_SESSION_METHOD: &str = "x-docker-expose-session-grpc-method";
/// Optional: milliseconds for the daemon's health-check interval and timeout.
pub const HEADER_HEALTH_CUSTOM_TIMEOUT: &str = "x-buildkit-session-health-custom-timeout";

/// Messages buffered toward the daemon before writes wait.
const TUNNEL_BUFFER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid value for session header {0}")]
    Header(&'static str),
    #[error("the daemon refused the session: {0}")]
    Open(#[source] tonic::Status),
    #[error("serving gRPC on the session tunnel failed: {0}")]
    Serve(#[source] h2::Error),
    #[error("session task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A session being assembled: identity plus the services it will serve.
pub struct Session {
    id: String,
    name: String,
    shared_key: String,
    routes: RoutesBuilder,
    services: Vec<String>,
    methods: Vec<String>,
}

impl Session {
    /// A new session with a random id; the health service is always served.
    pub fn new(name: impl Into<String>) -> Self {
        let mut session = Self {
            id: random_id(),
            name: name.into(),
            shared_key: String::new(),
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            methods: Vec::new(),
        };
        // The health service is registered at start(), once all service
        // names are known; only its methods are announced here.
        session.announce(
            crate::proto::grpc::health::v1::health_server::SERVICE_NAME,
            method_names(crate::proto::grpc::health::v1::health_server::SERVICE_NAME),
        );
        session
    }

    pub fn with_shared_key(mut self, key: impl Into<String>) -> Self {
        self.shared_key = key.into();
        self
    }

    /// Serve a generated tonic server (e.g. `FileSyncServer`) over the session,
    /// announcing the methods its proto declares.
    ///
    /// # Panics
    /// If the service is not one of our compiled protos; use
    /// [`Session::add_service_with_methods`] for those.
    pub fn add_service<S>(self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let methods = method_names(S::NAME);
        self.add_service_with_methods(svc, methods)
    }

    /// Serve any gRPC service, announcing the given method names (bare
    /// names like `DiffCopy`, not paths).
    pub fn add_service_with_methods<S>(mut self, svc: S, methods: &[&str]) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(svc);
        self.announce(S::NAME, methods);
        self
    }

    fn announce(&mut self, service: &str, methods: &[&str]) {
        self.services.push(service.to_string());
        self.methods
            .extend(methods.iter().map(|m| format!("/{service}/{m}")));
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Full method paths announced to the daemon, e.g.
    /// `/moby.filesync.v1.FileSync/DiffCopy`.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// The request metadata that opens this session.
    pub fn metadata(&self) -> Result<MetadataMap, SessionError> {
        let value = |name: &'static str, v: &str| {
            AsciiMetadataValue::try_from(v).map_err(|_| SessionError::Header(name))
        };
        let mut md = MetadataMap::new();
        md.insert(HEADER_SESSION_ID, value(HEADER_SESSION_ID, &self.id)?);
        md.insert(HEADER_SESSION_NAME, value(HEADER_SESSION_NAME, &self.name)?);
        md.insert(
            HEADER_SESSION_SHARED_KEY,
            value(HEADER_SESSION_SHARED_KEY, &self.shared_key)?,
        );
        for m in &self.methods {
            md.append(HEADER_SESSION_METHOD, value(HEADER_SESSION_METHOD, m)?);
        }
        Ok(md)
    }

    /// Open `Control.Session` on `channel` and start serving. Returns once the
    /// daemon has accepted the stream; serving continues in a background task.
    pub async fn start(self, channel: Channel) -> Result<SessionHandle, SessionError> {
        let mut handle = self.begin(channel)?;
        match handle.opened.take() {
            Some(opened) => match opened.await {
                Ok(Err(status)) => Err(SessionError::Open(status)),
                _ => Ok(handle),
            },
            None => Ok(handle),
        }
    }

    /// Open `Control.Session` on `channel` without waiting for the daemon's answer: the Solve
    /// that names this session can go at once, since the daemon's Solve waits for the session
    /// to register (a round trip saved, BENCHMARKS.md's "services → session"). Whoever sends
    /// it must also watch `SessionHandle::refused`: a Solve for a session that never
    /// registers waits until it is cancelled.
    pub fn begin(self, channel: Channel) -> Result<SessionHandle, SessionError> {
        let mut request_metadata = self.metadata()?;
        let (tx, rx) = mpsc::channel::<BytesMessage>(TUNNEL_BUFFER);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        std::mem::swap(request.metadata_mut(), &mut request_metadata);

        let health = HealthService::new(self.services.iter().cloned()).into_server();
        let mut routes = self.routes;
        routes.add_service(health);
        let routes = routes.routes().prepare();

        let (opened_tx, opened_rx) = oneshot::channel();
        let (shutdown_tx, mut shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut control = ControlClient::new(channel);
            let response = tokio::select! {
                r = control.session(request) => r,
                // Closed before the daemon answered: nothing to serve.
                _ = &mut shutdown_rx => return Ok(()),
            };
            let response = match response {
                Ok(r) => {
                    let _ = opened_tx.send(Ok(()));
                    r
                }
                Err(status) => {
                    let _ = opened_tx.send(Err(status.clone()));
                    return Err(SessionError::Open(status));
                }
            };
            let tunnel = Tunnel::new(response.into_inner(), tx);
            serve(tunnel, routes, shutdown_rx).await
        });
        Ok(SessionHandle {
            id: self.id,
            shutdown: Some(shutdown_tx),
            task,
            opened: Some(opened_rx),
        })
    }
}

/// A running session. Dropping it also ends the session, in the background.
pub struct SessionHandle {
    id: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SessionError>>,
    /// The daemon's answer to the Session call, until `refused` has seen it.
    opened: Option<oneshot::Receiver<Result<(), tonic::Status>>>,
}

impl SessionHandle {
    /// The id to put into `SolveRequest.Session`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves with the daemon's refusal when it refused the session; never resolves once it
    /// accepted it. Cancel-safe: dropped before the answer, a later call still sees it.
    pub async fn refused(&mut self) -> tonic::Status {
        if let Some(opened) = self.opened.as_mut() {
            let answer = opened.await;
            self.opened = None;
            if let Ok(Err(status)) = answer {
                return status;
            }
        }
        std::future::pending().await
    }

    /// True once the tunnel is gone, e.g. the daemon ended the session.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// End the session at once: the tunnel is dropped and the daemon sees the stream end.
    /// Returns how serving ended.
    pub async fn close(mut self) -> Result<(), SessionError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.map_err(SessionError::Task)?
    }
}

async fn serve<S>(
    tunnel: Tunnel<S, BytesMessage>,
    routes: Routes,
    mut shutdown: oneshot::Receiver<()>,
) -> Result<(), SessionError>
where
    S: futures::Stream<Item = Result<BytesMessage, tonic::Status>> + Unpin + Send + 'static,
{
    let conn = h2serve::serve(tunnel, routes);
    tokio::pin!(conn);
    tokio::select! {
        res = &mut conn => return res.map_err(SessionError::Serve),
        // A dropped handle (Err) ends the session just like close().
        _ = &mut shutdown => {}
    }
    // close() comes after Solve returned, when every call the daemon makes for a build (context
    // transfer, exports) is over: dropping the connection now is the whole shutdown. Waiting for
    // a graceful HTTP/2 close would wait on the daemon, which keeps the tunnel open.
    Ok(())
}

fn method_names(service: &str) -> &'static [&'static str] {
    crate::proto::service_methods(service)
        .unwrap_or_else(|| panic!("{service} is not in our protos; use add_service_with_methods"))
}

/// 25 lowercase base-36 characters from 128 random bits, the same shape as
/// upstream ids (the daemon treats them as opaque).
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .expect("reading /dev/urandom");
    let mut n = u128::from_le_bytes(raw);
    let mut out = [b'0'; 25];
    for slot in out.iter_mut().rev() {
        let digit = (n % 36) as u8;
        *slot = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        n /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

#[cfg(test)]
mod tests;
