//! Mutual TLS in tests: openssl-made certificates, free loopback ports, and `bkrun daemon` with a TLS listener and a state dir and socket of its own.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{sh_in, Sandbox};

/// A CA, a server certificate for DNS name buildkitd.test only (no IP SAN), a client
/// certificate, and a second CA with its own client certificate.
pub fn make_certs(dir: &Path) {
    let sh = |script: &str| sh_in(dir, script);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:buildkitd.test\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh("for ca in ca ca2; do
          openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca-key.pem -out $ca.pem -days 2 -subj /CN=bkrun-test-$ca 2>/dev/null
        done
        openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=buildkitd.test 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
        for who in client:ca client2:ca2; do
          name=${who%%:*}; ca=${who##*:}
          openssl req -newkey rsa:2048 -nodes -keyout $name-key.pem -out $name.csr -subj /CN=$name 2>/dev/null
          openssl x509 -req -in $name.csr -CA $ca.pem -CAkey $ca-key.pem -CAcreateserial -out $name.pem -days 2 -extfile client.ext 2>/dev/null
        done
        mkdir tlsdir && cp ca.pem tlsdir/ca.pem && cp client.pem tlsdir/cert.pem && cp client-key.pem tlsdir/key.pem");
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `bkrun daemon` on the sandbox's state dir `state`, with its socket in the sandbox's
/// `run-STATE`: as root it would otherwise take /run/buildkit/buildkitd.sock, which parallel
/// tests (and a real daemon) share, and daemons of one test would take each other's.
pub fn bkrun_daemon(sb: &Sandbox, state: &str) -> Command {
    let run = sb.mkdir(&format!("run-{state}"));
    let cfg = sb.write(
        &format!("daemon-{state}.toml"),
        &format!("socket_dir = \"{}\"\n", run.display()),
    );
    let mut c = sb.bkrun_root(state);
    c.arg("--config").arg(cfg).arg("daemon");
    c
}

/// `bkrun daemon` on state dir `state` with a mutual-TLS listener on 127.0.0.1:port (the
/// certificates of `make_certs` in `certs`); returns it, once it serves, and its unix address.
pub fn tls_daemon(sb: &Sandbox, state: &str, certs: &Path, port: u16) -> (Child, String) {
    let mut child = bkrun_daemon(sb, state)
        .arg(format!("--listen=tcp://127.0.0.1:{port}"))
        .arg("--tls-server-cert")
        .arg(certs.join("server.pem"))
        .arg("--tls-server-key")
        .arg(certs.join("server-key.pem"))
        .arg("--tls-client-ca")
        .arg(certs.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let unix = lines.next().unwrap().unwrap();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        format!("tcp://127.0.0.1:{port}")
    );
    (child, unix)
}

/// SIGTERM to a `bkrun daemon`, which stops its buildkitd and exits 128+15.
pub fn stop_daemon(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

/// buildctl's TLS flags for the client certificate of `make_certs` in `certs`; the server
/// certificate names buildkitd.test, not the loopback address.
pub fn mutual_tls_flags(certs: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    for (flag, file) in [
        ("--tlscacert", "ca.pem"),
        ("--tlscert", "client.pem"),
        ("--tlskey", "client-key.pem"),
    ] {
        flags.push(flag.to_string());
        flags.push(certs.join(file).display().to_string());
    }
    flags.extend(["--tlsservername".into(), "buildkitd.test".into()]);
    flags
}
