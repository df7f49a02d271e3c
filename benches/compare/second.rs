//! The CI's second run: a C project compiled with ccache in a RUN cache mount is built once to fill each variant's caches, one source file changes, and it is built again from an empty state dir (a new pod); the anchor with the registry cache users configure today beside bkrun's --cache and --cache-mounts.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::cases::ANCHOR;
use crate::cleanup::clear;
use crate::procs::{run_logged_within, spawn, Proc};
use crate::report::{ratio_row, Row, Target};
use crate::stats::{median, Series, Unit};
use crate::world::World;
use crate::{stopped, BKRUN};

/// Functions per translation unit and cases in each one's switch: about 300 lines, a quarter of a
/// second of gcc -O2 each, so the compile, not the daemon, is most of a cold build.
const FUNCS: usize = 12;
const CASES: usize = 16;
/// A first run compiles everything and pushes the base image's layer to the registry; on a busy
/// 2-core machine that takes minutes, not the 30 s other builds get.
const LIMIT: Duration = Duration::from_secs(600);
/// What the RUN step prints after make: ccache's counts for this build alone (it zeroes them first).
const STATS_LINE: &str = r"bench-ccache: compiled=(\d+) hits=(\d+)";

/// The four ways a CI job keeps its work from one pod to the next.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Anchor,
    Cache,
    MountsDir,
    MountsRegistry,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Anchor,
        Variant::Cache,
        Variant::MountsDir,
        Variant::MountsRegistry,
    ];

    /// Its own name in registry repositories and paths, so no two variants share a cache.
    fn slug(self) -> &'static str {
        match self {
            Variant::Anchor => "anchor",
            Variant::Cache => "cache",
            Variant::MountsDir => "mounts-dir",
            Variant::MountsRegistry => "mounts-registry",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Anchor => "anchor, --export-cache/--import-cache type=registry,mode=max",
            Variant::Cache => "bkrun --cache",
            Variant::MountsDir => "bkrun --cache --cache-mounts DIR",
            Variant::MountsRegistry => "bkrun --cache --cache-mounts registry://REF",
        }
    }

    /// The cache flags, each variant's repositories under `REG/r<round>/<slug>/`.
    fn flags(self, reg: &str, round: usize, mounts_dir: &Path) -> Vec<String> {
        let repo = format!("{reg}/r{round}/{}", self.slug());
        // Named, not guessed: the bench's work dir is no checkout and CI variables may leak in.
        let cache = [
            format!("--cache={repo}/bkcache"),
            "--cache-branch=main".to_string(),
            "--cache-default-branch=main".to_string(),
        ];
        match self {
            Variant::Anchor => vec![
                format!("--export-cache=type=registry,ref={repo}/cache:main,mode=max"),
                format!("--import-cache=type=registry,ref={repo}/cache:main"),
            ],
            Variant::Cache => cache.to_vec(),
            Variant::MountsDir => {
                let mut f = cache.to_vec();
                f.push(format!("--cache-mounts={}", mounts_dir.display()));
                f
            }
            Variant::MountsRegistry => {
                let mut f = cache.to_vec();
                f.push(format!("--cache-mounts=registry://{repo}/bkmounts:main"));
                f
            }
        }
    }
}

/// One variant's measured (second) runs: wall times and what the RUN step compiled.
#[derive(Default)]
struct Seen {
    wall: Series,
    compiled: Vec<f64>,
    hits: Vec<f64>,
}

impl Seen {
    /// "1 of 120 compiled (119 ccache hits)", medians over the rounds.
    fn recompiled(&self) -> String {
        match (median(&self.compiled), median(&self.hits)) {
            (Some(c), Some(h)) => {
                format!("RUN compiled {:.0} of {c:.0} ({h:.0} ccache hits)", c - h)
            }
            _ => "RUN's ccache line missing".into(),
        }
    }
}

/// The case: its image, its project of `units` C files and its registry, `rounds` rounds, then
/// one row per bkrun variant beside the anchor. The registry is stopped whatever happens.
pub fn case_second(w: &World, rounds: usize, units: usize) -> Result<Vec<Row>> {
    let base = ccbase()?;
    let root = w.work.join("second");
    let project = Project::generate(&root, base, units)?;
    let data = w.fast.join("second-registry");
    let registry = Registry::start(w, &root, &data)?;
    let result = Second::new(w, &root, project, registry.host())
        .and_then(|s| s.rounds(rounds).map(|seen| (s, seen)));
    registry.stop();
    let (s, seen) = result?;
    let rows = s.rows(&seen, rounds);
    // The registry's blobs take the tmpfs's memory, which later cases want.
    clear(&data)?;
    clear(&root)?;
    Ok(rows)
}

