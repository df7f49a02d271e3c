//! The kill matrix: bkrun SIGKILLed during a RUN step and during a local export, and stopped with SIGTERM during a context transfer, in every mode; then two runs on one state dir at once. Exit codes, nothing left, destinations untouched, and the next build on the same state dir works from its cache.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Where each row of the matrix is written, for the closing note.
const REPORT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/kill-matrix");

/// One bkrun killed at one phase: what was measured.
struct Row {
    phase: &'static str,
    signal: &'static str,
    exit: String,
    /// From the signal to bkrun's exit.
    exited_after: Duration,
    /// From the signal until no process of the run was left.
    gone_after: Duration,
    leftovers: String,
}

/// Starts `c` with stderr read line by line into a channel (and kept for failure messages).
fn spawn_watched(mut c: std::process::Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn_ok();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `needle`; returns everything read so far.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    let mut seen = String::new();
    while start.elapsed() < timeout {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(needle) {
                return seen;
            }
        }
    }
    panic!("no line with {needle:?} within {timeout:?}:\n{seen}");
}

/// Processes whose command line holds `marker` (a RUN step's, whose environment is the
/// container's and so does not name the sandbox).
fn with_marker(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Mount points under the sandbox (the state dir's snapshots, the run dir's temp mounts).
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    text.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&d)))
        .map(String::from)
        .collect()
}

/// bkrun with a socket dir inside the sandbox: a killed run's socket must not be seen by the
/// other tests' check for orphan sockets in /run/buildkit before the next run here sweeps it.
fn bkrun(sb: &Sandbox) -> std::process::Command {
    let sockets = sb.mkdir("sockets");
    let cfg = sb.write(
        "bkrun.toml",
        &format!("socket_dir = {:?}\n", sockets.display().to_string()),
    );
    let mut c = sb.bkrun();
    c.env("BKRUN_CONFIG", cfg);
    c
}

fn build(sb: &Sandbox, ctx: &Path) -> std::process::Command {
    sb.build_from(bkrun(sb), ctx)
}

/// The progress lines of the step whose title holds `title` say CACHED.
fn step_cached(progress: &str, title: &str) -> bool {
    let Some(id) = progress
        .lines()
        .find(|l| l.contains(title))
        .and_then(|l| l.split(' ').next())
    else {
        return false;
    };
    progress.lines().any(|l| l == format!("{id} CACHED"))
}

/// Sends `sig` to `child` and measures: exit, time to exit, time until nothing of the run is
/// left (processes of the sandbox, processes with `marker`, mounts).
fn kill_and_measure(
    sb: &Sandbox,
    child: &mut Child,
    sig: nix::sys::signal::Signal,
    marker: Option<&str>,
) -> (std::process::ExitStatus, Duration, Duration, String) {
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let status = child.wait().unwrap();
    let exited = t.elapsed();
    let gone = wait_until(Duration::from_secs(15), || {
        sb.live_processes().is_empty()
            && marker.is_none_or(|m| with_marker(m).is_empty())
            && mounts_under(&sb.dir).is_empty()
    });
    let gone_after = t.elapsed();
    let mut left = sb.live_processes();
    left.extend(marker.map(with_marker).unwrap_or_default());
    left.extend(mounts_under(&sb.dir));
    assert!(
        gone,
        "{:?} left something after {sig}:\n{}",
        sb.mode,
        left.join("\n")
    );
    (status, exited, gone_after, left.join("; "))
}

fn exit_text(s: &std::process::ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "?".into(),
    }
}

