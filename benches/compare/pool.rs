//! The pool case: N builds of M projects against K local `bkrun daemon`s, each build routed by bkrun's route key (sticky) or by a seeded random key: how often the slow step meets its cache, and the total time, side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use regex::Regex;

use crate::cleanup::clear;
use crate::procs::{run_logged, signal, spawn, wait_for_line, Proc};
use crate::report::Row;
use crate::stats::Series;
use crate::world::World;
use crate::{stopped, BKRUN};

/// Daemons, projects and builds: each project built N/M times, round robin.
const K: usize = 3;
const M: usize = 6;
const N: usize = 24;
/// The step a cache hit saves: marked so its progress lines can be found.
const SLOW_STEP: &str = "RUN echo pool-slow-step && sleep 1 && cat /src/* | sha256sum > /sum";

/// What one pass (sticky or random) saw.
#[derive(Default)]
struct Pass {
    /// Successful builds, and those in which the slow step was CACHED.
    builds: usize,
    slow_hits: usize,
    /// Dockerfile steps (`[i/n]` vertices) in all builds, and how many were CACHED.
    steps: usize,
    steps_cached: usize,
    total_s: f64,
    /// Which daemons each project's builds reached.
    reached: BTreeMap<usize, BTreeSet<String>>,
    lost: Series,
}

impl Pass {
    fn hit_cell(&self) -> String {
        let mut s = format!(
            "{} of {} ({:.0}%)",
            self.slow_hits,
            self.builds,
            100.0 * self.slow_hits as f64 / self.builds.max(1) as f64
        );
        let lost = self.lost.cell(&crate::stats::Unit::S);
        if let Some(i) = lost.find(" (") {
            s.push_str(&lost[i..]);
        }
        s
    }
    fn steps_cell(&self) -> String {
        format!(
            "{} of {} ({:.0}%)",
            self.steps_cached,
            self.steps,
            100.0 * self.steps_cached as f64 / self.steps.max(1) as f64
        )
    }
    fn reached_mean(&self) -> f64 {
        let n: usize = self.reached.values().map(BTreeSet::len).sum();
        n as f64 / self.reached.len().max(1) as f64
    }
}

/// K daemons on fresh state dirs, each with a plaintext loopback listener and its own socket dir.
struct Daemons {
    procs: Vec<Proc>,
    addrs: Vec<String>,
    states: Vec<PathBuf>,
}

impl Daemons {
    fn start(w: &World) -> Result<Daemons> {
        let mut d = Daemons {
            procs: Vec::new(),
            addrs: Vec::new(),
            states: Vec::new(),
        };
        for i in 0..K {
            let run = w.work.join(format!("run-pool-{i}"));
            fs::create_dir_all(&run)?;
            let cfg = w.work.join(format!("pool-{i}.toml"));
            fs::write(
                &cfg,
                format!("socket_dir = {:?}\n", run.display().to_string()),
            )?;
            let state = w.fast.join(format!("pool-{i}"));
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let out = w.work.join(format!("pool-daemon-{i}.out"));
            let mut c = w.command(BKRUN);
            c.arg("--config")
                .arg(&cfg)
                .arg("--root")
                .arg(&state)
                .arg("daemon")
                .arg(format!("--listen=tcp://127.0.0.1:{port}"))
                .stdout(File::create(&out)?)
                .stderr(File::create(w.work.join(format!("pool-daemon-{i}.err")))?);
            let p = spawn(&mut c)?;
            let first = wait_for_line(&out, &p);
            d.procs.push(p);
            d.states.push(state);
            first.with_context(|| format!("pool daemon {i}"))?;
            d.addrs.push(format!("tcp://127.0.0.1:{port}"));
        }
        Ok(d)
    }

    /// SIGTERM to each, waited for; then their state dirs removed, so the next pass starts cold.
    fn stop(self) -> Result<()> {
        for p in &self.procs {
            signal(p.pid, Signal::SIGTERM);
        }
        for p in &self.procs {
            p.wait()?;
        }
        for s in &self.states {
            clear(s)?;
        }
        Ok(())
    }
}

