//! Which way buildkitd is started (privileged, rootless, rootless-strict), decided from host facts, with the reason.

use std::fmt;

use anyhow::{bail, Result};

use crate::cli::ModeArg;
use crate::host::Host;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// buildkitd runs directly, as root.
    Privileged,
    /// buildkitd runs under rootlesskit as a non-root user.
    Rootless,
    /// Rootless with `--oci-worker-no-process-sandbox`, for where a fresh /proc can't be mounted.
    RootlessStrict,
}

impl Mode {
    pub fn is_rootless(self) -> bool {
        self != Mode::Privileged
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Privileged => "privileged",
            Mode::Rootless => "rootless",
            Mode::RootlessStrict => "rootless-strict",
        })
    }
}

/// The mode and, in words, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub mode: Mode,
    pub reason: String,
}

/// Picks the mode. An explicit request is checked for what it needs; `auto` takes the first mode that can work.
pub fn decide(requested: ModeArg, host: &dyn Host, rootlesskit: &str) -> Result<Decision> {
    let euid = host.euid();
    match requested {
        ModeArg::Privileged => {
            if euid != 0 || !host.has_cap_sys_admin() {
                bail!(
                    "--mode privileged needs root with CAP_SYS_ADMIN, but this is uid {euid}{}: run as root in a privileged container, or use --mode rootless",
                    if euid == 0 { " without CAP_SYS_ADMIN" } else { "" }
                );
            }
            Ok(Decision {
                mode: Mode::Privileged,
                reason: "requested with --mode".into(),
            })
        }
        ModeArg::Rootless | ModeArg::RootlessStrict => {
            check_rootless(host, rootlesskit)?;
            let mode = if requested == ModeArg::Rootless {
                Mode::Rootless
            } else {
                Mode::RootlessStrict
            };
            Ok(Decision {
                mode,
                reason: "requested with --mode".into(),
            })
        }
        ModeArg::Auto => auto(host, rootlesskit),
    }
}

fn auto(host: &dyn Host, rootlesskit: &str) -> Result<Decision> {
    let euid = host.euid();
    if euid == 0 {
        if !host.has_cap_sys_admin() {
            bail!(
                "no daemon mode can work: running as root without CAP_SYS_ADMIN; run the container privileged (securityContext.privileged: true), or as a non-root user for rootless mode"
            );
        }
        let reason = if host.in_user_namespace() {
            "euid 0 with CAP_SYS_ADMIN inside a user namespace (buildkitd adapts to it)"
        } else {
            "euid 0 with CAP_SYS_ADMIN, not in a user namespace"
        };
        return Ok(Decision {
            mode: Mode::Privileged,
            reason: reason.into(),
        });
    }
    check_rootless(host, rootlesskit)
        .map_err(|e| anyhow::anyhow!("no daemon mode can work as uid {euid}: {e:#}"))?;
    let masked = host.proc_masked_paths();
    if masked.is_empty() {
        Ok(Decision {
            mode: Mode::Rootless,
            reason: format!("uid {euid} and user namespaces work"),
        })
    } else {
        Ok(Decision {
            mode: Mode::RootlessStrict,
            reason: format!(
                "uid {euid}; /proc has masked paths ({}), so the kernel refuses the fresh /proc the process sandbox needs",
                summarize(&masked)
            ),
        })
    }
}

fn summarize(paths: &[String]) -> String {
    let mut s = paths.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > 3 {
        s.push_str(&format!(", and {} more", paths.len() - 3));
    }
    s
}

