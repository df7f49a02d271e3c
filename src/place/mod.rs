//! Putting outputs in place: a file is written beside its destination and renamed over it only once complete, a device, FIFO or one of bkrun's own descriptors is written through, and temporaries never outlive bkrun.
//!
//! Bad input never loses data: a symlink stays a link (its target is replaced), `/dev/null`
//! stays a device, and a half-written file is never seen under the real name.

pub mod temps;
pub mod tree;

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::{Host, PathKind};

pub use temps::Temp;

/// How a file destination is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileTarget {
    /// One of bkrun's own descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`), written
    /// as `dest=-` writes stdout.
    Fd(RawFd),
    /// A device, FIFO or socket: opened and written as it is, never truncated or replaced.
    Through(PathBuf),
    /// A regular file, or nothing yet: written beside this path (a symlink's final target, so
    /// the link stays a link) and renamed over it.
    Replace(PathBuf),
    /// A directory: no file can go there.
    Dir(PathBuf),
}

/// What `dest` is, as far as writing a file to it goes.
pub fn classify(dest: &Path, host: &dyn Host) -> FileTarget {
    let mut p = dest.to_path_buf();
    // The kernel's own limit on a chain of links; past it the kernel refuses the path anyway.
    for _ in 0..40 {
        if let Some(fd) = fd_alias(&p) {
            return FileTarget::Fd(fd);
        }
        match host.read_link(&p) {
            Some(t) => {
                p = match p.parent() {
                    Some(dir) => dir.join(t),
                    None => t,
                }
            }
            None => break,
        }
    }
    match host.path_kind(&p) {
        PathKind::Missing | PathKind::File => FileTarget::Replace(p),
        PathKind::Dir => FileTarget::Dir(p),
        PathKind::Special => FileTarget::Through(p),
    }
}

/// The descriptor a path names, when it names one of this process's own: these links lead
/// to a pipe or socket that no other path reaches (`pipe:[1234]`).
fn fd_alias(p: &Path) -> Option<RawFd> {
    let s = p.to_str()?;
    match s {
        "/dev/stdin" => return Some(0),
        "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let pid = std::process::id().to_string();
    let rest = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))
        .or_else(|| s.strip_prefix("/proc/thread-self/fd/"))
        .or_else(|| {
            s.strip_prefix("/proc/")
                .and_then(|r| r.strip_prefix(pid.as_str()))
                .and_then(|r| r.strip_prefix("/fd/"))
        })?;
    rest.parse().ok()
}

/// The directory `p` is in (`.` for a bare name).
pub fn parent_of(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
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

/// Opens a device, FIFO or socket for writing without truncating or replacing it. A FIFO with
/// no reader yet is waited for without blocking a thread, so a signal still ends bkrun.
pub async fn open_through(path: &Path) -> io::Result<File> {
    loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        match opened {
            Ok(f) => {
                // Writes may block like any file's; only the open had to be non-blocking.
                let fd = f.as_raw_fd();
                // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
                unsafe {
                    let flags = libc::fcntl(fd, libc::F_GETFL);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                    }
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

/// A new empty file beside `dest` (`.NAME.bkrun-XXXXXX`), created as the destination itself
/// would be: with the umask's mode, or the mode of the file it replaces.
pub fn temp_file_beside(dest: &Path) -> io::Result<(File, Temp)> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let keep_mode = std::fs::metadata(dest)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o7777);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.bkrun-"))
        .make_in(parent_of(dest), |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
        })?;
    let (file, path) = tmp.keep().map_err(|e| e.error)?;
    let temp = Temp::register(path);
    if let Some(mode) = keep_mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok((file, temp))
}

/// Renames a finished temporary file over its destination.
pub fn commit_file(temp: Temp, dest: &Path) -> io::Result<()> {
    std::fs::rename(temp.path(), dest)?;
    temp.keep();
    Ok(())
}

/// Writes `data` to `dest` by what it is: through a device, FIFO or descriptor; into a new
/// file renamed over a regular one (a symlink's target, the link kept).
pub async fn write_file(dest: &Path, data: &[u8], host: &dyn Host) -> io::Result<()> {
    match classify(dest, host) {
        FileTarget::Fd(fd) => dup_fd(fd)?.write_all(data),
        FileTarget::Through(p) => open_through(&p).await?.write_all(data),
        FileTarget::Dir(p) => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("{} is a directory", p.display()),
        )),
        FileTarget::Replace(p) => {
            let (mut file, temp) = temp_file_beside(&p)?;
            file.write_all(data)?;
            drop(file);
            commit_file(temp, &p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::host::RealHost;
    use std::os::unix::fs::FileTypeExt as _;

    #[test]
    fn destinations_are_classified_by_what_they_name() {
        let mut h = FakeHost::user();
        h.links = vec![
            ("/w/link.tar", "real/x.tar"),
            ("/w/dangling", "/w/gone.tar"),
            ("/w/out", "/dev/stdout"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/w/null", "/dev/null"),
        ];
        h.paths = vec![
            ("/w/real/x.tar", PathKind::File),
            ("/dev/null", PathKind::Special),
            ("/w/d", PathKind::Dir),
        ];
        let c = |p: &str| classify(Path::new(p), &h);
        assert_eq!(
            c("/w/link.tar"),
            FileTarget::Replace("/w/real/x.tar".into())
        );
        assert_eq!(c("/w/dangling"), FileTarget::Replace("/w/gone.tar".into()));
        assert_eq!(c("/w/new.tar"), FileTarget::Replace("/w/new.tar".into()));
        assert_eq!(c("/w/out"), FileTarget::Fd(1));
        assert_eq!(c("/dev/stdout"), FileTarget::Fd(1));
        assert_eq!(c("/dev/fd/7"), FileTarget::Fd(7));
        assert_eq!(
            c(&format!("/proc/{}/fd/2", std::process::id())),
            FileTarget::Fd(2)
        );
        assert_eq!(
            c("/proc/1/fd/2"),
            FileTarget::Replace("/proc/1/fd/2".into())
        );
        assert_eq!(c("/w/null"), FileTarget::Through("/dev/null".into()));
        assert_eq!(c("/w/d"), FileTarget::Dir("/w/d".into()));
    }

    #[tokio::test]
    async fn a_symlink_stays_a_link_and_a_device_stays_a_device() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/m.json"), "old").unwrap();
        std::fs::set_permissions(
            d.path().join("real/m.json"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let link = d.path().join("m.json");
        std::os::unix::fs::symlink("real/m.json", &link).unwrap();
        write_file(&link, b"new", &RealHost).await.unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        let mode = std::fs::metadata(&link).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(d.path().join("real")).unwrap().count(), 1);

        write_file(Path::new("/dev/null"), b"x", &RealHost)
            .await
            .unwrap();
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[tokio::test]
    async fn a_fifo_is_written_through_once_a_reader_comes() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::read(&fifo).unwrap()
            })
        };
        write_file(&fifo, b"through", &RealHost).await.unwrap();
        assert_eq!(reader.join().unwrap(), b"through");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
}
