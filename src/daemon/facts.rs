//! What decides whether each daemon mode can work here, read once through the host interface.

use std::path::PathBuf;

use crate::host::{Host, IdRange, IdSets, NsProbe, Privilege, ProcStatus, Sysctls, CAP_SYS_ADMIN};

/// One of newuidmap/newgidmap: where it is and how it gets privilege.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapTool {
    pub name: &'static str,
    pub path: Option<PathBuf>,
    pub privilege: Privilege,
    /// The capability it needs (CAP_SETUID or CAP_SETGID).
    pub cap: u32,
}

/// The facts of this machine or container that mode choice and `bkrun doctor` use.
#[derive(Debug, Clone)]
pub struct Facts {
    pub euid: u32,
    pub user: Option<String>,
    /// Running in a user namespace (root there is not root on the node: `hostUsers: false`).
    pub user_namespace: bool,
    pub status: ProcStatus,
    /// None when nothing needed it (root with CAP_SYS_ADMIN choosing privileged mode).
    pub probe: Option<NsProbe>,
    pub sysctls: Sysctls,
    pub apparmor: Option<String>,
    pub masked: Vec<String>,
    pub buildkitd: Option<PathBuf>,
    pub buildkitd_name: String,
    pub rootlesskit: Option<PathBuf>,
    pub rootlesskit_name: String,
    pub id_maps: [IdMapTool; 2],
    /// This user's subordinate ids (/etc/subuid, /etc/subgid).
    pub subids: IdSets,
    /// The ids this user namespace maps; None when unreadable.
    pub ns_ids: Option<IdSets>,
    /// Only what privileged mode's verdict reads was gathered (`privileged_root`); `whole`
    /// reads the rest where a failure is explained.
    pub partial: bool,
}

/// A subordinate range newuidmap or newgidmap cannot map, because the user namespace bkrun
/// runs in (a `hostUsers: false` pod's) does not map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// "uid" or "gid".
    pub kind: &'static str,
    pub range: IdRange,
    /// What the namespace maps.
    pub mapped: Vec<IdRange>,
}

impl Unmapped {
    /// The file the range comes from.
    pub fn file(&self) -> &'static str {
        if self.kind == "uid" {
            "/etc/subuid"
        } else {
            "/etc/subgid"
        }
    }

    /// `/proc/self/uid_map` or `gid_map`.
    pub fn map_file(&self) -> &'static str {
        if self.kind == "uid" {
            "/proc/self/uid_map"
        } else {
            "/proc/self/gid_map"
        }
    }

    /// What the namespace maps, in words: `0-65535` and how many.
    pub fn mapped_summary(&self) -> String {
        let total: u64 = self.mapped.iter().map(|r| r.count).sum();
        let list: Vec<String> = self.mapped.iter().map(ToString::to_string).collect();
        format!("{total} ids: {}", list.join(", "))
    }
}

impl Facts {
    /// Reads the facts. `probe`: also try namespaces in a child (a few milliseconds; skipped
    /// when privileged mode is the answer anyway).
    pub fn gather(host: &dyn Host, buildkitd: &str, rootlesskit: &str, probe: bool) -> Facts {
        let found = (buildkitd, host.which(buildkitd));
        Facts::gather_from(host, host.process_status(), found, rootlesskit, probe)
    }

