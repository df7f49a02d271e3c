//! The measured cases: cached, ready, cold, export, client and size, each run round by round against what bkrun is compared with.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::cleanup::clear;
use crate::parse::{debug_ms, ms, rate, took};
use crate::procs::{run_logged, signal, spawn, wait_for_line};
use crate::report::{ratio_row, Row};
use crate::stats::{bootstrap_ratio, fmt, median, Series, Unit};
use crate::world::World;
use crate::{stopped, which, BKRUN};

/// Runs `a` and `b` once each, alternating which goes first by round, so drift hits both alike.
fn interleave(
    round: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<()> {
    stopped()?;
    if round % 2 == 0 {
        a()?;
        b()?;
    } else {
        b()?;
        a()?;
    }
    Ok(())
}

/// What the daemonless cases compare bkrun with.
pub const ANCHOR: &str = "anchor (buildctl-daemonless.sh algorithm)";

/// A trivial, fully cached build, end to end, on one warm state dir.
/// Also returns the anchor's median, for the floor's share of it.
pub fn case_cached(w: &World, rounds: usize) -> Result<(Vec<Row>, Option<f64>)> {
    let args = w.args(&w.tiny, None);
    let (mut ours, mut theirs, mut linger) =
        (Series::default(), Series::default(), Series::default());
    for r in 0..rounds {
        interleave(
            r,
            || {
                if let Some(run) = ours.survive(w.bkrun_build(&w.warm, &args, false))? {
                    ours.push(ms(run.wall));
                }
                Ok(())
            },
            || {
                if let Some(a) = theirs.survive(w.anchor(&w.warm, &args))? {
                    theirs.push(ms(a.wall));
                    linger.push(ms(a.linger));
                }
                Ok(())
            },
        )?;
    }
    let n = rounds;
    let mut headline = ratio_row(
        format!("cached trivial build, daemonless, wall (n={n})"),
        &ours,
        ANCHOR,
        &theirs,
        Unit::Ms,
        Some(("≤ 0.5×", |r| r <= 0.5)),
    );
    headline.bkrun = format!("{} {}", headline.bkrun, ours.iqr());
    headline.other = format!("{} {}", headline.other, theirs.iqr());
    headline.ratio = format!("{} {}", headline.ratio, stability(&ours, &theirs));
    let anchor = theirs.median();
    let rows = vec![
        headline,
        Row {
            measure: format!("… the anchor's killed buildkitd lingers after its exit (n={n})"),
            bkrun: "0 (waits)".into(),
            other_name: ANCHOR.into(),
            other: linger.cell(&Unit::Ms),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        },
    ];
    Ok((rows, anchor))
}

/// How stable a ratio of medians is: its 95% bootstrap interval, and the ratio of each half of
/// the rounds on its own (two shorter runs of the same bench, taken side by side).
fn stability(ours: &Series, theirs: &Series) -> String {
    let (a, b) = (ours.values(), theirs.values());
    let ci = bootstrap_ratio(a, b)
        .map(|(lo, hi)| format!("95% CI {lo:.2}–{hi:.2}"))
        .unwrap_or_default();
    let half = |lo: usize, hi: usize| -> Option<f64> {
        let (a, b) = (
            &a[lo.min(a.len())..hi.min(a.len())],
            &b[lo.min(b.len())..hi.min(b.len())],
        );
        Some(median(a)? / median(b)?)
    };
    let n = a.len().max(b.len());
    match (half(0, n / 2), half(n / 2, n)) {
        (Some(x), Some(y)) => format!("({ci}; halves {x:.2}× / {y:.2}×)"),
        _ if !ci.is_empty() => format!("({ci})"),
        _ => String::new(),
    }
}

/// Spawn→ready three ways, and teardown after the build's result.
pub fn case_ready(w: &World, rounds: usize) -> Result<Vec<Row>> {
    let args = w.args(&w.tiny, None);
    let mut s: [Series; 6] = Default::default();
    let [ours_ready, ours_stop, raw_ready, raw_stop, anchor_ready, anchor_linger] = &mut s;
    for r in 0..rounds {
        stopped()?;
        // Three ways: rotate who goes first.
        for k in 0..3 {
            match (r + k) % 3 {
                0 => {
                    if let Some(run) = ours_ready.survive(w.bkrun_build(&w.warm, &args, true))? {
                        ours_ready.push(debug_ms(&run.stderr, r"daemon ready after ([\d.]+) ms")?);
                        ours_stop.push(debug_ms(
                            &run.stderr,
                            r"daemon stopped \(.*\) in ([\d.]+) ms",
                        )?);
                    }
                }
                1 => {
                    let (ready, stop) = w.raw_ready(&w.warm)?;
                    raw_ready.push(ms(ready));
                    raw_stop.push(ms(stop));
                }
                _ => {
                    if let Some(a) = anchor_ready.survive(w.anchor(&w.warm, &args))? {
                        anchor_ready.push(ms(a.ready));
                        anchor_linger.push(ms(a.linger));
                    }
                }
            }
        }
    }
    let n = rounds;
    let overhead = ours_ready
        .median()
        .zip(raw_ready.median())
        .map(|(a, b)| a - b);
    Ok(vec![
        Row {
            measure: format!("spawn → ready, bkrun --debug vs buildkitd's own READY=1 (both --debug) (n={n})"),
            // With the range: the daemon's own start varies by tens of ms from run to run.
            bkrun: format!("{} {}", ours_ready.cell(&Unit::Ms), ours_ready.range()),
            other_name: "buildkitd spawn → READY=1".into(),
            other: format!("{} {}", raw_ready.cell(&Unit::Ms), raw_ready.range()),
            ratio: overhead.map(|o| format!("{o:+.1} ms")).unwrap_or("n/a".into()),
            target: "≤ +5 ms".into(),
            met: match overhead {
                Some(o) if o <= 5.0 => "met".into(),
                Some(_) => "**not met**".into(),
                None => "n/a".into(),
            },
        },
        ratio_row(
            format!("spawn → ready, vs the anchor's poll loop (first good `debug workers`) (n={n})"),
            ours_ready,
            ANCHOR,
            anchor_ready,
            Unit::Ms,
            None,
        ),
        ratio_row(
            format!("teardown after the build result: bkrun's \"daemon stopped\" vs the anchor's buildkitd SIGTERM → exit (n={n})"),
            ours_stop,
            ANCHOR,
            anchor_linger,
            Unit::Ms,
            None,
        ),
        Row {
            measure: format!("… for reference: idle buildkitd SIGTERM → exit (n={n})"),
            bkrun: String::new(),
            other_name: "buildkitd alone".into(),
            other: fmt(raw_stop.median(), &Unit::Ms),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        },
    ])
}

/// A cold daemonless build (fresh state dir each run) of `ctx`: wall time and context transfer rate.
pub fn case_cold(w: &World, ctx: &Path, label: &str, rounds: usize) -> Result<Vec<Row>> {
    let args = w.args(ctx, None);
    let state = w.fast.join("cold");
    let mut s: [Series; 4] = Default::default();
    let [ours_wall, ours_rate, anchor_wall, anchor_rate] = &mut s;
    for r in 0..rounds {
        interleave(
            r,
            || {
                clear(&state)?;
                if let Some(run) = ours_wall.survive(w.bkrun_build(&state, &args, false))? {
                    ours_wall.push(run.wall.as_secs_f64());
                    ours_rate.push_opt(rate(&run.stderr, "transferring context"));
                }
                clear(&state)
            },
            || {
                clear(&state)?;
                if let Some(a) = anchor_wall.survive(w.anchor(&state, &args))? {
                    anchor_wall.push(a.wall.as_secs_f64());
                    anchor_rate.push_opt(rate(&a.stderr, "transferring context"));
                }
                clear(&state)
            },
        )?;
    }
    Ok(vec![
        ratio_row(
            format!("cold build, {label}, daemonless, wall (n={rounds})"),
            ours_wall,
            ANCHOR,
            anchor_wall,
            Unit::S,
            None,
        ),
        ratio_row(
            format!("… context transfer rate, {label} (`transferring context` line)"),
            ours_rate,
            ANCHOR,
            anchor_rate,
            Unit::MBps,
            Some(("≥ 1.3×", |r| r >= 1.3)),
        ),
    ])
}

/// A `type=local` export of `ctx`'s image from a warm cache onto the tmpfs.
pub fn case_export(w: &World, ctx: &Path, label: &str, rounds: usize) -> Result<Vec<Row>> {
    let dest = w.fast.join("out");
    let args = w.args(ctx, Some(&dest));
    let mut s: [Series; 4] = Default::default();
    let [ours_wall, ours_rate, anchor_wall, anchor_rate] = &mut s;
    for r in 0..rounds {
        interleave(
            r,
            || {
                clear(&dest)?;
                if let Some(run) = ours_wall.survive(w.bkrun_build(&w.warm, &args, false))? {
                    ours_wall.push(run.wall.as_secs_f64());
                    ours_rate.push_opt(rate(&run.stderr, "copying files"));
                }
                clear(&dest)
            },
            || {
                clear(&dest)?;
                if let Some(a) = anchor_wall.survive(w.anchor(&w.warm, &args))? {
                    anchor_wall.push(a.wall.as_secs_f64());
                    anchor_rate.push_opt(rate(&a.stderr, "copying files"));
                }
                clear(&dest)
            },
        )?;
    }
    Ok(vec![
        ratio_row(
            format!("local export, {label}, warm cache, daemonless, wall (n={rounds})"),
            ours_wall,
            ANCHOR,
            anchor_wall,
            Unit::S,
            None,
        ),
        ratio_row(
            format!("… `copying files` rate, {label}"),
            ours_rate,
            ANCHOR,
            anchor_rate,
            Unit::MBps,
            None,
        ),
    ])
}

/// Sets every file's mtime under `dir` to `t`, so the daemon sees changed files and re-transfers
/// them; node_modules, which the monorepo's .dockerignore excludes, is left alone.
fn touch_tree(dir: &Path, t: SystemTime) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_name() == "node_modules" {
            continue;
        }
        if e.file_type()?.is_dir() {
            touch_tree(&p, t)?;
        } else {
            File::open(&p)?.set_modified(t)?;
        }
    }
    Ok(())
}

