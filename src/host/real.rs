//! The real machine: /proc, /sys, the file system, and a forked child that tries namespaces.

use std::io::IsTerminal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::{
    parse, FsStat, Host, IdSets, Kernel, NsProbe, PathKind, Privilege, ProcStatus, Sysctls,
    CAP_SYS_ADMIN,
};
use crate::host::mountinfo::Mount;

/// The real machine.
pub struct RealHost;

impl RealHost {
    /// CAP_SYS_ADMIN in the effective set.
    pub fn has_cap_sys_admin(&self) -> bool {
        self.process_status().has_eff(CAP_SYS_ADMIN)
    }
}

impl Host for RealHost {
    fn euid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn user_name(&self) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn env(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }

    fn env_raw(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn stdout_is_terminal(&self) -> bool {
        std::io::stdout().is_terminal()
    }

    fn stderr_is_terminal(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    fn process_status(&self) -> ProcStatus {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| parse::proc_status(&s))
            .unwrap_or_default()
    }

    fn in_user_namespace(&self) -> bool {
        match std::fs::read_to_string("/proc/self/uid_map") {
            Ok(map) => !parse::is_identity_map(&map),
            Err(_) => false,
        }
    }

    fn namespace_probe(&self) -> NsProbe {
        probe_namespaces()
    }

    fn userns_sysctls(&self) -> Sysctls {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        Sysctls {
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone")
                .map(|v| v != 0),
            // World-readable (mode 0644) where the kernel has it, so any user can tell.
            apparmor_restrict_userns: read(
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            )
            .map(|v| v != 0),
        }
    }

    fn statfs(&self, path: &Path) -> Option<FsStat> {
        use nix::sys::statvfs::FsFlags;
        let asked = path.ancestors().find(|p| p.exists())?;
        let st = nix::sys::statfs::statfs(asked).ok()?;
        let flags = st.flags();
        Some(FsStat {
            path: asked.to_path_buf(),
            // f_type is a signed long here; the magic numbers are its low 32 bits.
            magic: st.filesystem_type().0 as u64 & 0xffff_ffff,
            nosuid: flags.contains(FsFlags::ST_NOSUID),
            nodev: flags.contains(FsFlags::ST_NODEV),
            avail: st.blocks_available().saturating_mul(st.block_size() as u64),
            size: st.blocks().saturating_mul(st.block_size() as u64),
        })
    }

    fn read_small_file(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn kernel(&self) -> Kernel {
        // What uname(2) says, as the kernel also shows it in /proc.
        let read = |p: &str| std::fs::read_to_string(p).map_or(String::new(), |s| s.trim().into());
        Kernel {
            release: read("/proc/sys/kernel/osrelease"),
            version: read("/proc/sys/kernel/version"),
            overlay_permit_userns: std::fs::read_to_string(
                "/sys/module/overlay/parameters/permit_mounts_in_userns",
            )
            .ok()
            .map(|s| s.trim() == "Y"),
        }
    }

    fn apparmor_profile(&self) -> Option<String> {
        let on = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        if !on {
            return None;
        }
        // Newer kernels name the LSM in the path; the old file may belong to another LSM.
        [
            "/proc/self/attr/apparmor/current",
            "/proc/self/attr/current",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim_end_matches(['\n', '\0']).to_string())
    }

    fn proc_masked_paths(&self) -> Vec<String> {
        std::fs::read("/proc/self/mountinfo")
            .map(|m| parse::masked_proc_paths(&m))
            .unwrap_or_default()
    }

    fn subid_ranges(&self) -> IdSets {
        let uid = self.euid().to_string();
        let name = self.user_name();
        let read = |f: &str| {
            std::fs::read_to_string(f)
                .map(|text| parse::subid_ranges(&text, &uid, name.as_deref()))
                .unwrap_or_default()
        };
        IdSets {
            uids: read("/etc/subuid"),
            gids: read("/etc/subgid"),
        }
    }

    fn namespace_ids(&self) -> Option<IdSets> {
        let read = |f: &str| {
            std::fs::read_to_string(f)
                .ok()
                .map(|m| parse::id_map_inside(&m))
        };
        Some(IdSets {
            uids: read("/proc/self/uid_map")?,
            gids: read("/proc/self/gid_map")?,
        })
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        which(program, self.env("PATH").as_deref())
    }

    fn binfmt(&self) -> super::binfmt::Binfmt {
        super::binfmt::read(Path::new("/proc/sys/fs/binfmt_misc"))
    }

    fn current_exe(&self) -> Option<PathBuf> {
        std::env::current_exe().ok()
    }

    fn privilege(&self, program: &Path) -> Privilege {
        let Ok(meta) = std::fs::metadata(program) else {
            return Privilege::Missing;
        };
        if meta.mode() & 0o4000 != 0 && meta.uid() == 0 {
            return Privilege::Setuid;
        }
        match crate::fsutil::sys::lgetxattr(program, "security.capability")
            .ok()
            .and_then(|x| parse::file_caps_permitted(&x))
        {
            Some(caps) if caps != 0 => Privilege::FileCaps(caps),
            _ => Privilege::None,
        }
    }

    fn descendants(&self, pid: i32) -> Vec<i32> {
        crate::host::reaper::descendants(pid)
    }

    fn comm(&self, pid: i32) -> Option<String> {
        crate::host::reaper::comm(pid)
    }

    fn kill(&self, pid: i32, signal: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
    }

    fn mounts(&self) -> Vec<Mount> {
        crate::host::mountinfo::read_self().unwrap_or_default()
    }

    fn unmount(&self, path: &Path) -> nix::Result<()> {
        // A path in a shared temp dir: a link swapped in for a mount point is not followed.
        nix::mount::umount2(
            path,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        )
    }

    fn socket_answers(&self, path: &Path) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    fn dir_usable(&self, dir: &Path) -> bool {
        use nix::unistd::{access, AccessFlags};
        dir.is_dir() && access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
    }

    fn path_kind(&self, path: &Path) -> PathKind {
        match std::fs::metadata(path) {
            Err(_) => PathKind::Missing,
            Ok(m) if m.is_dir() => PathKind::Dir,
            Ok(m) if m.is_file() => PathKind::File,
            Ok(_) => PathKind::Special,
        }
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        std::fs::read_link(path).ok()
    }

    fn writable(&self, path: &Path) -> bool {
        nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
    }

    fn others_can_write(&self, dir: &Path) -> Option<String> {
        let st = crate::safefs::Dir::open(dir).ok()?.stat().ok()?;
        let (euid, groups) = crate::safefs::effective_ids();
        crate::safefs::protect::others_can_write(&st, euid, &groups)
    }
}

/// `which`, without a crate: the first executable file named `program` on `path`.
pub fn which(program: &str, path: Option<&str>) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_exec(p))
}