    /// `gather`, with what the caller has read already: the process's `status`, and
    /// `buildkitd`'s name with where PATH has it (each read once: a PATH search is a stat per
    /// entry).
    pub fn gather_from(
        host: &dyn Host,
        status: ProcStatus,
        buildkitd: (&str, Option<PathBuf>),
        rootlesskit: &str,
        probe: bool,
    ) -> Facts {
        let tool = |name: &'static str, cap: u32| {
            let path = host.which(name);
            let privilege = path
                .as_deref()
                .map_or(Privilege::Missing, |p| host.privilege(p));
            IdMapTool {
                name,
                path,
                privilege,
                cap,
            }
        };
        Facts {
            euid: host.euid(),
            user: host.user_name(),
            user_namespace: host.in_user_namespace(),
            status,
            probe: probe.then(|| host.namespace_probe()),
            sysctls: host.userns_sysctls(),
            apparmor: host.apparmor_profile(),
            masked: host.proc_masked_paths(),
            buildkitd: buildkitd.1,
            buildkitd_name: buildkitd.0.to_string(),
            rootlesskit: host.which(rootlesskit),
            rootlesskit_name: rootlesskit.to_string(),
            id_maps: [
                tool("newuidmap", crate::host::CAP_SETUID),
                tool("newgidmap", crate::host::CAP_SETGID),
            ],
            subids: host.subid_ranges(),
            ns_ids: host.namespace_ids(),
            partial: false,
        }
    }

    /// For root with CAP_SYS_ADMIN (its `status`) asking for auto or privileged, where
    /// privileged mode is the answer: only what its verdict reads. The rest (sysctls, AppArmor,
    /// masked paths, the id-map tools, subordinate ids) took about 0.4 ms of every start.
    /// `buildkitd` is where the caller found it.
    pub fn privileged_root(
        host: &dyn Host,
        status: ProcStatus,
        buildkitd: (&str, PathBuf),
        rootlesskit: &str,
    ) -> Facts {
        let tool = |name: &'static str, cap: u32| IdMapTool {
            name,
            path: None,
            privilege: Privilege::Missing,
            cap,
        };
        Facts {
            euid: 0,
            user: None,
            user_namespace: host.in_user_namespace(),
            status,
            probe: None,
            sysctls: Sysctls::default(),
            apparmor: None,
            masked: Vec::new(),
            buildkitd: Some(buildkitd.1),
            buildkitd_name: buildkitd.0.to_string(),
            rootlesskit: None,
            rootlesskit_name: rootlesskit.to_string(),
            id_maps: [
                tool("newuidmap", crate::host::CAP_SETUID),
                tool("newgidmap", crate::host::CAP_SETGID),
            ],
            subids: IdSets::default(),
            ns_ids: None,
            partial: true,
        }
    }

    /// These facts with nothing left out: read again when only privileged mode's were.
    pub fn whole(&self, host: &dyn Host) -> std::borrow::Cow<'_, Facts> {
        if self.partial {
            std::borrow::Cow::Owned(Facts::gather(
                host,
                &self.buildkitd_name,
                &self.rootlesskit_name,
                false,
            ))
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }

    /// These facts with a namespace probe that has not run yet taken as having worked: what a
    /// rootless mode asked for is judged on until its probe answers (`Plan::confirm`).
    pub fn assuming_namespaces(&self) -> std::borrow::Cow<'_, Facts> {
        if self.probe.is_some() {
            return std::borrow::Cow::Borrowed(self);
        }
        std::borrow::Cow::Owned(Facts {
            probe: Some(NsProbe::ALL_OK),
            ..self.clone()
        })
    }

    /// /etc/subuid and /etc/subgid both give this user a range.
    pub fn has_subids(&self) -> bool {
        !self.subids.uids.is_empty() && !self.subids.gids.is_empty()
    }

    /// The first subordinate range (uids first) this user namespace does not map: newuidmap
    /// then fails with `write to uid_map failed`, whatever its privilege.
    pub fn unmapped_subids(&self) -> Option<Unmapped> {
        let ns = self.ns_ids.as_ref()?;
        let kinds = [
            ("uid", &self.subids.uids, &ns.uids),
            ("gid", &self.subids.gids, &ns.gids),
        ];
        kinds.into_iter().find_map(|(kind, ranges, mapped)| {
            let range = ranges.iter().find(|r| !r.covered_by(mapped))?;
            Some(Unmapped {
                kind,
                range: *range,
                mapped: mapped.clone(),
            })
        })
    }

    /// Root with CAP_SYS_ADMIN: privileged mode works and nothing else needs checking.
    pub fn is_privileged_root(&self) -> bool {
        self.euid == 0 && self.status.has_eff(CAP_SYS_ADMIN)
    }

    /// An AppArmor profile that enforces (not `unconfined`, not complain mode).
    pub fn apparmor_enforcing(&self) -> bool {
        self.apparmor.as_deref().is_some_and(|p| {
            // A profile in unconfined mode (Ubuntu's for rootlesskit, or bkrun's own from
            // `doctor --apparmor-profile`) names a program but allows everything.
            p != "unconfined" && !p.contains("(complain)") && !p.ends_with("(unconfined)")
        })
    }

    /// Ubuntu's kernel.apparmor_restrict_unprivileged_userns applies to this process: it is on,
    /// bkrun lacks CAP_SYS_ADMIN, and no AppArmor profile confines bkrun (the restriction
    /// falls on unconfined programs; a profile decides for itself with its `userns` rule).
    pub fn apparmor_restricts_userns(&self) -> bool {
        self.sysctls.apparmor_restrict_userns == Some(true)
            && !self.status.has_eff(CAP_SYS_ADMIN)
            && self.apparmor.as_deref().is_none_or(|p| p == "unconfined")
    }

    /// The restriction may fall on the programs bkrun starts even when bkrun itself passes: it
    /// is on, bkrun lacks CAP_SYS_ADMIN, and bkrun runs on the host (unconfined, or under a
    /// profile in unconfined mode such as its own), so rootlesskit is restricted unless a
    /// profile of its own allows `userns`.
    pub fn userns_restriction_around(&self) -> bool {
        self.sysctls.apparmor_restrict_userns == Some(true)
            && !self.status.has_eff(CAP_SYS_ADMIN)
            && self
                .apparmor
                .as_deref()
                .is_none_or(|p| p == "unconfined" || p.ends_with("(unconfined)"))
    }

    /// What is masked in /proc, shortened for one line.
    pub fn masked_summary(&self) -> String {
        let mut s = self
            .masked
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.masked.len() > 3 {
            s.push_str(&format!(" and {} more", self.masked.len() - 3));
        }
        s
    }
}
