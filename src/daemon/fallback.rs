//! Whether the fallback pool (BKRUN_FALLBACK_ADDR, bkrun.toml's `fallback_addr`) stands in for the daemon bkrun would start: only under auto, with the OCI worker and no daemon named, and only when every mode's verdict says it cannot work here.

use super::facts::Facts;
use super::mode::{self, ModeArg, Verdict};
use crate::config::{Remote, Settings, Worker};
use crate::host::{Host, CAP_SYS_ADMIN};

/// What becomes of a configured fallback pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// No daemon can start here: the pool stands in. `why` is what each mode lacks.
    Used { pool: Remote, why: String },
    /// A daemon is started (or named) instead, and why.
    Unused { pool: Remote, why: String },
}

impl Fallback {
    pub fn pool(&self) -> &Remote {
        match self {
            Fallback::Used { pool, .. } | Fallback::Unused { pool, .. } => pool,
        }
    }

    pub fn is_used(&self) -> bool {
        matches!(self, Fallback::Used { .. })
    }

    pub fn why(&self) -> &str {
        match self {
            Fallback::Used { why, .. } | Fallback::Unused { why, .. } => why,
        }
    }

    /// The one line a run says when the pool stands in: why no daemon can start, and where
    /// the work goes (`doing`: "building on", …) and which setting named it.
    pub fn line(&self, doing: &str) -> String {
        let pool = self.pool();
        format!(
            "no daemon can start in this container ({}): {doing} {} ({})",
            self.why(),
            shown(pool),
            pool.source
        )
    }
}

/// The pool in words: `the daemon at tcp://…` or `the pool at tcp://a…, tcp://b…`.
pub fn shown(pool: &Remote) -> String {
    if pool.is_pool() {
        format!("the pool at {}", pool.addrs.join(", "))
    } else {
        format!("the daemon at {}", pool.addrs[0])
    }
}

/// Why the pool cannot stand in whatever this host allows: a daemon was named, a mode was
/// asked for (the user chose where the build runs, so its failure is theirs to see), or the
/// containerd worker, which builds with this node's containerd, was.
fn ruled_out(settings: &Settings) -> Option<String> {
    if let Some(r) = &settings.remote {
        return Some(format!("{} names the daemon to use", r.source));
    }
    let asked = match settings.mode {
        ModeArg::Auto => None,
        ModeArg::Privileged => Some("privileged"),
        ModeArg::Rootless => Some("rootless"),
        ModeArg::RootlessStrict => Some("rootless-strict"),
    };
    if let Some(m) = asked {
        return Some(format!(
            "mode {m} is asked for (--mode, BKRUN_MODE or mode in bkrun.toml), and an asked-for mode never falls back"
        ));
    }
    if matches!(settings.worker, Worker::Containerd { .. }) {
        return Some("the containerd worker builds with this node's containerd".into());
    }
    None
}

/// The fallback's use, from verdicts already made (`bkrun doctor`'s); None when none is set.
pub fn judge(settings: &Settings, verdicts: &[Verdict; 3]) -> Option<Fallback> {
    let pool = settings.fallback.clone()?;
    if let Some(why) = ruled_out(settings) {
        return Some(Fallback::Unused { pool, why });
    }
    if let Some(v) = verdicts.iter().find(|v| v.works) {
        return Some(Fallback::Unused {
            pool,
            why: format!("a daemon can start here ({})", v.mode),
        });
    }
    Some(Fallback::Used {
        pool,
        why: blockers(verdicts),
    })
}

/// The same, for a run or `bkrun config`: the facts are gathered only when the pool could stand
/// in, so a run without a fallback (or with a daemon named) probes nothing more.
pub fn judge_here(settings: &Settings, host: &dyn Host) -> Option<Fallback> {
    let pool = settings.fallback.clone()?;
    if let Some(why) = ruled_out(settings) {
        return Some(Fallback::Unused { pool, why });
    }
    // As Plan::new: root with CAP_SYS_ADMIN runs privileged, and needs no namespace probe.
    let probe = !(host.euid() == 0 && host.process_status().has_eff(CAP_SYS_ADMIN));
    let facts = Facts::gather(host, &settings.buildkitd, &settings.rootlesskit, probe);
    judge(settings, &mode::assess(&facts))
}

