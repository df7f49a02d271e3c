//! Temporary paths beside outputs, remembered until they are put in place: whatever way bkrun ends (an error, a failed build, a signal, a dropped session), what is left is removed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::Flock;

use crate::ownerlock;

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
    /// A flock on the path itself while this run may still use it: the kernel drops it when
    /// bkrun dies, even by SIGKILL, which is how a later run knows the path is abandoned.
    _owner: Option<Flock<File>>,
}

impl Temp {
    /// Remembers `path`, which the caller has just created, and marks it as this run's.
    pub fn register(path: PathBuf) -> Temp {
        live().insert(path.clone());
        let owner = crate::ownerlock::try_lock(&path);
        Temp {
            path,
            _owner: owner,
        }
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

/// A temp is only taken for abandoned once it is this old: its creator locks it microseconds
/// after making it, and must not lose it in between.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// Removes the temps named PREFIX… in `dir` that no live run holds: what a SIGKILLed run left
/// beside its destination. Returns how many went.
pub fn sweep_abandoned(dir: &Path, prefix: &str) -> usize {
    let mut removed = 0;
    for path in ownerlock::named(dir, prefix) {
        let old = ownerlock::age(&path).is_some_and(|age| age >= ABANDONED_AFTER);
        let free = ownerlock::try_lock(&path);
        if old && free.is_some() && remove(&path).is_ok() {
            removed += 1;
        }
    }
    removed
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
    fn only_abandoned_temps_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(60);
        let age = |p: &Path| File::open(p).unwrap().set_modified(long_ago).unwrap();
        // A SIGKILLed run's tree and file: nobody holds them.
        let dead_dir = d.path().join(".out.bkrun-dead");
        std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
        age(&dead_dir);
        let dead_file = d.path().join(".out.bkrun-file");
        std::fs::write(&dead_file, "partial").unwrap();
        age(&dead_file);
        // A live run's, and one just made whose owner may not have locked it yet.
        let live = d.path().join(".out.bkrun-live");
        std::fs::create_dir(&live).unwrap();
        let held = Temp::register(live.clone());
        age(&live);
        let young = d.path().join(".out.bkrun-young");
        std::fs::create_dir(&young).unwrap();
        let other = d.path().join("out");
        std::fs::create_dir(&other).unwrap();
        age(&other);
        assert_eq!(sweep_abandoned(d.path(), ".out.bkrun-"), 2);
        assert!(!dead_dir.exists() && !dead_file.exists());
        assert!(live.exists() && young.exists() && other.exists());
        drop(held);
        assert!(!live.exists());
    }

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
