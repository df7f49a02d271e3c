//! The state dir's storage, judged before buildkitd starts: the snapshotter its "auto" will pick and why (overlayfs, fuse-overlayfs, or the slow native copy), and the mounts that make builds slow or break them (overlayfs or a network filesystem under the state dir, nosuid/nodev), each as one line with the change to make.
//!
//! BuildKit v0.32.2's "auto" (cmd/buildkitd/main_oci_worker.go) takes overlayfs when a test
//! overlay mount with two lower dirs works in the state dir (containerd's
//! overlayutils.Supported), else fuse-overlayfs when the `fuse-overlayfs` program is on PATH and
//! its test mount works, else native. bkrun predicts that from facts instead of mounting: the
//! filesystem under the state dir (overlayfs refuses overlayfs, network and FUSE filesystems as
//! its upper layer), whether the daemon runs in a user namespace (overlayfs allows mounts there
//! from Linux 5.11, or on Ubuntu's and Debian's patched kernels), and fuse-overlayfs and
//! /dev/fuse.

use std::path::{Path, PathBuf};

use crate::config::flag_value;
use crate::host::{FsStat, Host, Kernel, PathKind};

/// What bkrun knows of the state dir's storage and what buildkitd will do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub state_dir: PathBuf,
    pub fs: Option<FsStat>,
    /// The filesystem's name: `ext4`, `NFS`, `overlayfs`.
    pub fs_name: String,
    /// Its mount as mountinfo shows it, when found: `nfs4 at /mnt/cache`.
    pub mount: Option<String>,
    /// `overlayfs`, `fuse-overlayfs`, `native`, or what BUILDKITD_FLAGS names.
    pub snapshotter: String,
    pub why: String,
    /// One line each, saying what, what it costs and the change to make.
    pub warnings: Vec<String>,
}

/// What kind of filesystem a statfs magic number (linux/magic.h) names, as far as snapshots care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A local filesystem overlayfs can write to.
    Local(&'static str),
    /// overlayfs itself: a container's own root filesystem, in most pods.
    Overlay,
    /// A network filesystem.
    Network(&'static str),
    /// One overlayfs cannot take as its upper layer for other reasons.
    NoUpper(&'static str),
    Unknown,
}

fn kind(magic: u64) -> Kind {
    match magic {
        0xef53 => Kind::Local("ext4"),
        0x5846_5342 => Kind::Local("xfs"),
        0x9123_683e => Kind::Local("btrfs"),
        0x0102_1994 => Kind::Local("tmpfs"),
        0x2fc1_2fc1 => Kind::Local("zfs"),
        0x794c_7630 => Kind::Overlay,
        0x6969 => Kind::Network("NFS"),
        0xff53_4d42 => Kind::Network("CIFS"),
        0xfe53_4d42 => Kind::Network("SMB2"),
        0x517b => Kind::Network("SMB"),
        0x00c3_6400 => Kind::Network("CephFS"),
        0x0102_1997 => Kind::Network("9p"),
        0x6573_5546 => Kind::NoUpper("FUSE"),
        0xf15f => Kind::NoUpper("eCryptfs"),
        0x4d44 => Kind::NoUpper("FAT"),
        _ => Kind::Unknown,
    }
}

/// Judges the storage of `state_dir` for a daemon that runs in a user namespace or not
/// (`userns`: the rootless modes, or root in a `hostUsers: false` pod), with `flags` the
/// daemon's extra flags (BUILDKITD_FLAGS, bkrun.toml).
pub fn judge(host: &dyn Host, state_dir: &Path, userns: bool, flags: &[String]) -> Storage {
    let fs = host.statfs(state_dir);
    let kind = fs.as_ref().map_or(Kind::Unknown, |f| kind(f.magic));
    let fs_name = name_of(fs.as_ref(), kind);
    let mount = fs.as_ref().and_then(|f| mount_of(host, &f.path));
    let (snapshotter, why, cost) = match flag_value(flags, "--oci-worker-snapshotter") {
        Some(s) if s != "auto" => (s, "set by --oci-worker-snapshotter".to_string(), None),
        _ => auto(host, kind, &fs_name, userns, state_dir),
    };
    let mut warnings: Vec<String> = cost.into_iter().collect();
    if let (Kind::Network(name), false) = (kind, snapshotter == "native") {
        // Native's warning already names it; any other snapshotter still writes every layer
        // and cache record over the network.
        warnings.push(format!("the state dir {} is on {name}: every layer and cache record buildkitd writes goes over the network; put the state dir on a local disk: --root (root in bkrun.toml), or a volume mounted there", state_dir.display()));
    }
    if snapshotter == "native" {
        if let Some(w) = locked_flags(fs.as_ref(), state_dir) {
            warnings.push(w);
        }
    }
    Storage {
        state_dir: state_dir.to_path_buf(),
        fs,
        fs_name,
        mount,
        snapshotter,
        why,
        warnings,
    }
}

/// The snapshotter "auto" will pick, why, and for native the warning with its cost and fix.
fn auto(
    host: &dyn Host,
    kind: Kind,
    fs_name: &str,
    userns: bool,
    state_dir: &Path,
) -> (String, String, Option<String>) {
    let dir = state_dir.display();
    let (no_overlay, fix) = match kind {
        Kind::Overlay => (
            Some("the state dir is on overlayfs, as a container's own filesystem is, which overlayfs cannot take as its upper layer".to_string()),
            format!("mount a volume at {dir} (an emptyDir in a pod), or choose a state dir on one with --root"),
        ),
        Kind::Network(_) | Kind::NoUpper(_) => (
            Some(format!("the state dir is on {fs_name}, which overlayfs cannot take as its upper layer")),
            format!("put the state dir on a local disk: --root (root in bkrun.toml), or a volume mounted at {dir}"),
        ),
        _ => (None, String::new()),
    };
    let (no_overlay, fix) = match (no_overlay, userns_overlay(&host.kernel(), userns)) {
        (Some(why), _) => (Some(why), fix),
        (None, Err(why)) => (
            Some(why),
            "run on a kernel of 5.11 or later, or install fuse-overlayfs and give the container /dev/fuse".into(),
        ),
        (None, Ok(())) => (None, fix),
    };
    let Some(why) = no_overlay else {
        let place = if userns { " in a user namespace" } else { "" };
        return (
            "overlayfs".into(),
            format!("overlayfs works on {fs_name}{place}"),
            None,
        );
    };
    let fuse = host.which("fuse-overlayfs").is_some();
    let dev_fuse = host.path_kind(Path::new("/dev/fuse")) == PathKind::Special;
    if fuse && dev_fuse {
        return (
            "fuse-overlayfs".into(),
            format!("{why}; fuse-overlayfs and /dev/fuse are here (a userspace overlay: slower than the kernel's on file-heavy steps)"),
            None,
        );
    }
    let missing = if fuse {
        "/dev/fuse is missing"
    } else {
        "fuse-overlayfs is not on PATH"
    };
    let warning = format!("buildkitd will use the native snapshotter, which copies every layer in full for each step: builds slow down several times and the cache grows (moby/buildkit#2642); {why}, and {missing}; {fix}");
    (
        "native".into(),
        format!("{why}, and {missing}"),
        Some(warning),
    )
}

/// Whether overlayfs can be mounted where the daemon runs: anywhere outside a user namespace;
/// inside one from Linux 5.11 (the kernel's unprivileged overlayfs), on Ubuntu's kernels
/// (patched since long before), or on Debian's with the module's permit_mounts_in_userns.
fn userns_overlay(k: &Kernel, userns: bool) -> Result<(), String> {
    if !userns || k.version.contains("Ubuntu") || k.overlay_permit_userns == Some(true) {
        return Ok(());
    }
    let mut parts = k
        .release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) < (5, 11) => Err(format!(
            "kernel {} is older than 5.11, the first to allow overlayfs in a user namespace",
            k.release
        )),
        // A release bkrun cannot read is taken as new enough: buildkitd tries anyway.
        _ => Ok(()),
    }
}

