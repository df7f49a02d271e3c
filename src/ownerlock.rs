//! Ownership by flock: a run holds an exclusive lock on a file or directory it owns for as long as it lives, and the kernel lets go when the process dies, even by SIGKILL; so what can be locked has no live owner. Used for run dirs (daemon/sweep.rs) and temporary outputs (place/temps.rs).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

/// An exclusive lock on `path` (a file or a directory), unless someone holds one (or it
/// cannot be opened).
pub fn try_lock(path: &Path) -> Option<Flock<File>> {
    let f = File::open(path).ok()?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()
}

/// How long ago `path` itself (not what a link names) was last modified.
pub fn age(path: &Path) -> Option<Duration> {
    let modified = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// The entries of `dir` whose names start with `prefix` (none when it cannot be read).
pub fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(prefix.as_bytes())
        })
        .map(|e| e.path())
        .collect()
}
