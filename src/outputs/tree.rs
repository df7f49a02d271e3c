//! A `type=local` export's tree: received into a private temporary directory and put in place only once the build succeeded, merged into an existing destination so none of the user's other files is lost.
//!
//! A missing destination gets the whole tree by one rename. An existing directory is merged
//! into, as buildctl's exporter writes into it: each received entry replaces the entry of the
//! same name, and nothing else there is deleted. The tree is received beside the destination,
//! so even a SIGKILL (which no cleanup survives) leaves the destination as it was; where that
//! is impossible (the destination is a mount point, or its parent is read-only) it is received
//! inside, which is on the same filesystem and writable whenever the destination is. Every
//! step is by descriptor: the destination is walked once (src/safefs) and merged with
//! renameat, so no link planted during the build redirects a write.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::temps::Temp;
use crate::safefs::protect::{may_use_existing, refusal};
use crate::safefs::resolve::{resolve, Place, Resolved};
use crate::safefs::{self, Dir, Kind, Stat};

/// Where one local export is being received, and how it goes in place.
#[derive(Debug)]
pub struct DirTarget {
    temp: Temp,
    /// The received tree's top, open.
    received: Dir,
    into: Into,
    /// Where the tree goes, as walked (for messages).
    dest_path: PathBuf,
}

#[derive(Debug)]
enum Into {
    /// An existing directory, merged into.
    Merge { dest: Dir },
    /// Nothing yet: the missing parents are made in `dir`, then the tree renamed to `name`.
    New {
        dir: Arc<Dir>,
        missing: Vec<OsString>,
        name: OsString,
    },
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what)
}

impl DirTarget {
    /// Makes the temporary directory for an export to `dest`.
    pub fn prepare(dest: &Path) -> io::Result<DirTarget> {
        let euid = nix::unistd::geteuid().as_raw();
        let place = walk_to_dir(dest, euid)?;
        let dir = Arc::new(place.dir.try_clone()?);
        let Some(name) = place.name.clone() else {
            // The path names the directory itself (`.`): received inside it.
            let (received, temp) = Temp::new_dir(&dir, &place.dir_path, ".bkrun-export-")?;
            return Ok(DirTarget {
                temp,
                received,
                into: Into::Merge { dest: place.dir },
                dest_path: place.dir_path,
            });
        };
        let prefix = format!(".{}.bkrun-", name.to_string_lossy());
        match place.node {
            Some(node) if node.kind == Kind::Dir => {
                merge_into_existing(place, name, node, dir, &prefix, euid)
            }
            Some(_) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} exists and is not a directory", place.path().display()),
            )),
            None => {
                if dangling(dest, euid) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} is a symlink to nothing", dest.display()),
                    ));
                }
                let (received, temp) = Temp::new_dir(&dir, &place.dir_path, &prefix)?;
                let dest_path = place.path();
                Ok(DirTarget {
                    temp,
                    received,
                    dest_path,
                    into: Into::New {
                        dir,
                        missing: place.missing,
                        name,
                    },
                })
            }
        }
    }

    /// Proves an export to `dest` can be received: prepares its temporary directory (and
    /// removes it), so a destination where nothing can be made fails before any daemon starts.
    pub fn probe(dest: &Path) -> io::Result<()> {
        DirTarget::prepare(dest).map(drop)
    }

    /// The directory the tree is received into (private: 0700, this user's).
    pub fn receive_dir(&self) -> &Path {
        self.temp.path()
    }

    /// Puts the received tree in place (after a successful build).
    pub fn commit(self) -> io::Result<()> {
        match &self.into {
            Into::New { dir, missing, name } => {
                let parent = make_dirs(dir, missing)?;
                // The tree was private while it filled; in place it has the mode a mkdir gives.
                self.received.chmod(0o777 & !safefs::umask())?;
                match self.temp.dir().rename_at(self.temp.name(), &parent, name) {
                    Ok(()) => {
                        self.temp.keep();
                        Ok(())
                    }
                    // Someone made the directory while the build ran: merge into it instead.
                    Err(e) => match parent.sub(name) {
                        Ok(dest) => merge(&self.received, &dest, &self.dest_path),
                        Err(_) => Err(e),
                    },
                }
            }
            Into::Merge { dest, .. } => merge(&self.received, dest, &self.dest_path),
        }
        // Dropping the temp removes what is left of it: empty directories.
    }
}

