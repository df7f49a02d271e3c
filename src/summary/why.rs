//! Why a build died, in one line naming the number that proves it and the field to change: the OOM killer (the memory cgroup's oom_kill rising during the build), a full disk (ENOSPC, with the state dir's filesystem at the failure), and `--build-timeout`.

use std::path::Path;
use std::time::Duration;

use crate::cachemount::human;
use crate::host::cgroup::Memory;
use crate::host::FsStat;
use crate::progress::{Step, StepState};

/// What the kernel's ENOSPC reads as in BuildKit's errors (Go's syscall.ENOSPC text).
const ENOSPC: &str = "no space left on device";

/// How a killed step's error reads: runc's SIGKILL (`exit code: 137`), or BuildKit's own
/// ENOMEM, which it sets on cgroup v2 when the step's cgroup saw an OOM kill.
const KILLED: &[&str] = &["exit code: 137", "signal: killed", "cannot allocate memory"];

/// The OOM killer during the build, proved by the memory cgroup's counters between `before`
/// and `after`: its oom_kill rose (v2 counts a step's kills here), or, as cgroup v1 counts
/// those only in the step's own cgroup, the limit was hit, the peak reached it and the failed
/// step was killed. Names the step, the limit, the peak and the field to raise.
pub fn oom(before: Option<&Memory>, after: Option<&Memory>, steps: &[Step]) -> Option<String> {
    let (before, after) = (before?, after?);
    let failed = steps.iter().find(|s| s.state == StepState::Failed);
    let rose = |f: fn(&Memory) -> Option<u64>| {
        let (a, b) = (f(before).unwrap_or(0), f(after)?);
        (b > a).then_some((a, b))
    };
    let [limit_file, peak_file, kills_file, hits_file] = after.files();
    let evidence = match (rose(|m| m.oom_kills), rose(|m| m.limit_hits)) {
        (Some((a, b)), _) => format!("{kills_file} oom_kill went from {a} to {b}"),
        (None, Some((a, b)))
            if at_limit(after)
                && failed.is_some_and(|s| KILLED.iter().any(|k| s.error.contains(k))) =>
        {
            format!("{hits_file} went from {a} to {b} and {peak_file} reached {limit_file}")
        }
        _ => return None,
    };
    let who = match failed {
        Some(s) => format!("step {}", step_name(s)),
        None => "a process of the build".into(),
    };
    let peak = after
        .peak
        .map(|p| format!("the build peaked at {}", human(p)))
        .unwrap_or_else(|| "its peak is not recorded".into());
    let detail = format!("{evidence}, in {}", after.dir.display());
    Some(match after.limit {
        Some(limit) => format!(
            "{who} was killed by the OOM killer: the container's limit is {} and {peak}; raise resources.limits.memory ({detail})",
            human(limit)
        ),
        None => format!(
            "{who} was killed by the OOM killer: the container has no memory limit, so the node ran out of memory, and {peak}; set resources.requests.memory to what the build needs so it is scheduled where that is free ({detail})"
        ),
    })
}

/// The peak is within a page or two of the limit: the usage reached it.
fn at_limit(m: &Memory) -> bool {
    match (m.peak, m.limit) {
        (Some(p), Some(l)) => p.saturating_add(64 << 10) >= l,
        _ => false,
    }
}

/// A build that failed for want of disk space: how full the state dir's filesystem is now, and
/// how to give it more.
pub fn disk_full(error: &str, state_dir: Option<&Path>, fs: Option<&FsStat>) -> Option<String> {
    if !error.to_ascii_lowercase().contains(ENOSPC) {
        return None;
    }
    let place = match (state_dir, fs) {
        (Some(dir), Some(fs)) => format!(
            "the state dir {} is on a filesystem with {} free of {}",
            dir.display(),
            human(fs.avail),
            human(fs.size)
        ),
        (Some(dir), None) => format!("the state dir {} is full", dir.display()),
        (None, _) => "the daemon's state dir is full".into(),
    };
    Some(format!(
        "the build ran out of disk space ({ENOSPC}): {place}; give the state dir a larger volume (in a pod: a bigger emptyDir sizeLimit or volume, and resources.limits.ephemeral-storage) or free its cache with `bkrun prune`"
    ))
}

/// A build cancelled by `--build-timeout`: how long it had and which steps were still running.
pub fn timed_out(limit: Duration, steps: &[Step]) -> String {
    let running: Vec<String> = steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Running | StepState::Canceled))
        .map(step_name)
        .collect();
    let running = match running.is_empty() {
        true => String::new(),
        false => format!("; still running: {}", running.join(", ")),
    };
    format!(
        "the build ran longer than --build-timeout {} and was cancelled{running}; raise --build-timeout (or build_timeout in bkrun.toml) or make those steps faster",
        crate::gocompat::durations::go_duration(i64::try_from(limit.as_nanos()).unwrap_or(i64::MAX))
    )
}

/// `#7 [2/3] RUN make`, or the name alone where the plain view gave it no number.
fn step_name(s: &Step) -> String {
    match s.number {
        Some(n) => format!("#{n} {}", s.name),
        None => s.name.clone(),
    }
}

