//! The receiver against a hostile sender and a tree changed under it: nothing outside the
//! receive directory is ever created, changed or removed, and bits like setuid appear only on
//! complete files.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::mode::{
    MODE_CHAR_DEVICE, MODE_DEVICE, MODE_DIR, MODE_IRREGULAR, MODE_NAMED_PIPE, MODE_SETGID,
    MODE_SETUID, MODE_SOCKET, MODE_STICKY, MODE_SYMLINK,
};
use super::walk::compare_paths;
use super::*;

/// Long enough for a slow CI machine, short enough that a hang fails the test.
const PATIENCE: Duration = Duration::from_secs(10);

/// A directory holding "outside" files and dirs that nothing may touch, and the receive dir
/// one level down (`nest/recv`): every symlink target the tests use, relative or absolute,
/// stays inside it from wherever it is planted, so even a broken receiver run as root only
/// damages the sandbox.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("outside")).unwrap();
        std::fs::write(r.join("outside/secret"), "secret").unwrap();
        std::fs::write(r.join("outside/f"), "outside f").unwrap();
        std::fs::create_dir(r.join("outside/sub")).unwrap();
        std::fs::write(r.join("outside/sub/deep"), "deep").unwrap();
        std::fs::write(r.join("victim"), "victim").unwrap();
        std::fs::set_permissions(r.join("victim"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(r.join("nest/recv")).unwrap();
        std::fs::set_permissions(r.join("nest/recv"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        // Fixed, old times: a touched entry shows even within the same second.
        for p in ["outside/secret", "outside/f", "outside/sub/deep", "victim"] {
            sys::set_times_nofollow(&r.join(p), 1_000_000_000_000_000_000).unwrap();
        }
        Sandbox { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn recv(&self) -> PathBuf {
        self.root().join("nest/recv")
    }

    fn outside(&self) -> PathBuf {
        self.root().join("outside")
    }

    /// Everything in the sandbox but the receive dir, as far as a change could show: type,
    /// mode, owner, link count, size, times (ctime too: a chown to the same ids shows there),
    /// content and link targets.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.root().to_path_buf()];
        while let Some(p) = todo.pop() {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mut v = format!(
                "mode {:o} uid {} gid {} nlink {} ino {} size {} mtime {}.{} ctime {}.{}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.nlink(),
                md.ino(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec()
            );
            let ft = md.file_type();
            if ft.is_symlink() {
                v += &format!(" -> {:?}", std::fs::read_link(&p).unwrap());
            } else if ft.is_file() {
                v += &format!(" content {:?}", std::fs::read(&p).unwrap());
            } else if ft.is_dir() && p != self.recv() {
                for e in std::fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
            out.insert(p, v);
        }
        // The receive dir's own entry changes as it is filled; only its existence matters.
        out.insert(self.recv(), "the receive dir".into());
        out
    }
}

/// A receiver running into `dest` (made beforehand, as the exporter does), driven by hand.
struct Peer {
    to_recv: mpsc::Sender<Packet>,
    from_recv: mpsc::Receiver<Packet>,
    task: JoinHandle<Result<()>>,
}

impl Peer {
    fn start(dest: &Path) -> Peer {
        let (to_recv, rx) = mpsc::channel(1024);
        let (tx, from_recv) = mpsc::channel(1024);
        let opts = ReceiveOptions {
            create_dest: false,
            ..ReceiveOptions::default()
        };
        let task = tokio::spawn(receive(dest.to_path_buf(), opts, tx, rx));
        Peer {
            to_recv,
            from_recv,
            task,
        }
    }

    async fn send(&self, p: Packet) {
        // A receiver that already failed has closed its side; the test looks at its result.
        let _ = self.to_recv.send(p).await;
    }

    async fn stat(&self, path: &str, mode: u32, linkname: &str) {
        self.send(Packet::Stat(Some(StatEntry {
            path: path.into(),
            mode,
            mod_time: 1_500_000_000_000_000_000,
            linkname: linkname.into(),
            ..Default::default()
        })))
        .await;
    }

    async fn data(&self, id: u32, data: &[u8]) {
        self.send(Packet::Data {
            id,
            data: bytes::Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// The next packet from the receiver.
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(PATIENCE, self.from_recv.recv())
            .await
            .expect("the receiver answers")
    }

    async fn expect_req(&mut self, id: u32) {
        assert_eq!(self.next().await, Some(Packet::Req { id }));
    }

    /// Close our side and return the receiver's result; a failure must have been told to us,
    /// in one line.
    async fn result(self) -> Result<()> {
        let Peer {
            to_recv,
            mut from_recv,
            task,
        } = self;
        drop(to_recv);
        let res = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the receiver ends")
            .expect("receiver task");
        if let Err(e) = &res {
            let mut told = None;
            while let Some(p) = from_recv.recv().await {
                if let Packet::Err(m) = p {
                    told = Some(m);
                }
            }
            let told = told.expect("the sender is told why");
            assert_eq!(told, e.to_string());
            assert!(!told.contains('\n'), "{told:?}");
        }
        res
    }

    /// End the list, answer the receiver's FIN and return its result.
    async fn finish(mut self) -> Result<()> {
        self.send(Packet::Stat(None)).await;
        if self.next().await == Some(Packet::Fin) {
            self.send(Packet::Fin).await;
        }
        self.result().await
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn swap_for_symlink(sb: &Sandbox, name: &str, to: &Path) {
    let recv = sb.recv();
    std::fs::rename(recv.join(name), sb.root().join("moved")).unwrap();
    std::os::unix::fs::symlink(to, recv.join(name)).unwrap();
}

/// A directory swapped for a symlink between two entries that go into it: the second one fails
/// the transfer instead of landing where the link points (or where the directory went).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_swapped_between_entries_fails_the_receive() {
    for to_moved in [false, true] {
        let sb = Sandbox::new();
        let mut peer = Peer::start(&sb.recv());
        peer.stat("a", MODE_DIR | 0o755, "").await;
        peer.stat("a/f", 0o644, "").await;
        // The request proves "a/f" was made, so the receiver holds "a" open by now.
        peer.expect_req(1).await;
        // A symlink to the outside, or to the very directory that was moved away.
        let to = if to_moved {
            sb.root().join("moved")
        } else {
            sb.outside()
        };
        swap_for_symlink(&sb, "a", &to);
        let before = sb.snapshot();
        peer.stat("a/g", 0o644, "").await;
        let err = peer.result().await.unwrap_err().to_string();
        assert!(
            err.contains("/recv/a:") && err.contains("replaced"),
            "{err}"
        );
        assert_eq!(before, sb.snapshot());
        assert!(!sb.root().join("moved/g").exists());
    }
}

/// The first entry into a directory that was swapped after it was made: the symlink is never
/// entered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_swapped_before_first_use_fails_the_receive() {
    let sb = Sandbox::new();
    let peer = Peer::start(&sb.recv());
    peer.stat("a", MODE_DIR | 0o755, "").await;
    peer.stat("a/b", MODE_DIR | 0o755, "").await;
    // Nothing is asked for a directory: wait until it is there.
    let b = sb.recv().join("a/b");
    for _ in 0..2000 {
        if b.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::rename(&b, sb.root().join("moved")).unwrap();
    std::os::unix::fs::symlink(sb.outside(), &b).unwrap();
    let before = sb.snapshot();
    peer.stat("a/b/x", 0o644, "").await;
    let err = peer.result().await.unwrap_err().to_string();
    assert!(err.contains("/recv/a/b:"), "{err}");
    assert_eq!(before, sb.snapshot());
    assert!(!sb.outside().join("x").exists());
}

/// A file's data arrives after its directory was swapped: the write goes nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_swapped_before_data_fails_the_receive() {
    let sb = Sandbox::new();
    let mut peer = Peer::start(&sb.recv());
    peer.stat("a", MODE_DIR | 0o755, "").await;
    // Named like a file outside, so that following the link would find one.
    peer.stat("a/f", 0o644, "").await;
    peer.send(Packet::Stat(None)).await;
    peer.expect_req(1).await;
    swap_for_symlink(&sb, "a", &sb.outside());
    let before = sb.snapshot();
    peer.data(1, b"pwned").await;
    peer.data(1, b"").await;
    let err = peer.result().await.unwrap_err().to_string();
    assert!(err.contains("/recv/a"), "{err}");
    assert_eq!(before, sb.snapshot());
    assert_eq!(std::fs::read(sb.outside().join("f")).unwrap(), b"outside f");
}

/// Directory modes and times come last; a directory swapped by then keeps them to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_swapped_before_final_modes_fails_the_receive() {
    let sb = Sandbox::new();
    let mut peer = Peer::start(&sb.recv());
    peer.stat("a", MODE_DIR | MODE_SETGID | 0o777, "").await;
    peer.stat("z", 0o644, "").await;
    peer.send(Packet::Stat(None)).await;
    peer.expect_req(1).await;
    swap_for_symlink(&sb, "a", &sb.outside());
    let before = sb.snapshot();
    peer.data(1, b"").await;
    let err = peer.result().await.unwrap_err().to_string();
    assert!(err.contains("/recv/a"), "{err}");
    assert_eq!(before, sb.snapshot());
}

/// A hardlink's source replaced (here by a link to a file outside) is not linked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlink_source_swapped_is_refused() {
    let sb = Sandbox::new();
    let mut peer = Peer::start(&sb.recv());
    peer.stat("f", 0o644, "").await;
    peer.expect_req(0).await;
    std::fs::remove_file(sb.recv().join("f")).unwrap();
    std::fs::hard_link(sb.root().join("victim"), sb.recv().join("f")).unwrap();
    let before = sb.snapshot();
    peer.stat("g", 0o644, "f").await;
    let err = peer.result().await.unwrap_err().to_string();
    assert!(
        err.contains("/recv/g") && err.contains("\"f\" replaced"),
        "{err}"
    );
    assert_eq!(before, sb.snapshot());
    assert!(!sb.recv().join("g").exists());
}

/// setuid/setgid come with the final mode, after the owner, once the data is complete: never
/// on a file still being written, even when a hardlink to it arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_only_on_complete_files() {
    let sb = Sandbox::new();
    let f = sb.recv().join("s");
    let mut peer = Peer::start(&sb.recv());
    peer.stat("s", MODE_SETUID | MODE_SETGID | 0o755, "").await;
    peer.stat("t", MODE_SETUID | MODE_SETGID | 0o755, "s").await;
    peer.stat("u", 0o644, "").await;
    peer.expect_req(0).await;
    // "u" made means "t" was handled too.
    peer.expect_req(2).await;
    assert_eq!(mode_of(&f), 0o600);
    peer.data(0, b"#!/bin/sh\n").await;
    peer.data(2, b"").await;
    peer.send(Packet::Stat(None)).await;
    // Wait until "u" is complete: data is handled in order, so "s" has its first chunk.
    for _ in 0..1000 {
        if mode_of(&sb.recv().join("u")) == 0o644 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(std::fs::read(&f).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode_of(&f), 0o600);
    peer.data(0, b"").await;
    assert_eq!(peer.next().await, Some(Packet::Fin));
    peer.send(Packet::Fin).await;
    peer.result().await.unwrap();
    assert_eq!(mode_of(&f), 0o6755);
    let (a, b) = (
        std::fs::metadata(&f).unwrap(),
        std::fs::metadata(sb.recv().join("t")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

/// An existing entry is replaced by a new inode: its old mode bits (setuid here) or content
/// never carry over, and the old inode, still linked elsewhere, is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_file_inherits_nothing() {
    let sb = Sandbox::new();
    let old = sb.recv().join("f");
    std::fs::write(&old, "old content, longer than the new").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::hard_link(&old, sb.root().join("keep")).unwrap();
    // A FIFO where a file comes: replaced without ever being opened (which would block).
    sys::mknod(&sb.recv().join("p"), libc::S_IFIFO | 0o666, 0).unwrap();
    let before = sb.snapshot();
    let mut peer = Peer::start(&sb.recv());
    peer.stat("f", 0o644, "").await;
    peer.stat("p", 0o640, "").await;
    peer.expect_req(0).await;
    peer.expect_req(1).await;
    peer.data(0, b"new").await;
    peer.data(0, b"").await;
    peer.data(1, b"").await;
    peer.finish().await.unwrap();
    assert_eq!(std::fs::read(&old).unwrap(), b"new");
    assert_eq!(mode_of(&old), 0o644);
    assert_ne!(
        std::fs::metadata(&old).unwrap().ino(),
        std::fs::metadata(sb.root().join("keep")).unwrap().ino()
    );
    assert!(std::fs::symlink_metadata(sb.recv().join("p"))
        .unwrap()
        .is_file());
    // The old inode lost one name (ours), nothing else.
    let mut before = before;
    let mut after = sb.snapshot();
    let keep = sb.root().join("keep");
    let strip = |v: &str| {
        v.split(' ')
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|kv| kv[0] != "nlink" && kv[0] != "ctime")
            .map(|kv| kv.join(" "))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for m in [&mut before, &mut after] {
        let v = strip(&m[&keep]);
        m.insert(keep.clone(), v);
    }
    assert_eq!(before, after);
    assert_eq!(mode_of(&keep), 0o4755);
}

/// FIFOs are made with their final mode and never opened; devices too, where we may make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_and_devices_get_their_modes_without_being_opened() {
    let sb = Sandbox::new();
    let peer = Peer::start(&sb.recv());
    let root = nix::unistd::geteuid().is_root();
    // /dev/null's numbers: 0:0 would pass unprivileged (overlayfs whiteouts).
    peer.send(Packet::Stat(Some(StatEntry {
        path: "n".into(),
        mode: MODE_DEVICE | MODE_CHAR_DEVICE | 0o620,
        devmajor: 1,
        devminor: 3,
        ..Default::default()
    })))
    .await;
    peer.stat("p", MODE_NAMED_PIPE | MODE_SETGID | 0o640, "")
        .await;
    // A second name for the FIFO is a FIFO of its own, never a link.
    peer.stat("q", MODE_NAMED_PIPE | 0o640, "p").await;
    if !root {
        // mknod of a device needs CAP_MKNOD.
        let err = peer.result().await.unwrap_err().to_string();
        assert!(
            err.starts_with("mknod ") && err.contains("/recv/n"),
            "{err}"
        );
        return;
    }
    peer.finish().await.unwrap();
    let md = |n: &str| std::fs::symlink_metadata(sb.recv().join(n)).unwrap();
    assert_eq!(md("n").mode(), libc::S_IFCHR | 0o620);
    assert_eq!(md("n").rdev(), libc::makedev(1, 3));
    assert_eq!(md("p").mode(), libc::S_IFIFO | 0o2640);
    assert_eq!(md("q").mode(), libc::S_IFIFO | 0o640);
    assert_ne!(md("p").ino(), md("q").ino());
}

/// Hard links name regular files of this transfer only: not a FIFO, a directory, a symlink or
/// anything outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlinks_only_to_received_regular_files() {
    for (first, mode) in [
        ("d", MODE_DIR | 0o755),
        ("d", MODE_SYMLINK | 0o777),
        ("d", MODE_NAMED_PIPE | 0o644),
    ] {
        let sb = Sandbox::new();
        let before = sb.snapshot();
        let peer = Peer::start(&sb.recv());
        peer.stat(
            first,
            mode,
            if mode & MODE_SYMLINK != 0 {
                "../../victim"
            } else {
                ""
            },
        )
        .await;
        peer.stat("l", 0o644, first).await;
        let err = peer.result().await.unwrap_err().to_string();
        assert!(err.contains("invalid link \"l\""), "{err}");
        assert_eq!(before, sb.snapshot());
    }
}

/// Extended attributes reach directories too (where the filesystem takes `user.` ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_xattrs_are_set() {
    let sb = Sandbox::new();
    let probe = sb.root().join("probe");
    std::fs::create_dir(&probe).unwrap();
    if sys::lsetxattr(&probe, "user.bkrun", b"v").is_err() {
        return;
    }
    let peer = Peer::start(&sb.recv());
    peer.send(Packet::Stat(Some(StatEntry {
        path: "d".into(),
        mode: MODE_DIR | 0o755,
        xattrs: [("user.bkrun".to_string(), b"dir value".to_vec())].into(),
        ..Default::default()
    })))
    .await;
    peer.finish().await.unwrap();
    assert_eq!(
        sys::lgetxattr(&sb.recv().join("d"), "user.bkrun").unwrap(),
        b"dir value"
    );
}

// The property test: a fake sender's stream of adversarial entries.

/// Paths that pass the path check; names collide with what is planted, with each other
/// under case folding (K and the Kelvin sign, ß and SS), and some go below a symlink, a FIFO
/// or a file.
const GOOD_PATHS: &[&str] = &[
    "a", "A", "b", "d", "l", "p", "s", "a/x", "a/y", "a/x/z", "b/x", "d/e", "l/x", "p/x", "s/x",
    "K", "\u{212A}", "ß", "SS",
];

/// Paths a hostile sender might use to get out; `$ABS` is the sandbox's absolute path.
const BAD_PATHS: &[&str] = &[
    "..",
    "../../victim",
    "../../outside/pwn",
    "l/..",
    "a/../b",
    "$ABS/outside/pwn",
    "$ABS/victim",
    "./a",
    "a//x",
    "a/",
    "",
    ".",
    "x\0y",
];

/// Symlink targets pointing out of the tree, or at things in it.
const TARGETS: &[&str] = &[
    "$ABS/outside",
    "$ABS/outside/secret",
    "$ABS/victim",
    "$ABS",
    "../../outside",
    "..",
    "../..",
    "a",
    ".",
];

/// Names a hardlink may give as its source: files, directories, symlinks, FIFOs, things
/// outside.
const LINKS: &[&str] = &[
    "b",
    "A",
    "K",
    "a/y",
    "a",
    "s",
    "l",
    "p",
    "a/x",
    "d/e",
    "../../victim",
    "$ABS/victim",
    "$ABS/outside/secret",
    "a/../s",
];

const MODES: &[u32] = &[
    0o644,
    0o755,
    0o000,
    0o444,
    MODE_SETUID | 0o755,
    MODE_SETGID | 0o2755,
    MODE_SETUID | MODE_SETGID | MODE_STICKY | 0o777,
];

#[derive(Debug, Clone)]
enum GenKind {
    Dir,
    File,
    Symlink(usize),
    Link(usize),
    Fifo,
    CharDev,
    BlockDev,
    Socket,
    Irregular,
}

#[derive(Debug, Clone)]
enum Op {
    Entry {
        path: String,
        kind: GenKind,
        mode: usize,
        content: Vec<u8>,
    },
    /// Data for an id the receiver may not know, or knows and did not expect yet.
    Data(u32, Vec<u8>),
    /// The end of the list, whatever follows.
    End,
    /// Not a packet: a local user swaps the entry at this path (if any) for a symlink to this
    /// target, moving it aside within the receive dir.
    Swap(&'static str, usize),
    Fin,
    Err,
}

fn kind() -> impl Strategy<Value = GenKind> {
    prop_oneof![
        4 => Just(GenKind::Dir),
        4 => Just(GenKind::File),
        2 => (0..TARGETS.len()).prop_map(GenKind::Symlink),
        2 => (0..LINKS.len()).prop_map(GenKind::Link),
        1 => Just(GenKind::Fifo),
        1 => Just(GenKind::CharDev),
        1 => Just(GenKind::BlockDev),
        1 => Just(GenKind::Socket),
        1 => Just(GenKind::Irregular),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => proptest::sample::select(GOOD_PATHS),
        1 => proptest::sample::select(BAD_PATHS),
    ]
    .prop_map(String::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        60 => (path(), kind(), 0..MODES.len(), proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(path, kind, mode, content)| Op::Entry { path, kind, mode, content }),
        2 => (0u32..12, proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(id, d)| Op::Data(id, d)),
        1 => Just(Op::End),
        3 => (proptest::sample::select(GOOD_PATHS), 0..TARGETS.len())
            .prop_map(|(p, t)| Op::Swap(p, t)),
        1 => Just(Op::Fin),
        1 => Just(Op::Err),
    ]
}

/// What the receive dir holds before the transfer: things a local user could have planted.
#[derive(Debug, Clone, Copy)]
struct Planted {
    links: bool,
    fifo: bool,
}

#[derive(Debug, Clone)]
struct Case {
    ops: Vec<Op>,
    /// Entries put in walker order, once each (most cases), or left as generated.
    sorted: bool,
    /// Close the stream after the script instead of ending the list and serving data.
    hang_up: bool,
    planted: Planted,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(op(), 1..14),
        proptest::bool::weighted(0.8),
        proptest::bool::weighted(0.1),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ops, sorted, hang_up, links, fifo)| Case {
            ops,
            sorted,
            hang_up,
            planted: Planted { links, fifo },
        })
}

fn resolve(s: &str, root: &Path) -> String {
    s.replace("$ABS", &root.display().to_string())
}

/// A step of the fake sender.
enum Step {
    Send(Packet),
    Swap(String, String),
}

/// The steps a case takes, and the content of each stat by its position (the id the receiver
/// gives it).
fn script(c: &Case, root: &Path) -> (Vec<Step>, Vec<Vec<u8>>) {
    let mut ops = c.ops.clone();
    if c.sorted {
        let mut entries: Vec<Op> = ops
            .iter()
            .filter(|o| matches!(o, Op::Entry { .. }))
            .cloned()
            .collect();
        let key = |o: &Op| match o {
            Op::Entry { path, .. } => resolve(path, root),
            _ => String::new(),
        };
        entries.sort_by(|a, b| compare_paths(&key(a), &key(b)));
        entries.dedup_by(|a, b| key(a) == key(b));
        // Every parent a directory, so that most cases get past the order check and reach
        // the links, replacements and data.
        let mut parents = std::collections::BTreeSet::new();
        for e in &entries {
            if let Op::Entry { path, .. } = e {
                for (i, _) in path.match_indices('/').filter(|(i, _)| *i > 0) {
                    parents.insert(path[..i].to_string());
                }
            }
        }
        for e in entries.iter_mut() {
            if let Op::Entry { path, kind, .. } = e {
                if parents.remove(path.as_str()) {
                    *kind = GenKind::Dir;
                }
            }
        }
        entries.extend(parents.into_iter().map(|path| Op::Entry {
            path,
            kind: GenKind::Dir,
            mode: 1,
            content: Vec::new(),
        }));
        entries.sort_by(|a, b| compare_paths(&key(a), &key(b)));
        let mut it = entries.into_iter();
        ops.retain(|o| !matches!(o, Op::Entry { .. }));
        // Entries first, the odd packets spread among them as generated, the rest after.
        let odd = std::mem::take(&mut ops);
        let mut odd = odd.into_iter();
        for e in it.by_ref() {
            ops.push(e);
            if ops.len() % 3 == 0 {
                ops.extend(odd.next());
            }
        }
        ops.extend(odd);
    }
    let mut packets = Vec::new();
    let mut contents = Vec::new();
    for o in ops {
        if let Op::Swap(p, t) = o {
            packets.push(Step::Swap(p.to_string(), resolve(TARGETS[t], root)));
            continue;
        }
        packets.push(Step::Send(match o {
            Op::Entry {
                path,
                kind,
                mode,
                content,
            } => {
                let perm = MODES[mode];
                let (mode, linkname) = match kind {
                    GenKind::Dir => (MODE_DIR | perm, String::new()),
                    GenKind::File => (perm, String::new()),
                    GenKind::Symlink(t) => (MODE_SYMLINK | 0o777, resolve(TARGETS[t], root)),
                    GenKind::Link(l) => (perm, resolve(LINKS[l], root)),
                    GenKind::Fifo => (MODE_NAMED_PIPE | perm, String::new()),
                    GenKind::CharDev => (MODE_DEVICE | MODE_CHAR_DEVICE | perm, String::new()),
                    GenKind::BlockDev => (MODE_DEVICE | perm, String::new()),
                    GenKind::Socket => (MODE_SOCKET | perm, String::new()),
                    GenKind::Irregular => (MODE_IRREGULAR | perm, String::new()),
                };
                contents.push(content);
                Packet::Stat(Some(StatEntry {
                    path: resolve(&path, root),
                    mode,
                    mod_time: 1_234_567_890_123_456_789,
                    linkname,
                    devmajor: 1,
                    devminor: 3,
                    ..Default::default()
                }))
            }
            Op::Data(id, d) => Packet::Data { id, data: d.into() },
            Op::End => Packet::Stat(None),
            Op::Fin => Packet::Fin,
            Op::Err => Packet::Err("sender gave up".into()),
            Op::Swap(..) => unreachable!(),
        }));
    }
    (packets, contents)
}

fn plant(sb: &Sandbox, p: Planted) {
    let recv = sb.recv();
    if p.links {
        let link = |to: &Path, name: &str| std::os::unix::fs::symlink(to, recv.join(name)).unwrap();
        link(&sb.outside(), "a");
        link(Path::new("../../outside"), "b");
        link(&sb.outside().join("secret"), "s");
        link(&sb.root().join("victim"), "l");
        link(Path::new("../../outside/sub"), "d");
    }
    if p.fifo {
        sys::mknod(&recv.join("p"), libc::S_IFIFO | 0o666, 0).unwrap();
    }
}

/// A fake sender: sends the script, then (unless it hangs up) ends the list, answers every
/// request with its content in two chunks and the receiver's FIN with its own.
async fn run_case(c: &Case, sb: &Sandbox) -> Result<()> {
    let (packets, contents) = script(c, sb.root());
    let (to_recv, rx) = mpsc::channel(1024);
    let (tx, mut from_recv) = mpsc::channel(1024);
    let opts = ReceiveOptions {
        create_dest: false,
        ..ReceiveOptions::default()
    };
    let recv = tokio::spawn(receive(sb.recv(), opts, tx, rx));
    let hang_up = c.hang_up;
    let recv_dir = sb.recv();
    let sender = tokio::spawn(async move {
        for (n, step) in packets.into_iter().enumerate() {
            match step {
                Step::Send(p) => {
                    if to_recv.send(p).await.is_err() {
                        return;
                    }
                }
                Step::Swap(path, target) => {
                    // Let the receiver take what was sent so far; the race is the point.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let at = recv_dir.join(&path);
                    if std::fs::rename(&at, recv_dir.join(format!(".moved-{n}"))).is_ok() {
                        let _ = std::os::unix::fs::symlink(&target, &at);
                    }
                }
            }
        }
        if hang_up {
            return;
        }
        let _ = to_recv.send(Packet::Stat(None)).await;
        while let Some(p) = from_recv.recv().await {
            match p {
                Packet::Req { id } => {
                    let body = contents.get(id as usize).cloned().unwrap_or_default();
                    let (x, y) = body.split_at(body.len() / 2);
                    for d in [x, y, &[][..]] {
                        let data = bytes::Bytes::copy_from_slice(d);
                        let _ = to_recv.send(Packet::Data { id, data }).await;
                    }
                }
                Packet::Fin => {
                    let _ = to_recv.send(Packet::Fin).await;
                    return;
                }
                _ => return,
            }
        }
    });
    let res = tokio::time::timeout(PATIENCE, recv)
        .await
        .expect("the receiver ends")
        .expect("receiver task");
    tokio::time::timeout(PATIENCE, sender)
        .await
        .expect("the fake sender ends")
        .expect("sender task");
    res
}

proptest! {
    #![proptest_config(Config {
        cases: 128,
        // A failure is reported with its minimal input; no regression files are left in src/.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    })]

    /// Whatever the sender sends and whatever was planted in the receive dir, nothing outside
    /// it is created, changed or removed, whether the receive fails or not; a failure is one
    /// line.
    #[test]
    fn nothing_outside_the_receive_dir_changes(c in case()) {
        let sb = Sandbox::new();
        plant(&sb, c.planted);
        let before = sb.snapshot();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let res = rt.block_on(run_case(&c, &sb));
        if let Err(e) = &res {
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
        prop_assert_eq!(before, sb.snapshot(), "{:?}", res);
    }
}
