//! The readiness probe: a ListWorkers call, which answers only once the daemon serves with its workers loaded; the supervisor races it against the daemon's READY=1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use super::connect::{try_once, Target};

#[derive(Clone, PartialEq, prost::Message)]
struct ListWorkersRequest {
    #[prost(string, repeated, tag = "1")]
    filter: Vec<String>,
}

/// Only the count matters here, so each worker record stays undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ListWorkersResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    record: Vec<Vec<u8>>,
}

/// Asks the daemon on `channel` for its workers; Ok(n) once it serves.
pub async fn workers_on(channel: Channel) -> Result<usize> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("daemon not ready")?;
    let path = PathAndQuery::from_static("/moby.buildkit.v1.Control/ListWorkers");
    let resp: tonic::Response<ListWorkersResponse> = grpc
        .unary(
            tonic::Request::new(ListWorkersRequest::default()),
            path,
            ProstCodec::default(),
        )
        .await?;
    Ok(resp.into_inner().record.len())
}

/// The connection the probe last dialled, kept for the work once the daemon serves. buildkitd
/// listens on its socket before it loads its workers and serves, so the dial succeeds while it
/// starts, and its connection waits in the socket's backlog until the server takes it: the work
/// then needs no connection of its own after READY=1 (about 0.4 ms of every build).
#[derive(Clone, Default)]
pub struct Dialled(Arc<Mutex<Option<Channel>>>);

impl Dialled {
    /// The connection, if a dial succeeded.
    pub fn take(&self) -> Option<Channel> {
        self.0.lock().ok()?.take()
    }

    fn keep(&self, channel: Channel) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(channel);
        }
    }
}

/// When the probe first dials, and its first wait after that. buildkitd makes its socket about
/// 16–18 ms into a start of 50–90 ms on a 2-core node, so dials at once and 5 ms later were
/// always refused, and each refused dial cost about 0.18 ms of CPU (a timer on a worker thread,
/// the main thread woken, tonic's failed connect) taken from the daemon's start.
const FIRST_DIAL: Duration = Duration::from_millis(10);
/// The longest wait between two dials or two calls.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How long after its connection is made the probe first asks. The daemon's READY=1, not this
/// probe, normally ends the wait, so the question is left for a daemon whose READY=1 does not
/// come (its NOTIFY_SOCKET not passed on): asked at once, it made the daemon answer it as it
/// began to serve, beside the build's first calls.
const FIRST_ASK: Duration = Duration::from_millis(200);

/// Resolves once the daemon at `addr` answers ListWorkers with a worker. It dials after a
/// growing wait, and keeps each connection it makes in `dialled`: buildkitd listens before it
/// serves, so the build's connection is made while the daemon starts.
pub async fn until_serving(addr: String, dialled: Dialled) {
    let mut wait = FIRST_DIAL;
    let mut first_ask = Some(FIRST_ASK);
    let target = Target::unix(&addr);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_WAIT);
        // try_once, not connect: a refused dial (the usual answer while the daemon starts) then
        // builds no anyhow error, which with RUST_BACKTRACE set walks the stack each time.
        if let Ok(channel) = try_once(&target).await {
            dialled.keep(channel.clone());
            if let Some(later) = first_ask.take() {
                tokio::time::sleep(later).await;
            }
            if workers_on(channel).await.is_ok_and(|n| n > 0) {
                return;
            }
        }
    }
}
