//! The world the cases run in: the generated contexts, the dirs on the tmpfs, and the three ways to build (bkrun, the anchor, buildkitd alone).

use std::fs::{self, File};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::procs::{run_logged, run_logged_within, signal, spawn, Run, RUN_LIMIT};
use crate::BKRUN;

/// The anchor's retry limit: buildctl-daemonless.sh's default BUILDCTL_CONNECT_RETRIES_MAX.
const ANCHOR_RETRIES: u32 = 10;
/// 20,000 files of 4 KiB, spread over directories as a real source tree would be.
const SMALL_DIRS: usize = 100;
const SMALL_PER_DIR: usize = 200;
const SMALL_SIZE: usize = 4096;
const BIG_SIZE: usize = 1 << 30;

pub struct World {
    pub work: PathBuf,
    /// The tmpfs: state dirs and export destinations.
    pub fast: PathBuf,
    pub warm: PathBuf,
    pub config: PathBuf,
    pub dockerfile: PathBuf,
    pub tiny: PathBuf,
    pub small: PathBuf,
    pub big: PathBuf,
    /// The monorepo context, and the part of it its .dockerignore keeps.
    pub mono: PathBuf,
    pub mono_kept: PathBuf,
    pub tmp: PathBuf,
}

/// What the anchor saw: wall time to its kill, spawn→first good `debug workers`, and how long the
/// killed daemon took to exit (the script does not wait for that).
pub struct AnchorRun {
    pub wall: Duration,
    pub ready: Duration,
    pub linger: Duration,
    pub stderr: String,
}

impl World {
    pub fn new(work: &Path) -> Result<World> {
        let fast = work.join("fast");
        let w = World {
            work: work.to_path_buf(),
            warm: fast.join("warm"),
            fast,
            config: work.join("bkrun.toml"),
            dockerfile: work.join("dockerfile"),
            tiny: work.join("ctx-tiny"),
            small: work.join("ctx-20k"),
            big: work.join("ctx-1g"),
            mono: work.join("ctx-mono"),
            mono_kept: work.join("ctx-mono/packages"),
            tmp: work.join("tmp"),
        };
        fs::create_dir_all(&w.tmp)?;
        fs::create_dir_all(work.join("run"))?;
        // Our own socket dir: /run/buildkit/buildkitd.sock may belong to someone else's `bkrun daemon`.
        fs::write(
            &w.config,
            format!(
                "socket_dir = {:?}\n",
                work.join("run").display().to_string()
            ),
        )?;
        Ok(w)
    }

