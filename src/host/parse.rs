//! Pure parsers for what the host tells in files: /proc/self/status, uid_map, mountinfo, /etc/subuid, file-capability xattrs.

use super::{IdRange, ProcStatus};

/// The parent pid in a /proc/PID/stat line.
pub fn stat_ppid(stat: &str) -> Option<i32> {
    // The command name is in parentheses and may hold spaces; fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// The fields of /proc/self/status that matter; absent ones read as zero.
pub fn proc_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Seccomp" => s.seccomp = value.parse().unwrap_or(0),
            "NoNewPrivs" => s.no_new_privs = value == "1",
            "CapEff" => s.cap_eff = u64::from_str_radix(value, 16).unwrap_or(0),
            "CapBnd" => s.cap_bnd = u64::from_str_radix(value, 16).unwrap_or(0),
            _ => {}
        }
    }
    s
}

/// The initial user namespace maps the whole 32-bit range onto itself.
pub fn is_identity_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Mount points below /proc in a mountinfo text: what a runtime masked or made read-only.
pub fn masked_proc_paths(mountinfo: &[u8]) -> Vec<String> {
    let proc = std::path::Path::new("/proc");
    crate::host::mountinfo::parse(mountinfo)
        .into_iter()
        .filter(|m| m.is_inside(proc))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

/// The inside ranges of a /proc/self/uid_map or gid_map text (`inside outside count` lines):
/// the ids this user namespace maps.
pub fn id_map_inside(map: &str) -> Vec<IdRange> {
    map.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .map(|w| w.parse().ok())
                .collect::<Option<_>>()?;
            match f[..] {
                [inside, _, count] => Some(IdRange {
                    start: inside,
                    count,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The ranges an /etc/subuid or /etc/subgid text (`owner:start:count` lines) gives the user
/// `uid` or `name`, in file order; comments and malformed lines are skipped.
pub fn subid_ranges(text: &str, uid: &str, name: Option<&str>) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || !(owner == uid || Some(owner) == name) {
                return None;
            }
            Some(IdRange {
                start: start.parse().ok()?,
                count: count.parse().ok()?,
            })
        })
        .collect()
}

/// The permitted set of a `security.capability` xattr (struct vfs_cap_data, revisions 1 to 3:
/// a little-endian magic word, then permitted/inheritable pairs of 32-bit words).
pub fn file_caps_permitted(xattr: &[u8]) -> Option<u64> {
    let word = |i: usize| {
        xattr
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let revision = word(0)? & 0xff00_0000;
    let low = u64::from(word(1)?);
    match revision {
        0x0100_0000 => Some(low),
        0x0200_0000 | 0x0300_0000 => Some(low | u64::from(word(3)?) << 32),
        _ => None,
    }
}

/// The names of the capabilities set in `mask`, for messages.
pub fn cap_names(mask: u64) -> Vec<&'static str> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_fields_a_pod_decides() {
        let s = proc_status(
            "Name:\tbkrun\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\nCapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n",
        );
        assert_eq!(s.seccomp, 2);
        assert!(s.no_new_privs);
        assert_eq!(s.cap_eff, 0);
        assert!(s.has_bnd(crate::host::CAP_SETUID) && !s.has_bnd(crate::host::CAP_SYS_ADMIN));
        assert_eq!(
            cap_names(s.cap_bnd),
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETGID",
                "SETUID",
                "SETPCAP",
                "NET_BIND_SERVICE",
                "NET_RAW",
                "SYS_CHROOT",
                "MKNOD",
                "AUDIT_WRITE",
                "SETFCAP"
            ]
        );
    }

    #[test]
    fn identity_map_is_the_initial_namespace() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("         0       1000          1\n"));
    }

    #[test]
    fn finds_masked_proc_paths() {
        let mi = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                  23 22 0:5 /null /proc/kcore rw - devtmpfs udev rw\n\
                  24 22 0:22 / /proc/acpi ro - tmpfs tmpfs ro\n";
        assert_eq!(
            masked_proc_paths(mi.as_bytes()),
            ["/proc/kcore", "/proc/acpi"]
        );
    }

    #[test]
    fn subid_entries_match_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:65536\n# x\nalice:300000:10\nbad line\n";
        let r = |start, count| IdRange { start, count };
        assert_eq!(
            subid_ranges(t, "1000", Some("alice")),
            [r(100000, 65536), r(300000, 10)]
        );
        assert_eq!(subid_ranges(t, "1001", Some("bob")), [r(200000, 65536)]);
        assert!(subid_ranges(t, "1002", Some("carol")).is_empty());
        assert!(subid_ranges(t, "1002", None).is_empty());
    }

    #[test]
    fn a_namespace_maps_the_inside_columns() {
        let r = |start, count| IdRange { start, count };
        assert_eq!(
            id_map_inside("         0          0 4294967295\n"),
            [r(0, 4294967295)]
        );
        // podman's --userns=auto:size=65536, Kubernetes' hostUsers: false.
        let pod = id_map_inside("         0    2000000      65536\n");
        assert_eq!(pod, [r(0, 65536)]);
        assert!(r(1000, 1).covered_by(&pod));
        assert!(!r(100000, 65536).covered_by(&pod));
        assert!(!r(60000, 10000).covered_by(&pod), "partly outside");
        assert!(r(1, 65535).covered_by(&pod));
        // Two touching lines cover what spans them.
        assert!(r(10, 20).covered_by(&[r(0, 15), r(15, 100)]));
        assert!(!r(10, 20).covered_by(&[r(0, 15), r(16, 100)]));
        assert_eq!(r(100000, 65536).to_string(), "100000-165535");
    }

    #[test]
    fn file_capabilities_of_each_revision() {
        // `setcap cap_setuid=ep` writes revision 2: effective flag, permitted bit 7.
        let v2 = [
            0x01, 0, 0, 0x02, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(file_caps_permitted(&v2), Some(1 << 7));
        // Revision 3 adds the namespace root uid after the same words.
        let mut v3 = v2.to_vec();
        v3[3] = 0x03;
        v3[12] = 0x01; // permitted high word: capability 32
        v3.extend([0, 0, 0, 0]);
        assert_eq!(file_caps_permitted(&v3), Some(1 << 7 | 1 << 32));
        assert_eq!(
            file_caps_permitted(&[0x01, 0, 0, 0x01, 0x40, 0, 0, 0]),
            Some(1 << 6)
        );
        assert_eq!(file_caps_permitted(&[1, 2]), None);
        assert_eq!(file_caps_permitted(&[0, 0, 0, 0x09, 0, 0, 0, 0]), None);
    }
}
