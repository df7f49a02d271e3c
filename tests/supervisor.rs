//! End-to-end tests of the supervisor against a real buildkitd, in all three modes: builds, exit codes, signals, failures, and that nothing is left behind.

mod common;

use std::fs;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn hello_build(sb: &Sandbox, via_exec: bool) {
    let ctx = sb.hello_context();
    let out_dir = sb.path("out");
    let mut args = sb.build_args(&ctx);
    args.push(format!("--output=type=local,dest={}", out_dir.display()));
    let mut c = sb.bkrun();
    if via_exec {
        c.args(["exec", "--", "buildctl", "build"]);
    } else {
        c.arg("build");
    }
    let out = run_ok(c.args(&args));
    let hello = fs::read_to_string(out_dir.join("hello.txt"))
        .unwrap_or_else(|e| panic!("no hello.txt ({e})\n{}", show(&out)));
    assert!(hello.starts_with("hello from bkrun"), "{hello}");
    assert!(out_dir.join("bin/busybox").exists());
    sb.assert_clean();
}

/// The processes whose command line holds `marker`.
fn with_marker(marker: &str) -> Vec<std::path::PathBuf> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            fs::read(p.join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn example_builds_in_every_mode_through_exec_and_build() {
    for mode in ALL_MODES {
        for via_exec in [true, false] {
            eprintln!("mode {mode:?}, via exec: {via_exec}");
            hello_build(&Sandbox::new(mode), via_exec);
        }
    }
}

#[test]
fn sigterm_during_a_long_run_step_exits_143_and_leaves_nothing() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let marker = format!("bkrun-sleep-marker-{}", std::process::id());
        let ctx = sb.context(
            "long",
            &format!(
                "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN sleep 600; echo {marker}\n"
            ),
        );
        let mut child = sb
            .bkrun()
            .arg("build")
            .args(sb.build_args(&ctx))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn_ok();
        let running = wait_until(Duration::from_secs(60), || !with_marker(&marker).is_empty());
        assert!(running, "the RUN step never started ({mode:?})");
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let took = t.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(143), "{mode:?}: {status:?}\n{err}");
        assert!(
            took < Duration::from_secs(10),
            "{mode:?}: took {took:?} to stop"
        );
        let left = with_marker(&marker);
        assert!(left.is_empty(), "{mode:?}: the RUN step's process survived");
        sb.assert_clean();
    }
}

/// A build that ran to its end stops its daemon without reading the daemon's process tree first
/// (Daemon::stop_idle): a process its RUN step detached and left running must still not
/// outlive bkrun, in every mode (rootless-strict runs steps without a PID namespace).
#[test]
fn a_finished_build_leaves_no_process_its_run_step_detached() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let marker = format!("bkrun-detached-marker-{}", std::process::id());
        let ctx = sb.context(
            "detached",
            &format!(
                "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN setsid sh -c 'sleep 600; echo {marker}' </dev/null >/dev/null 2>&1 & sleep 0.2\n"
            ),
        );
        let out = run_ok(sb.bkrun().arg("build").args(sb.build_args(&ctx)));
        let left = with_marker(&marker);
        assert!(
            left.is_empty(),
            "{mode:?}: the RUN step's detached process survived\n{}",
            show(&out)
        );
        sb.assert_clean();
    }
}

#[test]
fn a_daemon_whose_ready_never_comes_is_found_serving_by_the_probe() {
    // A wrapper that drops NOTIFY_SOCKET: no READY=1 ever reaches bkrun, so only the gRPC
    // probe (which asks 200 ms after its connection is made) can see the daemon serve, and
    // the build then runs on the connection the probe made.
    let sb = Sandbox::new(Mode::Privileged);
    let wrapper = sb.write_executable(
        "silent-buildkitd",
        "#!/bin/sh\nunset NOTIFY_SOCKET\nexec buildkitd \"$@\"\n",
    );
    let ctx = sb.hello_context();
    let mut c = sb.bkrun();
    c.env("BUILDKITD", &wrapper).arg("--debug");
    let out = run_ok(sb.build_from(c, &ctx).stdout(Stdio::null()));
    let err = stderr(&out);
    assert!(err.contains("(gRPC probe)"), "ready by READY=1?\n{err}");
    sb.assert_clean();
}

