//! `cargo bench --bench compare`: bkrun beside what it replaces — buildctl-daemonless.sh's algorithm (our own re-implementation, the "anchor") and buildctl against a warm daemon — interleaved, reported as medians and ratios and written to BENCHMARKS.md.
//!
//! Needs root (it mounts a tmpfs and runs a privileged buildkitd) and what scripts/setup installs.
//! BENCH_ROUNDS (default 5) sets the rounds per case; BENCH_ROUNDS_BIG (default min(3, rounds))
//! the rounds of the 1 GiB cases; BENCH_CASES (e.g. `cold,client`) runs only some cases and then
//! leaves BENCHMARKS.md alone.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use regex::Regex;

/// The release-profile bkrun this bench target was built beside.
const BKRUN: &str = env!("CARGO_BIN_EXE_bkrun");
/// The anchor's retry limit: buildctl-daemonless.sh's default BUILDCTL_CONNECT_RETRIES_MAX.
const ANCHOR_RETRIES: u32 = 10;
/// 20,000 files of 4 KiB, spread over directories as a real source tree would be.
const SMALL_DIRS: usize = 100;
const SMALL_PER_DIR: usize = 200;
const SMALL_SIZE: usize = 4096;
const BIG_SIZE: usize = 1 << 30;

/// Every child we started and have not reaped yet: the guard ends them if the bench stops early.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
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
    let started = Instant::now();

    // Everything lives under one dir in cargo's target tmp dir; the guard removes it, whatever happens.
    let work = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?
        .keep();
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

    eprintln!("compare: generating contexts in {}", work.display());
    w.generate()?;
    // Written back now, not as disk traffic during the first measured runs.
    unsafe { libc::sync() };
    eprintln!("compare: warming the cache");
    for ctx in [&w.tiny, &w.small, &w.big] {
        w.bkrun_build(&w.warm, &w.args(ctx, None), false)?;
        stopped()?;
    }
    w.anchor(&w.warm, &w.args(&w.tiny, None))?;

    let mut rows = Vec::new();
    if want("cached") {
        eprintln!("compare: cached daemonless build ({rounds} rounds)");
        rows.extend(case_cached(&w, rounds)?);
    }
    if want("ready") {
        eprintln!("compare: spawn to ready and teardown ({rounds} rounds)");
        rows.extend(case_ready(&w, rounds)?);
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
    if want("size") {
        rows.push(case_size()?);
    }

    let table = render(&rows);
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

/// Whether BENCH_CASES (a comma-separated subset of cached,ready,cold,export,client,size; all when
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

// ---------------------------------------------------------------------------------------------
// Cleanup

/// Ends our children, unmounts and removes the work dir when the bench ends, also on error or panic.
struct Guard {
    work: PathBuf,
    mounted: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
        for &pid in &pids {
            signal(pid, libc::SIGTERM);
        }
        // Longer than bkrun's own 10 s stop grace, so a bkrun can still stop its daemon in order.
        let deadline = Instant::now() + Duration::from_secs(15);
        for &pid in &pids {
            loop {
                let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                if r != 0 {
                    break;
                }
                if Instant::now() > deadline {
                    signal(pid, libc::SIGKILL);
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unmount_under(&self.work);
        if let Some(m) = &self.mounted {
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL {
                    eprintln!("compare: cannot unmount {}: {e}", m.display());
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("compare: cannot remove {}: {e}", self.work.display());
        }
    }
}

fn signal(pid: i32, sig: i32) {
    unsafe { libc::kill(pid, sig) };
}

/// Unmounts everything mounted at or below `dir`, deepest first (a snapshot mount buildkitd left
/// behind would otherwise keep a state dir from being removed).
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a state or output dir between runs (unmounting anything a daemon left inside it).
fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        unmount_under(dir);
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child we started, with a pidfd so its exit time is seen at once, not at the next poll.
struct Proc {
    pid: i32,
    /// The program, for messages.
    what: String,
    pidfd: OwnedFd,
    started: Instant,
}

/// How a child ended: when, its status, and its own rusage (wait4).
struct Exit {
    at: Instant,
    status: i32,
    maxrss_kib: f64,
    cpu: Duration,
}

impl Exit {
    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else {
            format!("signal {}", libc::WTERMSIG(self.status))
        }
    }
}

fn spawn(cmd: &mut Command) -> Result<Proc> {
    // No BUILDKIT_HOST from the caller's environment: it would point bkrun and buildctl elsewhere.
    cmd.env_remove("BUILDKIT_HOST").stdin(Stdio::null());
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let pid = child.id() as i32;
    CHILDREN.lock().unwrap().push(pid);
    // Unreaped, the child stays a zombie, so the pidfd can't miss it even if it already exited.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    Ok(Proc {
        pid,
        what: cmd.get_program().to_string_lossy().into_owned(),
        pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        started,
    })
}

impl Proc {
    /// Waits at most `timeout` for the child to exit, then reaps it with its rusage.
    fn wait_timeout(&self, timeout: Duration) -> Result<Option<Exit>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            let at = Instant::now();
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("poll: {e}");
            }
            if r == 0 {
                return Ok(None);
            }
            let mut status = 0;
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let got = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
            if got != self.pid {
                bail!("wait4({}): {}", self.pid, std::io::Error::last_os_error());
            }
            CHILDREN.lock().unwrap().retain(|&p| p != self.pid);
            let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            return Ok(Some(Exit {
                at,
                status,
                maxrss_kib: ru.ru_maxrss as f64,
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            }));
        }
    }

    /// Waits for the exit; a run stuck for 10 minutes is killed and reported.
    fn wait(&self) -> Result<Exit> {
        if let Some(e) = self.wait_timeout(Duration::from_secs(600))? {
            return Ok(e);
        }
        signal(self.pid, libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))?;
        bail!(
            "{} (pid {}) ran for more than 10 minutes",
            self.what,
            self.pid
        )
    }
}