    /// The contexts, made once: a tiny one, 20,000 × 4 KiB files and one 1 GiB file. Contents are
    /// pseudo-random so nothing along the way can shortcut zeros.
    pub fn generate(&self) -> Result<()> {
        fs::create_dir_all(&self.dockerfile)?;
        fs::write(
            self.dockerfile.join("Dockerfile"),
            "FROM scratch\nCOPY . /ctx/\n",
        )?;
        fs::create_dir_all(&self.tiny)?;
        fs::write(self.tiny.join("hello.txt"), "hello\n")?;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut fill = |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
            }
        };
        let mut buf = vec![0u8; SMALL_SIZE];
        for d in 0..SMALL_DIRS {
            let dir = self.small.join(format!("d{d:03}"));
            fs::create_dir_all(&dir)?;
            for f in 0..SMALL_PER_DIR {
                fill(&mut buf);
                fs::write(dir.join(format!("f{f:03}.bin")), &buf)?;
            }
        }
        fs::create_dir_all(&self.big)?;
        let mut out = std::io::BufWriter::new(File::create(self.big.join("big.bin"))?);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..BIG_SIZE / chunk.len() {
            fill(&mut chunk);
            std::io::Write::write_all(&mut out, &chunk)?;
        }
        std::io::Write::flush(&mut out)?;
        Ok(())
    }

    /// A monorepo of 100,000 files: 20 packages, each with 100 sources four directories deep and
    /// a node_modules of 49 modules × 100 files, which `**/node_modules` in .dockerignore
    /// excludes (98% of the files).
    pub fn generate_mono(&self) -> Result<()> {
        fs::create_dir_all(&self.mono)?;
        fs::write(self.mono.join(".dockerignore"), "**/node_modules\n")?;
        let src = vec![b'x'; 1024];
        let module = vec![b'y'; 512];
        for p in 0..20 {
            let pkg = self.mono_kept.join(format!("p{p:02}"));
            let dir = pkg.join("src/a/b/c");
            fs::create_dir_all(&dir)?;
            for f in 0..100 {
                fs::write(dir.join(format!("f{f:03}.ts")), &src)?;
            }
            for m in 0..49 {
                let dir = pkg.join(format!("node_modules/m{m:02}/lib/x/y"));
                fs::create_dir_all(&dir)?;
                for f in 0..100 {
                    fs::write(dir.join(format!("f{f:03}.js")), &module)?;
                }
            }
        }
        Ok(())
    }

    /// buildctl's build flags, identical for every tool.
    pub fn args(&self, ctx: &Path, output: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "--frontend=dockerfile.v0".to_string(),
            format!("--local=context={}", ctx.display()),
            format!("--local=dockerfile={}", self.dockerfile.display()),
            "--progress=plain".to_string(),
        ];
        if let Some(dest) = output {
            a.push(format!("--output=type=local,dest={}", dest.display()));
        }
        a
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        // A CI step's environment, not a Rust developer's: with RUST_BACKTRACE set, every error
        // bkrun makes and handles (a dial refused while the daemon starts) captures a backtrace;
        // and `cargo bench` sets LD_LIBRARY_PATH to the target dir and the toolchain's libraries,
        // where the dynamic loader then looks for bkrun's libc first (160 failed lookups, about
        // 0.15 ms of every start). The rootless modes' commands start from an empty environment
        // anyway.
        c.env("TMPDIR", &self.tmp)
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(&self.work);
        c
    }

    pub fn bkrun(&self) -> Command {
        let mut c = self.command(BKRUN);
        c.arg("--config").arg(&self.config);
        c
    }

    /// A daemonless bkrun build on state dir `state`.
    pub fn bkrun_build(&self, state: &Path, args: &[String], debug: bool) -> Result<Run> {
        let mut c = self.bkrun();
        c.arg("--root").arg(state);
        if debug {
            c.arg("--debug");
        }
        c.arg("build").args(args);
        run_logged(&mut c, &self.work.join("bkrun.log"))
    }

    /// buildctl-daemonless.sh's algorithm, re-implemented: start buildkitd in the background, poll
    /// `buildctl debug workers` sleeping 100 ms + 20 ms per failed try, run `buildctl build`, SIGTERM
    /// the daemon without waiting. We then wait for it (it holds the state dir's lock) and time that.
    /// A Rust loop spawns no `sleep`/`awk` processes as the shell does, so this anchor is a bit
    /// faster than the real script: the ratios favour it.
    pub fn anchor(&self, state: &Path, args: &[String]) -> Result<AnchorRun> {
        self.anchor_with(state, &[], args, RUN_LIMIT)
    }

    /// The anchor with flags for its buildkitd (what BUILDKITD_FLAGS carries to the script) and
    /// a build that may take up to `limit`.
    pub fn anchor_with(
        &self,
        state: &Path,
        daemon_flags: &[String],
        args: &[String],
        limit: Duration,
    ) -> Result<AnchorRun> {
        let addr = format!("unix://{}", self.work.join("run/anchor.sock").display());
        let mut d = self.command("buildkitd");
        d.args(daemon_flags)
            .arg(format!("--addr={addr}"))
            .arg(format!("--root={}", state.display()))
            // A private trace socket (as BUILDKITD_FLAGS would carry): the default is shared host-wide.
            .arg(format!(
                "--otel-socket-path={}",
                self.work.join("run/anchor-otel.sock").display()
            ));
        let log = File::create(self.work.join("anchor-buildkitd.log"))?;
        d.stdout(log.try_clone()?).stderr(log);
        let t0 = Instant::now();
        let daemon = spawn(&mut d)?;
        let result = self.anchor_drive(&addr, args, t0, limit);
        // The script's `kill`: SIGTERM and move on.
        let (exit, killed) = daemon.terminate()?;
        let (ready, stderr) = result?;
        Ok(AnchorRun {
            wall: killed - t0,
            ready,
            linger: exit.at - killed,
            stderr,
        })
    }

    fn anchor_drive(
        &self,
        addr: &str,
        args: &[String],
        t0: Instant,
        limit: Duration,
    ) -> Result<(Duration, String)> {
        let mut tries = 0;
        loop {
            let mut probe = self.command("buildctl");
            probe
                .arg(format!("--addr={addr}"))
                .args(["debug", "workers"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if spawn(&mut probe)?.wait()?.success() {
                break;
            }
            if tries > ANCHOR_RETRIES {
                bail!("anchor: buildkitd did not answer after {ANCHOR_RETRIES} tries; see anchor-buildkitd.log");
            }
            std::thread::sleep(Duration::from_millis(100 + 20 * tries as u64));
            tries += 1;
        }
        let ready = t0.elapsed();
        let mut b = self.command("buildctl");
        b.arg(format!("--addr={addr}")).arg("build").args(args);
        let run = run_logged_within(&mut b, &self.work.join("anchor-buildctl.log"), limit)?;
        Ok((ready, run.stderr))
    }

    /// buildkitd alone, as bkrun starts it with --debug, timed from spawn to its sd_notify READY=1;
    /// then SIGTERM and the time it takes to exit.
    pub fn raw_ready(&self, state: &Path) -> Result<(Duration, Duration)> {
        let notify = self.work.join("run/notify.sock");
        let _ = fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify)?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut d = self.command("buildkitd");
        d.arg(format!(
            "--addr=unix://{}",
            self.work.join("run/raw.sock").display()
        ))
        .arg(format!("--root={}", state.display()))
        .arg(format!(
            "--otel-socket-path={}",
            self.work.join("run/raw-otel.sock").display()
        ))
        .arg("--debug")
        .env("NOTIFY_SOCKET", &notify);
        let log = File::create(self.work.join("raw-buildkitd.log"))?;
        d.stdout(log.try_clone()?).stderr(log);
        let daemon = spawn(&mut d)?;
        let mut buf = [0u8; 4096];
        let ready = loop {
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") => {
                    break Ok(daemon.started.elapsed());
                }
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        signal(daemon.pid, Signal::SIGTERM);
        let killed = Instant::now();
        let exit = daemon.wait()?;
        let _ = fs::remove_file(&notify);
        let ready = ready.context("buildkitd sent no READY=1; see raw-buildkitd.log")?;
        Ok((ready, exit.at - killed))
    }
}
