//! Thin wrappers over the Linux calls std lacks: extended attributes, device numbers, times that don't follow links, and the descriptor-relative calls the receiver builds trees with.
//!
//! nix has no extended-attribute calls, so those stay raw libc with SAFETY notes; the rest go
//! through nix's safe wrappers.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Run a size-probing libc call until the buffer is big enough; attributes can grow in between.
fn sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        if n == 0 {
            return Ok(buf);
        }
        let m = call(buf.as_mut_ptr(), buf.len());
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

/// Names of the extended attributes of `p` itself (a symlink is not followed).
pub(crate) fn llistxattr(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid C string and the buffer pointer/length pair comes from `sized`.
    let list = sized(|buf, len| unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) })?;
    Ok(list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub(crate) fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: as above; `n` is a valid C string.
    sized(|buf, len| unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.cast(), len) })
}

pub(crate) fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C strings and a slice pointer/length pair.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn timespec(nanos: i64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(
        // `as _`: the field's own type (libc's time_t alias is deprecated on musl).
        nanos.div_euclid(1_000_000_000) as _,
        nanos.rem_euclid(1_000_000_000) as _,
    )
}

/// Set atime and mtime of `p` itself to `nanos` since the epoch. Only test trees (and
/// examples/fsutil_walk.rs) are touched by path now; the receiver uses [`set_times`] and
/// [`set_times_at`].
pub(crate) fn set_times_nofollow(p: &Path, nanos: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let ts = timespec(nanos);
    let c = cpath(p)?;
    utimensat(
        nix::fcntl::AT_FDCWD,
        c.as_c_str(),
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Makes a device node or FIFO by path; `mode` holds both the file type and the permission bits.
/// Only test trees are built by path now; the receiver uses [`create_node`].
pub(crate) fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let c = cpath(p)?;
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(mode & !libc::S_IFMT);
    nix::sys::stat::mknod(c.as_c_str(), kind, perm, dev as libc::dev_t)?;
    Ok(())
}

/// Which inode a directory entry is: what the receiver remembers of everything it made, so that
/// an entry swapped behind its back is noticed instead of written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: libc::dev_t,
    ino: libc::ino_t,
    /// The `S_IFMT` bits.
    kind: libc::mode_t,
}

impl FileId {
    pub(crate) fn of(st: &FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub(crate) fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
}

/// The error for an entry that is no longer the inode this transfer made there.
pub(crate) fn replaced() -> io::Error {
    io::Error::other("replaced by something else during the transfer")
}

/// Checks that `name` in `dir` (a single component) is still `want`.
pub(crate) fn check_at(dir: BorrowedFd, name: &str, want: FileId) -> io::Result<()> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if FileId::of(&st) != want {
        return Err(replaced());
    }
    Ok(())
}

/// What `name` in `dir` is, without following a symlink; `None` when there is nothing.
pub(crate) fn stat_at(dir: BorrowedFd, name: &str) -> io::Result<Option<FileId>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileId::of(&st))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A directory as a path-only descriptor (no read permission needed, usable as the base of the
/// `*at` calls). A symlink, even one to a directory, is refused (ENOTDIR or ELOOP).
pub(crate) fn open_dir_path<P: ?Sized + nix::NixPath>(
    dir: BorrowedFd,
    name: &P,
) -> io::Result<(OwnedFd, FileId)> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let id = FileId::of(&nix::sys::stat::fstat(&fd)?);
    if !id.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok((fd, id))
}

/// The root a tree is received into, by path (the caller chose it); its last component must
/// not be a symlink.
pub(crate) fn open_root(p: &Path) -> io::Result<(OwnedFd, FileId)> {
    open_dir_path(nix::fcntl::AT_FDCWD, p)
}

/// A directory we made, opened for reading so that its metadata can be set on the descriptor.
pub(crate) fn open_dir_read(dir: BorrowedFd, name: &str, want: FileId) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if FileId::of(&nix::sys::stat::fstat(&fd)?) != want {
        return Err(replaced());
    }
    Ok(File::from(fd))
}

/// A path-only descriptor of `name` itself (a symlink is not followed, nothing is opened for
/// I/O, so a device or FIFO has no say), checked to be `want`.
pub(crate) fn open_node(dir: BorrowedFd, name: &str, want: FileId) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if FileId::of(&nix::sys::stat::fstat(&fd)?) != want {
        return Err(replaced());
    }
    Ok(fd)
}

