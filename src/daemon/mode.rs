//! Which way buildkitd is started (privileged, rootless, rootless-strict): each mode judged from the host's facts, with the reason and, where it cannot work, every blocker and the change that removes it, in the order to make them.

use std::fmt;

use anyhow::Result;
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
    pub const USERNS_ROOT: &str = "run as root (`securityContext.runAsUser: 0`) with `securityContext.privileged: true` in the `hostUsers: false` pod, whose privilege ends at the pod's user namespace (bkrun's privileged image; images/userns.yaml)";
    pub const NO_PASSWD_USER: &str = "run as the image's user that has subordinate ids (`securityContext.runAsUser: 1000` in bkrun's rootless image; on OpenShift an SCC whose runAsUser allows it)";
}

/// What auto's rootless-strict gives up, and the pod-spec changes that give it back: said on
/// the start-up line, since BuildKit's docs discourage running without the sandbox.
pub const STRICT_LOSS: &str = "no process sandbox: RUN steps share buildkitd's PID namespace and can outlive the build; `procMount: Unmasked` with `hostUsers: false`, or root with `privileged: true` in a `hostUsers: false` pod, gives it back";

/// What the pod spec (or an OpenShift SCC) must allow for a fix, in its field names.
mod allow {
    pub const NO_NEW_PRIVS: &str = "allowPrivilegeEscalation: true";
    pub const SETID_CAPS: &str = "capabilities SETUID and SETGID";
    pub const SECCOMP: &str = "seccompProfile: Unconfined";
    pub const APPARMOR: &str = "appArmorProfile: Unconfined";
    pub const PRIVILEGED: &str = "privileged: true";
    pub const ROOT: &str = "runAsUser: 0 with privileged: true";
    pub const USER: &str = "runAsUser: 1000 (a user with subordinate ids)";
    pub const PROC_MOUNT: &str = "procMount: Unmasked with hostUsers: false";
}

/// One thing that keeps a mode from working here, and the change that removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: String,
    pub fix: String,
    /// What the pod spec (or an OpenShift SCC) must allow for the fix, in its field names; None
    /// when the change is to the image or the node.
    pub allow: Option<&'static str>,
}

fn blocker(
    reason: impl Into<String>,
    fix: impl Into<String>,
    allow: Option<&'static str>,
) -> Blocker {
    Blocker {
        reason: reason.into(),
        fix: fix.into(),
        allow,
    }
}

/// One mode judged: whether it can work here, why, and what would make it work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub mode: Mode,
    pub works: bool,
    /// Why it works, or else its first blocker's reason (what one-line messages show).
    pub reason: String,
    /// The first blocker's fix; None when it works.
    pub fix: Option<String>,
    /// Everything that keeps it from working, in the order to fix them; empty when it works.
    pub blockers: Vec<Blocker>,
}

impl Verdict {
    fn yes(mode: Mode, reason: impl Into<String>) -> Verdict {
        Verdict {
            mode,
            works: true,
            reason: reason.into(),
            fix: None,
            blockers: Vec::new(),
        }
    }

    /// Works when nothing blocks it; `reason` is then why it works.
    fn judged(mode: Mode, blockers: Vec<Blocker>, reason: &str) -> Verdict {
        let Some(first) = blockers.first() else {
            return Verdict::yes(mode, reason);
        };
        Verdict {
            mode,
            works: false,
            reason: first.reason.clone(),
            fix: Some(first.fix.clone()),
            blockers,
        }
    }

