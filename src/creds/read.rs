//! Files bkrun reads credentials from (login files, projected service-account tokens, key files), opened by descriptor: they may sit in directories others can write.

use std::path::Path;

use crate::safefs::resolve::{resolve, Resolved, WalkError};
use crate::safefs::{self, Kind};

/// Login and token files are a few KiB; a bigger one is not one.
const MAX_FILE: u64 = 4 << 20;

/// A secret file a cloud identity names (a projected service-account token, a key file), read
/// as login files are; its absence is an error of kind NotFound.
pub fn secret(path: &Path) -> std::io::Result<String> {
    let bytes = bytes(path)?.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not text"))
}

/// A file's bytes, opened by descriptor along a walk that follows links only as the kernel's
/// protected_symlinks would (a Secret volume's `..data` links are followed; a link another
/// user planted in /tmp is not); None when it does not exist.
pub fn bytes(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let (euid, _) = safefs::effective_ids();
    let place = match resolve(path, euid, true) {
        Ok(Resolved::At(p)) => p,
        Ok(Resolved::Fd(_)) => return Err(std::io::Error::other("a descriptor is not a file")),
        Err(WalkError::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(WalkError::Io(_, e)) => return Err(e),
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    let (Some(name), Some(_)) = (&place.name, &place.node) else {
        return Ok(None);
    };
    if !place.missing.is_empty() {
        return Ok(None);
    }
    let mut f = place.dir.open_at(name, libc::O_RDONLY, 0)?;
    use std::os::fd::AsFd as _;
    if safefs::fstat(f.as_fd())?.kind != Kind::File {
        return Err(std::io::Error::other("not a regular file"));
    }
    safefs::read_bounded(&mut f, MAX_FILE).map(Some)
}
