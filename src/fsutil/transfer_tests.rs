//! End-to-end tests of the two transfer ends talking to each other over in-process channels.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tokio::sync::mpsc;

use super::walk::testtree;
use super::*;

/// Run a sender on `src` against a receiver into `dst`.
async fn transfer(src: &Path, walk: WalkOptions, dst: &Path, owner: OwnerPolicy) -> Result<()> {
    let (to_recv, from_send) = mpsc::channel(8);
    let (to_send, from_recv) = mpsc::channel(8);
    let source = Source::new(src, &walk)?;
    let opts = SendOptions {
        // Small enough that the 3 MB file spans many packets.
        chunk_size: 64 * 1024,
        // Less than the 3 MB file: the reader must wait for the receiver to take chunks.
        max_queued_data: 256 * 1024,
    };
    let sender = tokio::spawn(send(source, opts, to_recv, from_recv));
    let received = receive(
        dst.to_path_buf(),
        ReceiveOptions {
            owner,
            create_dest: true,
        },
        to_send,
        from_send,
    )
    .await;
    let sent = sender.await.expect("sender task");
    received.and(sent)
}

fn assert_same_tree(a: &Path, b: &Path) {
    let wa = walk_collect(a, &WalkOptions::default()).unwrap();
    let wb = walk_collect(b, &WalkOptions::default()).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (x, y) in wa.iter().zip(&wb) {
        assert_eq!(x, y);
        if mode::can_request_data(x.mode) && x.size > 0 {
            let ca = std::fs::read(a.join(&x.path)).unwrap();
            let cb = std::fs::read(b.join(&y.path)).unwrap();
            assert!(ca == cb, "content of {}", x.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_reproduces_the_tree() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    testtree::build(src.path());
    let out = dst.path().join("out");
    let owner = if nix::unistd::geteuid().is_root() {
        OwnerPolicy::Keep
    } else {
        OwnerPolicy::current()
    };
    transfer(src.path(), WalkOptions::default(), &out, owner)
        .await
        .unwrap();
    assert_same_tree(src.path(), &out);
    // Hardlinks came across as links, not copies.
    let a = std::fs::metadata(out.join("hard1")).unwrap();
    let b = std::fs::metadata(out.join("a/hard3")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_can_be_forced() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving files other owners needs root (CI runs as root)");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    testtree::build(src.path());
    let fixed = OwnerPolicy::Fixed {
        uid: 1234,
        gid: 5678,
    };
    transfer(src.path(), WalkOptions::default(), dst.path(), fixed)
        .await
        .unwrap();
    for st in walk_collect(dst.path(), &WalkOptions::default()).unwrap() {
        assert_eq!((st.uid, st.gid), (1234, 5678), "{}", st.path);
    }
    // chown clears setuid; the mode is applied after it.
    let md = std::fs::metadata(dst.path().join("suid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_into_existing_content() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    testtree::build(src.path());
    let d = dst.path();
    // A file where a dir comes, a dir where a file comes, a link where a dir comes, an extra.
    std::fs::write(d.join("setgid"), "was a file").unwrap();
    std::fs::create_dir_all(d.join("a.txt/inner")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("a")).unwrap();
    std::fs::write(d.join("exec.sh"), "old content that is longer").unwrap();
    std::fs::write(d.join("extra"), "kept").unwrap();
    std::fs::create_dir(d.join("deep")).unwrap();
    transfer(
        src.path(),
        WalkOptions::default(),
        d,
        OwnerPolicy::current(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(d.join("extra")).unwrap(), b"kept");
    assert_eq!(std::fs::read(d.join("exec.sh")).unwrap(), b"#!/bin/sh\n");
    assert!(std::fs::symlink_metadata(d.join("a")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    std::fs::remove_file(d.join("extra")).unwrap();
    if nix::unistd::geteuid().is_root() {
        // Everything else matches (owners too, since root's ids are the source's).
        assert_same_tree(src.path(), d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_send() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    testtree::build(src.path());
    let walk = WalkOptions {
        exclude_patterns: vec!["*".into(), "!a".into(), "a/hard3".into()],
        ..Default::default()
    };
    transfer(src.path(), walk, dst.path(), OwnerPolicy::current())
        .await
        .unwrap();
    let names: Vec<String> = walk_collect(dst.path(), &WalkOptions::default())
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(names, ["a", "a/x"]);
    assert_eq!(std::fs::read(dst.path().join("a/x")).unwrap(), b"x content");
}

/// Drive a sender by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_protocol() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/f"), vec![7u8; 150_000]).unwrap();
    std::fs::write(src.path().join("empty"), "").unwrap();
    let (tx, mut from_send) = mpsc::channel(64);
    let (to_send, rx) = mpsc::channel(64);
    let source = Source::new(src.path(), &WalkOptions::default()).unwrap();
    let sender = tokio::spawn(send(
        source,
        SendOptions {
            chunk_size: 100_000,
            ..SendOptions::default()
        },
        tx,
        rx,
    ));
    let mut stats = Vec::new();
    loop {
        match from_send.recv().await.unwrap() {
            Packet::Stat(Some(st)) => stats.push(st.path),
            Packet::Stat(None) => break,
            p => panic!("unexpected {p:?}"),
        }
    }
    assert_eq!(stats, ["d", "d/f", "empty"]);
    // Ids are positions in the stat list; the directory has one but no content.
    to_send.send(Packet::Req { id: 1 }).await.unwrap();
    let mut sizes = Vec::new();
    loop {
        match from_send.recv().await.unwrap() {
            Packet::Data { id: 1, data } if data.is_empty() => break,
            Packet::Data { id: 1, data } => sizes.push(data.len()),
            p => panic!("unexpected {p:?}"),
        }
    }
    assert_eq!(sizes, [100_000, 50_000]);
    to_send.send(Packet::Req { id: 2 }).await.unwrap();
    assert_eq!(
        from_send.recv().await.unwrap(),
        Packet::Data {
            id: 2,
            data: bytes::Bytes::new()
        }
    );
    to_send.send(Packet::Fin).await.unwrap();
    assert_eq!(from_send.recv().await.unwrap(), Packet::Fin);
    sender.await.unwrap().unwrap();
    assert!(from_send.recv().await.is_none());

    // Asking for a directory (or twice for a file) is an error.
    let (tx, _from_send) = mpsc::channel(64);
    let (to_send, rx) = mpsc::channel(64);
    let source = Source::new(src.path(), &WalkOptions::default()).unwrap();
    let sender = tokio::spawn(send(source, SendOptions::default(), tx, rx));
    to_send.send(Packet::Req { id: 0 }).await.unwrap();
    assert!(matches!(sender.await.unwrap(), Err(Error::Protocol(_))));

    // An error from the receiver ends the sender with it.
    let (tx, _from_send) = mpsc::channel(64);
    let (to_send, rx) = mpsc::channel(64);
    let source = Source::new(src.path(), &WalkOptions::default()).unwrap();
    let sender = tokio::spawn(send(source, SendOptions::default(), tx, rx));
    to_send.send(Packet::Err("disk full".into())).await.unwrap();
    match sender.await.unwrap() {
        Err(Error::Remote(m)) => assert_eq!(m, "disk full"),
        r => panic!("{r:?}"),
    }
}

fn stat(path: &str, mode: u32) -> Packet {
    Packet::Stat(Some(StatEntry {
        path: path.into(),
        mode,
        mod_time: 1_000_000_000,
        ..Default::default()
    }))
}

/// Drive a receiver by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_protocol() {
    let dst = tempfile::tempdir().unwrap();
    let (tx, mut from_recv) = mpsc::channel(64);
    let (to_recv, rx) = mpsc::channel(64);
    let recv = tokio::spawn(receive(
        dst.path().into(),
        ReceiveOptions::default(),
        tx,
        rx,
    ));
    to_recv
        .send(stat("d", mode::MODE_DIR | 0o555))
        .await
        .unwrap();
    to_recv.send(stat("d/f", 0o444)).await.unwrap();
    to_recv.send(stat("g", 0o644)).await.unwrap();
    assert_eq!(from_recv.recv().await.unwrap(), Packet::Req { id: 1 });
    assert_eq!(from_recv.recv().await.unwrap(), Packet::Req { id: 2 });
    to_recv.send(Packet::Stat(None)).await.unwrap();
    // Contents may interleave.
    for (id, d) in [(2, "g1"), (1, "f1"), (2, "g2"), (1, "")] {
        let data = bytes::Bytes::from(d.as_bytes().to_vec());
        to_recv.send(Packet::Data { id, data }).await.unwrap();
    }
    to_recv
        .send(Packet::Data {
            id: 2,
            data: bytes::Bytes::new(),
        })
        .await
        .unwrap();
    assert_eq!(from_recv.recv().await.unwrap(), Packet::Fin);
    to_recv.send(Packet::Fin).await.unwrap();
    drop(to_recv);
    recv.await.unwrap().unwrap();
    assert_eq!(std::fs::read(dst.path().join("d/f")).unwrap(), b"f1");
    assert_eq!(std::fs::read(dst.path().join("g")).unwrap(), b"g1g2");
    let md = std::fs::metadata(dst.path().join("d")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o555, 1));

    // Out-of-order stats are refused, and the sender is told why.
    let dst = tempfile::tempdir().unwrap();
    let (tx, mut from_recv) = mpsc::channel(64);
    let (to_recv, rx) = mpsc::channel(64);
    let recv = tokio::spawn(receive(
        dst.path().into(),
        ReceiveOptions::default(),
        tx,
        rx,
    ));
    to_recv.send(stat("b", 0o644)).await.unwrap();
    to_recv.send(stat("a", 0o644)).await.unwrap();
    let mut got_err = false;
    while let Some(p) = from_recv.recv().await {
        got_err |= matches!(p, Packet::Err(m) if m.contains("out of order"));
    }
    assert!(got_err);
    assert!(matches!(recv.await.unwrap(), Err(Error::Protocol(_))));

    // A hardlink to something never sent is refused.
    let dst = tempfile::tempdir().unwrap();
    let (tx, _from_recv) = mpsc::channel(64);
    let (to_recv, rx) = mpsc::channel(64);
    let recv = tokio::spawn(receive(
        dst.path().into(),
        ReceiveOptions::default(),
        tx,
        rx,
    ));
    to_recv
        .send(Packet::Stat(Some(StatEntry {
            path: "l".into(),
            mode: 0o644,
            linkname: "../../etc/passwd".into(),
            ..Default::default()
        })))
        .await
        .unwrap();
    assert!(matches!(recv.await.unwrap(), Err(Error::Protocol(_))));
}
