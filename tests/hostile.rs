//! A local user (nobody) against bkrun run as root and as an unprivileged user, with nothing but a shell: planted run dirs and socket records, FIFO locks, huge records, symlinks, FIFOs and files as outputs in a shared sticky directory, abandoned-temp names as links, shared state dirs. Each target keeps its content, mode and existence; no run blocks; each refusal is one line.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The attacker: nobody, as on most distributions.
const NOBODY: u32 = 65534;

/// Runs `script` with sh as nobody (the local user planting things), in `dir`.
fn as_nobody(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "as nobody: {script}\n{}", show(&out));
}

/// Makes `dir` shared the way /tmp is: sticky and world-writable.
fn make_shared(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A file of the user bkrun runs as, outside anything shared: what an attack aims at.
struct Victim {
    path: PathBuf,
    mode: u32,
    ino: u64,
}

impl Victim {
    fn plant(sb: &Sandbox, rel: &str) -> Victim {
        let path = sb.write(rel, "precious");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let m = fs::metadata(&path).unwrap();
        Victim {
            path,
            mode: m.mode(),
            ino: m.ino(),
        }
    }

    /// Still there, the same file, with the same content and mode.
    fn assert_untouched(&self, what: &str) {
        let m = fs::symlink_metadata(&self.path)
            .unwrap_or_else(|e| panic!("{what}: the victim {} is gone: {e}", self.path.display()));
        assert_eq!(
            fs::read_to_string(&self.path).unwrap(),
            "precious",
            "{what}: the victim's content changed"
        );
        assert_eq!(
            (m.mode(), m.ino()),
            (self.mode, self.ino),
            "{what}: the victim's mode or inode changed"
        );
    }
}

/// Runs `c`, which must end within `limit` (no planted FIFO or lock may block it): its output.
fn within(mut c: Command, limit: Duration) -> std::process::Output {
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_ok();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{c:?} was still running after {limit:?}: something blocked it");
        }
    }
}

/// Refused in one line (the whole of stderr), before any daemon started.
fn assert_refused_in_one_line(
    sb: &Sandbox,
    what: &str,
    out: &std::process::Output,
    t: Instant,
    want: &str,
) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", show(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{err}");
    assert!(lines[0].starts_with("bkrun: "), "{what}: {err}");
    assert!(lines[0].contains(want), "{what}: wanted {want:?} in\n{err}");
    sb.assert_no_daemon_started(t);
}

fn modes() -> [Mode; 2] {
    [Mode::Privileged, Mode::Rootless]
}

