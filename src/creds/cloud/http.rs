//! The HTTP the identity exchanges share: one client with bkrun's CAs and proxies, bounded answers, and a way to wait for them from the blocking credential look-up.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::session::token::{client_builder, RegistryTls};

/// Identity endpoints answer in well under this; a hung one must not hang the build.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Token answers are small.
const MAX_BODY: usize = 1 << 20;

/// Runs `f` to its end from a blocking thread: on the runtime's handle when there is one
/// (look-ups run under spawn_blocking, outside any task), else on a small runtime of its own.
pub fn block<F: Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the credential look-up")
            .block_on(f),
    }
}

/// A client for identity endpoints (and, with `tls`, a registry's own token exchange).
pub fn client(tls: Option<&RegistryTls>, timeout: Duration) -> Result<reqwest::Client> {
    client_builder(tls)
        .map_err(|e| anyhow!("cannot set up HTTPS for the cloud identity: {e}"))?
        .timeout(timeout.min(TIMEOUT))
        .build()
        .map_err(|e| anyhow!("cannot set up HTTPS for the cloud identity: {e}"))
}

/// The usual client.
pub fn default_client() -> Result<reqwest::Client> {
    client(None, TIMEOUT)
}

/// A client for the node's own endpoints (Google's metadata server, EKS Pod Identity's
/// agent): never through HTTP(S)_PROXY, which would send the pod's identity to the proxy, as
/// the clouds' own SDKs never do.
pub fn node_client(timeout: Duration) -> Result<reqwest::Client> {
    client_builder(None)
        .map_err(|e| anyhow!("cannot set up HTTP for the cloud identity: {e}"))?
        .no_proxy()
        .timeout(timeout.min(TIMEOUT))
        .build()
        .map_err(|e| anyhow!("cannot set up HTTP for the cloud identity: {e}"))
}

/// An answer's status and body (at most MAX_BODY bytes).
pub async fn body(resp: reqwest::Response) -> Result<(u16, String)> {
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| anyhow!("the answer was cut off: {e}"))?;
    let cut = &bytes[..bytes.len().min(MAX_BODY)];
    Ok((status, String::from_utf8_lossy(cut).into_owned()))
}

/// A server's words, clipped to one short line (no secret is ever in an error answer).
pub fn clip(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}
