//! `--allow` against the daemon bkrun starts and a remote one that refuses, and a daemon killed mid-build: each ends promptly with its cause, leaving nothing.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `c` to its end, failing the test (and killing it) if it takes longer than `limit`:
/// whatever these tests break must not hang CI.
fn output_within(c: &mut Command, limit: Duration) -> Output {
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn_ok();
    wait_within(child, limit)
}

fn wait_within(mut child: Child, limit: Duration) -> Output {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let done = wait_until(limit, || child.try_wait().unwrap().is_some());
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(done, "still running after {limit:?}:\n{}", show(&output));
    output
}

/// CAP_SYS_ADMIN's bit in /proc's capability masks: a step has it only with security.insecure.
const CAP_SYS_ADMIN_BIT: u32 = 21;

fn has_sys_admin(status_line: &str) -> bool {
    let hex = status_line.trim().rsplit(['\t', ' ']).next().unwrap_or("");
    u64::from_str_radix(hex, 16).is_ok_and(|m| m & (1 << CAP_SYS_ADMIN_BIT) != 0)
}

/// The interface names in a /proc/net/dev text.
fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn allow_grants_host_network_and_insecure_on_the_daemon_bkrun_starts() {
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let ctx = sb.shell_context(
            "allow",
            "RUN --network=host cat /proc/net/dev > /net.txt\nRUN --security=insecure grep CapEff /proc/self/status > /caps.txt\nRUN grep CapEff /proc/self/status > /plain-caps.txt\n",
        );
        let dest = sb.path("out");
        let t = Instant::now();
        let out = output_within(
            sb.build(&ctx)
                .args(["--allow", "network.host", "--allow=security.insecure"])
                .arg(local_output(&dest)),
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        let net = fs::read_to_string(dest.join("net.txt")).unwrap();
        if mode == Mode::Privileged {
            // The host's own interfaces, not a sandbox's lone loopback.
            let host = fs::read_to_string("/proc/net/dev").unwrap();
            assert_eq!(interfaces(&net), interfaces(&host), "{net}");
        } else {
            assert!(interfaces(&net).contains(&"lo".to_string()), "{net}");
        }
        let caps = fs::read_to_string(dest.join("caps.txt")).unwrap();
        assert!(has_sys_admin(&caps), "{mode:?}: insecure step: {caps}");
        let plain = fs::read_to_string(dest.join("plain-caps.txt")).unwrap();
        assert!(!has_sys_admin(&plain), "{mode:?}: plain step: {plain}");
        eprintln!(
            "{mode:?}: built with both entitlements in {:?}",
            t.elapsed()
        );
        sb.assert_clean();
    }
}

#[test]
fn a_step_needing_an_entitlement_the_build_did_not_allow_is_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.shell_context("need", "RUN --security=insecure true\n");
    let out = output_within(&mut sb.build(&ctx), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("add --allow security.insecure to the build flags"),
        "{err}"
    );
    assert!(err.contains("error: failed to solve:"), "{err}");
    // An unknown name never reaches a daemon.
    let t = Instant::now();
    let out = output_within(
        sb.build(&ctx).args(["--allow", "network.hots"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("--allow network.hots: unknown entitlement"),
        "{}",
        show(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    sb.assert_clean();
}

#[test]
fn a_remote_daemon_without_the_entitlement_refuses_at_once() {
    // Rootless: the daemon's socket is private to the sandbox, not the host's shared one.
    let sb = Sandbox::new(Mode::Rootless);
    let (mut daemon, addr) = serve(&sb, &[]).expect("bkrun daemon did not print its address");
    let ctx = sb.shell_context("remote", "RUN --network=host true\n");
    let t = Instant::now();
    let out = output_within(
        sb.command(&sb.bin)
            .args(["--addr", &addr, "build"])
            .args(sb.build_args(&ctx))
            .args(["--allow", "network.host"]),
        Duration::from_secs(30),
    );
    let took = t.elapsed();
    stop_with_sigterm(&mut daemon);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the daemon at {addr} (from --addr) does not grant --allow network.host"
        )),
        "{err}"
    );
    assert!(
        err.contains("--allow-insecure-entitlement network.host"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    sb.assert_clean();
}

/// Every process below `root`, from /proc's parent links.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent: HashMap<u32, (u32, String)> = HashMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces: the fields after its last ')' are fixed.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        parent.insert(pid, (ppid, comm));
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, (ppid, comm)) in &parent {
            if *ppid == p {
                out.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    out
}

#[test]
fn a_daemon_killed_mid_build_is_named_with_its_log() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let marker = format!("bkrun-kill-marker-{}", std::process::id());
        let ctx = sb.shell_context("long", &format!("RUN sleep 30; echo {marker}\n"));
        let child = sb
            .build(&ctx)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_ok();
        let bkrun = child.id();
        let running = wait_until(Duration::from_secs(60), || {
            descendants(bkrun).iter().any(|(pid, _)| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
        });
        let buildkitd = descendants(bkrun)
            .into_iter()
            .find(|(_, comm)| comm == "buildkitd")
            .map(|(pid, _)| pid);
        if let (true, Some(pid)) = (running, buildkitd) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
        let t = Instant::now();
        let out = wait_within(child, Duration::from_secs(40));
        assert!(
            running,
            "{mode:?}: the RUN step never started: {}",
            show(&out)
        );
        assert!(buildkitd.is_some(), "{mode:?}: no buildkitd below bkrun");
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("bkrun: buildkitd was killed by SIGKILL during the build"),
            "{mode:?}: {err}"
        );
        assert!(!err.contains("transport error"), "{mode:?}: {err}");
        assert!(err.contains("daemon log (kept at "), "{mode:?}: {err}");
        // Well before the step would have ended by itself.
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        // The log is kept (and named); nothing else is.
        sb.take_kept_log(&err);
        let left = wait_until(Duration::from_secs(5), || sb.live_processes().is_empty());
        assert!(left, "{mode:?}: {:?}", sb.live_processes());
        sb.assert_clean();
    }
}