/// Runs `f` against one warm `bkrun daemon` on the warm state dir, then stops it.
fn with_daemon(w: &World, f: impl FnOnce(&str) -> Result<Vec<Row>>) -> Result<Vec<Row>> {
    let mut d = w.bkrun();
    d.arg("--root").arg(&w.warm).arg("daemon");
    let stdout = File::create(w.work.join("daemon.out"))?;
    d.stdout(stdout)
        .stderr(File::create(w.work.join("daemon.err"))?);
    let daemon = spawn(&mut d)?;
    let result = wait_for_line(&w.work.join("daemon.out"), &daemon).and_then(|addr| f(&addr));
    signal(daemon.pid, Signal::SIGTERM);
    let exit = daemon.wait()?;
    let rows = result?;
    // bkrun exits with 128+SIGTERM after a clean stop.
    if !(libc::WIFEXITED(exit.status) && libc::WEXITSTATUS(exit.status) == 128 + libc::SIGTERM) {
        eprintln!("compare: bkrun daemon ended with {}", exit.describe());
    }
    Ok(rows)
}

/// A context for the client case: what is sent, the part of it touched between runs, its label,
/// and whether the RSS target applies.
struct ClientCtx<'a> {
    ctx: &'a Path,
    touched: &'a Path,
    label: &'a str,
    rss_target: bool,
}

