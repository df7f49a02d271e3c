//! Walking a path the user gave, one component at a time by descriptor, following a symlink only where protected_symlinks=1 would: what the walk ends on is an open directory and a name in it, never a path string that could be redirected later.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use super::protect::{may_follow, refusal, Refusal};
use super::{Dir, Kind, Stat};

/// The kernel's own limit on links in one lookup.
const MAX_LINKS: u32 = 40;

/// Where a path leads.
#[derive(Debug)]
pub enum Resolved {
    /// One of bkrun's own descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`): these
    /// lead to a pipe or socket no other path reaches (`pipe:[1234]`).
    Fd(RawFd),
    At(Box<Place>),
}

/// The deepest existing directory on the way to an entry, and the rest of the way.
#[derive(Debug)]
pub struct Place {
    pub dir: Dir,
    pub dir_stat: Stat,
    /// The directory's path as walked (links replaced by what they lead to), for messages.
    pub dir_path: PathBuf,
    /// Directories still to make below `dir` before the entry (its missing parents).
    pub missing: Vec<OsString>,
    /// The entry's name in the last of them; None when the path names `dir` itself (`.`).
    pub name: Option<OsString>,
    /// The entry itself (not followed: a symlink only when the walk was not to follow the
    /// last one), when it exists.
    pub node: Option<Stat>,
}

impl Place {
    /// The entry's path as walked.
    pub fn path(&self) -> PathBuf {
        let mut p = self.dir_path.clone();
        p.extend(&self.missing);
        if let Some(n) = &self.name {
            p.push(n);
        }
        p
    }
}

