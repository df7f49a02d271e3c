//! Temporary paths beside outputs, remembered until they are put in place: whatever way bkrun ends (an error, a failed build, a signal, a dropped session), what is left is removed.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Every temporary path still to be renamed into place or removed. A global, because the
/// signal path unwinds through code that never saw the session's services.
static LIVE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock leaves the set as good as it was.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary file or directory that is removed when dropped, unless it was put in place.
#[derive(Debug)]
pub struct Temp {
    path: PathBuf,
}

impl Temp {
    /// Remembers `path`, which the caller has just created.
    pub fn register(path: PathBuf) -> Temp {
        live().insert(path.clone());
        Temp { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path is in place now (renamed or emptied into its destination): forget it.
    pub fn keep(self) -> PathBuf {
        live().remove(&self.path);
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // A transfer still writing into the tree can make this fail (a directory it just filled
        // is not empty): the path then stays remembered, for `sweep` once the transfer is over.
        if remove(&self.path).is_ok() {
            live().remove(&self.path);
        }
    }
}

/// Removes every temporary path still remembered; returns those that could not be removed.
/// Called as bkrun ends, after the daemon is gone: a transfer still writing into a tree is
/// met by a few retries, and once a tree's top is gone nothing can be created in it.
pub fn sweep() -> Vec<(PathBuf, io::Error)> {
    sweep_under(None)
}

/// `sweep` of the paths under `root` only (tests share the process, and so the set).
fn sweep_under(root: Option<&Path>) -> Vec<(PathBuf, io::Error)> {
    let paths: Vec<PathBuf> = {
        let mut set = live();
        let mine: Vec<PathBuf> = set
            .iter()
            .filter(|p| root.is_none_or(|r| p.starts_with(r)))
            .cloned()
            .collect();
        for p in &mine {
            set.remove(p);
        }
        mine
    };
    let mut failed = Vec::new();
    for p in paths {
        let mut tries = 0;
        loop {
            match remove(&p) {
                Ok(()) => break,
                Err(_) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    failed.push((p, e));
                    break;
                }
            }
        }
    }
    failed
}

/// Removes a file or a whole tree; a path already gone is fine.
pub fn remove(p: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if m.is_dir() => {
            make_writable(p);
            std::fs::remove_dir_all(p)
        }
        Ok(_) => std::fs::remove_file(p),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A received tree may hold read-only directories, which would stop a non-root owner from
/// emptying them.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    if m.permissions().mode() & 0o700 != 0o700 {
        let mode = m.permissions().mode() | 0o700;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_and_swept_paths_are_removed_kept_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, "x").unwrap();
        drop(Temp::register(a.clone()));
        assert!(!a.exists());

        let b = d.path().join("b");
        std::fs::create_dir_all(b.join("ro/deep")).unwrap();
        std::fs::write(b.join("ro/deep/f"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(b.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let t = Temp::register(b.clone());
        std::mem::forget(t);
        let c = d.path().join("c");
        std::fs::write(&c, "x").unwrap();
        let kept = Temp::register(c.clone()).keep();
        assert!(sweep_under(Some(d.path())).is_empty());
        assert!(!b.exists());
        assert!(kept.exists());
    }
}