/// One context's client runs, bkrun --addr and buildctl --addr alternating, each after a fresh
/// touch of `touched` (the part of the context that is sent): peak RSS, CPU, wall, transfer.
fn client_rows(
    w: &World,
    addr: &str,
    c: &ClientCtx,
    n: usize,
    stamp: &mut SystemTime,
) -> Result<Vec<Row>> {
    let ClientCtx {
        ctx,
        touched,
        label,
        rss_target,
    } = *c;
    let args = w.args(ctx, None);
    let mut s: [Series; 10] = Default::default();
    let [o_rss, o_cpu, o_wall, o_rate, o_secs, b_rss, b_cpu, b_wall, b_rate, b_secs] = &mut s;
    let mut client = |bkrun: bool| -> Result<()> {
        *stamp += Duration::from_secs(1);
        touch_tree(touched, *stamp)?;
        let mut c = if bkrun {
            let mut c = w.bkrun();
            c.arg(format!("--addr={addr}")).arg("build");
            c
        } else {
            let mut c = w.command("buildctl");
            c.arg(format!("--addr={addr}")).arg("build");
            c
        };
        c.args(&args);
        let (rss, cpu, wall, rt, secs) = if bkrun {
            (
                &mut *o_rss,
                &mut *o_cpu,
                &mut *o_wall,
                &mut *o_rate,
                &mut *o_secs,
            )
        } else {
            (
                &mut *b_rss,
                &mut *b_cpu,
                &mut *b_wall,
                &mut *b_rate,
                &mut *b_secs,
            )
        };
        let Some(run) = rss.survive(run_logged(&mut c, &w.work.join("client.log")))? else {
            return Ok(());
        };
        rss.push(run.exit.maxrss_kib / 1024.0);
        cpu.push(ms(run.exit.cpu));
        wall.push(run.wall.as_secs_f64());
        rt.push_opt(rate(&run.stderr, "transferring context"));
        secs.push_opt(took(&run.stderr, "transferring context"));
        Ok(())
    };
    for r in 0..n {
        stopped()?;
        if r % 2 == 0 {
            client(true)?;
            client(false)?;
        } else {
            client(false)?;
            client(true)?;
        }
    }
    let other = "buildctl (warm daemon)";
    let mut rows = vec![
        ratio_row(
            format!("client peak RSS, {label} context, warm daemon (n={n})"),
            o_rss,
            other,
            b_rss,
            Unit::MiB,
            rss_target.then_some(("≤ 0.33×", |r| r <= 1.0 / 3.0)),
        ),
        ratio_row(
            format!("client CPU time (user+sys), {label}"),
            o_cpu,
            other,
            b_cpu,
            Unit::Ms,
            None,
        ),
        ratio_row(
            format!("client build wall, {label}"),
            o_wall,
            other,
            b_wall,
            Unit::S,
            None,
        ),
    ];
    // A large context's rate; a small one's time, walk included (0.1 s resolution).
    if rss_target {
        rows.push(ratio_row(
            format!("… context transfer rate, {label}, warm daemon"),
            o_rate,
            other,
            b_rate,
            Unit::MBps,
            None,
        ));
    } else {
        rows.push(ratio_row(
            format!("… `transferring context` time (walk and send), {label}, warm daemon"),
            o_secs,
            other,
            b_secs,
            Unit::S,
            None,
        ));
    }
    Ok(rows)
}