/// The warning for a nosuid or nodev mount under the state dir: the native snapshotter's root
/// filesystems are bind mounts of directories there, which keep those flags (in a user
/// namespace the kernel locks them). Container-Optimized OS and Bottlerocket mount emptyDirs so
/// (moby/buildkit#879, #3098).
fn locked_flags(fs: Option<&FsStat>, state_dir: &Path) -> Option<String> {
    let fs = fs?;
    let flags: Vec<&str> = [(fs.nosuid, "nosuid"), (fs.nodev, "nodev")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if flags.is_empty() {
        return None;
    }
    let mut lost = Vec::new();
    if fs.nosuid {
        lost.push("setuid programs (sudo, su, ping) in RUN steps get no privilege");
    }
    if fs.nodev {
        lost.push("device files in the image do not open");
    }
    Some(format!(
        "the state dir {} is on a {} mount, which the native snapshotter's bind mounts keep: {} (moby/buildkit#879, #3098); mount its volume without {}",
        state_dir.display(),
        flags.join(","),
        lost.join(", and "),
        flags.join(" and ")
    ))
}

/// The filesystem's name, from its magic number.
fn name_of(fs: Option<&FsStat>, kind: Kind) -> String {
    match (fs, kind) {
        (None, _) => "unknown (statfs failed)".into(),
        (_, Kind::Local(n) | Kind::Network(n) | Kind::NoUpper(n)) => n.to_string(),
        (_, Kind::Overlay) => "overlayfs".into(),
        (Some(f), Kind::Unknown) => format!("filesystem 0x{:x}", f.magic),
    }
}

/// The mount holding `path` as mountinfo shows it (type and mount point), for people to find it.
fn mount_of(host: &dyn Host, path: &Path) -> Option<String> {
    host.mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| format!("{} at {}", m.fs_type, m.mount_point.display()))
}

