//! Test harness: a private sandbox per test (its own state dir, TMPDIR and user), bkrun invocations in each mode, and the check that nothing is left behind.
#![allow(dead_code)]

pub mod containerd;
pub mod podman;
pub mod registry;
pub mod tls;

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

/// The start of a Dockerfile whose RUN steps need a shell: the busybox named context, installed.
pub const BUSYBOX_BASE: &str = "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

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
        // BKRUN_TEST_BIN runs a test against another build (an older one, to show the test
        // fails without the fix it proves).
        let built = std::env::var_os("BKRUN_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bkrun")));
        fs::copy(built, &bin).unwrap();
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

    /// `write`, then made executable: a script standing in for a program (a wrapped buildkitd).
    pub fn write_executable(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.write(rel, text);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn own(&self, p: &Path) {
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

    /// A build context whose Dockerfile is BUSYBOX_BASE followed by `steps`.
    pub fn shell_context(&self, name: &str, steps: &str) -> PathBuf {
        self.context(name, &format!("{BUSYBOX_BASE}{steps}"))
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

    /// `bkrun` with its own state dir `state` inside the sandbox: a fresh daemon cache.
    pub fn bkrun_root(&self, state: &str) -> Command {
        let root = self.mkdir(state);
        let mut c = self.command(&self.bin);
        c.arg("--mode")
            .arg(self.mode.flag())
            .arg("--root")
            .arg(root);
        c
    }

    /// `bkrun build` of `ctx` with the usual flags (`build_args`), on the sandbox's state dir.
    pub fn build(&self, ctx: &Path) -> Command {
        self.build_from(self.bkrun(), ctx)
    }

    /// `build` of `ctx` with the usual flags, after `c`: bkrun with its global flags already given.
    pub fn build_from(&self, mut c: Command, ctx: &Path) -> Command {
        c.arg("build").args(self.build_args(ctx));
        c
    }

    /// The same build flags run by buildctl (through `bkrun exec`) and by bkrun, each on a fresh
    /// state dir of its own: the two outputs, for the parity tests.
    pub fn buildctl_and_bkrun(&self, buildctl: &[String], bkrun: &[String]) -> (Output, Output) {
        let a = run_ok(self.buildctl_build("state-buildctl").args(buildctl));
        let b = run_ok(self.bkrun_root("state-bkrun").arg("build").args(bkrun));
        (a, b)
    }

    /// A command that failed before any daemon started: it took under 2 s and the state dir
    /// stayed empty.
    pub fn assert_no_daemon_started(&self, since: Instant) {
        assert!(since.elapsed() < Duration::from_secs(2));
        assert_eq!(fs::read_dir(self.path("state")).unwrap().count(), 0);
    }

    /// buildctl's build, run through `bkrun exec` on a daemon with state dir `state`.
    pub fn buildctl_build(&self, state: &str) -> Command {
        let mut c = self.bkrun_root(state);
        c.args(["exec", "--", "buildctl", "build"]);
        c
    }

    /// A context with every awkward kind of entry the file transfer must carry exactly.
    pub fn awkward_context(&self, name: &str, dockerfile: &str) -> PathBuf {
        use std::os::unix::fs::symlink;
        let root = self.context(name, dockerfile);
        let p = |rel: &str| root.join(rel);
        for d in [
            "empty dir",
            "ünïcödé",
            "deep/a/b/c/d/e/f/g/h/i/j/k/l",
            "setgid",
            "sub/tmp",
        ] {
            fs::create_dir_all(p(d)).unwrap();
        }
        fs::write(p("with space.txt"), "spaces\n").unwrap();
        fs::write(p("ünïcödé/файл.txt"), "utf-8\n").unwrap();
        fs::write(p("deep/a/b/c/d/e/f/g/h/i/j/k/l/leaf"), "deep\n").unwrap();
        fs::write(p(&"n".repeat(255)), "long name\n").unwrap();
        fs::write(p("ro.txt"), "read-only\n").unwrap();
        fs::write(p("exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(p("hard1"), "hardlinked\n").unwrap();
        fs::hard_link(p("hard1"), p("hard2")).unwrap();
        fs::write(p("sub/tmp/scratch"), "tmp\n").unwrap();
        fs::write(
            p("big.bin"),
            (0..300_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        symlink("nowhere", p("dangling")).unwrap();
        symlink("exec.sh", p("link")).unwrap();
        std::os::unix::net::UnixListener::bind(p("sock")).unwrap();
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        self.own(&root);
        // Modes last: a chown may clear set-id bits.
        fs::set_permissions(p("ro.txt"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(p("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(p("setgid"), fs::Permissions::from_mode(0o2775)).unwrap();
        root
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
        let mut args = dockerfile_args(ctx);
        args.extend([
            format!("--local=busybox={}", bb.display()),
            "--opt=context:busybox=local:busybox".into(),
            "--progress=plain".into(),
        ]);
        args
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

    /// The daemon log a failed run kept, named in `err`: the only thing in the sandbox's TMPDIR,
    /// private (a 0600 file in a 0700 `bkrun-log-*` dir of the run's user, so no other user can
    /// read it or guess its name beforehand); removed, so the sandbox can be checked clean.
    pub fn take_kept_log(&self, err: &str) {
        use std::os::unix::fs::MetadataExt as _;
        let kept: Vec<_> = fs::read_dir(self.path("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let dir = &kept[0];
        let log = dir.join("buildkitd.log");
        assert!(err.contains(&log.display().to_string()), "{err}");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("bkrun-log-") && name.len() > 12, "{name}");
        let (d, f) = (fs::metadata(dir).unwrap(), fs::metadata(&log).unwrap());
        assert_eq!(
            (d.mode() & 0o777, d.uid()),
            (0o700, self.uid),
            "{}",
            dir.display()
        );
        assert_eq!(
            (f.mode() & 0o777, f.uid()),
            (0o600, self.uid),
            "{}",
            log.display()
        );
        fs::remove_dir_all(dir).unwrap();
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

/// The flags for a build of the Dockerfile in `ctx`, `ctx` being the context too.
pub fn dockerfile_args(ctx: &Path) -> Vec<String> {
    vec![
        "--frontend=dockerfile.v0".into(),
        format!("--local=context={}", ctx.display()),
        format!("--local=dockerfile={}", ctx.display()),
    ]
}

/// `--output=type=local,dest=DEST`.
pub fn local_output(dest: &Path) -> String {
    format!("--output=type=local,dest={}", dest.display())
}

/// Adds `--config FILE` to a bkrun command, where global flags go: before the subcommand.
pub fn with_config(mut c: Command, cfg: &Path) -> Command {
    c.arg("--config").arg(cfg);
    c
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

/// Runs `c` to its end. The sandbox's copy of bkrun may be "busy" for an instant: another test
/// thread that forks while the copy is being written holds a write descriptor to it until its
/// child execs, and exec then fails with ETXTBSY; a retry finds it free.
pub fn output(c: &mut Command) -> Output {
    unless_busy(|| c.output())
}

/// `f` (an exec of the sandbox's bkrun), tried again while the file is busy (see `output`).
fn unless_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            r => return r.unwrap(),
        }
    }
}

/// `Command::spawn` for tests: retried while the sandbox's copy of bkrun is busy, as `output`.
pub trait SpawnOk {
    fn spawn_ok(&mut self) -> std::process::Child;
}

impl SpawnOk for Command {
    fn spawn_ok(&mut self) -> std::process::Child {
        unless_busy(|| self.spawn())
    }
}

/// Runs and checks the exit status, printing the output on failure.
pub fn run_ok(c: &mut Command) -> Output {
    let out = output(c);
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        out.status,
        show(&out)
    );
    out
}

/// Runs a command that must fail with exit status 1, printing the output otherwise.
pub fn run_fails(c: &mut Command) -> Output {
    let out = output(c);
    assert_eq!(out.status.code(), Some(1), "{c:?}: {}", show(&out));
    out
}

/// What a command wrote on standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a shell script in `dir` (certificates, htpasswd files), which must succeed.
pub fn sh_in(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

pub fn show(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `bkrun daemon` (with `extra` flags) in the background, once it has printed its address:
/// the child and the address, or None if it printed none within a minute (it is then stopped).
pub fn serve(sb: &Sandbox, extra: &[&str]) -> Option<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = sb
        .bkrun()
        .arg("daemon")
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    });
    if !wait_until(Duration::from_secs(60), || reader.is_finished()) {
        stop_with_sigterm(&mut child);
        return None;
    }
    let addr = reader.join().unwrap().trim().to_string();
    Some((child, addr))
}

/// SIGTERM to `child`, then its exit (within 30 s, or the test fails).
pub fn stop_with_sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut status = None;
    wait_until(Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.expect("the child did not stop within 30 s of SIGTERM")
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

/// A tree's contents as comparable lines: type, mode, owner, size, mtime, link target, content hash,
/// and which entries share an inode.
pub fn describe_tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut inodes: std::collections::HashMap<u64, String> = Default::default();
    let mut out = Vec::new();
    let mut paths = walk(root);
    paths.sort();
    for p in paths.into_iter().skip(1) {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        let link = if m.file_type().is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        let sum = if m.is_file() {
            format!("{:x}", fnv(&fs::read(&p).unwrap()))
        } else {
            String::new()
        };
        let shared = if m.is_file() && m.nlink() > 1 {
            inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
        } else {
            String::new()
        };
        out.push(format!(
            "{rel} mode={:o} uid={} gid={} size={} mtime={}.{} link={link} sum={sum} inode-of={shared}",
            m.mode(),
            m.uid(),
            m.gid(),
            if m.is_dir() { 0 } else { m.size() },
            m.mtime(),
            m.mtime_nsec(),
        ));
    }
    out
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}