/// A local export into the existing directory `name` (facts `node`) in `place.dir`: received
/// beside it when the same filesystem allows, else inside it, then merged in.
fn merge_into_existing(
    place: Place,
    name: OsString,
    node: Stat,
    dir: Arc<Dir>,
    prefix: &str,
    euid: u32,
) -> io::Result<DirTarget> {
    may_write_into(&place, &node, euid)?;
    let dest_dir = place.dir.sub(&name)?;
    let opened = dest_dir.stat()?;
    if !opened.same_node(&node) {
        return Err(refused(format!(
            "{} was replaced while bkrun was opening it; nothing was written",
            place.path().display()
        )));
    }
    // A rename cannot cross into another filesystem (a volume mounted at dest).
    let beside = (opened.dev == place.dir_stat.dev)
        .then(|| Temp::new_dir(&dir, &place.dir_path, prefix).ok())
        .flatten();
    let path = place.path();
    let (received, temp) = match beside {
        Some(t) => t,
        // Not allowed to write beside it: inside, where writing is what was asked.
        None => {
            let inside = Arc::new(dest_dir.try_clone()?);
            Temp::new_dir(&inside, &path, ".bkrun-export-")?
        }
    };
    Ok(DirTarget {
        temp,
        received,
        into: Into::Merge { dest: dest_dir },
        dest_path: path,
    })
}

/// The directory an OCI image layout is written into, made if missing (mode 0777 less the
/// umask), under the same rules as an export's destination; returned as walked (links
/// replaced by where they lead), so the store's later paths go through no link at all.
pub fn layout_dir(dest: &Path) -> io::Result<PathBuf> {
    let euid = nix::unistd::geteuid().as_raw();
    let place = walk_to_dir(dest, euid)?;
    let path = place.path();
    let Some(name) = &place.name else {
        return Ok(path);
    };
    match place.node {
        Some(node) if node.kind != Kind::Dir => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} exists and is not a directory", path.display()),
        )),
        Some(node) => may_write_into(&place, &node, euid).map(|()| path),
        None if dangling(dest, euid) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is a symlink to nothing", dest.display()),
        )),
        None => {
            let mut names = place.missing.clone();
            names.push(name.clone());
            make_dirs(&place.dir, &names)?;
            Ok(path)
        }
    }
}

/// Walks `dest` (links followed under the shared-directory rules) for a directory to write
/// into; one of bkrun's own descriptors is not one.
fn walk_to_dir(dest: &Path, euid: u32) -> io::Result<Place> {
    match resolve(dest, euid, true)? {
        Resolved::Fd(_) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dest.display()),
        )),
        Resolved::At(p) => Ok(*p),
    }
}

/// The existing directory `node` at `place` may be written into: not another user's in a
/// shared sticky directory.
fn may_write_into(place: &Place, node: &Stat, euid: u32) -> io::Result<()> {
    if may_use_existing(&place.dir_stat, node, euid) {
        return Ok(());
    }
    let r = refusal(&place.path(), node, &place.dir_path, &place.dir_stat);
    Err(refused(r.to_string()))
}

/// Makes each of `names` (the next inside the last), mode 0777 less the umask, by descriptor
/// from `dir`; one that appeared meanwhile is used as it is. The last one, open.
fn make_dirs(dir: &Dir, names: &[OsString]) -> io::Result<Dir> {
    let mut parent = dir.try_clone()?;
    for m in names {
        match parent.mkdir_at(m, 0o777) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        parent = parent.sub(m)?;
    }
    Ok(parent)
}

/// `dest` is a symlink whose target does not exist (an export must not create it).
fn dangling(dest: &Path, euid: u32) -> bool {
    matches!(
        resolve(dest, euid, false),
        Ok(Resolved::At(p)) if p.node.is_some_and(|n| n.kind == Kind::Symlink)
    )
}

