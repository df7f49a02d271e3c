//! The one writer of every file bkrun puts anywhere (outputs, metadata, ref, iid and digest files, the trace): whole files written beside their destination and renamed over it once complete, a device, FIFO or one of bkrun's own descriptors written through, and never a link followed or a file opened where the kernel's protected_* rules would refuse.
//!
//! Bad input never loses data: a symlink stays a link (its target is replaced), `/dev/null`
//! stays a device, and a half-written file is never seen under the real name. The destination
//! is walked by descriptor (src/safefs), so what was judged is what is written.

pub mod temps;
pub mod tree;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::safefs::protect::{may_use_existing, refusal};
use crate::safefs::resolve::{resolve, Resolved, WalkError};
use crate::safefs::{self, Dir, Kind, Stat};

pub use temps::Temp;

/// How a file destination is written.
#[derive(Debug)]
pub enum FileTarget {
    /// One of bkrun's own descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`), written
    /// as `dest=-` writes stdout.
    Fd(RawFd),
    /// A device or FIFO: opened and written as it is, never truncated or replaced.
    Through(Existing),
    /// A regular file, or nothing yet: written beside it (a symlink's final target, so the
    /// link stays a link) and renamed over it.
    Replace(Beside),
}

/// A device or FIFO the destination leads to.
#[derive(Debug)]
pub struct Existing {
    dir: Dir,
    name: OsString,
    node: Stat,
    pub path: PathBuf,
}

/// Where a whole file goes: a name in an open directory.
#[derive(Debug)]
pub struct Beside {
    dir: Arc<Dir>,
    dir_path: PathBuf,
    name: OsString,
    /// The regular file there now, if any.
    existing: Option<Stat>,
    pub path: PathBuf,
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

impl From<WalkError> for io::Error {
    fn from(e: WalkError) -> io::Error {
        match e {
            WalkError::Refused(r) => err(io::ErrorKind::PermissionDenied, r.to_string()),
            WalkError::Io(p, e) => err(e.kind(), format!("{}: {e}", p.display())),
        }
    }
}

/// What `dest` is, as far as writing a whole file to it goes. Refused (PermissionDenied, in
/// one line naming the path, its owner and what to do) where the kernel's protection would
/// refuse; a directory, a socket or a missing parent directory are errors too.
pub fn file_target(dest: &Path) -> io::Result<FileTarget> {
    let euid = nix::unistd::geteuid().as_raw();
    let place = match resolve(dest, euid, true)? {
        Resolved::Fd(fd) => return Ok(FileTarget::Fd(fd)),
        Resolved::At(p) => *p,
    };
    let path = place.path();
    let Some(name) = place.name.clone() else {
        return Err(err(
            io::ErrorKind::IsADirectory,
            format!("{} is a directory: give a file path", path.display()),
        ));
    };
    if let Some(first) = place.missing.first() {
        return Err(err(
            io::ErrorKind::NotFound,
            format!(
                "the directory {} does not exist: create it first",
                place.dir_path.join(first).display()
            ),
        ));
    }
    if let Some(node) = &place.node {
        if node.kind == Kind::Dir {
            return Err(err(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory: give a file path", path.display()),
            ));
        }
        if node.kind == Kind::Socket {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("{} is a socket: give a file path", path.display()),
            ));
        }
        if !may_use_existing(&place.dir_stat, node, euid) {
            let r = refusal(&path, node, &place.dir_path, &place.dir_stat);
            return Err(err(io::ErrorKind::PermissionDenied, r.to_string()));
        }
        if matches!(node.kind, Kind::Fifo | Kind::Device) {
            return Ok(FileTarget::Through(Existing {
                dir: place.dir,
                name,
                node: *node,
                path,
            }));
        }
    }
    Ok(FileTarget::Replace(Beside {
        dir: Arc::new(place.dir),
        dir_path: place.dir_path,
        name,
        existing: place.node,
        path,
    }))
}

/// A writable copy of descriptor `fd`, so closing ours leaves the original open.
pub fn dup_fd(fd: RawFd) -> io::Result<File> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads `fd`; a closed one fails with EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(new) }))
}

