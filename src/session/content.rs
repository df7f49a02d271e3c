//! The session's content-store service (containerd's Content API): the daemon reads and writes client-side image-layout directories, e.g. a `type=local` cache, through it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ocilayout::store::{BlobInfo, IngestStatus, StoreError, Writer};
use crate::ocilayout::{Digest, LocalStore};
use crate::proto::containerd::services::content::v1 as api;
use api::content_server::{Content, ContentServer};

/// Metadata key naming the store a call is for (BuildKit's `local:` + directory for a local cache).
pub const HEADER_STORE_ID: &str = "buildkit-attachable-store-id";

/// The daemon's content client sends writes in chunks of up to 8 MiB (half its 16 MiB limit).
const MAX_MESSAGE: usize = 16 << 20;
/// Bytes per Read response; well under the daemon's default 4 MiB receive limit.
const READ_CHUNK: usize = 1 << 20;

/// The stores this session serves, by id.
#[derive(Clone, Default)]
pub struct ContentStores {
    stores: Arc<HashMap<String, Arc<LocalStore>>>,
}

impl ContentStores {
    pub fn new(stores: HashMap<String, Arc<LocalStore>>) -> Self {
        ContentStores {
            stores: Arc::new(stores),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    pub fn into_server(self) -> ContentServer<Self> {
        ContentServer::new(self).max_decoding_message_size(MAX_MESSAGE)
    }

    fn choose<T>(&self, request: &Request<T>) -> Result<Arc<LocalStore>, Status> {
        let id = request
            .metadata()
            .get(HEADER_STORE_ID)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("request lacks metadata {HEADER_STORE_ID:?}"))
            })?;
        self.stores
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown content store {id}: bkrun serves only the cache directories given on its command line")))
    }
}

fn digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).ok_or_else(|| Status::invalid_argument(format!("{s:?} is not a digest")))
}

/// containerd's filter language is not needed by BuildKit's calls; a filter is refused, not ignored.
fn no_filters(filters: &[String]) -> Result<(), Status> {
    if filters.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "bkrun's content store lists without filters only, got {filters:?}"
        )))
    }
}

fn status_of(store: &LocalStore, e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(format!("{m}: not found")),
        StoreError::AlreadyExists(m) => {
            Status::already_exists(format!("content {m}: already exists"))
        }
        StoreError::Locked(m) => Status::unavailable(format!("ref {m} locked: unavailable")),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Io(e) => Status::internal(format!(
            "cannot use the content directory {}: {e}",
            store.root().display()
        )),
    }
}

fn info(b: BlobInfo) -> api::Info {
    api::Info {
        digest: b.digest.to_string(),
        size: b.size as i64,
        created_at: Some(b.created.into()),
        updated_at: Some(b.updated.into()),
        labels: HashMap::new(),
    }
}

