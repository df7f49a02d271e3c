//! The one place bkrun reads facts about the host and the container it runs in (UID, capabilities, seccomp, namespaces, newuidmap's privilege, environment, terminals), behind a trait so mode and path choice are unit-tested without root.

pub mod binfmt;
pub mod cgroup;
pub mod guard;
pub mod mountinfo;
mod parse;
pub mod pid1;
mod real;
pub mod reaper;
mod vfork;

#[cfg(test)]
pub mod fake;

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::host::mountinfo::Mount;

pub use parse::{cap_names as parse_cap_names, masked_proc_paths, subid_ranges};
pub use real::{start_namespace_probe, which, RealHost};

/// Capability numbers bkrun reasons about (linux/capability.h).
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_ADMIN: u32 = 21;

/// What mode and path choice need to know about the machine or container, and the effects
/// teardown has on it (signals, unmounts), so both are unit-tested against the fake.
pub trait Host: Send + Sync {
    fn euid(&self) -> u32;
    /// The user's login name, for /etc/subuid look-ups.
    fn user_name(&self) -> Option<String>;
    /// A variable of bkrun's environment; an empty value counts as unset (a pod spec cannot
    /// unset an image's variable, only empty it).
    fn env(&self, key: &str) -> Option<String>;
    /// A variable exactly as set, an empty value included: buildctl reads SOURCE_DATE_EPOCH and
    /// `--secret` variables with os.LookupEnv, where an empty value is still a value.
    fn env_raw(&self, key: &str) -> Option<String>;
    /// Standard output is a terminal (a tarball must not be written to one).
    fn stdout_is_terminal(&self) -> bool;
    /// Standard error is a terminal (where `--progress=auto` shows the live view).
    fn stderr_is_terminal(&self) -> bool;
    /// Seccomp mode, no_new_privs and capability sets, from /proc/self/status.
    fn process_status(&self) -> ProcStatus;
    /// True when this process runs in a user namespace other than the initial one
    /// (root there is not root on the node: Kubernetes `hostUsers: false`).
    fn in_user_namespace(&self) -> bool;
    /// Tries, in a throwaway child, what rootlesskit and the process sandbox do first.
    fn namespace_probe(&self) -> NsProbe;
    /// The node's user-namespace switches, where the kernel has them.
    fn userns_sysctls(&self) -> Sysctls;
    /// The filesystem holding `path`, or its nearest existing parent (a state dir not made yet).
    fn statfs(&self, path: &Path) -> Option<FsStat>;
    /// A small text file of /proc or /sys (the memory cgroup's counters); None when it cannot
    /// be read.
    fn read_small_file(&self, path: &Path) -> Option<String>;
    /// The running kernel, for what overlayfs allows in a user namespace.
    fn kernel(&self) -> Kernel;
    /// The AppArmor profile confining this process; None when AppArmor is off.
    fn apparmor_profile(&self) -> Option<String>;
    /// Paths mounted over parts of /proc (masked paths, as container runtimes set them up):
    /// the kernel then refuses a fresh procfs mount in a user namespace, so the process sandbox can't work.
    fn proc_masked_paths(&self) -> Vec<String>;
    /// This user's ranges in /etc/subuid and /etc/subgid (by login name or uid), which
    /// rootlesskit hands newuidmap and newgidmap.
    fn subid_ranges(&self) -> IdSets;
    /// The ids this process's user namespace maps (the first and third columns of
    /// /proc/self/uid_map and gid_map); None when they cannot be read. newuidmap can only map
    /// ids that are mapped here.
    fn namespace_ids(&self) -> Option<IdSets>;
    /// Looks a program up on $PATH (or takes it as a path when it has a slash).
    fn which(&self, program: &str) -> Option<PathBuf>;
    /// The emulators binfmt_misc has registered (QEMU), which run other platforms' binaries.
    fn binfmt(&self) -> binfmt::Binfmt;
    /// bkrun's own executable, which runs again as the daemon's namespace init.
    fn current_exe(&self) -> Option<PathBuf>;
    /// How an executable gets privilege when run: the setuid bit or file capabilities.
    fn privilege(&self, program: &Path) -> Privilege;
    /// An existing directory this process can create files in.
    fn dir_usable(&self, dir: &Path) -> bool;
    /// What `path` names once symlinks are followed (outputs are put in place by what it is).
    fn path_kind(&self, path: &Path) -> PathKind;
    /// Where the symlink `path` points (as written in it); None when `path` is not a symlink.
    fn read_link(&self, path: &Path) -> Option<PathBuf>;
    /// This process may open `path` for writing (access W_OK).
    fn writable(&self, path: &Path) -> bool;
    /// Why users other than this one (and root) can write to the existing directory `dir`
    /// (world-writable, another uid's, a group's it is not in); None when only it can, or `dir`
    /// does not exist.
    fn others_can_write(&self, dir: &Path) -> Option<String>;
    /// Something accepts connections on this unix socket now.
    fn socket_answers(&self, path: &Path) -> bool;

    // Processes and mounts, for teardown.

    /// Every live descendant of `pid`, parents before their children.
    fn descendants(&self, pid: i32) -> Vec<i32>;
    /// A process's command name (the kernel's 15-byte `comm`).
    fn comm(&self, pid: i32) -> Option<String>;
    fn kill(&self, pid: i32, signal: Signal) -> nix::Result<()>;
    /// The mounts this process's mount namespace has.
    fn mounts(&self) -> Vec<Mount>;
    /// Detaches a mount now; it goes once nothing uses it (MNT_DETACH).
    fn unmount(&self, path: &Path) -> nix::Result<()>;
}

