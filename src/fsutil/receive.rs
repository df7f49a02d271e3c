//! The receiving end of DiffCopy: rebuilds the sent tree under a local directory (exports).
//!
//! Existing content is merged into, like the local exporter does: entries are replaced one by
//! one (built under a temporary name, then renamed over), nothing else is deleted. Directory
//! modes and times are applied last, so read-only directories can still be filled and child
//! writes don't disturb parent times.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::mode::{
    self, MODE_CHAR_DEVICE, MODE_DEVICE, MODE_IRREGULAR, MODE_NAMED_PIPE, MODE_SOCKET,
};
use super::pattern::clean;
use super::walk::compare_paths;
use super::{sys, Error, Packet, Result, StatEntry};

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
            files: HashSet::new(),
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
    path: PathBuf,
    stat: StatEntry,
    file: Option<File>,
}

struct Receiver {
    dest: PathBuf,
    create_dest: bool,
    owner: OwnerPolicy,
    order: OrderCheck,
    /// Regular files received so far: the only valid hardlink sources.
    files: HashSet<String>,
    pending: HashMap<u32, Incoming>,
    /// Directories whose mode and times are applied at the end.
    dirs: Vec<(PathBuf, StatEntry)>,
    next_id: u32,
    tmp_seq: u64,
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
}

fn protocol<T>(msg: String) -> Result<T> {
    Err(Error::Protocol(msg))
}

impl Receiver {
    fn run(&mut self) -> Result<()> {
        if self.create_dest {
            std::fs::create_dir_all(&self.dest).map_err(|e| Error::io("mkdir", &self.dest, e))?;
        } else if !self.dest.is_dir() {
            return Err(Error::io(
                "open",
                &self.dest,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
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
                    self.add(id, st)?;
                }
                Some(Packet::Data { id, data }) => self.data(id, &data)?,
                Some(Packet::Fin) => return protocol("sender finished before the transfer".into()),
                // Requests are not for us; upstream ignores them too.
                Some(Packet::Req { .. }) => {}
            }
        }
        for (path, st) in self.dirs.iter().rev() {
            finish_metadata(path, st)?;
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

    fn add(&mut self, id: u32, mut st: StatEntry) -> Result<()> {
        check_path(&st.path)?;
        self.order.check(&st.path, st.is_dir())?;
        if let OwnerPolicy::Fixed { uid, gid } = self.owner {
            st.uid = uid;
            st.gid = gid;
        }
        let hardlink = !st.is_dir() && !st.is_symlink() && !st.linkname.is_empty();
        if hardlink {
            if !self.files.contains(&st.linkname) {
                return protocol(format!(
                    "invalid link {:?} to unknown path {:?}",
                    st.path, st.linkname
                ));
            }
        } else if !st.is_dir() && !st.is_symlink() {
            self.files.insert(st.path.clone());
        }

        let target = self.dest.join(&st.path);
        let existing = match std::fs::symlink_metadata(&target) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("lstat", target, e)),
        };
        if st.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir()) {
            apply_owner_and_xattrs(&target, &st)?;
            self.dirs.push((target, st));
            return Ok(());
        }
        let build_at = if existing.is_some() {
            self.tmp_name(&target)?
        } else {
            target.clone()
        };

        let kind = st.mode & mode::MODE_TYPE;
        let mut wants_data = false;
        if st.is_dir() {
            // Owner-writable until the end, whatever the final mode.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&build_at)
                .map_err(|e| Error::io("mkdir", &build_at, e))?;
        } else if st.is_symlink() {
            std::os::unix::fs::symlink(&st.linkname, &build_at)
                .map_err(|e| Error::io("symlink", &build_at, e))?;
        } else if kind & (MODE_DEVICE | MODE_NAMED_PIPE) != 0 {
            let t = if st.mode & MODE_CHAR_DEVICE != 0 {
                mode::S_IFCHR
            } else if st.mode & MODE_NAMED_PIPE != 0 {
                mode::S_IFIFO
            } else {
                mode::S_IFBLK
            };
            sys::mknod(
                &build_at,
                t | (st.mode & mode::MODE_PERM),
                sys::makedev(st.devmajor, st.devminor),
            )
            .map_err(|e| Error::io("mknod", &build_at, e))?;
        } else if hardlink {
            let src = self.dest.join(&st.linkname);
            std::fs::hard_link(&src, &build_at).map_err(|e| Error::io("link", &build_at, e))?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&build_at)
                .map_err(|e| Error::io("create", &build_at, e))?;
            // Only what both ends agree is a plain file is asked for; anything odd stays empty.
            wants_data = kind & (MODE_SOCKET | MODE_IRREGULAR) == 0;
        }

        apply_owner_and_xattrs(&build_at, &st)?;
        if !st.is_dir() && !wants_data {
            finish_metadata(&build_at, &st)?;
        }

        if let Some(old) = existing {
            // A rename can replace a file with a file, but not across the dir/non-dir line.
            if old.is_dir() != st.is_dir() {
                let r = if old.is_dir() {
                    std::fs::remove_dir_all(&target)
                } else {
                    std::fs::remove_file(&target)
                };
                r.map_err(|e| Error::io("remove", &target, e))?;
            }
            std::fs::rename(&build_at, &target).map_err(|e| Error::io("rename", &build_at, e))?;
        }

        if st.is_dir() {
            self.dirs.push((target, st));
        } else if wants_data {
            self.pending.insert(
                id,
                Incoming {
                    path: target,
                    stat: st,
                    file: None,
                },
            );
            self.tx
                .blocking_send(Packet::Req { id })
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    fn data(&mut self, id: u32, data: &[u8]) -> Result<()> {
        let Some(inc) = self.pending.get_mut(&id) else {
            return protocol(format!("invalid file request {id}"));
        };
        if data.is_empty() {
            let inc = self.pending.remove(&id).unwrap_or_else(|| unreachable!());
            if let Some(f) = inc.file {
                drop(f);
            }
            return finish_metadata(&inc.path, &inc.stat);
        }
        if inc.file.is_none() {
            inc.file = Some(open_for_data(&inc.path)?);
        }
        if let Some(f) = inc.file.as_mut() {
            f.write_all(data)
                .map_err(|e| Error::io("write", &inc.path, e))?;
        }
        Ok(())
    }

    /// A free temporary name next to `target`.
    fn tmp_name(&mut self, target: &Path) -> Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.dest).to_path_buf();
        loop {
            self.tmp_seq += 1;
            let p = dir.join(format!(
                ".tmp.bkrun.{}.{}",
                std::process::id(),
                self.tmp_seq
            ));
            match std::fs::symlink_metadata(&p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
                Err(e) => return Err(Error::io("lstat", p, e)),
                Ok(_) => {}
            }
        }
    }
}

