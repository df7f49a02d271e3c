//! Starts a program as PID 1 of a new PID and mount namespace by one clone(2) from bkrun itself, with a /proc of its own: the privileged daemon's start without bkrun's `__nsinit` in between.
//!
//! The guarantees are the init's (daemon/nsinit.rs): the child's parent-death signal is SIGKILL,
//! so when bkrun dies, even by SIGKILL, the program dies, and as PID 1 its death makes the kernel
//! SIGKILL everything left in its namespace; the mount namespace, /proc and its mounts go with
//! its last process. What the init added on top — passing signals on, reaping orphans — the
//! daemon does not need as PID 1: bkrun signals it directly, and Go installs handlers for the
//! signals bkrun sends, which PID 1 needs to receive them. The init's own start cost about
//! 2 ms of every privileged start and 1.5 ms of every stop (BENCHMARKS.md's timeline).
//!
//! The clone is posix_spawn's: CLONE_VM | CLONE_VFORK on a stack of its own, so bkrun's page
//! tables are not copied and bkrun's thread waits until the exec. The child only makes system
//! calls on data prepared before the clone, with every signal blocked until its handlers are
//! reset, and reports a failure through memory it shares with bkrun.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;

use super::vfork;

/// What the child was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Setting its parent-death signal.
    DeathSignal,
    /// Making / a slave mount, so that nothing mounted inside shows outside (/ is not a mount
    /// point, as in a plain chroot).
    Propagation,
    /// Mounting the namespace's /proc (a masked /proc, or a refusal).
    Proc,
    /// Making itself a process group of its own or placing its standard streams.
    Setup,
    /// Executing the program.
    Exec,
}

/// Why the program was not started.
#[derive(Debug)]
pub enum Refused {
    /// The namespaces could not be made (clone's error: no right to, or a seccomp refusal),
    /// or their /proc could not be mounted: start it another way.
    Namespaces(io::Error),
    /// The program itself could not be executed.
    Exec(io::Error),
}

/// The program to start and what it gets.
pub struct Spec<'a> {
    pub argv: &'a [String],
    /// The whole environment, as `NAME=value`.
    pub env: Vec<OsString>,
    /// Its stdin.
    pub stdin: BorrowedFd<'a>,
    /// Its stdout and stderr.
    pub log: BorrowedFd<'a>,
}

/// A started program: its pid (in bkrun's namespace) and when, on CLOCK_MONOTONIC, the child
/// began and when it was about to exec (the timeline's `nsinit` and `nsexec`).
pub struct Started {
    pub pid: i32,
    pub began_ns: u64,
    pub exec_ns: u64,
}

/// Everything the child reads, prepared before the clone, and the slots it writes.
#[repr(C)]
struct Shared {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdin: libc::c_int,
    log: libc::c_int,
    /// bkrun itself, as a pidfd: readable once bkrun has exited.
    parent: libc::c_int,
    began_ns: u64,
    exec_ns: u64,
    /// 0, or 1 + the failed `Stage`'s index.
    failed: libc::c_int,
    errno: libc::c_int,
}

