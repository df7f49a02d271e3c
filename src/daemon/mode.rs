//! Which way buildkitd is started (privileged, rootless, rootless-strict): each mode judged from the host's facts, with the reason and, where it cannot work, the one change that would make it work.

use std::fmt;

use anyhow::{bail, Result};
use nix::errno::Errno;

use super::facts::{Facts, IdMapTool};
use crate::host::{Privilege, CAP_SYS_ADMIN};

/// The mode asked for, a setting (config.rs), judged here.
pub use crate::config::ModeArg;

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
    pub const ALL: [Mode; 3] = [Mode::Privileged, Mode::Rootless, Mode::RootlessStrict];

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

/// The pod-spec changes bkrun names (Kubernetes field spellings).
pub mod fix {
    pub const SECCOMP: &str =
        "set `securityContext.seccompProfile: {type: Unconfined}` in the pod spec";
    pub const APPARMOR: &str = "set `securityContext.appArmorProfile: {type: Unconfined}` in the pod spec (before Kubernetes 1.30: the annotation container.apparmor.security.beta.kubernetes.io/<container>: unconfined)";
    pub const NO_NEW_PRIVS: &str = "remove `allowPrivilegeEscalation: false` from the container's securityContext (newuidmap needs its file capabilities)";
    pub const PRIVILEGED: &str =
        "set `securityContext.privileged: true` in the pod spec and run as root";
    pub const RUN_AS_ROOT: &str =
        "run as root (`securityContext.runAsUser: 0`) with `securityContext.privileged: true`";
    pub const RUN_AS_USER: &str = "run as a non-root user with subordinate ids (`securityContext.runAsUser: 1000` in BuildKit's rootless image)";
    pub const PROC_MOUNT: &str = "set `securityContext.procMount: Unmasked` with `hostUsers: false` in the pod spec (or use rootless-strict)";
    pub const NEWUIDMAP_FILE_CAPS: &str = "give the image's newuidmap and newgidmap file capabilities instead of the setuid bit (`chmod u-s`, then `setcap cap_setuid=ep newuidmap` and `setcap cap_setgid=ep newgidmap`), as BuildKit's rootless image does";
    pub const KEEP_SETID_CAPS: &str = "keep SETUID and SETGID in `securityContext.capabilities` (do not drop them): newuidmap's file capabilities need them";
    pub const INSTALL_UIDMAP: &str = "install newuidmap and newgidmap in the image (Debian's uidmap, Alpine's shadow-uidmap), with file capabilities";
    pub const NODE_USERNS: &str = "the node turns user namespaces off: ask its admins for sysctl user.max_user_namespaces > 0 (and kernel.unprivileged_userns_clone=1), or run as root with `securityContext.privileged: true`";
    pub const APPARMOR_USERNS: &str = "load an AppArmor profile that lets rootlesskit, buildkitd and bkrun create user namespaces: `bkrun doctor --apparmor-profile` prints it and the command to load it as root on the host (the restriction stays on for every other program)";
    pub const INSTALL_ROOTLESSKIT: &str =
        "install rootlesskit in the image, or set ROOTLESSKIT to its path";
    pub const INSTALL_BUILDKITD: &str =
        "install BuildKit's buildkitd (scripts/setup does), or set BUILDKITD to its path";
}

/// One mode judged: whether it can work here, why, and what would make it work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub mode: Mode,
    pub works: bool,
    pub reason: String,
    /// The one change that would make it work; None when it works.
    pub fix: Option<String>,
}

impl Verdict {
    fn yes(mode: Mode, reason: impl Into<String>) -> Verdict {
        Verdict {
            mode,
            works: true,
            reason: reason.into(),
            fix: None,
        }
    }
    fn no(mode: Mode, (reason, fix): (String, String)) -> Verdict {
        Verdict {
            mode,
            works: false,
            reason,
            fix: Some(fix),
        }
    }
}

/// Every mode, judged from the facts, in the order auto tries them.
pub fn assess(f: &Facts) -> [Verdict; 3] {
    [
        privileged(f),
        rootless(f, Mode::Rootless),
        rootless(f, Mode::RootlessStrict),
    ]
}

