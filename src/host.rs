//! The one place bkrun reads facts about the host (UID, capabilities, namespaces, environment), behind a trait so mode and path choice are unit-tested without root.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What mode and path choice need to know about the machine.
pub trait Host {
    fn euid(&self) -> u32;
    /// The user's login name, for /etc/subuid look-ups.
    fn user_name(&self) -> Option<String>;
    fn env(&self, key: &str) -> Option<String>;
    /// CAP_SYS_ADMIN in the effective set.
    fn has_cap_sys_admin(&self) -> bool;
    /// True when this process runs in a user namespace other than the initial one.
    fn in_user_namespace(&self) -> bool;
    /// Whether an unprivileged user namespace can be created here; the error says why not.
    fn user_namespaces_work(&self) -> Result<(), String>;
    /// Paths mounted over parts of /proc (masked paths, as container runtimes set them up):
    /// the kernel then refuses a fresh procfs mount in a user namespace, so the process sandbox can't work.
    fn proc_masked_paths(&self) -> Vec<String>;
    /// Whether /etc/subuid and /etc/subgid give this user a range (needed by newuidmap).
    fn has_subid_ranges(&self) -> bool;
    /// Looks a program up on $PATH (or takes it as a path when it has a slash).
    fn which(&self, program: &str) -> Option<PathBuf>;
}

/// The real machine.
pub struct RealHost;

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

    fn has_cap_sys_admin(&self) -> bool {
        caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false)
    }

    fn in_user_namespace(&self) -> bool {
        // The initial namespace maps the whole 32-bit range onto itself.
        match std::fs::read_to_string("/proc/self/uid_map") {
            Ok(map) => !is_identity_map(&map),
            Err(_) => false,
        }
    }

    fn user_namespaces_work(&self) -> Result<(), String> {
        probe_user_namespace()
    }

    fn proc_masked_paths(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| masked_proc_paths(&m))
            .unwrap_or_default()
    }

    fn has_subid_ranges(&self) -> bool {
        let uid = self.euid().to_string();
        let name = self.user_name();
        ["/etc/subuid", "/etc/subgid"].iter().all(|f| {
            std::fs::read_to_string(f)
                .map(|text| has_subid_entry(&text, &uid, name.as_deref()))
                .unwrap_or(false)
        })
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        which(program, self.env("PATH").as_deref())
    }
}

pub(crate) fn is_identity_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Mount points below /proc in a mountinfo text (field 5 is the mount point).
pub(crate) fn masked_proc_paths(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with("/proc/"))
        .map(str::to_string)
        .collect()
}

pub(crate) fn has_subid_entry(text: &str, uid: &str, name: Option<&str>) -> bool {
    text.lines().any(|l| {
        let owner = l.split(':').next().unwrap_or("");
        owner == uid || Some(owner) == name
    })
}

/// `which`, without a crate: the first executable file named `program` on `path`.
pub fn which(program: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
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

/// Forks a child that only tries unshare(CLONE_NEWUSER) and exits: the one reliable test, since
/// sysctls differ between kernels and seccomp profiles can refuse the call whatever they say.
fn probe_user_namespace() -> Result<(), String> {
    let mut cmd = Command::new("/proc/self/exe");
    // SAFETY: between fork and exec we only call async-signal-safe functions (unshare, _exit).
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::_exit(0)
        });
    }
    match cmd.spawn() {
        Ok(mut child) => match child.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("probe child exited with {s}")),
            Err(e) => Err(format!("probe child: {e}")),
        },
        Err(e) => Err(format!("unshare(CLONE_NEWUSER): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(masked_proc_paths(mi), ["/proc/kcore", "/proc/acpi"]);
    }

    #[test]
    fn subid_entries_match_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:65536\n";
        assert!(has_subid_entry(t, "1000", Some("alice")));
        assert!(has_subid_entry(t, "1001", Some("bob")));
        assert!(!has_subid_entry(t, "1002", Some("carol")));
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh", Some("/usr/bin:/bin")).is_some());
        assert!(which("no-such-program-here", Some("/usr/bin:/bin")).is_none());
    }
}