/// Starts `spec` as PID 1 of new PID and mount namespaces. Call it from bkrun's main thread
/// (the parent-death signal follows the thread that forked), with the reaper's lock held so the
/// child is registered before it can be reaped.
pub fn spawn(spec: &Spec) -> Result<Started, Refused> {
    let cstr = |s: Vec<u8>| CString::new(s).map_err(|e| Refused::Exec(io::Error::other(e)));
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a.clone().into_bytes()))
        .collect::<Result<_, _>>()?;
    let envv: Vec<CString> = spec
        .env
        .iter()
        .map(|e| cstr(e.clone().into_vec()))
        .collect::<Result<_, _>>()?;
    let Some(path) = argv.first() else {
        return Err(Refused::Exec(io::Error::other("no program to start")));
    };
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envv.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: pidfd_open of our own pid has no memory arguments; the fd it returns is
    // close-on-exec and owned here.
    let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if parent < 0 {
        return Err(Refused::Namespaces(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let parent =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(parent as i32) };
    // Standard streams that are themselves 0, 1 or 2 (bkrun started with one closed) moved up,
    // so the child's dup2 onto 0, 1 and 2 always makes a fresh, inheritable descriptor.
    let stdin = vfork::high_fd(spec.stdin).map_err(Refused::Exec)?;
    let log = vfork::high_fd(spec.log).map_err(Refused::Exec)?;
    let mut shared = Shared {
        path: path.as_ptr(),
        argv: argp.as_ptr(),
        envp: envp.as_ptr(),
        stdin: stdin.as_raw_fd(),
        log: log.as_raw_fd(),
        parent: parent.as_raw_fd(),
        began_ns: 0,
        exec_ns: 0,
        failed: 0,
        errno: 0,
    };
    let (stack, top) = vfork::stack();
    let flags =
        libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
    // Every signal blocked across the clone; the child resets handlers, then unblocks.
    let held = vfork::SignalsHeld::new();
    // SAFETY: `child` runs on `stack`, which outlives it (CLONE_VFORK: this thread resumes
    // only once the child has exec'd or exited), and only reads `shared` and writes its
    // result slots, which this frame owns for as long.
    let pid = unsafe {
        libc::clone(
            child,
            top,
            flags,
            &mut shared as *mut Shared as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    drop((held, stack));
    if pid < 0 {
        return Err(Refused::Namespaces(clone_error));
    }
    // Read after the vfork: the child wrote these before its exec or exit.
    let failed = unsafe { std::ptr::read_volatile(&shared.failed) };
    if failed != 0 {
        let e = io::Error::from_raw_os_error(unsafe { std::ptr::read_volatile(&shared.errno) });
        // The child has exited (CLONE_VFORK): reaped here, by its pid, so no zombie is left
        // and no other waiter sees it (the caller holds the reaper's lock).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(if failed == failed_code(Stage::Exec) {
            Refused::Exec(e)
        } else {
            Refused::Namespaces(e)
        });
    }
    // SAFETY: plain reads of slots the child wrote before its exec.
    let (began_ns, exec_ns) = unsafe {
        (
            std::ptr::read_volatile(&shared.began_ns),
            std::ptr::read_volatile(&shared.exec_ns),
        )
    };
    Ok(Started {
        pid,
        began_ns,
        exec_ns,
    })
}

/// What the child writes in `failed` when `stage` failed.
fn failed_code(stage: Stage) -> libc::c_int {
    1 + stage as libc::c_int
}

/// Ends the child, noting what failed for bkrun to read.
///
/// # Safety
/// Only in the child, with `s` the shared block.
unsafe fn fail(s: *mut Shared, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    std::ptr::write_volatile(&mut (*s).errno, errno);
    std::ptr::write_volatile(&mut (*s).failed, failed_code(stage));
    libc::_exit(127)
}

/// The child, PID 1 of the new namespaces, on its own stack in bkrun's memory: system calls
/// only, no allocation, no lock.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    let s = arg as *mut Shared;
    // SAFETY: `arg` is the Shared block `spawn` prepared and keeps alive across the vfork; every
    // call below is a system call (or libc's thin wrapper of one) on data prepared before it;
    // timeline::now is one clock_gettime through nix, which allocates nothing.
    unsafe {
        (*s).began_ns = crate::timeline::now();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(s, Stage::DeathSignal);
        }
        // bkrun killed before the line above: nobody would stop this child.
        let mut p = libc::pollfd {
            fd: (*s).parent,
            events: libc::POLLIN,
            revents: 0,
        };
        match libc::poll(&mut p, 1, 0) {
            0 => {}
            gone if gone > 0 => libc::_exit(125),
            _ => fail(s, Stage::Setup),
        }
        // Mounts made in here do not propagate back out (those made outside still come in):
        // the supervisor counts on it, and reads no mount table at teardown (see `contained`).
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            fail(s, Stage::Propagation);
        }
        // runc looks its children up in /proc by the PIDs it sees.
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            fail(s, Stage::Proc);
        }
        // Its own process group: a Ctrl-C in the terminal reaches bkrun, which stops it in order.
        if libc::setpgid(0, 0) != 0
            || libc::dup2((*s).stdin, 0) < 0
            || libc::dup2((*s).log, 1) < 0
            || libc::dup2((*s).log, 2) < 0
        {
            fail(s, Stage::Setup);
        }
        vfork::default_handlers();
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        (*s).exec_ns = crate::timeline::now();
        libc::execve((*s).path, (*s).argv, (*s).envp);
        fail(s, Stage::Exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn run(argv: &[&str]) -> (Result<Started, Refused>, String) {
        let log = tempfile::tempfile().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let spec = Spec {
            argv: &argv,
            env: vec!["PATH=/usr/bin:/bin".into()],
            stdin: null.as_fd(),
            log: log.as_fd(),
        };
        let r = spawn(&spec);
        // Waited for by its pid: tests run on parallel threads of one process, and a wait for
        // any child could take another test's (a failed child is reaped by spawn itself).
        if let Ok(started) = &r {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
        }
        let mut out = String::new();
        use std::io::{Read, Seek};
        let mut log = log;
        log.rewind().unwrap();
        log.read_to_string(&mut out).unwrap();
        (r, out)
    }

    #[test]
    fn the_program_is_pid_1_with_a_proc_of_its_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making PID and mount namespaces needs root");
            return;
        }
        let (r, out) = run(&[
            "/bin/sh",
            "-c",
            "echo pid=$$ env=$PATH procs=$(ls /proc | grep -c '^[0-9]') pgid=$(cut -d' ' -f5 /proc/self/stat)",
        ]);
        let started = r.map_err(|e| format!("{e:?}")).unwrap();
        assert!(started.began_ns > 0 && started.exec_ns >= started.began_ns);
        // Itself and the pipeline it runs: this namespace's /proc, not the host's hundreds.
        assert!(out.starts_with("pid=1 env=/usr/bin:/bin procs="), "{out}");
        let procs: u32 = out
            .split("procs=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(procs <= 5, "{out}");
        // Its own process group, as PID 1 of its namespace.
        assert!(out.trim_end().ends_with("pgid=1"), "{out}");
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_exec_refusal() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making PID and mount namespaces needs root");
            return;
        }
        match run(&["/nonexistent/buildkitd"]).0 {
            Err(Refused::Exec(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected an exec refusal, got {:?}", other.map(|s| s.pid)),
        }
    }
}
