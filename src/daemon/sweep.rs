//! Removing what runs that died left behind: their run dirs (with any mounts in them) and their sockets.
//!
//! A run holds a flock on `owner.lock` in its run dir for its whole life; the kernel lets go of
//! it when the process dies, even by SIGKILL. So a run dir whose lock can be taken has no owner.
//! The lock file is created under another name, locked, then renamed into place, so a sweeper
//! never sees an `owner.lock` that is not locked yet.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::host::Host;
use crate::ownerlock;

const OWNER_LOCK: &str = "owner.lock";
/// The socket a run dir's daemon serves at, when it is outside the run dir.
const SOCKET_RECORD: &str = "socket";
/// Run dirs and sockets are named so.
const PREFIX: &str = "bkrun-";
/// A socket that refuses connections is only taken for dead when it is older than this: a
/// daemon binds and listens in one go, so a live one refuses for microseconds at most.
const SOCKET_MIN_AGE: Duration = Duration::from_secs(60);

/// The lock that marks a run dir as in use; dropped (or the process gone), the dir is free.
pub struct Owner {
    _lock: Flock<File>,
}

/// Marks `run_dir` as owned by this process, recording `socket` when it lives elsewhere.
pub fn claim(run_dir: &Path, socket: &Path) -> Result<Owner> {
    let tmp = run_dir.join(".owner.lock");
    let f = File::create(&tmp).context("cannot create the run dir's owner lock")?;
    let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .context("cannot lock the run dir's owner lock")?;
    if !socket.starts_with(run_dir) {
        let mut rec = File::create(run_dir.join(SOCKET_RECORD))?;
        rec.write_all(socket.as_os_str().as_encoded_bytes())?;
    }
    fs::rename(&tmp, run_dir.join(OWNER_LOCK))?;
    Ok(Owner { _lock: lock })
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub run_dirs: Vec<PathBuf>,
    pub sockets: Vec<PathBuf>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.run_dirs.is_empty() && self.sockets.is_empty()
    }
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: &[PathBuf], one: &str, many: &str| match v.len() {
            1 => format!("1 {one}"),
            k => format!("{k} {many}"),
        };
        write!(
            f,
            "removed {} and {} left by runs that were killed",
            n(&self.run_dirs, "run dir", "run dirs"),
            n(&self.sockets, "socket", "sockets")
        )
    }
}

/// Removes the run dirs in `temp_dir` whose owner is dead (detaching mounts first, never
/// crossing one), the sockets they record, and dead `bkrun-*.sock` sockets in `socket_dir`.
pub fn sweep(host: &dyn Host, temp_dir: &Path, socket_dir: Option<&Path>) -> Swept {
    let mut swept = Swept::default();
    for dir in ownerlock::named(temp_dir, PREFIX) {
        // None: its owner lives (or another sweeper has it), or it is not ours (no lock file).
        let Some(_held) = ownerlock::try_lock(&dir.join(OWNER_LOCK)) else {
            continue;
        };
        let socket = fs::read(dir.join(SOCKET_RECORD))
            .ok()
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
        let dead_socket = socket.filter(|s| fs::symlink_metadata(s).is_ok() && !answers(s));
        super::supervisor::remove_run_files(
            host,
            dead_socket.as_deref().unwrap_or(Path::new("")),
            &dir,
        );
        swept.sockets.extend(dead_socket);
        swept.run_dirs.push(dir);
    }
    if let Some(sd) = socket_dir {
        for s in ownerlock::named(sd, PREFIX) {
            let is_socket = s.extension().is_some_and(|e| e == "sock");
            if is_socket && old_enough(&s) && !answers(&s) && fs::remove_file(&s).is_ok() {
                swept.sockets.push(s);
            }
        }
    }
    swept
}

/// A daemon accepts on `socket` (anything but a refusal counts as alive).
fn answers(socket: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => true,
        Err(e) => !matches!(
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            Errno::ECONNREFUSED | Errno::ENOENT
        ),
    }
}

fn old_enough(p: &Path) -> bool {
    ownerlock::age(p).is_some_and(|age| age >= SOCKET_MIN_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn only_dirs_whose_owner_is_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let sockets = tempfile::tempdir().unwrap();
        let live = tmp.path().join("bkrun-live");
        let dead = tmp.path().join("bkrun-dead");
        let foreign = tmp.path().join("bkrun-older-version");
        for d in [&live, &dead, &foreign] {
            fs::create_dir(d).unwrap();
            fs::write(d.join("buildkitd.log"), "x").unwrap();
        }
        let dead_sock = sockets.path().join("bkrun-1-dead.sock");
        // A socket file with no listener, as a SIGKILLed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&dead_sock).unwrap());
        let _owner = claim(&live, &sockets.path().join("bkrun-2-live.sock")).unwrap();
        drop(claim(&dead, &dead_sock).unwrap());
        let swept = sweep(&FakeHost::user(), tmp.path(), Some(sockets.path()));
        assert_eq!(swept.run_dirs, std::slice::from_ref(&dead));
        assert_eq!(swept.sockets, std::slice::from_ref(&dead_sock));
        assert!(live.join("buildkitd.log").exists());
        assert!(
            foreign.exists(),
            "a dir without an owner lock is not ours to judge"
        );
        assert!(!dead.exists() && !dead_sock.exists());
        assert_eq!(
            swept.to_string(),
            "removed 1 run dir and 1 socket left by runs that were killed"
        );
    }

    #[test]
    fn a_young_refusing_socket_and_a_serving_one_stay() {
        let sockets = tempfile::tempdir().unwrap();
        let young = sockets.path().join("bkrun-3-young.sock");
        drop(std::os::unix::net::UnixListener::bind(&young).unwrap());
        let serving = sockets.path().join("bkrun-4-serving.sock");
        let _l = std::os::unix::net::UnixListener::bind(&serving).unwrap();
        let swept = sweep(
            &FakeHost::user(),
            Path::new("/nonexistent"),
            Some(sockets.path()),
        );
        assert!(swept.is_empty());
        assert!(young.exists() && serving.exists());
    }
}
