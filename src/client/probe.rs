//! The readiness probe: a ListWorkers call, which answers only once the daemon serves with its workers loaded; the supervisor races it against the daemon's READY=1.

use std::time::Duration;

use anyhow::{Context, Result};
use tonic::codegen::http::uri::PathAndQuery;
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
pub async fn workers_on(channel: tonic::transport::Channel) -> Result<usize> {
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

/// Resolves once the daemon at `addr` answers ListWorkers with a worker, retrying with a short,
/// growing backoff.
pub async fn until_serving(addr: String) {
    let mut delay = Duration::from_millis(5);
    let target = Target::unix(&addr);
    loop {
        // try_once, not connect: a refused dial (the usual answer while the daemon starts) then
        // builds no anyhow error, which with RUST_BACKTRACE set walks the stack each time.
        if let Ok(channel) = try_once(&target).await {
            if workers_on(channel).await.is_ok_and(|n| n > 0) {
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}