/// The M projects: one Dockerfile shape, each context its own files, so each project's slow
/// step has its own cache key; busybox as a named context gives the RUN steps a shell.
///
/// The file names carry the project: a daemon keeps one snapshot of the local source `context`
/// per session shared key, which buildctl leaves empty (bkrun now derives one from the context's
/// path), and brings it up to date by name, size and mtime; files written within one clock tick
/// under the same names and sizes would look unchanged to a buildctl-driven comparison.
fn projects(w: &World) -> Result<(Vec<PathBuf>, PathBuf)> {
    let root = w.work.join("pool");
    let bb = root.join("busybox");
    fs::create_dir_all(&bb)?;
    let src = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("static busybox is missing: run scripts/setup")?;
    fs::copy(src, bb.join("busybox"))?;
    let mut dirs = Vec::new();
    for m in 0..M {
        let dir = root.join(format!("project-{m}"));
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join("Dockerfile"),
            format!("FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY . /src\n{SLOW_STEP}\n"),
        )?;
        for f in 0..20 {
            fs::write(
                dir.join(format!("project-{m}-file-{f}.txt")),
                format!("project {m}, file {f}\n").repeat(200),
            )?;
        }
        dirs.push(dir);
    }
    Ok((dirs, bb))
}

/// One pass of N builds on fresh daemons: routed by bkrun's own key (`seed` None) or by a random
/// `--route-key` per build from a fixed seed (the same path through bkrun, another daemon choice).
fn pass(w: &World, projects: &[PathBuf], bb: &Path, seed: Option<u64>) -> Result<Pass> {
    let daemons = Daemons::start(w)?;
    let result = (|| -> Result<Pass> {
        let mut p = Pass::default();
        let mut rng = seed.unwrap_or(1);
        let using = Regex::new(r"(?m)^bkrun: using (\S+), choice")?;
        let step = Regex::new(r"(?m)^#(\d+) \[[^\]]*\d+/\d+\] (.*)$")?;
        for i in 0..N {
            stopped()?;
            let m = i % M;
            let dir = &projects[m];
            let mut c = w.bkrun();
            c.arg(format!("--addr={}", daemons.addrs.join(",")));
            if seed.is_some() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                c.arg(format!("--route-key=random-{rng:016x}"));
            }
            c.arg("build").args([
                "--frontend=dockerfile.v0".to_string(),
                format!("--local=context={}", dir.display()),
                format!("--local=dockerfile={}", dir.display()),
                format!("--local=busybox={}", bb.display()),
                "--opt=context:busybox=local:busybox".into(),
                "--progress=plain".into(),
            ]);
            let Some(run) = p
                .lost
                .survive(run_logged(&mut c, &w.work.join("pool-build.log")))?
            else {
                continue;
            };
            p.builds += 1;
            p.total_s += run.wall.as_secs_f64();
            if let Some(u) = using.captures(&run.stderr) {
                p.reached.entry(m).or_default().insert(u[1].to_string());
            }
            let cached = |id: &str| run.stderr.lines().any(|l| l == format!("#{id} CACHED"));
            let mut seen = BTreeSet::new();
            for s in step.captures_iter(&run.stderr) {
                // A vertex's header line repeats as its progress is printed: count it once.
                if !seen.insert(s[1].to_string()) {
                    continue;
                }
                p.steps += 1;
                let hit = cached(&s[1]);
                p.steps_cached += usize::from(hit);
                if s[2].starts_with("RUN echo pool-slow-step") && hit {
                    p.slow_hits += 1;
                }
            }
        }
        Ok(p)
    })();
    daemons.stop()?;
    result
}

pub fn case_pool(w: &World) -> Result<Vec<Row>> {
    let (dirs, bb) = projects(w)?;
    eprintln!("compare: pool, sticky routing ({N} builds of {M} projects on {K} daemons)");
    let sticky = pass(w, &dirs, &bb, None)?;
    eprintln!("compare: pool, random routing");
    let random = pass(w, &dirs, &bb, Some(0x5eed_cafe_f00d_d00d))?;
    let other = "random daemon per build (seeded --route-key)";
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "n/a".into()
        }
    };
    let row = |measure: String, a: String, b: String, r: String| Row {
        measure,
        bkrun: a,
        other_name: other.into(),
        other: b,
        ratio: r,
        target: String::new(),
        met: String::new(),
    };
    let hit = |p: &Pass| p.slow_hits as f64 / p.builds.max(1) as f64;
    Ok(vec![
        row(
            format!("pool of {K} daemons, {M} projects × {} builds in turn: builds whose slow RUN step (1 s) was CACHED, sticky routing", N / M),
            sticky.hit_cell(),
            random.hit_cell(),
            ratio(hit(&sticky), hit(&random)),
        ),
        row(
            "… all Dockerfile steps CACHED".into(),
            sticky.steps_cell(),
            random.steps_cell(),
            String::new(),
        ),
        row(
            format!("… total wall time of the {N} builds"),
            format!("{:.1} s", sticky.total_s),
            format!("{:.1} s", random.total_s),
            ratio(sticky.total_s, random.total_s),
        ),
        row(
            format!("… daemons each project's builds reached (mean of {M})"),
            format!("{:.2}", sticky.reached_mean()),
            format!("{:.2}", random.reached_mean()),
            String::new(),
        ),
    ])
}