    /// Every change this mode needs, numbered in order, on one line.
    pub fn fixes(&self) -> String {
        self.blockers
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{}) {}", i + 1, b.fix))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What the pod spec (or an OpenShift SCC) must allow for this mode, and what the image
    /// or node must change, in words.
    pub fn needs(&self) -> String {
        let mut allow: Vec<&str> = Vec::new();
        for a in self.blockers.iter().filter_map(|b| b.allow) {
            if !allow.contains(&a) {
                allow.push(a);
            }
        }
        let other = self.blockers.iter().filter(|b| b.allow.is_none()).count();
        match (allow.is_empty(), other) {
            (true, _) => "no pod-spec change: the image or the node must change".into(),
            (false, 0) => allow.join(", "),
            (false, n) => format!(
                "{}, and {n} change{} to the image or node",
                allow.join(", "),
                if n == 1 { "" } else { "s" }
            ),
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
    let mut b: Vec<Blocker> = buildkitd(f).into_iter().collect();
    if f.euid != 0 {
        b.push(blocker(
            format!("bkrun runs as uid {}, not root", f.euid),
            fix::RUN_AS_ROOT,
            Some(allow::ROOT),
        ));
    } else if !f.status.has_eff(CAP_SYS_ADMIN) {
        b.push(blocker(
            "root without CAP_SYS_ADMIN (the container is not privileged)",
            fix::PRIVILEGED,
            Some(allow::PRIVILEGED),
        ));
    }
    let reason = if f.user_namespace {
        "root with CAP_SYS_ADMIN in a user namespace (buildkitd adapts to it)"
    } else {
        "root with CAP_SYS_ADMIN"
    };
    Verdict::judged(Mode::Privileged, b, reason)
}

fn buildkitd(f: &Facts) -> Option<Blocker> {
    f.buildkitd.is_none().then(|| {
        blocker(
            format!("{:?} is not on PATH", f.buildkitd_name),
            fix::INSTALL_BUILDKITD,
            None,
        )
    })
}

fn rootless(f: &Facts, mode: Mode) -> Verdict {
    let mut b = rootless_blockers(f);
    if mode == Mode::RootlessStrict {
        return Verdict::judged(
            mode,
            b,
            "user namespaces and the id-map tools work; builds run without a process sandbox",
        );
    }
    b.extend(sandbox_blocker(f));
    Verdict::judged(
        mode,
        b,
        "user namespaces work and a fresh /proc can be mounted for the process sandbox",
    )
}

/// What the process sandbox needs beyond rootless-strict: a fresh /proc in a new PID namespace.
fn sandbox_blocker(f: &Facts) -> Option<Blocker> {
    let masked = || {
        format!(
            "/proc has masked paths ({}), so the kernel refuses the fresh /proc the process sandbox needs",
            f.masked_summary()
        )
    };
    let reason = match f.probe.and_then(|p| p.mount_proc) {
        Some(Ok(())) => return None,
        Some(Err(_)) if !f.masked.is_empty() => masked(),
        Some(Err(e)) => {
            format!("mounting a fresh /proc for the process sandbox was refused ({e})")
        }
        // Not tried because an earlier step failed: masked paths alone say it would fail too.
        None if !f.masked.is_empty() => masked(),
        None if f
            .probe
            .is_some_and(|p| p.userns().is_ok() && p.mount == Some(Ok(()))) =>
        {
            "the /proc mount could not be tried".into()
        }
        None => return None,
    };
    Some(blocker(reason, fix::PROC_MOUNT, Some(allow::PROC_MOUNT)))
}

/// What both rootless modes need, in the order to fix them: buildkitd and rootlesskit,
/// newuidmap/newgidmap with usable privilege (the pod's securityContext), user namespaces and
/// mounts in them (its profiles, the node), then subordinate ids this namespace can map.
fn rootless_blockers(f: &Facts) -> Vec<Blocker> {
    let mut b: Vec<Blocker> = buildkitd(f).into_iter().collect();
    if f.rootlesskit.is_none() {
        b.push(blocker(
            format!("{:?} is not on PATH", f.rootlesskit_name),
            fix::INSTALL_ROOTLESSKIT,
            None,
        ));
    }
    if f.euid == 0 {
        // rootlesskit warns that running as root is unsupported, and it then wants subordinate
        // ids for root, which images don't have.
        b.push(blocker(
            "rootlesskit does not support running as root",
            fix::RUN_AS_USER,
            Some(allow::USER),
        ));
    } else {
        for tool in &f.id_maps {
            for x in id_map_blockers(f, tool) {
                // newuidmap and newgidmap usually fail alike: one change fixes both.
                if !b.iter().any(|y| y.fix == x.fix) {
                    b.push(x);
                }
            }
        }
    }
    b.extend(namespace_blocker(f));
    if f.euid != 0 {
        b.extend(subid_blockers(f));
    }
    b
}

/// User namespaces and mounts in them, as the probe found them.
fn namespace_blocker(f: &Facts) -> Option<Blocker> {
    let Some(probe) = f.probe else {
        return Some(blocker(
            "user namespaces were not tried",
            "run `bkrun doctor`",
            None,
        ));
    };
    if let Err(e) = probe.userns() {
        return Some(refused(f, "creating a user namespace", e));
    }
    match probe.mount {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(refused(f, "mounting in a user namespace", e)),
        None => Some(blocker(
            "mounting in a user namespace could not be tried",
            fix::SECCOMP,
            Some(allow::SECCOMP),
        )),
    }
}

/// Subordinate ids: newuidmap must know the user, the user must have some, and this user
/// namespace must map them (a `hostUsers: false` pod maps 65536 ids, which the usual
/// 100000-165535 lies outside).
fn subid_blockers(f: &Facts) -> Vec<Blocker> {
    let mut b = Vec::new();
    let who = f.user.clone().unwrap_or_else(|| format!("uid {}", f.euid));
    if f.user.is_none() {
        // shadow's newuidmap looks its caller up in the passwd database and gives up without an
        // entry ("Cannot determine your user name"), whatever /etc/subuid says.
        b.push(blocker(
            format!("uid {} has no passwd entry (an arbitrary uid, as OpenShift assigns), and newuidmap refuses a caller it cannot name", f.euid),
            format!("{}, or give uid {} an entry in the image's /etc/passwd", fix::NO_PASSWD_USER, f.euid),
            Some(allow::USER),
        ));
    }
    if !f.has_subids() {
        let name = f.user.clone().unwrap_or_else(|| f.euid.to_string());
        b.push(blocker(
            format!("/etc/subuid or /etc/subgid has no range for {who}"),
            format!("add `{name}:100000:65536` to the image's /etc/subuid and /etc/subgid"),
            None,
        ));
        return b;
    }
    let Some(u) = f.unmapped_subids() else {
        return b;
    };
    let partly = u
        .mapped
        .iter()
        .any(|m| m.start < u.range.end() && u.range.start < m.end());
    b.push(blocker(
        format!(
            "uid {}'s subordinate {kind}s {} ({}) lie {}outside the ids this user namespace maps ({}, {}; a `hostUsers: false` pod), so new{kind}map cannot map them",
            f.euid,
            u.range,
            u.file(),
            if partly { "partly " } else { "" },
            u.mapped_summary(),
            u.map_file(),
            kind = u.kind,
        ),
        fix::USERNS_ROOT,
        Some(allow::ROOT),
    ));
    b
}

/// Who refused a namespace call: the node's sysctls, the seccomp profile or AppArmor.
fn refused(f: &Facts, what: &str, e: Errno) -> Blocker {
    if f.sysctls.refuse_userns(f.euid) {
        return blocker(
            format!("{what} was refused ({e}): the node's sysctls turn user namespaces off"),
            fix::NODE_USERNS,
            None,
        );
    }
    if f.apparmor_restricts_userns() {
        // The fix is a profile loaded on the node, not a field of the pod spec.
        return blocker(
            format!("{what} was refused ({e}): kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10 and later) leaves an unconfined program's user namespace without capabilities"),
            fix::APPARMOR_USERNS,
            None,
        );
    }
    if f.status.seccomp == 2 {
        let mut fix = fix::SECCOMP.to_string();
        if f.apparmor_enforcing() {
            fix.push_str(" and `appArmorProfile: {type: Unconfined}`");
        }
        return blocker(
            format!("{what} was refused ({e}): the container's seccomp profile (RuntimeDefault) refuses it without CAP_SYS_ADMIN"),
            fix,
            Some(allow::SECCOMP),
        );
    }
    if f.apparmor_enforcing() {
        return blocker(
            format!(
                "{what} was refused ({e}) under the AppArmor profile {:?}",
                f.apparmor.as_deref().unwrap_or("")
            ),
            fix::APPARMOR,
            Some(allow::APPARMOR),
        );
    }
    blocker(
        format!("{what} failed ({e})"),
        format!(
            "{}, or check the node's user-namespace sysctls",
            fix::SECCOMP
        ),
        Some(allow::SECCOMP),
    )
}

/// newuidmap/newgidmap must be there and get their privilege when run: every reason they
/// would not.
fn id_map_blockers(f: &Facts, tool: &IdMapTool) -> Vec<Blocker> {
    let name = tool.name;
    if tool.path.is_none() {
        return vec![blocker(
            format!("{name} is not on PATH"),
            fix::INSTALL_UIDMAP,
            None,
        )];
    }
    let how = match tool.privilege {
        Privilege::Missing | Privilege::None => {
            return vec![blocker(
                format!("{name} has neither file capabilities nor the setuid bit"),
                fix::NEWUIDMAP_FILE_CAPS,
                None,
            )]
        }
        Privilege::Setuid => "its setuid bit",
        Privilege::FileCaps(_) => "its file capabilities",
    };
    let mut b = Vec::new();
    if f.status.no_new_privs {
        b.push(blocker(
            format!("no_new_privs is set (allowPrivilegeEscalation: false), so {name} gets nothing from {how}"),
            fix::NO_NEW_PRIVS,
            Some(allow::NO_NEW_PRIVS),
        ));
    }
    let keep = |reason: String| blocker(reason, fix::KEEP_SETID_CAPS, Some(allow::SETID_CAPS));
    let file_caps = |reason: String| blocker(reason, fix::NEWUIDMAP_FILE_CAPS, None);
    match tool.privilege {
        // Seen with shadow's setuid newuidmap: it fails in any container whose bounding set
        // lacks CAP_SYS_ADMIN, while the same binary with file capabilities works.
        Privilege::Setuid if !f.status.has_bnd(CAP_SYS_ADMIN) => b.push(file_caps(format!(
            "{name} is setuid root, which fails in a container without CAP_SYS_ADMIN"
        ))),
        Privilege::Setuid if !f.status.has_bnd(tool.cap) => b.push(keep(format!(
            "{name} is setuid root but the container's capabilities drop the one it needs"
        ))),
        Privilege::FileCaps(caps) if caps & (1 << tool.cap) == 0 => b.push(file_caps(format!(
            "{name}'s file capabilities lack the one it needs"
        ))),
        Privilege::FileCaps(_) if !f.status.has_bnd(tool.cap) => b.push(keep(format!(
            "the container's capabilities drop the one {name}'s file capabilities need"
        ))),
        _ => {}
    }
    b
}

/// The mode and, in words, why: `reason` in full, `why` short enough for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub mode: Mode,
    pub reason: String,
    pub why: String,
    /// What auto's choice gives up (rootless-strict: the process sandbox), for the start-up line.
    pub given_up: Option<&'static str>,
}

/// Picks the mode. An explicit request is checked for what it needs; `auto` takes the first
/// mode that can work, and when none can, says which changes would make one work.
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
            return Err(with_every_fix(
                v,
                format!(
                    "--mode {mode} cannot work here: {}; {}",
                    v.reason,
                    v.fix.as_deref().unwrap_or("")
                ),
            ));
        }
        return Ok(Decision {
            mode,
            reason: format!("requested; {}", v.reason),
            why: "as requested".into(),
            given_up: None,
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
            given_up: (v.mode == Mode::RootlessStrict).then_some(STRICT_LOSS),
        });
    }
    Err(none_works(f, &verdicts))
}