/// Moves every entry of `src` into `dst`, replacing entries of the same name; directories on
/// both sides are merged, and take the received directory's mode and times.
fn merge(src: &Dir, dst: &Dir, dst_path: &Path) -> io::Result<()> {
    for name in src.names()? {
        let Some(new) = src.stat_at(&name)? else {
            continue;
        };
        let old = dst.stat_at(&name)?;
        match old {
            Some(old) if old.kind == Kind::Dir && new.kind == Kind::Dir => {
                let from = src.sub(&name)?;
                let to = dst.sub(&name)?;
                // Emptied first, so it must be writable until then; its own mode comes back after.
                from.chmod(new.mode | 0o700)?;
                merge(&from, &to, &dst_path.join(&name))?;
                to.chmod(new.mode)?;
                to.set_times(new.mtime * 1_000_000_000 + new.mtime_nsec)?;
            }
            // A rename replaces a file with a file, or a directory with nothing, atomically.
            None => src.rename_at(&name, dst, &name)?,
            Some(old) if old.kind != Kind::Dir && new.kind != Kind::Dir => {
                src.rename_at(&name, dst, &name)?
            }
            // Across the directory line no rename replaces: the old entry is moved aside first,
            // and back if the new one cannot go in, so it is never lost.
            Some(_) => {
                let dst_arc = Arc::new(dst.try_clone()?);
                let (aside_dir, aside) = Temp::new_dir(&dst_arc, dst_path, ".bkrun-old-")?;
                dst.rename_at(&name, &aside_dir, &name)?;
                if let Err(e) = src.rename_at(&name, dst, &name) {
                    let back = aside_dir.rename_at(&name, dst, &name);
                    // Kept either way: emptied, or holding the only copy of the old entry.
                    let kept = aside.keep();
                    if back.is_err() {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "{e}; the old {} is kept in {}",
                                name.to_string_lossy(),
                                kept.display()
                            ),
                        ));
                    }
                    if let Some(n) = kept.file_name() {
                        let _ = dst.unlink_at(n, true);
                    }
                    return Err(e);
                }
                // Dropping `aside` removes the old entry with it.
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_missing_destination_gets_the_tree_by_one_rename() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("a/b/out");
        let t = DirTarget::prepare(&dest).unwrap();
        assert_eq!(t.receive_dir().parent().unwrap(), d.path());
        let mode = std::fs::metadata(t.receive_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "private while it fills");
        std::fs::write(t.receive_dir().join("f"), "x").unwrap();
        assert!(!dest.exists());
        t.commit().unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "x");
        assert_eq!(names(d.path()), ["a"]);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_ne!(mode & 0o077, 0, "the umask's mode, not a temp dir's 0700");
    }

    #[test]
    fn an_existing_destination_is_merged_into_and_keeps_other_files() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("mine.txt"), "user").unwrap();
        std::fs::write(dest.join("sub/keep"), "user").unwrap();
        std::fs::write(dest.join("same"), "old").unwrap();
        std::fs::write(dest.join("was-file"), "old").unwrap();
        std::fs::create_dir_all(dest.join("was-dir/deep")).unwrap();

        let t = DirTarget::prepare(&dest).unwrap();
        let r = t.receive_dir().to_path_buf();
        // Beside it: a SIGKILL now would leave the destination as it was.
        assert_eq!(r.parent().unwrap(), d.path());
        std::fs::create_dir_all(r.join("sub")).unwrap();
        std::fs::write(r.join("sub/new"), "build").unwrap();
        std::fs::set_permissions(r.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::write(r.join("same"), "build").unwrap();
        std::fs::create_dir(r.join("was-file")).unwrap();
        std::fs::write(r.join("was-dir"), "build").unwrap();
        t.commit().unwrap();

        assert_eq!(
            names(&dest),
            ["mine.txt", "same", "sub", "was-dir", "was-file"]
        );
        assert_eq!(names(&dest.join("sub")), ["keep", "new"]);
        assert_eq!(std::fs::read_to_string(dest.join("same")).unwrap(), "build");
        assert!(dest.join("was-file").is_dir());
        assert_eq!(
            std::fs::read_to_string(dest.join("was-dir")).unwrap(),
            "build"
        );
        let mode = std::fs::metadata(dest.join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555);
        std::fs::set_permissions(dest.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_dropped_target_leaves_the_destination_untouched() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("mine"), "user").unwrap();
        let t = DirTarget::prepare(&dest).unwrap();
        std::fs::write(t.receive_dir().join("mine"), "build").unwrap();
        drop(t);
        assert_eq!(names(&dest), ["mine"]);
        assert_eq!(std::fs::read_to_string(dest.join("mine")).unwrap(), "user");

        let missing = d.path().join("new");
        drop(DirTarget::prepare(&missing).unwrap());
        assert_eq!(names(d.path()), ["out"]);

        std::fs::write(d.path().join("file"), "x").unwrap();
        assert!(DirTarget::prepare(&d.path().join("file")).is_err());
        std::os::unix::fs::symlink("gone", d.path().join("dangling")).unwrap();
        let e = DirTarget::prepare(&d.path().join("dangling")).unwrap_err();
        assert!(e.to_string().ends_with("is a symlink to nothing"), "{e}");
    }

    #[test]
    fn a_link_planted_inside_the_destination_during_the_build_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let dest = d.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let t = DirTarget::prepare(&dest).unwrap();
        std::fs::create_dir(t.receive_dir().join("sub")).unwrap();
        std::fs::write(t.receive_dir().join("sub/f"), "build").unwrap();
        // Planted while the build ran: `sub` as a link to a directory elsewhere.
        std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
        t.commit().unwrap();
        assert_eq!(names(&outside), ["keep"]);
        assert!(dest.join("sub").symlink_metadata().unwrap().is_dir());
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/f")).unwrap(),
            "build"
        );
    }

    #[test]
    fn a_layout_dir_is_made_and_named_as_walked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", d.path().join("link")).unwrap();
        let made = layout_dir(&d.path().join("link/a/layout")).unwrap();
        assert_eq!(made, d.path().join("real/a/layout"));
        assert!(made.is_dir());
        assert_eq!(
            layout_dir(&d.path().join("link")).unwrap(),
            d.path().join("real")
        );
        std::fs::write(d.path().join("file"), "x").unwrap();
        assert!(layout_dir(&d.path().join("file")).is_err());
    }

    #[test]
    fn another_users_directory_in_a_shared_dir_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: planting another user's directory needs root (CI runs as root)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let planted = tmp.join("out");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let e = DirTarget::prepare(&planted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = layout_dir(&planted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("is a directory owned by uid 65534"),
            "{e}"
        );
        assert!(names(&planted).is_empty());
    }
}
