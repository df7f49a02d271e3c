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

/// Resolves once the daemon at `addr` answers ListWorkers with a worker, retrying with a short,
/// growing backoff; each connection it makes is kept in `dialled`.
pub async fn until_serving(addr: String, dialled: Dialled) {
    let mut delay = Duration::from_millis(5);
    let target = Target::unix(&addr);
    loop {
        // try_once, not connect: a refused dial (the usual answer while the daemon starts) then
        // builds no anyhow error, which with RUST_BACKTRACE set walks the stack each time.
        if let Ok(channel) = try_once(&target).await {
            dialled.keep(channel.clone());
            if workers_on(channel).await.is_ok_and(|n| n > 0) {
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}
