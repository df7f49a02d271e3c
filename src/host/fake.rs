//! A host made of plain fields: the test double for mode, path, doctor, teardown and build-resolving tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

use super::{
    FsStat, Host, IdRange, IdSets, Kernel, NsProbe, PathKind, Privilege, ProcStatus, Sysctls,
};
use crate::host::mountinfo::Mount;

/// Every fact a test may want to set; `root()` and `user()` are the usual starting points.
#[derive(Clone, Debug)]
pub struct FakeHost {
    pub euid: u32,
    pub status: ProcStatus,
    pub userns: bool,
    pub probe: NsProbe,
    pub sysctls: Sysctls,
    pub apparmor: Option<String>,
    pub masked: Vec<String>,
    /// The user has subordinate ids: `subid_range` in both /etc/subuid and /etc/subgid.
    pub subids: bool,
    pub subid_range: IdRange,
    /// What the user namespace maps, uids and gids alike (the whole range outside one).
    pub ns_map: Vec<IdRange>,
    /// The user has a passwd entry (OpenShift's arbitrary uids have none).
    pub passwd: bool,
    pub programs: Vec<&'static str>,
    pub privileges: Vec<(&'static str, Privilege)>,
    pub env: Vec<(&'static str, &'static str)>,
    /// Standard output and error are a terminal.
    pub tty: bool,
    pub usable_dirs: Vec<&'static str>,
    /// Paths that exist besides `usable_dirs`, with what they are (symlinks go in `links`).
    pub paths: Vec<(&'static str, PathKind)>,
    /// Symlinks as (link, what it holds).
    pub links: Vec<(&'static str, &'static str)>,
    /// Files and devices this process may open for writing.
    pub writable: Vec<&'static str>,
    /// Unix sockets something answers on.
    pub sockets: Vec<&'static str>,
    /// Directories other users can write to, with why.
    pub shared_dirs: Vec<(&'static str, &'static str)>,
    /// Processes as (pid, parent, comm).
    pub procs: Vec<(i32, i32, &'static str)>,
    pub mount_table: Vec<Mount>,
    pub binfmt: super::binfmt::Binfmt,
    /// Filesystems as (mount point, magic, nosuid, nodev); a path is on the longest that holds it.
    pub filesystems: Vec<(&'static str, u64, bool, bool)>,
    pub kernel: Kernel,
    /// Free and total bytes of the filesystems in `filesystems`, as (mount point, avail, size);
    /// 100 GiB free of 200 when not listed.
    pub space: Vec<(&'static str, u64, u64)>,
    /// Small /proc and /sys files (cgroup counters) as (path, text).
    pub files: Vec<(&'static str, String)>,
    /// Every effect asked for, in order: `kill PID SIGNAL`, `unmount PATH`.
    pub effects: Arc<Mutex<Vec<String>>>,
}

impl FakeHost {
    /// The effects asked for so far.
    pub fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }
}

/// All capabilities, as a privileged container or the host has them.
pub const ALL_CAPS: u64 = (1 << 41) - 1;
/// The capabilities containerd gives a container by default (no SYS_ADMIN).
pub const DEFAULT_CAPS: u64 = 0xa80425fb;

/// ext4's magic number (linux/magic.h), the filesystem a fake host's files are on by default.
pub const EXT4: u64 = 0xef53;

impl FakeHost {
    pub fn root() -> Self {
        FakeHost {
            euid: 0,
            status: ProcStatus {
                seccomp: 0,
                no_new_privs: false,
                cap_eff: ALL_CAPS,
                cap_bnd: ALL_CAPS,
            },
            userns: false,
            probe: NsProbe::ALL_OK,
            sysctls: Sysctls::default(),
            apparmor: None,
            masked: vec![],
            subids: false,
            subid_range: IdRange {
                start: 100000,
                count: 65536,
            },
            ns_map: vec![IdRange {
                start: 0,
                count: 4294967295,
            }],
            passwd: true,
            programs: vec!["buildkitd", "rootlesskit", "newuidmap", "newgidmap"],
            privileges: vec![
                ("newuidmap", Privilege::FileCaps(1 << 7)),
                ("newgidmap", Privilege::FileCaps(1 << 6)),
            ],
            env: vec![("HOME", "/root")],
            tty: false,
            usable_dirs: vec![],
            paths: vec![],
            links: vec![],
            writable: vec![],
            sockets: vec![],
            shared_dirs: vec![],
            procs: vec![],
            mount_table: vec![],
            binfmt: super::binfmt::Binfmt::Unavailable,
            filesystems: vec![("/", EXT4, false, false)],
            kernel: Kernel {
                release: "6.1.0-25-amd64".into(),
                version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.106-3".into(),
                overlay_permit_userns: None,
            },
            space: vec![],
            files: vec![],
            effects: Arc::default(),
        }
    }

    /// uid 1000 on a host (or an unconfined container) where rootless works.
    pub fn user() -> Self {
        FakeHost {
            euid: 1000,
            status: ProcStatus {
                cap_eff: 0,
                ..Self::root().status
            },
            subids: true,
            env: vec![("HOME", "/home/u")],
            ..Self::root()
        }
    }

    /// uid 1000 in a default pod: containerd's capabilities, masked /proc, the given seccomp.
    pub fn pod_user(seccomp: u8) -> Self {
        FakeHost {
            status: ProcStatus {
                seccomp,
                no_new_privs: false,
                cap_eff: 0,
                cap_bnd: DEFAULT_CAPS,
            },
            masked: vec!["/proc/kcore".into(), "/proc/keys".into()],
            probe: NsProbe {
                mount_proc: Some(Err(nix::errno::Errno::EPERM)),
                ..NsProbe::ALL_OK
            },
            ..Self::user()
        }
    }

    /// uid 1000 under the restricted Pod Security Standard: RuntimeDefault seccomp refusing
    /// user namespaces, no_new_privs (allowPrivilegeEscalation: false), every capability dropped.
    pub fn restricted() -> Self {
        FakeHost {
            status: ProcStatus {
                seccomp: 2,
                no_new_privs: true,
                cap_eff: 0,
                cap_bnd: 0,
            },
            probe: NsProbe {
                clone_userns: Some(Err(nix::errno::Errno::EPERM)),
                unshare_userns: Some(Err(nix::errno::Errno::EPERM)),
                mount: None,
                mount_proc: None,
            },
            ..Self::pod_user(2)
        }
    }

    /// OpenShift's restricted SCC: `restricted()` as an arbitrary uid without passwd entry or
    /// subordinate ids.
    pub fn restricted_scc() -> Self {
        FakeHost {
            euid: 1000680000,
            passwd: false,
            subids: false,
            ..Self::restricted()
        }
    }

    /// uid 1000 of BuildKit's rootless image in a `hostUsers: false` pod: 65536 ids mapped,
    /// the image's range 100000-165535 outside them.
    pub fn userns_pod_user() -> Self {
        FakeHost {
            userns: true,
            ns_map: vec![IdRange {
                start: 0,
                count: 65536,
            }],
            ..Self::pod_user(0)
        }
    }
}

impl Host for FakeHost {
    fn euid(&self) -> u32 {
        self.euid
    }
    fn user_name(&self) -> Option<String> {
        self.passwd
            .then(|| if self.euid == 0 { "root" } else { "u" }.into())
    }
    fn env(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, v)| *k == key && !v.is_empty())
            .map(|(_, v)| v.to_string())
    }
    fn env_raw(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
    fn stdout_is_terminal(&self) -> bool {
        self.tty
    }
    fn stderr_is_terminal(&self) -> bool {
        self.tty
    }
    fn process_status(&self) -> ProcStatus {
        self.status
    }
    fn in_user_namespace(&self) -> bool {
        self.userns
    }
    fn namespace_probe(&self) -> NsProbe {
        self.probe
    }
    fn userns_sysctls(&self) -> Sysctls {
        self.sysctls
    }
    fn statfs(&self, path: &Path) -> Option<FsStat> {
        self.filesystems
            .iter()
            .filter(|(m, ..)| path.starts_with(m))
            .max_by_key(|(m, ..)| m.len())
            .map(|&(m, magic, nosuid, nodev)| {
                let (avail, size) = self
                    .space
                    .iter()
                    .find(|(s, ..)| *s == m)
                    .map_or((100 << 30, 200 << 30), |&(_, a, s)| (a, s));
                FsStat {
                    path: path.to_path_buf(),
                    magic,
                    nosuid,
                    nodev,
                    avail,
                    size,
                }
            })
    }
    fn read_small_file(&self, path: &Path) -> Option<String> {
        self.files
            .iter()
            .find(|(p, _)| Path::new(p) == path)
            .map(|(_, t)| t.clone())
    }
    fn kernel(&self) -> Kernel {
        self.kernel.clone()
    }
    fn apparmor_profile(&self) -> Option<String> {
        self.apparmor.clone()
    }
    fn proc_masked_paths(&self) -> Vec<String> {
        self.masked.clone()
    }
    fn subid_ranges(&self) -> IdSets {
        let r = if self.subids {
            vec![self.subid_range]
        } else {
            vec![]
        };
        IdSets {
            uids: r.clone(),
            gids: r,
        }
    }
    fn namespace_ids(&self) -> Option<IdSets> {
        Some(IdSets {
            uids: self.ns_map.clone(),
            gids: self.ns_map.clone(),
        })
    }
    fn which(&self, program: &str) -> Option<PathBuf> {
        self.programs
            .contains(&program)
            .then(|| PathBuf::from("/usr/bin").join(program))
    }
    fn binfmt(&self) -> super::binfmt::Binfmt {
        self.binfmt.clone()
    }
    fn current_exe(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/usr/local/bin/bkrun"))
    }
    fn privilege(&self, program: &Path) -> Privilege {
        let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
        self.privileges
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Privilege::Missing, |(_, p)| *p)
    }
    fn socket_answers(&self, path: &Path) -> bool {
        self.sockets.iter().any(|s| Path::new(s) == path)
    }
    fn others_can_write(&self, dir: &Path) -> Option<String> {
        self.shared_dirs
            .iter()
            .find(|(d, _)| Path::new(d) == dir)
            .map(|(_, why)| why.to_string())
    }
    fn dir_usable(&self, dir: &Path) -> bool {
        self.usable_dirs.iter().any(|d| Path::new(d) == dir)
    }
    fn path_kind(&self, path: &Path) -> PathKind {
        let mut p = path.to_path_buf();
        // The kernel's own limit on a chain of links.
        for _ in 0..40 {
            match self.read_link(&p) {
                Some(t) => p = p.parent().unwrap_or(Path::new("/")).join(t),
                None => break,
            }
        }
        if self.usable_dirs.iter().any(|d| Path::new(d) == p) {
            return PathKind::Dir;
        }
        self.paths
            .iter()
            .find(|(q, _)| Path::new(q) == p)
            .map_or(PathKind::Missing, |(_, k)| *k)
    }
    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        self.links
            .iter()
            .find(|(l, _)| Path::new(l) == path)
            .map(|(_, t)| PathBuf::from(t))
    }
    fn writable(&self, path: &Path) -> bool {
        self.writable.iter().any(|w| Path::new(w) == path)
    }
    fn descendants(&self, pid: i32) -> Vec<i32> {
        let mut found = vec![pid];
        let mut i = 0;
        while i < found.len() {
            let p = found[i];
            found.extend(self.procs.iter().filter(|c| c.1 == p).map(|c| c.0));
            i += 1;
        }
        found.remove(0);
        found
    }
    fn comm(&self, pid: i32) -> Option<String> {
        self.procs
            .iter()
            .find(|p| p.0 == pid)
            .map(|p| p.2.to_string())
    }
    fn kill(&self, pid: i32, signal: Signal) -> nix::Result<()> {
        self.effects
            .lock()
            .unwrap()
            .push(format!("kill {pid} {signal}"));
        Ok(())
    }
    fn mounts(&self) -> Vec<Mount> {
        self.mount_table.clone()
    }
    fn unmount(&self, path: &Path) -> nix::Result<()> {
        self.effects
            .lock()
            .unwrap()
            .push(format!("unmount {}", path.display()));
        Ok(())
    }
}
