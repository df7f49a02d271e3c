//! Child processes: bkrun is a child subreaper that reaps every child (it may be PID 1), hands exit statuses to whoever waits, and kills what is left at teardown.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => {
                let name = Signal::try_from(*s).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

type Waiters = Arc<Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>>;

/// The running reaper, for code that runs helper programs far from where bkrun started it.
static GLOBAL: std::sync::OnceLock<Reaper> = std::sync::OnceLock::new();

/// Runs `cmd` to completion with `input` on its stdin and returns its exit, stdout and stderr.
/// Blocking; call it off the async threads. Once the reaper runs, every child must be spawned
/// through it: std's own wait would race the reaping thread and fail with ECHILD.
pub fn output(cmd: &mut Command, input: &[u8]) -> io::Result<(Exit, Vec<u8>, Vec<u8>)> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Some(reaper) = GLOBAL.get() else {
        let mut child = cmd.spawn()?;
        child.stdin.take().expect("piped").write_all(input)?;
        let out = child.wait_with_output()?;
        let exit = match (
            out.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&out.status),
        ) {
            (Some(c), _) => Exit::Code(c),
            (None, s) => Exit::Signal(s.unwrap_or(libc::SIGKILL)),
        };
        return Ok((exit, out.stdout, out.stderr));
    };
    let (mut child, mut pipes) = reaper.spawn_piped(cmd)?;
    if let Some(mut stdin) = pipes.stdin.take() {
        stdin.write_all(input)?;
    }
    // stderr is read on its own thread so a chatty helper cannot block on a full pipe.
    let err_reader = pipes.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            buf
        })
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = pipes.stdout.take() {
        out.read_to_end(&mut stdout)?;
    }
    let stderr = err_reader
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let exit = futures::executor::block_on(child.wait());
    Ok((exit, stdout, stderr))
}

