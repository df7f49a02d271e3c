//! The Markdown: table rows comparing two medians, the table, and BENCHMARKS.md around it (machine, versions, how it is measured).

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::stats::{Series, Unit};
use crate::BKRUN;

/// One line of the table, its cells already formatted.
pub struct Row {
    pub measure: String,
    pub bkrun: String,
    pub other_name: String,
    pub other: String,
    pub ratio: String,
    pub target: String,
    pub met: String,
}

/// A target's label and its test on the ratio.
pub type Target = (&'static str, fn(f64) -> bool);

/// A row comparing two medians by ratio (bkrun ÷ other), with an optional ratio target.
pub fn ratio_row(
    measure: impl Into<String>,
    ours: &Series,
    other_name: &str,
    theirs: &Series,
    unit: Unit,
    target: Option<Target>,
) -> Row {
    let (a, b) = (ours.median(), theirs.median());
    let r = a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
    let (target, met) = match target {
        Some((t, ok)) => (
            t.to_string(),
            match r {
                Some(r) if ok(r) => "met".to_string(),
                Some(_) => "**not met**".to_string(),
                None => "n/a".to_string(),
            },
        ),
        None => (String::new(), String::new()),
    };
    Row {
        measure: measure.into(),
        bkrun: ours.cell(&unit),
        other_name: other_name.into(),
        other: theirs.cell(&unit),
        ratio: r.map(|r| format!("{r:.2}×")).unwrap_or("n/a".into()),
        target,
        met,
    }
}

pub fn render(rows: &[Row]) -> String {
    let mut s = String::from(
        "| measure (median) | bkrun | compared with | its value | bkrun ÷ it | target | |\n|---|---:|---|---:|---:|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.measure, r.bkrun, r.other_name, r.other, r.ratio, r.target, r.met
        );
    }
    s
}

