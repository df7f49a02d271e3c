//! The kernel's rules for shared sticky directories (fs.protected_symlinks=1, protected_fifos=2, protected_regular=2), applied by bkrun itself so it is never weaker than them, whatever this machine's sysctls say.
//!
//! In a sticky directory others can write to, anyone can plant a name bkrun is about to use: a
//! symlink to /etc/shadow, a FIFO that blocks, a hard link to a root-owned file. The kernel,
//! when asked, lets a process follow such a link or open such a file only when the process or
//! the directory's owner owns it; these functions say the same, so bkrun refuses exactly what
//! a hardened kernel would have refused.

use super::{Kind, Stat};

/// Why bkrun will not use an entry of a shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The entry and what it is, e.g. "/tmp/img.tar is a symlink owned by uid 65534".
    pub what: String,
    /// The directory it is in, and why that is shared.
    pub dir: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {}: bkrun uses it only if you or the directory's owner own it (as the kernel's fs.protected_symlinks/protected_fifos/protected_regular do): remove it, or choose a path in a directory only you can write to",
            self.what, self.dir
        )
    }
}

/// A symlink in a sticky, world-writable directory is followed only when its owner is the
/// follower or the directory's owner (protected_symlinks=1).
pub fn may_follow(dir: &Stat, link: &Stat, euid: u32) -> bool {
    let shared = dir.mode & 0o1000 != 0 && dir.mode & 0o002 != 0;
    !shared || link.uid == euid || link.uid == dir.uid
}

/// An existing FIFO, device, socket or regular file in a sticky directory that others (its
/// group or everyone) can write to is opened or replaced only when its owner is this user or
/// the directory's owner (protected_fifos=2, protected_regular=2). Devices are held to the FIFO
/// rule, and directories an export would write into to the regular one, as nothing else guards
/// them: root exporting into a directory another user planted would hand them the build.
pub fn may_use_existing(dir: &Stat, node: &Stat, euid: u32) -> bool {
    if dir.mode & 0o1000 == 0 {
        return true;
    }
    node.uid == euid || node.uid == dir.uid || dir.mode & 0o022 == 0
}

/// Describes a refusal of `name` (its path as the user would see it) in `dir_path`.
pub fn refusal(
    path: &std::path::Path,
    node: &Stat,
    dir_path: &std::path::Path,
    dir: &Stat,
) -> Refusal {
    let kind = match node.kind {
        Kind::Symlink => "a symlink",
        Kind::Fifo => "a FIFO",
        Kind::Socket => "a socket",
        Kind::Device => "a device",
        Kind::File if node.nlink > 1 => "a hard-linked file",
        Kind::File => "a file",
        Kind::Dir => "a directory",
    };
    let writable = if dir.mode & 0o002 != 0 {
        "world-writable"
    } else {
        "group-writable"
    };
    Refusal {
        what: format!("{} is {kind} owned by uid {}", path.display(), node.uid),
        dir: format!(
            "the shared directory {} (sticky, {writable}, owned by uid {})",
            dir_path.display(),
            dir.uid
        ),
    }
}

/// Who else can write to a directory bkrun will hand to buildkitd or rootlesskit by path (a
/// state or socket dir): None when only this user (and root) can. Writable through one of the
/// user's own groups is fine (OpenShift runs with gid 0, fsGroup volumes are group-writable).
pub fn others_can_write(dir: &Stat, euid: u32, groups: &[u32]) -> Option<String> {
    if dir.mode & 0o002 != 0 {
        return Some(format!("it is world-writable (mode {:04o})", dir.mode));
    }
    if dir.uid != euid && dir.uid != 0 && !(dir.mode & 0o020 != 0 && groups.contains(&dir.gid)) {
        return Some(format!("it is owned by uid {}, not by uid {euid}", dir.uid));
    }
    if dir.mode & 0o020 != 0 && !groups.contains(&dir.gid) {
        return Some(format!(
            "group {} can write to it (mode {:04o}) and uid {euid} is not in that group",
            dir.gid, dir.mode
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: Kind, mode: u32, uid: u32) -> Stat {
        Stat {
            kind,
            mode,
            uid,
            gid: uid,
            dev: 1,
            ino: 1,
            nlink: 1,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
        }
    }

    #[test]
    fn links_in_a_shared_sticky_dir_are_followed_only_when_owned() {
        let tmp = st(Kind::Dir, 0o1777, 0);
        let link = |uid| st(Kind::Symlink, 0o777, uid);
        assert!(
            !may_follow(&tmp, &link(65534), 0),
            "nobody's link, root follows"
        );
        assert!(may_follow(&tmp, &link(0), 1000), "the dir owner's link");
        assert!(may_follow(&tmp, &link(1000), 1000), "one's own link");
        // Not world-writable, or not sticky: the kernel follows, and so does bkrun.
        assert!(may_follow(&st(Kind::Dir, 0o1770, 0), &link(65534), 0));
        assert!(may_follow(&st(Kind::Dir, 0o777, 0), &link(65534), 0));
    }

    #[test]
    fn existing_files_fifos_and_devices_follow_the_level_two_rules() {
        let tmp = st(Kind::Dir, 0o1777, 0);
        let group_sticky = st(Kind::Dir, 0o1770, 0);
        for kind in [Kind::File, Kind::Fifo, Kind::Device, Kind::Socket] {
            let theirs = st(kind, 0o666, 65534);
            assert!(!may_use_existing(&tmp, &theirs, 0), "{kind:?}");
            assert!(!may_use_existing(&group_sticky, &theirs, 0), "{kind:?}");
            assert!(may_use_existing(&tmp, &st(kind, 0o600, 0), 0));
            assert!(may_use_existing(&tmp, &st(kind, 0o600, 1000), 1000));
            assert!(may_use_existing(&st(Kind::Dir, 0o1755, 0), &theirs, 0));
            assert!(may_use_existing(&st(Kind::Dir, 0o777, 0), &theirs, 0));
        }
    }

    #[test]
    fn state_and_socket_dirs_only_this_user_can_write() {
        let g = [1000, 0];
        assert_eq!(
            others_can_write(&st(Kind::Dir, 0o700, 1000), 1000, &g),
            None
        );
        assert_eq!(others_can_write(&st(Kind::Dir, 0o755, 0), 1000, &g), None);
        let openshift = Stat {
            gid: 0,
            ..st(Kind::Dir, 0o2775, 0)
        };
        assert_eq!(others_can_write(&openshift, 1000680000, &[0]), None);
        let e = others_can_write(&st(Kind::Dir, 0o777, 1000), 1000, &g).unwrap();
        assert_eq!(e, "it is world-writable (mode 0777)");
        let e = others_can_write(&st(Kind::Dir, 0o700, 1001), 0, &[0]).unwrap();
        assert_eq!(e, "it is owned by uid 1001, not by uid 0");
        let theirs = Stat {
            gid: 50,
            ..st(Kind::Dir, 0o770, 1000)
        };
        assert!(others_can_write(&theirs, 1000, &g)
            .unwrap()
            .contains("group 50"));
    }
}
