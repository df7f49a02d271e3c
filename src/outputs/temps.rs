//! Temporary files and dirs beside outputs, created private (0600/0700) by descriptor and remembered until they are put in place: whatever way bkrun ends (an error, a failed build, a signal, a dropped session), what is left is removed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::safefs::{self, remove::remove_at, Dir, Kind};

/// Every temporary entry still to be renamed into place or removed, by its path (for
/// messages), with the directory it is in. A global, because the signal path unwinds through
/// code that never saw the session's services.
static LIVE: Mutex<BTreeMap<PathBuf, (Arc<Dir>, OsString)>> = Mutex::new(BTreeMap::new());

fn live() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, (Arc<Dir>, OsString)>> {
    // A panic while holding the lock leaves the set as good as it was.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary file or directory that is removed when dropped, unless it was put in place.
#[derive(Debug)]
pub struct Temp {
    dir: Arc<Dir>,
    name: OsString,
    path: PathBuf,
    /// A flock on the entry itself while this run may still use it: the kernel drops it when
    /// bkrun dies, even by SIGKILL, which is how a later run knows the entry is abandoned.
    _owner: Option<Flock<File>>,
}

/// A fresh random name: PREFIX + 12 letters and digits.
fn random_name(prefix: &str) -> OsString {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // RandomState is seeded from the OS's randomness once per process and per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut n = h.finish();
    let mut s = String::from(prefix);
    for _ in 0..12 {
        s.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            n = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
        }
    }
    s.into()
}

impl Temp {
    /// A new empty file PREFIX… in `dir` (at `dir_path`), mode 0600: nobody else can open it
    /// while it fills.
    pub fn new_file(dir: &Arc<Dir>, dir_path: &Path, prefix: &str) -> io::Result<(File, Temp)> {
        sweep_abandoned(dir, prefix);
        for _ in 0..100 {
            let name = random_name(prefix);
            match dir.create_new(&name, 0o600) {
                Ok(f) => {
                    let owner = f.try_clone().ok().and_then(lock);
                    return Ok((f, Temp::remember(dir, dir_path, name, owner)));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(cannot_create(dir_path, e)),
            }
        }
        Err(io::Error::other("no free temporary name"))
    }

    /// A new empty directory PREFIX… in `dir`, mode 0700, and a descriptor on it.
    pub fn new_dir(dir: &Arc<Dir>, dir_path: &Path, prefix: &str) -> io::Result<(Dir, Temp)> {
        sweep_abandoned(dir, prefix);
        for _ in 0..100 {
            let name = random_name(prefix);
            match dir.mkdir_at(&name, 0o700) {
                Ok(()) => {
                    let sub = dir.sub(&name)?;
                    let owner = sub
                        .try_clone()
                        .ok()
                        .and_then(|d| lock(File::from(d.into_fd())));
                    return Ok((sub, Temp::remember(dir, dir_path, name, owner)));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(cannot_create(dir_path, e)),
            }
        }
        Err(io::Error::other("no free temporary name"))
    }

    fn remember(
        dir: &Arc<Dir>,
        dir_path: &Path,
        name: OsString,
        owner: Option<Flock<File>>,
    ) -> Temp {
        let path = dir_path.join(&name);
        live().insert(path.clone(), (dir.clone(), name.clone()));
        Temp {
            dir: dir.clone(),
            name,
            path,
            _owner: owner,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }

    pub fn dir(&self) -> &Arc<Dir> {
        &self.dir
    }

    /// The entry is in place now (renamed or emptied into its destination): forget it.
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
        // is not empty): the entry then stays remembered, for `sweep` once the transfer is over.
        if remove_at(&self.dir, &self.name, None).is_ok() {
            live().remove(&self.path);
        }
    }
}

/// A marker PREFIX… in the directory `dir` (already walked), flocked while the returned Temp
/// lives and removed when it goes: one a later run finds unlocked (`sweep_abandoned`) says that
/// what it marked was killed.
pub fn marker(dir: &Path, prefix: &str) -> io::Result<Temp> {
    let d = Arc::new(Dir::open(dir)?);
    let (_file, temp) = Temp::new_file(&d, dir, prefix)?;
    Ok(temp)
}

/// A private (0700) directory PREFIX… in TMPDIR, flocked while the returned Temp lives and
/// removed with it; those a killed run left (unlocked) are removed first.
pub fn private_dir(prefix: &str) -> io::Result<(PathBuf, Temp)> {
    let tmp = std::env::temp_dir();
    let d = Arc::new(Dir::open(&tmp).map_err(|e| cannot_create(&tmp, e))?);
    let (_dir, temp) = Temp::new_dir(&d, &tmp, prefix)?;
    Ok((temp.path().to_path_buf(), temp))
}

/// Why nothing can be made in `dir`, in one line with what to do.
fn cannot_create(dir: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot create files in {} (uid {} may not write there: {e}): choose a writable directory or fix its permissions",
            dir.display(),
            nix::unistd::geteuid()
        ),
    )
}

/// An exclusive flock on an open file or directory, unless someone holds one.
pub fn lock(f: File) -> Option<Flock<File>> {
    Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()
}