/// `first` as the error's one line; below it every blocker of `v` beyond the first, and all
/// of its changes in order when it needs more than one.
fn with_every_fix(v: &Verdict, first: String) -> anyhow::Error {
    if v.blockers.len() < 2 {
        return anyhow::anyhow!("{first}");
    }
    let mut detail: Vec<String> = v.blockers[1..]
        .iter()
        .map(|b| format!("also: {}", b.reason))
        .collect();
    detail.push(format!(
        "{} needs all {} changes, in this order: {}",
        v.mode,
        v.blockers.len(),
        v.fixes()
    ));
    anyhow::anyhow!("{}", detail.join("\n")).context(first)
}

/// The error when no mode can work: the change for the mode this user most likely wants
/// (privileged for root, rootless-strict, the least demanding, for anyone else) on the first
/// line; below it every mode's blockers, and every change that mode needs.
pub fn none_works(f: &Facts, verdicts: &[Verdict; 3]) -> anyhow::Error {
    let main = if f.euid == 0 {
        &verdicts[0]
    } else {
        &verdicts[2]
    };
    let mut detail: Vec<String> = verdicts
        .iter()
        .map(|v| {
            let reasons: Vec<&str> = v.blockers.iter().map(|b| b.reason.as_str()).collect();
            format!("{}: {}", v.mode, reasons.join("; "))
        })
        .collect();
    if main.blockers.len() > 1 {
        detail.push(format!(
            "{} needs all {} changes, in this order: {}",
            main.mode,
            main.blockers.len(),
            main.fixes()
        ));
    }
    anyhow::anyhow!("{}", detail.join("\n")).context(format!(
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

    #[test]
    fn subordinate_ids_outside_the_pods_namespace_are_named_with_the_ranges() {
        let e = auto_err(&FakeHost::userns_pod_user());
        let first = auto_mode(&FakeHost::userns_pod_user())
            .unwrap_err()
            .to_string();
        assert_eq!(
            first,
            format!("no daemon mode can work here: uid 1000's subordinate uids 100000-165535 (/etc/subuid) lie outside the ids this user namespace maps (65536 ids: 0-65535, /proc/self/uid_map; a `hostUsers: false` pod), so newuidmap cannot map them; {}", fix::USERNS_ROOT)
        );
        assert!(!e.contains("keep SETUID"), "{e}");
        // Partly outside is said so; a range inside the map works.
        let mut h = FakeHost::userns_pod_user();
        h.subid_range = crate::host::IdRange {
            start: 60000,
            count: 10000,
        };
        assert!(auto_err(&h).contains("60000-69999 (/etc/subuid) lie partly outside"));
        h.subid_range = crate::host::IdRange {
            start: 1001,
            count: 64535,
        };
        assert_eq!(auto_mode(&h).unwrap().mode, Mode::RootlessStrict);
        // Root, privileged in the same pod, is what works.
        let h = FakeHost {
            euid: 0,
            status: FakeHost::root().status,
            ..FakeHost::userns_pod_user()
        };
        let d = auto_mode(&h).unwrap();
        assert_eq!(d.mode, Mode::Privileged);
        assert!(d.reason.contains("in a user namespace"), "{}", d.reason);
    }

    #[test]
    fn every_blocker_is_listed_in_the_order_to_fix_them() {
        let v = assess(&facts(&FakeHost::restricted_scc()));
        let fixes = |v: &Verdict| v.blockers.iter().map(|b| b.fix.clone()).collect::<Vec<_>>();
        assert_eq!(fixes(&v[0]), [fix::RUN_AS_ROOT]);
        let strict = fixes(&v[2]);
        assert_eq!(strict.len(), 5, "{strict:#?}");
        assert_eq!(strict[0], fix::NO_NEW_PRIVS);
        assert_eq!(strict[1], fix::KEEP_SETID_CAPS);
        assert!(strict[2].contains("seccompProfile"), "{}", strict[2]);
        assert!(strict[3].contains("runAsUser: 1000"), "{}", strict[3]);
        assert!(v[2].blockers[3].reason.contains("no passwd entry"));
        assert_eq!(
            v[2].blockers[4].reason,
            "/etc/subuid or /etc/subgid has no range for uid 1000680000"
        );
        // The sandbox mode also needs the unmasked /proc, last.
        let rootless = fixes(&v[1]);
        assert_eq!(rootless[..5], strict[..]);
        assert_eq!(rootless[5], fix::PROC_MOUNT);
        // The first line stays the first blocker's; the rest follow it.
        assert_eq!(v[2].reason, v[2].blockers[0].reason);
        let e = auto_err(&FakeHost::restricted_scc());
        let first = e.lines().next().unwrap();
        assert!(first.contains("allowPrivilegeEscalation"), "{e}");
        assert!(
            e.contains("rootless-strict needs all 5 changes, in this order: 1) remove `allowPrivilegeEscalation: false`"),
            "{e}"
        );
        assert!(
            e.contains("privileged: bkrun runs as uid 1000680000, not root"),
            "{e}"
        );
        assert_eq!(
            v[2].needs(),
            "allowPrivilegeEscalation: true, capabilities SETUID and SETGID, seccompProfile: Unconfined, runAsUser: 1000 (a user with subordinate ids), and 1 change to the image or node"
        );
        // An explicit mode lists them too.
        let e = format!(
            "{:#}",
            decide(ModeArg::RootlessStrict, &facts(&FakeHost::restricted_scc())).unwrap_err()
        );
        assert!(
            e.contains("also: creating a user namespace was refused"),
            "{e}"
        );
    }

    #[test]
    fn auto_strict_says_what_it_gives_up() {
        let d = auto_mode(&FakeHost::pod_user(0)).unwrap();
        assert_eq!(d.given_up, Some(STRICT_LOSS));
        assert!(
            STRICT_LOSS.contains("procMount: Unmasked") && STRICT_LOSS.contains("privileged: true")
        );
        let d = decide(ModeArg::RootlessStrict, &facts(&FakeHost::pod_user(0))).unwrap();
        assert_eq!(d.given_up, None, "asked for: nothing to explain");
        assert_eq!(auto_mode(&FakeHost::user()).unwrap().given_up, None);
    }
}
