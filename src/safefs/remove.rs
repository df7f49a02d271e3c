//! Removing a file or a whole tree by descriptors: each directory is opened with O_NOFOLLOW and emptied with unlinkat, so no rename during the removal can point it elsewhere, and nothing on another device (a mount still there) is entered.

use std::ffi::OsStr;
use std::io;

use super::{Dir, Kind, Stat};

/// Removes `name` in `dir`, a file or a tree. With `expect`, a directory is removed only if it
/// is still that inode (what was judged is what goes). A subdirectory on another device (a
/// mount) stays, and so does its parent; everything else that can go, goes. A read-only
/// directory of this user's is made writable first (received trees hold them).
pub fn remove_at(dir: &Dir, name: &OsStr, expect: Option<&Stat>) -> io::Result<()> {
    let Some(st) = dir.stat_at(name)? else {
        return Ok(());
    };
    if st.kind != Kind::Dir {
        return ignore_gone(dir.unlink_at(name, false));
    }
    let sub = match dir.sub(name) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let opened = sub.stat()?;
    if expect.is_some_and(|want| !want.same_node(&opened)) || !st.same_node(&opened) {
        return Err(io::Error::other(format!(
            "{} changed while it was being removed; left as it is",
            name.to_string_lossy()
        )));
    }
    let parent_dev = dir.stat()?.dev;
    if opened.dev != parent_dev {
        // A mount point: its contents belong to another filesystem.
        return Err(io::Error::other(format!(
            "{} is a mount point; left as it is",
            name.to_string_lossy()
        )));
    }
    empty(&sub, &opened)?;
    ignore_gone(dir.unlink_at(name, true))
}

/// Removes everything in `dir` (whose facts are `st`) that is on its device.
pub fn empty(dir: &Dir, st: &Stat) -> io::Result<()> {
    if st.mode & 0o700 != 0o700 {
        // Best effort: only the owner (or root) may; the unlinks below then say why not.
        let _ = dir.chmod(st.mode | 0o700);
    }
    let mut first_err = None;
    for name in dir.names()? {
        let r = match dir.stat_at(&name) {
            Ok(Some(child)) if child.kind == Kind::Dir && child.dev != st.dev => {
                Err(io::Error::other(format!(
                    "{} is a mount point; left as it is",
                    name.to_string_lossy()
                )))
            }
            Ok(Some(child)) if child.kind == Kind::Dir => remove_at(dir, &name, Some(&child)),
            // Not a directory: unlinked without a second look (unlinkat never follows a link).
            Ok(Some(_)) => ignore_gone(dir.unlink_at(&name, false)),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn ignore_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_tree_goes_and_links_out_of_it_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let t = d.path().join("tree");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/link")).unwrap();
        std::fs::set_permissions(t.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        remove_at(&dir, OsStr::new("tree"), None).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists());
        // A symlink named as the tree is removed itself, never what it names.
        std::os::unix::fs::symlink(&outside, d.path().join("tree")).unwrap();
        remove_at(&dir, OsStr::new("tree"), None).unwrap();
        assert!(outside.join("keep").exists());
        assert!(std::fs::symlink_metadata(d.path().join("tree")).is_err());
    }

    #[test]
    fn a_swapped_directory_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("judged")).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let judged = dir.stat_at(OsStr::new("judged")).unwrap().unwrap();
        // Made while the judged one still exists, so it cannot reuse its inode number.
        std::fs::create_dir(d.path().join("other")).unwrap();
        std::fs::write(d.path().join("other/f"), "x").unwrap();
        std::fs::remove_dir(d.path().join("judged")).unwrap();
        std::fs::rename(d.path().join("other"), d.path().join("judged")).unwrap();
        assert!(remove_at(&dir, OsStr::new("judged"), Some(&judged)).is_err());
        assert!(d.path().join("judged/f").exists());
        // Swapped for a symlink to a directory of value: the link goes, never what it names.
        std::fs::rename(d.path().join("judged"), d.path().join("valuable")).unwrap();
        std::os::unix::fs::symlink("valuable", d.path().join("judged")).unwrap();
        remove_at(&dir, OsStr::new("judged"), Some(&judged)).unwrap();
        assert!(d.path().join("valuable/f").exists());
        assert!(std::fs::symlink_metadata(d.path().join("judged")).is_err());
    }
}
