//! This process's memory cgroup (a pod's container's): its limit, its peak and the OOM killer's kills, from cgroup v1 or v2 files read through the Host, so both versions are unit-tested.

use std::path::{Path, PathBuf};

use super::Host;

/// Where the cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1's "no limit": the page-rounded largest i64; any limit this large is none.
const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup interface the numbers came from; they name different files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The memory cgroup's numbers at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub version: Version,
    /// The directory the files were read from.
    pub dir: PathBuf,
    /// `memory.max` / `memory.limit_in_bytes`; None when unlimited.
    pub limit: Option<u64>,
    /// `memory.peak` / `memory.max_usage_in_bytes` (since the cgroup was made).
    pub peak: Option<u64>,
    /// `memory.events`' / `memory.oom_control`'s oom_kill: processes the OOM killer killed.
    /// v2 counts a child cgroup's kills here too; v1 counts them only in the killed process's
    /// own cgroup (a build step's, gone once it ends).
    pub oom_kills: Option<u64>,
    /// Times the usage hit the limit: v2's memory.events `max`, v1's `memory.failcnt` (which,
    /// unlike v1's oom_kill, is counted in the cgroup whose limit was hit).
    pub limit_hits: Option<u64>,
}

impl Memory {
    /// The file each number comes from, as the version names it: limit, peak, oom kills,
    /// limit hits.
    pub fn files(&self) -> [&'static str; 4] {
        match self.version {
            Version::V1 => [
                "memory.limit_in_bytes",
                "memory.max_usage_in_bytes",
                "memory.oom_control",
                "memory.failcnt",
            ],
            Version::V2 => [
                "memory.max",
                "memory.peak",
                "memory.events",
                "memory.events max",
            ],
        }
    }
}

/// The memory cgroup of this process, or None where none can be read (no cgroup filesystem).
pub fn memory(host: &dyn Host) -> Option<Memory> {
    let own = host.read_small_file(Path::new("/proc/self/cgroup"))?;
    let (version, rel) = own_memory_cgroup(&own)?;
    let base = match version {
        Version::V1 => Path::new(CGROUP_ROOT).join("memory"),
        Version::V2 => PathBuf::from(CGROUP_ROOT),
    };
    // A container sees its own cgroup at the mount's root while /proc/self/cgroup may still
    // name the whole path (cgroup v1 without a cgroup namespace).
    let probe = if version == Version::V1 {
        "memory.oom_control"
    } else {
        "memory.events"
    };
    let named = base.join(rel.trim_start_matches('/'));
    let dir = [named, base]
        .into_iter()
        .find(|d| host.read_small_file(&d.join(probe)).is_some())?;
    let read = |f: &str| host.read_small_file(&dir.join(f));
    Some(match version {
        Version::V1 => Memory {
            version,
            limit: read("memory.limit_in_bytes")
                .and_then(|t| number(&t))
                .filter(|&n| n < V1_UNLIMITED),
            peak: read("memory.max_usage_in_bytes").and_then(|t| number(&t)),
            oom_kills: read("memory.oom_control").and_then(|t| keyed(&t, "oom_kill")),
            limit_hits: read("memory.failcnt").and_then(|t| number(&t)),
            dir,
        },
        Version::V2 => Memory {
            version,
            limit: read("memory.max").and_then(|t| number(&t)),
            peak: read("memory.peak").and_then(|t| number(&t)),
            oom_kills: read("memory.events").and_then(|t| keyed(&t, "oom_kill")),
            limit_hits: read("memory.events").and_then(|t| keyed(&t, "max")),
            dir,
        },
    })
}

/// The memory controller's line of /proc/self/cgroup: v1's `N:memory[,…]:PATH` when there is
/// one (a hybrid host has both), else v2's `0::PATH`.
fn own_memory_cgroup(text: &str) -> Option<(Version, &str)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some((Version::V1, path));
        }
        if controllers.is_empty() {
            v2 = Some((Version::V2, path));
        }
    }
    v2
}

/// A file holding one number (`max` is none).
fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`oom_kill 3`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn cgroup_v1_reads_oom_control_and_max_usage_of_its_own_cgroup() {
        let mut h = FakeHost::root();
        h.files = vec![
            (
                "/proc/self/cgroup",
                "4:memory:/kubepods/pod1/c1\n0::/\n".into(),
            ),
            (
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into(),
            ),
            (
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes",
                "2147483648\n".into(),
            ),
            (
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.max_usage_in_bytes",
                "2147000000\n".into(),
            ),
            (
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.failcnt",
                "87\n".into(),
            ),
        ];
        let m = memory(&h).unwrap();
        assert_eq!(m.version, Version::V1);
        assert_eq!(m.limit, Some(2 << 30));
        assert_eq!(m.peak, Some(2_147_000_000));
        assert_eq!(m.oom_kills, Some(2));
        assert_eq!(m.limit_hits, Some(87));
        assert_eq!(m.files()[2], "memory.oom_control");
    }

    #[test]
    fn cgroup_v1_unlimited_and_a_container_seeing_its_cgroup_at_the_root() {
        let mut h = FakeHost::root();
        h.files = vec![
            ("/proc/self/cgroup", "4:memory:/process_api/x\n".into()),
            (
                "/sys/fs/cgroup/memory/memory.oom_control",
                "oom_kill 0\n".into(),
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n".into(),
            ),
        ];
        let m = memory(&h).unwrap();
        assert_eq!(m.dir, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!((m.limit, m.peak, m.oom_kills), (None, None, Some(0)));
    }

    #[test]
    fn cgroup_v2_reads_memory_events_peak_and_max() {
        let mut h = FakeHost::root();
        h.files = vec![
            ("/proc/self/cgroup", "0::/\n".into()),
            (
                "/sys/fs/cgroup/memory.events",
                "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n".into(),
            ),
            ("/sys/fs/cgroup/memory.max", "max\n".into()),
            ("/sys/fs/cgroup/memory.peak", "1048576\n".into()),
        ];
        let m = memory(&h).unwrap();
        assert_eq!(m.version, Version::V2);
        assert_eq!(
            (m.limit, m.peak, m.oom_kills),
            (None, Some(1 << 20), Some(1))
        );
        h.files[2].1 = "536870912\n".into();
        assert_eq!(memory(&h).unwrap().limit, Some(512 << 20));
        assert_eq!(memory(&h).unwrap().files()[1], "memory.peak");
    }

    #[test]
    fn no_cgroup_files_no_numbers() {
        assert_eq!(memory(&FakeHost::root()), None);
    }
}
