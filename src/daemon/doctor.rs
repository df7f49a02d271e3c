//! `bkrun doctor`: what this machine or container allows, each mode's verdict and the change that would make it work, the versions found; text for people, JSON for tools. It never starts a daemon.

use crate::host::binfmt::{native_platform, Binfmt};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{has_flag, Settings};
use crate::daemon::facts::Facts;
use crate::daemon::fallback::{self, Fallback};
use crate::daemon::mode::{self, ModeArg, Verdict};
use crate::daemon::storage::{self, Storage};
use crate::host::{parse_cap_names, Host, IdRange, NsProbe, Privilege};

/// Output format of `bkrun doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Everything doctor reports, gathered before anything is printed.
pub struct Report {
    facts: Facts,
    verdicts: [Verdict; 3],
    auto: Option<mode::Decision>,
    /// The fallback pool, if one is set, and whether it stands in for the daemon.
    fallback: Option<Fallback>,
    versions: Vec<(&'static str, Option<PathBuf>, Option<String>)>,
    next: String,
    next_json: Value,
    env: Vec<(&'static str, Option<String>, bool)>,
    binfmt: Binfmt,
    /// The state dir's storage; Err: why it could not be judged (no state dir, the containerd worker).
    storage: Result<Storage, String>,
}

impl Report {
    pub fn gather(settings: &Settings, host: &dyn Host) -> Report {
        let facts = Facts::gather(host, &settings.buildkitd, &settings.rootlesskit, true);
        let verdicts = mode::assess(&facts);
        let auto = mode::decide(ModeArg::Auto, &facts).ok();
        let versions = versions(&[
            ("buildkitd", facts.buildkitd.clone()),
            ("rootlesskit", facts.rootlesskit.clone()),
            ("runc", host.which("runc")),
        ]);
        let fallback = fallback::judge(settings, &verdicts);
        let (next, next_json) = next_command(settings, &facts, fallback.as_ref());
        let env = ["XDG_RUNTIME_DIR", "TMPDIR"]
            .into_iter()
            .map(|k| {
                let v = host.env(k);
                let usable = v.as_deref().is_some_and(|d| host.dir_usable(Path::new(d)));
                (k, v, usable)
            })
            .collect();
        let storage = storage_of(settings, host, &facts);
        Report {
            facts,
            verdicts,
            auto,
            fallback,
            versions,
            next,
            next_json,
            env,
            binfmt: host.binfmt(),
            storage,
        }
    }

    /// 0 when some mode can work here, 1 when none can.
    pub fn exit_code(&self) -> i32 {
        if self.verdicts.iter().any(|v| v.works) {
            0
        } else {
            1
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::from("facts\n");
        self.facts_text(&mut out);
        self.ids_and_dirs_text(&mut out);
        out.push_str("versions\n");
        self.versions_text(&mut out);
        out.push_str("platforms\n");
        self.platforms_text(&mut out);
        out.push_str("storage\n");
        self.storage_text(&mut out);
        out.push_str("modes\n");
        self.modes_text(&mut out);
        out
    }

    /// The process's privileges and what the kernel lets it do.
    fn facts_text(&self, out: &mut String) {
        let f = &self.facts;
        row(
            out,
            "uid",
            format!(
                "{}{}",
                f.euid,
                f.user
                    .as_ref()
                    .map_or(" (no passwd entry)".into(), |u| format!(" ({u})"))
            ),
        );
        row(
            out,
            "user namespace",
            if f.user_namespace {
                "yes (hostUsers: false, or nested)".into()
            } else {
                "no (the initial one)".into()
            },
        );
        row(out, "seccomp", seccomp_name(f.status.seccomp).into());
        row(
            out,
            "no_new_privs",
            if f.status.no_new_privs {
                "yes (allowPrivilegeEscalation: false)".into()
            } else {
                "no".into()
            },
        );
        row(
            out,
            "capabilities",
            caps_line(f.status.cap_eff, f.status.cap_bnd),
        );
        row(
            out,
            "apparmor",
            f.apparmor.clone().unwrap_or_else(|| "off".into()),
        );
        row(out, "namespaces", probe_line(f.probe.as_ref()));
        row(out, "node sysctls", sysctl_line(f));
        row(
            out,
            "/proc masked",
            if f.masked.is_empty() {
                "nothing".into()
            } else {
                format!("{} ({} paths)", f.masked_summary(), f.masked.len())
            },
        );
    }

    /// The rest of the facts section: the id-map helpers and subordinate ids rootless modes
    /// need, and the dirs the environment names.
    fn ids_and_dirs_text(&self, out: &mut String) {
        let f = &self.facts;
        for t in &f.id_maps {
            row(
                out,
                t.name,
                match &t.path {
                    Some(p) => format!("{}, {}", p.display(), privilege_name(t.privilege)),
                    None => "not on PATH".into(),
                },
            );
        }
        row(out, "subordinate ids", subids_line(f));
        for (k, v, usable) in &self.env {
            row(
                out,
                k,
                match v {
                    Some(v) if *usable => format!("{v} (usable)"),
                    Some(v) => format!("{v} (missing or not writable: not used)"),
                    None => "unset".into(),
                },
            );
        }
    }

    fn versions_text(&self, out: &mut String) {
        for (name, path, version) in &self.versions {
            let v = match (path, version) {
                (Some(p), Some(v)) => format!("{v} ({})", p.display()),
                (Some(p), None) => format!("unknown ({} did not say)", p.display()),
                (None, _) => "not found".into(),
            };
            row(out, name, v);
        }
    }

    /// The native platform, then each registered emulator with whether a build can use it.
    fn platforms_text(&self, out: &mut String) {
        let _ = writeln!(out, "  {:<19} native", native_platform());
        match &self.binfmt {
            Binfmt::Unavailable => {
                let _ = writeln!(out, "  {:<19} unknown: binfmt_misc is not mounted here, as in most containers; the emulators the kernel has registered (on the node, with the F flag) work all the same: mount binfmt_misc at /proc/sys/fs/binfmt_misc to list them", "emulation");
            }
            Binfmt::Handlers(hs) => {
                for h in hs.iter().filter(|h| h.platform.is_some()) {
                    let p = h.platform.unwrap_or_default();
                    let _ = match h.unusable() {
                        None => writeln!(out, "  {p:<19} emulated ({}: {})", h.name, h.interpreter),
                        Some(why) => writeln!(out, "  {p:<19} not usable ({}: {why})", h.name),
                    };
                }
            }
        }
    }

    /// The state dir, its filesystem, the snapshotter buildkitd will pick, and what to change.
    fn storage_text(&self, out: &mut String) {
        match &self.storage {
            Ok(s) => {
                row(out, "state dir", s.state_dir.display().to_string());
                row(out, "filesystem", storage::fs_line(s));
                row(out, "snapshotter", format!("{} ({})", s.snapshotter, s.why));
                for w in &s.warnings {
                    row(out, "warning", w.clone());
                }
            }
            Err(why) => row(out, "state dir", format!("not judged: {why}")),
        }
    }

    /// Each mode's verdict with every blocker and its fix in the order to make them, then
    /// what auto picks (or the mode that needs the fewest changes) and the command to run next.
    fn modes_text(&self, out: &mut String) {
        for v in &self.verdicts {
            if v.works {
                let _ = writeln!(out, "  {:<19} yes: {}", v.mode.to_string(), v.reason);
                continue;
            }
            for (i, b) in v.blockers.iter().enumerate() {
                let (label, head) = if i == 0 {
                    (v.mode.to_string(), "no")
                } else {
                    (String::new(), "also")
                };
                let _ = writeln!(out, "  {label:<19} {head}: {}", b.reason);
                let _ = writeln!(out, "  {:<19} to make it work: {}", "", b.fix);
            }
            if v.blockers.len() > 1 || v.blockers.iter().any(|b| b.allow.is_some()) {
                let _ = writeln!(out, "  {:<19} needs: {}", "", v.needs());
            }
        }
        let auto = match &self.auto {
            Some(d) => format!("{} ({})", d.mode, d.why),
            None => "nothing: no mode can work here".into(),
        };
        let _ = writeln!(out, "{:<21} {auto}", "auto picks");
        if let Some(v) = self.fewest_changes() {
            let n = v.blockers.len();
            let _ = writeln!(
                out,
                "{:<21} {} ({n} change{}: {})",
                "fewest changes",
                v.mode,
                if n == 1 { "" } else { "s" },
                v.needs()
            );
        }
        if let Some(f) = &self.fallback {
            let used = if f.is_used() { "used" } else { "not used" };
            let pool = f.pool();
            let _ = writeln!(
                out,
                "{:<21} {} (from {}), {used}: {}",
                "fallback",
                pool.addrs.join(", "),
                pool.source,
                f.why()
            );
        }
        let _ = writeln!(out, "{:<21} {}", "next command", self.next);
    }

    /// When no mode works: the one that needs the fewest changes (the first in auto's order
    /// on a tie).
    fn fewest_changes(&self) -> Option<&Verdict> {
        if self.verdicts.iter().any(|v| v.works) {
            return None;
        }
        self.verdicts.iter().min_by_key(|v| v.blockers.len())
    }

    /// The native platform and the emulators binfmt_misc has, for `json`.
    fn platforms_json(&self) -> Value {
        json!({
            "native": native_platform(),
            "binfmt_misc": !matches!(self.binfmt, Binfmt::Unavailable),
            "emulated": match &self.binfmt {
                Binfmt::Unavailable => Vec::new(),
                Binfmt::Handlers(hs) => hs.iter().filter(|h| h.platform.is_some()).map(|h| json!({
                    "platform": h.platform,
                    "handler": h.name,
                    "interpreter": h.interpreter,
                    "flags": h.flags,
                    "usable": h.unusable().is_none(),
                    "why_not": h.unusable(),
                })).collect(),
            },
        })
    }

    pub fn json(&self) -> Value {
        let f = &self.facts;
        let tool = |t: &crate::daemon::facts::IdMapTool| {
            json!({
                "path": t.path,
                "privilege": privilege_name(t.privilege),
            })
        };
        let step = |s: Option<Result<(), nix::errno::Errno>>| match s {
            None => Value::Null,
            Some(Ok(())) => json!("ok"),
            Some(Err(e)) => json!(e.to_string()),
        };
        let probe = f.probe.unwrap_or(NsProbe {
            clone_userns: None,
            unshare_userns: None,
            mount: None,
            mount_proc: None,
        });
        json!({
            "facts": {
                "uid": f.euid,
                "user": f.user,
                "user_namespace": f.user_namespace,
                "seccomp": seccomp_name(f.status.seccomp),
                "no_new_privs": f.status.no_new_privs,
                "capabilities": {
                    "effective": parse_cap_names(f.status.cap_eff),
                    "bounding": parse_cap_names(f.status.cap_bnd),
                },
                "apparmor": f.apparmor,
                "namespaces": {
                    "clone_newuser": step(probe.clone_userns),
                    "unshare_newuser": step(probe.unshare_userns),
                    "mount": step(probe.mount),
                    "mount_proc": step(probe.mount_proc),
                },
                "sysctls": {
                    "max_user_namespaces": f.sysctls.max_user_namespaces,
                    "unprivileged_userns_clone": f.sysctls.unprivileged_userns_clone,
                    "apparmor_restrict_unprivileged_userns": f.sysctls.apparmor_restrict_userns,
                },
                "apparmor_restricts_userns": f.apparmor_restricts_userns(),
                "proc_masked_paths": f.masked,
                "newuidmap": tool(&f.id_maps[0]),
                "newgidmap": tool(&f.id_maps[1]),
                "subordinate_ids": f.has_subids(),
                "subordinate_ranges": {
                    "uids": ranges(&f.subids.uids),
                    "gids": ranges(&f.subids.gids),
                },
                "namespace_maps": f.ns_ids.as_ref().map(|n| json!({
                    "uids": ranges(&n.uids),
                    "gids": ranges(&n.gids),
                })),
                "env": self.env.iter().map(|(k, v, usable)| {
                    (k.to_string(), json!({"value": v, "usable": usable}))
                }).collect::<serde_json::Map<_, _>>(),
                "buildkitd": f.buildkitd,
                "rootlesskit": f.rootlesskit,
            },
            "versions": self.versions.iter().map(|(name, path, v)| {
                (name.to_string(), json!({"path": path, "version": v}))
            }).collect::<serde_json::Map<_, _>>(),
            "modes": self.verdicts.iter().map(|v| json!({
                "mode": v.mode.to_string(),
                "works": v.works,
                "reason": v.reason,
                "fix": v.fix,
                "blockers": v.blockers.iter().map(|b| json!({
                    "reason": b.reason,
                    "fix": b.fix,
                    "allow": b.allow,
                })).collect::<Vec<_>>(),
                "needs": (!v.works).then(|| v.needs()),
            })).collect::<Vec<_>>(),
            "fewest_changes": self.fewest_changes().map(|v| v.mode.to_string()),
            "platforms": self.platforms_json(),
            "storage": storage_json(&self.storage),
            "auto": self.auto.as_ref().map(|d| d.mode.to_string()),
            "fallback": self.fallback.as_ref().map(|f| json!({
                "addresses": f.pool().addrs,
                "source": f.pool().source.to_string(),
                "used": f.is_used(),
                "why": f.why(),
            })),
            "next": self.next_json,
        })
    }
}

/// One indented `key value` line of the text report, keys in a column of 19.
fn row(out: &mut String, k: &str, v: String) {
    let _ = writeln!(out, "  {k:<19} {v}");
}

/// Id ranges as `100000-165535` strings.
fn ranges(r: &[IdRange]) -> Vec<String> {
    r.iter().map(ToString::to_string).collect()
}

/// This user's subordinate ranges, and whether the user namespace maps them.
fn subids_line(f: &Facts) -> String {
    if !f.has_subids() {
        return "no range in /etc/subuid or /etc/subgid".into();
    }
    let mut s = format!(
        "uids {}; gids {}",
        ranges(&f.subids.uids).join(", "),
        ranges(&f.subids.gids).join(", ")
    );
    if let Some(u) = f.unmapped_subids() {
        let _ = write!(
            s,
            " ({}s {} are outside this user namespace's {})",
            u.kind,
            u.range,
            u.mapped_summary()
        );
    }
    s
}

fn seccomp_name(mode: u8) -> &'static str {
    match mode {
        0 => "off (Unconfined)",
        1 => "strict",
        _ => "filter (a profile such as RuntimeDefault applies)",
    }
}

fn privilege_name(p: Privilege) -> String {
    match p {
        Privilege::Missing => "missing".into(),
        Privilege::None => "no setuid bit, no file capabilities".into(),
        Privilege::Setuid => "setuid root".into(),
        Privilege::FileCaps(c) => format!("file capabilities ({})", parse_cap_names(c).join(" ")),
    }
}

fn caps_line(eff: u64, bnd: u64) -> String {
    let names = |m: u64| {
        if m == 0 {
            "none".to_string()
        } else if m.count_ones() >= 40 {
            "all".to_string()
        } else {
            parse_cap_names(m).join(" ")
        }
    };
    format!("effective: {}; bounding: {}", names(eff), names(bnd))
}

fn probe_line(p: Option<&NsProbe>) -> String {
    let Some(p) = p else {
        return "not tried".into();
    };
    let step = |s: Option<Result<(), nix::errno::Errno>>| match s {
        None => "not tried".to_string(),
        Some(Ok(())) => "ok".to_string(),
        Some(Err(e)) => format!("refused ({e})"),
    };
    format!(
        "clone(CLONE_NEWUSER) {}; unshare(CLONE_NEWUSER) {}; mount {}; fresh /proc {}",
        step(p.clone_userns),
        step(p.unshare_userns),
        step(p.mount),
        step(p.mount_proc)
    )
}

fn sysctl_line(f: &Facts) -> String {
    let mut parts = Vec::new();
    if let Some(n) = f.sysctls.max_user_namespaces {
        parts.push(format!("user.max_user_namespaces={n}"));
    }
    if let Some(b) = f.sysctls.unprivileged_userns_clone {
        parts.push(format!("kernel.unprivileged_userns_clone={}", u8::from(b)));
    }
    if let Some(b) = f.sysctls.apparmor_restrict_userns {
        let applies = if f.apparmor_restricts_userns() {
            " (applies: bkrun is unconfined; `bkrun doctor --apparmor-profile` prints the profile that lifts it for rootlesskit, buildkitd and bkrun alone)"
        } else {
            ""
        };
        parts.push(format!(
            "kernel.apparmor_restrict_unprivileged_userns={}{applies}",
            u8::from(b)
        ));
    }
    if parts.is_empty() {
        "not readable".into()
    } else {
        parts.join(", ")
    }
}

/// The storage of the state dir the next daemon would use, judged for the mode it would run in
/// (when no mode can work: rootless for a user, as the fixes aim there).
fn storage_of(settings: &Settings, host: &dyn Host, facts: &Facts) -> Result<Storage, String> {
    if settings.remote.is_some() {
        return Err("the next command uses an existing daemon, which keeps its own".into());
    }
    if matches!(settings.worker, crate::config::Worker::Containerd { .. }) {
        return Err("the containerd worker keeps its snapshots in containerd".into());
    }
    let paths = crate::daemon::plan::choose_paths(settings, host).map_err(|e| format!("{e:#}"))?;
    let rootless = match mode::decide(settings.mode, facts) {
        Ok(d) => d.mode.is_rootless(),
        Err(_) => facts.euid != 0,
    };
    let userns = rootless || facts.user_namespace;
    Ok(storage::judge(
        host,
        &paths.state_dir,
        userns,
        &settings.buildkitd_flags,
    ))
}

fn storage_json(s: &Result<Storage, String>) -> Value {
    match s {
        Ok(s) => json!({
            "state_dir": s.state_dir,
            "filesystem": s.fs_name,
            "mount": s.mount,
            "magic": s.fs.as_ref().map(|f| format!("0x{:x}", f.magic)),
            "nosuid": s.fs.as_ref().map(|f| f.nosuid),
            "nodev": s.fs.as_ref().map(|f| f.nodev),
            "snapshotter": s.snapshotter,
            "why": s.why,
            "warnings": s.warnings,
        }),
        Err(why) => json!({"error": why}),
    }
}

/// What the next `bkrun build` would do, in words and as JSON.
fn next_command(
    settings: &Settings,
    facts: &Facts,
    fallback: Option<&Fallback>,
) -> (String, Value) {
    if let Some(f) = fallback.filter(|f| f.is_used()) {
        let pool = f.pool();
        return (
            format!(
                "builds on {} (from {}): no daemon can start here",
                fallback::shown(pool),
                pool.source
            ),
            json!({"action": "fallback", "addresses": pool.addrs, "source": pool.source.to_string()}),
        );
    }
    if let Some(r) = &settings.remote {
        return (
            format!(
                "connects to {} (from {}); starts no daemon",
                r.shown(),
                r.source
            ),
            json!({"action": "connect", "address": r.shown(), "addresses": r.addrs, "source": r.source.to_string()}),
        );
    }
    let ignored = settings
        .buildkit_host_ignored
        .as_ref()
        .map_or(String::new(), |w| format!("\n{:<21} {w}", ""));
    match mode::decide(settings.mode, facts) {
        Ok(mut d) => {
            if d.mode == mode::Mode::Rootless
                && has_flag(&settings.buildkitd_flags, "--oci-worker-no-process-sandbox")
            {
                d.mode = mode::Mode::RootlessStrict;
                d.why = "BUILDKITD_FLAGS has --oci-worker-no-process-sandbox".into();
            }
            (
                format!("starts buildkitd, {} ({}){ignored}", d.mode, d.why),
                json!({"action": "start", "mode": d.mode.to_string(), "why": d.why,
                       "buildkit_host_ignored": settings.buildkit_host_ignored}),
            )
        }
        Err(e) => {
            let line = e.to_string();
            (
                format!("fails: {line}{ignored}"),
                json!({"action": "fail", "error": line}),
            )
        }
    }
}

/// Each program's version, asked in parallel (each answers in milliseconds).
fn versions(
    programs: &[(&'static str, Option<PathBuf>)],
) -> Vec<(&'static str, Option<PathBuf>, Option<String>)> {
    let handles: Vec<_> = programs
        .iter()
        .map(|(name, path)| {
            let (tx, rx) = std::sync::mpsc::channel();
            if let Some(p) = path.clone() {
                std::thread::spawn(move || {
                    let _ = tx.send(version_of(&p));
                });
            }
            (*name, path.clone(), rx)
        })
        .collect();
    // One deadline for all: doctor must answer quickly even on a loaded node, and a version
    // that is slow to come is reported as unknown rather than waited for.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    handles
        .into_iter()
        .map(|(name, path, rx)| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = rx.recv_timeout(left).ok().flatten();
            (name, path, v)
        })
        .collect()
}

/// Runs `program --version` and takes the version out of its first line.
pub fn version_of(program: &Path) -> Option<String> {
    let (exit, out, _) =
        crate::host::reaper::output(Command::new(program).arg("--version"), b"").ok()?;
    if exit.code() != 0 {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out))
}

/// The file in the state dir that remembers buildkitd's version (see `version_cached`).
pub const VERSION_CACHE: &str = "bkrun.buildkitd-version";

/// `version_of`, remembered in `cache` for this very file: its path, device, inode, size,
/// mtime and ctime, so a replaced or rebuilt binary is asked again. Written to a temporary
/// name and renamed, so a run reading it beside another never sees half a line.
pub fn version_cached(program: &Path, cache: &Path) -> Option<String> {
    let key = file_identity(program)?;
    if let Some(v) = cached_for(&key, cache) {
        return Some(v);
    }
    let v = version_of(program)?;
    let tmp = cache.with_extension(format!("tmp-{}", std::process::id()));
    if std::fs::write(&tmp, format!("{key}\t{v}\n")).is_ok()
        && std::fs::rename(&tmp, cache).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
    Some(v)
}

/// What `version_cached` would answer without running the program: the version the cache holds
/// for this very file, if it holds one. A few reads, cheap enough for the path to the daemon's
/// spawn, where a blocking thread would cost more to start (and to end at exit) than the reads.
pub fn version_from_cache(program: &Path, cache: &Path) -> Option<String> {
    cached_for(&file_identity(program)?, cache)
}

fn cached_for(key: &str, cache: &Path) -> Option<String> {
    let text = std::fs::read_to_string(cache).ok()?;
    let (k, v) = text.trim_end().split_once('\t')?;
    (k == key && !v.is_empty()).then(|| v.to_string())
}

fn file_identity(program: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(program).ok()?;
    let m = std::fs::metadata(&path).ok()?;
    Some(format!(
        "{} {} {} {}.{} {}.{} {}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        path.display()
    ))
}

/// `buildkitd github.com/moby/buildkit v0.32.2 abc`, `rootlesskit version 1.1.0`,
/// `runc version 1.1.5+ds1`: the first word that starts with a digit or v and a digit.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    line.split_whitespace()
        .find(|w| {
            let w = w.strip_prefix('v').unwrap_or(w);
            w.starts_with(|c: char| c.is_ascii_digit())
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GlobalFlags;
    use crate::host::fake::FakeHost;

    #[test]
    fn a_version_is_asked_once_per_binary_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("buildkitd");
        let asked = d.path().join("asked");
        let script = |v: &str| {
            format!(
                "#!/bin/sh\necho x >> {}\necho 'buildkitd github.com/moby/buildkit {v} abc'\n",
                asked.display()
            )
        };
        std::fs::write(&prog, script("v1.0.0")).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = d.path().join(VERSION_CACHE);
        let count = || {
            std::fs::read_to_string(&asked)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(version_cached(&prog, &cache).as_deref(), Some("v1.0.0"));
        assert_eq!(version_cached(&prog, &cache).as_deref(), Some("v1.0.0"));
        assert_eq!(count(), 1, "the second answer came from the cache");
        // A new binary in its place (another inode, size and times) is asked again.
        let new = d.path().join("new");
        std::fs::write(&new, script("v2.0.0-longer")).unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &prog).unwrap();
        assert_eq!(
            version_cached(&prog, &cache).as_deref(),
            Some("v2.0.0-longer")
        );
        assert_eq!(count(), 2);
    }

    #[test]
    fn versions_from_each_program_s_wording() {
        assert_eq!(
            parse_version("buildkitd github.com/moby/buildkit v0.32.2 abc\n").as_deref(),
            Some("v0.32.2")
        );
        assert_eq!(
            parse_version("rootlesskit version 1.1.0\n").as_deref(),
            Some("1.1.0")
        );
        assert_eq!(
            parse_version("runc version 1.1.5+ds1\ncommit: 1.1.5\n").as_deref(),
            Some("1.1.5+ds1")
        );
        assert_eq!(parse_version("nothing here"), None);
    }

    fn report(h: &FakeHost) -> Report {
        let s = Settings::load(&GlobalFlags::default(), h).unwrap();
        Report::gather(&s, h)
    }

    #[test]
    fn platforms_are_native_plus_usable_emulators() {
        use crate::host::binfmt::{parse, Binfmt};
        let arm = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n";
        let riscv = "enabled\ninterpreter /usr/bin/qemu-riscv64-static\nflags: OC\noffset 0\nmagic 7f454c460201010000000000000000000200f300\n";
        let h = FakeHost {
            binfmt: Binfmt::Handlers(vec![
                parse("qemu-aarch64", arm),
                parse("qemu-riscv64", riscv),
            ]),
            ..FakeHost::root()
        };
        let r = report(&h);
        let t = r.text();
        assert!(
            t.contains("linux/arm64         emulated (qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P)"),
            "{t}"
        );
        assert!(
            t.contains("linux/riscv64       not usable (qemu-riscv64: registered without the F"),
            "{t}"
        );
        let j = r.json();
        assert_eq!(j["platforms"]["binfmt_misc"], true);
        assert_eq!(j["platforms"]["emulated"][0]["platform"], "linux/arm64");
        assert_eq!(j["platforms"]["emulated"][0]["usable"], true);
        assert_eq!(j["platforms"]["emulated"][1]["usable"], false);
        let none = report(&FakeHost::root());
        assert!(none
            .text()
            .contains("unknown: binfmt_misc is not mounted here"));
        assert_eq!(none.json()["platforms"]["emulated"], serde_json::json!([]));
    }

    #[test]
    fn a_default_pod_reports_strict_and_exits_zero() {
        let r = report(&FakeHost::pod_user(0));
        assert_eq!(r.exit_code(), 0);
        let j = r.json();
        assert_eq!(j["auto"], "rootless-strict");
        assert_eq!(j["modes"][1]["works"], false);
        assert!(j["modes"][1]["fix"]
            .as_str()
            .unwrap()
            .contains("procMount: Unmasked"));
        assert_eq!(j["next"]["action"], "start");
        let t = r.text();
        assert!(t.contains("rootless-strict     yes"), "{t}");
        assert!(
            t.contains("auto picks            rootless-strict (/proc has masked paths)"),
            "{t}"
        );
    }

    #[test]
    fn a_refusing_pod_exits_one_with_every_fix() {
        let mut h = FakeHost::pod_user(2);
        h.probe.clone_userns = Some(Err(nix::errno::Errno::EPERM));
        let r = report(&h);
        assert_eq!(r.exit_code(), 1);
        let j = r.json();
        assert_eq!(j["auto"], Value::Null);
        assert_eq!(j["next"]["action"], "fail");
        for m in 0..3 {
            assert_eq!(j["modes"][m]["works"], false);
            assert!(j["modes"][m]["fix"].is_string());
        }
        assert!(r.text().contains("seccompProfile: {type: Unconfined}"));
    }

    #[test]
    fn storage_names_the_snapshotter_and_what_slows_or_breaks_it() {
        // uid 1000 with its state dir in the container's own overlayfs, mounted nosuid,nodev.
        let h = FakeHost {
            filesystems: vec![("/", 0x794c_7630, true, true)],
            ..FakeHost::user()
        };
        let r = report(&h);
        let t = r.text();
        assert!(
            t.contains("  state dir           /home/u/.local/share/buildkit\n  filesystem          overlayfs, nosuid, nodev\n  snapshotter         native (the state dir is on overlayfs"),
            "{t}"
        );
        assert!(
            t.contains("  warning             buildkitd will use the native snapshotter"),
            "{t}"
        );
        let j = r.json();
        assert_eq!(j["storage"]["snapshotter"], "native");
        assert_eq!(j["storage"]["magic"], "0x794c7630");
        assert_eq!(j["storage"]["nosuid"], true);
        assert_eq!(j["storage"]["warnings"].as_array().unwrap().len(), 2);
        let fine = report(&FakeHost::user()).json();
        assert_eq!(fine["storage"]["snapshotter"], "overlayfs");
        assert_eq!(fine["storage"]["warnings"], json!([]));
    }

    #[test]
    fn the_apparmor_userns_sysctl_is_shown_and_said_to_apply() {
        let mut h = FakeHost::user();
        h.apparmor = Some("unconfined".into());
        h.sysctls.apparmor_restrict_userns = Some(true);
        h.probe.mount = Some(Err(nix::errno::Errno::EPERM));
        h.probe.mount_proc = None;
        let r = report(&h);
        let t = r.text();
        assert!(
            t.contains(
                "kernel.apparmor_restrict_unprivileged_userns=1 (applies: bkrun is unconfined"
            ),
            "{t}"
        );
        assert!(
            t.contains("to make it work: load an AppArmor profile"),
            "{t}"
        );
        let j = r.json();
        assert_eq!(
            j["facts"]["sysctls"]["apparmor_restrict_unprivileged_userns"],
            true
        );
        assert_eq!(j["facts"]["apparmor_restricts_userns"], true);
        // Under bkrun's own profile (unconfined mode) it no longer applies, and is no refusal.
        h.apparmor = Some("bkrun (unconfined)".into());
        h.probe = NsProbe::ALL_OK;
        let r = report(&h);
        assert_eq!(r.json()["facts"]["apparmor_restricts_userns"], false);
        assert_eq!(r.json()["auto"], "rootless");
    }

    #[test]
    fn the_fallback_is_shown_with_whether_it_stands_in() {
        let pool = ("BKRUN_FALLBACK_ADDR", "tcp://127.0.0.1:1234");
        let h = FakeHost {
            env: vec![pool],
            ..FakeHost::restricted()
        };
        let r = report(&h);
        // Doctor judges this container: no mode works here, whatever the pool does.
        assert_eq!(r.exit_code(), 1);
        let t = r.text();
        assert!(
            t.contains("fallback              tcp://127.0.0.1:1234 (from BKRUN_FALLBACK_ADDR), used: privileged: bkrun runs as uid 1000, not root; rootless, rootless-strict: "),
            "{t}"
        );
        assert!(
            t.contains("next command          builds on the daemon at tcp://127.0.0.1:1234 (from BKRUN_FALLBACK_ADDR): no daemon can start here\n"),
            "{t}"
        );
        let j = r.json();
        assert_eq!(j["fallback"]["used"], true);
        assert_eq!(j["fallback"]["source"], "BKRUN_FALLBACK_ADDR");
        assert_eq!(j["next"]["action"], "fallback");
        // Where a mode works, the pool is named and left alone.
        let h = FakeHost {
            env: vec![pool],
            ..FakeHost::pod_user(0)
        };
        let r = report(&h);
        assert!(
            r.text().contains(
                "(from BKRUN_FALLBACK_ADDR), not used: a daemon can start here (rootless-strict)\n"
            ),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["next"]["action"], "start");
        assert_eq!(
            report(&FakeHost::pod_user(0)).json()["fallback"],
            Value::Null
        );
    }

    #[test]
    fn a_restricted_scc_gets_every_blocker_and_the_mode_with_fewest_changes() {
        let r = report(&FakeHost::restricted_scc());
        assert_eq!(r.exit_code(), 1);
        let t = r.text();
        assert!(
            t.contains("uid                 1000680000 (no passwd entry)"),
            "{t}"
        );
        assert!(
            t.contains("rootless-strict     no: no_new_privs is set"),
            "{t}"
        );
        assert!(
            t.contains("also: creating a user namespace was refused"),
            "{t}"
        );
        assert!(
            t.contains("also: /etc/subuid or /etc/subgid has no range for uid 1000680000"),
            "{t}"
        );
        assert!(
            t.contains("needs: allowPrivilegeEscalation: true, capabilities SETUID and SETGID, seccompProfile: Unconfined, runAsUser: 1000"),
            "{t}"
        );
        assert!(
            t.contains(
                "fewest changes        privileged (1 change: runAsUser: 0 with privileged: true)"
            ),
            "{t}"
        );
        let j = r.json();
        assert_eq!(j["fewest_changes"], "privileged");
        assert_eq!(j["modes"][2]["blockers"].as_array().unwrap().len(), 5);
        assert_eq!(j["modes"][1]["blockers"].as_array().unwrap().len(), 6);
        assert_eq!(j["modes"][2]["fix"], j["modes"][2]["blockers"][0]["fix"]);
        assert_eq!(
            j["modes"][2]["blockers"][0]["allow"],
            "allowPrivilegeEscalation: true"
        );
        assert_eq!(j["facts"]["subordinate_ids"], false);
    }

    #[test]
    fn subordinate_ranges_outside_the_namespace_are_shown() {
        let h = FakeHost::userns_pod_user();
        let r = report(&h);
        let t = r.text();
        assert!(
            t.contains("subordinate ids     uids 100000-165535; gids 100000-165535 (uids 100000-165535 are outside this user namespace's 65536 ids: 0-65535)"),
            "{t}"
        );
        assert_eq!(r.json()["facts"]["namespace_maps"]["uids"][0], "0-65535");
    }

    #[test]
    fn the_next_command_names_a_remote_daemon_and_its_source() {
        let h = FakeHost {
            env: vec![("HOME", "/home/u"), ("BUILDKIT_HOST", "tcp://b:1234")],
            ..FakeHost::user()
        };
        let j = report(&h).json();
        assert_eq!(j["next"]["action"], "connect");
        assert_eq!(j["next"]["source"], "BUILDKIT_HOST");
    }
}
