//! The session's SSH service: connects each `RUN --mount=type=ssh` agent connection to what `--ssh` gave for its id, a local agent socket or bkrun's own agent over key files.

use std::collections::HashMap;
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
use crate::session::ssh_agent::{AgentConn, AgentKey};
use crate::spec::ssh::{SshAgent, SshSource};

/// Metadata key naming which agent a forwarded connection is for.
const KEY_SSH_ID: &str = "buildkit.ssh.id";

#[derive(Clone)]
pub struct SshForwarder {
    agents: Arc<HashMap<String, SshSource>>,
}

impl SshForwarder {
    pub fn new(agents: &[SshAgent]) -> Self {
        SshForwarder {
            agents: Arc::new(
                agents
                    .iter()
                    .map(|a| (a.id.clone(), a.source.clone()))
                    .collect(),
            ),
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
        let mut incoming = request.into_inner();
        let path = match self.source(&id)? {
            SshSource::Keys(keys) => return Ok(Response::new(serve_keys(keys.clone(), incoming))),
            SshSource::Socket(path) => path,
        };
        let conn = UnixStream::connect(path).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the ssh agent at {}: {e}",
                path.display()
            ))
        })?;
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
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_agent.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(BytesMessage {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
