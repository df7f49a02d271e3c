//! Session tests against an in-process fake daemon that dials gRPC back through the tunnel.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::proto::grpc::health::v1::health_client::HealthClient;
use crate::proto::grpc::health::v1::HealthCheckRequest;
use crate::proto::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use crate::proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use crate::proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use crate::proto::moby::buildkit::v1 as control;
use control::control_server::{Control, ControlServer};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake daemon saw and got back through one session.
struct Seen {
    metadata: MetadataMap,
    health: Result<i32, Status>,
    secret: Result<Vec<u8>, Status>,
    /// Fires the fake's post-close probe; its result comes back on the receiver.
    probe_after_close: oneshot::Sender<()>,
    after_close: oneshot::Receiver<bool>,
}

/// Implements only `Control.Session`, and like buildkitd turns the hijacked
/// stream into a gRPC client connection to the session's server.
struct FakeDaemon {
    seen: mpsc::Sender<Seen>,
}

#[tonic::async_trait]
impl Control for FakeDaemon {
    async fn disk_usage(
        &self,
        _: Request<control::DiskUsageRequest>,
    ) -> Result<Response<control::DiskUsageResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type PruneStream = BoxStream<control::UsageRecord>;

    async fn prune(
        &self,
        _: Request<control::PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn solve(
        &self,
        _: Request<control::SolveRequest>,
    ) -> Result<Response<control::SolveResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type StatusStream = BoxStream<control::StatusResponse>;

    async fn status(
        &self,
        _: Request<control::StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type SessionStream = ReceiverStream<Result<BytesMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let metadata = request.metadata().clone();
        let (tx, rx) = mpsc::channel(8);
        let tunnel = Tunnel::new(request.into_inner(), tx);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let channel = dial_over(tunnel).await;
            let health = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            let secret = SecretsClient::new(channel.clone())
                .get_secret(GetSecretRequest {
                    id: "token".into(),
                    annotations: Default::default(),
                })
                .await
                .map(|r| r.into_inner().data);
            let (probe_tx, probe_rx) = oneshot::channel();
            let (result_tx, result_rx) = oneshot::channel();
            let _ = seen
                .send(Seen {
                    metadata,
                    health,
                    secret,
                    probe_after_close: probe_tx,
                    after_close: result_rx,
                })
                .await;
            if probe_rx.await.is_ok() {
                let mut client = HealthClient::new(channel);
                let check = client.check(HealthCheckRequest::default());
                let failed = tokio::time::timeout(Duration::from_secs(5), check)
                    .await
                    .map(|r| r.is_err())
                    .unwrap_or(false);
                let _ = result_tx.send(failed);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workers(
        &self,
        _: Request<control::ListWorkersRequest>,
    ) -> Result<Response<control::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn info(
        &self,
        _: Request<control::InfoRequest>,
    ) -> Result<Response<control::InfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ListenBuildHistoryStream = BoxStream<control::BuildHistoryEvent>;

    async fn listen_build_history(
        &self,
        _: Request<control::BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_build_history(
        &self,
        _: Request<control::UpdateBuildHistoryRequest>,
    ) -> Result<Response<control::UpdateBuildHistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A gRPC client whose only connection is the given tunnel.
async fn dial_over(
    tunnel: Tunnel<Streaming<BytesMessage>, Result<BytesMessage, Status>>,
) -> Channel {
    let slot = Arc::new(Mutex::new(Some(tunnel)));
    Endpoint::from_static("http://session")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = slot.lock().unwrap().take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the session has one connection only"))
            }
        }))
        .await
        .expect("dial over tunnel")
}

struct FakeSecrets;

#[tonic::async_trait]
impl Secrets for FakeSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(GetSecretResponse {
            data: format!("value-of-{id}").into_bytes(),
        }))
    }
}

#[test]
fn ids_are_25_base36_chars_and_differ() {
    let a = random_id();
    let b = random_id();
    assert_eq!(a.len(), 25);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    assert_ne!(a, b);
}

#[test]
fn methods_and_headers_announce_services() {
    let s = Session::new("bkrun")
        .with_shared_key("key")
        .add_service(SecretsServer::new(FakeSecrets));
    assert_eq!(
        s.methods(),
        [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/moby.buildkit.secrets.v1.Secrets/GetSecret",
        ]
    );
    let md = s.metadata().unwrap();
    assert_eq!(md.get(HEADER_SESSION_ID).unwrap(), s.id());
    assert_eq!(md.get(HEADER_SESSION_NAME).unwrap(), "bkrun");
    assert_eq!(md.get(HEADER_SESSION_SHARED_KEY).unwrap(), "key");
    let methods: Vec<_> = md
        .get_all(HEADER_SESSION_METHOD)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(methods, s.methods());
}

#[tokio::test]
async fn daemon_dials_back_through_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let (seen_tx, mut seen_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(ControlServer::new(FakeDaemon { seen: seen_tx }))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let channel = Endpoint::from_static("http://control")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap();

    let session = Session::new("bkrun-test").add_service(SecretsServer::new(FakeSecrets));
    let expected_methods = session.methods().to_vec();
    let handle = session.start(channel).await.unwrap();

    let seen = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("fake daemon reported in time")
        .expect("fake daemon reported");
    assert_eq!(seen.metadata.get(HEADER_SESSION_ID).unwrap(), handle.id());
    let methods: Vec<_> = seen
        .metadata
        .get_all(HEADER_SESSION_METHOD)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(methods, expected_methods);
    assert_eq!(seen.health.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(seen.secret.unwrap(), b"value-of-token");
    assert!(!handle.is_finished());

    tokio::time::timeout(Duration::from_secs(10), handle.close())
        .await
        .expect("close finished in time")
        .expect("session closed cleanly");
    seen.probe_after_close.send(()).unwrap();
    assert!(
        seen.after_close.await.unwrap(),
        "health check must fail once the session is closed"
    );

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// Manual check against a real daemon: set BKRUN_TEST_BUILDKITD_SOCK to a
/// buildkitd unix socket and run with `--ignored`. It outlives two health
/// check rounds (the daemon drops sessions after two failed checks).
#[tokio::test]
#[ignore = "needs a running buildkitd"]
async fn real_buildkitd_accepts_the_session() {
    let sock = std::env::var("BKRUN_TEST_BUILDKITD_SOCK").expect("BKRUN_TEST_BUILDKITD_SOCK");
    let channel = Endpoint::from_static("http://buildkitd")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let handle = Session::new("bkrun-test")
        .add_service(SecretsServer::new(FakeSecrets))
        .start(channel.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(!handle.is_finished(), "daemon dropped the session");

    // The daemon must find the session by id; the dockerfile frontend then
    // asks it for the build context, which this session does not serve.
    let err = control::control_client::ControlClient::new(channel)
        .solve(control::SolveRequest {
            r#ref: random_id(),
            session: handle.id().to_string(),
            frontend: "dockerfile.v0".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    eprintln!("solve without a context: {}", err.message());
    assert!(!err.message().contains("no active session"));

    handle.close().await.unwrap();
}