fn ingest_status(s: IngestStatus) -> api::Status {
    api::Status {
        started_at: Some(s.started.into()),
        updated_at: Some(s.updated.into()),
        r#ref: s.reference,
        offset: s.offset as i64,
        total: s.total as i64,
        expected: s.expected,
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for ContentStores {
    async fn info(
        &self,
        request: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let store = self.choose(&request)?;
        let d = digest(&request.get_ref().digest)?;
        let i = store.info(&d).map_err(|e| status_of(&store, e))?;
        Ok(Response::new(api::InfoResponse {
            info: Some(info(i)),
        }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        self.choose(&request)?;
        // Like containerd's local store without a label database: the directory holds blobs only.
        Err(Status::failed_precondition(
            "update not supported on immutable content store: a cache directory keeps no labels",
        ))
    }

    type ListStream = Stream_<api::ListContentResponse>;

    async fn list(
        &self,
        request: Request<api::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let store = self.choose(&request)?;
        no_filters(&request.get_ref().filters)?;
        let blobs = store.list().map_err(|e| status_of(&store, e))?;
        let pages: Vec<Result<api::ListContentResponse, Status>> = blobs
            .chunks(100)
            .map(|page| {
                Ok(api::ListContentResponse {
                    info: page.iter().cloned().map(info).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    async fn delete(
        &self,
        request: Request<api::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        let store = self.choose(&request)?;
        let d = digest(&request.get_ref().digest)?;
        store.delete(&d).map_err(|e| status_of(&store, e))?;
        Ok(Response::new(()))
    }

    type ReadStream = Stream_<api::ReadContentResponse>;

    async fn read(
        &self,
        request: Request<api::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.choose(&request)?;
        let req = request.into_inner();
        let d = digest(&req.digest)?;
        let (mut file, size) = store.open(&d).await.map_err(|e| status_of(&store, e))?;
        let offset = req.offset.max(0) as u64;
        if offset > size {
            return Err(Status::out_of_range(format!(
                "read past object length {size} bytes"
            )));
        }
        let mut left = if req.size <= 0 || offset + req.size as u64 > size {
            size - offset
        } else {
            req.size as u64
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| status_of(&store, e.into()))?;
        // Read ahead by at most two chunks: a large layer never sits in memory whole.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            // Offsets count from the requested offset, as containerd's server sends them.
            let mut sent = 0i64;
            while left > 0 {
                let mut buf = vec![0u8; left.min(READ_CHUNK as u64) as usize];
                if let Err(e) = file.read_exact(&mut buf).await {
                    let _ = tx.send(Err(status_of(&store, e.into()))).await;
                    return;
                }
                let n = buf.len();
                let chunk = api::ReadContentResponse {
                    offset: sent,
                    data: buf,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                sent += n as i64;
                left -= n as u64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let store = self.choose(&request)?;
        let s = store
            .status(&request.get_ref().r#ref)
            .map_err(|e| status_of(&store, e))?;
        Ok(Response::new(api::StatusResponse {
            status: Some(ingest_status(s)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let store = self.choose(&request)?;
        no_filters(&request.get_ref().filters)?;
        Ok(Response::new(api::ListStatusesResponse {
            statuses: store.statuses().into_iter().map(ingest_status).collect(),
        }))
    }

    type WriteStream = Stream_<api::WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let store = self.choose(&request)?;
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(status) = write(store, incoming, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, request: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let store = self.choose(&request)?;
        store
            .abort(&request.get_ref().r#ref)
            .map_err(|e| status_of(&store, e))?;
        Ok(Response::new(()))
    }
}

/// One Write stream: the first message names the ref; every request is answered; COMMIT ends it.
async fn write(
    store: Arc<LocalStore>,
    mut incoming: Streaming<api::WriteContentRequest>,
    tx: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(mut req) = incoming.message().await? else {
        return Ok(());
    };
    let reference = req.r#ref.clone();
    if reference.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    // Opened by the first request and kept across the stream, so STAT, WRITE and COMMIT all act
    // on the one ingest.
    let mut writer = None;
    let mut expected: Option<Digest> = None;
    loop {
        if !req.expected.is_empty() {
            expected = Some(not_here_yet(
                &store,
                &reference,
                &req.expected,
                &mut writer,
            )?);
        }
        let (resp, committed) =
            answer(&store, &mut writer, &reference, &req, expected.as_ref()).await?;
        if committed {
            let _ = tx.send(Ok(resp)).await;
            return Ok(());
        }
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
        match incoming.message().await? {
            Some(next) => req = next,
            None => return Ok(()),
        }
    }
}

/// One request of a Write stream acted on, on the ingest `writer` holds (opened here by the
/// first request): its answer, and whether it was a COMMIT that ended the ingest.
async fn answer(
    store: &Arc<LocalStore>,
    writer: &mut Option<Writer>,
    reference: &str,
    req: &api::WriteContentRequest,
    expected: Option<&Digest>,
) -> Result<(api::WriteContentResponse, bool), Status> {
    let fail = |e| status_of(store, e);
    let w = match writer.as_mut() {
        Some(w) => w,
        None => writer.insert(
            store
                .writer(reference, req.total.max(0) as u64, &req.expected)
                .await
                .map_err(fail)?,
        ),
    };
    if req.total > 0 {
        w.set_total(req.total as u64);
    }
    let action = api::WriteAction::try_from(req.action)
        .map_err(|_| Status::invalid_argument(format!("unknown write action {}", req.action)))?;
    let before = w.status();
    let mut resp = api::WriteContentResponse {
        action: req.action,
        offset: before.offset as i64,
        ..Default::default()
    };
    match action {
        api::WriteAction::Stat => {
            resp.digest = w.digest().to_string();
            resp.started_at = Some(before.started.into());
            resp.updated_at = Some(before.updated.into());
            resp.total = before.total as i64;
        }
        api::WriteAction::Write | api::WriteAction::Commit => {
            resp.offset = append(store, w, req, before.offset).await? as i64;
            if action == api::WriteAction::Commit {
                let w = writer.take().expect("writer is open");
                let total = w.status().total;
                let committed = w.commit(total, expected).await.map_err(fail)?;
                resp.digest = committed.to_string();
                return Ok((resp, true));
            }
            resp.digest = w.digest().to_string();
        }
    }
    Ok((resp, false))
}

/// The digest a request expects, parsed. A blob already here need not be sent again: the ingest
/// is dropped and AlreadyExists returned, which the daemon takes as done.
fn not_here_yet(
    store: &LocalStore,
    reference: &str,
    expected: &str,
    writer: &mut Option<Writer>,
) -> Result<Digest, Status> {
    let d = digest(expected)?;
    if store.info(&d).is_ok() {
        drop(writer.take());
        let _ = store.abort(reference);
        return Err(Status::already_exists(format!(
            "blob with expected digest {d} exists"
        )));
    }
    Ok(d)
}

/// A WRITE's (or COMMIT's) data appended at the ingest's offset `at`; an offset of 0 on a
/// started ingest starts it over. Returns the offset after.
async fn append(
    store: &LocalStore,
    w: &mut Writer,
    req: &api::WriteContentRequest,
    at: u64,
) -> Result<u64, Status> {
    let fail = |e| status_of(store, e);
    if req.offset > 0 && req.offset as u64 != at {
        return Err(Status::out_of_range(format!(
            "write @{} must occur at current offset {}",
            req.offset, at
        )));
    }
    if req.offset == 0 && at > 0 {
        w.truncate().await.map_err(fail)?;
    }
    if !req.data.is_empty() {
        w.write(&req.data).await.map_err(fail)?;
    }
    Ok(w.status().offset)
}

#[cfg(test)]
mod tests;