/// The warning said before the daemon starts when the state dir's filesystem has less free
/// space than `min` (0: never).
pub fn low_space(state_dir: &Path, fs: &FsStat, min: u64) -> Option<String> {
    (min > 0 && fs.avail < min).then(|| {
        format!(
            "the state dir {} has only {} free (of {}), less than --min-free-space {}: the build may fail with \"{ENOSPC}\"; free space (`bkrun prune`), give it a larger volume (in a pod: the emptyDir's sizeLimit), or lower --min-free-space (min_free_space in bkrun.toml)",
            state_dir.display(),
            human(fs.avail),
            human(fs.size),
            human(min)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroup::Version;

    fn mem(version: Version, limit: Option<u64>, peak: u64, kills: u64) -> Memory {
        Memory {
            version,
            dir: "/sys/fs/cgroup/memory".into(),
            limit,
            peak: Some(peak),
            oom_kills: Some(kills),
            limit_hits: Some(0),
        }
    }

    fn failed(number: Option<usize>, name: &str) -> Step {
        Step {
            digest: "sha256:x".into(),
            number,
            name: name.into(),
            seconds: 3.0,
            state: StepState::Failed,
            error: "process \"/bin/sh -c x\" did not complete successfully: exit code: 137".into(),
            log: vec![],
        }
    }

    #[test]
    fn an_oom_kill_names_the_step_the_limit_the_peak_and_the_field() {
        let gib2 = 2 << 30;
        let steps = [failed(Some(7), "[2/3] RUN make")];
        let m = oom(
            Some(&mem(Version::V1, Some(gib2), 1 << 20, 0)),
            Some(&mem(Version::V1, Some(gib2), gib2, 1)),
            &steps,
        )
        .unwrap();
        assert!(
            m.starts_with("step #7 [2/3] RUN make was killed by the OOM killer: the container's limit is 2.0 GiB and the build peaked at 2.0 GiB; raise resources.limits.memory ("),
            "{m}"
        );
        assert!(
            m.contains("memory.oom_control oom_kill went from 0 to 1"),
            "{m}"
        );
        let v2 = oom(
            Some(&mem(Version::V2, None, 0, 3)),
            Some(&mem(Version::V2, None, 5 << 30, 4)),
            &[],
        )
        .unwrap();
        assert!(v2.starts_with("a process of the build was killed by the OOM killer: the container has no memory limit"), "{v2}");
        assert!(
            v2.contains("(memory.events oom_kill went from 3 to 4, in"),
            "{v2}"
        );
    }

    #[test]
    fn cgroup_v1_without_oom_kill_here_is_proved_by_the_limit_hit_and_the_kill() {
        // v1 counts the kill in the step's own cgroup, gone by now; failcnt is counted here.
        let limit = 256 << 20;
        let before = mem(Version::V1, Some(limit), 60 << 20, 0);
        let mut after = mem(Version::V1, Some(limit), limit, 0);
        after.limit_hits = Some(87);
        let steps = [failed(Some(5), "[3/3] RUN dd")];
        let m = oom(Some(&before), Some(&after), &steps).unwrap();
        assert!(m.starts_with("step #5 [3/3] RUN dd was killed by the OOM killer: the container's limit is 256.0 MiB and the build peaked at 256.0 MiB; raise resources.limits.memory (memory.failcnt went from 0 to 87 and memory.max_usage_in_bytes reached memory.limit_in_bytes, in"), "{m}");
        // A step that failed on its own while the page cache pressed on the limit: no claim.
        let mut own = failed(Some(5), "[3/3] RUN false");
        own.error = "exit code: 1".into();
        assert_eq!(oom(Some(&before), Some(&after), &[own]), None);
    }

    #[test]
    fn no_new_oom_kill_no_claim() {
        let m = mem(Version::V2, Some(1 << 30), 1 << 29, 2);
        assert_eq!(oom(Some(&m), Some(&m), &[failed(None, "x")]), None);
        assert_eq!(oom(None, Some(&m), &[]), None);
    }

    #[test]
    fn a_full_disk_names_the_state_dirs_filesystem() {
        let fs = FsStat {
            path: "/var/lib/buildkit".into(),
            magic: 0x0102_1994,
            nosuid: false,
            nodev: false,
            avail: 0,
            size: 64 << 20,
        };
        let e = "failed to copy: write /var/lib/buildkit/x: no space left on device";
        let m = disk_full(e, Some(Path::new("/var/lib/buildkit")), Some(&fs)).unwrap();
        assert!(m.starts_with("the build ran out of disk space (no space left on device): the state dir /var/lib/buildkit is on a filesystem with 0 B free of 64.0 MiB; give the state dir a larger volume"), "{m}");
        assert_eq!(disk_full("exit code: 1", None, None), None);
        assert_eq!(low_space(Path::new("/s"), &fs, 0), None);
        let w = low_space(Path::new("/s"), &fs, 1 << 30).unwrap();
        assert!(w.starts_with("the state dir /s has only 0 B free (of 64.0 MiB), less than --min-free-space 1.0 GiB"), "{w}");
    }

    #[test]
    fn a_timeout_names_the_steps_still_running() {
        let mut s = failed(Some(3), "[2/2] RUN sleep 30");
        s.state = StepState::Canceled;
        let m = timed_out(Duration::from_secs(90), &[s]);
        assert_eq!(m, "the build ran longer than --build-timeout 1m30s and was cancelled; still running: #3 [2/2] RUN sleep 30; raise --build-timeout (or build_timeout in bkrun.toml) or make those steps faster");
    }
}
