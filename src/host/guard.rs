//! Starts a program under bkrun's watchdog init (`bkrun __nsinit --adopt PID`) by two clone(2)s from bkrun itself, so that the program's start does not wait for the init's own exec.
//!
//! The init is rootless-strict's guard (daemon/nsinit.rs): a child subreaper whose
//! parent-death signal is one it catches, killing everything below it when bkrun dies. Spawned
//! the plain way it is exec'd first and only then forks the program, so every start waited for
//! a second start of bkrun (about 1.2 ms to its main). Here the child bkrun clones becomes the
//! init: it sets its parent-death signal and makes itself a subreaper, clones the program's
//! process and lets it exec, and only then execs bkrun as the init, which adopts that child.
//! The subreaper flag and the parent-death signal both survive the exec, and every signal stays
//! blocked from the clone until the init waits for them, so none sent meanwhile is lost.
//!
//! Both clones are posix_spawn's kind (CLONE_VM | CLONE_VFORK on a stack of their own): the
//! calling thread waits, the children only make system calls on data prepared before the
//! first clone, and report a failure through memory they share with bkrun. See pid1.rs, whose
//! child this one's program side mirrors.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use super::vfork;

/// Why the program was not started.
#[derive(Debug)]
pub enum Refused {
    /// A clone, or a step before it, was refused: start the init the plain way.
    Clone(io::Error),
    /// The program could not be executed.
    Exec(io::Error),
    /// bkrun itself could not be executed as the init (the program was killed).
    Init(io::Error),
}

/// The init and the program it guards, and what the program gets.
pub struct Spec<'a> {
    /// The init's argv up to the adopted pid, which is appended: `[bkrun, __nsinit, --adopt]`.
    pub init_argv: &'a [String],
    /// The init's whole environment, as `NAME=value`.
    pub init_env: Vec<OsString>,
    /// The init's parent-death signal: one it catches, and takes to mean bkrun died.
    pub init_death_signal: libc::c_int,
    pub argv: &'a [String],
    /// The program's whole environment, as `NAME=value`.
    pub env: Vec<OsString>,
    /// The program's stdin (the init's too).
    pub stdin: BorrowedFd<'a>,
    /// Both processes' stdout and stderr.
    pub log: BorrowedFd<'a>,
}

/// A started init: its pid (bkrun's child) and, on CLOCK_MONOTONIC, when it began and when the
/// program was about to exec (the timeline's `nsinit` and `nsexec`).
pub struct Started {
    pub pid: i32,
    /// The program's pid, the init's child.
    pub program_pid: i32,
    /// A pidfd of the program, for signalling it directly; None without pidfd_open, or if the
    /// process it names is not the init's child (the program, exec'd microseconds before,
    /// would have had to exit and be reaped, and its pid be taken again).
    pub program: Option<OwnedFd>,
    pub began_ns: u64,
    pub exec_ns: u64,
}

/// What failed, in `Shared::failed`.
const CLONE_FAILED: libc::c_int = 1;
const EXEC_FAILED: libc::c_int = 2;
const INIT_FAILED: libc::c_int = 3;
/// Room for a pid's decimal digits and the NUL.
const PID_ARG: usize = 16;

/// Everything the children read, prepared before the first clone, and the slots they write.
#[repr(C)]
struct Shared {
    init_path: *const libc::c_char,
    init_argv: *const *const libc::c_char,
    init_envp: *const *const libc::c_char,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdin: libc::c_int,
    log: libc::c_int,
    /// bkrun itself, as a pidfd: readable once bkrun has exited.
    parent: libc::c_int,
    init_death_signal: libc::c_int,
    /// The program's stack top.
    stack: *mut libc::c_void,
    /// The adopted pid, in decimal, NUL-terminated: the init's last argument.
    pid_arg: [u8; PID_ARG],
    program_pid: libc::c_int,
    began_ns: u64,
    exec_ns: u64,
    failed: libc::c_int,
    errno: libc::c_int,
}

