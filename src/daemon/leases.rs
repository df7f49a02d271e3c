//! After a buildkitd with the containerd worker stops: removes the temporary leases it left in the node's containerd, which would otherwise pin their snapshots there for ever once the pod and its state dir are gone.
//!
//! buildkitd marks leases it holds only while a ref is in use (a mounted view, an export) with
//! the label `buildkit/lease.temporary` and deletes them all when its worker next starts; an
//! ephemeral daemon never starts again on that node, so bkrun does it. Only this daemon's leases
//! are touched, since another buildkitd on the namespace may be using its own: one created since
//! this daemon started whose cache record (the ID before `-view`) is in this state dir's
//! metadata database. (buildkitd's own start-up sweep removes every temporary lease.)

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

use crate::proto::containerd::services::leases::v1::{
    leases_client::LeasesClient, DeleteRequest, Lease, ListRequest,
};

/// The label buildkitd puts on leases it means to drop.
const TEMPORARY: &str = "buildkit/lease.temporary";

/// How long teardown gives containerd: it answers in milliseconds when it is there at all.
const LIMIT: Duration = Duration::from_secs(5);

/// Deletes this daemon's temporary leases in `namespace`: created at or after `since`, for a
/// record of the state dir `state_dir`. Returns how many.
pub async fn remove_temporary(
    socket: &Path,
    namespace: &str,
    since: SystemTime,
    state_dir: &Path,
) -> Result<usize> {
    let records = metadata_bytes(state_dir);
    tokio::time::timeout(LIMIT, remove(socket, namespace, since, &records))
        .await
        .with_context(|| {
            format!(
                "containerd at {} did not answer in {LIMIT:?}",
                socket.display()
            )
        })?
}

/// The bytes of the containerd worker's metadata databases (`containerd-SNAPSHOTTER/
/// metadata_v2.db`): a bolt file whose bucket names are the record IDs.
fn metadata_bytes(state_dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("containerd-")
        {
            if let Ok(b) = std::fs::read(entry.path().join("metadata_v2.db")) {
                all.extend(b);
            }
        }
    }
    all
}

async fn remove(
    socket: &Path,
    namespace: &str,
    since: SystemTime,
    records: &[u8],
) -> Result<usize> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://containerd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .with_context(|| format!("cannot connect to containerd at {}", socket.display()))?;
    let mut client = LeasesClient::new(channel);
    let listed = client
        .list(in_namespace(
            namespace,
            ListRequest {
                filters: vec![format!("labels.\"{TEMPORARY}\"")],
            },
        ))
        .await
        .context("cannot list containerd's leases")?
        .into_inner()
        .leases;
    let mut removed = 0;
    for lease in listed.iter().filter(|l| is_ours(l, since, records)) {
        client
            .delete(in_namespace(
                namespace,
                DeleteRequest {
                    id: lease.id.clone(),
                    sync: false,
                },
            ))
            .await
            .with_context(|| format!("cannot delete containerd lease {}", lease.id))?;
        removed += 1;
    }
    Ok(removed)
}

/// A call in `namespace`: containerd takes every call's namespace from this header.
fn in_namespace<T>(namespace: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = namespace.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

/// A temporary lease made since `since` for a record in `records` (the filter already asked for
/// the label; checked again so a containerd that ignores filters cannot make bkrun delete the
/// cache).
fn is_ours(lease: &Lease, since: SystemTime, records: &[u8]) -> bool {
    let record = lease.id.strip_suffix("-view").unwrap_or(&lease.id);
    let known = !record.is_empty()
        && records
            .windows(record.len())
            .any(|w| w == record.as_bytes());
    let created = lease.created_at.as_ref().and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
    });
    known && lease.labels.contains_key(TEMPORARY) && created.is_some_and(|c| c >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(temporary: bool, at: u64) -> Lease {
        Lease {
            id: "l1-view".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: at as i64,
                nanos: 0,
            }),
            labels: if temporary {
                [(TEMPORARY.to_string(), "2026-12-01T00:00:00Z".to_string())].into()
            } else {
                Default::default()
            },
        }
    }

    #[test]
    fn only_temporary_leases_made_since_the_daemon_started_are_ours() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let db = b"..bucket l1 ..";
        assert!(is_ours(&lease(true, 1000), since, db));
        assert!(is_ours(&lease(true, 2000), since, db));
        assert!(
            !is_ours(&lease(true, 999), since, db),
            "older: another daemon's"
        );
        assert!(
            !is_ours(&lease(true, 2000), since, b"..bucket l2 .."),
            "not a record of this state dir"
        );
        assert!(!is_ours(&lease(false, 2000), since, db), "the cache");
        let mut no_time = lease(true, 2000);
        no_time.created_at = None;
        assert!(!is_ours(&no_time, since, db));
    }
}