/// SIGKILL while a RUN step runs (with a background process of its own): every process and
/// mount of the run goes with bkrun; the next run says it repaired the state dir and reuses
/// the steps before.
fn sigkill_during_run_step(sb: &Sandbox) -> Row {
    let marker = format!("{}", 7_000_000 + std::process::id() * 10 + sb.mode as u32);
    let ctx = sb.shell_context(
        "run",
        &format!("RUN echo before > /before\nRUN sleep 1{marker} & sleep 2{marker}\n"),
    );
    let (mut child, rx) = spawn_watched(build(sb, &ctx));
    // Both sleeps (the step's shell execs the last one): checked once, as a process reading
    // mid-exec can show an empty command line for an instant.
    let started = wait_until(Duration::from_secs(60), || with_marker(&marker).len() >= 2);
    assert!(
        started,
        "the RUN step never started:\n{}",
        rx.try_iter().collect::<Vec<_>>().join("\n")
    );
    let (status, exited, gone, left) = kill_and_measure(
        sb,
        &mut child,
        nix::sys::signal::Signal::SIGKILL,
        Some(&marker),
    );
    assert_eq!(status.signal(), Some(9));
    // The next build on the same state dir: the first RUN is cached, the repair is said.
    let ctx2 = sb.shell_context("run", "RUN echo before > /before\nRUN echo after\n");
    let out = run_ok(&mut build(sb, &ctx2));
    let err = stderr(&out);
    assert!(err.contains("did not stop cleanly"), "{err}");
    assert!(
        step_cached(&err, "RUN echo before > /before"),
        "the step before the killed one is reused:\n{err}"
    );
    sb.assert_clean();
    Row {
        phase: "RUN step",
        signal: "SIGKILL",
        exit: exit_text(&status),
        exited_after: exited,
        gone_after: gone,
        leftovers: left,
    }
}

/// SIGKILL while a local export is being received: the destination keeps what it held.
fn sigkill_during_local_export(sb: &Sandbox) -> Row {
    let ctx = sb.shell_context(
        "export",
        "RUN dd if=/dev/zero of=/big bs=1M count=512 2>/dev/null\n",
    );
    let dest = sb.mkdir("out");
    sb.write("out/keep.txt", "the user's own file\n");
    let before = describe_tree(&dest);
    let mut c = build(sb, &ctx);
    c.arg(local_output(&dest));
    let (mut child, rx) = spawn_watched(c);
    wait_for_line(
        &rx,
        "exporting to client directory",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (status, exited, gone, left) =
        kill_and_measure(sb, &mut child, nix::sys::signal::Signal::SIGKILL, None);
    assert_eq!(status.signal(), Some(9));
    let after = describe_tree(&dest);
    assert!(
        after == before,
        "the destination was changed: {} entries, {} before; new: {:?}",
        after.len(),
        before.len(),
        after
            .iter()
            .filter(|e| !before.contains(e))
            .take(5)
            .collect::<Vec<_>>()
    );
    // What the killed run was receiving into, beside the destination: left (nothing could
    // remove it), and removed by the next export there once it is surely abandoned.
    let beside = || {
        fs::read_dir(&sb.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".out.bkrun-"))
            .count()
    };
    assert_eq!(beside(), 1, "the killed export's temp dir");
    std::thread::sleep(bkrun::outputs::temps::ABANDONED_AFTER);
    let mut again = build(sb, &ctx);
    again.arg(local_output(&dest));
    run_ok(&mut again);
    assert_eq!(beside(), 0, "the abandoned temp dir is swept");
    assert_eq!(fs::metadata(dest.join("big")).unwrap().len(), 512 << 20);
    sb.assert_clean();
    Row {
        phase: "local export",
        signal: "SIGKILL",
        exit: exit_text(&status),
        exited_after: exited,
        gone_after: gone,
        leftovers: left,
    }
}

/// SIGTERM while the context is sent: exit 143 soon, nothing left, no repair needed after.
fn sigterm_during_context_transfer(sb: &Sandbox) -> Row {
    let ctx = sb.context("transfer", "FROM scratch\nCOPY data /data\n");
    {
        let mut f = fs::File::create(ctx.join("data")).unwrap();
        let block = vec![7u8; 1 << 20];
        for _ in 0..768 {
            f.write_all(&block).unwrap();
        }
    }
    sb.own(&ctx);
    let mut c = bkrun(sb);
    c.arg("build")
        .args(dockerfile_args(&ctx))
        .arg("--progress=plain");
    let (mut child, rx) = spawn_watched(c);
    wait_for_line(&rx, "transferring context: ", Duration::from_secs(60));
    let (status, exited, gone, left) =
        kill_and_measure(sb, &mut child, nix::sys::signal::Signal::SIGTERM, None);
    assert_eq!(status.code(), Some(143));
    assert!(exited < Duration::from_secs(12), "{exited:?}");
    let mut again = bkrun(sb);
    again
        .arg("build")
        .args(dockerfile_args(&ctx))
        .arg("--progress=plain");
    let err = stderr(&run_ok(&mut again));
    assert!(!err.contains("did not stop cleanly"), "{err}");
    sb.assert_clean();
    Row {
        phase: "context transfer",
        signal: "SIGTERM",
        exit: exit_text(&status),
        exited_after: exited,
        gone_after: gone,
        leftovers: left,
    }
}

