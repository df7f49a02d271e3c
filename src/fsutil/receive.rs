//! The receiving end of DiffCopy: rebuilds the sent tree under a local directory (exports).
//!
//! Existing content is merged into, like the local exporter does: entries are replaced one by
//! one (built under a temporary name, then renamed over), nothing else is deleted. Directory
//! modes, owners and times are applied last, so read-only directories can still be filled,
//! child writes don't disturb parent times, and nobody else owns a directory while we fill it.
//!
//! We run as root in directories others may write to, and the sender (a build) may be hostile:
//! every call is relative to a descriptor of the directory it acts in, reached from the
//! destination's descriptor one component at a time, never following a symlink; each entry's
//! inode is remembered when it is made and checked whenever it is looked up again, so an
//! entry swapped behind our back fails the transfer instead of being written through. Files
//! are made 0600 and get their owner, then their mode (setuid and all) only once their data
//! is complete.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use tokio::sync::mpsc;

use super::mode::{
    self, MODE_CHAR_DEVICE, MODE_DEVICE, MODE_IRREGULAR, MODE_NAMED_PIPE, MODE_SOCKET,
};
use super::sys::FileId;
use super::{sys, Error, Packet, Result, StatEntry};

mod order;
mod tree;

use order::{check_path, OrderCheck};
use tree::Tree;

/// Who should own what we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerPolicy {
    /// The sender's uid/gid (needs privileges unless they are ours).
    Keep,
    /// Everything owned by these ids.
    Fixed { uid: u32, gid: u32 },
}

impl OwnerPolicy {
    /// Our own ids, which is what the local exporter uses.
    pub fn current() -> OwnerPolicy {
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        OwnerPolicy::Fixed { uid, gid }
    }
}

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub owner: OwnerPolicy,
    /// Create the destination when missing. Off for a temporary directory made beforehand: one
    /// removed because bkrun is ending must not come back.
    pub create_dest: bool,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            owner: OwnerPolicy::current(),
            create_dest: true,
        }
    }
}

/// Receive a tree into `dest` (created if missing): `tx` carries our packets to the sender,
/// `rx` brings its packets. Returns after the FIN exchange, once the sender closed its side.
/// `dest` itself must not be a symlink.
pub async fn receive(
    dest: PathBuf,
    opts: ReceiveOptions,
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut r = Receiver {
            dest,
            create_dest: opts.create_dest,
            owner: opts.owner,
            order: OrderCheck::default(),
            files: HashMap::new(),
            nodes: HashSet::new(),
            pending: HashMap::new(),
            dirs: Vec::new(),
            next_id: 0,
            tmp_seq: 0,
            tx,
            rx,
        };
        let res = r.run();
        if let Err(e) = &res {
            if !matches!(e, Error::Closed | Error::Remote(_)) {
                let _ = r.tx.blocking_send(Packet::Err(e.to_string()));
            }
        }
        res
    })
    .await
    .map_err(|e| Error::Protocol(format!("receiver failed: {e}")))?
}

/// A requested file whose data is still coming.
struct Incoming {
    path: String,
    id: FileId,
    stat: StatEntry,
    file: Option<File>,
}

/// What an entry becomes on disk.
enum Kind {
    Dir,
    Symlink,
    /// A second name for a regular file received earlier in this transfer.
    Link,
    /// Device node or FIFO, with its `S_IFMT` type. One sent as a hardlink is made as a node
    /// of its own, as before: we link only to regular files.
    Node(u32),
    /// A regular file; `wants_data` unless it stands in for a socket or an irregular file.
    File {
        wants_data: bool,
    },
}

impl Kind {
    /// What making one is called in an error.
    fn verb(&self) -> &'static str {
        match self {
            Kind::Dir => "mkdir",
            Kind::Symlink => "symlink",
            Kind::Node(_) => "mknod",
            Kind::Link => "link",
            Kind::File { .. } => "create",
        }
    }

    fn of(st: &StatEntry) -> Kind {
        let kind = st.mode & mode::MODE_TYPE;
        if st.is_dir() {
            Kind::Dir
        } else if st.is_symlink() {
            Kind::Symlink
        } else if kind & (MODE_DEVICE | MODE_NAMED_PIPE) != 0 {
            Kind::Node(if st.mode & MODE_CHAR_DEVICE != 0 {
                mode::S_IFCHR
            } else if st.mode & MODE_NAMED_PIPE != 0 {
                mode::S_IFIFO
            } else {
                mode::S_IFBLK
            })
        } else if !st.linkname.is_empty() {
            Kind::Link
        } else {
            // Only what both ends agree is a plain file is asked for; anything odd stays empty.
            Kind::File {
                wants_data: kind & (MODE_SOCKET | MODE_IRREGULAR) == 0,
            }
        }
    }
}

