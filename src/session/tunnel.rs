//! Byte-stream adapter over a `Control.Session` gRPC stream: writes become BytesMessages, reads join them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::Status;

use crate::proto::moby::buildkit::v1::BytesMessage;

/// Upper bound for one outgoing message. The daemon's gRPC limits are far
/// higher; this only keeps a single huge write from becoming one huge frame.
const MAX_CHUNK: usize = 1 << 20;

/// How long a dropped tunnel keeps reading the peer's side so the gRPC call
/// can end with a clean status instead of a reset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What an outgoing channel carries: a client-side request stream wants bare
/// messages, a server-side response stream wants `Result`s.
pub trait OutgoingMessage: Send + 'static {
    fn from_bytes_message(msg: BytesMessage) -> Self;
}

impl OutgoingMessage for BytesMessage {
    fn from_bytes_message(msg: BytesMessage) -> Self {
        msg
    }
}

impl OutgoingMessage for Result<BytesMessage, Status> {
    fn from_bytes_message(msg: BytesMessage) -> Self {
        Ok(msg)
    }
}

/// One end of a byte tunnel carried by a bidi stream of [`BytesMessage`]s.
///
/// Usable on either side of `Control.Session`; message boundaries carry no
/// meaning, exactly as with the upstream net.Conn wrapper.
pub struct Tunnel<S, T>
where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    T: OutgoingMessage,
{
    incoming: Option<S>,
    pending: Bytes,
    eof: bool,
    outgoing: PollSender<T>,
}

impl<S, T> Tunnel<S, T>
where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    T: OutgoingMessage,
{
    pub fn new(incoming: S, outgoing: mpsc::Sender<T>) -> Self {
        Self {
            incoming: Some(incoming),
            pending: Bytes::new(),
            eof: false,
            outgoing: PollSender::new(outgoing),
        }
    }
}

impl<S, T> AsyncRead for Tunnel<S, T>
where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    T: OutgoingMessage,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let Some(incoming) = this.incoming.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(incoming.poll_next_unpin(cx)) {
                Some(Ok(msg)) => this.pending = Bytes::from(msg.data),
                Some(Err(status)) => {
                    this.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        status,
                    )));
                }
                None => this.eof = true,
            }
        }
    }
}

fn closed_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "session stream closed")
}

impl<S, T> AsyncWrite for Tunnel<S, T>
where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    T: OutgoingMessage,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(this.outgoing.poll_reserve(cx)).map_err(|_| closed_pipe())?;
        let n = buf.len().min(MAX_CHUNK);
        let msg = BytesMessage {
            data: buf[..n].to_vec(),
        };
        this.outgoing
            .send_item(T::from_bytes_message(msg))
            .map_err(|_| closed_pipe())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Messages are handed to gRPC as soon as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping our sender half-closes the gRPC stream, which the peer
        // reads as EOF.
        self.get_mut().outgoing.close();
        Poll::Ready(Ok(()))
    }
}

impl<S, T> Drop for Tunnel<S, T>
where
    S: Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    T: OutgoingMessage,
{
    fn drop(&mut self) {
        self.outgoing.close();
        if self.eof {
            return;
        }
        // Dropping an unfinished gRPC stream resets it, which the daemon logs
        // as a failure; reading it to its end lets the call finish cleanly.
        let (Some(mut incoming), Ok(rt)) =
            (self.incoming.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            let drain = async { while let Some(Ok(_)) = incoming.next().await {} };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::wrappers::ReceiverStream;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_eof_propagates() {
        // Two tunnels wired back to back stand in for client and daemon.
        let (a_tx, a_rx) = mpsc::channel::<BytesMessage>(4);
        let (b_tx, b_rx) = mpsc::channel::<Result<BytesMessage, Status>>(4);
        let mut a = Tunnel::new(ReceiverStream::new(b_rx), a_tx);
        let mut b = Tunnel::new(ReceiverStream::new(a_rx).map(Ok), b_tx);

        a.write_all(b"hello ").await.unwrap();
        a.write_all(b"world").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");

        b.write_all(b"back").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"back");
    }

    #[tokio::test]
    async fn small_reads_consume_a_message_in_pieces() {
        let (tx, rx) = mpsc::channel::<BytesMessage>(4);
        let (out_tx, _out_rx) = mpsc::channel::<BytesMessage>(1);
        let mut t = Tunnel::new(ReceiverStream::new(rx).map(Ok), out_tx);
        tx.send(BytesMessage {
            data: b"abcdef".to_vec(),
        })
        .await
        .unwrap();
        let mut two = [0u8; 2];
        t.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        let mut four = [0u8; 4];
        t.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"cdef");
    }

    #[tokio::test]
    async fn stream_error_surfaces_as_io_error() {
        let (tx, rx) = mpsc::channel::<Result<BytesMessage, Status>>(1);
        let (out_tx, _out_rx) = mpsc::channel::<BytesMessage>(1);
        let mut t = Tunnel::new(ReceiverStream::new(rx), out_tx);
        tx.send(Err(Status::unavailable("gone"))).await.unwrap();
        let err = t.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
