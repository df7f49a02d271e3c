//! `cargo bench --bench compare`: bkrun beside what it replaces — buildctl-daemonless.sh's algorithm (our own re-implementation, the "anchor") and buildctl against a warm daemon — interleaved, reported as medians and ratios and written to BENCHMARKS.md.
//!
//! Needs root (it mounts a tmpfs and runs a privileged buildkitd) and what scripts/setup installs.
//! BENCH_ROUNDS (default 5) sets the rounds per case; BENCH_ROUNDS_BIG (default min(3, rounds))
//! the rounds of the 1 GiB cases, BENCH_ROUNDS_CACHED (default 16 × rounds) those of the cached
//! trivial build, BENCH_ROUNDS_FLOOR (default 100 × rounds) those of each mode's floor and
//! BENCH_ROUNDS_SECOND (default 3) those of the CI's second run, whose C project has
//! BENCH_SECOND_UNITS translation units (default 120); BENCH_CASES (e.g. `cold,client`) runs
//! only some cases and then leaves BENCHMARKS.md alone.
//!
//! The modules: `world` (contexts, dirs, the three ways to build), `cases` (what is measured),
//! `pool` (a pool of daemons, sticky routing beside random), `second` (the CI's second run: a
//! compile on a new pod, warmed by each tool's registry cache and bkrun's cache mounts),
//! `floor` (buildkitd's own start, build and stop per mode, and bkrun's overhead over them),
//! `procs` (children, waited for with a pidfd and reaped with their rusage), `cleanup` (the guard
//! and clearing dirs, mounts included), `parse` (what the tools print), `stats` (medians) and
//! `report` (the Markdown).

mod cases;
mod cleanup;
mod floor;
mod own;
mod parse;
mod pool;
mod procs;
mod report;
mod second;
mod stats;
mod world;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use cases::{case_cached, case_client, case_cold, case_export, case_ready, case_size};
use cleanup::Guard;
use report::{document, render};
use world::World;

/// The release-profile bkrun this bench target was built beside.
const BKRUN: &str = env!("CARGO_BIN_EXE_bkrun");

/// Set by SIGINT/SIGTERM/SIGHUP; checked between runs so the guard can clean up.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn main() {
    // `cargo test --all-targets` runs bench targets without --bench: don't start a 10-minute run then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: run it with `cargo bench --bench compare`");
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone()).expect("cannot install signal handlers");
    }
    let _ = STOP.set(stop);
    if let Err(e) = run() {
        eprintln!("compare: {e:#}");
        std::process::exit(1);
    }
}

