//! The daemon's init: bkrun re-executed between the daemon and whoever started it, so that when bkrun dies, even by SIGKILL, every build process (and, privileged, every mount) of the run dies with it.
//!
//! Where a fresh /proc can be mounted (and neither bkrun's clone nor rootlesskit's `--pidns`
//! made the namespace already, see below) it makes a PID and mount namespace: bkrun →
//! `bkrun __nsinit --pidns` (outside, with a parent-death signal) → init (PID 1 inside, cloned
//! into the new namespaces) → buildkitd. A PID namespace ends when its PID 1 does, the kernel
//! SIGKILLing everything left in it (runc's containers, a RUN step's background processes), and
//! a mount namespace whose last process is gone drops its mounts. The new /proc matters: runc
//! looks its children up there by the PIDs it sees.
//!
//! With a masked /proc (rootless-strict) no procfs can be mounted, so no PID namespace can work;
//! there it is a watchdog instead: a child subreaper (orphans of the build come back to it) whose
//! parent-death signal is one it catches, and on which it kills everything below it. It runs
//! around rootlesskit (`bkrun __nsinit -- rootlesskit …`), as the owner of rootlesskit's user
//! namespace, which may kill every process in it; bkrun starts it with `--adopt PID` after
//! rootlesskit itself (host/guard.rs), so rootlesskit's start does not wait for this one's.
//!
//! Both run before any thread exists (main dispatches here first), so fork is safe.
//!
//! A privileged bkrun starts buildkitd as PID 1 of those namespaces itself (host/pid1.rs) and
//! runs this init only where that is refused. In rootless mode rootlesskit's own `--pidns` makes
//! the namespace (daemon/plan.rs); this init runs under rootlesskit only where the user's
//! rootlesskit flags turn that namespace off.

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// The hidden first argument that makes `bkrun` this init.
pub const ARG: &str = "__nsinit";
/// Set by a bkrun that spawns the init itself (privileged): its pid. The init sets its own
/// parent-death signal and ends at once if its parent is already another process, so bkrun can
/// spawn it without a pre-exec hook: by vfork (posix_spawn), without copying bkrun's page
/// tables, where a fork took about 0.4 ms more of every start.
pub const PARENT_ENV: &str = "BKRUN_INIT_PARENT";

/// The init's timeline marks: started, and buildkitd about to be exec'd.
pub const MARKS: [&str; 2] = ["nsinit", "nsexec"];
const PIDNS: &str = "--pidns";
/// `--adopt PID`: the watchdog of a child it already has (host/guard.rs cloned it, then
/// exec'd this init), instead of one it starts.
pub const ADOPT: &str = "--adopt";

/// Signals passed on to the daemon: how bkrun (or rootlesskit) asks it to stop.
const FORWARDED: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
];
/// The watchdog's parent-death signal: one nobody sends, so it can only mean the parent died.
pub const PARENT_GONE: Signal = Signal::SIGPWR;

/// `argv` run under the init from `exe` (bkrun itself); `pidns` where a /proc can be mounted.
pub fn wrap(exe: &Path, pidns: bool, argv: &[String]) -> Vec<String> {
    let mut v = vec![exe.display().to_string(), ARG.to_string()];
    if pidns {
        v.push(PIDNS.to_string());
    }
    v.push("--".to_string());
    v.extend(argv.iter().cloned());
    v
}

/// Runs the init; `args` are what follows `__nsinit`. Never returns.
pub fn main(args: &[String]) -> ! {
    // With BKRUN_TIMELINE, the marks go to the daemon's log just before buildkitd's exec, where
    // bkrun takes them in (the timeline's "spawn → nsinit → nsexec").
    crate::timeline::init_as(MARKS[0]);
    let Some(how) = parse(args) else {
        crate::say!("bkrun {ARG}: usage: bkrun {ARG} [{PIDNS}] -- COMMAND [ARG...] | {ADOPT} PID (internal: bkrun starts buildkitd this way)");
        std::process::exit(125);
    };
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    waited.add(PARENT_GONE);
    // Blocked and taken with sigwait: PID 1 of a namespace drops signals it has no handler for,
    // but a blocked signal is always queued. Exactly these: an adopting init comes with every
    // signal blocked, kept so through its exec so none sent meanwhile was lost.
    let _ = waited.thread_set_mask();
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    // Not passed on to buildkitd and what it starts.
    std::env::remove_var(PARENT_ENV);
    let (pidns, argv) = match how {
        How::Adopt(child) => {
            guard(parent);
            watch(child, &waited)
        }
        How::Start { pidns, argv } => (pidns, argv),
    };
    if !pidns {
        watchdog(&argv, &waited, parent);
    }
    // Set after exec: a bkrun that spawned the init itself and died before this line is caught
    // by end_if_orphaned; under rootlesskit, its own child is the parent watched.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    end_if_orphaned(parent);
    namespaced(&argv, &waited);
    // A masked /proc the mode did not foresee, or no right to make namespaces: no namespace,
    // a watchdog (the child that tried said why, in the daemon's log).
    watchdog(&argv, &waited, parent)
}

