//! The h2 server against h2's own client over an in-memory pipe.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{DuplexStream, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tonic::codegen::http::{HeaderValue, Method};
use tonic::Status;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A response body fed through a channel: the test decides each frame, and `Sender::closed`
/// tells it when the server dropped the body.
struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, Status>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.get_mut().0.poll_recv(cx)
    }
}

type Frames = mpsc::Sender<Result<Frame<Bytes>, Status>>;

fn channel_body() -> (Frames, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Body::new(ChannelBody(rx)))
}

/// The server's end of the pipe, counting the bytes the server has read.
struct Counted {
    io: DuplexStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.read
            .fetch_add(buf.filled().len() - before, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

struct Pipe {
    client: h2::client::SendRequest<Bytes>,
    client_conn: JoinHandle<Result<(), h2::Error>>,
    server: JoinHandle<Result<(), h2::Error>>,
    /// Bytes the server has read off the pipe so far.
    server_read: Arc<AtomicUsize>,
}

/// Which server runs: [`serve`] as the session uses it, or one with h2's default data-frame
/// budget, which is what hyper's server ran with.
#[derive(Clone, Copy)]
enum Server {
    Ours,
    H2DefaultBudget,
}

/// `service` served on one end of an in-memory pipe, an h2 client on the other.
async fn pipe<S>(service: S, server: Server) -> Pipe
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (client_io, server_io) = tokio::io::duplex(4 << 20);
    let server_read = Arc::new(AtomicUsize::new(0));
    let server_io = Counted {
        io: server_io,
        read: server_read.clone(),
    };
    let server = match server {
        Server::Ours => tokio::spawn(serve(server_io, service)),
        Server::H2DefaultBudget => tokio::spawn(serve_with_budget(server_io, service, None)),
    };
    let (client, conn) = h2::client::handshake(client_io).await.unwrap();
    Pipe {
        client,
        client_conn: tokio::spawn(conn),
        server,
        server_read,
    }
}

fn post(path: &str) -> Request<()> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://session{path}"))
        .body(())
        .unwrap()
}