#[test]
fn planted_run_dirs_socket_records_and_fifo_locks_are_left_alone() {
    for mode in modes() {
        let sb = Sandbox::new(mode);
        let victim = Victim::plant(&sb, "home/victim");
        let victim_dir = sb.mkdir("home/victim-dir");
        sb.write("home/victim-dir/f", "precious");
        let tmp = sb.path("tmp");
        make_shared(&tmp);
        // Everything a local user can put where bkrun's sweep looks, as that user.
        as_nobody(
            &tmp,
            &format!(
                "mkdir bkrun-x; touch bkrun-x/owner.lock; printf %s {victim} > bkrun-x/socket
                 chmod 700 bkrun-x
                 mkdir bkrun-fifo; mkfifo bkrun-fifo/owner.lock; chmod 700 bkrun-fifo
                 ln -s {victim_dir} bkrun-link
                 mkdir bkrun-huge; touch bkrun-huge/owner.lock
                 head -c 8000000 /dev/zero > bkrun-huge/socket; chmod 700 bkrun-huge
                 ln -s {victim} bkrun-1-planted.sock
                 touch -h -d '2020-01-01' bkrun-x bkrun-fifo bkrun-link bkrun-huge \\
                   bkrun-1-planted.sock bkrun-x/owner.lock bkrun-x/socket bkrun-huge/owner.lock",
                victim = victim.path.display(),
                victim_dir = victim_dir.display()
            ),
        );
        let planted: Vec<String> = names(&tmp);
        let ctx = sb.hello_context();
        let mut c = sb.build(&ctx);
        c.arg(local_output(&sb.path("out")));
        let t = Instant::now();
        let out = within(c, Duration::from_secs(240));
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        eprintln!(
            "{mode:?}: built beside {} planted entries in {:.1}s",
            planted.len(),
            t.elapsed().as_secs_f64()
        );
        victim.assert_untouched(&format!("{mode:?}"));
        assert_eq!(
            fs::read_to_string(victim_dir.join("f")).unwrap(),
            "precious"
        );
        // Not ours: every planted entry is still there, and nothing else is.
        assert_eq!(names(&tmp), planted, "{mode:?}");
        for n in &planted {
            let p = tmp.join(n);
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
        sb.assert_clean();
    }
}

#[test]
fn outputs_planted_in_a_shared_dir_are_refused_before_any_daemon_starts() {
    for mode in modes() {
        let sb = Sandbox::new(mode);
        let victim = Victim::plant(&sb, "home/victim");
        let shared = sb.mkdir("shared");
        make_shared(&shared);
        as_nobody(
            &shared,
            &format!(
                "ln -s {v} img.tar; mkfifo m.json; ln -s {v} ref; ln -s {v} trace
                 ln -s {v} iid; echo theirs > digest; mkdir out",
                v = victim.path.display()
            ),
        );
        let s = |n: &str| shared.join(n).display().to_string();
        let ctx = sb.hello_context();
        let build = |flag: String| {
            let mut c = sb.build(&ctx);
            c.arg(flag);
            c
        };
        let mut docker = sb.bkrun();
        docker
            .arg("build")
            .arg(format!("--iidfile={}", s("iid")))
            .arg(format!(
                "--output=type=oci,dest={}",
                sb.path("img-oci.tar").display()
            ))
            .arg(&ctx);
        let executor = sb.path("bin/executor");
        if !executor.exists() {
            std::os::unix::fs::symlink(&sb.bin, &executor).unwrap();
        }
        let mut kaniko = sb.command(&executor);
        kaniko
            .env("BKRUN_MODE", mode.flag())
            .arg(format!("--context=dir://{}", ctx.display()))
            .args(["--dockerfile", "Dockerfile", "--no-push"])
            .arg(format!("--tar-path={}", sb.path("k.tar").display()))
            .arg(format!("--digest-file={}", s("digest")));
        let cases: Vec<(&str, Command, &str)> = vec![
            (
                "tar output through nobody's symlink",
                build(format!("--output=type=tar,dest={}", s("img.tar"))),
                "img.tar is a symlink owned by uid 65534",
            ),
            (
                "metadata file as nobody's FIFO",
                build(format!("--metadata-file={}", s("m.json"))),
                "m.json is a FIFO owned by uid 65534",
            ),
            (
                "ref file through nobody's symlink",
                build(format!("--ref-file={}", s("ref"))),
                "ref is a symlink owned by uid 65534",
            ),
            (
                "trace through nobody's symlink",
                build(format!("--trace={}", s("trace"))),
                "trace is a symlink owned by uid 65534",
            ),
            (
                "local export into nobody's directory",
                build(local_output(&shared.join("out"))),
                "out is a directory owned by uid 65534",
            ),
            (
                "docker-style --iidfile through nobody's symlink",
                docker,
                "iid is a symlink owned by uid 65534",
            ),
            (
                "kaniko's --digest-file over nobody's file",
                kaniko,
                "digest is a file owned by uid 65534",
            ),
        ];
        for (what, c, want) in cases {
            let t = Instant::now();
            let out = within(c, Duration::from_secs(20));
            assert_refused_in_one_line(&sb, &format!("{mode:?}: {what}"), &out, t, want);
            eprintln!(
                "{mode:?}: {what}: refused in {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        victim.assert_untouched(&format!("{mode:?}"));
        assert_eq!(
            fs::read_to_string(shared.join("digest")).unwrap(),
            "theirs\n"
        );
        use std::os::unix::fs::FileTypeExt as _;
        assert!(fs::symlink_metadata(shared.join("m.json"))
            .unwrap()
            .file_type()
            .is_fifo());
        sb.assert_clean();
    }
}

#[test]
fn a_hard_link_is_replaced_and_planted_temp_names_are_not_followed() {
    let sb = Sandbox::new(Mode::Privileged);
    let victim = Victim::plant(&sb, "victim");
    let victim_dir = sb.mkdir("victim-dir");
    sb.write("victim-dir/f", "precious");
    let shared = sb.mkdir("shared");
    make_shared(&shared);
    // A hard link to root's file (its inode is root's, as the directory's owner is, so the
    // kernel's rule allows replacing it) and, as nobody, links named as bkrun's abandoned
    // temps would be, old enough to be swept.
    fs::hard_link(&victim.path, shared.join("img.tar")).unwrap();
    as_nobody(
        &shared,
        &format!(
            "ln -s {d} .img.tar.bkrun-AAAAAAAAAAAA; ln -s {d} .out.bkrun-BBBBBBBBBBBB
             touch -h -d '2020-01-01' .img.tar.bkrun-AAAAAAAAAAAA .out.bkrun-BBBBBBBBBBBB",
            d = victim_dir.display()
        ),
    );
    let ctx = sb.hello_context();
    let out = within(
        {
            let mut c = sb.build(&ctx);
            c.arg(format!(
                "--output=type=tar,dest={}",
                shared.join("img.tar").display()
            ));
            c
        },
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "{}", show(&out));
    let out = within(
        {
            let mut c = sb.build(&ctx);
            c.arg(local_output(&shared.join("out")));
            c
        },
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "{}", show(&out));
    victim.assert_untouched("hard link");
    let tar = fs::metadata(shared.join("img.tar")).unwrap();
    assert_eq!(tar.nlink(), 1, "replaced, not written into");
    assert_eq!(
        tar.mode() & 0o7777,
        0o600,
        "the replaced file's mode, no more"
    );
    assert!(shared.join("out/hello.txt").exists());
    assert_eq!(names(&victim_dir), ["f"]);
    assert_eq!(
        names(&shared),
        [
            ".img.tar.bkrun-AAAAAAAAAAAA",
            ".out.bkrun-BBBBBBBBBBBB",
            "img.tar",
            "out"
        ]
    );
    sb.assert_clean();
}

#[test]
fn a_state_dir_others_can_write_to_is_refused_in_one_line() {
    let sb = Sandbox::new(Mode::Privileged);
    let state = sb.mkdir("shared-state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let ctx = sb.hello_context();
    let mut c = sb.command(&sb.bin);
    c.args(["--mode", "privileged", "--root"])
        .arg(&state)
        .arg("build")
        .args(sb.build_args(&ctx));
    let t = Instant::now();
    let out = within(c, Duration::from_secs(20));
    assert_refused_in_one_line(&sb, "world-writable --root", &out, t, "the state dir");
    assert!(
        stderr(&out).contains("it is world-writable (mode 0777)"),
        "{}",
        show(&out)
    );
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
    sb.assert_clean();
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