/// Open a received file for writing; a hardlink may already have given it a read-only mode.
fn open_for_data(path: &Path) -> Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            open()
        }
        r => r,
    }
    .map_err(|e| Error::io("open", path, e))
}

/// Ownership and xattrs; done before content so that nothing written is briefly exposed under
/// other ids.
fn apply_owner_and_xattrs(path: &Path, st: &StatEntry) -> Result<()> {
    for (k, v) in &st.xattrs {
        // Best effort, as upstream: the local filesystem may not take them.
        let _ = sys::lsetxattr(path, k, v);
    }
    std::os::unix::fs::lchown(path, Some(st.uid), Some(st.gid))
        .map_err(|e| Error::io("lchown", path, e))
}

/// Mode (after the chown, which clears setuid/setgid) and times.
fn finish_metadata(path: &Path, st: &StatEntry) -> Result<()> {
    if !st.is_symlink() {
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(mode::chmod_bits(st.mode)),
        )
        .map_err(|e| Error::io("chmod", path, e))?;
    }
    sys::set_times_nofollow(path, st.mod_time).map_err(|e| Error::io("chtimes", path, e))
}

/// Paths must be clean, relative and stay inside the destination.
fn check_path(p: &str) -> Result<()> {
    if p.is_empty() || p == "." || p.contains('\0') {
        return protocol(format!("invalid path {p:?}"));
    }
    if clean(p) != p {
        return protocol(format!("unclean path {p:?}"));
    }
    if p.starts_with('/') {
        return protocol(format!("absolute path {p:?}"));
    }
    if p == ".." || p.starts_with("../") {
        return protocol(format!("path escapes destination {p:?}"));
    }
    Ok(())
}

/// The receiver's order check: every entry's parent directory came before it, and names within
/// a directory strictly increase bytewise.
#[derive(Debug)]
struct OrderCheck {
    /// (directory, last name seen in it), from the root down to the current directory.
    stack: Vec<(String, String)>,
}

impl Default for OrderCheck {
    fn default() -> Self {
        OrderCheck {
            stack: vec![(String::new(), String::new())],
        }
    }
}

impl OrderCheck {
    fn check(&mut self, path: &str, is_dir: bool) -> Result<()> {
        let (dir, base) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        // Leave directories that sort after this entry's parent: their subtrees are done.
        while self.stack.len() > 1
            && self
                .stack
                .last()
                .is_some_and(|(d, _)| compare_paths(d, dir) == std::cmp::Ordering::Greater)
        {
            self.stack.pop();
        }
        let Some((top, last)) = self.stack.last_mut() else {
            return protocol("order check lost its root".into());
        };
        if top != dir || last.as_str() >= base {
            return protocol(format!(
                "changes out of order: {path:?} after {:?}",
                if top.is_empty() {
                    last.clone()
                } else {
                    format!("{top}/{last}")
                }
            ));
        }
        *last = base.to_string();
        if is_dir {
            self.stack.push((path.to_string(), String::new()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_check() {
        let mut c = OrderCheck::default();
        for (p, d) in [
            ("a", true),
            ("a/b", true),
            ("a/b/c", false),
            ("a/d", false),
            ("a-b", false),
            ("a.txt", false),
            ("b", true),
            ("b/x", false),
            ("c", false),
        ] {
            c.check(p, d).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let fails = |seq: &[(&str, bool)]| {
            let mut c = OrderCheck::default();
            seq.iter().any(|(p, d)| c.check(p, *d).is_err())
        };
        assert!(fails(&[("b", false), ("a", false)]));
        assert!(fails(&[("a", false), ("a", false)]));
        assert!(fails(&[("a/b", false)]));
        assert!(
            fails(&[("a", false), ("a/b", false)]),
            "parent must be a dir"
        );
        assert!(fails(&[("a-b", false), ("a", true), ("a/x", false)]));
        assert!(fails(&[("a", true), ("b", true), ("a/x", false)]));
        assert!(!fails(&[
            ("a", true),
            ("a/x", true),
            ("a/x/y", false),
            ("a/z", false)
        ]));
    }

    #[test]
    fn paths_are_checked() {
        for bad in [
            "", ".", "/a", "a/", "a//b", "./a", "a/./b", "..", "../a", "a/../b", "a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "..a", "a..", "a/..b", "é ☺"] {
            check_path(good).unwrap();
        }
    }
}