#[test]
fn exit_status_of_the_work_is_passed_through() {
    for mode in [Mode::Privileged, Mode::RootlessStrict] {
        let sb = Sandbox::new(mode);
        let out = sb
            .bkrun()
            .args([
                "exec",
                "--",
                "sh",
                "-c",
                "test -n \"$BUILDKIT_HOST\" && exit 7",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{}", show(&out));
        let out = sb
            .bkrun()
            .args(["exec", "--", "sh", "-c", "kill -TERM $$"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(143), "{}", show(&out));
        sb.assert_clean();
    }
}

#[test]
fn a_failing_build_exits_non_zero() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("fail", "FROM scratch\nCOPY --from=busybox busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n");
    let out = sb
        .bkrun()
        .arg("build")
        .args(sb.build_args(&ctx))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    sb.assert_clean();
}

#[test]
fn background_processes_of_the_work_do_not_outlive_bkrun() {
    let sb = Sandbox::new(Mode::RootlessStrict);
    // The child detaches a sleeper into its own session; bkrun, as subreaper, still gets it.
    let out = sb
        .bkrun()
        .args(["exec", "--", "sh", "-c", "setsid sleep 300 & exit 0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    sb.assert_clean();
}

#[test]
fn a_daemon_with_a_bad_flag_fails_with_its_log() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let t = Instant::now();
        let out = sb
            .bkrun()
            .args(["--buildkitd-flags", "--no-such-flag", "exec", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        // The first line after the start-up line is the headline.
        let first = err
            .lines()
            .find(|l| !l.starts_with("bkrun: starting buildkitd"))
            .unwrap_or("");
        assert!(
            first.starts_with("bkrun: buildkitd exited before it was ready"),
            "{err}"
        );
        assert!(
            err.contains("no-such-flag"),
            "the log tail should show buildkitd's complaint:\n{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(20));
        // The log is kept (and named) on failure; nothing else is.
        sb.take_kept_log(&err);
        sb.assert_clean();
    }
}

#[test]
fn a_missing_daemon_binary_is_explained_before_anything_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let out = sb
        .bkrun()
        .env("BUILDKITD", "/nonexistent/buildkitd")
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("bkrun: cannot start buildkitd: \"/nonexistent/buildkitd\" is not on PATH"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
fn bad_flags_fail_fast_without_a_daemon() {
    let sb = Sandbox::new(Mode::Privileged);
    let cases: &[(&[&str], &str)] = &[
        (
            &["build", "--output", "type=zip,dest=x"],
            "--output type=zip is unknown",
        ),
        (
            &["build", "--local", "context=/no/such/dir"],
            "no such directory",
        ),
        (&["build", "--frobnicate"], "--frobnicate"),
        (&["--mode", "sideways", "exec", "--", "true"], "sideways"),
    ];
    for (args, want) in cases {
        let t = Instant::now();
        let out = sb
            .command(&sb.bin)
            .arg("--root")
            .arg(sb.path("state"))
            .args(*args)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {}",
            show(&out)
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
    // No daemon was started, so the state dir was never touched.
    assert_eq!(fs::read_dir(sb.path("state")).unwrap().count(), 0);
    sb.assert_clean();
}

#[test]
fn config_file_unknown_keys_are_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let cfg = sb.write("bkrun.toml", "ready_timout = 5\n");
    let out = sb
        .bkrun()
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ready_timout"),
        "{}",
        show(&out)
    );
}

#[test]
fn config_prints_mode_paths_and_argv() {
    let sb = Sandbox::new(Mode::RootlessStrict);
    let cfg = sb.write(
        "bkrun.toml",
        "[buildkitd.registry.\"127.0.0.1:5000\"]\nhttp = true\n",
    );
    let out = run_ok(sb.bkrun().arg("--config").arg(&cfg).arg("config"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mode:            rootless-strict"), "{text}");
    assert!(text.contains("--oci-worker-no-process-sandbox"), "{text}");
    assert!(text.contains("[registry.\"127.0.0.1:5000\"]"), "{text}");
    assert!(
        text.contains(&format!("state dir:       {}", sb.path("state").display())),
        "{text}"
    );
}

#[test]
fn invoked_as_buildctl_daemonless_sh_everything_goes_to_the_build_client() {
    let sb = Sandbox::new(Mode::Rootless);
    let link = sb.path("bin/buildctl-daemonless.sh");
    std::os::unix::fs::symlink(&sb.bin, &link).unwrap();
    let ctx = sb.hello_context();
    let mut args = sb.build_args(&ctx);
    args.push(format!(
        "--output=type=local,dest={}",
        sb.path("out").display()
    ));
    // The shell wrapper takes the mode and state dir from the environment, so they go there.
    let flags = format!("--root '{}'", sb.path("state with space").display());
    let out = run_ok(
        sb.command(&link)
            .env("BUILDKITD_FLAGS", &flags)
            .arg("build")
            .args(&args),
    );
    assert!(sb.path("out/hello.txt").exists(), "{}", show(&out));
    // BUILDKITD_FLAGS was split as a shell would: the quoted path with a space is the state dir.
    assert!(fs::read_dir(sb.path("state with space")).unwrap().count() > 0);
    sb.assert_clean();
}

#[test]
fn daemon_subcommand_serves_until_sigterm() {
    let sb = Sandbox::new(Mode::Rootless);
    let (mut child, addr) = serve(&sb, &[]).expect("bkrun daemon did not print its address");
    assert!(
        addr.starts_with("unix://") && addr.ends_with("/buildkitd.sock"),
        "{addr:?}"
    );
    let out = run_ok(
        sb.command("buildctl")
            .args(["--addr", &addr, "debug", "workers"]),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("linux/"),
        "{}",
        show(&out)
    );
    let status = stop_with_sigterm(&mut child);
    assert_eq!(status.code(), Some(143), "{status:?} {:?}", status.signal());
    sb.assert_clean();
}

#[test]
fn as_pid_1_it_handles_sigterm_and_reaps() {
    // In a new PID namespace bkrun is PID 1: signals without a handler would be ignored there,
    // and orphans are reparented to it.
    let sb = Sandbox::new(Mode::Privileged);
    let mut c = sb.command("unshare");
    c.args(["--pid", "--fork", "--kill-child"])
        .arg(&sb.bin)
        .arg("--root")
        .arg(sb.path("state"));
    let mut child = c
        .args(["exec", "--", "sh", "-c", "sleep 0.2 & sleep 300"])
        .stderr(Stdio::piped())
        .spawn_ok();
    // The bkrun inside is unshare's child; wait until its work runs, then SIGTERM it.
    let bkrun = || {
        fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            })
    };
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(30), || sb
        .live_processes()
        .iter()
        .any(|p| p.contains(": sleep 300"))));
    let pid = bkrun().expect("bkrun under unshare");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    sb.assert_clean();
}

#[test]
fn an_unwritable_socket_dir_is_explained() {
    let sb = Sandbox::new(Mode::Rootless);
    let cfg = sb.write("bkrun.toml", "socket_dir = \"/root/bkrun-not-yours\"\n");
    let out = sb
        .bkrun()
        .arg("--config")
        .arg(&cfg)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("bkrun: cannot create socket dir /root/bkrun-not-yours"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
fn a_slow_daemon_start_is_reported_and_quiet_stays_quiet() {
    let sb = Sandbox::new(Mode::Privileged);
    // A buildkitd that takes 4 s to start, as on a loaded node.
    let slow = sb.write_executable(
        "slow-buildkitd",
        "#!/bin/sh\nsleep 4\nexec buildkitd \"$@\"\n",
    );
    let out = run_ok(
        sb.bkrun()
            .env("BUILDKITD", &slow)
            .args(["exec", "--", "true"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        // The version is asked of the same slow program, so it may be left out.
        lines[0].starts_with("bkrun: starting buildkitd")
            && lines[0].ends_with(", privileged (as requested)"),
        "{err}"
    );
    assert!(
        lines[1]
            .starts_with("bkrun: waiting for buildkitd to serve: 3s so far, giving up after 120s"),
        "{err}"
    );
    // --progress=quiet: nothing of bkrun's own on stderr either.
    let ctx = sb.hello_context();
    let out = run_ok(
        sb.bkrun()
            .arg("build")
            .args(sb.build_args(&ctx))
            .arg("--progress=quiet"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{}", show(&out));
    sb.assert_clean();
}

/// `bkrun doctor` reads binfmt_misc: a handler registered with the F flag for riscv64 ELF files
/// (its interpreter a harmless /bin/true, and a platform no other test builds for) is listed as
/// an emulated platform; once removed, it is not. binfmt_misc is mounted for the test if it was
/// not, and left as found.
#[test]
fn doctor_lists_the_platforms_binfmt_misc_emulates() {
    const DIR: &str = "/proc/sys/fs/binfmt_misc";
    let name = format!("bkrun-test-{}", std::process::id());
    let mounted_here = !Path::new(DIR).join("status").exists();
    if mounted_here {
        nix::mount::mount(
            Some("binfmt_misc"),
            DIR,
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("cannot mount binfmt_misc");
    }
    let riscv64_elf = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00";
    let mask = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
    fs::write(
        Path::new(DIR).join("register"),
        format!(":{name}:M::{riscv64_elf}:{mask}:/bin/true:F"),
    )
    .unwrap();
    let sb = Sandbox::new(Mode::Privileged);
    let listed = |out: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["platforms"]["emulated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["handler"] == name.as_str()
                    && e["platform"] == "linux/riscv64"
                    && e["usable"] == true
            })
    };
    let with = run_ok(sb.bkrun().args(["doctor", "--format", "json"]));
    let text = run_ok(sb.bkrun().arg("doctor"));
    fs::write(Path::new(DIR).join(&name), "-1").unwrap();
    let without = run_ok(sb.bkrun().args(["doctor", "--format", "json"]));
    if mounted_here {
        let _ = nix::mount::umount(DIR);
    }
    assert!(listed(&with), "{}", show(&with));
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("linux/riscv64       emulated ({name}: /bin/true)")),
        "{}",
        show(&text)
    );
    assert!(!listed(&without), "{}", show(&without));
    sb.assert_clean();
}