fn matrix(mode: Mode) {
    let rows = [
        sigkill_during_run_step(&Sandbox::new(mode)),
        sigkill_during_local_export(&Sandbox::new(mode)),
        sigterm_during_context_transfer(&Sandbox::new(mode)),
    ];
    fs::create_dir_all(REPORT_DIR).unwrap();
    let mut tsv = String::from(
        "mode\tsignal\tphase\texit\texited after (ms)\tall gone after (ms)\tleft behind\n",
    );
    for r in rows {
        tsv.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:.0}\t{:.0}\t{}\n",
            mode.flag(),
            r.signal,
            r.phase,
            r.exit,
            r.exited_after.as_secs_f64() * 1e3,
            r.gone_after.as_secs_f64() * 1e3,
            if r.leftovers.is_empty() {
                "-"
            } else {
                &r.leftovers
            }
        ));
    }
    fs::write(format!("{REPORT_DIR}/{}.tsv", mode.flag()), tsv).unwrap();
}

#[test]
fn killed_privileged() {
    matrix(Mode::Privileged);
}

#[test]
fn killed_rootless() {
    matrix(Mode::Rootless);
}

#[test]
fn killed_rootless_strict() {
    matrix(Mode::RootlessStrict);
}

/// Two builds on one state dir at once: the second waits for the first and says so; told not
/// to wait, it says in one line that the state dir is in use.
#[test]
fn two_runs_on_one_state_dir() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context("slow", "RUN sleep 3\n");
    let (mut first, rx) = spawn_watched(build(&sb, &ctx));
    wait_for_line(&rx, "RUN sleep 3", Duration::from_secs(60));
    let t = Instant::now();
    let mut refused = bkrun(&sb);
    refused.arg("--lock-timeout=0");
    let out = run_fails(&mut sb.build_from(refused, &ctx));
    let err = stderr(&out);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        err.lines()
            .any(|l| l.contains("is in use by another bkrun run (pid")
                && l.contains("--lock-timeout")),
        "{err}"
    );
    let second = run_ok(&mut build(&sb, &ctx));
    let err = stderr(&second);
    assert!(
        err.contains("is in use by another bkrun run") && err.contains("waiting up to 300s"),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    assert!(
        !err.contains("did not stop cleanly"),
        "a finished run is a clean one: {err}"
    );
    sb.assert_clean();
}

/// SIGKILLs during context transfers, one after another, each after the context changed: the
/// build after them must see exactly the context as it is now (a cache record left half-updated
/// would fail its cache key, or worse, reuse a stale checksum).
#[test]
fn repeated_sigkills_during_context_transfers_leave_a_consistent_cache() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("repeat", "FROM scratch\nCOPY data /data\n");
    let data = ctx.join("data");
    {
        let mut f = fs::File::create(&data).unwrap();
        let block = vec![3u8; 1 << 20];
        for _ in 0..384 {
            f.write_all(&block).unwrap();
        }
    }
    let stamp = |round: u32| {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(format!("round {round:04}\n").as_bytes(), 0)
            .unwrap();
        f.write_all_at(format!("tail {round:04}\n").as_bytes(), (384 << 20) - 10)
            .unwrap();
    };
    let build = |dest: Option<&Path>| {
        let mut c = bkrun(&sb);
        c.arg("build")
            .args(dockerfile_args(&ctx))
            .arg("--progress=plain");
        if let Some(d) = dest {
            c.arg(local_output(d));
        }
        c
    };
    for round in 0..3 {
        stamp(round);
        let (mut child, rx) = spawn_watched(build(None));
        wait_for_line(&rx, "transferring context: ", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(200 * u64::from(round)));
        let (status, ..) =
            kill_and_measure(&sb, &mut child, nix::sys::signal::Signal::SIGKILL, None);
        assert_eq!(status.signal(), Some(9));
    }
    stamp(99);
    let dest = sb.path("out");
    let out = run_ok(&mut build(Some(&dest)));
    let got = fs::read(dest.join("data")).unwrap();
    let want = fs::read(&data).unwrap();
    assert!(
        got == want,
        "the build saw a stale context: {:?} / {:?}",
        String::from_utf8_lossy(&got[..11]),
        String::from_utf8_lossy(&got[got.len() - 10..])
    );
    assert!(
        stderr(&out).contains("did not stop cleanly"),
        "{}",
        show(&out)
    );
    sb.assert_clean();
}