fn privileged(f: &Facts) -> Verdict {
    let m = Mode::Privileged;
    if let Err(why) = buildkitd(f) {
        return Verdict::no(m, why);
    }
    if f.euid != 0 {
        return Verdict::no(
            m,
            (
                format!("bkrun runs as uid {}, not root", f.euid),
                fix::RUN_AS_ROOT.into(),
            ),
        );
    }
    if !f.status.has_eff(CAP_SYS_ADMIN) {
        return Verdict::no(
            m,
            (
                "root without CAP_SYS_ADMIN (the container is not privileged)".into(),
                fix::PRIVILEGED.into(),
            ),
        );
    }
    Verdict::yes(
        m,
        if f.user_namespace {
            "root with CAP_SYS_ADMIN in a user namespace (buildkitd adapts to it)"
        } else {
            "root with CAP_SYS_ADMIN"
        },
    )
}

fn buildkitd(f: &Facts) -> Result<(), (String, String)> {
    match f.buildkitd {
        Some(_) => Ok(()),
        None => Err((
            format!("{:?} is not on PATH", f.buildkitd_name),
            fix::INSTALL_BUILDKITD.into(),
        )),
    }
}

fn rootless(f: &Facts, mode: Mode) -> Verdict {
    if let Err(why) = rootless_common(f) {
        return Verdict::no(mode, why);
    }
    let probe = f.probe.expect("checked by rootless_common");
    if mode == Mode::RootlessStrict {
        return Verdict::yes(
            mode,
            "user namespaces and the id-map tools work; builds run without a process sandbox",
        );
    }
    match probe.mount_proc {
        Some(Ok(())) => Verdict::yes(
            mode,
            "user namespaces work and a fresh /proc can be mounted for the process sandbox",
        ),
        Some(Err(e)) => {
            let reason = if f.masked.is_empty() {
                format!("mounting a fresh /proc for the process sandbox was refused ({e})")
            } else {
                format!(
                    "/proc has masked paths ({}), so the kernel refuses the fresh /proc the process sandbox needs",
                    f.masked_summary()
                )
            };
            Verdict::no(mode, (reason, fix::PROC_MOUNT.into()))
        }
        None => Verdict::no(
            mode,
            (
                "the /proc mount could not be tried".into(),
                fix::PROC_MOUNT.into(),
            ),
        ),
    }
}

/// What both rootless modes need: buildkitd, rootlesskit, user namespaces and mounts in them,
/// newuidmap/newgidmap with usable privilege, subordinate ids.
fn rootless_common(f: &Facts) -> Result<(), (String, String)> {
    buildkitd(f)?;
    if f.rootlesskit.is_none() {
        return Err((
            format!("{:?} is not on PATH", f.rootlesskit_name),
            fix::INSTALL_ROOTLESSKIT.into(),
        ));
    }
    if f.euid != 0 {
        for tool in &f.id_maps {
            id_map_usable(f, tool)?;
        }
        if !f.subids {
            let who = f.user.clone().unwrap_or_else(|| f.euid.to_string());
            return Err((
                format!("/etc/subuid or /etc/subgid has no range for {who}"),
                format!("add `{who}:100000:65536` to the image's /etc/subuid and /etc/subgid"),
            ));
        }
    } else {
        // rootlesskit warns that running as root is unsupported, and it then wants subordinate
        // ids for root, which images don't have.
        return Err((
            "rootlesskit does not support running as root".into(),
            fix::RUN_AS_USER.into(),
        ));
    }
    let Some(probe) = f.probe else {
        return Err((
            "user namespaces were not tried".into(),
            "run `bkrun doctor`".into(),
        ));
    };
    if let Err(e) = probe.userns() {
        return Err(refused(f, "creating a user namespace", e));
    }
    match probe.mount {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(refused(f, "mounting in a user namespace", e)),
        None => Err((
            "mounting in a user namespace could not be tried".into(),
            fix::SECCOMP.into(),
        )),
    }
}

/// Who refused a namespace call: the node's sysctls, the seccomp profile or AppArmor.
fn refused(f: &Facts, what: &str, e: Errno) -> (String, String) {
    if f.sysctls.refuse_userns(f.euid) {
        return (
            format!("{what} was refused ({e}): the node's sysctls turn user namespaces off"),
            fix::NODE_USERNS.into(),
        );
    }
    if f.apparmor_restricts_userns() {
        return (
            format!("{what} was refused ({e}): kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10 and later) leaves an unconfined program's user namespace without capabilities"),
            fix::APPARMOR_USERNS.into(),
        );
    }
    if f.status.seccomp == 2 {
        let mut fix = fix::SECCOMP.to_string();
        if f.apparmor_enforcing() {
            fix.push_str(" and `appArmorProfile: {type: Unconfined}`");
        }
        return (
            format!("{what} was refused ({e}): the container's seccomp profile (RuntimeDefault) refuses it without CAP_SYS_ADMIN"),
            fix,
        );
    }
    if f.apparmor_enforcing() {
        return (
            format!(
                "{what} was refused ({e}) under the AppArmor profile {:?}",
                f.apparmor.as_deref().unwrap_or("")
            ),
            fix::APPARMOR.into(),
        );
    }
    (
        format!("{what} failed ({e})"),
        format!(
            "{}, or check the node's user-namespace sysctls",
            fix::SECCOMP
        ),
    )
}

