//! Test harness: a private sandbox per test (its own state dir, TMPDIR and user), bkrun invocations in each mode, and the check that nothing is left behind.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The unprivileged user scripts/setup creates for rootless tests.
pub const TEST_USER: &str = "bkrun-test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Privileged,
    Rootless,
    RootlessStrict,
}

pub const ALL_MODES: [Mode; 3] = [Mode::Privileged, Mode::Rootless, Mode::RootlessStrict];

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Privileged => "privileged",
            Mode::Rootless => "rootless",
            Mode::RootlessStrict => "rootless-strict",
        }
    }
    pub fn rootless(self) -> bool {
        self != Mode::Privileged
    }
}

/// One test's world: everything it makes lives under `dir`, owned by the user it runs bkrun as.
pub struct Sandbox {
    pub dir: PathBuf,
    pub mode: Mode,
    pub bin: PathBuf,
    uid: u32,
    gid: u32,
}

fn test_user_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name(TEST_USER)
        .unwrap()
        .unwrap_or_else(|| panic!("user {TEST_USER} is missing: run scripts/setup"));
    (u.uid.as_raw(), u.gid.as_raw())
}

impl Sandbox {
    pub fn new(mode: Mode) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("bkrun-test-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = if mode.rootless() {
            test_user_ids()
        } else {
            (0, 0)
        };
        // The binary is copied in so the test user can run it wherever the checkout lives.
        let bin = dir.join("bin/bkrun");
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_bkrun"), &bin).unwrap();
        let sb = Sandbox {
            dir,
            mode,
            bin,
            uid,
            gid,
        };
        for d in ["tmp", "state", "home"] {
            sb.mkdir(d);
        }
        sb.own(&sb.dir);
        sb
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        self.own(&p);
        p
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        self.own(&p);
        p
    }

    fn own(&self, p: &Path) {
        for entry in walk(p) {
            let _ = std::os::unix::fs::lchown(&entry, Some(self.uid), Some(self.gid));
        }
        let _ = chown(p, Some(self.uid), Some(self.gid));
    }

    /// A directory holding only the static busybox: the "busybox" named context of the examples.
    pub fn busybox_dir(&self) -> PathBuf {
        let d = self.mkdir("busybox");
        let src = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("static busybox missing: run scripts/setup");
        fs::copy(src, d.join("busybox")).unwrap();
        self.own(&d);
        d
    }

    /// A build context with `dockerfile` as its Dockerfile.
    pub fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        self.write(&format!("{name}/Dockerfile"), dockerfile);
        self.path(name)
    }

    /// The bundled example, copied into the sandbox.
    pub fn hello_context(&self) -> PathBuf {
        let text = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/hello/Dockerfile"
        ))
        .unwrap();
        self.context("hello", &text)
    }

    /// `bkrun` as this sandbox's user, with a clean environment: no XDG_RUNTIME_DIR (as in a pod),
    /// TMPDIR inside the sandbox so every temp file of the run can be checked for, and --mode/--root set.
    pub fn bkrun(&self) -> Command {
        let mut c = self.command(&self.bin);
        c.arg("--mode")
            .arg(self.mode.flag())
            .arg("--root")
            .arg(self.path("state"));
        c
    }

    /// Any program, run like bkrun would be (same user, same clean environment).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("TMPDIR", self.path("tmp"))
            .env(
                "HOME",
                if self.mode.rootless() {
                    self.path("home")
                } else {
                    PathBuf::from("/root")
                },
            )
            .env(
                "USER",
                if self.mode.rootless() {
                    TEST_USER
                } else {
                    "root"
                },
            )
            .current_dir(&self.dir);
        if self.mode.rootless() {
            c.uid(self.uid).gid(self.gid);
        }
        c
    }

    /// The usual build flags for a Dockerfile context plus the busybox named context.
    pub fn build_args(&self, ctx: &Path) -> Vec<String> {
        let bb = self.busybox_dir();
        vec![
            "--frontend=dockerfile.v0".into(),
            format!("--local=context={}", ctx.display()),
            format!("--local=dockerfile={}", ctx.display()),
            format!("--local=busybox={}", bb.display()),
            "--opt=context:busybox=local:busybox".into(),
            "--progress=plain".into(),
        ]
    }

    /// Processes that belong to this sandbox: any whose command line or environment names its dir.
    pub fn live_processes(&self) -> Vec<String> {
        let needle = self.dir.to_string_lossy().into_owned();
        let me = std::process::id();
        let mut found = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let has = |b: &[u8]| String::from_utf8_lossy(b).contains(&needle);
            if has(&cmdline) || has(&environ) {
                found.push(format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
        found
    }

    /// Nothing of the run survives: no process, nothing in its TMPDIR, no socket of a dead bkrun.
    pub fn assert_clean(&self) {
        let procs = self.live_processes();
        assert!(
            procs.is_empty(),
            "processes left behind:\n{}",
            procs.join("\n")
        );
        let left: Vec<_> = fs::read_dir(self.path("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
        assert_no_orphan_sockets();
    }
}

/// /run/buildkit/bkrun-PID-*.sock must belong to a live bkrun.
pub fn assert_no_orphan_sockets() {
    let Ok(dir) = fs::read_dir("/run/buildkit") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("bkrun-")
            .and_then(|r| r.split('-').next())
        {
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "socket {name} outlived its bkrun"
            );
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A failed test must not leak into the next one: kill what is left, then remove the dir.
        for p in self.live_processes() {
            if let Some(pid) = p.split(':').next().and_then(|s| s.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap().flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Runs and checks the exit status, printing the output on failure.
pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        out.status,
        show(&out)
    );
    out
}

pub fn show(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` until it holds or `timeout` passes (tests only: waiting on outside events).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
