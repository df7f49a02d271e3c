//! The session's FileSend service: the daemon pushes exporter output back through it, as an fsutil tree for `type=local` or as raw bytes for tar/oci/docker files.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::packets::{from_wire, pump_in, to_wire};
use super::raw::RawCodec;
use crate::fsutil::{receive, ReceiveOptions};
use crate::outputs::tree::DirTarget;
use crate::outputs::{self, FileTarget, NewFile};
use crate::proto::fsutil::types::Packet as WirePacket;
use crate::proto::moby::filesync::v1::BytesMessage;

/// Metadata key naming which exporter (its index in the request) a transfer is for.
pub const KEY_EXPORTER_ID: &str = "buildkit-attachable-exporter-id";
const METHOD: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// Where one exporter's output goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// `type=local`: a directory, received as an fsutil tree.
    Dir(PathBuf),
    /// A single file; `None` is stdout.
    File(Option<PathBuf>),
}

/// Outputs being written are kept under a temporary name by their destination, and only put
/// in place by `commit` once the build succeeded: a failed or interrupted build leaves no half
/// file or tree. Dropped, they are removed.
#[derive(Default, Debug)]
struct Pending {
    files: Vec<NewFile>,
    dirs: Vec<DirTarget>,
}

/// The exporter targets of one build, by exporter index.
#[derive(Clone, Debug)]
pub struct FileSendTargets {
    targets: Arc<HashMap<u32, Sink>>,
    pending: Arc<Mutex<Pending>>,
}

impl FileSendTargets {
    pub fn new(targets: HashMap<u32, Sink>) -> Self {
        FileSendTargets {
            targets: Arc::new(targets),
            pending: Arc::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Moves finished files and trees into place (after a successful build).
    pub fn commit(&self) -> std::io::Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        for file in pending.files {
            file.commit()?;
        }
        for dir in pending.dirs {
            dir.commit()?;
        }
        Ok(())
    }

    /// Removes partial files and trees (after a failed build). Destinations are never touched.
    pub fn discard(&self) {
        drop(std::mem::take(&mut *self.pending.lock().unwrap()));
    }

    async fn diff_copy(&self, request: Request<Streaming<Bytes>>) -> Result<OutStream, Status> {
        let id = request
            .metadata()
            .get(KEY_EXPORTER_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let target = self
            .targets
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("exporter {id} has no destination")))?;
        match target {
            Sink::Dir(dest) => {
                let dir = DirTarget::prepare(&dest).map_err(|e| {
                    Status::internal(format!("cannot export to {}: {e}", dest.display()))
                })?;
                let into = dir.receive_dir().to_path_buf();
                self.pending.lock().unwrap().dirs.push(dir);
                Ok(receive_dir(into, request.into_inner()))
            }
            Sink::File(dest) => {
                self.receive_file(dest.as_deref(), request.into_inner())
                    .await?;
                Ok(Box::pin(futures::stream::empty()))
            }
        }
    }

    async fn receive_file(
        &self,
        dest: Option<&Path>,
        mut incoming: Streaming<Bytes>,
    ) -> Result<(), Status> {
        let mut out: Box<dyn Write + Send> = match dest {
            // A duplicate of fd 1, buffered in large blocks: std's stdout is line-buffered.
            None => {
                let fd = std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Status::internal(format!("cannot write to stdout: {e}")))?;
                Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    std::fs::File::from(fd),
                ))
            }
            Some(dest) => {
                let failed = |e: std::io::Error| {
                    Status::internal(format!("cannot write {}: {e}", dest.display()))
                };
                let file = match outputs::file_target(dest).map_err(failed)? {
                    FileTarget::Fd(fd) => outputs::dup_fd(fd).map_err(failed)?,
                    // A device or FIFO is written as it is: /dev/null must stay /dev/null.
                    FileTarget::Through(e) => e.open(false).await.map_err(failed)?,
                    FileTarget::Replace(b) => {
                        let (file, new) = b.create().map_err(failed)?;
                        self.pending.lock().unwrap().files.push(new);
                        file
                    }
                };
                Box::new(std::io::BufWriter::with_capacity(1 << 20, file))
            }
        };
        while let Some(msg) = incoming.next().await {
            let msg = msg?;
            let bm =
                BytesMessage::decode(msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
            // Blocking writes are fine here: they are large, buffered, and to a local file or pipe.
            out.write_all(&bm.data)
                .map_err(|e| Status::internal(format!("writing export: {e}")))?;
        }
        out.flush()
            .map_err(|e| Status::internal(format!("writing export: {e}")))?;
        Ok(())
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

fn receive_dir(dir: PathBuf, incoming: Streaming<Bytes>) -> OutStream {
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    // The receiver asks for each file while the daemon is still sending: if asking could block, it
    // would stop reading, the daemon would block sending data, stop reading requests, and both
    // ends would wait forever (a 20,000-file export did). So requests — a few bytes each, one per
    // file — are moved at once to an unbounded queue, and the receiver never waits on the network.
    let (wire_tx, wire_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(p) = out_rx.recv().await {
            if wire_tx.send(p).is_err() {
                break;
            }
        }
    });
    let decode = |b: Bytes| {
        WirePacket::decode(b)
            .map_err(|e| e.to_string())
            .and_then(from_wire)
    };
    tokio::spawn(pump_in(incoming, in_tx, decode));
    let opts = ReceiveOptions {
        create_dest: false,
        ..ReceiveOptions::default()
    };
    tokio::spawn(async move {
        let _ = receive(dir, opts, out_tx, in_rx).await;
    });
    Box::pin(
        UnboundedReceiverStream::new(wire_rx).map(|p| Ok(Bytes::from(to_wire(p).encode_to_vec()))),
    )
}

impl NamedService for FileSendTargets {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

impl StreamingService<Bytes> for FileSendTargets {
    type Response = Bytes;
    type ResponseStream = OutStream;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<OutStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.diff_copy(request).await.map(Response::new) })
    }
}

impl tower::Service<http::Request<Body>> for FileSendTargets {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != METHOD {
                return Ok(
                    Status::unimplemented(format!("{} is not served", req.uri().path()))
                        .into_http(),
                );
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(64 << 20), Some(64 << 20));
            Ok(grpc.streaming(this, req).await)
        })
    }
}
