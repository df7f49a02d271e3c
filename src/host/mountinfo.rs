//! Reads /proc/self/mountinfo into mounts, undoing the kernel's escapes, for teardown (mounts left below a state dir) and host checks (masked /proc paths).
//!
//! Each line is `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER-OPTIONS`
//! (proc(5)). The kernel's show_mountinfo writes ROOT and MOUNT-POINT with seq_path/seq_dentry
//! and FSTYPE and SOURCE with mangle(), all escaping the same four bytes — space, tab, newline
//! and backslash — as a backslash and three octal digits (`\040`, `\011`, `\012`, `\134`); every
//! other byte is written as it is, so a path need not be UTF-8. A path with a space (a TMPDIR
//! under "/home/a b") is only found once those escapes are undone.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo: a mount as this process's mount namespace sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount's id, unique in the namespace (reused after it is unmounted).
    pub id: u32,
    /// The parent mount's id (its own id for the namespace's root).
    pub parent: u32,
    /// The filesystem's device, `(major, minor)`.
    pub device: (u32, u32),
    /// The directory of the filesystem that is mounted here (`/` unless a bind mount of a subdir).
    pub root: PathBuf,
    /// Where it is mounted, as seen from this process's root.
    pub mount_point: PathBuf,
    /// The per-mount options: `rw`, `nosuid`, `relatime`, …
    pub options: String,
    /// The tagged propagation fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    /// The filesystem type, with its subtype after a dot (`fuse.sshfs`).
    pub fs_type: String,
    /// The mount source (a device, `overlay`, `tmpfs`, `none`, or empty).
    pub source: OsString,
    /// The superblock's options, as the filesystem writes them (its own escaping, left as is).
    pub super_options: String,
}

impl Mount {
    /// Whether the mount point lies strictly inside `dir` (whole path components: `/a/bc` is not
    /// inside `/a/b`, and `dir` itself is not inside itself).
    pub fn is_inside(&self, dir: &Path) -> bool {
        self.mount_point != dir && self.mount_point.starts_with(dir)
    }
}

