//! Conversion between Unix `st_mode` values and Go's `os.FileMode` bits, which is what the wire carries.

/// Go `os.FileMode` bits: the top bits carry the type, bits 0..9 the permissions.
pub const MODE_DIR: u32 = 1 << 31;
pub const MODE_APPEND: u32 = 1 << 30;
pub const MODE_EXCLUSIVE: u32 = 1 << 29;
pub const MODE_TEMPORARY: u32 = 1 << 28;
pub const MODE_SYMLINK: u32 = 1 << 27;
pub const MODE_DEVICE: u32 = 1 << 26;
pub const MODE_NAMED_PIPE: u32 = 1 << 25;
pub const MODE_SOCKET: u32 = 1 << 24;
pub const MODE_SETUID: u32 = 1 << 23;
pub const MODE_SETGID: u32 = 1 << 22;
pub const MODE_CHAR_DEVICE: u32 = 1 << 21;
pub const MODE_STICKY: u32 = 1 << 20;
pub const MODE_IRREGULAR: u32 = 1 << 19;
pub const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | MODE_SOCKET
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | MODE_IRREGULAR;
pub const MODE_PERM: u32 = 0o777;

// Linux st_mode constants, spelled out so the mapping is visible and platform independent.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;

/// Go `FileMode` of a Unix `st_mode`, as Go's `os.Lstat` reports it.
pub fn from_unix(st_mode: u32) -> u32 {
    let mut m = st_mode & MODE_PERM;
    m |= match st_mode & S_IFMT {
        S_IFBLK => MODE_DEVICE,
        S_IFCHR => MODE_DEVICE | MODE_CHAR_DEVICE,
        S_IFDIR => MODE_DIR,
        S_IFIFO => MODE_NAMED_PIPE,
        S_IFLNK => MODE_SYMLINK,
        S_IFSOCK => MODE_SOCKET,
        _ => 0,
    };
    if st_mode & S_ISGID != 0 {
        m |= MODE_SETGID;
    }
    if st_mode & S_ISUID != 0 {
        m |= MODE_SETUID;
    }
    if st_mode & S_ISVTX != 0 {
        m |= MODE_STICKY;
    }
    m
}

/// The `S_IFMT` type of a Go mode; `None` for `ModeIrregular`, which has no Unix counterpart.
pub fn unix_type(go_mode: u32) -> Option<u32> {
    // Same precedence as the receiving side uses: char device wins over device.
    Some(if go_mode & MODE_DIR != 0 {
        S_IFDIR
    } else if go_mode & MODE_SYMLINK != 0 {
        S_IFLNK
    } else if go_mode & MODE_CHAR_DEVICE != 0 {
        S_IFCHR
    } else if go_mode & MODE_DEVICE != 0 {
        S_IFBLK
    } else if go_mode & MODE_NAMED_PIPE != 0 {
        S_IFIFO
    } else if go_mode & MODE_SOCKET != 0 {
        S_IFSOCK
    } else if go_mode & MODE_IRREGULAR != 0 {
        return None;
    } else {
        S_IFREG
    })
}

/// The bits a `chmod(2)` takes for a Go mode: permissions plus setuid, setgid and sticky.
pub fn chmod_bits(go_mode: u32) -> u32 {
    let mut m = go_mode & MODE_PERM;
    if go_mode & MODE_SETUID != 0 {
        m |= S_ISUID;
    }
    if go_mode & MODE_SETGID != 0 {
        m |= S_ISGID;
    }
    if go_mode & MODE_STICKY != 0 {
        m |= S_ISVTX;
    }
    m
}

/// Full Unix `st_mode` (type and `chmod` bits) of a Go mode.
pub fn to_unix(go_mode: u32) -> Option<u32> {
    unix_type(go_mode).map(|t| t | chmod_bits(go_mode))
}

/// Whether the receiver may ask for this entry's content: regular files only. Both ends must
/// agree on this, so it mirrors the upstream rule exactly (no type bit set at all).
pub fn can_request_data(go_mode: u32) -> bool {
    go_mode & MODE_TYPE == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_to_go() {
        assert_eq!(from_unix(S_IFREG | 0o644), 0o644);
        assert_eq!(from_unix(S_IFREG | 0o4755), MODE_SETUID | 0o755);
        assert_eq!(from_unix(S_IFDIR | 0o2775), MODE_DIR | MODE_SETGID | 0o775);
        assert_eq!(from_unix(S_IFDIR | 0o1777), MODE_DIR | MODE_STICKY | 0o777);
        assert_eq!(from_unix(S_IFLNK | 0o777), MODE_SYMLINK | 0o777);
        assert_eq!(from_unix(S_IFIFO | 0o600), MODE_NAMED_PIPE | 0o600);
        assert_eq!(from_unix(S_IFSOCK | 0o755), MODE_SOCKET | 0o755);
        assert_eq!(from_unix(S_IFBLK | 0o660), MODE_DEVICE | 0o660);
        assert_eq!(
            from_unix(S_IFCHR | 0o666),
            MODE_DEVICE | MODE_CHAR_DEVICE | 0o666
        );
        assert_eq!(
            from_unix(S_IFREG | 0o7777),
            MODE_SETUID | MODE_SETGID | MODE_STICKY | 0o777
        );
        // Values as Go prints them with %o, taken from fsutil stats of real files.
        assert_eq!(from_unix(S_IFDIR | 0o755), 0o20000000755);
        assert_eq!(from_unix(S_IFLNK | 0o777), 0o1000000777);
        assert_eq!(from_unix(S_IFCHR | 0o666), 0o410000666);
    }

    #[test]
    fn go_to_unix_round_trips() {
        for t in [
            S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO, S_IFSOCK, S_IFBLK, S_IFCHR,
        ] {
            for bits in [0, 0o644, 0o755, 0o4755, 0o2775, 0o1777, 0o7777, 0o400] {
                let st = t | bits;
                assert_eq!(to_unix(from_unix(st)), Some(st), "st_mode {st:o}");
            }
        }
        assert_eq!(to_unix(MODE_IRREGULAR | 0o644), None);
        assert_eq!(chmod_bits(MODE_DIR | MODE_SETGID | 0o755), 0o2755);
    }

    #[test]
    fn only_plain_files_carry_data() {
        assert!(can_request_data(0o644));
        assert!(can_request_data(MODE_SETUID | 0o755));
        assert!(!can_request_data(MODE_DIR | 0o755));
        assert!(!can_request_data(MODE_SYMLINK | 0o777));
        assert!(!can_request_data(MODE_NAMED_PIPE | 0o644));
        assert!(!can_request_data(MODE_DEVICE | 0o644));
        assert!(!can_request_data(MODE_SOCKET | 0o644));
    }
}