/// What rootlesskit needs: itself, newuidmap/newgidmap, subordinate ids, and user namespaces.
fn check_rootless(host: &dyn Host, rootlesskit: &str) -> Result<()> {
    if host.which(rootlesskit).is_none() {
        bail!("rootless mode needs rootlesskit, and {rootlesskit:?} is not on PATH: install rootlesskit, or set ROOTLESSKIT to its path");
    }
    if host.euid() != 0 {
        for tool in ["newuidmap", "newgidmap"] {
            if host.which(tool).is_none() {
                bail!(
                    "rootless mode needs {tool}, which is not on PATH: install the uidmap package"
                );
            }
        }
        if !host.has_subid_ranges() {
            let who = host.user_name().unwrap_or_else(|| host.euid().to_string());
            bail!("rootless mode needs subordinate ids, and /etc/subuid or /etc/subgid has no range for {who}: add a line such as `{who}:100000:65536` to both");
        }
    }
    host.user_namespaces_work().map_err(|e| {
        anyhow::anyhow!(
            "rootless mode needs user namespaces, and creating one failed ({e}): enable them (sysctl user.max_user_namespaces=15000, kernel.unprivileged_userns_clone=1) or allow unshare in the seccomp profile"
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A host made of plain fields.
    #[derive(Clone)]
    pub struct FakeHost {
        pub euid: u32,
        pub sys_admin: bool,
        pub userns: bool,
        pub userns_works: bool,
        pub masked: Vec<String>,
        pub subids: bool,
        pub programs: Vec<&'static str>,
        pub env: Vec<(&'static str, &'static str)>,
    }

    impl FakeHost {
        pub fn root() -> Self {
            FakeHost {
                euid: 0,
                sys_admin: true,
                userns: false,
                userns_works: true,
                masked: vec![],
                subids: false,
                programs: vec!["buildkitd", "rootlesskit", "newuidmap", "newgidmap"],
                env: vec![("HOME", "/root")],
            }
        }
        pub fn user() -> Self {
            FakeHost {
                euid: 1000,
                sys_admin: false,
                subids: true,
                env: vec![("HOME", "/home/u")],
                ..Self::root()
            }
        }
    }

    impl Host for FakeHost {
        fn euid(&self) -> u32 {
            self.euid
        }
        fn user_name(&self) -> Option<String> {
            Some(if self.euid == 0 {
                "root".into()
            } else {
                "u".into()
            })
        }
        fn env(&self, key: &str) -> Option<String> {
            self.env
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
        fn has_cap_sys_admin(&self) -> bool {
            self.sys_admin
        }
        fn in_user_namespace(&self) -> bool {
            self.userns
        }
        fn user_namespaces_work(&self) -> Result<(), String> {
            if self.userns_works {
                Ok(())
            } else {
                Err("unshare(CLONE_NEWUSER): Operation not permitted (os error 1)".into())
            }
        }
        fn proc_masked_paths(&self) -> Vec<String> {
            self.masked.clone()
        }
        fn has_subid_ranges(&self) -> bool {
            self.subids
        }
        fn which(&self, program: &str) -> Option<PathBuf> {
            self.programs
                .contains(&program)
                .then(|| PathBuf::from("/usr/bin").join(program))
        }
    }

    fn auto_mode(h: &FakeHost) -> Result<Decision> {
        decide(ModeArg::Auto, h, "rootlesskit")
    }

    #[test]
    fn root_with_sys_admin_is_privileged() {
        assert_eq!(auto_mode(&FakeHost::root()).unwrap().mode, Mode::Privileged);
    }

    #[test]
    fn root_without_sys_admin_is_explained() {
        let h = FakeHost {
            sys_admin: false,
            ..FakeHost::root()
        };
        let e = auto_mode(&h).unwrap_err().to_string();
        assert!(
            e.contains("without CAP_SYS_ADMIN") && e.contains("privileged"),
            "{e}"
        );
    }

    #[test]
    fn user_with_working_userns_is_rootless() {
        assert_eq!(auto_mode(&FakeHost::user()).unwrap().mode, Mode::Rootless);
    }

    #[test]
    fn masked_proc_makes_it_strict() {
        let h = FakeHost {
            masked: vec!["/proc/kcore".into(), "/proc/acpi".into()],
            ..FakeHost::user()
        };
        let d = auto_mode(&h).unwrap();
        assert_eq!(d.mode, Mode::RootlessStrict);
        assert!(d.reason.contains("/proc/kcore"), "{}", d.reason);
    }

    #[test]
    fn user_without_userns_is_explained() {
        let h = FakeHost {
            userns_works: false,
            ..FakeHost::user()
        };
        let e = format!("{:#}", auto_mode(&h).unwrap_err());
        assert!(e.contains("user namespaces") && e.contains("sysctl"), "{e}");
    }

    #[test]
    fn missing_tools_and_ranges_are_named() {
        let h = FakeHost {
            programs: vec!["buildkitd"],
            ..FakeHost::user()
        };
        assert!(format!("{:#}", auto_mode(&h).unwrap_err()).contains("rootlesskit"));
        let h = FakeHost {
            programs: vec!["rootlesskit"],
            ..FakeHost::user()
        };
        assert!(format!("{:#}", auto_mode(&h).unwrap_err()).contains("uidmap"));
        let h = FakeHost {
            subids: false,
            ..FakeHost::user()
        };
        assert!(format!("{:#}", auto_mode(&h).unwrap_err()).contains("/etc/subuid"));
    }

    #[test]
    fn explicit_privileged_as_user_is_refused() {
        let e = decide(ModeArg::Privileged, &FakeHost::user(), "rootlesskit").unwrap_err();
        assert!(e.to_string().contains("--mode rootless"), "{e}");
    }

    #[test]
    fn explicit_strict_is_honoured() {
        let d = decide(ModeArg::RootlessStrict, &FakeHost::user(), "rootlesskit").unwrap();
        assert_eq!(d.mode, Mode::RootlessStrict);
    }
}