/// One finished client run: wall time from spawn to exit, the exit, and what it printed on stderr.
struct Run {
    wall: Duration,
    exit: Exit,
    stderr: String,
}

/// How long one build may take before it counts as hung: the slowest normal run here takes
/// seconds, and buildctl's local export of many files can deadlock (moby/buildkit#2950).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A build that failed or hung (killed after RUN_LIMIT): counted in the table, not fatal, since
/// how often each tool does that is part of the comparison.
#[derive(Debug)]
enum Lost {
    Hung(String),
    Failed(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Hung(what) => write!(f, "{what} hung (killed after {} s)", RUN_LIMIT.as_secs()),
            Lost::Failed(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Lost {}

/// Runs to completion with stderr captured in `log` and fails on a non-zero exit; a run past
/// RUN_LIMIT is stopped (SIGTERM, so bkrun stops its daemon in order; then SIGKILL) as Hung.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<Run> {
    cmd.stdout(Stdio::null()).stderr(File::create(log)?);
    let p = spawn(cmd)?;
    let Some(exit) = p.wait_timeout(RUN_LIMIT)? else {
        signal(p.pid, libc::SIGTERM);
        if p.wait_timeout(Duration::from_secs(15))?.is_none() {
            signal(p.pid, libc::SIGKILL);
            p.wait()?;
        }
        return Err(anyhow::Error::new(Lost::Hung(p.what.clone())));
    };
    let stderr = fs::read_to_string(log).unwrap_or_default();
    if !exit.success() {
        return Err(anyhow::Error::new(Lost::Failed(format!(
            "{cmd:?} failed ({}):\n{}",
            exit.describe(),
            tail(&stderr, 12)
        ))));
    }
    Ok(Run {
        wall: exit.at - p.started,
        exit,
        stderr,
    })
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The world: contexts, dirs, and the three ways to build

struct World {
    work: PathBuf,
    /// The tmpfs: state dirs and export destinations.
    fast: PathBuf,
    warm: PathBuf,
    config: PathBuf,
    dockerfile: PathBuf,
    tiny: PathBuf,
    small: PathBuf,
    big: PathBuf,
    tmp: PathBuf,
}

/// What the anchor saw: wall time to its kill, spawn→first good `debug workers`, and how long the
/// killed daemon took to exit (the script does not wait for that).
struct AnchorRun {
    wall: Duration,
    ready: Duration,
    linger: Duration,
    stderr: String,
}

impl World {
    fn new(work: &Path) -> Result<World> {
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
    fn generate(&self) -> Result<()> {
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

    /// buildctl's build flags, identical for every tool.
    fn args(&self, ctx: &Path, output: Option<&Path>) -> Vec<String> {
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

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("TMPDIR", &self.tmp).current_dir(&self.work);
        c
    }

    fn bkrun(&self) -> Command {
        let mut c = self.command(BKRUN);
        c.arg("--config").arg(&self.config);
        c
    }

    /// A daemonless bkrun build on state dir `state`.
    fn bkrun_build(&self, state: &Path, args: &[String], debug: bool) -> Result<Run> {
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
    fn anchor(&self, state: &Path, args: &[String]) -> Result<AnchorRun> {
        let addr = format!("unix://{}", self.work.join("run/anchor.sock").display());
        let mut d = self.command("buildkitd");
        d.arg(format!("--addr={addr}"))
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
        let result = self.anchor_drive(&addr, args, t0);
        // The script's `kill`: SIGTERM and move on.
        signal(daemon.pid, libc::SIGTERM);
        let killed = Instant::now();
        let exit = match daemon.wait_timeout(Duration::from_secs(30))? {
            Some(e) => e,
            None => {
                signal(daemon.pid, libc::SIGKILL);
                daemon.wait()?
            }
        };
        let (ready, stderr) = result?;
        Ok(AnchorRun {
            wall: killed - t0,
            ready,
            linger: exit.at - killed,
            stderr,
        })
    }

    fn anchor_drive(&self, addr: &str, args: &[String], t0: Instant) -> Result<(Duration, String)> {
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
        let run = run_logged(&mut b, &self.work.join("anchor-buildctl.log"))?;
        Ok((ready, run.stderr))
    }

    /// buildkitd alone, as bkrun starts it with --debug, timed from spawn to its sd_notify READY=1;
    /// then SIGTERM and the time it takes to exit.
    fn raw_ready(&self, state: &Path) -> Result<(Duration, Duration)> {
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
        signal(daemon.pid, libc::SIGTERM);
        let killed = Instant::now();
        let exit = daemon.wait()?;
        let _ = fs::remove_file(&notify);
        let ready = ready.context("buildkitd sent no READY=1; see raw-buildkitd.log")?;
        Ok((ready, exit.at - killed))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing what the tools print

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A number from bkrun's --debug line, e.g. "daemon ready after 123.4 ms".
fn debug_ms(stderr: &str, re: &str) -> Result<f64> {
    let re = Regex::new(re).unwrap();
    let c = re
        .captures(stderr)
        .with_context(|| format!("no /{re}/ in bkrun's --debug output:\n{}", tail(stderr, 20)))?;
    Ok(c[1].parse()?)
}

/// A finished plain-progress status line, e.g. `#3 transferring context: 1.07GB 2.3s done`:
/// its bytes and seconds (None when it took too little for a duration to be printed). Of several
/// (the .dockerignore load is also "transferring context") the largest wins.
fn status_line(stderr: &str, what: &str) -> Option<(f64, Option<f64>)> {
    let re = Regex::new(&format!(
        r"(?m)^#\d+ {}:? ([\d.]+)(B|kB|MB|GB|TB)(?: ([\d.]+)s)? done\s*$",
        regex::escape(what)
    ))
    .unwrap();
    re.captures_iter(stderr)
        .map(|c| {
            let unit = match &c[2] {
                "kB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                "TB" => 1e12,
                _ => 1.0,
            };
            let bytes = c[1].parse::<f64>().unwrap_or(0.0) * unit;
            (bytes, c.get(3).and_then(|s| s.as_str().parse().ok()))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// MB/s from a status line; None when the line is missing or had no duration.
fn rate(stderr: &str, what: &str) -> Option<f64> {
    let (bytes, secs) = status_line(stderr, what)?;
    secs.filter(|s| *s > 0.0).map(|s| bytes / s / 1e6)
}

// ---------------------------------------------------------------------------------------------
// Statistics and rows

/// One measure's samples, and how many runs hung or failed (left out of the median).
#[derive(Default)]
struct Series {
    v: Vec<f64>,
    hung: usize,
    failed: usize,
}

impl Series {
    fn push(&mut self, v: f64) {
        self.v.push(v);
    }
    fn push_opt(&mut self, v: Option<f64>) {
        if let Some(v) = v {
            self.v.push(v);
        }
    }
    /// A run's result; a hung or failed build is counted here instead of ending the bench.
    fn survive<T>(&mut self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.downcast_ref::<Lost>() {
                Some(lost) => {
                    eprintln!("compare: {e}");
                    match lost {
                        Lost::Hung(_) => self.hung += 1,
                        Lost::Failed(_) => self.failed += 1,
                    }
                    Ok(None)
                }
                None => Err(e),
            },
        }
    }
    /// "(min–max)", for measures whose spread matters to reading the median.
    fn range(&self) -> String {
        let lo = self.v.iter().copied().reduce(f64::min);
        let hi = self.v.iter().copied().reduce(f64::max);
        match lo.zip(hi) {
            Some((lo, hi)) => format!("({lo:.0}–{hi:.0})"),
            None => String::new(),
        }
    }
    /// The median with the counts of lost runs, as a table cell.
    fn cell(&self, unit: &Unit) -> String {
        let mut m = fmt(self.median(), unit);
        let n = self.v.len() + self.hung + self.failed;
        for (k, what) in [(self.hung, "hung"), (self.failed, "failed")] {
            if k > 0 {
                let _ = write!(m, " ({k} of {n} {what})");
            }
        }
        m
    }
    fn median(&self) -> Option<f64> {
        if self.v.is_empty() {
            return None;
        }
        let mut v = self.v.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

struct Row {
    measure: String,
    bkrun: String,
    other_name: String,
    other: String,
    ratio: String,
    target: String,
    met: String,
}

enum Unit {
    Ms,
    S,
    MBps,
    MiB,
}

fn fmt(v: Option<f64>, u: &Unit) -> String {
    match v {
        None => "n/a".into(),
        Some(v) => match u {
            Unit::Ms => format!("{v:.1} ms"),
            Unit::S => format!("{v:.2} s"),
            Unit::MBps => format!("{v:.0} MB/s"),
            Unit::MiB => format!("{v:.1} MiB"),
        },
    }
}

/// A target's label and its test on the ratio.
type Target = (&'static str, fn(f64) -> bool);

/// A row comparing two medians by ratio (bkrun ÷ other), with an optional ratio target.
fn ratio_row(
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

fn render(rows: &[Row]) -> String {
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

const ANCHOR: &str = "anchor (buildctl-daemonless.sh algorithm)";

// ---------------------------------------------------------------------------------------------
// Cases

/// A trivial, fully cached build, end to end, on one warm state dir.
fn case_cached(w: &World, rounds: usize) -> Result<Vec<Row>> {
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
    Ok(vec![
        ratio_row(
            format!("cached trivial build, daemonless, wall (n={n})"),
            &ours,
            ANCHOR,
            &theirs,
            Unit::Ms,
            Some(("≤ 0.5×", |r| r <= 0.5)),
        ),
        Row {
            measure: format!("… the anchor's killed buildkitd lingers after its exit (n={n})"),
            bkrun: "0 (waits)".into(),
            other_name: ANCHOR.into(),
            other: linger.cell(&Unit::Ms),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        },
    ])
}

/// Spawn→ready three ways, and teardown after the build's result.
fn case_ready(w: &World, rounds: usize) -> Result<Vec<Row>> {
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
fn case_cold(w: &World, ctx: &Path, label: &str, rounds: usize) -> Result<Vec<Row>> {
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
fn case_export(w: &World, ctx: &Path, label: &str, rounds: usize) -> Result<Vec<Row>> {
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

/// Sets every file's mtime under `dir` to `t`, so the daemon sees changed files and re-transfers them.
fn touch_tree(dir: &Path, t: SystemTime) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            touch_tree(&p, t)?;
        } else {
            File::open(&p)?.set_modified(t)?;
        }
    }
    Ok(())
}

/// The client side alone: bkrun --addr vs buildctl --addr against one warm `bkrun daemon`, each run
/// after a fresh touch of the context; peak RSS and CPU time from wait4's rusage.
fn case_client(w: &World, rounds: usize, big_rounds: usize) -> Result<Vec<Row>> {
    let mut d = w.bkrun();
    d.arg("--root").arg(&w.warm).arg("daemon");
    let stdout = File::create(w.work.join("daemon.out"))?;
    d.stdout(stdout)
        .stderr(File::create(w.work.join("daemon.err"))?);
    let daemon = spawn(&mut d)?;
    let result: Result<Vec<Row>> = (|| {
        let addr = wait_for_line(&w.work.join("daemon.out"), &daemon)?;
        let mut rows = Vec::new();
        let mut stamp = SystemTime::now();
        for (ctx, label, n) in [
            (&w.small, "20,000 × 4 KiB", rounds),
            (&w.big, "1 GiB file", big_rounds),
        ] {
            let args = w.args(ctx, None);
            let mut s: [Series; 8] = Default::default();
            let [o_rss, o_cpu, o_wall, o_rate, b_rss, b_cpu, b_wall, b_rate] = &mut s;
            let mut client = |bkrun: bool| -> Result<()> {
                stamp += Duration::from_secs(1);
                touch_tree(ctx, stamp)?;
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
                let (rss, cpu, wall, rt) = if bkrun {
                    (&mut *o_rss, &mut *o_cpu, &mut *o_wall, &mut *o_rate)
                } else {
                    (&mut *b_rss, &mut *b_cpu, &mut *b_wall, &mut *b_rate)
                };
                let Some(run) = rss.survive(run_logged(&mut c, &w.work.join("client.log")))? else {
                    return Ok(());
                };
                rss.push(run.exit.maxrss_kib / 1024.0);
                cpu.push(ms(run.exit.cpu));
                wall.push(run.wall.as_secs_f64());
                rt.push_opt(rate(&run.stderr, "transferring context"));
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
            rows.push(ratio_row(
                format!("client peak RSS, {label} context, warm daemon (n={n})"),
                o_rss,
                "buildctl (warm daemon)",
                b_rss,
                Unit::MiB,
                Some(("≤ 0.33×", |r| r <= 1.0 / 3.0)),
            ));
            rows.push(ratio_row(
                format!("client CPU time (user+sys), {label}"),
                o_cpu,
                "buildctl (warm daemon)",
                b_cpu,
                Unit::Ms,
                None,
            ));
            rows.push(ratio_row(
                format!("client build wall, {label}"),
                o_wall,
                "buildctl (warm daemon)",
                b_wall,
                Unit::S,
                None,
            ));
            rows.push(ratio_row(
                format!("… context transfer rate, {label}, warm daemon"),
                o_rate,
                "buildctl (warm daemon)",
                b_rate,
                Unit::MBps,
                None,
            ));
        }
        Ok(rows)
    })();
    signal(daemon.pid, libc::SIGTERM);
    let exit = daemon.wait()?;
    let rows = result?;
    // bkrun exits with 128+SIGTERM after a clean stop.
    if !(libc::WIFEXITED(exit.status) && libc::WEXITSTATUS(exit.status) == 128 + libc::SIGTERM) {
        eprintln!("compare: bkrun daemon ended with {}", exit.describe());
    }
    Ok(rows)
}

/// The first line `bkrun daemon` prints: its address, once it serves.
fn wait_for_line(path: &Path, daemon: &Proc) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut line = String::new();
        BufReader::new(File::open(path)?).read_line(&mut line)?;
        if line.ends_with('\n') {
            return Ok(line.trim().to_string());
        }
        if daemon.wait_timeout(Duration::from_millis(10))?.is_some() {
            bail!("bkrun daemon exited before serving; see daemon.err");
        }
        if Instant::now() > deadline {
            bail!("bkrun daemon printed no address in 2 minutes");
        }
    }
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

fn case_size() -> Result<Row> {
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

// ---------------------------------------------------------------------------------------------
// BENCHMARKS.md

fn first_line(program: &str, arg: &str) -> String {
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

fn document(table: &str, rounds: usize, big_rounds: usize, took: Duration) -> Result<String> {
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
        "Written by `cargo bench --bench compare` (benches/compare.rs; needs root and scripts/setup). \
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
         The cached, ready and export cases share one warm state dir; cold builds get a fresh one per run.\n\
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
         `bkrun daemon`; the context's mtimes are touched before every run so it is transferred again.\n",
    );
    Ok(s)
}