/// newuidmap/newgidmap must be there and get their privilege when run.
fn id_map_usable(f: &Facts, tool: &IdMapTool) -> Result<(), (String, String)> {
    let name = tool.name;
    if tool.path.is_none() {
        return Err((format!("{name} is not on PATH"), fix::INSTALL_UIDMAP.into()));
    }
    let how = match tool.privilege {
        Privilege::Missing | Privilege::None => {
            return Err((
                format!("{name} has neither file capabilities nor the setuid bit"),
                fix::NEWUIDMAP_FILE_CAPS.into(),
            ))
        }
        Privilege::Setuid => "its setuid bit",
        Privilege::FileCaps(_) => "its file capabilities",
    };
    if f.status.no_new_privs {
        return Err((
            format!("no_new_privs is set (allowPrivilegeEscalation: false), so {name} gets nothing from {how}"),
            fix::NO_NEW_PRIVS.into(),
        ));
    }
    match tool.privilege {
        // Seen with shadow's setuid newuidmap: it fails in any container whose bounding set
        // lacks CAP_SYS_ADMIN, while the same binary with file capabilities works.
        Privilege::Setuid if !f.status.has_bnd(CAP_SYS_ADMIN) => Err((
            format!("{name} is setuid root, which fails in a container without CAP_SYS_ADMIN"),
            fix::NEWUIDMAP_FILE_CAPS.into(),
        )),
        Privilege::Setuid if !f.status.has_bnd(tool.cap) => Err((
            format!("{name} is setuid root but the container's capabilities drop the one it needs"),
            fix::KEEP_SETID_CAPS.into(),
        )),
        Privilege::FileCaps(caps) if caps & f.status.cap_bnd & (1 << tool.cap) == 0 => Err((
            if caps & (1 << tool.cap) == 0 {
                format!("{name}'s file capabilities lack the one it needs")
            } else {
                format!("the container's capabilities drop the one {name}'s file capabilities need")
            },
            if caps & (1 << tool.cap) == 0 {
                fix::NEWUIDMAP_FILE_CAPS.into()
            } else {
                fix::KEEP_SETID_CAPS.into()
            },
        )),
        _ => Ok(()),
    }
}

/// The mode and, in words, why: `reason` in full, `why` short enough for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub mode: Mode,
    pub reason: String,
    pub why: String,
}

/// Picks the mode. An explicit request is checked for what it needs; `auto` takes the first
/// mode that can work, and when none can, says which change would make one work.
pub fn decide(requested: ModeArg, f: &Facts) -> Result<Decision> {
    let verdicts = assess(f);
    let wanted = match requested {
        ModeArg::Auto => None,
        ModeArg::Privileged => Some(Mode::Privileged),
        ModeArg::Rootless => Some(Mode::Rootless),
        ModeArg::RootlessStrict => Some(Mode::RootlessStrict),
    };
    if let Some(mode) = wanted {
        let v = verdicts.iter().find(|v| v.mode == mode).expect("all modes");
        if !v.works {
            bail!(
                "--mode {mode} cannot work here: {}; {}",
                v.reason,
                v.fix.as_deref().unwrap_or("")
            );
        }
        return Ok(Decision {
            mode,
            reason: format!("requested; {}", v.reason),
            why: "as requested".into(),
        });
    }
    if let Some(v) = verdicts.iter().find(|v| v.works) {
        let why = match v.mode {
            Mode::Privileged => "root with CAP_SYS_ADMIN".to_string(),
            Mode::Rootless => format!("uid {}, user namespaces work", f.euid),
            Mode::RootlessStrict if !f.masked.is_empty() => "/proc has masked paths".into(),
            Mode::RootlessStrict => "a fresh /proc cannot be mounted".into(),
        };
        let reason = match v.mode {
            Mode::RootlessStrict => format!("{}; rootless: {}", v.reason, verdicts[1].reason),
            _ => v.reason.clone(),
        };
        return Ok(Decision {
            mode: v.mode,
            reason,
            why,
        });
    }
    Err(none_works(f, &verdicts))
}