impl Existing {
    /// Opens the device or FIFO for writing (appending, when `append`), without truncating
    /// it. A FIFO with no reader yet is waited for without blocking a thread, so a signal
    /// still ends bkrun; what opens must be the node that was judged.
    pub async fn open(&self, append: bool) -> io::Result<File> {
        let flags = libc::O_WRONLY | if append { libc::O_APPEND } else { 0 };
        loop {
            match self.dir.open_at(&self.name, flags, 0) {
                Ok(f) => {
                    let st = safefs::fstat(f.as_fd())?;
                    if !st.same_node(&self.node) {
                        return Err(err(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "{} was replaced while bkrun was about to write to it; nothing was written",
                                self.path.display()
                            ),
                        ));
                    }
                    return Ok(f);
                }
                // ENXIO: a FIFO nobody reads yet.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This process may write to it (checked with the effective ids, never by opening it: a
    /// device's open can have effects).
    pub fn writable(&self) -> bool {
        let Ok(c) = std::ffi::CString::new(self.name.as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: a valid descriptor and C string. The name is not a symlink (it was judged
        // by lstat), so faccessat needs no no-follow flag.
        unsafe { libc::faccessat(self.dir.raw(), c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
    }
}

/// A temporary file being written beside its destination, renamed over it by `commit`.
#[derive(Debug)]
pub struct NewFile {
    temp: Temp,
    /// A second handle, to set the final mode once the content is complete.
    handle: File,
    to: Beside,
}

impl Beside {
    /// A new empty file beside the destination (`.NAME.bkrun-XXXXXX`, mode 0600 until it is
    /// put in place), and the handle to fill it through.
    pub fn create(self) -> io::Result<(File, NewFile)> {
        let prefix = format!(".{}.bkrun-", self.name.to_string_lossy());
        let (file, temp) = Temp::new_file(&self.dir, &self.dir_path, &prefix)?;
        let handle = file.try_clone()?;
        Ok((
            file,
            NewFile {
                temp,
                handle,
                to: self,
            },
        ))
    }

    /// Proves a file can be made here, by making one and removing it (access(2) says yes to
    /// root in /sys, where nothing can be created).
    pub fn probe(&self) -> io::Result<()> {
        let prefix = format!(".{}.bkrun-", self.name.to_string_lossy());
        Temp::new_file(&self.dir, &self.dir_path, &prefix).map(drop)
    }

    /// Proves the destination can be appended to: the file there opens for appending (nothing
    /// is written), or a new one can be made beside it.
    pub fn probe_append(&self) -> io::Result<()> {
        match self.existing {
            Some(_) => self.open_append(0o600).map(drop),
            None => self.probe(),
        }
    }

    /// Opens the destination for appending: the regular file there (the one judged), or a
    /// new one made with `mode` (less the umask).
    pub fn open_append(&self, mode: u32) -> io::Result<File> {
        let flags = libc::O_WRONLY | libc::O_APPEND;
        let f = match self.existing {
            Some(_) => self.dir.open_at(&self.name, flags, 0)?,
            None => match self
                .dir
                .open_at(&self.name, flags | libc::O_CREAT | libc::O_EXCL, mode)
            {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(err(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} appeared while bkrun was about to create it; nothing was written",
                            self.path.display()
                        ),
                    ))
                }
                r => r?,
            },
        };
        let st = safefs::fstat(f.as_fd())?;
        if self.existing.is_some_and(|e| !e.same_node(&st)) || st.kind != Kind::File {
            return Err(err(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} was replaced while bkrun was about to write to it; nothing was written",
                    self.path.display()
                ),
            ));
        }
        Ok(f)
    }
}

impl NewFile {
    pub fn path(&self) -> &Path {
        &self.to.path
    }

    /// Renames the finished file over its destination, with the mode of the file it replaces
    /// (less setuid, setgid and sticky: a new file never inherits privilege) or the umask's.
    pub fn commit(self) -> io::Result<()> {
        let mode = match self.to.existing {
            Some(old) => old.mode & 0o777,
            None => 0o666 & !safefs::umask(),
        };
        safefs::fchmod(self.handle.as_fd(), mode)?;
        drop(self.handle);
        let dir = self.temp.dir().clone();
        dir.rename_at(self.temp.name(), &self.to.dir, &self.to.name)?;
        self.temp.keep();
        Ok(())
    }
}

/// Writes `data` to `dest` by what it is: through a device, FIFO or descriptor; into a new
/// file renamed over a regular one (a symlink's target, the link kept).
pub async fn write_file(dest: &Path, data: &[u8]) -> io::Result<()> {
    match file_target(dest)? {
        FileTarget::Fd(fd) => dup_fd(fd)?.write_all(data),
        FileTarget::Through(e) => e.open(false).await?.write_all(data),
        FileTarget::Replace(b) => {
            let (mut file, new) = b.create()?;
            file.write_all(data)?;
            drop(file);
            new.commit()
        }
    }
}

/// Opens `dest` for appending (the trace), under the same rules as `write_file`; a new file
/// gets `mode` (less the umask).
pub async fn open_append(dest: &Path, mode: u32) -> io::Result<File> {
    match file_target(dest)? {
        FileTarget::Fd(fd) => dup_fd(fd),
        FileTarget::Through(e) => e.open(true).await,
        FileTarget::Replace(b) => b.open_append(mode),
    }
}

/// The directory `p` is in (`.` for a bare name).
pub fn parent_of(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests;
