//! Opening a gRPC channel to a daemon address (`unix://PATH` for now).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to `addr`. The channel connects lazily on first use when `lazy` is set.
pub async fn connect(addr: &str) -> Result<Channel> {
    let Some(path) = addr.strip_prefix("unix://") else {
        bail!("unsupported daemon address {addr:?}: use unix:///path/to/buildkitd.sock");
    };
    let path = PathBuf::from(path);
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://buildkitd.invalid");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to buildkitd at {addr}"))
}
