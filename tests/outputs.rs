//! Outputs are atomic and never replace what they should not: symlinks, devices, FIFOs and /dev/stdout are written through, unwritable destinations are refused before any daemon starts, and an interrupted or failed build leaves destinations untouched and no temporary file.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Temporary outputs bkrun would leave beside or inside a destination.
fn temps_in(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".bkrun-"))
        .collect()
}

/// The names in a tarball.
fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut child = Command::new("tar")
        .args(["-tf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_ok();
    let mut stdin = child.stdin.take().unwrap();
    let data = tar.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_symlinked_dest_keeps_the_link_and_devices_stay_devices() {
    // As root, where replacing /dev/null would succeed if bkrun tried.
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let real = sb.mkdir("real");
    fs::write(real.join("image.tar"), "old").unwrap();
    let link = sb.path("image.tar");
    std::os::unix::fs::symlink("real/image.tar", &link).unwrap();
    let meta_link = sb.path("meta.json");
    std::os::unix::fs::symlink("real/meta.json", &meta_link).unwrap();
    run_ok(sb.build(&ctx).args([
        "--progress=quiet".to_string(),
        format!("--output=type=tar,dest={}", link.display()),
        format!("--metadata-file={}", meta_link.display()),
    ]));
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(fs::symlink_metadata(&meta_link).unwrap().is_symlink());
    let listed = tar_names(&fs::read(real.join("image.tar")).unwrap());
    assert!(listed.iter().any(|n| n == "hello.txt"), "{listed:?}");
    let meta = fs::read_to_string(real.join("meta.json")).unwrap();
    assert!(meta.trim_start().starts_with('{'), "{meta}");
    assert_eq!(names(&real), ["image.tar", "meta.json"]);

    let null_before = fs::metadata("/dev/null").unwrap();
    run_ok(sb.build(&ctx).args([
        "--progress=quiet",
        "--output=type=tar,dest=/dev/null",
        "--metadata-file=/dev/null",
    ]));
    let null_after = fs::symlink_metadata("/dev/null").unwrap();
    assert!(null_after.file_type().is_char_device());
    assert_eq!(null_after.ino(), null_before.ino());
    assert_eq!(null_after.rdev(), null_before.rdev());
    assert!(temps_in(Path::new("/dev")).is_empty());
    sb.assert_clean();
}

#[test]
fn dest_dev_stdout_writes_to_stdout_and_a_fifo_is_read_through() {
    let sb = Sandbox::new(Mode::RootlessStrict);
    let ctx = sb.hello_context();
    let out = run_ok(sb.build(&ctx).args([
        "--progress=quiet",
        "--output=type=tar,dest=/dev/stdout",
        "--metadata-file=/dev/stderr",
    ]));
    let listed = tar_names(&out.stdout);
    assert!(listed.iter().any(|n| n == "hello.txt"), "{listed:?}");
    assert!(stderr(&out).contains("containerimage") || stderr(&out).contains('{'));
    assert!(fs::symlink_metadata("/dev/stdout").unwrap().is_symlink());

    let fifo = sb.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    sb.own(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    run_ok(sb.build(&ctx).args([
        "--progress=quiet".to_string(),
        format!("--output=type=tar,dest={}", fifo.display()),
    ]));
    let listed = tar_names(&reader.join().unwrap());
    assert!(listed.iter().any(|n| n == "hello.txt"), "{listed:?}");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(temps_in(&sb.dir).is_empty());
    sb.assert_clean();
}

#[test]
fn an_unwritable_dest_is_refused_before_any_daemon_starts() {
    // bkrun runs as the unprivileged test user; this directory is root's.
    let sb = Sandbox::new(Mode::RootlessStrict);
    let ro = sb.path("ro");
    fs::create_dir(&ro).unwrap();
    let cases = [
        (
            format!("--output=type=tar,dest={}/x.tar", ro.display()),
            format!(
                "--output type=tar,dest={}/x.tar: cannot create files in {}",
                ro.display(),
                ro.display()
            ),
        ),
        (
            format!("--output=type=local,dest={}/out", ro.display()),
            format!(
                "--output type=local,dest={}/out: cannot create files in {}",
                ro.display(),
                ro.display()
            ),
        ),
        (
            format!("--metadata-file={}/m.json", ro.display()),
            format!(
                "--metadata-file {}/m.json: cannot create files in {}",
                ro.display(),
                ro.display()
            ),
        ),
    ];
    let ctx = sb.hello_context();
    for (flag, want) in cases {
        let t = Instant::now();
        let out = run_fails(sb.build(&ctx).arg(&flag));
        let took = t.elapsed();
        let first = stderr(&out).lines().next().unwrap_or_default().to_string();
        assert!(
            first.starts_with(&format!("bkrun: {want}")),
            "{flag}: {}",
            show(&out)
        );
        assert!(first.contains("choose a writable directory"), "{first}");
        sb.assert_no_daemon_started(t);
        eprintln!("{flag}: refused in {:.1} ms", took.as_secs_f64() * 1e3);
    }
    assert!(names(&ro).is_empty());
    sb.assert_clean();
}

#[test]
fn a_failed_build_leaves_existing_destinations_unchanged() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context("fail", "RUN echo partial > /a && false\n");
    let dest = sb.mkdir("out");
    fs::write(dest.join("mine.txt"), "user").unwrap();
    let tar = sb.write("image.tar", "old");
    run_fails(sb.build(&ctx).args([
        local_output(&dest),
        format!("--output=type=tar,dest={}", tar.display()),
    ]));
    assert_eq!(names(&dest), ["mine.txt"]);
    assert_eq!(fs::read_to_string(dest.join("mine.txt")).unwrap(), "user");
    assert_eq!(fs::read_to_string(&tar).unwrap(), "old");
    assert!(temps_in(&sb.dir).is_empty(), "{:?}", names(&sb.dir));
    sb.assert_clean();
}

#[test]
fn an_export_into_an_existing_dir_keeps_the_users_other_files() {
    let sb = Sandbox::new(Mode::RootlessStrict);
    let ctx = sb.hello_context();
    let dest = sb.mkdir("out");
    sb.write("out/mine.txt", "user");
    sb.write("out/hello.txt", "stale");
    let fresh = sb.path("fresh");
    run_ok(sb.build(&ctx).args([
        "--progress=quiet".to_string(),
        local_output(&dest),
        local_output(&fresh),
    ]));
    assert_eq!(fs::read_to_string(dest.join("mine.txt")).unwrap(), "user");
    assert_ne!(fs::read_to_string(dest.join("hello.txt")).unwrap(), "stale");
    assert!(dest.join("bin/busybox").exists());
    assert_eq!(temps_in(&dest), Vec::<String>::new());
    assert_eq!(describe_tree(&fresh), {
        let mut d = describe_tree(&dest);
        d.retain(|l| !l.contains("mine.txt"));
        d
    });
    assert!(temps_in(&sb.dir).is_empty());
    sb.assert_clean();
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn an_export_into_a_mount_point_is_received_inside_it() {
    // A volume mounted at dest (a pod's emptyDir, say): no rename can cross into it from beside.
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let dest = sb.mkdir("vol");
    nix::mount::mount(
        Some("tmpfs"),
        &dest,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    let _mounted = Mounted(dest.clone());
    fs::write(dest.join("mine.txt"), "user").unwrap();
    run_ok(
        sb.build(&ctx)
            .args(["--progress=quiet".to_string(), local_output(&dest)]),
    );
    assert_eq!(fs::read_to_string(dest.join("mine.txt")).unwrap(), "user");
    assert!(dest.join("hello.txt").exists());
    assert!(temps_in(&dest).is_empty(), "{:?}", names(&dest));
    assert!(temps_in(&sb.dir).is_empty(), "{:?}", names(&sb.dir));
    drop(_mounted);
    sb.assert_clean();
}

/// Starts a build exporting a 400 MB file to `output` and sends `signal` once `exporting`
/// sees the transfer under way; returns bkrun's exit code and stderr.
fn interrupt_export(
    sb: &Sandbox,
    ctx: &Path,
    output: String,
    signal: Signal,
    exporting: impl Fn() -> bool,
) -> (Option<i32>, String) {
    let mut child = sb
        .build(ctx)
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_ok();
    let start = Instant::now();
    while !exporting() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the export never started"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "bkrun ended before the export was seen: {status}: {}",
                all_stderr(&mut child)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let t = Instant::now();
    let status = child.wait().unwrap();
    eprintln!(
        "{:?} {signal} during the export: exited in {:.0} ms",
        sb.mode,
        t.elapsed().as_secs_f64() * 1e3
    );
    (status.code(), all_stderr(&mut child))
}

/// Everything the child wrote to its piped stderr.
fn all_stderr(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// The first entry named `.…bkrun-…` in `dir` holds data: the export is being received.
fn receiving(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(".bkrun-") && tree_bytes(&e.path()) > 0
        })
    })
}

fn tree_bytes(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|es| es.flatten().map(|e| tree_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[test]
fn an_interrupted_export_leaves_destinations_untouched_and_no_temp() {
    for mode in [Mode::Privileged, Mode::RootlessStrict] {
        let sb = Sandbox::new(mode);
        let ctx = sb.shell_context(
            "big",
            "RUN dd if=/dev/zero of=/big bs=1M count=400 2>/dev/null\n",
        );
        // A destination that does not exist yet stays absent.
        let dest = sb.path("out");
        let (code, err) = interrupt_export(&sb, &ctx, local_output(&dest), Signal::SIGINT, || {
            receiving(&sb.dir)
        });
        assert_eq!(code, Some(130), "{mode:?}: {err}");
        assert!(
            !dest.exists(),
            "{mode:?}: an interrupted export left {}",
            dest.display()
        );
        assert!(
            temps_in(&sb.dir).is_empty(),
            "{mode:?}: {:?}: {err}",
            names(&sb.dir)
        );

        // An existing one keeps exactly what it had.
        let dest = sb.mkdir("existing");
        sb.write("existing/mine.txt", "user");
        let (code, err) = interrupt_export(&sb, &ctx, local_output(&dest), Signal::SIGTERM, || {
            receiving(&sb.dir)
        });
        assert_eq!(code, Some(143), "{mode:?}: {err}");
        assert_eq!(names(&dest), ["mine.txt"], "{mode:?}: {err}");
        assert!(
            temps_in(&sb.dir).is_empty(),
            "{mode:?}: {:?}: {err}",
            names(&sb.dir)
        );

        // A tarball's temporary file goes too.
        let tar: PathBuf = sb.path("image.tar");
        let (code, err) = interrupt_export(
            &sb,
            &ctx,
            format!("--output=type=tar,dest={}", tar.display()),
            Signal::SIGHUP,
            || receiving(&sb.dir),
        );
        assert_eq!(code, Some(129), "{mode:?}: {err}");
        assert!(!tar.exists(), "{mode:?}");
        assert!(
            temps_in(&sb.dir).is_empty(),
            "{mode:?}: {:?}: {err}",
            names(&sb.dir)
        );
        sb.assert_clean();
    }
}