/// Why a walk stopped.
#[derive(Debug)]
pub enum WalkError {
    /// A symlink the kernel's protection would not follow.
    Refused(Refusal),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Refused(r) => r.fmt(f),
            WalkError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for WalkError {}

/// Walks `path` for user `euid`. Symlinks along the way are followed under the
/// protected_symlinks=1 rule; the last one too when `follow_last` (a link to the output keeps
/// being a link, its target is what is written).
pub fn resolve(path: &Path, euid: u32, follow_last: bool) -> Result<Resolved, WalkError> {
    if let Some(fd) = fd_alias(path) {
        return Ok(Resolved::Fd(fd));
    }
    let mut w = Walk::start(path, euid)?;
    while let Some(c) = w.queue.pop_front() {
        let last = w.queue.is_empty();
        if c == "." {
            continue;
        }
        if c == ".." {
            w.up()?;
            continue;
        }
        if !w.missing.is_empty() {
            // Below a missing directory everything is missing too.
            if last {
                w.name = Some(c);
            } else {
                w.missing.push(c);
            }
            continue;
        }
        let here = w.dir_path.join(&c);
        match w.dir.stat_at(&c).map_err(io_at(&here))? {
            None if last => w.name = Some(c),
            None => w.missing.push(c),
            Some(st) if st.kind == Kind::Symlink && (!last || follow_last) => {
                if let Some(fd) = w.follow(&c, &st, last)? {
                    return Ok(Resolved::Fd(fd));
                }
            }
            Some(st) if last => {
                w.name = Some(c);
                w.node = Some(st);
            }
            Some(st) if st.kind == Kind::Dir => w.enter(&c, &st)?,
            Some(_) => {
                return Err(WalkError::Io(
                    here,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
        }
    }
    Ok(Resolved::At(Box::new(Place {
        dir: w.dir,
        dir_stat: w.dir_stat,
        dir_path: w.dir_path,
        missing: w.missing,
        name: w.name,
        node: w.node,
    })))
}

/// An I/O error at `p`.
fn io_at(p: &Path) -> impl Fn(io::Error) -> WalkError {
    let p = p.to_path_buf();
    move |e| WalkError::Io(p.clone(), e)
}

/// A walk in progress: where it is, what is left of the path, and what it found.
struct Walk {
    path: PathBuf,
    euid: u32,
    dir: Dir,
    dir_stat: Stat,
    dir_path: PathBuf,
    queue: VecDeque<OsString>,
    missing: Vec<OsString>,
    name: Option<OsString>,
    node: Option<Stat>,
    links: u32,
}

impl Walk {
    /// At the root for an absolute path, at the working directory for a relative one.
    fn start(path: &Path, euid: u32) -> Result<Walk, WalkError> {
        let (dir, dir_path) = if path.is_absolute() {
            (Dir::root().map_err(io_at(path))?, PathBuf::from("/"))
        } else {
            (
                Dir::open(Path::new(".")).map_err(io_at(path))?,
                PathBuf::new(),
            )
        };
        let dir_stat = dir.stat().map_err(io_at(&dir_path))?;
        Ok(Walk {
            path: path.to_path_buf(),
            euid,
            dir,
            dir_stat,
            dir_path,
            queue: components(path),
            missing: Vec::new(),
            name: None,
            node: None,
            links: 0,
        })
    }

    /// `..`: the parent of the directory reached (the kernel's, not the path's).
    fn up(&mut self) -> Result<(), WalkError> {
        if !self.missing.is_empty() {
            let mut p = self.dir_path.clone();
            p.extend(&self.missing);
            return Err(WalkError::Io(p, io::Error::from_raw_os_error(libc::ENOENT)));
        }
        self.dir = self
            .dir
            .sub(OsStr::new(".."))
            .map_err(io_at(&self.dir_path))?;
        self.dir_stat = self.dir.stat().map_err(io_at(&self.dir_path))?;
        match self.dir_path.file_name() {
            Some(_) => {
                self.dir_path.pop();
            }
            None if self.dir_path.as_os_str().is_empty() || self.dir_path.ends_with("..") => {
                self.dir_path.push("..")
            }
            None => {}
        }
        Ok(())
    }

    /// Follows the symlink `name` (facts `st`) where the rule allows: its target's components
    /// go first in the queue. Some(fd) when the last link leads to one of bkrun's descriptors.
    fn follow(&mut self, name: &OsStr, st: &Stat, last: bool) -> Result<Option<RawFd>, WalkError> {
        let here = self.dir_path.join(name);
        if !may_follow(&self.dir_stat, st, self.euid) {
            return Err(WalkError::Refused(refusal(
                &here,
                st,
                &self.dir_path,
                &self.dir_stat,
            )));
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(WalkError::Io(
                self.path.clone(),
                io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        let target = self.dir.read_link_at(name).map_err(io_at(&here))?;
        if last {
            if let Some(fd) = fd_alias(&target) {
                return Ok(Some(fd));
            }
        }
        if target.is_absolute() {
            self.dir = Dir::root().map_err(io_at(&target))?;
            self.dir_stat = self.dir.stat().map_err(io_at(&target))?;
            self.dir_path = PathBuf::from("/");
        }
        for t in components(&target).into_iter().rev() {
            self.queue.push_front(t);
        }
        Ok(None)
    }

    /// Steps into the directory `name` (facts `st`), which must still be that inode.
    fn enter(&mut self, name: &OsStr, st: &Stat) -> Result<(), WalkError> {
        let here = self.dir_path.join(name);
        let sub = self.dir.sub(name).map_err(io_at(&here))?;
        let opened = sub.stat().map_err(io_at(&here))?;
        if !opened.same_node(st) {
            return Err(WalkError::Io(
                here,
                io::Error::other("changed while it was being opened"),
            ));
        }
        self.dir = sub;
        self.dir_stat = opened;
        self.dir_path = here;
        Ok(())
    }
}

/// The path's components as names, `/` dropped (an absolute path starts at the root anyway).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::CurDir => Some(".".into()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The descriptor a path names, when it names one of this process's own.
pub fn fd_alias(p: &Path) -> Option<RawFd> {
    let s = p.to_str()?;
    match s {
        "/dev/stdin" => return Some(0),
        "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let pid = std::process::id().to_string();
    let rest = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))
        .or_else(|| s.strip_prefix("/proc/thread-self/fd/"))
        .or_else(|| {
            s.strip_prefix("/proc/")
                .and_then(|r| r.strip_prefix(pid.as_str()))
                .and_then(|r| r.strip_prefix("/fd/"))
        })?;
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn at(p: &Path, follow: bool) -> Place {
        match resolve(p, 0, follow).unwrap() {
            Resolved::At(place) => *place,
            Resolved::Fd(fd) => panic!("fd {fd}"),
        }
    }

    #[test]
    fn links_are_followed_to_the_entry_and_missing_parents_are_named() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("real/sub")).unwrap();
        std::fs::write(r.join("real/sub/f"), "x").unwrap();
        symlink("real", r.join("l")).unwrap();
        symlink("l/sub/f", r.join("flink")).unwrap();
        symlink(r.join("gone.tar"), r.join("dangling")).unwrap();

        let p = at(&r.join("flink"), true);
        assert_eq!(p.dir_path, r.join("real/sub"));
        assert_eq!(p.name.as_deref(), Some(OsStr::new("f")));
        assert_eq!(p.node.unwrap().kind, Kind::File);

        let p = at(&r.join("flink"), false);
        assert_eq!(p.node.unwrap().kind, Kind::Symlink);

        let p = at(&r.join("dangling"), true);
        assert_eq!(p.path(), r.join("gone.tar"));
        assert!(p.node.is_none());

        let p = at(&r.join("l/new/deeper/out"), true);
        assert_eq!(p.dir_path, r.join("real"));
        assert_eq!(p.missing, ["new", "deeper"]);
        assert_eq!(p.path(), r.join("real/new/deeper/out"));

        let p = at(&r.join("real/sub/.."), true);
        assert_eq!(p.dir_path, r.join("real"));
        assert!(p.name.is_none());

        assert!(matches!(
            resolve(&r.join("real/sub/f/x"), 0, true),
            Err(WalkError::Io(_, _))
        ));
    }

    #[test]
    fn own_descriptors_are_named_as_such() {
        assert!(matches!(
            resolve(Path::new("/dev/stdout"), 0, true),
            Ok(Resolved::Fd(1))
        ));
        assert!(matches!(
            resolve(Path::new("/dev/fd/7"), 0, true),
            Ok(Resolved::Fd(7))
        ));
        let d = tempfile::tempdir().unwrap();
        symlink("/dev/stdout", d.path().join("out")).unwrap();
        assert!(matches!(
            resolve(&d.path().join("out"), 0, true),
            Ok(Resolved::Fd(1))
        ));
    }

    #[test]
    fn a_link_loop_ends() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        match resolve(&d.path().join("a"), 0, true) {
            Err(WalkError::Io(_, e)) => assert_eq!(e.raw_os_error(), Some(libc::ELOOP)),
            other => panic!("{other:?}"),
        }
    }
}