pub fn first_line(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn document(table: &str, rounds: usize, big_rounds: usize, took: Duration) -> Result<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown");
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / (1 << 20) as f64)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut s = String::new();
    writeln!(s, "# Benchmarks\n")?;
    writeln!(
        s,
        "Written by `cargo bench --bench compare` (benches/compare/; needs root and scripts/setup). \
         Each case runs bkrun and what it is compared with alternately, round by round; the table shows medians.\n"
    )?;
    writeln!(
        s,
        "- machine: {nproc} CPUs ({cpu}), {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )?;
    writeln!(
        s,
        "- versions: {}; {}; {}",
        first_line(BKRUN, "--version"),
        first_line("buildkitd", "--version"),
        first_line("buildctl", "--version")
    )?;
    let dirty = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "status", "--porcelain"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(
        s,
        "- source: commit {commit}{}",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    )?;
    writeln!(
        s,
        "- rounds: {rounds} ({big_rounds} for the 1 GiB cases); the whole run took {:.0} s\n",
        took.as_secs_f64()
    )?;
    s.push_str(table);
    s.push_str(
        "\nHow it is measured:\n\n\
         - **anchor**: buildctl-daemonless.sh's algorithm, re-implemented in the bench (not the script): \
         spawn buildkitd, poll `buildctl debug workers` sleeping 100 ms + 20 ms per failed try, run \
         `buildctl build`, SIGTERM the daemon and return without waiting. Its wall time ends at that \
         kill; the bench then waits for the daemon to exit (it holds the state dir's lock) and reports \
         that as lingering. It spawns no `sleep`/`awk` processes as the shell script does, so it is a \
         little faster than the real script.\n\
         - All state dirs and export destinations are on a tmpfs; the contexts are on disk (in the page cache). \
         The cached, ready and export cases share one warm state dir; cold builds get a fresh one per run. \
         Every program runs with a CI step's environment, not cargo's: no RUST_BACKTRACE, and no \
         LD_LIBRARY_PATH (`cargo bench` points it at the target dir and the toolchain, where the \
         dynamic loader would look for bkrun's libraries first).\n\
         - bkrun's spawn → ready and teardown come from its `--debug` lines; buildkitd's own READY=1 from a \
         buildkitd the bench spawns with the same flags and a NOTIFY_SOCKET it binds. They are separate \
         daemon starts, whose spread (shown) is far wider than 5 ms; bkrun waits for the same READY=1 \
         datagram, so the difference of the two medians is mostly that spread.\n\
         - Transfer and copy rates are parsed from `--progress=plain` (`#N transferring context: 1.07GB 2.3s done`, \
         `#N copying files …`), whose durations have 0.1 s resolution.\n\
         - A build that fails, or has not finished after 30 s (it is then killed), is counted \
         (\"k of n failed\", \"k of n hung\") and left out of the medians: buildctl's local export of many \
         files can deadlock (moby/buildkit#2950).\n\
         - Client RSS and CPU time come from wait4's rusage of the client process alone, against one \
         `bkrun daemon`; the context's mtimes are touched before every run so it is transferred again.\n\
         - The headline ratio's stability: a 95% bootstrap interval of the ratio of medians (2,000 \
         resamples of both series), and the ratio of each half of the rounds taken alone, i.e. two \
         shorter runs side by side.\n\
         - buildkitd's floor, per mode: a bare buildkitd started with the argv `bkrun config` prints for \
         that mode (rootlesskit and its flags included; bkrun's own `__nsinit` init, or in rootless mode \
         the PID namespace rootlesskit makes in its place, taken out), timed from \
         spawn to its READY=1, then the same cached build on it with `bkrun --addr`, then SIGTERM → exit. \
         Every fourth bare daemon gets its build 300 ms after READY=1 (a warm daemon: the floor's build), \
         the rest at once (a just-started one, as a supervisor builds); the two show what a just-started \
         daemon costs the first build. Rootless modes run as the unprivileged user scripts/setup creates. \
         bkrun's overhead is its daemonless median minus the sum of the floor's three medians, with a 95% \
         bootstrap interval (each series resampled on its own).\n\
         - bkrun's own segments: the floor case's daemonless runs set BKRUN_TIMELINE=1, so bkrun \
         prints its CLOCK_MONOTONIC marks at exit; with the bench's own stamps at bkrun's exec \
         (read when the spawn returns, past the execve's point of no return, so the bench's fork \
         of itself is not counted as bkrun's) and at the exit it sees, exec → daemon spawn, the \
         init's start → the daemon's exec (privileged: the namespaces' PID 1, cloned by bkrun, \
         from its start to its exec of buildkitd; rootless-strict: the watchdog init, cloned by \
         bkrun, from its start to rootlesskit's exec, its own exec of bkrun coming after; \
         rootless: none, rootlesskit making the PID namespace), READY=1 → Solve sent, build \
         result → SIGTERM and daemon reaped → exit are bkrun's alone, timed inside each \
         run (their sum per run, then its median). Not in the sum: daemon spawn → the init's start \
         (the clone, where a bare supervisor forks), shown in the timeline after the table, \
         which gives every span's median.\n\
         - The monorepo: 20 packages of 100 sources each, four directories deep, beside a node_modules \
         of 49 modules × 100 files each (100,000 files in all); its .dockerignore excludes \
         `**/node_modules`. Only the kept sources are touched between runs.\n\
         - **pool**: three `bkrun daemon`s on fresh state dirs (plaintext loopback listeners), six small \
         projects built four times each in turn, one build at a time, through one `--addr` list. Sticky: \
         bkrun's own route key (the project's context); random: a seeded random `--route-key` per build, \
         the same path through bkrun with another daemon choice. Each pass starts on cold daemons. A step \
         counts as a hit when plain progress prints `#N CACHED` for it; the slow step is a `RUN` of 1 s \
         after the project's files are copied in.\n\
         - **the CI's second run**: a generated C project (translation units of about 300 lines and a \
         main.c) on an image scripts/ccbase makes from Debian packages (minbase with gcc, make and \
         ccache, given to the build as the named context `base`, an OCI layout, since no registry is \
         reachable), built by `COPY . /src` and `RUN --mount=type=cache,target=/root/.cache/ccache \
         make -j2 CC=\"ccache gcc\"`. Each round every variant builds it once from an empty state dir \
         to fill its own caches (its own repositories in a docker-registry on 127.0.0.1, its own \
         directory), the code of one source file changes, and every variant builds it again from an \
         empty state dir (a new pod), in an order that rotates by round. That second run is timed, \
         from spawn to exit (the anchor's to its kill). The RUN step prints ccache's counts for its \
         build: what it compiled is ccache's misses.\n",
    );
    Ok(s)
}