/// The client side alone: bkrun --addr vs buildctl --addr against one warm `bkrun daemon`, each run
/// after a fresh touch of the context; peak RSS and CPU time from wait4's rusage.
pub fn case_client(w: &World, rounds: usize, big_rounds: usize) -> Result<Vec<Row>> {
    with_daemon(w, |addr| {
        let mut rows = Vec::new();
        let mut stamp = SystemTime::now();
        for (ctx, label, n) in [
            (&w.small, "20,000 × 4 KiB", rounds),
            (&w.big, "1 GiB file", big_rounds),
        ] {
            let c = ClientCtx {
                ctx,
                touched: ctx,
                label,
                rss_target: true,
            };
            rows.extend(client_rows(w, addr, &c, n, &mut stamp)?);
        }
        Ok(rows)
    })
}

/// The monorepo: 100,000 files in deep directories, most of them in node_modules, which its
/// .dockerignore excludes; only what is sent is touched between runs.
pub fn case_mono(w: &World, rounds: usize) -> Result<Vec<Row>> {
    with_daemon(w, |addr| {
        let mut stamp = SystemTime::now();
        let label = "monorepo, 100,000 files, .dockerignore keeps 2,000";
        // The cache warmed for this context first, as the other client cases' are.
        let mut c = w.bkrun();
        c.arg(format!("--addr={addr}"))
            .arg("build")
            .args(w.args(&w.mono, None));
        run_logged(&mut c, &w.work.join("client.log"))?;
        client_rows(
            w,
            addr,
            &ClientCtx {
                ctx: &w.mono,
                touched: &w.mono_kept,
                label,
                rss_target: false,
            },
            rounds,
            &mut stamp,
        )
    })
}

/// Whether an ELF file still has a symbol table (SHT_SYMTAB), i.e. is not stripped.
fn has_symtab(path: &Path) -> Result<bool> {
    let b = fs::read(path)?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        bail!("{} is not a little-endian ELF64 file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let shoff = u64::from_le_bytes(b[0x28..0x30].try_into()?) as usize;
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    Ok((0..shnum).any(|i| {
        let o = shoff + i * shentsize + 4;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 2
    }))
}

pub fn case_size() -> Result<Row> {
    let buildctl = which("buildctl").context("buildctl is not on PATH")?;
    let mib = |p: &Path| -> Result<f64> { Ok(fs::metadata(p)?.len() as f64 / (1 << 20) as f64) };
    let ours = mib(Path::new(BKRUN))?;
    let theirs = mib(&buildctl)?;
    let strip = |p: &Path| -> Result<&str> {
        Ok(if has_symtab(p)? {
            "not stripped"
        } else {
            "stripped"
        })
    };
    Ok(Row {
        measure: format!(
            "binary size (release bkrun, {}; buildctl {})",
            strip(Path::new(BKRUN))?,
            strip(&buildctl)?
        ),
        bkrun: fmt(Some(ours), &Unit::MiB),
        other_name: buildctl.display().to_string(),
        other: fmt(Some(theirs), &Unit::MiB),
        ratio: format!("{:.2}×", ours / theirs),
        target: "< 1×".into(),
        met: if ours < theirs {
            "met".into()
        } else {
            "**not met**".into()
        },
    })
}
