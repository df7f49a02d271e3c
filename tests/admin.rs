//! End-to-end tests of the native `debug workers`, `debug info`, `du`, `prune` and `prune-histories` against a real buildkitd, compared with buildctl's own output.

mod common;

use common::*;

fn stdout(c: &mut std::process::Command) -> String {
    String::from_utf8(run_ok(c).stdout).unwrap()
}

/// Lines of `du`/`prune` output that name a cache record (not the header or the totals).
fn record_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("ID\t") && !l.contains(':') && !l.is_empty())
        .collect()
}

#[test]
fn debug_du_and_prune_match_buildctl() {
    let sb = Sandbox::new(Mode::Privileged);

    for args in [&["debug", "workers"][..], &["debug", "workers", "-v"]] {
        let native = stdout(sb.bkrun().args(args));
        let theirs = stdout(sb.bkrun().args(["exec", "--", "buildctl"]).args(args));
        assert_eq!(native, theirs, "bkrun {args:?} differs from buildctl's");
    }
    let native = stdout(sb.bkrun().args(["debug", "workers"]));
    assert!(native.starts_with("ID\t"), "{native}");
    assert!(native.contains("linux/"), "{native}");

    let info = stdout(sb.bkrun().args(["debug", "info"]));
    assert!(info.starts_with("BuildKit:"), "{info}");
    assert!(info.contains("v0.32.2"), "{info}");

    let ctx = sb.context("tiny", "FROM scratch\nCOPY somefile /\n");
    sb.write("tiny/somefile", &"x".repeat(3000));
    run_ok(sb.bkrun().arg("build").args([
        "--frontend=dockerfile.v0".to_string(),
        format!("--local=context={}", ctx.display()),
        format!("--local=dockerfile={}", ctx.display()),
        "--progress=plain".into(),
    ]));

    let du = stdout(sb.bkrun().arg("du"));
    let theirs = stdout(sb.bkrun().args(["exec", "--", "buildctl", "du"]));
    assert_eq!(du, theirs, "bkrun du differs from buildctl du");
    assert!(du.starts_with("ID\t"), "{du}");
    assert!(du.contains("\nReclaimable:\t"), "{du}");
    let records = record_lines(&du);
    assert!(!records.is_empty(), "no cache records after a build:\n{du}");

    let du_v = stdout(sb.bkrun().args(["du", "-v"]));
    let theirs = stdout(sb.bkrun().args(["exec", "--", "buildctl", "du", "-v"]));
    assert_eq!(du_v, theirs, "bkrun du -v differs from buildctl du -v");

    let pruned = stdout(sb.bkrun().arg("prune"));
    assert_eq!(
        record_lines(&pruned).len(),
        records.len(),
        "prune did not list every record du did:\n{du}\n{pruned}"
    );
    assert!(
        pruned.lines().last().unwrap().starts_with("Total:\t"),
        "{pruned}"
    );

    let after = stdout(sb.bkrun().arg("du"));
    assert!(
        record_lines(&after).is_empty(),
        "records left after prune:\n{after}"
    );
    assert!(after.ends_with("Total:\t\t0B\n"), "{after}");
    sb.assert_clean();
}

#[test]
fn daemonless_sh_debug_workers_is_native() {
    let sb = Sandbox::new(Mode::Privileged);
    let link = sb.path("bin/buildctl-daemonless.sh");
    std::os::unix::fs::symlink(&sb.bin, &link).unwrap();
    let mut c = sb.command(&link);
    // BUILDCTL names nothing: a pass-through to buildctl would fail to find it.
    c.env("BUILDCTL", "/nonexistent/buildctl")
        .args(["--mode", "privileged", "--root"])
        .arg(sb.path("state"))
        .args(["debug", "workers"]);
    let out = stdout(&mut c);
    assert!(out.starts_with("ID\t"), "{out}");
    assert!(out.contains("linux/"), "{out}");
    sb.assert_clean();
}

#[test]
fn prune_histories_matches_buildctl_and_deletes_them() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("tiny", "FROM scratch\nCOPY somefile /\n");
    sb.write("tiny/somefile", "x");
    for _ in 0..2 {
        run_ok(sb.bkrun().arg("build").args(dockerfile_args(&ctx)));
    }
    // A template bkrun cannot run is refused before a daemon starts or a record goes.
    let t = std::time::Instant::now();
    let err = stderr(&run_fails(sb.bkrun().args([
        "prune-histories",
        "--format",
        "{{range .}}{{end}}",
    ])));
    assert!(err.contains("bkrun exec -- buildctl"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(2));

    // The same history under four state dirs: each of bkrun and buildctl prunes one copy as a
    // table and one with {{json .}}, so the outputs match byte for byte, refs and times too.
    for copy in ["state-buildctl", "state-json", "state-buildctl-json"] {
        run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(sb.path("state"))
                .arg(sb.path(copy)),
        );
    }
    let table = stdout(sb.bkrun().arg("prune-histories"));
    let theirs =
        stdout(
            sb.bkrun_root("state-buildctl")
                .args(["exec", "--", "buildctl", "prune-histories"]),
        );
    assert_eq!(
        table, theirs,
        "bkrun prune-histories differs from buildctl's"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("TYPE\t"), "{table}");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("COMPLETE\t")),
        "{table}"
    );

    let json =
        stdout(
            sb.bkrun_root("state-json")
                .args(["prune-histories", "--format", "{{json .}}"]),
        );
    let theirs = stdout(sb.bkrun_root("state-buildctl-json").args([
        "exec",
        "--",
        "buildctl",
        "prune-histories",
        "--format",
        "{{json .}}",
    ]));
    assert_eq!(
        json, theirs,
        "bkrun's {{{{json .}}}} differs from buildctl's"
    );
    assert_eq!(json.lines().count(), 2, "{json}");
    assert!(
        json.lines()
            .all(|l| l.starts_with(r#"{"type":1,"record":{"Ref":""#)),
        "{json}"
    );

    // Gone, for bkrun and for buildctl alike.
    let empty = "TYPE\tREF\tCREATED\tCOMPLETED\tGENERATION\n";
    assert_eq!(stdout(sb.bkrun().arg("prune-histories")), empty);
    let theirs =
        stdout(
            sb.bkrun_root("state-json")
                .args(["exec", "--", "buildctl", "prune-histories"]),
        );
    assert_eq!(theirs, empty);
    sb.assert_clean();
}