/// scripts/ccbase's OCI layout (built once, then kept under /var/lib/bkrun-test by its recipe's hash).
fn ccbase() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ccbase");
    let t0 = Instant::now();
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        );
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let size: u64 = fs::read_dir(dir.join("blobs/sha256"))?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<Result<u64>>()?;
    eprintln!(
        "compare: the C toolchain image {} ({:.0} MiB compressed; ready after {:.1} s)",
        dir.display(),
        size as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// The generated C project: its context, its Dockerfile's dir and the base image's layout.
struct Project {
    ctx: PathBuf,
    dockerfile: PathBuf,
    base: PathBuf,
    /// The layout's manifest: buildctl sends an oci-layout context's tag as it is, and the
    /// Dockerfile frontend refuses one without a digest.
    base_digest: String,
    units: usize,
}

/// A first `FROM base` then the CI's compile. ccache's defaults would miss on a second run: its
/// hash takes in the working directory with -g, and it distrusts files whose mtime or ctime is
/// as new as the compile (COPY writes all of them just before).
const DOCKERFILE: &str = r#"FROM base
ENV CCACHE_DIR=/root/.cache/ccache CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=include_file_mtime,include_file_ctime
COPY . /src
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/ccache \
    ccache -z >/dev/null && make -j2 CC="ccache gcc" >/dev/null && \
    ccache --print-stats | awk '$1 ~ /^(direct|preprocessed)_cache_hit$/ { h += $2 } $1 == "cache_miss" { m += $2 } END { print "bench-ccache: compiled=" h + m " hits=" h + 0 }'
"#;

const MAKEFILE: &str = "CFLAGS = -O2\nOBJS = $(patsubst %.c,%.o,$(wildcard *.c))\n\nprog: $(OBJS)\n\t$(CC) -o $@ $^\n\n%.o: %.c common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n";

const COMMON_H: &str = "#include <stdint.h>\n#include <stddef.h>\n\
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }\n\
static inline uint64_t mix(uint64_t a, uint64_t b) { a ^= rotl(b, 17); a *= 0x9e3779b97f4a7c15ull; return a ^ (a >> 29); }\n";

impl Project {
    fn generate(root: &Path, base: PathBuf, units: usize) -> Result<Project> {
        let index: serde_json::Value = serde_json::from_slice(&fs::read(base.join("index.json"))?)
            .with_context(|| format!("{}/index.json is not JSON", base.display()))?;
        let base_digest = index["manifests"][0]["digest"]
            .as_str()
            .with_context(|| format!("{}/index.json names no manifest", base.display()))?
            .to_string();
        let p = Project {
            ctx: root.join("ctx"),
            dockerfile: root.join("dockerfile"),
            base,
            base_digest,
            units,
        };
        fs::create_dir_all(&p.ctx)?;
        fs::create_dir_all(&p.dockerfile)?;
        fs::write(p.dockerfile.join("Dockerfile"), DOCKERFILE)?;
        fs::write(p.ctx.join("Makefile"), MAKEFILE)?;
        fs::write(p.ctx.join("common.h"), COMMON_H)?;
        let mut main = String::from("#include <stdio.h>\n#include <stdint.h>\n");
        for i in 0..units {
            writeln!(main, "uint64_t unit{i}(uint64_t);")?;
            fs::write(p.ctx.join(format!("u{i:03}.c")), unit_source(i, false))?;
        }
        main.push_str("int main(void) {\n  uint64_t x = 1;\n");
        for i in 0..units {
            writeln!(main, "  x = unit{i}(x);")?;
        }
        main.push_str("  printf(\"%llu\\n\", (unsigned long long)x);\n  return 0;\n}\n");
        fs::write(p.ctx.join("main.c"), main)?;
        Ok(p)
    }

    /// The one file a commit changes between the two runs: its code, not a comment, which the
    /// preprocessor would drop and ccache would then still find.
    fn edit(&self, changed: bool) -> Result<()> {
        let i = self.units / 2;
        fs::write(self.ctx.join(format!("u{i:03}.c")), unit_source(i, changed))?;
        Ok(())
    }

    /// buildctl's flags for the build, the same for bkrun and the anchor.
    fn args(&self) -> Vec<String> {
        vec![
            "--frontend=dockerfile.v0".to_string(),
            format!("--local=context={}", self.ctx.display()),
            format!("--local=dockerfile={}", self.dockerfile.display()),
            format!("--oci-layout=base={}", self.base.display()),
            format!("--opt=context:base=oci-layout://base@{}", self.base_digest),
            "--progress=plain".to_string(),
        ]
    }
}

/// Translation unit `i`: FUNCS functions, each a loop over a switch of CASES arithmetic cases,
/// and `unit<i>` calling them all. Its own seed, so rewriting one unit leaves the others alike.
fn unit_source(i: usize, changed: bool) -> String {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut s = String::from("#include \"common.h\"\n");
    for f in 0..FUNCS {
        let _ = write!(
            s,
            "static uint64_t f{f}(uint64_t x, const uint64_t *t, size_t n) {{\n  uint64_t acc = {}ull;\n  for (size_t k = 0; k < n; k++) {{\n    switch ((x + k) % {CASES}) {{\n",
            next() % 100_000
        );
        for c in 0..CASES {
            let _ = writeln!(
                s,
                "    case {c}: acc = mix(acc + t[k], {}ull) ^ rotl(x, {}); x += acc >> {}; break;",
                next(),
                next() % 63 + 1,
                next() % 31 + 1
            );
        }
        s.push_str("    }\n  }\n  return acc ^ x;\n}\n");
    }
    let _ = write!(
        s,
        "uint64_t unit{i}(uint64_t x) {{\n  uint64_t t[16];\n  for (int k = 0; k < 16; k++) t[k] = mix(x, k);\n"
    );
    for f in 0..FUNCS {
        let _ = writeln!(s, "  x = f{f}(x, t, 16);");
    }
    if changed {
        s.push_str("  x ^= 0x5bd1e995ull;\n");
    }
    s.push_str("  return x;\n}\n");
    s
}

/// A plain-HTTP docker-registry on a free loopback port, its data on the tmpfs.
struct Registry {
    proc: Proc,
    port: u16,
}

impl Registry {
    fn start(w: &World, root: &Path, data: &Path) -> Result<Registry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        fs::create_dir_all(data)?;
        let cfg = root.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                data.display()
            ),
        )?;
        let log = fs::File::create(w.work.join("second-registry.log"))?;
        let mut c = w.command("docker-registry");
        c.arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = spawn(&mut c).context("docker-registry is missing: run scripts/setup")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if proc.wait_timeout(Duration::from_millis(50))?.is_some() {
                bail!("docker-registry exited at start; see second-registry.log");
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on 127.0.0.1:{port} in 20 s");
            }
        }
        Ok(Registry { proc, port })
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(self) {
        if let Err(e) = self.proc.terminate() {
            eprintln!("compare: stopping docker-registry: {e:#}");
        }
    }
}