/// Starts `spec`. Call it from bkrun's main thread (the init's parent-death signal follows the
/// thread that cloned it), with the reaper's lock held so the init is registered before it can
/// be reaped.
pub fn spawn(spec: &Spec) -> Result<Started, Refused> {
    let cstr = |s: Vec<u8>| CString::new(s).map_err(|e| Refused::Exec(io::Error::other(e)));
    let strings = |v: &[String]| -> Result<Vec<CString>, Refused> {
        v.iter().map(|a| cstr(a.clone().into_bytes())).collect()
    };
    let env = |v: &[OsString]| -> Result<Vec<CString>, Refused> {
        v.iter().map(|e| cstr(e.clone().into_vec())).collect()
    };
    let (init_argv, argv) = (strings(spec.init_argv)?, strings(spec.argv)?);
    let (init_envv, envv) = (env(&spec.init_env)?, env(&spec.env)?);
    let (Some(init_path), Some(path)) = (init_argv.first(), argv.first()) else {
        return Err(Refused::Exec(io::Error::other("no program to start")));
    };
    let nulled = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (argp, envp, init_envp) = (nulled(&argv), nulled(&envv), nulled(&init_envv));
    // SAFETY: pidfd_open of our own pid has no memory arguments; the fd is owned below.
    let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if parent < 0 {
        return Err(Refused::Clone(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let parent = unsafe { OwnedFd::from_raw_fd(parent as i32) };
    let stdin = vfork::high_fd(spec.stdin).map_err(Refused::Exec)?;
    let log = vfork::high_fd(spec.log).map_err(Refused::Exec)?;
    let (stack, init_top) = vfork::stack();
    let (program_stack, program_top) = vfork::stack();
    let mut shared = Shared {
        init_path: init_path.as_ptr(),
        init_argv: std::ptr::null(),
        init_envp: init_envp.as_ptr(),
        path: path.as_ptr(),
        argv: argp.as_ptr(),
        envp: envp.as_ptr(),
        stdin: stdin.as_raw_fd(),
        log: log.as_raw_fd(),
        parent: parent.as_raw_fd(),
        init_death_signal: spec.init_death_signal,
        stack: program_top,
        pid_arg: [0; PID_ARG],
        program_pid: 0,
        began_ns: 0,
        exec_ns: 0,
        failed: 0,
        errno: 0,
    };
    // One raw pointer for every access from here on: the children write through it.
    let sp: *mut Shared = &mut shared;
    // The init's argv ends with the pid the child writes into `pid_arg`.
    let mut init_argp: Vec<*const libc::c_char> = init_argv.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: `sp` points at `shared`, alive and not moved for the rest of this frame.
    unsafe {
        init_argp.push((*sp).pid_arg.as_ptr() as *const libc::c_char);
        init_argp.push(std::ptr::null());
        (*sp).init_argv = init_argp.as_ptr();
    }
    // Every signal blocked across the clones; the init keeps them blocked through its exec.
    let held = vfork::SignalsHeld::new();
    // SAFETY: `init` runs on `stack`, which outlives it (CLONE_VFORK: this thread resumes only
    // once the child has exec'd or exited), and only reads `shared` and what it points to, all
    // owned by this frame, and writes its result slots.
    let pid = unsafe {
        libc::clone(
            init,
            init_top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            sp as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    drop((held, stack, program_stack));
    if pid < 0 {
        return Err(Refused::Clone(clone_error));
    }
    // Read after the vfork: the children wrote these before their execs or exits.
    // SAFETY: `sp` is still `shared`; the children are done with it.
    let failed = unsafe { std::ptr::read_volatile(&(*sp).failed) };
    if failed != 0 {
        let e = io::Error::from_raw_os_error(unsafe { std::ptr::read_volatile(&(*sp).errno) });
        // The child has exited: reaped here, by its pid (the caller holds the reaper's lock).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(match failed {
            EXEC_FAILED => Refused::Exec(e),
            INIT_FAILED => Refused::Init(e),
            _ => Refused::Clone(e),
        });
    }
    // SAFETY: plain reads of slots the children wrote before their execs.
    let (program_pid, began_ns, exec_ns) = unsafe {
        (
            std::ptr::read_volatile(&(*sp).program_pid),
            std::ptr::read_volatile(&(*sp).began_ns),
            std::ptr::read_volatile(&(*sp).exec_ns),
        )
    };
    // SAFETY: pidfd_open has no memory arguments; the fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, program_pid, 0) };
    // SAFETY: a fresh descriptor nothing else owns.
    let program = (fd >= 0)
        .then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
        // Opened first, checked second: the pidfd pins the process the check reads.
        .filter(|_| {
            std::fs::read_to_string(format!("/proc/{program_pid}/stat"))
                .ok()
                .and_then(|stat| super::parse::stat_ppid(&stat))
                == Some(pid)
        });
    Ok(Started {
        pid,
        program_pid,
        program,
        began_ns,
        exec_ns,
    })
}

/// Sends `sig` to the process `pidfd` names; false if it could not (it has exited).
pub fn signal(pidfd: &OwnedFd, sig: nix::sys::signal::Signal) -> bool {
    // SAFETY: pidfd_send_signal with a pidfd the caller owns and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Notes what failed for bkrun to read and ends the calling child.
///
/// # Safety
/// Only in a child, with `s` the shared block.
unsafe fn fail(s: *mut Shared, what: libc::c_int) -> ! {
    let errno = *libc::__errno_location();
    std::ptr::write_volatile(&mut (*s).errno, errno);
    std::ptr::write_volatile(&mut (*s).failed, what);
    libc::_exit(127)
}

/// Writes `n` in decimal into `buf`, NUL-terminated (a pid fits with room to spare).
fn decimal(mut n: u32, buf: &mut [u8; PID_ARG]) {
    let mut digits = [0u8; PID_ARG];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
}

/// The init-to-be, on its own stack in bkrun's memory: system calls only, no allocation, no
/// lock.
extern "C" fn init(arg: *mut libc::c_void) -> libc::c_int {
    let s = arg as *mut Shared;
    // SAFETY: `arg` is the Shared block `spawn` keeps alive across the vfork; every call below
    // is a system call (or libc's thin wrapper of one) on data prepared before the clone.
    unsafe {
        (*s).began_ns = crate::timeline::now();
        // The init's own parent-death signal: blocked until it waits for it.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            (*s).init_death_signal as libc::c_ulong,
        ) != 0
            || libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) != 0
        {
            fail(s, CLONE_FAILED);
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
            _ => fail(s, CLONE_FAILED),
        }
        // Its own process group, the program's too: a Ctrl-C in the terminal reaches bkrun,
        // which stops them in order.
        if libc::setpgid(0, 0) != 0 {
            fail(s, CLONE_FAILED);
        }
        let pid = libc::clone(
            program,
            (*s).stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        );
        if pid < 0 {
            fail(s, CLONE_FAILED);
        }
        if std::ptr::read_volatile(&(*s).failed) != 0 {
            // The program's exec failed and it exited: reaped, then this child ends too.
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::_exit(127);
        }
        decimal(pid as u32, &mut (*s).pid_arg);
        (*s).program_pid = pid;
        if libc::dup2((*s).stdin, 0) < 0
            || libc::dup2((*s).log, 1) < 0
            || libc::dup2((*s).log, 2) < 0
        {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            fail(s, INIT_FAILED);
        }
        vfork::default_handlers();
        // Every signal still blocked: the init takes them with sigwait once it runs.
        libc::execve((*s).init_path, (*s).init_argv, (*s).init_envp);
        let errno = *libc::__errno_location();
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        *libc::__errno_location() = errno;
        fail(s, INIT_FAILED)
    }
}

/// The program's process, the init's child: its parent-death signal, standard streams and
/// default signal handling, then its exec.
extern "C" fn program(arg: *mut libc::c_void) -> libc::c_int {
    let s = arg as *mut Shared;
    // SAFETY: as in `init`, whose frame is suspended until this exec or exit.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
            || libc::dup2((*s).stdin, 0) < 0
            || libc::dup2((*s).log, 1) < 0
            || libc::dup2((*s).log, 2) < 0
        {
            fail(s, EXEC_FAILED);
        }
        vfork::default_handlers();
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        (*s).exec_ns = crate::timeline::now();
        libc::execve((*s).path, (*s).argv, (*s).envp);
        fail(s, EXEC_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Starts `argv` under a shell standing in for the init (the adopted pid is its $1); returns
    /// the result and the shared log once `lines` lines are in it.
    fn run(init_script: &str, argv: &[&str], lines: usize) -> (Result<Started, Refused>, String) {
        let log = tempfile::NamedTempFile::new().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let init_argv: Vec<String> = ["/bin/sh", "-c", init_script, "init"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let spec = Spec {
            init_argv: &init_argv,
            init_env: vec!["PATH=/usr/bin:/bin".into()],
            init_death_signal: libc::SIGPWR,
            argv: &argv,
            env: vec!["PATH=/usr/bin:/bin".into()],
            stdin: null.as_fd(),
            log: log.as_file().as_fd(),
        };
        let r = spawn(&spec);
        if let Ok(started) = &r {
            // Waited for by its pid: other tests' children are this process's too.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = std::fs::read_to_string(log.path()).unwrap();
            if out.lines().count() >= lines || std::time::Instant::now() > deadline {
                return (r, out);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn the_init_adopts_the_program_it_was_cloned_with() {
        let (r, out) = run(
            "echo init=$$ adopt=$1 $(grep SigBlk /proc/self/status | tr -d '\\t'); sleep 0.2",
            &["/bin/sh", "-c", "echo program=$$ ppid=$PPID"],
            2,
        );
        let started = r.map_err(|e| format!("{e:?}")).unwrap();
        assert!(started.began_ns > 0 && started.exec_ns >= started.began_ns);
        let line = |p: &str| out.lines().find(|l| l.starts_with(p)).unwrap_or_default();
        let program = line("program=");
        let init = line("init=");
        // The program is the init's child, and the init was told its pid.
        assert!(program.ends_with(&format!("ppid={}", started.pid)), "{out}");
        let pid = program.split(['=', ' ']).nth(1).unwrap();
        assert_eq!(pid, started.program_pid.to_string(), "{out}");
        assert!(started.program.is_some(), "no pidfd of the program");
        assert!(
            init.starts_with(&format!("init={} adopt={pid} ", started.pid)),
            "{out}"
        );
        // The signals the init waits for still blocked (the shell leaves its mask alone).
        let blocked = u64::from_str_radix(init.rsplit(':').next().unwrap(), 16).unwrap();
        for sig in [libc::SIGTERM, libc::SIGCHLD, libc::SIGPWR, libc::SIGINT] {
            assert!(
                blocked & (1 << (sig - 1)) != 0,
                "signal {sig} not blocked: {out}"
            );
        }
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_exec_refusal() {
        match run("echo init ran", &["/nonexistent/rootlesskit"], 0).0 {
            Err(Refused::Exec(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected an exec refusal, got {:?}", other.map(|s| s.pid)),
        }
    }

    #[test]
    fn pids_are_written_in_decimal() {
        let mut b = [0xffu8; PID_ARG];
        decimal(4_194_304, &mut b);
        assert_eq!(&b[..8], b"4194304\0");
        decimal(0, &mut b);
        assert_eq!(&b[..2], b"0\0");
    }
}
