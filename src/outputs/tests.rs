//! The writer against what a local user can plant: symlinks, FIFOs, files and hard links in a shared sticky directory, and destinations that are links, devices and FIFOs of one's own.

use super::*;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};

/// A sticky, world-writable directory like /tmp, and a root-owned file outside it that a
/// planted name points at.
struct Shared {
    _top: tempfile::TempDir,
    dir: PathBuf,
    victim: PathBuf,
}

fn shared() -> Shared {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("tmp");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = top.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    Shared {
        _top: top,
        dir,
        victim,
    }
}

/// Another user (nobody) owns `p` itself; only root can arrange that.
fn give_away(p: &Path) {
    std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn a_symlink_stays_a_link_and_a_device_stays_a_device() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("real")).unwrap();
    std::fs::write(d.path().join("real/m.json"), "old").unwrap();
    std::fs::set_permissions(
        d.path().join("real/m.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let link = d.path().join("m.json");
    std::os::unix::fs::symlink("real/m.json", &link).unwrap();
    write_file(&link, b"new").await.unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
    let mode = std::fs::metadata(&link).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(std::fs::read_dir(d.path().join("real")).unwrap().count(), 1);

    write_file(Path::new("/dev/null"), b"x").await.unwrap();
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[tokio::test]
async fn a_fifo_is_written_through_once_a_reader_comes() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("f");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read(&fifo).unwrap()
        })
    };
    write_file(&fifo, b"through").await.unwrap();
    assert_eq!(reader.join().unwrap(), b"through");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn destinations_are_classified_by_what_they_lead_to() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir(r.join("dir")).unwrap();
    std::os::unix::fs::symlink("/dev/stdout", r.join("out")).unwrap();
    assert!(matches!(file_target(&r.join("out")), Ok(FileTarget::Fd(1))));
    assert!(matches!(
        file_target(Path::new("/dev/fd/7")),
        Ok(FileTarget::Fd(7))
    ));
    assert!(matches!(
        file_target(Path::new("/dev/null")),
        Ok(FileTarget::Through(_))
    ));
    let e = file_target(&r.join("dir")).unwrap_err().to_string();
    assert!(e.ends_with("dir is a directory: give a file path"), "{e}");
    let e = file_target(&r.join("nope/x.tar")).unwrap_err().to_string();
    assert!(e.contains("nope does not exist: create it first"), "{e}");
    match file_target(&r.join("new.tar")) {
        Ok(FileTarget::Replace(b)) => assert_eq!(b.path, r.join("new.tar")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_new_file_is_private_until_complete_and_never_inherits_setuid() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("iid");
    std::fs::write(&dest, "old").unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let FileTarget::Replace(b) = file_target(&dest).unwrap() else {
        panic!("not a file target")
    };
    let (mut f, new) = b.create().unwrap();
    f.write_all(b"sha256:x").unwrap();
    let temp_mode = std::fs::metadata(new.temp.path()).unwrap().mode();
    assert_eq!(temp_mode & 0o7777, 0o600);
    new.commit().unwrap();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "sha256:x");
    assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn another_users_symlink_in_a_shared_dir_is_not_followed() {
    if !is_root() {
        eprintln!("skipped: planting another user's files needs root (CI runs as root)");
        return;
    }
    let s = shared();
    let planted = s.dir.join("img.tar");
    std::os::unix::fs::symlink(&s.victim, &planted).unwrap();
    give_away(&planted);
    let e = write_file(&planted, b"tarball").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "{} is a symlink owned by uid 65534 in the shared directory {} (sticky, world-writable, owned by uid 0)",
            planted.display(),
            s.dir.display()
        )),
        "{msg}"
    );
    assert_eq!(std::fs::read_to_string(&s.victim).unwrap(), "precious");
    // The same link is followed when root owns it, as the kernel would.
    std::os::unix::fs::lchown(&planted, Some(0), Some(0)).unwrap();
    write_file(&planted, b"tarball").await.unwrap();
    assert_eq!(std::fs::read_to_string(&s.victim).unwrap(), "tarball");
}

#[tokio::test]
async fn another_users_fifo_file_or_device_in_a_shared_dir_is_refused() {
    if !is_root() {
        eprintln!("skipped: planting another user's files needs root (CI runs as root)");
        return;
    }
    let s = shared();
    let fifo = s.dir.join("m.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    give_away(&fifo);
    let file = s.dir.join("ref");
    std::fs::write(&file, "theirs").unwrap();
    give_away(&file);
    for p in [&fifo, &file] {
        let e = write_file(p, b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let e = open_append(p, 0o666).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "theirs");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[tokio::test]
async fn a_hard_link_to_a_root_file_is_replaced_never_written_into() {
    let s = shared();
    let planted = s.dir.join("img.tar");
    std::fs::hard_link(&s.victim, &planted).unwrap();
    write_file(&planted, b"tarball").await.unwrap();
    assert_eq!(std::fs::read_to_string(&s.victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&planted).unwrap(), "tarball");
    assert_eq!(std::fs::metadata(&planted).unwrap().nlink(), 1);
}

#[tokio::test]
async fn appending_follows_the_same_rules_and_creates_with_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let trace = d.path().join("trace.jsonl");
    open_append(&trace, 0o666)
        .await
        .unwrap()
        .write_all(b"a\n")
        .unwrap();
    open_append(&trace, 0o666)
        .await
        .unwrap()
        .write_all(b"b\n")
        .unwrap();
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), "a\nb\n");
    let mode = std::fs::metadata(&trace).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o666 & !safefs::umask());
}