/// The filesystem line for `bkrun config` and doctor: the name and the mount flags that matter.
pub fn fs_line(s: &Storage) -> String {
    let mut line = s.fs_name.clone();
    if let Some(m) = &s.mount {
        line.push_str(&format!(" ({m})"));
    }
    if let Some(fs) = &s.fs {
        if fs.nosuid {
            line.push_str(", nosuid");
        }
        if fs.nodev {
            line.push_str(", nodev");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, EXT4};

    const STATE: &str = "/home/u/.local/share/buildkit";

    fn judged(h: &FakeHost, userns: bool) -> Storage {
        judge(h, Path::new(STATE), userns, &[])
    }

    fn with_fs(magic: u64, nosuid: bool, nodev: bool) -> FakeHost {
        FakeHost {
            filesystems: vec![("/", magic, false, false), ("/home", magic, nosuid, nodev)],
            ..FakeHost::user()
        }
    }

    #[test]
    fn a_local_disk_gets_overlayfs_with_no_warning() {
        let s = judged(&FakeHost::user(), true);
        assert_eq!(s.snapshotter, "overlayfs");
        assert_eq!(s.why, "overlayfs works on ext4 in a user namespace");
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn the_container_s_own_overlay_falls_back_to_fuse_or_native() {
        let mut h = with_fs(0x794c_7630, false, false);
        h.programs.push("fuse-overlayfs");
        h.paths.push(("/dev/fuse", PathKind::Special));
        let s = judged(&h, true);
        assert_eq!(s.snapshotter, "fuse-overlayfs");
        assert!(s.warnings.is_empty(), "{s:?}");
        // No /dev/fuse (a pod's default): the slow copy, said with its cost and the fix.
        h.paths.clear();
        let s = judged(&h, true);
        assert_eq!(s.snapshotter, "native");
        let w = &s.warnings[0];
        assert!(w.contains("moby/buildkit#2642"), "{w}");
        assert!(w.contains("/dev/fuse is missing"), "{w}");
        assert!(
            w.contains(&format!("mount a volume at {STATE} (an emptyDir in a pod)")),
            "{w}"
        );
    }

    #[test]
    fn a_network_filesystem_is_named_with_local_disk_as_the_fix() {
        for (magic, name) in [(0x6969, "NFS"), (0xff53_4d42, "CIFS")] {
            let s = judged(&with_fs(magic, false, false), false);
            assert_eq!(s.snapshotter, "native");
            assert!(
                s.why.starts_with(&format!("the state dir is on {name}")),
                "{s:?}"
            );
            assert!(s.warnings[0].contains("put the state dir on a local disk"));
        }
        // With fuse-overlayfs (or a snapshotter set), the network is still named.
        let mut h = with_fs(0x6969, false, false);
        h.programs.push("fuse-overlayfs");
        h.paths.push(("/dev/fuse", PathKind::Special));
        let s = judged(&h, false);
        assert_eq!(s.snapshotter, "fuse-overlayfs");
        assert_eq!(s.warnings.len(), 1, "{s:?}");
        assert!(
            s.warnings[0].starts_with(&format!("the state dir {STATE} is on NFS: every layer")),
            "{s:?}"
        );
    }

    #[test]
    fn old_kernels_refuse_overlayfs_in_a_user_namespace_only() {
        let mut h = FakeHost::user();
        h.kernel.release = "4.19.0-26-amd64".into();
        let s = judged(&h, true);
        assert_eq!(s.snapshotter, "native");
        assert!(
            s.why.contains("kernel 4.19.0-26-amd64 is older than 5.11"),
            "{s:?}"
        );
        assert_eq!(judged(&h, false).snapshotter, "overlayfs");
        h.kernel.overlay_permit_userns = Some(true);
        assert_eq!(judged(&h, true).snapshotter, "overlayfs");
        h.kernel.overlay_permit_userns = None;
        h.kernel.version = "#95-Ubuntu SMP Fri Aug 9 18:23:12 UTC 2024".into();
        assert_eq!(judged(&h, true).snapshotter, "overlayfs");
    }

    #[test]
    fn nosuid_and_nodev_are_warned_of_where_bind_mounts_keep_them() {
        // On overlayfs the root filesystems are fresh overlay mounts: a fact, no warning.
        let s = judged(&with_fs(EXT4, true, true), true);
        assert_eq!(s.snapshotter, "overlayfs");
        assert!(s.warnings.is_empty());
        assert_eq!(fs_line(&s), "ext4, nosuid, nodev");
        // With native they are kept.
        let s = judge(
            &with_fs(EXT4, true, false),
            Path::new(STATE),
            true,
            &["--oci-worker-snapshotter=native".into()],
        );
        assert_eq!(s.why, "set by --oci-worker-snapshotter");
        assert_eq!(s.warnings.len(), 1, "{s:?}");
        assert!(
            s.warnings[0].starts_with(&format!("the state dir {STATE} is on a nosuid mount")),
            "{s:?}"
        );
        assert!(s.warnings[0].contains("setuid programs"));
        assert!(!s.warnings[0].contains("device files"));
    }
}