/// The case's set-up: the project, the registry, both tools' configs and the one state dir.
struct Second<'a> {
    w: &'a World,
    project: Project,
    reg: String,
    root: PathBuf,
    /// The anchor's buildkitd.toml and bkrun.toml: both say the registry is plain HTTP.
    buildkitd_config: PathBuf,
    bkrun_config: PathBuf,
    /// Every run's state dir, emptied before and after it: nothing local survives a run.
    state: PathBuf,
}

impl<'a> Second<'a> {
    fn new(w: &'a World, root: &Path, project: Project, reg: String) -> Result<Second<'a>> {
        let s = Second {
            w,
            project,
            buildkitd_config: root.join("buildkitd.toml"),
            bkrun_config: root.join("bkrun.toml"),
            root: root.to_path_buf(),
            state: w.fast.join("second-state"),
            reg,
        };
        let table = format!("[registry.\"{}\"]\nhttp = true\n", s.reg);
        fs::write(&s.buildkitd_config, &table)?;
        // The bench's own settings (its socket dir), plus the same table for bkrun's daemon.
        let mut ours = fs::read_to_string(&w.config)?;
        write!(ours, "\n[buildkitd.registry.\"{}\"]\nhttp = true\n", s.reg)?;
        fs::write(&s.bkrun_config, ours)?;
        Ok(s)
    }

    /// Where the --cache-mounts DIR variant keeps its mounts in round `round`.
    fn mounts_dir(&self, round: usize) -> PathBuf {
        self.root.join(format!("mounts-r{round}"))
    }

    /// One build of `v` on an empty state dir, emptied again after it: wall time and stderr.
    fn build(&self, v: Variant, round: usize) -> Result<(Duration, String)> {
        let mut args = self.project.args();
        args.extend(v.flags(&self.reg, round, &self.mounts_dir(round)));
        clear(&self.state)?;
        let result = if v == Variant::Anchor {
            let flags = [format!("--config={}", self.buildkitd_config.display())];
            self.w
                .anchor_with(&self.state, &flags, &args, LIMIT)
                .map(|a| (a.wall, a.stderr))
        } else {
            let mut c = self.w.command(BKRUN);
            c.arg("--config")
                .arg(&self.bkrun_config)
                .arg("--root")
                .arg(&self.state)
                .arg("build")
                .args(&args);
            run_logged_within(&mut c, &self.w.work.join("second-bkrun.log"), LIMIT)
                .map(|r| (r.wall, r.stderr))
        };
        clear(&self.state)?;
        result
    }

    /// Each round: every variant's first run on the original sources, then one file changes and
    /// every variant's second run, in an order that rotates by round.
    fn rounds(&self, rounds: usize) -> Result<[Seen; 4]> {
        let mut seen: [Seen; 4] = Default::default();
        let stats = Regex::new(STATS_LINE).unwrap();
        for r in 0..rounds {
            self.project.edit(false)?;
            let mut filled = [false; 4];
            for (k, v) in Variant::ALL.into_iter().enumerate() {
                stopped()?;
                let t0 = Instant::now();
                filled[k] = seen[k].wall.survive(self.build(v, r))?.is_some();
                eprintln!(
                    "compare: round {r}: {} first run, {:.1} s",
                    v.slug(),
                    t0.elapsed().as_secs_f64()
                );
            }
            self.project.edit(true)?;
            for k in (0..4).map(|k| (k + r) % 4).filter(|&k| filled[k]) {
                stopped()?;
                let v = Variant::ALL[k];
                let Some((wall, stderr)) = seen[k].wall.survive(self.build(v, r))? else {
                    continue;
                };
                let line = stats.captures(&stderr);
                let counts = line.map(|c| (c[1].parse::<f64>(), c[2].parse::<f64>()));
                if let Some((Ok(compiled), Ok(hits))) = counts {
                    seen[k].compiled.push(compiled);
                    seen[k].hits.push(hits);
                }
                seen[k].wall.push(wall.as_secs_f64());
                // bkrun's own last line says what its caches moved and how long that took.
                let cache_line = stderr
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("bkrun: cache:"))
                    .map(|l| format!("; {l}"))
                    .unwrap_or_default();
                eprintln!(
                    "compare: round {r}: {} second run, {:.1} s, {}{cache_line}",
                    v.slug(),
                    wall.as_secs_f64(),
                    stats.find(&stderr).map_or("no ccache line", |m| m.as_str())
                );
            }
            clear(&self.mounts_dir(r))?;
        }
        Ok(seen)
    }

    fn rows(&self, seen: &[Seen; 4], rounds: usize) -> Vec<Row> {
        let anchor = &seen[0];
        let units = self.project.units + 1;
        Variant::ALL[1..]
            .iter()
            .zip(&seen[1..])
            .map(|(v, ours)| {
                let target: Option<Target> =
                    (*v != Variant::Cache).then_some(("≤ 0.3×", |r| r <= 0.3));
                let mut row = ratio_row(
                    format!(
                        "the CI's second run: {units} C files, one changed, new pod (empty state dir), wall: {} (n={rounds})",
                        v.label()
                    ),
                    &ours.wall,
                    &format!("{ANCHOR} with the registry cache"),
                    &anchor.wall,
                    Unit::S,
                    target,
                );
                row.bkrun = format!("{}; {}", row.bkrun, ours.recompiled());
                row.other = format!("{}; {}", row.other, anchor.recompiled());
                row
            })
            .collect()
    }
}
