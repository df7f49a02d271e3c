//! The sweep against dead runs of this user's, live ones, and what another user can plant in a shared temp dir.

use super::*;
use crate::host::fake::FakeHost;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;

/// A fake host whose euid is this process's, so files the test makes are "ours".
fn me() -> FakeHost {
    FakeHost {
        euid: nix::unistd::geteuid().as_raw(),
        ..FakeHost::user()
    }
}

fn private_dir(p: &Path) {
    fs::create_dir(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
}

/// An hour old (a socket cannot be opened to set its times, so they are set by path).
fn old(p: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ts = libc::timespec {
        tv_sec: (now.as_secs() - 3600) as _,
        tv_nsec: 0,
    };
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a two-element array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn only_dirs_whose_owner_is_gone_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let live = tmp.path().join("bkrun-live");
    let dead = tmp.path().join("bkrun-dead");
    let foreign = tmp.path().join("bkrun-older-version");
    for d in [&live, &dead, &foreign] {
        private_dir(d);
        fs::write(d.join("buildkitd.log"), "x").unwrap();
    }
    let dead_sock = sockets.path().join("bkrun-1-dead.sock");
    // A socket file with no listener, as a SIGKILLed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&dead_sock).unwrap());
    let _owner = claim(&live, &sockets.path().join("bkrun-2-live.sock")).unwrap();
    drop(claim(&dead, &dead_sock).unwrap());
    let swept = sweep(&me(), tmp.path(), Some(sockets.path()));
    assert_eq!(swept.run_dirs, std::slice::from_ref(&dead));
    assert_eq!(swept.sockets, std::slice::from_ref(&dead_sock));
    assert!(live.join("buildkitd.log").exists());
    assert!(
        foreign.exists(),
        "a dir without an owner lock is not ours to judge"
    );
    assert!(!dead.exists() && !dead_sock.exists());
    assert_eq!(
        swept.to_string(),
        "removed 1 run dir and 1 socket left by runs that were killed"
    );
}

#[test]
fn a_young_refusing_socket_and_a_serving_one_stay() {
    let sockets = tempfile::tempdir().unwrap();
    let young = sockets.path().join("bkrun-3-young.sock");
    drop(std::os::unix::net::UnixListener::bind(&young).unwrap());
    let serving = sockets.path().join("bkrun-4-serving.sock");
    let _l = std::os::unix::net::UnixListener::bind(&serving).unwrap();
    let swept = sweep(&me(), Path::new("/nonexistent"), Some(sockets.path()));
    assert!(swept.is_empty());
    assert!(young.exists() && serving.exists());
}

/// A dead run dir as bkrun makes it, whose socket record says `record`.
fn dead_run(dir: &Path, record: &[u8]) {
    private_dir(dir);
    drop(claim(dir, Path::new("/elsewhere/bkrun-x.sock")).unwrap());
    fs::write(dir.join(SOCKET_RECORD), record).unwrap();
}

#[test]
fn a_record_naming_anything_but_a_dead_socket_of_ours_in_our_socket_dir_is_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let victim = sockets.path().join("bkrun-victim.sock");
    fs::write(&victim, "a regular file, named as a socket").unwrap();
    let elsewhere = tmp.path().join("victim");
    fs::write(&elsewhere, "precious").unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_sock = other_dir.path().join("bkrun-5.sock");
    drop(std::os::unix::net::UnixListener::bind(&other_sock).unwrap());
    let misnamed = sockets.path().join("buildkitd.sock");
    drop(std::os::unix::net::UnixListener::bind(&misnamed).unwrap());
    let records: [&[u8]; 5] = [
        victim.as_os_str().as_encoded_bytes(),
        elsewhere.as_os_str().as_encoded_bytes(),
        other_sock.as_os_str().as_encoded_bytes(),
        misnamed.as_os_str().as_encoded_bytes(),
        &[b'/'; 100_000],
    ];
    for (i, r) in records.iter().enumerate() {
        dead_run(&tmp.path().join(format!("bkrun-{i}")), r);
    }
    let swept = sweep(&me(), tmp.path(), Some(sockets.path()));
    assert_eq!(swept.run_dirs.len(), 5, "{swept:?}");
    assert!(swept.sockets.is_empty(), "{swept:?}");
    assert!(victim.exists() && other_sock.exists() && misnamed.exists());
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "precious");
}