fn proc_fd(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Reopens a regular file we made for I/O (`flags`: O_WRONLY or O_RDONLY). The name is looked
/// up once, path-only, and checked; the open then goes through that descriptor's /proc entry,
/// which names the inode itself, so a swap between check and open cannot make us open a device
/// or FIFO or another file. Without /proc the name is opened directly, O_NOFOLLOW|O_NONBLOCK,
/// and checked afterwards.
pub(crate) fn reopen_file(
    dir: BorrowedFd,
    name: &str,
    want: FileId,
    flags: OFlag,
) -> io::Result<File> {
    if !want.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let node = open_node(dir, name, want)?;
    let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = match nix::fcntl::open(proc_fd(node.as_fd()).as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => nix::fcntl::openat(
            dir,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?,
        Err(e) => return Err(e.into()),
    };
    if FileId::of(&nix::sys::stat::fstat(&fd)?) != want {
        return Err(replaced());
    }
    let file = File::from(fd);
    Ok(file)
}

/// Creates `name` in `dir` as a new regular file, 0600, never following or reusing anything.
pub(crate) fn create_file(dir: BorrowedFd, name: &str) -> io::Result<(File, FileId)> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let id = FileId::of(&nix::sys::stat::fstat(&fd)?);
    Ok((File::from(fd), id))
}

/// Creates `name` in `dir` as a new directory, 0700.
pub(crate) fn create_dir(dir: BorrowedFd, name: &str) -> io::Result<FileId> {
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))?;
    Ok(open_dir_path(dir, name)?.1)
}

/// Creates a symlink `name` -> `target` in `dir`.
pub(crate) fn create_symlink(dir: BorrowedFd, name: &str, target: &str) -> io::Result<FileId> {
    nix::unistd::symlinkat(target, dir, name)?;
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(FileId::of(&st))
}

/// Creates a device node or FIFO `name` in `dir` (`kind`: S_IFCHR, S_IFBLK or S_IFIFO), 0600
/// until its final mode is set.
pub(crate) fn create_node(dir: BorrowedFd, name: &str, kind: u32, dev: u64) -> io::Result<FileId> {
    nix::sys::stat::mknodat(
        dir,
        name,
        SFlag::from_bits_truncate(kind & libc::S_IFMT),
        Mode::from_bits_truncate(0o600),
        dev as libc::dev_t,
    )?;
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(FileId::of(&st))
}

/// Hard-links the regular file `src` (checked to be `want`) as `name` in `dir`; neither end
/// follows a symlink.
pub(crate) fn create_link(
    src_dir: BorrowedFd,
    src: &str,
    want: FileId,
    dir: BorrowedFd,
    name: &str,
) -> io::Result<()> {
    if !want.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let swapped = || io::Error::other(format!("source {src:?} replaced during the transfer"));
    check_at(src_dir, src, want).map_err(|e| match e.kind() {
        io::ErrorKind::Other => swapped(),
        _ => e,
    })?;
    nix::unistd::linkat(src_dir, src, dir, name, AtFlags::empty())?;
    // The source could have been swapped between the check and the link.
    check_at(dir, name, want).map_err(|_| swapped())
}

/// Renames `from` over `to` within `dir`.
pub(crate) fn rename_in(dir: BorrowedFd, from: &str, to: &str) -> io::Result<()> {
    nix::fcntl::renameat(dir, from, dir, to)?;
    Ok(())
}

/// Removes `name` from `dir`, a directory with everything below it, through descriptors only:
/// no name is resolved from anywhere but its own parent, no symlink is followed, and a mount
/// point (a directory on another device than its parent) is refused rather than emptied.
pub(crate) fn remove_tree_at(dir: BorrowedFd, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    remove_tree_c(dir, &c)
}