/// Result codes the probe child writes: 0 worked, -1 not tried, else the errno.
const NOT_TRIED: i32 = -1;

/// A probe started before the command line was read, not yet read back.
struct Pending {
    child: Pid,
    results: std::os::fd::OwnedFd,
}

static PENDING: std::sync::Mutex<Option<Pending>> = std::sync::Mutex::new(None);

/// Starts the namespace probe at once, so that it runs on the other core while the command
/// line and the settings are read; the plan reads its answer (`probe_namespaces`). Called first
/// thing in main, while bkrun has a single thread, and only for a user who is not root: root
/// with CAP_SYS_ADMIN runs privileged without it, and a run that never asks (a remote daemon)
/// leaves a child that has already exited, reaped by the reaper or when bkrun exits.
///
/// Only under auto, where its answer picks the mode: the fork and the copy-on-write faults
/// while the child lives cost bkrun's main thread about 0.6 ms of exec → daemon spawn. A
/// rootless mode asked for leaves it to `Plan::confirm`, where its answer can only refuse the
/// mode: after a failed start, or once rootlesskit is spawned (`Plan::start_proves_namespaces`).
pub fn start_namespace_probe() {
    if nix::unistd::geteuid().is_root() {
        return;
    }
    if let Some(p) = fork_probe() {
        if let Ok(mut pending) = PENDING.lock() {
            *pending = Some(p);
        }
    }
}