/// The standard streams of a child spawned with pipes.
pub struct Pipes {
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

/// Owns reaping for the whole process. Start it once, before spawning anything.
#[derive(Clone)]
pub struct Reaper {
    waiters: Waiters,
}

/// A child started through the reaper.
#[derive(Clone, Debug)]
pub struct Child {
    pub pid: i32,
    exit: watch::Receiver<Option<Exit>>,
}

impl Reaper {
    /// Makes bkrun a child subreaper, so orphans of its children (a build's background processes,
    /// rootlesskit's children) come back to it instead of to init, and starts the reaping thread.
    pub fn start() -> io::Result<Reaper> {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let waiters: Waiters = Arc::default();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        let w = waiters.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                reap_all(&w);
                for _ in signals.forever() {
                    reap_all(&w);
                }
            })?;
        let reaper = Reaper { waiters };
        let _ = GLOBAL.set(reaper.clone());
        Ok(reaper)
    }

    /// Spawns `cmd`. The lock is held across the spawn so the reaping thread cannot collect this
    /// child before it is registered (std's spawn also waits on a child whose exec failed).
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        self.spawn_piped(cmd).map(|(child, _)| child)
    }

    /// Like `spawn`, for a child that sets its own parent-death signal and checks that its
    /// parent is still there (bkrun's own init, told by nsinit::PARENT_ENV): without a pre-exec
    /// hook, std spawns by vfork (posix_spawn) and does not copy bkrun's page tables. Only from
    /// the main thread (`on_main_thread`), as the signal follows the spawning thread.
    pub fn spawn_self_guarded(&self, cmd: &mut Command) -> io::Result<Child> {
        self.register(cmd, false).map(|(child, _)| child)
    }

    /// Starts `spec` as PID 1 of new PID and mount namespaces (see pid1.rs), registered like
    /// `spawn`. Only from the main thread (`on_main_thread`), as the child's parent-death
    /// signal follows the spawning thread.
    pub fn spawn_pid1(
        &self,
        spec: &super::pid1::Spec,
    ) -> Result<(Child, super::pid1::Started), super::pid1::Refused> {
        self.register_cloned(|| super::pid1::spawn(spec), |s| s.pid)
    }

    /// Starts `spec`'s program under bkrun's watchdog init without waiting for the init's exec
    /// (see guard.rs), registering the init like `spawn`. Only from the main thread
    /// (`on_main_thread`), as the init's parent-death signal follows the spawning thread.
    pub fn spawn_guarded(
        &self,
        spec: &super::guard::Spec,
    ) -> Result<(Child, super::guard::Started), super::guard::Refused> {
        self.register_cloned(|| super::guard::spawn(spec), |s| s.pid)
    }

    /// Runs `clone` (a child started by clone(2), not by std) with the reaper's lock held, so
    /// the reaping thread cannot collect the child before its waiter is registered.
    fn register_cloned<S, E>(
        &self,
        clone: impl FnOnce() -> Result<S, E>,
        pid_of: impl Fn(&S) -> i32,
    ) -> Result<(Child, S), E> {
        let mut waiters = self.waiters.lock().unwrap();
        let started = clone()?;
        let pid = pid_of(&started);
        let (tx, rx) = watch::channel(None);
        waiters.insert(pid, tx);
        Ok((Child { pid, exit: rx }, started))
    }

    /// Like `spawn`, also handing back the pipes `cmd` asked for.
    pub fn spawn_piped(&self, cmd: &mut Command) -> io::Result<(Child, Pipes)> {
        self.register(cmd, true)
    }

    /// Spawns `cmd` and registers its waiter; `guard`: set its parent-death signal before exec.
    fn register(&self, cmd: &mut Command, guard: bool) -> io::Result<(Child, Pipes)> {
        // A child dies with bkrun even if bkrun is SIGKILLed. The parent-death signal follows the
        // spawning thread, so it is only set when that is the main thread, which lives as long as bkrun.
        if guard && on_main_thread() {
            // SAFETY: pre_exec runs between fork and exec, where only async-signal-safe calls
            // are allowed; set_pdeathsig is one prctl syscall and allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                    Ok(())
                });
            }
        }
        let mut waiters = self.waiters.lock().unwrap();
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = watch::channel(None);
        waiters.insert(pid, tx);
        let pipes = Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        };
        Ok((Child { pid, exit: rx }, pipes))
    }
}

/// Whether this is bkrun's main thread, which lives as long as bkrun: the only one whose
/// children may get a parent-death signal.
pub fn on_main_thread() -> bool {
    nix::unistd::gettid() == nix::unistd::getpid()
}

fn reap_all(waiters: &Waiters) {
    let mut waiters = waiters.lock().unwrap();
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(tx) = waiters.remove(&pid.as_raw()) {
            let _ = tx.send(Some(exit));
        }
    }
}

impl Child {
    /// Waits for the child to end.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(e) = *self.exit.borrow_and_update() {
                return e;
            }
            if self.exit.changed().await.is_err() {
                // The reaper never drops a sender before sending; treat it as gone.
                return Exit::Signal(libc::SIGKILL);
            }
        }
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn signal(&self, sig: Signal) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) -> Exit {
        self.signal(Signal::SIGTERM);
        self.wait_or_kill(grace).await
    }

    /// Waits up to `grace` for a child already asked to stop, then SIGKILLs it.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> Exit {
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// True when /proc shows this process's own PID namespace. A PID-namespaced bkrun that still sees
/// the host's /proc must not act on the PIDs it reads there: they name other processes.
fn proc_is_ours() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    stat.split(' ').next().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id())
}

/// Every live descendant of `root`, parents before their children (none when /proc is not ours).
pub fn descendants(root: i32) -> Vec<i32> {
    if !proc_is_ours() {
        return Vec::new();
    }
    descendants_by_children(root).unwrap_or_else(|| descendants_by_scan(root))
}

