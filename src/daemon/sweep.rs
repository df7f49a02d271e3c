//! Removing what runs that died left behind: their run dirs (with any mounts in them) and their sockets, and nothing that is not this user's own.
//!
//! A run holds a flock on `owner.lock` in its run dir for its whole life; the kernel lets go of
//! it when the process dies, even by SIGKILL. So a run dir whose lock can be taken has no owner.
//! The lock file is created under another name, locked, then renamed into place, so a sweeper
//! never sees an `owner.lock` that is not locked yet.
//!
//! The temp dir is shared (/tmp): anyone can plant a `bkrun-*` dir, a symlink, a FIFO as the
//! lock, a record naming /root/victim as the socket. So a run dir is judged only when it is a
//! real directory (opened O_NOFOLLOW) owned by this uid with mode 0700; the lock must be a
//! regular file (opened O_NOFOLLOW|O_NONBLOCK: a FIFO cannot block the sweep); a recorded
//! socket is removed only if it is a socket of this uid, named as bkrun names its sockets, in
//! the socket dir this run uses; and removal walks descriptors, never crossing a mount.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::Flock;

use crate::host::mountinfo;
use crate::host::Host;
use crate::outputs::temps::lock;
use crate::safefs::{self, remove::remove_at, Dir, Kind, Stat};

const OWNER_LOCK: &str = "owner.lock";
/// The socket a run dir's daemon serves at, when it is outside the run dir.
const SOCKET_RECORD: &str = "socket";
/// Run dirs and sockets are named so.
const PREFIX: &str = "bkrun-";
/// A socket that refuses connections is only taken for dead when it is older than this: a
/// daemon binds and listens in one go, so a live one refuses for microseconds at most.
const SOCKET_MIN_AGE: Duration = Duration::from_secs(60);
/// A socket record holds one path: anything longer than the longest path is not ours.
const RECORD_MAX: u64 = 4096;

/// The lock that marks a run dir as in use; dropped (or the process gone), the dir is free.
pub struct Owner {
    _lock: Flock<File>,
}