/// An error once a signal asked the bench to stop, so the cases unwind through the guard.
fn stopped() -> Result<()> {
    if STOP.get().is_some_and(|s| s.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the bench mounts a tmpfs and runs a privileged buildkitd");
    }
    for tool in ["buildkitd", "buildctl"] {
        which(tool).with_context(|| format!("{tool} is not on PATH: run scripts/setup"))?;
    }
    let rounds = env_usize("BENCH_ROUNDS", 5)?.max(1);
    let big_rounds = env_usize("BENCH_ROUNDS_BIG", rounds.min(3))?.max(1);
    // The headline ratio's rounds are short: enough of them that two runs agree to ±0.05.
    let cached_rounds = env_usize("BENCH_ROUNDS_CACHED", (rounds * 16).max(10))?.max(2);
    // Many: a daemon's start spreads by tens of ms (IQR 30–40 ms), and the overhead rows
    // resolve a few: at 500 their 95% intervals are about ±4 ms, a fifth narrower than at 300.
    let floor_rounds = env_usize("BENCH_ROUNDS_FLOOR", (rounds * 100).max(4))?.max(1);
    // Each round is eight builds of a compile lasting tens of seconds: few rounds are affordable.
    let second_rounds = env_usize("BENCH_ROUNDS_SECOND", 3)?.max(1);
    let second_units = env_usize("BENCH_SECOND_UNITS", 120)?.max(2);
    let started = Instant::now();

    // Everything lives under one dir in cargo's target tmp dir; the guard removes it, whatever happens.
    let work = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?
        .keep();
    // The rootless modes' user reads the contexts and runs bkrun from here.
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755))?;
    let mut guard = Guard {
        work: work.clone(),
        mounted: None,
    };
    let w = World::new(&work)?;
    // State dirs and outputs on a tmpfs: the disk of a shared VM would add noise that is not either tool's.
    fs::create_dir_all(&w.fast)?;
    nix::mount::mount(
        Some("tmpfs"),
        &w.fast,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8g,mode=0755"),
    )
    .context("cannot mount a tmpfs for the state dirs")?;
    guard.mounted = Some(w.fast.clone());

    // The contexts and the warm cache serve the daemonless, floor and client cases only.
    if [
        "cached", "ready", "floor", "cold", "export", "client", "mono",
    ]
    .iter()
    .any(|c| want(c))
    {
        eprintln!("compare: generating contexts in {}", work.display());
        w.generate()?;
        if want("mono") {
            w.generate_mono()?;
        }
        // Written back now, not as disk traffic during the first measured runs.
        nix::unistd::sync();
        eprintln!("compare: warming the cache");
        for ctx in [&w.tiny, &w.small, &w.big] {
            w.bkrun_build(&w.warm, &w.args(ctx, None), false)?;
            stopped()?;
        }
        w.anchor(&w.warm, &w.args(&w.tiny, None))?;
    }

    let mut rows = Vec::new();
    let mut anchor = None;
    let mut timeline = String::new();
    if want("cached") {
        eprintln!("compare: cached daemonless build ({cached_rounds} rounds)");
        let (r, a) = case_cached(&w, cached_rounds)?;
        rows.extend(r);
        anchor = a;
    }
    if want("ready") {
        eprintln!("compare: spawn to ready and teardown ({rounds} rounds)");
        rows.extend(case_ready(&w, rounds)?);
    }
    if want("floor") {
        eprintln!(
            "compare: buildkitd's floor and bkrun's overhead per mode ({floor_rounds} rounds)"
        );
        let (r, t) = floor::case_floor(&w, floor_rounds, anchor)?;
        rows.extend(r);
        timeline = t;
    }
    if want("cold") {
        eprintln!("compare: cold builds");
        rows.extend(case_cold(&w, &w.big, "1 GiB file", big_rounds)?);
        rows.extend(case_cold(&w, &w.small, "20,000 × 4 KiB", rounds)?);
    }
    if want("export") {
        eprintln!("compare: local exports");
        rows.extend(case_export(&w, &w.small, "20,000 × 4 KiB", rounds)?);
        rows.extend(case_export(&w, &w.big, "1 GiB file", big_rounds)?);
    }
    if want("client") {
        eprintln!("compare: clients against one warm daemon");
        rows.extend(case_client(&w, rounds, big_rounds)?);
    }
    if want("mono") {
        eprintln!("compare: the 100,000-file monorepo against one warm daemon");
        rows.extend(cases::case_mono(&w, rounds)?);
    }
    if want("pool") {
        rows.extend(pool::case_pool(&w)?);
    }
    if want("second") {
        eprintln!("compare: the CI's second run ({second_rounds} rounds)");
        rows.extend(second::case_second(&w, second_rounds, second_units)?);
    }
    if want("size") {
        rows.push(case_size()?);
    }

    let table = render(&rows) + &timeline;
    println!("\n{table}");
    if std::env::var_os("BENCH_CASES").is_some() {
        eprintln!("compare: BENCH_CASES is set, so BENCHMARKS.md is left as it is");
        return Ok(());
    }
    let doc = document(&table, rounds, big_rounds, started.elapsed())?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    fs::write(&out, doc).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "compare: wrote {} after {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    drop(guard);
    Ok(())
}

/// Whether BENCH_CASES (a comma-separated subset of cached,ready,floor,cold,export,client,mono,pool,second,size; all when
/// unset) asks for `case`: for working on one case without waiting for the others.
fn want(case: &str) -> bool {
    std::env::var("BENCH_CASES").map_or(true, |v| v.split(',').any(|c| c.trim() == case))
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
