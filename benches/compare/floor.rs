//! buildkitd's own floor in each mode (spawn → READY=1, a build on the warm daemon, SIGTERM → exit) and bkrun's daemonless build over it: the overhead bkrun adds.
//!
//! The bare daemon is started with the argv `bkrun config` prints for the mode, less bkrun's own
//! init (`bkrun __nsinit … --`, or rootlesskit's `--pidns` in its place), which is part of what
//! bkrun adds; rootless modes run as the unprivileged user scripts/setup creates, under
//! rootlesskit, as bkrun runs them.

use std::fs::{self, File};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cleanup::clear;
use crate::own::{self, Marks};
use crate::parse::ms;
use crate::procs::{run_logged, run_logged_stamped, spawn};
use crate::report::Row;
use crate::stats::{fmt, median, quantile, Series, Unit};
use crate::world::World;
use crate::{stopped, BKRUN};

/// The unprivileged user of the rootless modes (scripts/setup makes it; the tests use it too).
const USER: &str = "bkrun-test";
/// What `bkrun config` prints in place of the run dir it makes at run time.
const RUN_DIR_PLACEHOLDER: &str = "$TMPDIR/bkrun-XXXXXX";

/// One mode's corner of the world: its user, state dir, temp dir and config.
struct ModeWorld {
    mode: &'static str,
    /// uid and gid for the rootless modes; None runs as root.
    user: Option<(u32, u32)>,
    home: PathBuf,
    state: PathBuf,
    tmp: PathBuf,
    config: PathBuf,
}

impl ModeWorld {
    fn new(w: &World, mode: &'static str) -> Result<Option<ModeWorld>> {
        let user = if mode == "privileged" {
            None
        } else {
            match nix::unistd::User::from_name(USER)? {
                Some(u) => Some((u.uid.as_raw(), u.gid.as_raw())),
                None => {
                    eprintln!("compare: no user {USER} (scripts/setup makes it): {mode} skipped");
                    return Ok(None);
                }
            }
        };
        let base = w.fast.join(format!("floor-{mode}"));
        let mw = ModeWorld {
            mode,
            user,
            home: base.join("home"),
            state: base.join("state"),
            tmp: base.join("tmp"),
            config: base.join("bkrun.toml"),
        };
        for d in [&base, &mw.home, &mw.state, &mw.tmp, &base.join("run")] {
            fs::create_dir_all(d)?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
            mw.own(d)?;
        }
        fs::write(
            &mw.config,
            format!(
                "socket_dir = {:?}\n",
                base.join("run").display().to_string()
            ),
        )?;
        Ok(Some(mw))
    }