// Names below the top were not made by us and may be any bytes: they stay C strings.
fn remove_tree_c(dir: BorrowedFd, name: &std::ffi::CStr) -> io::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(());
    }
    if st.st_dev != nix::sys::stat::fstat(dir)?.st_dev {
        return Err(io::Error::other("a mount point, not removed"));
    }
    let sub = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if FileId::of(&nix::sys::stat::fstat(&sub)?) != FileId::of(&st) {
        return Err(replaced());
    }
    let names = list_names(sub.try_clone()?)?;
    for n in names {
        remove_tree_c(sub.as_fd(), &n)?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

/// The names in an open directory, without `.` and `..` (nix's `dir` feature is not enabled).
fn list_names(fd: OwnedFd) -> io::Result<Vec<CString>> {
    use std::os::fd::IntoRawFd;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor we own; on success the stream owns it.
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    let res = loop {
        nix::errno::Errno::clear();
        // SAFETY: `d` is a valid stream used by this thread only.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            match nix::errno::Errno::last_raw() {
                0 => break Ok(()),
                e => break Err(io::Error::from_raw_os_error(e)),
            }
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated and valid until the
        // next readdir call; it is copied out before that.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `d` came from fdopendir and is closed once.
    unsafe { libc::closedir(d) };
    res.map(|()| names)
}

/// Extended attribute on an open file or directory.
pub(crate) fn fsetxattr(fd: BorrowedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an open descriptor, a valid C string and a slice pointer/length pair.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Extended attribute on `name` in `dir` itself (symlinks, devices, FIFOs: nothing we may
/// open). The directory is reached through its descriptor's /proc entry, so only the last
/// component is looked up, and it is not followed.
pub(crate) fn lsetxattr_at(dir: BorrowedFd, name: &str, key: &str, value: &[u8]) -> io::Result<()> {
    let p = format!("{}/{name}", proc_fd(dir));
    lsetxattr(Path::new(&p), key, value)
}

pub(crate) fn set_owner(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    Ok(())
}

pub(crate) fn set_mode(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))?;
    Ok(())
}

pub(crate) fn set_times(fd: BorrowedFd, nanos: i64) -> io::Result<()> {
    let ts = timespec(nanos);
    nix::sys::stat::futimens(fd, &ts, &ts)?;
    Ok(())
}

/// Owner of the node a path-only descriptor holds (a symlink's own owner for a symlink).
pub(crate) fn set_owner_node(node: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::unistd::fchownat(
        node,
        "",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Mode of a device or FIFO held path-only (never opened for I/O), through its /proc entry,
/// which names the inode itself. Without /proc: `name` in `dir`, checked again to be `want`
/// right before (a window only someone who can write to our directory could use).
pub(crate) fn set_mode_node(
    node: BorrowedFd,
    dir: BorrowedFd,
    name: &str,
    want: FileId,
    mode: u32,
) -> io::Result<()> {
    use nix::sys::stat::{fchmodat, FchmodatFlags};
    if want.is_dir() || want.is_file() || want.kind == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let m = Mode::from_bits_truncate(mode);
    match fchmodat(
        nix::fcntl::AT_FDCWD,
        proc_fd(node).as_str(),
        m,
        FchmodatFlags::FollowSymlink,
    ) {
        Err(nix::errno::Errno::ENOENT) => {
            check_at(dir, name, want)?;
            fchmodat(dir, name, m, FchmodatFlags::FollowSymlink)?;
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Times of `name` in `dir` itself, not following a symlink.
pub(crate) fn set_times_at(dir: BorrowedFd, name: &str, nanos: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let ts = timespec(nanos);
    utimensat(dir, name, &ts, &ts, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// Major number as upstream computes it: the old 12-bit encoding, not glibc's full one.
pub(crate) fn dev_major(rdev: u64) -> i64 {
    ((rdev >> 8) & 0xfff) as i64
}

/// Minor number, old 20-bit encoding (low byte plus bits 20..32).
pub(crate) fn dev_minor(rdev: u64) -> i64 {
    ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as i64
}

/// Device number from major/minor, glibc's `makedev` layout (what the receiver's mknod uses).
pub(crate) fn makedev(major: i64, minor: i64) -> u64 {
    let (ma, mi) = (major as u32 as u64, minor as u32 as u64);
    ((ma & 0xfff) << 8) | ((ma & 0xffff_f000) << 32) | (mi & 0xff) | ((mi & 0xffff_ff00) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers() {
        assert_eq!(makedev(1, 3), libc::makedev(1, 3));
        assert_eq!(makedev(259, 70000), libc::makedev(259, 70000));
        let d = libc::makedev(8, 17);
        assert_eq!((dev_major(d), dev_minor(d)), (8, 17));
        let d = libc::makedev(4095, 1048575);
        assert_eq!((dev_major(d), dev_minor(d)), (4095, 1048575));
    }

    #[test]
    fn xattr_round_trip_or_unsupported() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        match lsetxattr(&f, "user.bkrun", b"v") {
            Ok(()) => {
                assert!(llistxattr(&f).unwrap().contains(&b"user.bkrun".to_vec()));
                assert_eq!(lgetxattr(&f, "user.bkrun").unwrap(), b"v");
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP)),
        }
        set_times_nofollow(&f, 1_500_000_000_123_456_789).unwrap();
        let md = std::fs::symlink_metadata(&f).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 123_456_789));
    }
}
