//! Files in directories other users can write to (/tmp, /run, an output's parent), handled by descriptor: opened with O_NOFOLLOW, judged by fstat, removed with unlinkat, and never followed or opened where the kernel's protected_symlinks/fifos/regular rules would refuse.
//!
//! bkrun runs as root on shared machines. A path in a shared directory can change between a
//! check and the use of it (a file swapped for a symlink, a directory for a link to /root), so
//! nothing here judges a path and then uses it again by name: a directory is opened once and
//! every later step is relative to that descriptor, with `O_NOFOLLOW` on the last component.

pub mod protect;
pub mod remove;
pub mod resolve;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What an entry is, from its own `st_mode` (a symlink is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
}

/// The facts of one entry that decisions here rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    /// Last modification, seconds since the epoch, and the nanoseconds past it.
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::Device,
        };
        Stat {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
        }
    }

    /// The same inode as `other` (what was judged is what is used).
    pub fn same_node(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Sticky and writable by users other than its owner: /tmp, /var/tmp, /dev/shm.
    pub fn is_shared_sticky(&self) -> bool {
        self.kind == Kind::Dir && self.mode & 0o1000 != 0 && self.mode & 0o022 != 0
    }

    /// How long ago it was modified (zero for a time in the future).
    pub fn age(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        std::time::Duration::from_secs(now.saturating_sub(self.mtime).max(0) as u64)
    }
}

/// Converts a name or path for the kernel; a NUL inside can name nothing.
fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The flags every open here carries: no link in the last component is followed, no FIFO or
/// device open waits for a peer or becomes a terminal, and nothing leaks into children.
const OPEN_SAFE: libc::c_int =
    libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

/// An open directory: every operation is relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens the directory `path` names. The kernel resolves the path (and applies its own
    /// link rules): for paths bkrun chose or the user gave as a place to work in, not for
    /// names in a shared directory, which go through `sub`.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: a valid C string; the result is a new descriptor or -1.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The filesystem root, where absolute symlink targets start.
    pub fn root() -> io::Result<Dir> {
        Dir::open(Path::new("/"))
    }

    /// A copy of this descriptor (its own handle on the same directory).
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// The descriptor itself (to lock it, say).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The subdirectory `name`, never through a symlink (ELOOP or ENOTDIR then).
    pub fn sub(&self, name: &OsStr) -> io::Result<Dir> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and C string.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | OPEN_SAFE,
            )
        })?;
        // SAFETY: a fresh descriptor.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The directory's own facts.
    pub fn stat(&self) -> io::Result<Stat> {
        fstat(self.fd.as_fd())
    }

    /// The facts of `name` itself (a symlink is not followed); None when there is nothing.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, C string and out-pointer.
        let r = unsafe {
            libc::fstatat(
                self.raw(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: fstatat succeeded and filled `st`.
        Ok(Some(Stat::from_raw(unsafe { &st.assume_init() })))
    }

    /// Opens `name` with `flags` (plus O_NOFOLLOW, O_NONBLOCK, O_NOCTTY, O_CLOEXEC); `mode`
    /// for a file it creates.
    pub fn open_at(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and C string; `mode` is passed as the variadic argument.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | OPEN_SAFE,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: a fresh descriptor.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // Only the open had to be non-blocking (a FIFO without a reader must not hang bkrun);
        // reads and writes block as a plain file's do.
        set_blocking(&f)?;
        Ok(f)
    }

    /// A new file `name` (it must not exist), mode `mode` before the umask.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_at(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// A new directory `name`, mode `mode` before the umask.
    pub fn mkdir_at(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
    }

    /// Removes the entry `name` (a directory must be empty), never what a link names.
    pub fn unlink_at(&self, name: &OsStr, is_dir: bool) -> io::Result<()> {
        let c = cstr(name)?;
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), flags) }).map(|_| ())
    }

    /// Renames `name` here to `to_name` in `to` (replacing what is there, as rename(2) does).
    pub fn rename_at(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (a, b) = (cstr(name)?, cstr(to_name)?);
        // SAFETY: valid descriptors and C strings.
        check(unsafe { libc::renameat(self.raw(), a.as_ptr(), to.raw(), b.as_ptr()) }).map(|_| ())
    }

    /// What the symlink `name` holds, as written.
    pub fn read_link_at(&self, name: &OsStr) -> io::Result<PathBuf> {
        let c = cstr(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: a valid descriptor, C string and buffer of the given length.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(OsString::from_vec(buf)))
    }

    /// The names in this directory (not `.` or `..`), read through a fresh open of it: a
    /// dup'd descriptor would share the read position, and a second listing would be empty.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fresh = self.sub(OsStr::new("."))?;
        let mut d = nix::dir::Dir::from_fd(fresh.fd).map_err(io::Error::from)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(io::Error::from)?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        Ok(out)
    }

    /// Sets the directory's own permission bits.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        fchmod(self.fd.as_fd(), mode)
    }

    /// Sets the directory's own access and modification times to `nanos` since the epoch.
    pub fn set_times(&self, nanos: i64) -> io::Result<()> {
        let ts = libc::timespec {
            tv_sec: nanos.div_euclid(1_000_000_000) as _,
            tv_nsec: nanos.rem_euclid(1_000_000_000) as _,
        };
        // SAFETY: a valid descriptor and a two-element array.
        check(unsafe { libc::futimens(self.raw(), [ts, ts].as_ptr()) }).map(|_| ())
    }
}

