//! The session's SSH service: connects each `RUN --mount=type=ssh` agent connection to what `--ssh` gave for its id, a local agent socket or bkrun's own agent over key files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::moby::sshforward::v1::ssh_server::{Ssh, SshServer};
use crate::proto::moby::sshforward::v1::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use crate::session::ssh_agent::{self, AgentConn};
use crate::session::sshkey::AgentKey;

/// Metadata key naming which agent a forwarded connection is for.
const KEY_SSH_ID: &str = "buildkit.ssh.id";

/// What answers behind one forwarded id.
#[derive(Debug, Clone)]
pub enum SshSource {
    /// A running agent's socket. Unless `raw`, RUN steps may only list keys and sign: a build
    /// cannot add, remove or lock the user's keys.
    Socket { path: PathBuf, raw: bool },
    /// Keys already read from files, served by bkrun's own agent.
    Keys(Arc<[AgentKey]>),
}

#[derive(Clone)]
pub struct SshForwarder {
    agents: Arc<HashMap<String, SshSource>>,
}

impl SshForwarder {
    /// Serves each id's source.
    pub fn new(agents: HashMap<String, SshSource>) -> Self {
        SshForwarder {
            agents: Arc::new(agents),
        }
    }

    pub fn into_server(self) -> SshServer<Self> {
        SshServer::new(self)
    }

    fn source(&self, id: &str) -> Result<&SshSource, Status> {
        let id = if id.is_empty() { "default" } else { id };
        self.agents
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no ssh agent with id {id}: pass --ssh {id}")))
    }
}

type Out = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Ssh for SshForwarder {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        self.source(&request.into_inner().id)?;
        Ok(Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = Out;

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Out>, Status> {
        let id = request
            .metadata()
            .get(KEY_SSH_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let incoming = request.into_inner();
        let (path, raw) = match self.source(&id)? {
            SshSource::Keys(keys) => return Ok(Response::new(serve_keys(keys.clone(), incoming))),
            SshSource::Socket { path, raw } => (path, *raw),
        };
        let conn = UnixStream::connect(path).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the ssh agent at {}: {e}",
                path.display()
            ))
        })?;
        let (tx, rx) = mpsc::channel(16);
        if raw {
            forward_raw(conn, incoming, tx);
        } else {
            tokio::spawn(forward_read_only(conn, incoming, tx));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// `raw=true`: bytes both ways, unlooked at.
fn forward_raw(
    conn: UnixStream,
    mut incoming: Streaming<BytesMessage>,
    tx: mpsc::Sender<Result<BytesMessage, Status>>,
) {
    let (mut from_agent, mut to_agent) = conn.into_split();
    // The daemon's side → the agent; ends when the daemon closes its side.
    tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            if to_agent.write_all(&msg.data).await.is_err() {
                break;
            }
        }
        let _ = to_agent.shutdown().await;
    });
    // The agent's answers → the daemon.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_agent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = BytesMessage {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// The agent protocol is one request, then one answer. Only listing keys and signing reach the
/// user's agent; anything else (add, remove, lock, extensions) is refused here, as buildctl's
/// read-only agent does, so a build step cannot change the user's keys.
async fn forward_read_only(
    mut conn: UnixStream,
    mut incoming: Streaming<BytesMessage>,
    tx: mpsc::Sender<Result<BytesMessage, Status>>,
) {
    let mut requests = Frames::default();
    let mut answers = Frames::default();
    let mut buf = vec![0u8; 32 * 1024];
    while let Some(Ok(msg)) = incoming.next().await {
        requests.push(&msg.data);
        loop {
            let request = match requests.next() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(Status::invalid_argument(e))).await;
                    return;
                }
            };
            let answer = if ssh_agent::is_read_only_request(&request) {
                if conn.write_all(&request).await.is_err() {
                    return;
                }
                // Read until the agent's one answer is whole.
                loop {
                    match answers.next() {
                        Ok(Some(a)) => break a,
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e))).await;
                            return;
                        }
                    }
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => answers.push(&buf[..n]),
                    }
                }
            } else {
                ssh_agent::failure_frame()
            };
            if tx.send(Ok(BytesMessage { data: answer })).await.is_err() {
                return;
            }
        }
    }
}

/// Splits a byte stream into length-prefixed agent messages (prefix included).
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > ssh_agent::MAX_MESSAGE {
            return Err(format!(
                "ssh agent message of {len} bytes is over the {} byte limit",
                ssh_agent::MAX_MESSAGE
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.drain(..4 + len).collect()))
    }
}

/// Answers one agent connection from the key files' identities, in process.
fn serve_keys(keys: Arc<[AgentKey]>, mut incoming: Streaming<BytesMessage>) -> Out {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut conn = AgentConn::new(keys);
        while let Some(Ok(msg)) = incoming.next().await {
            // An RSA signature is milliseconds of CPU: keep it off the runtime's two workers,
            // which also carry the session's file transfers.
            let Ok((c, answer)) = tokio::task::spawn_blocking(move || {
                let answer = conn.feed(&msg.data);
                (conn, answer)
            })
            .await
            else {
                break;
            };
            conn = c;
            let reply = match answer {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => Ok(BytesMessage { data }),
                Err(e) => Err(Status::invalid_argument(e.to_string())),
            };
            let last = reply.is_err();
            if tx.send(reply).await.is_err() || last {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_whatever_the_chunks_and_only_reads_pass() {
        let list = [0, 0, 0, 1, 11];
        let remove_all = [0, 0, 0, 1, 19];
        let mut stream = list.to_vec();
        stream.extend_from_slice(&remove_all);
        let mut f = Frames::default();
        f.push(&stream[..3]);
        assert_eq!(f.next(), Ok(None));
        f.push(&stream[3..7]);
        let first = f.next().unwrap().unwrap();
        assert_eq!(first, list);
        assert!(ssh_agent::is_read_only_request(&first));
        assert_eq!(f.next(), Ok(None));
        f.push(&stream[7..]);
        let second = f.next().unwrap().unwrap();
        assert!(!ssh_agent::is_read_only_request(&second));
        assert_eq!(ssh_agent::failure_frame(), [0, 0, 0, 1, 5]);
        f.push(&[0xff, 0, 0, 0]);
        assert!(f.next().is_err(), "an oversized length ends the connection");
    }
}