/// Through each task's `children` list: only the subtree is read, where a scan reads every
/// process on the machine (teardown asks twice, on a busy node 2 ms of the stop). None when a
/// list cannot be read but its process is there (a kernel without CONFIG_PROC_CHILDREN, or a
/// process of another user, which ptrace rules hide the lists of): the scan then finds them all.
fn descendants_by_children(root: i32) -> Option<Vec<i32>> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        match children(p) {
            Ok(kids) => found.extend(kids),
            // Exited meanwhile: it has no children left, and its orphans show up on the next round.
            Err(e) if e.kind() == io::ErrorKind::NotFound && i > 0 => {}
            Err(_) => return None,
        }
        i += 1;
    }
    found.remove(0);
    Some(found)
}

/// The children of every thread of `pid` (a child belongs to the thread that forked it).
fn children(pid: i32) -> io::Result<Vec<i32>> {
    let mut kids = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = t?.path();
        let list = match std::fs::read_to_string(task.join("children")) {
            Ok(l) => l,
            // A thread that ended between the listing and the read; a live one without the
            // file is a kernel without the lists, which the caller answers with a scan.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !task.exists() => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e))
            }
            Err(e) => return Err(e),
        };
        kids.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Ok(kids)
}

/// Through /proc's parent links, reading every process's stat.
fn descendants_by_scan(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = read_ppid(pid) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// A process's command name (the kernel's 15-byte `comm`).
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// `pid`'s parent, as /proc/PID/stat gives it.
fn read_ppid(pid: i32) -> Option<i32> {
    super::parse::stat_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Kills every descendant of bkrun and waits until they are reaped: the last step of teardown,
/// so no daemon, rootlesskit, runc or build process outlives the run. Returns how many it killed.
pub async fn kill_all_descendants(deadline: Duration) -> usize {
    let me = std::process::id() as i32;
    let start = Instant::now();
    if me == 1 {
        // As a PID namespace's init everything else in it is ours, and kill(-1) reaches exactly
        // that, whichever /proc is mounted. It succeeds while any process (even a zombie) is left.
        let mut rounds = 0;
        while kill(Pid::from_raw(-1), Signal::SIGKILL).is_ok() && start.elapsed() < deadline {
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return rounds;
    }
    if no_children() {
        return 0;
    }
    let mut killed = 0;
    while start.elapsed() <= deadline {
        match sigkill_descendants(me) {
            None => break,
            Some(n) => killed += n,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed
}

/// Whether bkrun has no child at all, not even an unreaped one. Then it has no descendant
/// either: as a subreaper it gets an orphan as its child before the orphan's parent is gone. One
/// syscall, where reading the children lists of every thread is a dozen /proc reads; WNOWAIT
/// leaves any exit status to the reaping thread.
fn no_children() -> bool {
    use nix::sys::wait::{waitid, Id};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    waitid(Id::All, flags) == Err(nix::errno::Errno::ECHILD)
}

/// SIGKILLs every descendant of `root` once: how many took the signal, or None when none is
/// left. Callers repeat it until None, reaping in between, as a killed parent's orphans come
/// back to the subreaper and show up on the next round.
pub fn sigkill_descendants(root: i32) -> Option<usize> {
    let left = descendants(root);
    if left.is_empty() {
        return None;
    }
    Some(
        left.into_iter()
            .filter(|pid| kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok())
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_lists_and_the_scan_find_the_same_tree() {
        // sh → sleep, sh → sh → sleep: a tree two levels deep.
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sh -c 'sleep 5 & wait' & wait"])
            .spawn()
            .unwrap();
        let root = c.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let tree = loop {
            let t = descendants_by_scan(root);
            if t.len() >= 3 || Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let by_children = descendants_by_children(root);
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        for p in &tree {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        let _ = c.wait();
        let Some(mut by_children) = by_children else {
            return; // a kernel without /proc/PID/task/TID/children
        };
        let mut tree = tree;
        tree.sort_unstable();
        by_children.sort_unstable();
        assert_eq!(by_children, tree);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn ppid_parses_names_with_parentheses() {
        assert_eq!(
            read_ppid(std::process::id() as i32),
            Some(nix::unistd::getppid().as_raw())
        );
    }
}
