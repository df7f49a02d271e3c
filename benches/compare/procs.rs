//! The bench's children: spawning with a pidfd, waiting with a deadline and reaping with wait4's rusage, ending them all when the bench stops.
//!
//! std's Child cannot wait with a timeout nor report a child's own rusage, so the bench keeps the
//! raw pid and a pidfd: the exit is seen the moment it happens, and CPU time and peak RSS are the
//! child's alone.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Every child we started and have not reaped yet: `end_all` ends them if the bench stops early.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A child we started, with a pidfd so its exit time is seen at once, not at the next poll.
pub struct Proc {
    pub pid: i32,
    /// The program, for messages.
    what: String,
    pidfd: OwnedFd,
    pub started: Instant,
    /// CLOCK_MONOTONIC ns just before the spawn: the clock bkrun's BKRUN_TIMELINE marks use.
    pub started_ns: u64,
}

/// How a child ended: when, its status, and its own rusage (wait4).
pub struct Exit {
    pub at: Instant,
    /// CLOCK_MONOTONIC ns when the exit was seen.
    pub at_ns: u64,
    pub status: i32,
    pub maxrss_kib: f64,
    pub cpu: Duration,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else {
            format!("signal {}", libc::WTERMSIG(self.status))
        }
    }
}

pub fn spawn(cmd: &mut Command) -> Result<Proc> {
    spawn_with(cmd, false)
}

/// As `spawn`, with `started_ns` read when the spawn returns: std returns once the child's
/// execve is past its point of no return (vfork: the parent resumes there; fork: the exec closes
/// std's close-on-exec pipe there), after the kernel has dropped the child's copy of the bench.
/// bkrun's timeline then starts at its exec, not at the bench's fork of itself and the teardown
/// of that copy (a clock read before the execve, in the child, counts that teardown); the
/// parent's wake-up, a few µs to tens, is taken from bkrun's side instead.
pub fn spawn_stamped(cmd: &mut Command) -> Result<Proc> {
    spawn_with(cmd, true)
}

/// `stamp_after`: `started_ns` read after the spawn returns, not before it is called.
fn spawn_with(cmd: &mut Command, stamp_after: bool) -> Result<Proc> {
    // No BUILDKIT_HOST from the caller's environment: it would point bkrun and buildctl elsewhere.
    cmd.env_remove("BUILDKIT_HOST").stdin(Stdio::null());
    let before_ns = bkrun::timeline::now();
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let started_ns = if stamp_after {
        bkrun::timeline::now()
    } else {
        before_ns
    };
    let pid = child.id() as i32;
    CHILDREN.lock().unwrap().push(pid);
    // Unreaped, the child stays a zombie, so the pidfd can't miss it even if it already exited.
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nix has no wrapper.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just opened for us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(Proc {
        pid,
        what: cmd.get_program().to_string_lossy().into_owned(),
        pidfd,
        started,
        started_ns,
    })
}

impl Proc {
    /// Waits at most `timeout` for the child to exit, then reaps it with its rusage.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Exit>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let r = poll(&mut fds, ms);
            let at = Instant::now();
            let at_ns = bkrun::timeline::now();
            match r {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => bail!("poll: {e}"),
                Ok(0) => return Ok(None),
                Ok(_) => {}
            }
            let mut status = 0;
            // SAFETY: rusage is plain integers, for which all zeros is a valid value.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 only writes the status and rusage we own; nix has no wait4, and
            // waitid's rusage-free status would lose the child's own CPU time and peak RSS.
            let got = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
            if got != self.pid {
                bail!("wait4({}): {}", self.pid, std::io::Error::last_os_error());
            }
            CHILDREN.lock().unwrap().retain(|&p| p != self.pid);
            let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            return Ok(Some(Exit {
                at,
                at_ns,
                status,
                maxrss_kib: ru.ru_maxrss as f64,
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            }));
        }
    }

    /// Waits for the exit; a run stuck for 10 minutes is killed and reported.
    /// SIGTERM, then up to 30 s for the exit before SIGKILL: the exit, and when SIGTERM went
    /// (a daemon's time to stop is `exit.at` minus it).
    pub fn terminate(&self) -> Result<(Exit, Instant)> {
        signal(self.pid, Signal::SIGTERM);
        let sent = Instant::now();
        let exit = match self.wait_timeout(Duration::from_secs(30))? {
            Some(e) => e,
            None => {
                signal(self.pid, Signal::SIGKILL);
                self.wait()?
            }
        };
        Ok((exit, sent))
    }

    pub fn wait(&self) -> Result<Exit> {
        if let Some(e) = self.wait_timeout(Duration::from_secs(600))? {
            return Ok(e);
        }
        signal(self.pid, Signal::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))?;
        bail!(
            "{} (pid {}) ran for more than 10 minutes",
            self.what,
            self.pid
        )
    }
}

