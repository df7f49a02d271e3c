//! End-to-end tests of remote daemons: `--addr`/BUILDKIT_HOST, mutual TLS with openssl-made certificates, the explained refusals, retries, and `bkrun daemon --listen`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;

struct Client<'a> {
    sb: &'a Sandbox,
    certs: PathBuf,
    addr: String,
}

impl Client<'_> {
    /// bkrun against the remote address with the given TLS flags (file names inside certs/).
    fn bkrun(&self, tls: &[(&str, &str)]) -> Command {
        let mut c = self.sb.command(&self.sb.bin);
        c.arg("--addr")
            .arg(&self.addr)
            .args(["--connect-retry", "0"]);
        for (flag, v) in tls {
            let v = if v.ends_with(".pem") {
                self.certs.join(v).display().to_string()
            } else {
                v.to_string()
            };
            c.arg(flag).arg(v);
        }
        c
    }
}

const MUTUAL: &[(&str, &str)] = &[
    ("--tlscacert", "ca.pem"),
    ("--tlscert", "client.pem"),
    ("--tlskey", "client-key.pem"),
    ("--tlsservername", "buildkitd.test"),
];

fn refused_with(c: &mut Command, want: &str) {
    let t = Instant::now();
    let out = c.args(["debug", "workers"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.starts_with("bkrun: ") && first.contains(want),
        "wanted {want:?} on the first line:\n{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[test]
fn mutual_tls_daemon_serves_bkrun_and_buildctl_and_refusals_are_explained() {
    let sb = Sandbox::new(Mode::Privileged);
    let certs = sb.mkdir("certs");
    make_certs(&certs);
    let port = free_port();
    let (daemon, unix) = tls_daemon(&sb, "state", &certs, port);
    let cl = Client {
        sb: &sb,
        certs: certs.clone(),
        addr: format!("tcp://127.0.0.1:{port}"),
    };

    // Mutual TLS: debug workers and a build.
    let out = run_ok(cl.bkrun(MUTUAL).args(["debug", "workers"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("linux/"),
        "{}",
        show(&out)
    );
    let ctx = sb.hello_context();
    let dest = sb.path("out");
    run_ok(
        cl.bkrun(MUTUAL)
            .arg("build")
            .args(sb.build_args(&ctx))
            .arg(format!("--output=type=local,dest={}", dest.display())),
    );
    assert!(dest.join("hello.txt").exists());

    // buildctl reaches the same listener with the same material.
    let mut c = sb.command("buildctl");
    c.arg("--addr").arg(&cl.addr);
    for (f, v) in MUTUAL {
        c.arg(f).arg(if v.ends_with(".pem") {
            certs.join(v).display().to_string()
        } else {
            v.to_string()
        });
    }
    run_ok(c.args(["debug", "workers"]));

    // BUILDKIT_HOST and --tlsdir.
    let mut c = sb.command(&sb.bin);
    c.env("BUILDKIT_HOST", &cl.addr)
        .arg("--tlsdir")
        .arg(certs.join("tlsdir"))
        .args(["--tlsservername", "buildkitd.test", "debug", "workers"]);
    run_ok(&mut c);

    // A Kubernetes TLS secret mounted as --tlsdir: ca.crt, tls.crt, tls.key.
    let secret = sb.mkdir("tls-secret");
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("client.pem", "tls.crt"),
        ("client-key.pem", "tls.key"),
    ] {
        fs::copy(certs.join(from), secret.join(to)).unwrap();
    }
    let mut c = sb.command(&sb.bin);
    c.arg("--addr")
        .arg(&cl.addr)
        .arg("--tlsdir")
        .arg(&secret)
        .args(["--tlsservername", "buildkitd.test", "debug", "workers"]);
    run_ok(&mut c);

    // The daemon's CA only in SSL_CERT_FILE, as a CI job injects a corporate CA.
    run_ok(
        cl.bkrun(&[
            ("--tlscert", "client.pem"),
            ("--tlskey", "client-key.pem"),
            ("--tlsservername", "buildkitd.test"),
        ])
        .env("SSL_CERT_FILE", certs.join("ca.pem"))
        .args(["debug", "workers"]),
    );

    // The unix socket still serves, without TLS.
    let mut c = sb.command(&sb.bin);
    run_ok(c.arg("--addr").arg(&unix).args(["debug", "info"]));

    // Refusals, each explained on the first line.
    refused_with(
        &mut cl.bkrun(&[
            ("--tlscacert", "ca2.pem"),
            ("--tlscert", "client.pem"),
            ("--tlskey", "client-key.pem"),
            ("--tlsservername", "buildkitd.test"),
        ]),
        "not signed by a CA in",
    );
    refused_with(
        &mut cl.bkrun(&[
            ("--tlscacert", "ca.pem"),
            ("--tlsservername", "buildkitd.test"),
        ]),
        "as a daemon that wants a client certificate does",
    );
    refused_with(
        &mut cl.bkrun(&[
            ("--tlscacert", "ca.pem"),
            ("--tlscert", "client2.pem"),
            ("--tlskey", "client2-key.pem"),
            ("--tlsservername", "buildkitd.test"),
        ]),
        "rejected the client certificate",
    );
    refused_with(
        &mut cl.bkrun(&[
            ("--tlscacert", "ca.pem"),
            ("--tlscert", "client.pem"),
            ("--tlskey", "client-key.pem"),
        ]),
        "no IP SAN for 127.0.0.1",
    );
    refused_with(
        &mut cl.bkrun(&[]),
        "if the daemon serves TLS, pass --tlscacert",
    );

    stop_daemon(daemon);
    sb.assert_clean();
}

#[test]
fn plaintext_and_unreachable_addresses_are_explained() {
    let sb = Sandbox::new(Mode::Privileged);
    let port = free_port();
    // Nothing listens there.
    refused_with(
        sb.command(&sb.bin)
            .arg("--addr")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .args(["--connect-retry", "0"]),
        &format!("cannot connect to tcp://127.0.0.1:{port}: connection refused"),
    );
    // Plaintext off loopback is refused before any connection is made.
    let out = sb
        .command(&sb.bin)
        .args(["--addr", "tcp://buildkitd.invalid:1234", "debug", "workers"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--insecure-plaintext"),
        "{}",
        show(&out)
    );
    // A --listen off loopback without mutual TLS is refused before a daemon starts.
    let out = sb
        .bkrun()
        .args(["daemon", "--listen", "tcp://0.0.0.0:1234"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-client-ca"),
        "{}",
        show(&out)
    );
    sb.assert_clean();
}

#[test]
fn a_briefly_unavailable_daemon_is_retried() {
    let sb = Sandbox::new(Mode::Privileged);
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    // The client starts first and keeps trying while the daemon comes up (a rolling restart).
    let client = sb
        .command(&sb.bin)
        .arg("--addr")
        .arg(&addr)
        .args(["--connect-retry", "60", "debug", "workers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_ok();
    std::thread::sleep(Duration::from_millis(1500));
    let mut daemon = bkrun_daemon(&sb, "state")
        .arg(format!("--listen={addr}"))
        .stdout(Stdio::piped())
        .spawn_ok();
    let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
    lines.next();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying in"),
        "{}",
        show(&out)
    );
    stop_daemon(daemon);
    sb.assert_clean();
}