/// Every mode's reason in one line, modes that fail alike named together:
/// `privileged: …; rootless, rootless-strict: …`.
fn blockers(verdicts: &[Verdict; 3]) -> String {
    let mut groups: Vec<(Vec<String>, &str)> = Vec::new();
    for v in verdicts {
        match groups.iter_mut().find(|(_, r)| *r == v.reason) {
            Some((modes, _)) => modes.push(v.mode.to_string()),
            None => groups.push((vec![v.mode.to_string()], &v.reason)),
        }
    }
    groups
        .iter()
        .map(|(modes, reason)| format!("{}: {reason}", modes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddrSource, GlobalFlags, ModeArg};
    use crate::host::fake::FakeHost;

    fn settings(h: &FakeHost, env: Vec<(&'static str, &'static str)>) -> Settings {
        let h = FakeHost { env, ..h.clone() };
        Settings::load(&GlobalFlags::default(), &h).unwrap()
    }

    const POOL: (&str, &str) = ("BKRUN_FALLBACK_ADDR", "tcp://b-{0..1}.b:1234");

    #[test]
    fn the_pool_stands_in_only_when_no_mode_can_work() {
        let h = FakeHost::restricted();
        let s = settings(&h, vec![POOL]);
        let f = judge_here(&s, &h).unwrap();
        assert!(f.is_used(), "{f:?}");
        assert_eq!(f.pool().source, AddrSource::FallbackEnv);
        assert_eq!(f.pool().addrs, ["tcp://b-0.b:1234", "tcp://b-1.b:1234"]);
        // Each mode's reason, the rootless ones (which fail alike) named together.
        assert!(
            f.why().starts_with(
                "privileged: bkrun runs as uid 1000, not root; rootless, rootless-strict: "
            ),
            "{}",
            f.why()
        );
        let line = f.line("building on");
        assert!(
            line.starts_with(&format!(
                "no daemon can start in this container ({}): ",
                f.why()
            )),
            "{line}"
        );
        assert!(
            line.ends_with("): building on the pool at tcp://b-0.b:1234, tcp://b-1.b:1234 (BKRUN_FALLBACK_ADDR)"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
        // Where a mode works, the daemon is started and the pool named as unused.
        for h in [FakeHost::pod_user(0), FakeHost::root(), FakeHost::user()] {
            let f = judge_here(&settings(&h, vec![POOL]), &h).unwrap();
            assert!(!f.is_used(), "{f:?}");
            assert!(f.why().starts_with("a daemon can start here ("), "{f:?}");
        }
        // No fallback set: nothing to judge.
        assert_eq!(judge_here(&settings(&h, vec![]), &h), None);
    }

    #[test]
    fn an_asked_for_mode_a_named_daemon_or_containerd_never_falls_back() {
        let h = FakeHost::restricted();
        let mut s = settings(&h, vec![POOL]);
        for (mode, name) in [
            (ModeArg::Privileged, "privileged"),
            (ModeArg::Rootless, "rootless"),
            (ModeArg::RootlessStrict, "rootless-strict"),
        ] {
            s.mode = mode;
            let f = judge_here(&s, &h).unwrap();
            assert!(!f.is_used(), "{f:?}");
            assert!(
                f.why().starts_with(&format!("mode {name} is asked for")),
                "{f:?}"
            );
        }
        s.mode = ModeArg::Auto;
        s.worker = Worker::Containerd {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "buildkit".into(),
            shared_dir: None,
        };
        assert!(!judge_here(&s, &h).unwrap().is_used());
        let s = settings(&h, vec![POOL, ("BKRUN_ADDR", "tcp://x:1")]);
        let f = judge_here(&s, &h).unwrap();
        assert_eq!(
            f,
            Fallback::Unused {
                pool: s.fallback.clone().unwrap(),
                why: "BKRUN_ADDR names the daemon to use".into()
            }
        );
    }

    #[test]
    fn the_fallback_comes_from_the_environment_then_the_file_in_addrs_grammar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bkrun.toml");
        std::fs::write(
            &path,
            "fallback_addr = [\"tcp://p-{0..2}:1\", \"tcp://q:1\"]\n",
        )
        .unwrap();
        let load = |env| {
            let h = FakeHost {
                env,
                ..FakeHost::user()
            };
            let args = GlobalFlags {
                config: Some(path.clone()),
                ..Default::default()
            };
            Settings::load(&args, &h).map(|s| s.fallback)
        };
        let f = load(vec![]).unwrap().unwrap();
        assert_eq!(f.addrs.len(), 4);
        assert_eq!(f.source.to_string(), "fallback_addr in bkrun.toml");
        let f = load(vec![("BKRUN_FALLBACK_ADDR", "tcp://e:1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.addrs[0].as_str(), f.source),
            ("tcp://e:1", AddrSource::FallbackEnv)
        );
        // An emptied variable is unset; a list that does not parse fails every run, naming it.
        assert_eq!(
            load(vec![("BKRUN_FALLBACK_ADDR", "")])
                .unwrap()
                .unwrap()
                .addrs
                .len(),
            4
        );
        let e = load(vec![("BKRUN_FALLBACK_ADDR", "tcp://b-{0,1}:1")]).unwrap_err();
        assert!(e.to_string().contains("BKRUN_FALLBACK_ADDR"), "{e}");
    }
}
