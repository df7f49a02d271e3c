//! Reads a daemon log for the causes a container's security settings produce, and names the pod-spec change for each.

use super::facts::Facts;
use super::mode::fix;
use crate::host::reaper::Exit;
use crate::host::Privilege;

/// How buildkitd itself ended, as rootlesskit logs it when its child ends ("[rootlesskit:child ]
/// error: command [...] exited: signal: killed"): rootlesskit then exits with its own status
/// (255), which says nothing of buildkitd's.
pub fn rootless_child_exit(log: &str) -> Option<Exit> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("[rootlesskit:child ]") && l.contains("] exited: "))?;
    let how = line.rsplit("] exited: ").next()?.trim();
    // Go's ProcessState strings: "exit status N", "signal: NAME" (strsignal's words).
    if let Some(code) = how.strip_prefix("exit status ") {
        return code.trim().parse().ok().map(Exit::Code);
    }
    let name = how.strip_prefix("signal: ")?;
    let name = name.split(" (core dumped)").next()?;
    let sig = match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "terminated" => 15,
        _ => return None,
    };
    Some(Exit::Signal(sig))
}

/// The cause and the change to make, when the log shows a known one; None otherwise (the
/// caller then shows the generic message and the log's tail).
pub fn explain(log: &str, facts: &Facts) -> Option<String> {
    let lower = log.to_lowercase();
    let refused = lower.contains("operation not permitted") || lower.contains("permission denied");
    if !refused {
        return None;
    }
    // Under Ubuntu's restriction rootlesskit gets its namespace but no capabilities in it, and
    // fails at its first mount with a message that names neither AppArmor nor the sysctl.
    if facts.userns_restriction_around() {
        return Some(format!(
            "kernel.apparmor_restrict_unprivileged_userns=1 left rootlesskit's user namespace without capabilities; {}",
            fix::APPARMOR_USERNS
        ));
    }
    let id_map = ["newuidmap", "newgidmap", "uid_map", "gid_map"]
        .iter()
        .any(|w| lower.contains(w));
    if id_map {
        let setuid = facts
            .id_maps
            .iter()
            .any(|t| t.privilege == Privilege::Setuid);
        return Some(if let Some(u) = facts.unmapped_subids() {
            format!(
                "rootlesskit's new{kind}map was refused: the subordinate {kind}s {} ({}) lie outside the ids this user namespace maps ({}, {}; a `hostUsers: false` pod); {}",
                u.range,
                u.file(),
                u.mapped_summary(),
                u.map_file(),
                fix::USERNS_ROOT,
                kind = u.kind,
            )
        } else if facts.status.no_new_privs {
            format!(
                "rootlesskit's newuidmap was refused: no_new_privs is set (allowPrivilegeEscalation: false); {}",
                fix::NO_NEW_PRIVS
            )
        } else if setuid {
            format!(
                "rootlesskit's newuidmap was refused: it is setuid root, which fails in this container; {}",
                fix::NEWUIDMAP_FILE_CAPS
            )
        } else {
            format!(
                "rootlesskit's newuidmap was refused: {}",
                fix::KEEP_SETID_CAPS
            )
        });
    }
    // rootlesskit's child says this when AppArmor's default profile refuses its mounts
    // (GitLab's Kubernetes runners show it).
    if lower.contains("apparmor") || lower.contains("failed to share mount point") {
        return Some(format!("AppArmor refused the daemon; {}", fix::APPARMOR));
    }
    let namespaces = ["fork/exec /proc/self/exe", "unshare", "clone", "setns"]
        .iter()
        .any(|w| lower.contains(w));
    if namespaces && facts.status.seccomp == 2 {
        return Some(format!(
            "the seccomp profile refused the namespace calls rootlesskit makes; {}",
            fix::SECCOMP
        ));
    }
    if lower.contains("mount") && lower.contains("proc") && !facts.masked.is_empty() {
        return Some(format!(
            "a fresh /proc cannot be mounted here (/proc has masked paths); use rootless-strict (BUILDKITD_FLAGS=--oci-worker-no-process-sandbox, or --mode auto), or {}",
            fix::PROC_MOUNT
        ));
    }
    if lower.contains("mount") && facts.status.seccomp == 2 {
        return Some(format!(
            "the seccomp profile refused a mount; {}",
            fix::SECCOMP
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn facts(h: &FakeHost) -> Facts {
        Facts::gather(h, "buildkitd", "rootlesskit", true)
    }

    const NEWUIDMAP: &str = "[rootlesskit:parent] error: failed to setup UID/GID map: newuidmap 42 [0 1000 1 1 100000 65536] failed: newuidmap: write to uid_map failed: Operation not permitted\n";

    #[test]
    fn newuidmap_refused_under_no_new_privs() {
        let mut h = FakeHost::pod_user(0);
        h.status.no_new_privs = true;
        let why = explain(NEWUIDMAP, &facts(&h)).unwrap();
        assert!(why.contains("allowPrivilegeEscalation"), "{why}");
    }

    #[test]
    fn newuidmap_refused_for_ranges_outside_the_pods_namespace() {
        let h = FakeHost::userns_pod_user();
        let why = explain(NEWUIDMAP, &facts(&h)).unwrap();
        assert!(
            why.contains("100000-165535 (/etc/subuid) lie outside")
                && why.contains("65536 ids: 0-65535")
                && why.contains("privileged: true` in the `hostUsers: false` pod")
                && !why.contains("keep SETUID"),
            "{why}"
        );
    }

    #[test]
    fn newuidmap_refused_when_setuid() {
        let h = FakeHost {
            privileges: vec![("newuidmap", Privilege::Setuid)],
            ..FakeHost::pod_user(0)
        };
        let why = explain(NEWUIDMAP, &facts(&h)).unwrap();
        assert!(why.contains("setcap cap_setuid=ep"), "{why}");
    }

    #[test]
    fn namespace_calls_refused_by_seccomp() {
        let log = "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: operation not permitted\n";
        let why = explain(log, &facts(&FakeHost::pod_user(2))).unwrap();
        assert!(why.contains("seccompProfile: {type: Unconfined}"), "{why}");
    }

    #[test]
    fn rootlesskit_refused_its_mounts_by_apparmor() {
        let log = "[rootlesskit:child ] error: failed to share mount point: /: permission denied\n";
        let why = explain(log, &facts(&FakeHost::pod_user(0))).unwrap();
        assert!(why.contains("appArmorProfile: {type: Unconfined}"), "{why}");
    }

    #[test]
    fn ubuntu_s_userns_restriction_is_named_not_the_mount() {
        let log = "[rootlesskit:child ] error: failed to share mount point: /: permission denied\n";
        let mut h = FakeHost::user();
        h.apparmor = Some("unconfined".into());
        h.sysctls.apparmor_restrict_userns = Some(true);
        let why = explain(log, &facts(&h)).unwrap();
        assert!(
            why.starts_with("kernel.apparmor_restrict_unprivileged_userns=1 left rootlesskit's"),
            "{why}"
        );
        assert!(why.contains("bkrun doctor --apparmor-profile"), "{why}");
        // bkrun under its own profile, rootlesskit moved out of the profile's reach: still named.
        h.apparmor = Some("bkrun (unconfined)".into());
        assert!(explain(log, &facts(&h))
            .unwrap()
            .contains("apparmor_restrict"));
        h.sysctls.apparmor_restrict_userns = Some(false);
        assert!(!explain(log, &facts(&h))
            .unwrap()
            .contains("apparmor_restrict"));
    }

    #[test]
    fn buildkitd_exit_under_rootlesskit_is_read_from_its_log() {
        let log = "time=\"…\" level=warning msg=\"x\"\n[rootlesskit:child ] error: command [/usr/local/bin/buildkitd --addr=unix:///a.sock] exited: signal: killed\n[rootlesskit:parent] error: child exited: exit status 255\n";
        assert_eq!(rootless_child_exit(log), Some(Exit::Signal(9)));
        let log = "[rootlesskit:child ] error: command [buildkitd] exited: exit status 2\n";
        assert_eq!(rootless_child_exit(log), Some(Exit::Code(2)));
        let log = "[rootlesskit:child ] error: command [buildkitd] exited: signal: segmentation fault (core dumped)\n";
        assert_eq!(rootless_child_exit(log), Some(Exit::Signal(11)));
        assert_eq!(
            rootless_child_exit("[rootlesskit:parent] error: child exited: exit status 255\n"),
            None
        );
    }

    #[test]
    fn unrelated_failures_are_left_to_the_log() {
        let log = "buildkitd: flag provided but not defined: -frobnicate\n";
        assert_eq!(explain(log, &facts(&FakeHost::pod_user(2))), None);
    }
}