/// Marks `run_dir` (this run's own, fresh and private) as owned by this process, recording
/// `socket` when it lives elsewhere.
pub fn claim(run_dir: &Path, socket: &Path) -> Result<Owner> {
    let dir = Dir::open(run_dir).context("cannot open the run dir")?;
    let f = dir
        .create_new(OsStr::new(".owner.lock"), 0o600)
        .context("cannot create the run dir's owner lock")?;
    let lock = lock(f).context("cannot lock the run dir's owner lock")?;
    if !socket.starts_with(run_dir) {
        let mut rec = dir.create_new(OsStr::new(SOCKET_RECORD), 0o600)?;
        rec.write_all(socket.as_os_str().as_encoded_bytes())?;
    }
    dir.rename_at(OsStr::new(".owner.lock"), &dir, OsStr::new(OWNER_LOCK))?;
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

/// Removes this user's run dirs in `temp_dir` whose owner is dead (detaching mounts first,
/// never crossing one), the sockets they record in `socket_dir`, and dead `bkrun-*.sock`
/// sockets of this user's in `socket_dir`.
pub fn sweep(host: &dyn Host, temp_dir: &Path, socket_dir: Option<&Path>) -> Swept {
    let euid = host.euid();
    let mut swept = Swept::default();
    let sockets = socket_dir.and_then(|p| Dir::open(p).ok().map(|d| (d, p)));
    if let Ok(temp) = Dir::open(temp_dir) {
        for name in names_with_prefix(&temp) {
            let Some((run, st, _held)) = dead_run_dir(&temp, &name, euid) else {
                continue;
            };
            let path = temp_dir.join(&name);
            if let Some((sd, sd_path)) = &sockets {
                if let Some(s) = recorded_socket(&run, sd, sd_path, euid) {
                    if sd.unlink_at(&s, false).is_ok() {
                        swept.sockets.push(sd_path.join(s));
                    }
                }
            }
            drop(run);
            if remove_run_dir(host, &temp, &path, &name, Some(&st)) {
                swept.run_dirs.push(path);
            }
        }
    }
    if let Some((sd, sd_path)) = &sockets {
        for name in names_with_prefix(sd) {
            let is_sock_name = name.as_bytes().ends_with(b".sock");
            let dead = is_sock_name
                && sd
                    .stat_at(&name)
                    .ok()
                    .flatten()
                    .is_some_and(|st| own_socket(&st, euid) && st.age() >= SOCKET_MIN_AGE)
                && !answers(&sd_path.join(&name));
            if dead && sd.unlink_at(&name, false).is_ok() {
                swept.sockets.push(sd_path.join(name));
            }
        }
    }
    swept
}

fn names_with_prefix(dir: &Dir) -> Vec<OsString> {
    let mut names = dir.names().unwrap_or_default();
    names.retain(|n| n.as_bytes().starts_with(PREFIX.as_bytes()));
    names
}

/// `name` in `temp` as a run dir whose owner is gone: a directory (not a link to one) of this
/// uid's with mode 0700, holding a regular `owner.lock` nobody holds. Returns it open, with
/// its facts and the lock, held until it is removed.
fn dead_run_dir(temp: &Dir, name: &OsStr, euid: u32) -> Option<(Dir, Stat, Flock<File>)> {
    let run = temp.sub(name).ok()?;
    let st = run.stat().ok()?;
    if st.uid != euid || st.mode & 0o7777 != 0o700 {
        return None;
    }
    // O_NONBLOCK: a FIFO planted as the lock opens at once instead of blocking bkrun.
    let f = run
        .open_at(OsStr::new(OWNER_LOCK), libc::O_RDONLY, 0)
        .ok()?;
    let lock_st = safefs::fstat(f.as_fd()).ok()?;
    if lock_st.kind != Kind::File || lock_st.uid != euid {
        return None;
    }
    // None: its owner lives (or another sweeper has it).
    let held = lock(f)?;
    Some((run, st, held))
}

/// The socket a dead run dir records, as a name in this run's socket dir, when it is one of
/// this user's bkrun sockets there and nothing answers on it.
fn recorded_socket(run: &Dir, sd: &Dir, sd_path: &Path, euid: u32) -> Option<OsString> {
    let mut f = run
        .open_at(OsStr::new(SOCKET_RECORD), libc::O_RDONLY, 0)
        .ok()?;
    if safefs::fstat(f.as_fd()).ok()?.kind != Kind::File {
        return None;
    }
    let bytes = safefs::read_bounded(&mut f, RECORD_MAX).ok()?;
    let recorded = PathBuf::from(OsStr::from_bytes(&bytes));
    if recorded.parent() != Some(sd_path) {
        return None;
    }
    let name = recorded.file_name()?.to_os_string();
    let named_so =
        name.as_bytes().starts_with(PREFIX.as_bytes()) && name.as_bytes().ends_with(b".sock");
    let st = sd.stat_at(&name).ok().flatten()?;
    (named_so && own_socket(&st, euid) && !answers(&recorded)).then_some(name)
}

fn own_socket(st: &Stat, euid: u32) -> bool {
    st.kind == Kind::Socket && st.uid == euid
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

/// Removes this run's own socket and run dir (at teardown). `contained`: the daemon ran in a
/// mount namespace of its own, whose mounts never show in bkrun's, so none is looked for.
pub fn remove_run_files(host: &dyn Host, socket: &Path, run_dir: &Path, contained: bool) {
    if let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) {
        if let Ok(d) = Dir::open(parent) {
            if d.stat_at(name)
                .ok()
                .flatten()
                .is_some_and(|s| s.kind == Kind::Socket)
            {
                let _ = d.unlink_at(name, false);
            }
        }
    }
    if let (Some(parent), Some(name)) = (run_dir.parent(), run_dir.file_name()) {
        if let Ok(d) = Dir::open(parent) {
            if contained {
                let _ = remove_at(&d, name, None);
            } else {
                remove_run_dir(host, &d, run_dir, name, None);
            }
        }
    }
}

/// The run dir `name` in `temp` (at `path`): mounts below it detached, deepest first (a daemon
/// killed mid-export leaves its snapshot mounts in its TMPDIR there), then the tree removed by
/// descriptors without crossing a mount still there, or removing the run dir would delete
/// cache contents through it. Whether it is gone.
fn remove_run_dir(
    host: &dyn Host,
    temp: &Dir,
    path: &Path,
    name: &OsStr,
    expect: Option<&Stat>,
) -> bool {
    unmount_below(host, path);
    // rootlesskit may leave files owned by a subordinate id; what can't go stays.
    let _ = remove_at(temp, name, expect);
    temp.stat_at(name).ok().flatten().is_none()
}

/// Lazily unmounts every mount point below `dir`, deepest first (best effort: rootless
/// daemons mount in their own namespace, where nothing is visible from here).
fn unmount_below(host: &dyn Host, dir: &Path) {
    let mounts = host.mounts();
    let inside = mounts.iter().filter(|m| m.is_inside(dir));
    for mp in mountinfo::deepest_first(inside.map(|m| m.mount_point.as_path())) {
        let _ = host.unmount(mp);
    }
}

#[cfg(test)]
mod tests;