#[test]
fn planted_run_dirs_are_not_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("keep");
    fs::create_dir(&keep).unwrap();
    fs::write(keep.join("f"), "precious").unwrap();
    // A symlinked run dir: a link to a dir holding an unlocked owner.lock.
    let target = tmp.path().join("target");
    private_dir(&target);
    drop(claim(&target, &target.join("s")).unwrap());
    fs::write(target.join("f"), "precious").unwrap();
    std::os::unix::fs::symlink(&target, tmp.path().join("bkrun-link")).unwrap();
    // A run dir others can read (not 0700): not made by bkrun.
    let open = tmp.path().join("bkrun-open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    drop(claim(&open, &open.join("s")).unwrap());
    // A FIFO as the lock: opening it must not block the sweep.
    let fifo = tmp.path().join("bkrun-fifo");
    private_dir(&fifo);
    nix::unistd::mkfifo(
        &fifo.join(OWNER_LOCK),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // The lock as a symlink to a file nobody holds.
    let linked = tmp.path().join("bkrun-linked-lock");
    private_dir(&linked);
    fs::write(keep.join("lock"), "").unwrap();
    std::os::unix::fs::symlink(keep.join("lock"), linked.join(OWNER_LOCK)).unwrap();
    let started = std::time::Instant::now();
    let swept = sweep(&me(), tmp.path(), None);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(swept.is_empty(), "{swept:?}");
    assert!(target.join("f").exists() && open.exists() && fifo.exists() && linked.exists());
    assert_eq!(fs::read_to_string(keep.join("f")).unwrap(), "precious");
}

#[test]
fn another_users_run_dir_is_not_judged() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: planting another user's run dir needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let planted = tmp.path().join("bkrun-x");
    dead_run(&planted, victim.as_os_str().as_encoded_bytes());
    for p in [
        &planted,
        &planted.join(OWNER_LOCK),
        &planted.join(SOCKET_RECORD),
    ] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let swept = sweep(&me(), tmp.path(), Some(sockets.path()));
    assert!(swept.is_empty());
    assert!(planted.exists());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn another_users_dead_socket_stays() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: planting another user's socket needs root (CI runs as root)");
        return;
    }
    let sockets = tempfile::tempdir().unwrap();
    let theirs = sockets.path().join("bkrun-9-theirs.sock");
    drop(std::os::unix::net::UnixListener::bind(&theirs).unwrap());
    std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
    old(&theirs);
    let swept = sweep(&me(), Path::new("/nonexistent"), Some(sockets.path()));
    assert!(swept.is_empty());
    assert!(theirs.exists());
}

#[test]
fn removal_never_crosses_a_mount() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    fs::create_dir_all(run.join("a/b")).unwrap();
    fs::write(run.join("a/b/f"), "x").unwrap();
    // As root, a tmpfs inside the run dir stands in for a snapshot a killed daemon left mounted.
    let mnt = run.join("tmp/buildkit-mount1");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = nix::unistd::geteuid().is_root()
        && nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .is_ok();
    if mounted {
        fs::write(mnt.join("cache-file"), "keep").unwrap();
    }
    let parent = Dir::open(d.path()).unwrap();
    let _ = remove_at(&parent, OsStr::new("run"), None);
    assert!(!run.join("a").exists());
    if mounted {
        assert_eq!(fs::read_to_string(mnt.join("cache-file")).unwrap(), "keep");
        assert!(remove_run_dir(
            &crate::host::RealHost,
            &parent,
            &run,
            OsStr::new("run"),
            None
        ));
        assert!(!run.exists(), "unmount_below detaches mounts under the dir");
    }
}

#[test]
fn mounts_below_a_dir_with_a_space_are_detached() {
    // mountinfo writes the space as `\040`; a TMPDIR like "/home/a b/tmp" must still be found.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run dir\twith\\odd");
    let mnt = run.join("tmp/buildkit mount1");
    fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    fs::write(mnt.join("cache-file"), "keep").unwrap();
    remove_run_files(
        &crate::host::RealHost,
        Path::new("/nonexistent/x.sock"),
        &run,
        false,
    );
    assert!(!run.exists(), "the mount is detached and the dir removed");
}

fn mount_at(p: &Path) -> crate::host::mountinfo::Mount {
    let line = format!(
        "40 1 0:50 / {} rw - overlay overlay rw",
        p.display().to_string().replace(' ', "\\040")
    );
    crate::host::mountinfo::parse_line(line.as_bytes()).unwrap()
}

#[test]
fn teardown_detaches_mounts_deepest_first_then_removes_the_run_dir() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("bkrun-x y");
    fs::create_dir_all(run.join("tmp/snap/inner")).unwrap();
    fs::write(run.join("tmp/snap/inner/f"), "x").unwrap();
    let socket = d.path().join("bkrun.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let outside = d.path().join("elsewhere");
    let h = FakeHost {
        mount_table: vec![
            mount_at(&run.join("tmp/snap")),
            mount_at(&run.join("tmp/snap/inner")),
            mount_at(&outside),
        ],
        ..me()
    };
    remove_run_files(&h, &socket, &run, false);
    assert_eq!(
        h.effects(),
        [
            format!("unmount {}", run.join("tmp/snap/inner").display()),
            format!("unmount {}", run.join("tmp/snap").display()),
        ]
    );
    assert!(!run.exists() && !socket.exists());
}

#[test]
fn a_daemon_in_its_own_mount_namespace_leaves_no_mount_to_detach() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("bkrun-x");
    fs::create_dir_all(run.join("tmp/snap")).unwrap();
    fs::write(run.join("buildkitd.log"), "x").unwrap();
    let socket = d.path().join("bkrun.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    // The table is not read: a mount listed there (as none can be) is not acted on.
    let h = FakeHost {
        mount_table: vec![mount_at(&run.join("tmp/snap"))],
        ..me()
    };
    remove_run_files(&h, &socket, &run, true);
    assert!(h.effects().is_empty(), "{:?}", h.effects());
    assert!(!run.exists() && !socket.exists());
}