async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, Status>> {
    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Reads a whole response body off the client: its data, and its trailers if any.
async fn read_response(
    mut body: h2::RecvStream,
) -> Result<(Vec<u8>, Option<HeaderMap>), h2::Error> {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    Ok((data, body.trailers().await?))
}

const FLOOD_FRAMES: usize = 50_000;
const FLOOD_PAYLOAD: &[u8] = b"sixteen bytes!!!";

/// Sends FLOOD_FRAMES tiny DATA frames on one stream to a handler that starts reading only once
/// the server has read them off the wire (so nearly all wait in h2 at once), then reads slowly.
/// Returns the response body, or how the connection ended.
async fn flood(server: Server) -> Result<Vec<u8>, h2::Error> {
    let all_read = Arc::new(Notify::new());
    let go = all_read.clone();
    let service = tower::service_fn(move |request: Request<Body>| {
        let go = go.clone();
        async move {
            go.notified().await;
            let mut body = request.into_body();
            let (mut frames, mut bytes) = (0usize, 0usize);
            while let Some(frame) = next_frame(&mut body).await {
                let Ok(data) = frame.expect("request body").into_data() else {
                    continue;
                };
                frames += 1;
                bytes += data.len();
                if frames % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let (tx, body) = channel_body();
            tx.send(Ok(Frame::data(Bytes::from(format!("{bytes}")))))
                .await
                .unwrap();
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let mut pipe = pipe(service, server).await;

    let (response, mut send) = pipe.client.send_request(post("/flood"), false)?;
    for i in 0..FLOOD_FRAMES {
        send.send_data(Bytes::from_static(FLOOD_PAYLOAD), i + 1 == FLOOD_FRAMES)?;
    }
    // Each frame is 9 bytes of header and its payload; what else the client sent comes first.
    let on_the_wire = FLOOD_FRAMES * (9 + FLOOD_PAYLOAD.len());
    let read = pipe.server_read.clone();
    let server = &mut pipe.server;
    let wait_for_all = async {
        while read.load(Ordering::SeqCst) < on_the_wire {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        _ = wait_for_all => all_read.notify_one(),
        // With too small a budget the server gives up first.
        ended = &mut *server => return Err(ended.unwrap().expect_err("the server ended early")),
    }

    let response = within("flood response", response).await?;
    let (body, _) = within("flood body", read_response(response.into_body())).await?;
    // The connection is still good for another request.
    let (response, _) = pipe.client.send_request(post("/again"), true)?;
    all_read.notify_one();
    let again = within("second response", response).await?;
    within("second body", read_response(again.into_body())).await?;
    assert!(!pipe.server.is_finished());
    assert!(!pipe.client_conn.is_finished());
    Ok(body)
}

#[tokio::test]
async fn fifty_thousand_tiny_data_frames_wait_unread_without_closing_the_connection() {
    let body = flood(Server::Ours).await.unwrap();
    assert_eq!(
        body,
        (FLOOD_FRAMES * FLOOD_PAYLOAD.len()).to_string().as_bytes()
    );
}

/// The same flood with h2's default budget, as hyper's server had: this is the failure the
/// daemon saw, as `received prior goaway: code: ENHANCE_YOUR_CALM`.
#[tokio::test]
async fn h2s_default_budget_closes_the_connection_on_the_same_flood() {
    let err = flood(Server::H2DefaultBudget).await.unwrap_err();
    assert_eq!(err.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{err}");
}

#[tokio::test]
async fn large_bodies_flow_both_ways_past_the_windows_and_end_with_trailers() {
    // Echoes the request back; the client's default 64 KiB window makes the server wait for
    // send capacity, and 4 MiB up is past the server's own 1 MiB windows.
    let service = tower::service_fn(|request: Request<Body>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let mut request = request.into_body();
            while let Some(frame) = next_frame(&mut request).await {
                if tx.send(Ok(frame.expect("request body"))).await.is_err() {
                    return;
                }
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        Ok::<_, Infallible>(Response::new(body))
    });
    let mut pipe = pipe(service, Server::Ours).await;
    let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();

    let (response, mut send) = pipe.client.send_request(post("/echo"), false).unwrap();
    let upload = {
        let sent = Bytes::from(sent.clone());
        async move {
            for piece in sent.chunks(100_000) {
                send.reserve_capacity(piece.len());
                let mut piece = sent.slice_ref(piece);
                while !piece.is_empty() {
                    let granted = poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .expect("stream open")
                        .expect("capacity");
                    let n = granted.min(piece.len());
                    send.send_data(piece.split_to(n), false).unwrap();
                }
            }
            send.send_data(Bytes::new(), true).unwrap();
        }
    };
    let download = async {
        let response = response.await.unwrap();
        read_response(response.into_body()).await.unwrap()
    };
    let ((), (got, trailers)) = within("echo", async { tokio::join!(upload, download) }).await;
    assert!(got == sent, "echoed {} of {} bytes", got.len(), sent.len());
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn a_body_that_is_already_over_ends_the_stream_with_the_headers() {
    let service = tower::service_fn(|_: Request<Body>| async {
        let mut response = Response::new(Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("12"));
        Ok::<_, Infallible>(response)
    });
    let mut pipe = pipe(service, Server::Ours).await;
    let (response, _) = pipe.client.send_request(post("/nothing"), true).unwrap();
    let response = within("response", response).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");
    assert!(response.body().is_end_stream());
}

#[tokio::test]
async fn streams_are_served_concurrently() {
    // The first request is answered only after the second one: served one after the other, it
    // would never be.
    let second_seen = Arc::new(Notify::new());
    let service = tower::service_fn({
        let second_seen = second_seen.clone();
        move |request: Request<Body>| {
            let second_seen = second_seen.clone();
            async move {
                if request.uri().path() == "/first" {
                    second_seen.notified().await;
                } else {
                    second_seen.notify_one();
                }
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        }
    });
    let mut pipe = pipe(service, Server::Ours).await;
    let (first, _) = pipe.client.send_request(post("/first"), true).unwrap();
    let mut client = within("ready", pipe.client.clone().ready()).await.unwrap();
    let (second, _) = client.send_request(post("/second"), true).unwrap();
    let (first, second) = within("both", async { tokio::join!(first, second) }).await;
    first.unwrap();
    second.unwrap();
}

#[tokio::test]
async fn a_client_reset_drops_the_handler_and_its_response_body() {
    // Before the response: the handler waits forever, and is dropped on RST_STREAM.
    let (handler_started, mut started) = mpsc::channel::<mpsc::Sender<()>>(2);
    let (body_tx, mut bodies) = mpsc::channel::<Frames>(2);
    let service = tower::service_fn(move |request: Request<Body>| {
        let handler_started = handler_started.clone();
        let body_tx = body_tx.clone();
        async move {
            if request.uri().path() == "/wait" {
                // Dropped with the handler; the test sees its receiver close.
                let (alive, _dropped) = mpsc::channel(1);
                handler_started.send(alive).await.unwrap();
                std::future::pending::<()>().await;
            }
            let (tx, body) = channel_body();
            tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                .await
                .unwrap();
            body_tx.send(tx).await.unwrap();
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let mut pipe = pipe(service, Server::Ours).await;

    let (_response, mut send) = pipe.client.send_request(post("/wait"), false).unwrap();
    let handler = within("handler", started.recv()).await.unwrap();
    send.send_reset(Reason::CANCEL);
    within("handler dropped", handler.closed()).await;

    // During the response: the body is dropped once the client resets the stream.
    let mut client = within("ready", pipe.client.clone().ready()).await.unwrap();
    let (response, mut send) = client.send_request(post("/stream"), false).unwrap();
    let response = within("response", response).await.unwrap();
    let body_tx = within("body", bodies.recv()).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(
        within("chunk", body.data()).await.unwrap().unwrap(),
        "first"
    );
    send.send_reset(Reason::CANCEL);
    within("body dropped", body_tx.closed()).await;
    assert!(!pipe.server.is_finished());
}

#[tokio::test]
async fn a_failing_response_body_resets_the_stream() {
    let (body_tx, mut bodies) = mpsc::channel::<Frames>(1);
    let service = tower::service_fn(move |_: Request<Body>| {
        let body_tx = body_tx.clone();
        async move {
            let (tx, body) = channel_body();
            tx.send(Ok(Frame::data(Bytes::from_static(b"partial"))))
                .await
                .unwrap();
            body_tx.send(tx).await.unwrap();
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let mut pipe = pipe(service, Server::Ours).await;
    let (response, _) = pipe.client.send_request(post("/fail"), true).unwrap();
    let response = within("response", response).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(
        within("chunk", body.data()).await.unwrap().unwrap(),
        "partial"
    );
    let body_tx = within("body", bodies.recv()).await.unwrap();
    body_tx
        .send(Err(Status::internal("disk gone")))
        .await
        .unwrap();
    let err = within("rest", read_response(body)).await.unwrap_err();
    assert_eq!(err.reason(), Some(Reason::INTERNAL_ERROR), "{err}");
}

#[tokio::test]
async fn dropping_the_server_ends_its_streams() {
    let (body_tx, mut bodies) = mpsc::channel::<Frames>(1);
    let service = tower::service_fn(move |_: Request<Body>| {
        let body_tx = body_tx.clone();
        async move {
            let (tx, body) = channel_body();
            body_tx.send(tx).await.unwrap();
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let mut pipe = pipe(service, Server::Ours).await;
    let (response, _) = pipe.client.send_request(post("/long"), true).unwrap();
    let response = within("response", response).await.unwrap();
    let body_tx = within("body", bodies.recv()).await.unwrap();
    pipe.server.abort();
    within("body dropped", body_tx.closed()).await;
    assert!(within("client", read_response(response.into_body()))
        .await
        .is_err());
}
