//! The one TLS rule, run through the real binary: a daemon address off loopback without mutual TLS, from any source, is refused in one line before any daemon starts.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn an_open_address_from_any_source_is_refused_at_once_with_no_daemon() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.hello_context();
    let cfg = sb.write(
        "bkrun.toml",
        "buildkitd_flags = [\"--addr=tcp://0.0.0.0:1234\"]\n",
    );
    let mut from_env = sb.build(&ctx);
    from_env.env("BUILDKITD_FLAGS", "--debug --addr tcp://0.0.0.0:1234");
    let mut from_flag = sb.bkrun();
    from_flag.arg("--buildkitd-flags=--addr=tcp://0.0.0.0:1234");
    let from_flag = sb.build_from(from_flag, &ctx);
    let from_file = sb.build_from(with_config(sb.bkrun(), &cfg), &ctx);
    let mut listen = sb.bkrun();
    listen.args(["daemon", "--listen", "tcp://0.0.0.0:1234"]);
    let cases = [
        ("BUILDKITD_FLAGS --addr tcp://0.0.0.0:1234", from_env),
        ("--buildkitd-flags --addr tcp://0.0.0.0:1234", from_flag),
        ("buildkitd_flags in ", from_file),
        ("--listen tcp://0.0.0.0:1234", listen),
    ];
    for (origin, mut command) in cases {
        let t = Instant::now();
        let out = run_fails(&mut command);
        let took = t.elapsed();
        let err = stderr(&out);
        assert!(err.starts_with(&format!("bkrun: {origin}")), "{err}");
        assert!(
            err.contains("is reachable from other hosts: give "),
            "{err}"
        );
        assert!(
            err.trim_end().ends_with("or pass --insecure-plaintext"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        eprintln!("{origin}: refused in {took:?}");
        assert!(took < Duration::from_millis(500), "{origin}: {took:?}");
        sb.assert_no_daemon_started(t);
    }
    sb.assert_clean();
}
