//! One run per state dir: the lock bkrun holds on it while its daemon lives, waiting for another run to let go, and the record an unclean end leaves for the next run.
//!
//! buildkitd itself flocks `buildkitd.lock` and exits with a Go stack trace when it can't; bkrun
//! takes its own `bkrun.lock` first, so a second run can wait and explain instead. The lock file
//! holds the owner's pid while a run is on; a clean end empties it. Finding it non-empty when the
//! lock is free means the last run ended without a clean stop (it was SIGKILLed, or its daemon
//! was): BuildKit may then have left records half-updated, which the caller repairs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub const LOCK_FILE: &str = "bkrun.lock";
const BUILDKITD_LOCK: &str = "buildkitd.lock";
/// How often a waiting run tries the locks again: a free lock is taken within this.
const RETRY: Duration = Duration::from_millis(100);

/// The state dir, held.
#[derive(Debug)]
pub struct StateLock {
    lock: Flock<File>,
    /// What the previous run left: `Some(owner)` when it did not end cleanly.
    pub unclean_before: Option<String>,
}

/// Who holds the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Another bkrun run: its pid, and how long it has held the dir.
    Bkrun { pid: String, held: Option<Duration> },
    /// A buildkitd bkrun did not start (or one still exiting).
    Buildkitd,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Bkrun { pid, held } => {
                write!(f, "another bkrun run (pid {pid}")?;
                if let Some(h) = held {
                    write!(f, ", for {}s", h.as_secs())?;
                }
                write!(f, ")")
            }
            Holder::Buildkitd => write!(f, "another buildkitd (it holds {BUILDKITD_LOCK})"),
        }
    }
}

impl StateLock {
    /// Takes the state dir (created if missing) once, or says who holds it.
    pub fn try_acquire(dir: &Path) -> Result<Result<StateLock, Holder>> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open {}: make the state dir writable by uid {}, or pass --root with one that is",
                    path.display(),
                    nix::unistd::geteuid()
                )
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((f, Errno::EWOULDBLOCK)) => return Ok(Err(owner(f))),
            Err((_, e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        };
        if buildkitd_holds(dir) {
            return Ok(Err(Holder::Buildkitd));
        }
        let mut before = String::new();
        let _ = lock.read_to_string(&mut before);
        let before = before.trim();
        let unclean_before = (!before.is_empty()).then(|| before.to_string());
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        lock.sync_data()?;
        Ok(Ok(StateLock {
            lock,
            unclean_before,
        }))
    }

    /// Takes the state dir, waiting up to `timeout` while another run holds it; `waiting` is
    /// told once, when the wait begins.
    pub async fn acquire(
        dir: &Path,
        timeout: Duration,
        mut waiting: impl FnMut(&Holder),
    ) -> Result<StateLock> {
        let start = Instant::now();
        let mut told = false;
        loop {
            let holder = match Self::try_acquire(dir)? {
                Ok(l) => return Ok(l),
                Err(h) => h,
            };
            if timeout.is_zero() {
                bail!(
                    "state dir {} is in use by {holder}: wait for it to finish, give this run its own --root, or pass --lock-timeout SECONDS to wait",
                    dir.display()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "state dir {} was still in use by {holder} after {}s: give this run its own --root, or raise --lock-timeout (lock_timeout in bkrun.toml)",
                    dir.display(),
                    timeout.as_secs()
                );
            }
            if !told {
                waiting(&holder);
                told = true;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The run ended cleanly: the next one finds nothing to repair.
    pub fn release_clean(self) {
        // Not synced: a truncation lost in a crash only makes the next run repair for nothing,
        // where an fdatasync on a disk-backed state dir is a journal commit on every run's exit.
        let _ = self.lock.set_len(0);
    }
}

/// Whether a buildkitd holds the state dir's own lock now.
fn buildkitd_holds(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(BUILDKITD_LOCK)) else {
        return false;
    };
    matches!(
        Flock::lock(f, FlockArg::LockExclusiveNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

/// The holder named in a lock file another run holds.
fn owner(mut f: File) -> Holder {
    let mut pid = String::new();
    let _ = f.read_to_string(&mut pid);
    let held = f
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    Holder::Bkrun {
        pid: match pid.trim() {
            "" => "unknown".into(),
            p => p.into(),
        },
        held,
    }
}

/// Creates the state dir bkrun will lock, private to its owner.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create state dir {}: pass --root with a writable directory",
                dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_told_who_holds_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let first = StateLock::try_acquire(d.path()).unwrap().unwrap();
        assert_eq!(first.unclean_before, None);
        match StateLock::try_acquire(d.path()).unwrap() {
            Err(Holder::Bkrun { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        first.release_clean();
        let again = StateLock::try_acquire(d.path()).unwrap().unwrap();
        assert_eq!(
            again.unclean_before, None,
            "a clean end leaves nothing to repair"
        );
    }

    #[test]
    fn an_end_without_release_is_reported_to_the_next_run() {
        let d = tempfile::tempdir().unwrap();
        let first = StateLock::try_acquire(d.path()).unwrap().unwrap();
        drop(first); // as if the process died: the lock goes, the record stays
        let next = StateLock::try_acquire(d.path()).unwrap().unwrap();
        assert_eq!(
            next.unclean_before.as_deref(),
            Some(std::process::id().to_string().as_str())
        );
    }

    #[test]
    fn a_foreign_buildkitd_holds_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join(BUILDKITD_LOCK)).unwrap();
        let _held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(
            StateLock::try_acquire(d.path()).unwrap().unwrap_err(),
            Holder::Buildkitd
        );
    }

    #[tokio::test]
    async fn no_wait_fails_at_once_and_a_wait_ends_when_the_holder_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let held = StateLock::try_acquire(d.path()).unwrap().unwrap();
        let e = StateLock::acquire(d.path(), Duration::ZERO, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in use by another bkrun run") && e.contains("--lock-timeout"),
            "{e}"
        );
        let path = d.path().to_path_buf();
        let t = Instant::now();
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            held.release_clean();
        });
        let mut told = 0;
        let got = StateLock::acquire(&path, Duration::from_secs(5), |_| told += 1)
            .await
            .unwrap();
        releaser.await.unwrap();
        assert_eq!(told, 1);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(got.unclean_before, None);
        let e = StateLock::acquire(&path, Duration::from_millis(250), |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("after 0s") || e.contains("still in use"), "{e}");
    }
}
