//! The daemon's init: bkrun re-executed as PID 1 of a new PID namespace (and, for the privileged daemon, a new mount namespace), so that when bkrun dies, even by SIGKILL, every build process and every mount of the run dies with it.
//!
//! The chain is bkrun → `bkrun __nsinit` (outside, a plain child with a parent-death signal)
//! → init (PID 1 inside) → buildkitd. A PID namespace ends when its PID 1 does: the kernel then
//! SIGKILLs everything left in it (runc's containers, a RUN step's background processes), and a
//! mount namespace whose last process is gone drops its mounts. The parent-death signals link
//! bkrun's death to init's; nothing here needs bkrun to run any code as it dies.
//!
//! Both processes run before any thread exists (main dispatches here first), so fork is safe.

use std::ffi::CString;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// The hidden first argument that makes `bkrun` this init.
pub const ARG: &str = "__nsinit";
const MOUNT_NS: &str = "--mount-ns";

/// Signals passed on to the daemon: how bkrun (or rootlesskit) asks it to stop.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// `argv` run under the init from `exe` (bkrun itself).
pub fn wrap(exe: &Path, mount_ns: bool, argv: &[String]) -> Vec<String> {
    let mut v = vec![exe.display().to_string(), ARG.to_string()];
    if mount_ns {
        v.push(MOUNT_NS.to_string());
    }
    v.push("--".to_string());
    v.extend(argv.iter().cloned());
    v
}

/// Runs the init; `args` are what follows `__nsinit`. Never returns.
pub fn main(args: &[String]) -> ! {
    let (mount_ns, argv) = match parse(args) {
        Some(p) => p,
        None => {
            crate::say!("bkrun {ARG}: usage: bkrun {ARG} [{MOUNT_NS}] -- COMMAND [ARG...] (internal: bkrun starts buildkitd this way)");
            std::process::exit(125);
        }
    };
    // Dies with whoever started it (bkrun, or rootlesskit's child). Set after exec, so a parent
    // that died in the microseconds before this line goes unnoticed; the ends of the chain
    // (bkrun's spawn, init below) set it before exec or fork, where there is no such window.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    // Blocked and taken with sigwait: PID 1 of a namespace drops signals it has no handler for,
    // but a blocked signal is always queued.
    let _ = waited.thread_block();
    let mut flags = CloneFlags::CLONE_NEWPID;
    if mount_ns {
        flags |= CloneFlags::CLONE_NEWNS;
    }
    if let Err(e) = nix::sched::unshare(flags) {
        crate::say!("bkrun: warning: cannot give buildkitd its own namespaces ({e}); if bkrun is killed with SIGKILL, build processes may outlive it");
        let _ = waited.thread_unblock();
        exec(&argv);
    }
    // SAFETY: single-threaded (see the module comment); the child only makes syscalls and execs.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => init(mount_ns, &argv, &waited),
        Ok(ForkResult::Parent { child }) => outer(child, &waited),
        Err(e) => {
            crate::say!("bkrun {ARG}: cannot fork the namespace's init: {e}");
            std::process::exit(125);
        }
    }
}

fn parse(args: &[String]) -> Option<(bool, Vec<String>)> {
    let mut mount_ns = false;
    let mut it = args.iter();
    for a in it.by_ref() {
        match a.as_str() {
            MOUNT_NS => mount_ns = true,
            "--" => break,
            _ => return None,
        }
    }
    let argv: Vec<String> = it.cloned().collect();
    (!argv.is_empty()).then_some((mount_ns, argv))
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
            Ok(s) => {
                let _ = kill(init, s);
            }
            Err(_) => {}
        }
    }
}

/// PID 1 inside: starts the command, reaps every orphan, passes signals on, and ends when the
/// command does, which ends the namespace.
fn init(mount_ns: bool, argv: &[String], waited: &SigSet) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if mount_ns {
        use nix::mount::{mount, MsFlags};
        // Mounts made in here (overlay snapshots) must not propagate back out; mounts made
        // outside still come in.
        let _ = mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        );
        // A /proc of this namespace, so the daemon sees its own processes. Best effort: a
        // masked /proc refuses a fresh mount, and the old one works too.
        let _ = mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
    }
    // SAFETY: still single-threaded.
    let daemon = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = waited.thread_unblock();
            exec(argv);
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            crate::say!("bkrun {ARG}: cannot fork the daemon: {e}");
            std::process::exit(125);
        }
    };
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(daemon) {
                    // PID 1 cannot die by its own signal: a signal is passed up as 128+N, and
                    // `outer` turns it back into that signal.
                    std::process::exit(code);
                }
            }
            Ok(s) => {
                let _ = kill(daemon, s);
            }
            Err(_) => {}
        }
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
                MOUNT_NS,
                "--",
                "/usr/bin/buildkitd",
                "--debug"
            ]
        );
        assert_eq!(parse(&w[2..]), Some((true, argv.clone())));
        assert_eq!(parse(&w[3..]), Some((false, argv)));
        assert_eq!(parse(&["--".to_string()]), None);
        assert_eq!(parse(&["--bogus".to_string()]), None);
    }
}
