//! The session's FileSync service: the daemon pulls each `--local` directory (build context, Dockerfile, named contexts) through it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::packets::{from_wire, pump_in, to_wire};
use crate::fsutil::walk::{Source, WalkOptions};
use crate::fsutil::{send, Packet, SendOptions};
use crate::proto::fsutil::types::Packet as WirePacket;
use crate::proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};

/// Packets buffered in each direction.
const BUFFER: usize = 64;

/// Serves named local directories.
#[derive(Clone, Debug, Default)]
pub struct FileSyncProvider {
    dirs: Arc<HashMap<String, PathBuf>>,
}

impl FileSyncProvider {
    pub fn new(dirs: HashMap<String, PathBuf>) -> Self {
        FileSyncProvider {
            dirs: Arc::new(dirs),
        }
    }

    pub fn into_server(self) -> FileSyncServer<Self> {
        // Our DATA packets are up to 1 MiB; the daemon's are small. Allow generous frames both ways.
        FileSyncServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<WirePacket, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for FileSyncProvider {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<WirePacket>>,
    ) -> Result<Response<PacketStream>, Status> {
        let md = request.metadata().clone();
        let (name, opts) = WalkOptions::from_metadata(|key| {
            md.get_all(key)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect()
        });
        let Some(dir) = self.dirs.get(&name) else {
            return Err(Status::not_found(format!(
                "no local directory named {name:?} was given (use --local {name}=DIR)"
            )));
        };
        let source =
            Source::new(dir, &opts).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (out_tx, out_rx) = mpsc::channel(BUFFER);
        let (in_tx, in_rx) = mpsc::channel(BUFFER);
        tokio::spawn(pump_in(request.into_inner(), in_tx, from_wire));
        // send() reports its own failures to the daemon as an ERR packet, which fails the build
        // with that message; nothing more to do with the result here.
        tokio::spawn(async move {
            let _ = send(source, SendOptions::default(), out_tx, in_rx).await;
        });
        let stream = ReceiverStream::new(out_rx).map(|p| Ok(to_wire(owned_by_root(p))));
        Ok(Response::new(Box::pin(stream)))
    }

    type TarStreamStream = PacketStream;

    async fn tar_stream(
        &self,
        _: Request<Streaming<WirePacket>>,
    ) -> Result<Response<PacketStream>, Status> {
        Err(Status::unimplemented("TarStream is not supported by bkrun"))
    }
}

/// Local sources reach the daemon owned by 0:0, whoever owns them here, as with buildctl: the
/// owner of a checkout is an accident of the machine and must not change the build or its cache keys.
fn owned_by_root(p: Packet) -> Packet {
    match p {
        Packet::Stat(Some(mut st)) => {
            st.uid = 0;
            st.gid = 0;
            Packet::Stat(Some(st))
        }
        p => p,
    }
}