/// One finished client run: wall time from spawn to exit, the exit, and what it printed on stderr.
pub struct Run {
    pub wall: Duration,
    /// CLOCK_MONOTONIC ns just before the spawn.
    pub started_ns: u64,
    pub exit: Exit,
    pub stderr: String,
}

/// How long one build may take before it counts as hung: the slowest normal run here takes
/// seconds, and buildctl's local export of many files can deadlock (moby/buildkit#2950).
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A build that failed or hung (killed after its limit): counted in the table, not fatal, since
/// how often each tool does that is part of the comparison.
#[derive(Debug)]
pub enum Lost {
    Hung(String, Duration),
    Failed(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Hung(what, limit) => {
                write!(f, "{what} hung (killed after {} s)", limit.as_secs())
            }
            Lost::Failed(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Lost {}

/// Runs to completion with stderr captured in `log` and fails on a non-zero exit; a run past
/// RUN_LIMIT is stopped (SIGTERM, so bkrun stops its daemon in order; then SIGKILL) as Hung.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<Run> {
    run_logged_within(cmd, log, RUN_LIMIT)
}

/// As `run_logged`, for builds that take longer than RUN_LIMIT by design (a compile).
pub fn run_logged_within(cmd: &mut Command, log: &Path, limit: Duration) -> Result<Run> {
    cmd.stdout(Stdio::null()).stderr(File::create(log)?);
    let p = spawn(cmd)?;
    finish_logged(cmd, p, log, limit)
}

/// As `run_logged`, with `started_ns` read when the spawn returns (`spawn_stamped`).
pub fn run_logged_stamped(cmd: &mut Command, log: &Path) -> Result<Run> {
    cmd.stdout(Stdio::null()).stderr(File::create(log)?);
    let p = spawn_stamped(cmd)?;
    finish_logged(cmd, p, log, RUN_LIMIT)
}

fn finish_logged(cmd: &Command, p: Proc, log: &Path, limit: Duration) -> Result<Run> {
    let Some(exit) = p.wait_timeout(limit)? else {
        signal(p.pid, Signal::SIGTERM);
        if p.wait_timeout(Duration::from_secs(15))?.is_none() {
            signal(p.pid, Signal::SIGKILL);
            p.wait()?;
        }
        return Err(anyhow::Error::new(Lost::Hung(p.what.clone(), limit)));
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
        started_ns: p.started_ns,
        exit,
        stderr,
    })
}

/// The last `n` lines of `s`, for error messages.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line `bkrun daemon` prints: its address, once it serves.
pub fn wait_for_line(path: &Path, daemon: &Proc) -> Result<String> {
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

/// Sends `sig` to `pid`; a child that is already gone is no error here.
pub fn signal(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// Ends every child still running: SIGTERM, then SIGKILL for those alive after `grace`, and reaps them.
pub fn end_all(grace: Duration) {
    let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for &pid in &pids {
        signal(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for &pid in &pids {
        let pid = Pid::from_raw(pid);
        loop {
            // Reaped, or not our child any more: either way nothing is left to wait for.
            if !matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ) {
                break;
            }
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