/// Forks a child that tries, in order, clone(CLONE_NEWUSER), unshare(CLONE_NEWUSER), a tmpfs
/// mount in a new mount namespace, and a procfs mount in a new PID namespace, and writes what
/// happened to a pipe. Trying is the one reliable test: sysctls differ between kernels, and
/// seccomp and AppArmor profiles refuse calls whatever the sysctls say. Everything happens in
/// namespaces that die with the child. The answer comes on a pipe, so a child the reaper
/// collected first (a probe read once the daemon runs) is no loss. The probe
/// `start_namespace_probe` started, if any, is the one read.
fn probe_namespaces() -> NsProbe {
    let not_run = NsProbe {
        clone_userns: None,
        unshare_userns: None,
        mount: None,
        mount_proc: None,
    };
    let started = PENDING.lock().ok().and_then(|mut p| p.take());
    let Some(Pending { child, results }) = started.or_else(fork_probe) else {
        return not_run;
    };
    let mut bytes = [0u8; 16];
    let mut got = 0;
    while got < bytes.len() {
        match nix::unistd::read(&results, &mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    let _ = waitpid(child, None);
    if got < bytes.len() {
        return not_run;
    }
    let code = |i: usize| {
        let c = i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        match c {
            NOT_TRIED => None,
            0 => Some(Ok(())),
            e => Some(Err(Errno::from_raw(e))),
        }
    };
    NsProbe {
        clone_userns: code(0),
        unshare_userns: code(1),
        mount: code(2),
        mount_proc: code(3),
    }
}

/// Forks the probe child; its results come on the returned pipe end.
fn fork_probe() -> Option<Pending> {
    // Close-on-exec: a daemon spawned while a started probe is unread must not hold it.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // SAFETY: the child only makes raw system calls (clone, unshare, mount, waitpid, write,
    // _exit), all async-signal-safe, so forking a multi-threaded process is sound.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read_end);
            let codes = probe_steps();
            let mut bytes = [0u8; 16];
            for (i, c) in codes.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&c.to_le_bytes());
            }
            let _ = nix::unistd::write(&write_end, &bytes);
            // SAFETY: ends the forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write_end);
            Some(Pending {
                child,
                results: read_end,
            })
        }
        Err(_) => None,
    }
}

/// The steps, run in the probe child; each code is 0, NOT_TRIED or an errno. The first is tried
/// on its own; each of the others needs the one before it, so the first that fails ends the
/// probe and the rest stay NOT_TRIED.
fn probe_steps() -> [i32; 4] {
    let mut codes = [NOT_TRIED; 4];
    codes[0] = clone_userns();
    codes[1] = unshare_userns();
    if codes[1] != 0 {
        return codes;
    }
    codes[2] = mount_tmpfs();
    if codes[2] != 0 {
        return codes;
    }
    codes[3] = mount_proc();
    codes
}

/// A child in a new user namespace, as rootlesskit makes one.
fn clone_userns() -> i32 {
    // clone with a null stack behaves as fork: the grandchild exits at once.
    // SAFETY: raw clone without CLONE_VM; the grandchild only calls _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: the grandchild ends here.
        unsafe { libc::_exit(0) }
    }
    if pid < 0 {
        Errno::last_raw()
    } else {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
        0
    }
}

/// This process moved into a new user namespace, where the next steps run.
fn unshare_userns() -> i32 {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Errno::last_raw();
    }
    0
}

/// A mount namespace of its own, and a tmpfs mounted in it.
fn mount_tmpfs() -> i32 {
    // SAFETY: unshare and mount take no pointers but the C strings below, which outlive the calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Errno::last_raw();
        }
        let none = c"none".as_ptr();
        let tmpfs = c"tmpfs".as_ptr();
        // Private first, so nothing propagates back (the namespace dies with us anyway).
        let _ = libc::mount(
            none,
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        if libc::mount(none, c"/tmp".as_ptr(), tmpfs, 0, std::ptr::null()) == 0
            || libc::mount(none, c"/".as_ptr(), tmpfs, 0, std::ptr::null()) == 0
        {
            0
        } else {
            Errno::last_raw()
        }
    }
}

/// A new PID namespace whose first child mounts a fresh procfs, as runc does.
fn mount_proc() -> i32 {
    // SAFETY: unshare and mount take no pointers but the C strings below, which outlive the
    // calls; the raw clone is without CLONE_VM, and the child only mounts and calls _exit.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return Errno::last_raw();
        }
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid == 0 {
            let r = libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                0,
                std::ptr::null(),
            );
            libc::_exit(if r == 0 {
                0
            } else {
                Errno::last_raw().clamp(1, 255)
            });
        }
        if pid < 0 {
            Errno::last_raw()
        } else {
            match waitpid(Pid::from_raw(pid as i32), None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                _ => Errno::ECHILD as i32,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_sh() {
        assert!(which("sh", Some("/usr/bin:/bin")).is_some());
        assert!(which("no-such-program-here", Some("/usr/bin:/bin")).is_none());
    }

    #[test]
    fn the_probe_reports_every_step_here() {
        // On the test machine (root, no seccomp filter) every step works; elsewhere each step
        // must at least have an answer once the ones before it worked.
        let p = RealHost.namespace_probe();
        assert!(
            p.clone_userns.is_some() && p.unshare_userns.is_some(),
            "{p:?}"
        );
        if p.unshare_userns == Some(Ok(())) {
            assert!(p.mount.is_some(), "{p:?}");
        }
    }
}
