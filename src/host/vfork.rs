//! What pid1.rs and guard.rs share around their clone(CLONE_VM | CLONE_VFORK) children: the stack, the descriptors they place, bkrun's signals held off across the clone, and the handlers reset before an exec.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A child's stack: it only makes system calls.
pub const STACK: usize = 64 * 1024;

/// A new stack and its top, 16-byte aligned as the ABI wants (stacks grow down).
pub fn stack() -> (Vec<u8>, *mut libc::c_void) {
    let mut s = vec![0u8; STACK];
    let top = ((s.as_mut_ptr() as usize + STACK) & !15) as *mut libc::c_void;
    (s, top)
}

/// `fd` duplicated to 3 or above (close-on-exec), so that a child's dup2 onto 0, 1 and 2 always
/// makes a fresh, inheritable descriptor, even when bkrun started with one of them closed.
pub fn high_fd(fd: BorrowedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only makes a new descriptor, owned below.
    let up = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if up < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(up) })
}

/// Blocks every signal on the calling thread until the value is dropped: no handler of
/// bkrun's may run in a child that shares bkrun's memory until it execs.
pub struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    pub fn new() -> SignalsHeld {
        // SAFETY: sigset_t values are plain data initialised by sigfillset; pthread_sigmask
        // only changes this thread's mask, restored on drop.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// Back to the default action for every signal with a handler (bkrun's would run bkrun's
/// code), as exec would set them, and SIGPIPE too (Rust ignores it, and an ignored signal stays
/// ignored across exec). 1 to 64 is every signal the kernel has; libc's own two refuse,
/// harmlessly.
///
/// # Safety
/// Only in a cloned child before its exec: system calls only.
pub unsafe fn default_handlers() {
    let mut act: libc::sigaction = std::mem::zeroed();
    act.sa_sigaction = libc::SIG_DFL;
    for sig in 1..=64 {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            && old.sa_sigaction != libc::SIG_DFL
        {
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}