/// Ends the init when the bkrun that spawned it (`parent`) died before its parent-death signal
/// was set: the signal only covers a parent alive when it is set.
fn end_if_orphaned(parent: Option<i32>) {
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        std::process::exit(125);
    }
}

/// Starts the command as the child of PID 1 of a new PID and mount namespace, made by one
/// clone(2) (this process passing signals to that init): this process never leaves its own PID
/// namespace, since a process cannot go back to it for its children once it has left it inside
/// a user namespace, so it can still fall back to the watchdog. Returns only when the
/// namespaces or their /proc could not be made; else ends as the command ended.
///
/// The attempt is the real thing, not a throwaway probe first: the init says over a pipe that
/// its /proc is mounted, and only then starts the command. (A probe's namespace torn down
/// cost about 0.75 ms of every daemon's start; BENCHMARKS.md's timeline.) And one clone with
/// the namespace flags, not a child that unshares and forks the init: a process fewer to start,
/// and one exit fewer between buildkitd's and bkrun's sight of it.
fn namespaced(argv: &[String], waited: &SigSet) {
    let Ok((mounted_r, mounted_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return;
    };
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
    // SAFETY: clone with no new stack is fork with namespace flags (the child runs on a
    // copy-on-write copy of this stack). This process is single-threaded (see the module
    // comment), and the child only makes syscalls, forks through libc, and execs; libc's fork
    // then gives the daemon its own thread id.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        0 => {
            drop(mounted_r);
            init(argv, waited, mounted_w)
        }
        child if child > 0 => {
            let child = Pid::from_raw(child as i32);
            drop(mounted_w);
            let mut byte = [0u8; 1];
            let said = loop {
                match nix::unistd::read(&mounted_r, &mut byte) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    said => break said,
                }
            };
            drop(mounted_r);
            if said == Ok(1) {
                outer(child, waited);
            }
            // The init ended without mounting: reaped before the watchdog starts, so its exit
            // is not taken for the daemon's.
            let _ = waitpid(child, None);
        }
        _ => {
            let e = nix::errno::Errno::last();
            crate::say!("bkrun: warning: cannot give buildkitd its own PID namespace ({e}); watching its processes instead");
        }
    }
}

/// In a new mount namespace: stops mounts propagating back out (mounts made outside still
/// come in), then mounts a /proc of the current PID namespace.
fn mount_private_proc() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    );
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// What the init is asked to do.
#[derive(Debug, PartialEq)]
enum How {
    /// Start `argv`, in new namespaces with `pidns`.
    Start { pidns: bool, argv: Vec<String> },
    /// Watch a child it already has.
    Adopt(Pid),
}

fn parse(args: &[String]) -> Option<How> {
    if let [adopt, pid] = args {
        let pid = pid.parse::<i32>().ok().filter(|p| *p > 0)?;
        return (adopt == ADOPT).then_some(How::Adopt(Pid::from_raw(pid)));
    }
    let mut pidns = false;
    let mut it = args.iter();
    for a in it.by_ref() {
        match a.as_str() {
            PIDNS => pidns = true,
            "--" => break,
            _ => return None,
        }
    }
    let argv: Vec<String> = it.cloned().collect();
    (!argv.is_empty()).then_some(How::Start { pidns, argv })
}

/// Outside the namespace: passes signals to init and ends as it ended.
fn outer(init: Pid, waited: &SigSet) -> ! {
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(init) {
                    end_as(code);
                }
            }
            Ok(PARENT_GONE) | Err(_) => {}
            Ok(s) => {
                let _ = kill(init, s);
            }
        }
    }
}