    fn own(&self, p: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.user {
            chown(p, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// A program as this mode's user, with the environment a pod gives it (no XDG_RUNTIME_DIR).
    /// Every mode's TMPDIR is its own temp dir, on the tmpfs where the bare daemon's run dir is
    /// too: privileged bkrun once inherited the bench's, on disk, and made its run dir there
    /// while the floor's daemon had its own on the tmpfs.
    fn command(&self, w: &World, program: &str) -> Command {
        let mut c = w.command(program);
        c.env("TMPDIR", &self.tmp);
        if let Some((uid, gid)) = self.user {
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &self.home)
                .env("USER", USER)
                .env("TMPDIR", &self.tmp)
                .current_dir(&self.home)
                .uid(uid)
                .gid(gid);
        }
        c
    }

    fn bkrun(&self, w: &World) -> Command {
        let mut c = self.command(w, BKRUN);
        c.arg("--config")
            .arg(&self.config)
            .arg("--mode")
            .arg(self.mode)
            .arg("--root")
            .arg(&self.state);
        c
    }

    /// The daemon argv bkrun would run, from `bkrun config`, with bkrun's init (or rootlesskit's
    /// PID namespace that stands for it) taken out and the run dir filled in with `run_dir`.
    fn bare_argv(&self, w: &World, run_dir: &Path) -> Result<Vec<String>> {
        let mut c = self.bkrun(w);
        c.arg("config");
        let out = c.output().context("cannot run bkrun config")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("daemon argv:")) else {
            bail!(
                "bkrun config ({}) printed no daemon argv:\n{text}{}",
                self.mode,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let run_dir = run_dir.display().to_string();
        let mut argv: Vec<String> = shell_words::split(line.trim())?
            .into_iter()
            .map(|a| a.replace(RUN_DIR_PLACEHOLDER, &run_dir))
            .collect();
        if let Some(i) = argv.iter().position(|a| a == "__nsinit") {
            let end = argv[i..]
                .iter()
                .position(|a| a == "--")
                .context("no -- after __nsinit")?;
            argv.drain(i - 1..=i + end);
        }
        // Rootless: the PID namespace rootlesskit makes in place of that init is bkrun's too,
        // and comes out with it (the bench's config gives rootlesskit no flags of its own).
        if argv.first().is_some_and(|a| a.ends_with("/rootlesskit")) {
            argv.retain(|a| a != "--pidns");
        }
        Ok(argv)
    }
}

/// How long the bare daemon is left after READY=1 for its build to count as one on a warm daemon:
/// longer than what buildkitd does after it (history records' scan, the first Go GC) and than
/// the anchor's first poll interval (100 ms).
const WARM_PAUSE: Duration = Duration::from_millis(300);

/// A 95% bootstrap interval of median(total) − (median(ready) + median(warm) + median(stop)),
/// each series resampled on its own (2,000 times, a fixed seed).
fn bootstrap_overhead(
    total: &[f64],
    ready: &[f64],
    warm: &[f64],
    stop: &[f64],
) -> Option<(f64, f64)> {
    if [total, ready, warm, stop].iter().any(|s| s.len() < 2) {
        return None;
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut resample = |v: &[f64]| -> f64 {
        let r: Vec<f64> = (0..v.len())
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                v[(rng % v.len() as u64) as usize]
            })
            .collect();
        median(&r).unwrap_or(0.0)
    };
    let mut d: Vec<f64> = (0..2000)
        .map(|_| resample(total) - (resample(ready) + resample(warm) + resample(stop)))
        .collect();
    d.sort_by(f64::total_cmp);
    Some((quantile(&d, 0.025)?, quantile(&d, 0.975)?))
}

/// One bare daemon's floor: spawn → READY=1, the build on it once ready, SIGTERM → exit.
struct Floor {
    ready: f64,
    build: f64,
    stop: f64,
}

/// `pause`: how long after READY=1 the build starts; a pause longer than the daemon's own
/// after-start work makes it a build on an already-warm daemon.
fn bare_round(w: &World, mw: &ModeWorld, args: &[String], pause: Duration) -> Result<Floor> {
    let run_dir = mw.tmp.join("bare");
    clear(&run_dir)?;
    fs::create_dir_all(run_dir.join("tmp"))?;
    mw.own(&run_dir)?;
    mw.own(&run_dir.join("tmp"))?;
    let argv = mw.bare_argv(w, &run_dir)?;
    let notify = run_dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    mw.own(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut d = mw.command(w, &argv[0]);
    d.args(&argv[1..])
        .env("TMPDIR", run_dir.join("tmp"))
        .env("NOTIFY_SOCKET", &notify);
    if mw.user.is_some() {
        d.env("XDG_RUNTIME_DIR", &run_dir);
    }
    let log = File::create(w.work.join(format!("bare-{}.log", mw.mode)))?;
    d.stdout(log.try_clone()?).stderr(log);
    let daemon = spawn(&mut d)?;
    let result = (|| -> Result<(f64, f64)> {
        let mut buf = [0u8; 4096];
        let ready = loop {
            let n = sock
                .recv(&mut buf)
                .with_context(|| format!("no READY=1 from the bare {} daemon", mw.mode))?;
            if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
                break daemon.started.elapsed();
            }
        };
        let addr = argv
            .iter()
            .find_map(|a| a.strip_prefix("--addr="))
            .context("no --addr in the daemon argv")?;
        std::thread::sleep(pause);
        let mut c = mw.command(w, BKRUN);
        c.arg(format!("--addr={addr}")).arg("build").args(args);
        let run = run_logged(&mut c, &w.work.join("bare-client.log"))?;
        Ok((ms(ready), ms(run.wall)))
    })();
    let (exit, killed) = daemon.terminate()?;
    drop(sock);
    clear(&run_dir)?;
    let (ready, build) = result?;
    Ok(Floor {
        ready,
        build,
        stop: ms(exit.at - killed),
    })
}

/// Per mode, rounds of bkrun's daemonless build beside the bare daemon's three parts, each round
/// alternating which goes first; the overhead is the median of the rounds' differences.
/// `anchor`: the anchor's median from the cached case, if it ran: the floor's share of it is the
/// lowest ratio any supervisor of this buildkitd could reach.
/// Also returns the timeline of bkrun's marks per mode (BENCHMARKS.md's section after the table).
pub fn case_floor(w: &World, rounds: usize, anchor: Option<f64>) -> Result<(Vec<Row>, String)> {
    let args = w.args(&w.tiny, None);
    let mut rows = Vec::new();
    let mut timelines = Vec::new();
    for mode in ["privileged", "rootless", "rootless-strict"] {
        let Some(mw) = ModeWorld::new(w, mode)? else {
            continue;
        };
        // The state dir warmed: the same cached build as in the daemonless rounds.
        run_logged(
            mw.bkrun(w).arg("build").args(&args),
            &w.work.join("floor.log"),
        )
        .with_context(|| format!("the {mode} warm-up build failed"))?;
        let mut s: [Series; 5] = Default::default();
        let [total, ready, warm, first, stop] = &mut s;
        let mut marks = Vec::new();
        for r in 0..rounds {
            stopped()?;
            // Every fourth round builds on the bare daemon once it has been up a while (the
            // floor's build, whose spread is a few ms, so fewer rounds suffice), the others at
            // once on READY=1 (what a supervisor does): the difference is what a just-started
            // daemon costs the first build. The pause is what makes rounds long, and the rounds
            // are many because the daemon's start spreads by tens of ms.
            let pause = if r % 4 == 1 {
                WARM_PAUSE
            } else {
                Duration::ZERO
            };
            for k in 0..2 {
                if (r + k) % 2 == 0 {
                    // The marks cost a relaxed load each when off, a clock read when on.
                    if let Some(run) = total.survive(run_logged_stamped(
                        mw.bkrun(w)
                            .env(bkrun::timeline::ENV, "1")
                            .arg("build")
                            .args(&args),
                        &w.work.join("floor.log"),
                    ))? {
                        total.push(ms(run.wall));
                        marks.extend(Marks::of(&run));
                    }
                } else {
                    let bare = bare_round(w, &mw, &args, pause)?;
                    ready.push(bare.ready);
                    stop.push(bare.stop);
                    if pause.is_zero() {
                        first.push(bare.build);
                    } else {
                        warm.push(bare.build);
                    }
                }
            }
        }
        let floor_of = |ready: &[f64], warm: &[f64], stop: &[f64]| -> Option<f64> {
            Some(median(ready)? + median(warm)? + median(stop)?)
        };
        let floor_sum = floor_of(ready.values(), warm.values(), stop.values()).unwrap_or(0.0);
        let part = |what: &str, s: &Series| Row {
            measure: format!("… {mode}: {what} (n={})", s.values().len()),
            bkrun: String::new(),
            other_name: "buildkitd alone".into(),
            other: format!("{} {}", s.cell(&Unit::Ms), s.iqr()),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        };
        let o = total.median().map(|t| t - floor_sum);
        let ci = bootstrap_overhead(total.values(), ready.values(), warm.values(), stop.values());
        rows.push(Row {
            measure: format!("bkrun's overhead over buildkitd's floor, {mode}: cached trivial daemonless build minus (spawn → READY=1 + a build on the warm daemon + SIGTERM → exit), medians (n={rounds})"),
            bkrun: format!("{} {}", total.cell(&Unit::Ms), total.iqr()),
            other_name: "buildkitd's floor (sum of the medians below)".into(),
            other: fmt(Some(floor_sum), &Unit::Ms),
            ratio: match (o, ci) {
                (Some(o), Some((lo, hi))) => format!("{o:+.1} ms (95% CI {lo:+.1} – {hi:+.1})"),
                (Some(o), None) => format!("{o:+.1} ms"),
                _ => "n/a".into(),
            },
            target: "≤ +5 ms".into(),
            met: match o {
                Some(o) if o <= 5.0 => "met".into(),
                Some(_) => "**not met**".into(),
                None => "n/a".into(),
            },
        });
        rows.extend(own::rows(mode, &marks));
        timelines.push((mode, marks));
        rows.push(part("bare buildkitd spawn → READY=1", ready));
        rows.push(part(
            "the same build on the bare daemon 300 ms after its READY=1 (`bkrun --addr`)",
            warm,
        ));
        rows.push(part("… and the same build at once on READY=1", first));
        rows.push(part("bare buildkitd SIGTERM → exit", stop));
        if let (Some(a), "privileged") = (anchor, mode) {
            rows.push(Row {
                measure: "… buildkitd's floor (privileged) ÷ the anchor's cached build: the lowest ratio a supervisor of this buildkitd can reach".into(),
                bkrun: String::new(),
                other_name: "anchor (buildctl-daemonless.sh algorithm)".into(),
                other: fmt(Some(a), &Unit::Ms),
                ratio: format!("{:.2}×", floor_sum / a),
                target: String::new(),
                met: String::new(),
            });
        }
    }
    Ok((rows, own::timeline(&timelines)))
}
