//! End-to-end tests of a pool of daemons: three `bkrun daemon`s with mutual TLS; each project lands on the daemon its route key picks, keys spread fairly, and with one daemon stopped only its keys move and builds still succeed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::tls::*;
use common::*;

/// bkrun against the pool `addrs`, given as a comma list and a repeated --addr, with mutual TLS.
fn pooled(sb: &Sandbox, certs: &Path, addrs: &[String]) -> Command {
    let mut c = sb.command(&sb.bin);
    c.arg("--addr")
        .arg(addrs[..2].join(","))
        .arg("--addr")
        .arg(&addrs[2])
        .args(mutual_tls_flags(certs))
        .args(["--connect-retry", "0"]);
    c
}

/// What `bkrun config` says the key picks, and the rest of the order.
fn picks(sb: &Sandbox, certs: &Path, addrs: &[String], key: &str) -> Vec<String> {
    let out = run_ok(pooled(sb, certs, addrs).args(["--route-key", key, "config"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("picks:"))
        .unwrap_or_else(|| panic!("no picks: line in\n{text}"));
    // "tcp://b (then tcp://a, tcp://c, if it does not serve)"
    line.replace(['(', ')', ','], " ")
        .split_whitespace()
        .filter(|w| w.starts_with("tcp://"))
        .map(String::from)
        .collect()
}

/// The daemon bkrun's one `using` line names, the choice it was, and the line.
fn used(out: &std::process::Output) -> (String, usize, String) {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.starts_with("bkrun: using "))
        .unwrap_or_else(|| panic!("no using line:\n{}", show(out)))
        .to_string();
    let rest = line.strip_prefix("bkrun: using ").unwrap();
    let (addr, rest) = rest.split_once(", choice ").unwrap();
    let n = rest.split_whitespace().next().unwrap().parse().unwrap();
    (addr.to_string(), n, line)
}

/// Whether the daemon at the unix address `unix` holds any build cache.
fn has_cache(sb: &Sandbox, unix: &str) -> bool {
    let out = run_ok(sb.command(&sb.bin).arg("--addr").arg(unix).arg("du"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    !text
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Total:", "0B"])
}

#[test]
fn a_pool_of_three_keeps_each_project_on_its_daemon_and_fails_over() {
    let t0 = Instant::now();
    let sb = Sandbox::new(Mode::Privileged);
    let certs = sb.mkdir("certs");
    make_certs(&certs);
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let addrs: Vec<String> = ports
        .iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect();
    let mut daemons: BTreeMap<String, (std::process::Child, String)> = BTreeMap::new();
    for (i, a) in addrs.iter().enumerate() {
        daemons.insert(
            a.clone(),
            tls_daemon(&sb, &format!("state{i}"), &certs, ports[i]),
        );
    }

    // A hundred keys spread over the three within a fair margin (33 ± 14), with no build.
    let keys: Vec<String> = (0..100).map(|i| format!("team/project-{i}")).collect();
    let orders: BTreeMap<&String, Vec<String>> = keys
        .iter()
        .map(|k| (k, picks(&sb, &certs, &addrs, k)))
        .collect();
    for a in &addrs {
        let n = orders.values().filter(|o| &o[0] == a).count();
        assert!((19..=47).contains(&n), "{a} got {n} of 100 keys");
    }
    for o in orders.values() {
        let mut s = o.clone();
        s.sort();
        let mut all = addrs.clone();
        all.sort();
        assert_eq!(s, all, "each order names every daemon once");
    }

    // The same project lands on the same daemon, build after build, from wherever it is named.
    let ctx = sb.shell_context("proj", "RUN echo built > /built.txt\n");
    let first = run_ok(&mut sb.build_from(pooled(&sb, &certs, &addrs), &ctx));
    let (home, choice, line) = used(&first);
    assert_eq!(choice, 1, "{line}");
    let key = std::fs::canonicalize(&ctx).unwrap().display().to_string();
    assert!(line.contains(&format!("for route key {key:?}")), "{line}");
    assert_eq!(picks(&sb, &certs, &addrs, &key)[0], home);
    let mut again = pooled(&sb, &certs, &addrs);
    // Relative paths, from the sandbox dir: the key is the canonical context path all the same.
    let relative = sb.build_args(&ctx).into_iter().map(|a| {
        if a.starts_with("--local=context=") {
            "--local=context=proj".into()
        } else if a.starts_with("--local=dockerfile=") {
            "--local=dockerfile=./proj/../proj".into()
        } else {
            a
        }
    });
    again.arg("build").args(relative.collect::<Vec<String>>());
    let second = run_ok(&mut again);
    let (addr, _, line) = used(&second);
    assert_eq!(addr, home, "{line}");
    assert!(
        stderr(&second).contains("CACHED"),
        "the second build meets the first one's cache:\n{}",
        show(&second)
    );
    for (a, (_, unix)) in &daemons {
        assert_eq!(
            has_cache(&sb, unix),
            *a == home,
            "cache on {a} (the project's is {home})"
        );
    }

    // The project's daemon stops: its keys move to their second choice, every other key stays.
    let (child, _) = daemons.remove(&home).unwrap();
    stop_daemon(child);
    for k in &keys {
        let out = run_ok(pooled(&sb, &certs, &addrs).args(["--route-key", k, "debug", "info"]));
        let (addr, choice, line) = used(&out);
        let order = &orders[k];
        if order[0] == home {
            assert_eq!((addr.as_str(), choice), (order[1].as_str(), 2), "{line}");
            assert!(
                line.contains(&format!("passed over {home} (connection refused")),
                "{line}"
            );
        } else {
            assert_eq!((addr.as_str(), choice), (order[0].as_str(), 1), "{line}");
        }
    }
    // And the project still builds, on the next daemon in its order.
    let dest = sb.path("out");
    let out = run_ok(
        sb.build_from(pooled(&sb, &certs, &addrs), &ctx)
            .arg(local_output(&dest)),
    );
    let (addr, choice, line) = used(&out);
    assert_eq!(
        (addr, choice),
        (picks(&sb, &certs, &addrs, &key)[1].clone(), 2),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("built.txt")).unwrap(),
        "built\n"
    );

    // With none serving, one line names each daemon and why.
    for (_, (child, _)) in std::mem::take(&mut daemons) {
        stop_daemon(child);
    }
    let out = run_fails(pooled(&sb, &certs, &addrs).args(["debug", "info"]));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("bkrun: none of the 3 daemons of the pool (from --addr) serves: "),
        "{err}"
    );
    for a in &addrs {
        assert!(err.contains(&format!("{a} (connection refused")), "{err}");
    }
    sb.assert_clean();
    eprintln!("pool test took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn bad_pools_fail_before_any_connection() {
    let sb = Sandbox::new(Mode::Privileged);
    let t = Instant::now();
    for (addr, want) in [
        ("tcp://b-{0,1}:1234", "not a range"),
        ("tcp://a:1234,,tcp://b:1234", "empty entry"),
        // The third address is bad: nothing is dialled, the first two included.
        (
            "tcp://127.0.0.1:1,tcp://127.0.0.1:2,http://c:1",
            "unsupported daemon address",
        ),
        (
            "tcp://127.0.0.1:1,tcp://10.9.9.9:1",
            "refusing plaintext gRPC to tcp://10.9.9.9:1",
        ),
    ] {
        let out = run_fails(
            sb.command(&sb.bin)
                .args(["--addr", addr, "debug", "workers"]),
        );
        let err = stderr(&out);
        assert!(err.lines().next().unwrap().contains(want), "{addr}: {err}");
        assert!(!err.contains("bkrun: using"), "{err}");
    }
    assert!(t.elapsed().as_secs() < 5);
    sb.assert_clean();
}

#[test]
fn one_daemon_never_gives_a_project_anothers_files() {
    // Two projects whose files share names, sizes and mtimes (one checkout tick, an archive's
    // stamps) but not contents, built one after the other on one state dir.
    let sb = Sandbox::new(Mode::Privileged);
    let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123);
    let mut outs = Vec::new();
    for p in ["one", "two"] {
        let ctx = sb.context(p, "FROM scratch\nCOPY . /\n");
        let f = ctx.join("same.txt");
        std::fs::write(&f, format!("project {p}\n")).unwrap();
        for name in ["same.txt", "Dockerfile"] {
            std::fs::File::options()
                .write(true)
                .open(ctx.join(name))
                .unwrap()
                .set_modified(stamp)
                .unwrap();
        }
        let dest = sb.path(&format!("out-{p}"));
        run_ok(sb.build(&ctx).arg(local_output(&dest)));
        outs.push(std::fs::read_to_string(dest.join("same.txt")).unwrap());
    }
    assert_eq!(outs, ["project one\n", "project two\n"]);
    sb.assert_clean();
}
