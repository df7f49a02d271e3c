//! The content service against a real tonic client on a unix socket: write, read back, refuse what upstream refuses.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use super::*;
use api::content_client::ContentClient;

const STORE: &str = "local:/cache";

async fn serve(root: &std::path::Path, sock: &std::path::Path) -> ContentClient<Channel> {
    let stores = ContentStores::new(HashMap::from([(
        STORE.to_string(),
        Arc::new(LocalStore::new(root)),
    )]));
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(stores.into_server())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let sock = sock.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .unwrap();
    ContentClient::new(channel).max_encoding_message_size(32 << 20)
}

fn with_store<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(HEADER_STORE_ID, STORE.parse().unwrap());
    r
}

async fn write_blob(
    client: &mut ContentClient<Channel>,
    reference: &str,
    chunks: Vec<Vec<u8>>,
    expected: &Digest,
) -> Result<Vec<api::WriteContentResponse>, Status> {
    let total: usize = chunks.iter().map(Vec::len).sum();
    let mut reqs = vec![api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: reference.into(),
        total: total as i64,
        expected: expected.to_string(),
        ..Default::default()
    }];
    let mut offset = 0;
    for c in chunks {
        let n = c.len();
        reqs.push(api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            offset,
            data: c,
            ..Default::default()
        });
        offset += n as i64;
    }
    reqs.push(api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        total: total as i64,
        offset,
        expected: expected.to_string(),
        ..Default::default()
    });
    let mut stream = client
        .write(with_store(tokio_stream::iter(reqs)))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        out.push(r);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_written_through_the_service_read_back_whole() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    std::fs::create_dir(&root).unwrap();
    let mut client = serve(&root, &d.path().join("s.sock")).await;

    // 9 MiB in one message: the daemon's writer sends up to 8 MiB at a time.
    let big: Vec<u8> = (0..9 << 20).map(|i| (i % 251) as u8).collect();
    let tail = b"tail".to_vec();
    let mut all = big.clone();
    all.extend_from_slice(&tail);
    let dg = Digest::sha256(&all);
    let resps = write_blob(&mut client, "layer", vec![big, tail], &dg)
        .await
        .unwrap();
    assert_eq!(resps.len(), 4);
    assert_eq!(resps[0].offset, 0);
    assert_eq!(resps[1].offset, 9 << 20);
    assert_eq!(resps[3].digest, dg.to_string());
    assert_eq!(resps[3].offset as usize, all.len());
    assert!(
        !root.join("ingest").exists()
            || std::fs::read_dir(root.join("ingest"))
                .unwrap()
                .next()
                .is_none()
    );

    let info = client
        .info(with_store(api::InfoRequest {
            digest: dg.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.size as usize, all.len());

    let mut read = client
        .read(with_store(api::ReadContentRequest {
            digest: dg.to_string(),
            offset: 5,
            size: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(chunk) = read.message().await.unwrap() {
        assert!(chunk.data.len() <= READ_CHUNK);
        assert_eq!(chunk.offset as usize, back.len());
        back.extend_from_slice(&chunk.data);
    }
    assert_eq!(back, all[5..]);

    // Sent again: the daemon is told it is already there.
    let again = write_blob(&mut client, "layer2", vec![b"x".to_vec()], &dg).await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::AlreadyExists);

    // A wrong digest is refused and nothing lands under blobs/.
    let wrong = Digest::sha256(b"other");
    let bad = write_blob(&mut client, "bad", vec![b"not other".to_vec()], &wrong).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::FailedPrecondition);
    assert!(!wrong.blob_path(&root).exists());
    let statuses = client
        .list_statuses(with_store(api::ListStatusesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(statuses.len(), 1, "the failed ingest stays resumable");
    client
        .abort(with_store(api::AbortRequest {
            r#ref: "bad".into(),
        }))
        .await
        .unwrap();

    let listed = client
        .list(with_store(api::ListContentRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.info.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_known_store_or_with_bad_digests_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut client = serve(d.path(), &d.path().join("s.sock")).await;
    let missing = client
        .info(Request::new(api::InfoRequest {
            digest: Digest::sha256(b"a").to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    let mut other = Request::new(api::InfoRequest {
        digest: Digest::sha256(b"a").to_string(),
    });
    other
        .metadata_mut()
        .insert(HEADER_STORE_ID, "local:/elsewhere".parse().unwrap());
    assert_eq!(
        client.info(other).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let bad = client
        .info(with_store(api::InfoRequest {
            digest: "sha256:../../etc".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let absent = client
        .info(with_store(api::InfoRequest {
            digest: Digest::sha256(b"a").to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(absent.code(), tonic::Code::NotFound);
}