/// A temp is only taken for abandoned once it is this old: its creator locks it microseconds
/// after making it, and must not lose it in between.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// Removes the temps named PREFIX… in `dir` that no live run holds: what a SIGKILLed run left
/// beside its destination. Only this user's own files and directories are judged (a name
/// another user planted, a symlink, a FIFO, is not ours to touch). Returns how many went.
pub fn sweep_abandoned(dir: &Dir, prefix: &str) -> usize {
    let euid = nix::unistd::geteuid().as_raw();
    let Ok(names) = dir.names() else { return 0 };
    let mut removed = 0;
    for name in names {
        if !name.as_encoded_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        // O_NOFOLLOW|O_NONBLOCK: a symlink fails, a FIFO opens without waiting.
        let Ok(f) = dir.open_at(&name, libc::O_RDONLY, 0) else {
            continue;
        };
        let Ok(st) = safefs::fstat(std::os::fd::AsFd::as_fd(&f)) else {
            continue;
        };
        let ours = st.uid == euid && matches!(st.kind, Kind::File | Kind::Dir);
        if !ours || st.age() < ABANDONED_AFTER {
            continue;
        }
        let Some(_free) = lock(f) else { continue };
        if remove_at(dir, &name, Some(&st)).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Removes every temporary entry still remembered; returns those that could not be removed.
/// Called as bkrun ends, after the daemon is gone: a transfer still writing into a tree is
/// met by a few retries, and once a tree's top is gone nothing can be created in it.
pub fn sweep() -> Vec<(PathBuf, io::Error)> {
    sweep_under(None)
}

/// `sweep` of the paths under `root` only (tests share the process, and so the set).
fn sweep_under(root: Option<&Path>) -> Vec<(PathBuf, io::Error)> {
    let entries: Vec<(PathBuf, (Arc<Dir>, OsString))> = {
        let mut set = live();
        let mine: Vec<PathBuf> = set
            .keys()
            .filter(|p| root.is_none_or(|r| p.starts_with(r)))
            .cloned()
            .collect();
        mine.into_iter()
            .filter_map(|p| set.remove(&p).map(|e| (p, e)))
            .collect()
    };
    let mut failed = Vec::new();
    for (path, (dir, name)) in entries {
        let mut tries = 0;
        loop {
            match remove_at(&dir, &name, None) {
                Ok(()) => break,
                Err(_) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    failed.push((path, e));
                    break;
                }
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn open(p: &Path) -> Arc<Dir> {
        Arc::new(Dir::open(p).unwrap())
    }

    #[test]
    fn only_abandoned_temps_of_this_user_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(60);
        let age = |p: &Path| File::open(p).unwrap().set_modified(long_ago).unwrap();
        // A live run's (made first: making a temp sweeps its prefix).
        let dir = open(d.path());
        let (_, held) = Temp::new_dir(&dir, d.path(), ".out.bkrun-").unwrap();
        let live_path = held.path().to_path_buf();
        age(&live_path);
        // A SIGKILLed run's tree and file: nobody holds them.
        let dead_dir = d.path().join(".out.bkrun-dead");
        std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
        age(&dead_dir);
        let dead_file = d.path().join(".out.bkrun-file");
        std::fs::write(&dead_file, "partial").unwrap();
        age(&dead_file);
        // One just made whose owner may not have locked it yet.
        let young = d.path().join(".out.bkrun-young");
        std::fs::create_dir(&young).unwrap();
        let other = d.path().join("out");
        std::fs::create_dir(&other).unwrap();
        age(&other);
        // Planted names: a symlink to something of value and a FIFO; neither is followed,
        // opened for long, or removed.
        let victim = d.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join(".out.bkrun-link")).unwrap();
        nix::unistd::mkfifo(
            &d.path().join(".out.bkrun-fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(sweep_abandoned(&dir, ".out.bkrun-"), 2);
        assert!(!dead_dir.exists() && !dead_file.exists());
        assert!(live_path.exists() && young.exists() && other.exists());
        assert!(victim.join("f").exists());
        assert!(std::fs::symlink_metadata(d.path().join(".out.bkrun-fifo")).is_ok());
        drop(held);
        assert!(!live_path.exists());
    }

    #[test]
    fn temps_are_private_and_dropped_or_swept_ones_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = open(d.path());
        let (_, a) = Temp::new_file(&dir, d.path(), "a-").unwrap();
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let a_path = a.path().to_path_buf();
        drop(a);
        assert!(!a_path.exists());

        let (sub, b) = Temp::new_dir(&dir, d.path(), "b-").unwrap();
        let mode = std::fs::metadata(b.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        sub.mkdir_at(OsStr::new("ro"), 0o700).unwrap();
        let b_path = b.path().to_path_buf();
        std::fs::create_dir(b_path.join("ro/deep")).unwrap();
        std::fs::write(b_path.join("ro/deep/f"), "x").unwrap();
        std::fs::set_permissions(b_path.join("ro"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        std::mem::forget(b);
        let (_, c) = Temp::new_file(&dir, d.path(), "c-").unwrap();
        let kept = c.keep();
        assert!(sweep_under(Some(d.path())).is_empty());
        assert!(!b_path.exists());
        assert!(kept.exists());
    }
}
