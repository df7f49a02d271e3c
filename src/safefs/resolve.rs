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
    let io_at = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| WalkError::Io(p, e)
    };
    let (mut dir, mut dir_path) = if path.is_absolute() {
        (Dir::root().map_err(io_at(path))?, PathBuf::from("/"))
    } else {
        (
            Dir::open(Path::new(".")).map_err(io_at(path))?,
            PathBuf::new(),
        )
    };
    let mut dir_stat = dir.stat().map_err(io_at(&dir_path))?;
    let mut queue: VecDeque<OsString> = components(path);
    let mut missing: Vec<OsString> = Vec::new();
    let mut name = None;
    let mut node = None;
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        let last = queue.is_empty();
        if c == "." {
            continue;
        }
        if c == ".." {
            if !missing.is_empty() {
                let mut p = dir_path.clone();
                p.extend(&missing);
                return Err(WalkError::Io(p, io::Error::from_raw_os_error(libc::ENOENT)));
            }
            dir = dir.sub(OsStr::new("..")).map_err(io_at(&dir_path))?;
            dir_stat = dir.stat().map_err(io_at(&dir_path))?;
            match dir_path.file_name() {
                Some(_) => {
                    dir_path.pop();
                }
                None if dir_path.as_os_str().is_empty() || dir_path.ends_with("..") => {
                    dir_path.push("..")
                }
                None => {}
            }
            continue;
        }
        if !missing.is_empty() {
            if last {
                name = Some(c);
            } else {
                missing.push(c);
            }
            continue;
        }
        let here = dir_path.join(&c);
        match dir.stat_at(&c).map_err(io_at(&here))? {
            None if last => name = Some(c),
            None => missing.push(c),
            Some(st) if st.kind == Kind::Symlink && (!last || follow_last) => {
                if !may_follow(&dir_stat, &st, euid) {
                    return Err(WalkError::Refused(refusal(
                        &here, &st, &dir_path, &dir_stat,
                    )));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(WalkError::Io(
                        path.to_path_buf(),
                        io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = dir.read_link_at(&c).map_err(io_at(&here))?;
                if last {
                    if let Some(fd) = fd_alias(&target) {
                        return Ok(Resolved::Fd(fd));
                    }
                }
                if target.is_absolute() {
                    dir = Dir::root().map_err(io_at(&target))?;
                    dir_stat = dir.stat().map_err(io_at(&target))?;
                    dir_path = PathBuf::from("/");
                }
                for t in components(&target).into_iter().rev() {
                    queue.push_front(t);
                }
            }
            Some(st) if last => {
                name = Some(c);
                node = Some(st);
            }
            Some(st) if st.kind == Kind::Dir => {
                let sub = dir.sub(&c).map_err(io_at(&here))?;
                let opened = sub.stat().map_err(io_at(&here))?;
                if !opened.same_node(&st) {
                    return Err(WalkError::Io(
                        here,
                        io::Error::other("changed while it was being opened"),
                    ));
                }
                dir = sub;
                dir_stat = opened;
                dir_path = here;
            }
            Some(_) => {
                return Err(WalkError::Io(
                    here,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
        }
    }
    Ok(Resolved::At(Box::new(Place {
        dir,
        dir_stat,
        dir_path,
        missing,
        name,
        node,
    })))
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