/// What a path names, symlinks followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Nothing (or a dangling symlink).
    Missing,
    Dir,
    File,
    /// A device, FIFO or socket: opened and written as it is, never replaced.
    Special,
}

/// The parts of /proc/self/status that decide what a container allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStatus {
    /// 0 off, 1 strict, 2 filter (a container's seccomp profile).
    pub seccomp: u8,
    /// `allowPrivilegeEscalation: false`: setuid bits and file capabilities give nothing.
    pub no_new_privs: bool,
    pub cap_eff: u64,
    pub cap_bnd: u64,
}

impl ProcStatus {
    pub fn has_eff(&self, cap: u32) -> bool {
        self.cap_eff & (1 << cap) != 0
    }
    pub fn has_bnd(&self, cap: u32) -> bool {
        self.cap_bnd & (1 << cap) != 0
    }
}

/// What a child was allowed to do: each step is Ok, refused with an errno, or not tried
/// (None) because an earlier step it needs failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsProbe {
    /// clone(CLONE_NEWUSER): how rootlesskit starts its child.
    pub clone_userns: Option<Result<(), Errno>>,
    /// unshare(CLONE_NEWUSER).
    pub unshare_userns: Option<Result<(), Errno>>,
    /// A tmpfs mount in a fresh mount namespace of that user namespace (what the daemon's
    /// snapshotter and runc do).
    pub mount: Option<Result<(), Errno>>,
    /// A fresh procfs in a new PID namespace (runc's process sandbox); masked /proc refuses it.
    pub mount_proc: Option<Result<(), Errno>>,
}

impl NsProbe {
    /// Everything worked.
    pub const ALL_OK: NsProbe = NsProbe {
        clone_userns: Some(Ok(())),
        unshare_userns: Some(Ok(())),
        mount: Some(Ok(())),
        mount_proc: Some(Ok(())),
    };

    /// User namespaces can be made, whichever call rootlesskit uses; the first refusal otherwise.
    pub fn userns(&self) -> Result<(), Errno> {
        for step in [self.clone_userns, self.unshare_userns] {
            match step {
                Some(Err(e)) => return Err(e),
                None => return Err(Errno::UnknownErrno),
                Some(Ok(())) => {}
            }
        }
        Ok(())
    }
}

/// The node's switches for unprivileged user namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sysctls {
    /// user.max_user_namespaces; 0 turns them off.
    pub max_user_namespaces: Option<u64>,
    /// kernel.unprivileged_userns_clone (Debian's older kernels); 0 turns them off for non-root.
    pub unprivileged_userns_clone: Option<bool>,
    /// kernel.apparmor_restrict_unprivileged_userns (Ubuntu 23.10 and later, on by default):
    /// an unconfined program without CAP_SYS_ADMIN still gets its user namespace, but AppArmor
    /// moves it into a profile that denies every capability there, unless a profile of its own
    /// allows `userns`.
    pub apparmor_restrict_userns: Option<bool>,
}

impl Sysctls {
    /// The node itself refuses user namespaces to this user, whatever the pod says.
    pub fn refuse_userns(&self, euid: u32) -> bool {
        self.max_user_namespaces == Some(0)
            || (euid != 0 && self.unprivileged_userns_clone == Some(false))
    }
}

/// What statfs(2) says of the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStat {
    /// The path asked about, or the nearest existing parent that was asked instead.
    pub path: PathBuf,
    /// `f_type`: the filesystem's magic number (linux/magic.h).
    pub magic: u64,
    /// The mount is nosuid: setuid bits and file capabilities give nothing below it.
    pub nosuid: bool,
    /// The mount is nodev: device files below it do not open.
    pub nodev: bool,
    /// Bytes free to this user (`f_bavail`), and the filesystem's size.
    pub avail: u64,
    pub size: u64,
}

/// The running kernel, as uname(2) and the overlay module say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r`: `6.8.0-45-generic`.
    pub release: String,
    /// `uname -v`: `#45-Ubuntu SMP …` (names Ubuntu's kernels, which patch overlayfs).
    pub version: String,
    /// Debian's patched overlay module's permit_mounts_in_userns; None where it has none.
    pub overlay_permit_userns: Option<bool>,
}

/// `count` ids from `start`: a subordinate range, or what a user namespace maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u64,
    pub count: u64,
}

impl IdRange {
    /// One past the last id.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }

    /// Every id of this range is in one of `ranges` (which may touch or overlap each other).
    pub fn covered_by(&self, ranges: &[IdRange]) -> bool {
        let mut sorted: Vec<&IdRange> = ranges.iter().filter(|r| r.count > 0).collect();
        sorted.sort_by_key(|r| r.start);
        let mut next = self.start;
        for r in sorted {
            if next >= self.end() {
                break;
            }
            if r.start <= next {
                next = next.max(r.end());
            }
        }
        next >= self.end()
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.count {
            0 => write!(f, "none at {}", self.start),
            1 => write!(f, "{}", self.start),
            _ => write!(f, "{}-{}", self.start, self.end() - 1),
        }
    }
}

/// Ranges of user and of group ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSets {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// How newuidmap/newgidmap get the privilege to write another process's id maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// The program is missing or unreadable.
    Missing,
    /// No setuid bit, no file capabilities.
    None,
    /// Setuid root.
    Setuid,
    /// File capabilities: the permitted set, as a bit mask.
    FileCaps(u64),
}