struct Receiver {
    dest: PathBuf,
    create_dest: bool,
    owner: OwnerPolicy,
    order: OrderCheck,
    /// Regular files received so far, and which inode each is: the only valid hardlink
    /// sources.
    files: HashMap<String, FileId>,
    /// Devices and FIFOs received so far, which later entries may name as their link.
    nodes: HashSet<String>,
    pending: HashMap<u32, Incoming>,
    /// Directories whose owner, mode and times are applied at the end.
    dirs: Vec<(String, FileId, StatEntry)>,
    next_id: u32,
    tmp_seq: u64,
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
}

fn protocol<T>(msg: String) -> Result<T> {
    Err(Error::Protocol(msg))
}

/// Parent directory and last component of a checked relative path.
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

impl Receiver {
    fn run(&mut self) -> Result<()> {
        if self.create_dest {
            std::fs::create_dir_all(&self.dest).map_err(|e| Error::io("mkdir", &self.dest, e))?;
        }
        let (root, _) = sys::open_root(&self.dest).map_err(|e| Error::io("open", &self.dest, e))?;
        let mut tree = Tree {
            dest: self.dest.clone(),
            root,
            known: HashMap::new(),
            chain: Vec::new(),
        };
        let mut stats_done = false;
        while !(stats_done && self.pending.is_empty()) {
            match self.rx.blocking_recv() {
                None => return Err(Error::Closed),
                Some(Packet::Err(m)) => return Err(Error::Remote(m)),
                Some(Packet::Stat(None)) => stats_done = true,
                Some(Packet::Stat(Some(st))) => {
                    if stats_done {
                        return protocol(format!("stat {:?} after the end of the list", st.path));
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.add(&mut tree, id, st)?;
                }
                Some(Packet::Data { id, data }) => self.data(&mut tree, id, &data)?,
                Some(Packet::Fin) => return protocol("sender finished before the transfer".into()),
                // Requests are not for us; upstream ignores them too.
                Some(Packet::Req { .. }) => {}
            }
        }
        // Deepest first: a directory's final mode may shut us out of what is below it.
        for (path, id, st) in self.dirs.iter().rev() {
            let (parent, name) = split(path);
            let shown = tree.shown(path);
            let dir = tree.dir(parent)?;
            let d = sys::open_dir_read(dir, name, *id).map_err(|e| Error::io("open", &shown, e))?;
            finish_fd(&d, st, &shown)?;
        }
        self.tx
            .blocking_send(Packet::Fin)
            .map_err(|_| Error::Closed)?;
        // The sender answers FIN with FIN and then closes; whatever else arrives is moot.
        while let Some(p) = self.rx.blocking_recv() {
            if let Packet::Err(m) = p {
                return Err(Error::Remote(m));
            }
        }
        Ok(())
    }

    fn add(&mut self, tree: &mut Tree, id: u32, mut st: StatEntry) -> Result<()> {
        check_path(&st.path)?;
        self.order.check(&st.path, st.is_dir())?;
        if let OwnerPolicy::Fixed { uid, gid } = self.owner {
            st.uid = uid;
            st.gid = gid;
        }
        let kind = Kind::of(&st);
        let link_src = self.link_source(tree, &kind, &st)?;

        let (parent, name) = split(&st.path);
        let shown = tree.shown(&st.path);
        let dir = tree.dir(parent)?;
        let existing = sys::stat_at(dir, name).map_err(|e| Error::io("lstat", &shown, e))?;
        if let (Kind::Dir, Some(old)) = (&kind, existing) {
            if old.is_dir() {
                // Merged into as it is; checked again whenever it is entered.
                set_dir_xattrs(dir, name, old, &st);
                self.dirs.push((st.path.clone(), old, st.clone()));
                tree.known.insert(st.path, old);
                return Ok(());
            }
        }

        // Something already there is replaced by a rename once the new entry is complete.
        let mut build_name = name.to_string();
        let mut tries = 0;
        let made = loop {
            if existing.is_some() {
                build_name = self.tmp_name();
            }
            match build_entry(dir, &build_name, &kind, &st, link_src.as_ref()) {
                // Our temporary name was taken (a leftover, or planted): pick the next.
                Err(e)
                    if existing.is_some()
                        && e.raw_os_error() == Some(libc::EEXIST)
                        && tries < 100 =>
                {
                    tries += 1
                }
                r => break r,
            }
        };
        let shown_build = shown.with_file_name(&build_name);
        let (fid, file) = made.map_err(|e| Error::io(kind.verb(), &shown_build, e))?;

        // Entries without data are complete now; a hardlink's inode is its source's, whose
        // metadata comes with the source's last data packet, so it is left alone here.
        match (&kind, file) {
            (Kind::Symlink | Kind::Node(_), _) => {
                finish_node(dir, &build_name, fid, &st, &shown_build)?
            }
            (Kind::File { wants_data: false }, Some(f)) => finish_fd(&f, &st, &shown_build)?,
            // Closed until the data comes: a tree has more files than we may keep open.
            _ => {}
        }

        if let Some(old) = existing {
            // A rename can replace a file with a file, but not across the dir/non-dir line.
            if old.is_dir() != matches!(kind, Kind::Dir) {
                sys::remove_tree_at(dir, name).map_err(|e| Error::io("remove", &shown, e))?;
            }
            sys::rename_in(dir, &build_name, name)
                .map_err(|e| Error::io("rename", &shown_build, e))?;
        }
        self.remember(tree, id, kind, st, fid)
    }

    /// A hardlink's source: a regular file of this transfer, by name and by inode, in its own
    /// directory's descriptor. A device or FIFO "linked" to another is made anew, but only
    /// after one of this transfer's nodes of that name.
    fn link_source(
        &self,
        tree: &mut Tree,
        kind: &Kind,
        st: &StatEntry,
    ) -> Result<Option<(OwnedFd, FileId)>> {
        let unknown = || {
            protocol(format!(
                "invalid link {:?} to unknown path {:?}",
                st.path, st.linkname
            ))
        };
        match kind {
            Kind::Link => {
                let Some(&src_id) = self.files.get(&st.linkname) else {
                    return unknown();
                };
                let (src_parent, _) = split(&st.linkname);
                Ok(Some((tree.dir_owned(src_parent)?, src_id)))
            }
            Kind::Node(_) if !st.linkname.is_empty() && !self.nodes.contains(&st.linkname) => {
                unknown()
            }
            _ => Ok(None),
        }
    }

    /// Records what was made: directories for their final metadata, files for their data (asked
    /// for now) and as hardlink sources, nodes as sources of node "links".
    fn remember(
        &mut self,
        tree: &mut Tree,
        id: u32,
        kind: Kind,
        st: StatEntry,
        fid: FileId,
    ) -> Result<()> {
        match kind {
            Kind::Dir => {
                self.dirs.push((st.path.clone(), fid, st.clone()));
                tree.known.insert(st.path, fid);
            }
            Kind::File { wants_data: true } => {
                self.files.insert(st.path.clone(), fid);
                self.pending.insert(
                    id,
                    Incoming {
                        path: st.path.clone(),
                        id: fid,
                        stat: st,
                        file: None,
                    },
                );
                self.tx
                    .blocking_send(Packet::Req { id })
                    .map_err(|_| Error::Closed)?;
            }
            Kind::File { wants_data: false } => {
                self.files.insert(st.path.clone(), fid);
            }
            Kind::Node(_) if st.linkname.is_empty() => {
                self.nodes.insert(st.path);
            }
            _ => {}
        }
        Ok(())
    }

    fn data(&mut self, tree: &mut Tree, id: u32, data: &[u8]) -> Result<()> {
        let Some(inc) = self.pending.get_mut(&id) else {
            return protocol(format!("invalid file request {id}"));
        };
        let shown = tree.shown(&inc.path);
        if inc.file.is_none() {
            let (parent, name) = split(&inc.path);
            let dir = tree.dir(parent)?;
            // Nothing to write for an empty file: read access is enough to set its metadata.
            let flags = if data.is_empty() {
                OFlag::O_RDONLY
            } else {
                OFlag::O_WRONLY
            };
            inc.file = Some(
                sys::reopen_file(dir, name, inc.id, flags)
                    .map_err(|e| Error::io("open", &shown, e))?,
            );
        }
        let Some(f) = inc.file.as_mut() else {
            unreachable!()
        };
        if !data.is_empty() {
            return f.write_all(data).map_err(|e| Error::io("write", &shown, e));
        }
        let inc = self.pending.remove(&id).unwrap_or_else(|| unreachable!());
        if let Some(f) = &inc.file {
            finish_fd(f, &inc.stat, &shown)?;
        }
        Ok(())
    }

    /// The next temporary name to build a replacement under.
    fn tmp_name(&mut self) -> String {
        self.tmp_seq += 1;
        format!(".tmp.bkrun.{}.{}", std::process::id(), self.tmp_seq)
    }
}

/// Makes the entry `st` describes as `name` in `dir`: a private directory, file (0600) or
/// node, a symlink, or a hardlink to `link_src`. Its inode, and the file when data follows.
fn build_entry(
    dir: BorrowedFd,
    name: &str,
    kind: &Kind,
    st: &StatEntry,
    link_src: Option<&(OwnedFd, FileId)>,
) -> io::Result<(FileId, Option<File>)> {
    match kind {
        Kind::Dir => {
            let fid = sys::create_dir(dir, name)?;
            // Inherited default ACLs and the like are there before the children.
            set_dir_xattrs(dir, name, fid, st);
            Ok((fid, None))
        }
        Kind::Symlink => Ok((sys::create_symlink(dir, name, &st.linkname)?, None)),
        Kind::Node(t) => {
            let dev = sys::makedev(st.devmajor, st.devminor);
            Ok((sys::create_node(dir, name, *t, dev)?, None))
        }
        Kind::Link => {
            let (src_dir, src_id) = link_src.unwrap_or_else(|| unreachable!());
            let (_, src_name) = split(&st.linkname);
            sys::create_link(src_dir.as_fd(), src_name, *src_id, dir, name)?;
            Ok((*src_id, None))
        }
        Kind::File { .. } => {
            let (f, fid) = sys::create_file(dir, name)?;
            set_xattrs_fd(f.as_fd(), st);
            Ok((fid, Some(f)))
        }
    }
}

/// Extended attributes, best effort as upstream: the local filesystem may not take them.
fn set_xattrs_fd(fd: BorrowedFd, st: &StatEntry) {
    for (k, v) in &st.xattrs {
        let _ = sys::fsetxattr(fd, k, v);
    }
}

/// Extended attributes of a directory, which takes them only through a descriptor open for
/// reading (a path-only one is refused).
fn set_dir_xattrs(dir: BorrowedFd, name: &str, id: FileId, st: &StatEntry) {
    if st.xattrs.is_empty() {
        return;
    }
    if let Ok(d) = sys::open_dir_read(dir, name, id) {
        set_xattrs_fd(d.as_fd(), st);
    }
}

/// Owner, then mode, then times of a file or directory we hold open. The owner comes first
/// because chown clears setuid/setgid (and file capabilities); for a file this runs once its
/// data is complete, so those bits never sit on a file still being written.
fn finish_fd(f: &File, st: &StatEntry, shown: &Path) -> Result<()> {
    sys::set_owner(f.as_fd(), st.uid, st.gid).map_err(|e| Error::io("chown", shown, e))?;
    sys::set_mode(f.as_fd(), mode::chmod_bits(st.mode))
        .map_err(|e| Error::io("chmod", shown, e))?;
    sys::set_times(f.as_fd(), st.mod_time).map_err(|e| Error::io("chtimes", shown, e))
}

/// The same for a symlink, device or FIFO `name` in `dir`, which is never opened for I/O: a
/// path-only descriptor checked to be the inode we made carries the owner (and the mode,
/// except for a symlink, which has none of its own); times go by name without following.
fn finish_node(
    dir: BorrowedFd,
    name: &str,
    id: FileId,
    st: &StatEntry,
    shown: &Path,
) -> Result<()> {
    let node = sys::open_node(dir, name, id).map_err(|e| Error::io("open", shown, e))?;
    for (k, v) in &st.xattrs {
        let _ = sys::lsetxattr_at(dir, name, k, v);
    }
    sys::set_owner_node(node.as_fd(), st.uid, st.gid).map_err(|e| Error::io("chown", shown, e))?;
    if !st.is_symlink() {
        sys::set_mode_node(node.as_fd(), dir, name, id, mode::chmod_bits(st.mode))
            .map_err(|e| Error::io("chmod", shown, e))?;
    }
    sys::set_times_at(dir, name, st.mod_time).map_err(|e| Error::io("chtimes", shown, e))
}