/// Sets the permission bits of an open file or directory.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(|_| ())
}

/// The facts of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled `st`.
    Ok(Stat::from_raw(unsafe { &st.assume_init() }))
}

/// Clears O_NONBLOCK on an open file.
pub fn set_blocking(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Reads at most `limit` bytes of a file: a record another process wrote is never trusted to
/// be small.
pub fn read_bounded(f: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    f.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// The process's umask, from /proc/self/status (asking the kernel with umask(2) would change
/// it for a moment under every other thread). Private (0o077) when it cannot be read.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o077)
}

/// The effective uid and the groups this process holds (its effective gid and supplementary
/// groups), as permission checks see them.
pub fn effective_ids() -> (u32, Vec<u32>) {
    let euid = nix::unistd::geteuid().as_raw();
    let mut groups = vec![nix::unistd::getegid().as_raw()];
    groups.extend(supplementary_groups());
    (euid, groups)
}

/// getgroups(2) asked for the count first: nix's getgroups sizes its buffer with
/// sysconf(_SC_NGROUPS_MAX), which glibc answers by reading /proc/sys/kernel/ngroups_max, a
/// file open and read on every permission check (seven of them before a build's daemon starts).
fn supplementary_groups() -> Vec<u32> {
    // A group added between the two calls makes the second fail (EINVAL): ask again.
    for _ in 0..3 {
        // SAFETY: with a size of 0 getgroups writes nothing and returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if n <= 0 {
            return Vec::new();
        }
        let mut list: Vec<libc::gid_t> = vec![0; n as usize];
        // SAFETY: the buffer holds n entries, as the call is told.
        let got = unsafe { libc::getgroups(n, list.as_mut_ptr()) };
        if got >= 0 {
            list.truncate(got as usize);
            return list;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supplementary_groups_are_the_kernels_list() {
        let nix: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(supplementary_groups(), nix);
    }

    #[test]
    fn descriptors_never_follow_a_final_symlink() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("real/f", d.path().join("flink")).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        assert!(dir.sub(OsStr::new("link")).is_err());
        assert!(dir.sub(OsStr::new("real")).is_ok());
        assert_eq!(
            dir.stat_at(OsStr::new("link")).unwrap().unwrap().kind,
            Kind::Symlink
        );
        assert!(dir.stat_at(OsStr::new("none")).unwrap().is_none());
        let e = dir
            .open_at(OsStr::new("flink"), libc::O_RDONLY, 0)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            dir.read_link_at(OsStr::new("flink")).unwrap(),
            Path::new("real/f")
        );
        let mut names = dir.names().unwrap();
        names.sort();
        assert_eq!(names, ["flink", "link", "real"]);
        assert_eq!(
            dir.names().unwrap().len(),
            3,
            "a second listing sees them all too"
        );
    }

    #[test]
    fn a_fifo_opens_without_waiting_for_a_peer() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &d.path().join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let f = dir.open_at(OsStr::new("p"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(fstat(f.as_fd()).unwrap().kind, Kind::Fifo);
    }

    #[test]
    fn the_umask_is_read_as_permission_bits() {
        // Changing it here would race the other tests' file creation, so only its shape is checked.
        assert_eq!(umask() & !0o777, 0);
    }
}