/// The error when no mode can work: the change for the mode this user most likely wants
/// (privileged for root, rootless-strict, the least demanding, for anyone else) on the first
/// line, every mode's reason below.
pub fn none_works(f: &Facts, verdicts: &[Verdict; 3]) -> anyhow::Error {
    let main = if f.euid == 0 {
        &verdicts[0]
    } else {
        &verdicts[2]
    };
    let detail = verdicts
        .iter()
        .map(|v| format!("{}: {}", v.mode, v.reason))
        .collect::<Vec<_>>()
        .join("\n");
    anyhow::anyhow!("{detail}").context(format!(
        "no daemon mode can work here: {}; {}",
        main.reason,
        main.fix.as_deref().unwrap_or("")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, DEFAULT_CAPS};
    use crate::host::{NsProbe, CAP_SETUID};

    fn facts(h: &FakeHost) -> Facts {
        Facts::gather(h, "buildkitd", "rootlesskit", true)
    }

    fn auto_mode(h: &FakeHost) -> Result<Decision> {
        decide(ModeArg::Auto, &facts(h))
    }

    fn auto_err(h: &FakeHost) -> String {
        format!("{:#}", auto_mode(h).unwrap_err())
    }

    #[test]
    fn root_with_sys_admin_is_privileged() {
        assert_eq!(auto_mode(&FakeHost::root()).unwrap().mode, Mode::Privileged);
    }

    #[test]
    fn user_with_working_userns_is_rootless() {
        assert_eq!(auto_mode(&FakeHost::user()).unwrap().mode, Mode::Rootless);
    }

    #[test]
    fn a_default_pod_is_strict_and_says_why() {
        let d = auto_mode(&FakeHost::pod_user(0)).unwrap();
        assert_eq!(d.mode, Mode::RootlessStrict);
        assert_eq!(d.why, "/proc has masked paths");
        assert!(d.reason.contains("/proc/kcore"), "{}", d.reason);
    }

    #[test]
    fn runtime_default_seccomp_names_the_profile() {
        let h = FakeHost {
            probe: NsProbe {
                clone_userns: Some(Err(Errno::EPERM)),
                unshare_userns: Some(Err(Errno::EPERM)),
                mount: None,
                mount_proc: None,
            },
            ..FakeHost::pod_user(2)
        };
        let e = auto_err(&h);
        let first = e.lines().next().unwrap();
        assert!(first.starts_with("no daemon mode can work here"), "{e}");
        assert!(first.contains("seccompProfile: {type: Unconfined}"), "{e}");
        assert!(e.contains("privileged: bkrun runs as uid 1000"), "{e}");
    }

    #[test]
    fn the_node_sysctl_is_not_blamed_on_the_pod() {
        let h = FakeHost {
            probe: NsProbe {
                clone_userns: Some(Err(Errno::ENOSPC)),
                ..NsProbe::ALL_OK
            },
            sysctls: crate::host::Sysctls {
                max_user_namespaces: Some(0),
                ..Default::default()
            },
            ..FakeHost::pod_user(2)
        };
        assert!(auto_err(&h).contains("user.max_user_namespaces"));
    }

    #[test]
    fn ubuntu_s_userns_restriction_asks_for_a_profile_not_the_sysctl() {
        // What the restriction looks like to the probe: the namespace is made, a mount in it is not.
        let restricted = |on: bool, apparmor: &str| FakeHost {
            probe: NsProbe {
                mount: Some(Err(Errno::EPERM)),
                mount_proc: None,
                ..NsProbe::ALL_OK
            },
            sysctls: crate::host::Sysctls {
                apparmor_restrict_userns: Some(on),
                ..Default::default()
            },
            apparmor: Some(apparmor.into()),
            ..FakeHost::user()
        };
        let e = auto_err(&restricted(true, "unconfined"));
        let first = e.lines().next().unwrap();
        assert!(
            first.contains("kernel.apparmor_restrict_unprivileged_userns=1"),
            "{e}"
        );
        assert!(first.contains("bkrun doctor --apparmor-profile"), "{e}");
        // Off, the same refusal is not blamed on it.
        let e = auto_err(&restricted(false, "unconfined"));
        assert!(!e.contains("apparmor_restrict"), "{e}");
        // Under a profile of its own, that profile decides: the restriction is not named.
        let e = auto_err(&restricted(true, "cri-containerd.apparmor.d (enforce)"));
        assert!(!e.contains("apparmor_restrict"), "{e}");
        assert!(e.contains("appArmorProfile"), "{e}");
    }

    #[test]
    fn apparmor_refusing_mounts_names_its_field() {
        let h = FakeHost {
            probe: NsProbe {
                mount: Some(Err(Errno::EACCES)),
                mount_proc: None,
                ..NsProbe::ALL_OK
            },
            apparmor: Some("cri-containerd.apparmor.d (enforce)".into()),
            ..FakeHost::pod_user(0)
        };
        assert!(auto_err(&h).contains("appArmorProfile: {type: Unconfined}"));
    }

    #[test]
    fn no_new_privs_names_allow_privilege_escalation() {
        let mut h = FakeHost::pod_user(0);
        h.status.no_new_privs = true;
        let e = auto_err(&h);
        assert!(
            e.lines()
                .next()
                .unwrap()
                .contains("allowPrivilegeEscalation"),
            "{e}"
        );
    }

    #[test]
    fn setuid_newuidmap_without_sys_admin_asks_for_file_caps() {
        let h = FakeHost {
            privileges: vec![
                ("newuidmap", Privilege::Setuid),
                ("newgidmap", Privilege::Setuid),
            ],
            ..FakeHost::pod_user(0)
        };
        assert!(auto_err(&h).contains("setcap cap_setuid=ep"));
        // On a host (full bounding set) the same binary works.
        let h = FakeHost {
            privileges: vec![
                ("newuidmap", Privilege::Setuid),
                ("newgidmap", Privilege::Setuid),
            ],
            ..FakeHost::user()
        };
        assert_eq!(auto_mode(&h).unwrap().mode, Mode::Rootless);
    }

    #[test]
    fn dropped_setid_capabilities_are_named() {
        let mut h = FakeHost::pod_user(0);
        h.status.cap_bnd = DEFAULT_CAPS & !(1 << CAP_SETUID);
        assert!(auto_err(&h).contains("keep SETUID and SETGID"));
    }

    #[test]
    fn unmasked_proc_in_a_pod_keeps_the_sandbox() {
        let h = FakeHost {
            masked: vec![],
            probe: NsProbe::ALL_OK,
            ..FakeHost::pod_user(0)
        };
        assert_eq!(auto_mode(&h).unwrap().mode, Mode::Rootless);
    }

    #[test]
    fn root_without_sys_admin_is_told_privileged_or_a_user() {
        let mut h = FakeHost::pod_user(0);
        h.euid = 0;
        h.status.cap_eff = DEFAULT_CAPS;
        let e = auto_err(&h);
        assert!(
            e.lines().next().unwrap().contains("privileged: true"),
            "{e}"
        );
        let v = assess(&facts(&h));
        assert_eq!(v[0].fix.as_deref(), Some(fix::PRIVILEGED));
        assert_eq!(v[2].fix.as_deref(), Some(fix::RUN_AS_USER));
    }

    #[test]
    fn root_in_a_refusing_pod_is_told_privileged() {
        let mut h = FakeHost::pod_user(2);
        h.euid = 0;
        h.status.cap_eff = DEFAULT_CAPS;
        h.probe.clone_userns = Some(Err(Errno::EPERM));
        let e = auto_err(&h);
        assert!(
            e.lines().next().unwrap().contains("privileged: true"),
            "{e}"
        );
    }

    #[test]
    fn missing_tools_and_ranges_are_named() {
        let h = FakeHost {
            programs: vec!["buildkitd"],
            ..FakeHost::user()
        };
        assert!(auto_err(&h).contains("rootlesskit"));
        let h = FakeHost {
            programs: vec!["buildkitd", "rootlesskit"],
            ..FakeHost::user()
        };
        assert!(auto_err(&h).contains("uidmap"));
        let h = FakeHost {
            subids: false,
            ..FakeHost::user()
        };
        assert!(auto_err(&h).contains("/etc/subuid"));
    }

    #[test]
    fn explicit_privileged_as_user_is_refused() {
        let e = decide(ModeArg::Privileged, &facts(&FakeHost::user())).unwrap_err();
        assert!(e.to_string().contains("runAsUser: 0"), "{e}");
    }

    #[test]
    fn explicit_strict_is_honoured() {
        let d = decide(ModeArg::RootlessStrict, &facts(&FakeHost::user())).unwrap();
        assert_eq!(d.mode, Mode::RootlessStrict);
    }

    #[test]
    fn explicit_rootless_with_masked_proc_is_refused_with_the_way_out() {
        let e = decide(ModeArg::Rootless, &facts(&FakeHost::pod_user(0))).unwrap_err();
        assert!(e.to_string().contains("procMount: Unmasked"), "{e}");
    }
}
