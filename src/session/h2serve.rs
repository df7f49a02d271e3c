//! Serves gRPC over one HTTP/2 connection with the `h2` crate, so that we, not h2's defaults, decide how many small DATA frames may wait unread.
//!
//! This replaces hyper's HTTP/2 server, which gives no way to set h2's data-frame budget; every
//! other setting is hyper 1.x's server default, so the daemon sees the same peer as before.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tower::{Service, ServiceExt};

// hyper 1.x's HTTP/2 server defaults (its src/proto/h2/server.rs), unchanged: 1 MiB windows
// rather than the spec's 64 KiB keep bulk transfers from stalling on WINDOW_UPDATE round trips.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 20;
const MAX_FRAME_SIZE: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How much bookkeeping for small DATA frames h2 lets wait unread before it closes the
/// connection with ENHANCE_YOUR_CALM.
///
/// h2 charges every received DATA frame under 256 bytes `256 - payload` until the handler takes
/// it. Its default budget, half the connection window (512 KiB here, what hyper ran with), is
/// spent by ~2,300 unread fsutil STAT packets: the daemon sends one per file of an export, and a
/// runtime starved of CPU falls that far behind. Memory needs no such limit here: flow control
/// already caps unread payload at the 1 MiB connection window, so at most 1 MiB / n frames of n
/// bytes can wait, and what the handlers take off h2 waits in queues bounded by bytes
/// (`packets::pump_in`, 64 MiB). At 64 MiB the window binds first for every frame of 4 bytes or
/// more ((1 MiB / 4) × 252 < 64 MiB), and a gRPC message alone is 5 bytes of prefix; the budget
/// is left to cap only a peer sending 1-3 byte frames, at ~263,000 frames.
const DATA_FRAME_BUDGET: usize = 64 << 20;

/// Serves HTTP/2 on `io` until the peer closes the connection, answering each request with a
/// clone of `service` in a task of its own.
///
/// Dropping the returned future drops the connection: every stream still open sees it gone, so
/// waiting handlers are dropped and response bodies stop.
pub async fn serve<T, S>(io: T, service: S) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_with_budget(io, service, Some(DATA_FRAME_BUDGET)).await
}

/// [`serve`] with a chosen data-frame budget; `None` keeps h2's default, as hyper did.
async fn serve_with_budget<T, S>(
    io: T,
    service: S,
    data_frame_budget: Option<usize>,
) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_send_buffer_size(MAX_SEND_BUFFER);
    if let Some(budget) = data_frame_budget {
        builder.data_frame_budget(budget);
    }
    // No keepalive pings, as with hyper without a timer: the daemon runs its own health checks.
    let mut connection = builder.handshake::<_, Bytes>(io).await?;
    // accept() also drives the connection's I/O, so it is polled even while no request comes.
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted?;
        // Not tied to this future: like hyper's executor, a stream's task ends when its stream
        // does, which dropping the connection forces.
        tokio::spawn(answer(request, respond, service.clone()));
    }
    Ok(())
}

/// One stream's whole life: the request goes to the service, the response comes back.
async fn answer<S>(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, service: S)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (parts, recv) = request.into_parts();
    let request = Request::from_parts(parts, Body::new(RequestBody::new(recv)));
    let call = service.oneshot(request);
    // A RST_STREAM (or the connection's end) before the response is ready cancels the call:
    // returning drops the handler.
    let response = tokio::select! {
        response = call => match response {
            Ok(response) => response,
            Err(never) => match never {},
        },
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };

    let (head, body) = response.into_parts();
    let head = Response::from_parts(head, ());
    // A body that is already over (tonic's errors are headers only) ends the stream with the
    // headers, as the daemon's gRPC client expects of a trailers-only response.
    let end_of_stream = body.is_end_stream();
    let send = match respond.send_response(head, end_of_stream) {
        Ok(send) => send,
        Err(_) => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end_of_stream {
        // Nobody is left to tell when this fails: the stream is reset or the connection gone.
        let _ = send_body(body, send).await;
    }
}

/// Why a response stopped early; the client already knows, from the reset or the closed
/// connection.
struct StreamGone;

impl From<h2::Error> for StreamGone {
    fn from(_: h2::Error) -> Self {
        StreamGone
    }
}

/// Copies a response body onto its stream: DATA as flow control allows, then trailers or an
/// empty end-of-stream frame.
///
/// Returning early drops `body`, which is how the handler learns its client went away; a body
/// that fails resets the stream, so a cut-short response never looks complete.
async fn send_body(mut body: Body, mut send: SendStream<Bytes>) -> Result<(), StreamGone> {
    loop {
        let frame = poll_fn(|cx| {
            // Registers for a RST_STREAM while the body has nothing to send.
            if let Poll::Ready(reason) = send.poll_reset(cx)? {
                return Poll::Ready(Err(h2::Error::from(reason)));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(_)) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                return Err(StreamGone);
            }
            None => return Ok(send.send_data(Bytes::new(), true)?),
        };
        match frame.into_data() {
            Ok(data) => {
                let end_of_stream = body.is_end_stream();
                send_data(&mut send, data, end_of_stream).await?;
                if end_of_stream {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(send.send_trailers(trailers)?);
                }
            }
        }
    }
}

/// Sends one chunk once the stream has some send capacity, as hyper does.
///
/// h2 buffers what the capacity does not cover and sends it as WINDOW_UPDATEs arrive, without
/// waking this task; the next chunk waits until capacity exceeds what is buffered, so a stream
/// holds at most about one chunk (tonic's encoding of a message or a few: 128 KiB of file data,
/// 1 MiB of content store blob) plus the send buffer (400 KiB). Sending only what each grant
/// covers, in pieces, measured the same in the 1 GiB context bench, so hyper's way stays.
async fn send_data(
    send: &mut SendStream<Bytes>,
    data: Bytes,
    end_of_stream: bool,
) -> Result<(), StreamGone> {
    if !data.is_empty() {
        // Claimed only with data in hand (capacity claimed ahead would sit unused on the
        // connection window while other streams wait for it, hyper#4003), and only 1 byte:
        // send_data raises the claim to what it buffers.
        send.reserve_capacity(1);
        poll_fn(|cx| poll_send_capacity(send, cx)).await?;
    }
    Ok(send.send_data(data, end_of_stream)?)
}

/// Ready once the stream has some send capacity; fails if the stream is reset meanwhile.
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), StreamGone>> {
    loop {
        if let Poll::Ready(_reason) = send.poll_reset(cx)? {
            return Poll::Ready(Err(StreamGone));
        }
        if send.capacity() > 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            // The stream can no longer send: it was reset or closed.
            None => return Poll::Ready(Err(StreamGone)),
        }
    }
}

/// A request's DATA and trailers as an HTTP body.
///
/// Each chunk's bytes go back to the client's window as the handler takes the chunk, not when
/// h2 receives it: a handler that reads slowly holds its client back, and that is what bounds
/// the data waiting in h2 (see `DATA_FRAME_BUDGET` for the frames).
struct RequestBody {
    recv: RecvStream,
    data_done: bool,
}

impl RequestBody {
    fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
        }
    }
}

/// RST_STREAM(NO_ERROR) means the client wants no more of the exchange, not that the request
/// was broken (RFC 9113 §8.1): the body just ends.
fn ended_cleanly(e: &h2::Error) -> bool {
    e.reason() == Some(Reason::NO_ERROR)
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, and then nobody needs the window.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) if ended_cleanly(&e) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t: HeaderMap| Ok(Frame::trailers(t)))),
            Err(e) if ended_cleanly(&e) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests;