/// PID 1 inside: mounts the namespace's /proc (saying so on `mounted`), starts the command,
/// reaps every orphan, passes signals on, and ends when the command does, which ends the
/// namespace.
fn init(argv: &[String], waited: &SigSet, mounted: std::os::fd::OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(e) = mount_private_proc() {
        // Nothing is started without the /proc runc needs: the process that tried falls back.
        crate::say!("bkrun: warning: a new PID namespace here cannot have a /proc of its own ({e}; is /proc masked?); watching buildkitd's processes instead");
        // SAFETY: _exit in a forked child, skipping the parent's atexit work.
        unsafe { libc::_exit(125) }
    }
    if nix::unistd::write(&mounted, &[1]) != Ok(1) {
        // SAFETY: as above.
        unsafe { libc::_exit(125) }
    }
    drop(mounted);
    let daemon = start(argv, waited);
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(daemon) {
                    // PID 1 cannot die by its own signal: a signal is passed up as 128+N, and
                    // `outer` turns it back into that signal.
                    std::process::exit(code);
                }
            }
            Ok(PARENT_GONE) | Err(_) => {}
            Ok(s) => {
                let _ = kill(daemon, s);
            }
        }
    }
}

/// Without a PID namespace: a subreaper that kills everything below it when its parent dies
/// or when the command ends.
fn watchdog(argv: &[String], waited: &SigSet, parent: Option<i32>) -> ! {
    guard(parent);
    let daemon = start(argv, waited);
    watch(daemon, waited)
}

/// The watchdog's parent-death signal and subreaper flag (an adopting init has both already,
/// set before its exec, which keeps them).
fn guard(parent: Option<i32>) {
    let _ = nix::sys::prctl::set_pdeathsig(PARENT_GONE);
    end_if_orphaned(parent);
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Passes signals on to `daemon`; when it ends or the parent dies, kills everything below and
/// ends as the daemon ended.
fn watch(daemon: Pid, waited: &SigSet) -> ! {
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(daemon) {
                    kill_below();
                    end_as(code);
                }
            }
            Ok(PARENT_GONE) => {
                kill_below();
                end_as(128 + Signal::SIGKILL as i32);
            }
            Ok(s) => {
                let _ = kill(daemon, s);
            }
            Err(_) => {}
        }
    }
}

/// Forks and execs the command with the signal mask it would have had.
fn start(argv: &[String], waited: &SigSet) -> Pid {
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = waited.thread_unblock();
            exec(argv);
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            crate::say!("bkrun {ARG}: cannot fork the daemon: {e}");
            std::process::exit(125);
        }
    }
}

/// SIGKILLs every descendant, parents first, and reaps them, for at most a few seconds.
fn kill_below() {
    let me = nix::unistd::getpid().as_raw();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if crate::host::reaper::sigkill_descendants(me).is_none() {
            return;
        }
        reap(Pid::from_raw(0));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps every child that has ended; `Some(code)` once `watched` has (a signal as 128+N).
fn reap(watched: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == watched => result = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == watched => {
                result = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}

/// Exits with `code`, or dies by the signal a code above 128 stands for, so bkrun's report of
/// the daemon's end ("killed by signal 9") reads the same as without the init.
fn end_as(code: i32) -> ! {
    if code > 128 {
        if let Ok(sig) = Signal::try_from(code - 128) {
            // SAFETY: restoring the default action; no handler runs.
            unsafe {
                let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
            }
            let mut only = SigSet::empty();
            only.add(sig);
            let _ = only.thread_unblock();
            let _ = kill(Pid::this(), sig);
        }
    }
    std::process::exit(code)
}

fn exec(argv: &[String]) -> ! {
    let c: Result<Vec<CString>, _> = argv.iter().map(|a| CString::new(a.as_bytes())).collect();
    if let Ok(c) = c {
        crate::timeline::mark(MARKS[1]);
        if let Some(l) = crate::timeline::line() {
            crate::say!("{l}");
        }
        let e = nix::unistd::execvp(&c[0], &c).unwrap_err();
        crate::say!("bkrun {ARG}: cannot run {}: {e}", argv[0]);
    }
    std::process::exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_parse_agree() {
        let argv = vec!["/usr/bin/buildkitd".to_string(), "--debug".to_string()];
        let w = wrap(Path::new("/usr/local/bin/bkrun"), true, &argv);
        assert_eq!(
            w,
            [
                "/usr/local/bin/bkrun",
                ARG,
                PIDNS,
                "--",
                "/usr/bin/buildkitd",
                "--debug"
            ]
        );
        assert_eq!(
            parse(&w[2..]),
            Some(How::Start {
                pidns: true,
                argv: argv.clone()
            })
        );
        assert_eq!(parse(&w[3..]), Some(How::Start { pidns: false, argv }));
        assert_eq!(parse(&["--".to_string()]), None);
        assert_eq!(parse(&["--bogus".to_string()]), None);
        let adopt = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            adopt(&[ADOPT, "4321"]),
            Some(How::Adopt(Pid::from_raw(4321)))
        );
        assert_eq!(adopt(&[ADOPT, "0"]), None);
        assert_eq!(adopt(&[ADOPT, "x"]), None);
    }
}
