//! Thin wrappers over the Linux calls std lacks: extended attributes, device numbers, times that don't follow links.
//!
//! nix has no extended-attribute calls, so those stay raw libc with SAFETY notes; the rest go
//! through nix's safe wrappers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Set atime and mtime of `p` itself to `nanos` since the epoch.
pub(crate) fn set_times_nofollow(p: &Path, nanos: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new(
        // `as _`: the field's own type (libc's time_t alias is deprecated on musl).
        nanos.div_euclid(1_000_000_000) as _,
        nanos.rem_euclid(1_000_000_000) as _,
    );
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

/// Makes a device node or FIFO; `mode` holds both the file type and the permission bits.
pub(crate) fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let c = cpath(p)?;
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(mode & !libc::S_IFMT);
    nix::sys::stat::mknod(c.as_c_str(), kind, perm, dev as libc::dev_t)?;
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