/// This process's mount table; an error where /proc is not mounted.
pub fn read_self() -> std::io::Result<Vec<Mount>> {
    // Bytes, not a String: a mount point need not be UTF-8.
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// Every line that reads as a mount; a malformed line is skipped, as one mount we cannot read
/// must not hide the others.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

/// One line, without its newline.
pub fn parse_line(line: &[u8]) -> Option<Mount> {
    // Fields are separated by single spaces; a field's own spaces are escaped, so an empty field
    // (an empty SOURCE shows as two spaces) stays a field.
    let mut fields = line.split(|&b| b == b' ');
    let mut next = || fields.next();
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u32>().ok();
    let id = number(next()?)?;
    let parent = number(next()?)?;
    let (major, minor) = std::str::from_utf8(next()?).ok()?.split_once(':')?;
    let device = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(OsString::from_vec(unescape(next()?)));
    let mount_point = PathBuf::from(OsString::from_vec(unescape(next()?)));
    let options = text(next()?);
    let mut optional = Vec::new();
    loop {
        match next()? {
            b"-" => break,
            tag => optional.push(text(tag)),
        }
    }
    let fs_type = String::from_utf8_lossy(&unescape(next()?)).into_owned();
    let source = OsString::from_vec(unescape(next()?));
    let super_options = next().map(text).unwrap_or_default();
    Some(Mount {
        id,
        parent,
        device,
        root,
        mount_point,
        options,
        optional,
        fs_type,
        source,
        super_options,
    })
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}

/// Undoes the kernel's octal escapes: a backslash and three octal digits is that byte. A
/// backslash not followed so is kept as it is (the kernel never writes one: it escapes its own).
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if let [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] = field[i..] {
            out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// The order to detach mount points in: deepest first, so no mount is detached while another
/// is still mounted inside it.
pub fn deepest_first<'a>(points: impl IntoIterator<Item = &'a Path>) -> Vec<&'a Path> {
    let mut points: Vec<&Path> = points.into_iter().collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// The kernel's mangle_path, to check unescape against.
    fn escape(path: &OsStr) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in path.as_bytes() {
            match b {
                b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
                _ => out.push(b),
            }
        }
        out
    }

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 22 0:23 /null /proc/kcore ro,nosuid - tmpfs tmpfs rw,size=0k
26 22 0:24 / /proc/scsi ro,relatime master:3 propagate_from:2 unbindable - tmpfs tmpfs ro
40 1 8:1 / /tmp/a\\040b rw,relatime - ext4 /dev/sda1 rw
41 40 0:50 / /tmp/a\\040b/run/x rw - overlay overlay rw,lowerdir=/l\\054x
42 40 0:51 /sub\\011dir /tmp/a\\040b/run/x/y\\012z\\134w rw - fuse.sshfs  rw
";

    #[test]
    fn every_field_of_a_line() {
        let m = parse(SAMPLE.as_bytes());
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[0],
            Mount {
                id: 22,
                parent: 1,
                device: (0, 21),
                root: "/".into(),
                mount_point: "/proc".into(),
                options: "rw,nosuid,nodev,noexec,relatime".into(),
                optional: vec!["shared:12".into()],
                fs_type: "proc".into(),
                source: "proc".into(),
                super_options: "rw".into(),
            }
        );
        assert_eq!(m[1].root, Path::new("/null"));
        assert!(m[1].optional.is_empty());
        assert_eq!(
            m[2].optional,
            ["master:3", "propagate_from:2", "unbindable"]
        );
        assert_eq!(m[3].source, "/dev/sda1");
        // An empty source is a field of its own; the super options stay as the fs wrote them.
        assert_eq!(m[5].fs_type, "fuse.sshfs");
        assert_eq!(m[5].source, "");
        assert_eq!(m[5].super_options, "rw");
        assert_eq!(m[4].super_options, "rw,lowerdir=/l\\054x");
    }

    #[test]
    fn the_four_escapes_are_undone() {
        let m = parse(SAMPLE.as_bytes());
        assert_eq!(m[3].mount_point, Path::new("/tmp/a b"));
        assert_eq!(m[5].root, Path::new("/sub\tdir"));
        assert_eq!(m[5].mount_point, Path::new("/tmp/a b/run/x/y\nz\\w"));
        for p in [
            "/a b",
            "/t\tab",
            "/new\nline",
            "/back\\slash",
            "/ünï",
            "/plain",
        ] {
            let escaped = escape(OsStr::new(p));
            assert!(!escaped.iter().any(|b| b" \t\n".contains(b)), "{p}");
            assert_eq!(unescape(&escaped), p.as_bytes());
        }
    }

    #[test]
    fn odd_backslashes_and_bytes_are_kept() {
        assert_eq!(unescape(b"a\\x"), b"a\\x");
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"\\+12"), b"\\+12");
        assert_eq!(unescape(b"\\477"), b"\\477");
        assert_eq!(unescape(b"\\0400"), b" 0");
        // A mount point need not be UTF-8.
        let line = b"50 1 0:5 / /tmp/\xff\\040x rw - tmpfs tmpfs rw";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/tmp/\xff x");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = b"garbage\n1 2 3\n60 1 0:5 / /x rw no-separator tmpfs\n61 1 0:5 / /y rw - tmpfs tmpfs rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/y"));
    }

    #[test]
    fn inside_is_by_whole_components() {
        let m = parse(SAMPLE.as_bytes());
        let inside = |dir: &str| -> Vec<&Path> {
            m.iter()
                .filter(|x| x.is_inside(Path::new(dir)))
                .map(|x| x.mount_point.as_path())
                .collect()
        };
        assert_eq!(
            inside("/proc"),
            [Path::new("/proc/kcore"), Path::new("/proc/scsi")]
        );
        assert_eq!(inside("/proc/"), inside("/proc"));
        assert!(inside("/pro").is_empty());
        assert_eq!(inside("/tmp/a b/run").len(), 2);
        assert!(inside("/tmp/a").is_empty());
    }

    #[test]
    fn detach_order_is_deepest_first() {
        let m = parse(SAMPLE.as_bytes());
        let order = deepest_first(
            m.iter()
                .filter(|x| x.mount_point.starts_with("/tmp/a b"))
                .map(|x| x.mount_point.as_path()),
        );
        assert_eq!(
            order,
            [
                Path::new("/tmp/a b/run/x/y\nz\\w"),
                Path::new("/tmp/a b/run/x"),
                Path::new("/tmp/a b"),
            ]
        );
    }

    #[test]
    fn every_line_the_kernel_writes_is_read() {
        // Where /proc is mounted (every machine the tests run on), no line is skipped.
        if let Ok(text) = std::fs::read("/proc/self/mountinfo") {
            let lines = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            assert_eq!(parse(&text).len(), lines);
        }
    }
}
