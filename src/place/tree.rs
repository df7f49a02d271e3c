//! A `type=local` export's tree: received into a temporary directory and put in place only once the build succeeded, merged into an existing destination so none of the user's other files is lost.
//!
//! A missing destination gets the whole tree by one rename. An existing directory is merged
//! into, as buildctl's exporter writes into it: each received entry replaces the entry of the
//! same name, and nothing else there is deleted. The tree is received beside the destination,
//! so even a SIGKILL (which no cleanup survives) leaves the destination as it was; where that
//! is impossible (the destination is a mount point, or its parent is read-only) it is received
//! inside, which is on the same filesystem and writable whenever the destination is.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::parent_of;
use super::temps::Temp;

/// Where one local export is being received, and how it goes in place.
#[derive(Debug)]
pub struct DirTarget {
    dest: PathBuf,
    temp: Temp,
    merge: bool,
}

impl DirTarget {
    /// Makes the temporary directory for an export to `dest`.
    pub fn prepare(dest: &Path) -> io::Result<DirTarget> {
        match std::fs::metadata(dest) {
            Ok(m) if m.is_dir() => {
                // Followed to where it leads, so a link to a directory stays a link.
                let real = std::fs::canonicalize(dest)?;
                let beside = real.parent().filter(|p| {
                    // A rename cannot cross into another filesystem (a volume mounted at dest).
                    std::fs::metadata(p).is_ok_and(|pm| pm.dev() == m.dev())
                });
                let name = real
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let temp = match beside.map(|p| make_dir_in(p, &format!(".{name}.bkrun-"))) {
                    Some(Ok(t)) => t,
                    // Not allowed to write beside it: inside, where writing is what was asked.
                    _ => make_dir_in(&real, ".bkrun-export-")?,
                };
                Ok(DirTarget {
                    dest: real,
                    temp,
                    merge: true,
                })
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} exists and is not a directory", dest.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(dest).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} is a symlink to nothing", dest.display()),
                    ));
                }
                let name = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let temp = make_dir_in(&nearest_existing(dest), &format!(".{name}.bkrun-"))?;
                Ok(DirTarget {
                    dest: dest.to_path_buf(),
                    temp,
                    merge: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The directory the tree is received into.
    pub fn receive_dir(&self) -> &Path {
        self.temp.path()
    }

    /// Puts the received tree in place (after a successful build).
    pub fn commit(self) -> io::Result<()> {
        if !self.merge {
            std::fs::create_dir_all(parent_of(&self.dest))?;
            match std::fs::rename(self.temp.path(), &self.dest) {
                Ok(()) => {
                    self.temp.keep();
                    return Ok(());
                }
                // Someone made the directory while the build ran: merge into it instead.
                Err(e) if std::fs::metadata(&self.dest).is_ok_and(|m| m.is_dir()) => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        merge(self.temp.path(), &self.dest)
        // Dropping the temp removes what is left of it: empty directories.
    }
}

/// The closest ancestor of `p` that exists (the destination's missing parents are made only
/// when it is put in place).
fn nearest_existing(p: &Path) -> PathBuf {
    let mut d = parent_of(p);
    while std::fs::symlink_metadata(d).is_err() {
        d = parent_of(d);
        if d == Path::new(".") || d == Path::new("/") {
            break;
        }
    }
    d.to_path_buf()
}

/// A new directory in `dir` named PREFIX + random, with the mode a plain mkdir would give.
fn make_dir_in(dir: &Path, prefix: &str) -> io::Result<Temp> {
    let made = tempfile::Builder::new()
        .prefix(prefix)
        .make_in(dir, |p| std::fs::DirBuilder::new().mode(0o777).create(p))?;
    let path = made.into_temp_path().keep().map_err(|e| e.error)?;
    Ok(Temp::register(path))
}

/// Moves every entry of `src` into `dst`, replacing entries of the same name; directories on
/// both sides are merged, and take the received directory's mode and times.
fn merge(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let new = std::fs::symlink_metadata(&from)?;
        let old = match std::fs::symlink_metadata(&to) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match old {
            Some(old) if old.is_dir() && new.is_dir() => {
                // Emptied first, so it must be writable until then; its own mode comes back after.
                let mode = new.permissions().mode();
                std::fs::set_permissions(&from, std::fs::Permissions::from_mode(mode | 0o700))?;
                merge(&from, &to)?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o7777))?;
                let nanos = new.mtime() * 1_000_000_000 + new.mtime_nsec();
                crate::fsutil::sys::set_times_nofollow(&to, nanos)?;
            }
            // A rename replaces a file with a file, or a directory with nothing, atomically.
            None => std::fs::rename(&from, &to)?,
            Some(old) if !old.is_dir() && !new.is_dir() => std::fs::rename(&from, &to)?,
            // Across the directory line no rename replaces: the old entry is moved aside first,
            // and back if the new one cannot go in, so it is never lost.
            Some(_) => {
                let aside = make_dir_in(dst, ".bkrun-old-")?;
                let moved = aside.path().join(entry.file_name());
                std::fs::rename(&to, &moved)?;
                if let Err(e) = std::fs::rename(&from, &to) {
                    let back = std::fs::rename(&moved, &to);
                    // Kept either way: emptied, or holding the only copy of the old entry.
                    let aside = aside.keep();
                    if back.is_err() {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "{e}; the old {} is kept in {}",
                                to.display(),
                                aside.display()
                            ),
                        ));
                    }
                    let _ = std::fs::remove_dir(aside);
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
    }
}
