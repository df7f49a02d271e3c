//! Turning a daemon's gRPC error into what people know from buildctl: the Dockerfile excerpt around the failing line, then `error: failed to solve: …`.

use std::fmt::Write as _;

use prost::Message;

use crate::proto::errdefs::Source;
use crate::proto::google::rpc::Status as RpcStatus;
use crate::proto::{decode_json_detail, DETAIL_SOURCE};

/// Turns a gRPC error into one line in buildctl's words: what failed, then the daemon's reason.
pub(super) fn failed(what: &'static str) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    // The status stays in the chain, so the caller can explain connection problems.
    move |status| anyhow::Error::new(status).context(what)
}

/// The source locations attached to an error, outermost last (as buildctl prints them).
pub fn sources(status: &tonic::Status) -> Vec<Source> {
    let Ok(rpc) = RpcStatus::decode(status.details()) else {
        return Vec::new();
    };
    rpc.details
        .iter()
        .filter_map(|d| decode_json_detail::<Source>(d, DETAIL_SOURCE))
        .filter_map(Result::ok)
        .collect()
}

/// The excerpt of the file around the ranges: the line(s) marked `>>>`, two lines of context
/// either side (four when a single line failed), in buildctl's layout.
pub fn excerpt(src: &Source) -> Option<String> {
    let info = src.info.as_ref()?;
    let text = String::from_utf8_lossy(&info.data);
    let lines: Vec<&str> = text.split('\n').collect();
    let (mut start, mut end) = line_span(src)?;
    if start < 1 || start > lines.len() {
        return None;
    }
    end = end.min(lines.len());
    let first_failing = start;
    let pad = if start == end { 4 } else { 2 };
    // The context grows alternately at the top and the bottom, counting steps even where one
    // side is already at the file's edge, so the window matches buildctl's exactly.
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != lines.len() {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{}:{first_failing}\n--------------------\n", info.filename);
    for (i, line) in lines.iter().enumerate().take(end).skip(start - 1) {
        let n = i + 1;
        let mark = if in_ranges(src, n) { ">>>" } else { "   " };
        let _ = writeln!(out, " {n:>3} | {mark} {line}");
    }
    out.push_str("--------------------\n");
    Some(out)
}

fn line_span(src: &Source) -> Option<(usize, usize)> {
    let mut span: Option<(usize, usize)> = None;
    for r in &src.ranges {
        let s = r.start.as_ref().map_or(0, |p| p.line).max(0) as usize;
        let e = (r.end.as_ref().map_or(0, |p| p.line).max(s as i32)) as usize;
        span = Some(match span {
            None => (s, e),
            Some((a, b)) => (a.min(s), b.max(e)),
        });
    }
    span
}

fn in_ranges(src: &Source, line: usize) -> bool {
    src.ranges.iter().any(|r| {
        let s = r.start.as_ref().map_or(0, |p| p.line) as usize;
        let e = (r.end.as_ref().map_or(0, |p| p.line) as usize).max(s);
        s <= line && line <= e
    })
}

/// How bkrun's session token errors start (src/session/token.rs).
const TOKEN_ERROR: &str = "cannot get a registry token for";

/// For a registry that refused us for want of credentials: which one, and how to log in.
pub fn login_hint(message: &str) -> Option<String> {
    let lower = message.to_lowercase();
    let refused = [
        "401 unauthorized",
        "no basic auth credentials",
        "authentication required",
        "failed to authorize",
        "run `docker login ",
    ];
    if !refused.iter().any(|r| lower.contains(r)) {
        return None;
    }
    // bkrun's own token errors already name the registry (their realm URL may be another host).
    let named = message
        .split_once("docker login ")
        .and_then(|(_, rest)| rest.split(['`', ' ', '"', ')', ',']).next())
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    let host = named
        .or_else(|| registry_host(message))
        .unwrap_or_else(|| "the registry".to_string());
    Some(format!(
        "bkrun: {host} needs credentials and none were accepted: run `docker login {host}` (bkrun reads $DOCKER_CONFIG/config.json or ~/.docker/config.json, with its credential helpers)\n"
    ))
}

/// The first `host[:port]` of an http(s) URL in a daemon message.
fn registry_host(message: &str) -> Option<String> {
    message
        .split(['"', ' ', ','])
        .find_map(|w| {
            w.strip_prefix("https://")
                .or_else(|| w.strip_prefix("http://"))
        })
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
}

/// For a registry whose TLS the daemon could not verify, or that speaks plain HTTP: where to configure it.
pub fn registry_tls_hint(message: &str) -> Option<String> {
    // bkrun's own token fetch explains its TLS failures itself, naming the right host.
    if message.contains(TOKEN_ERROR) {
        return None;
    }
    let host = registry_host(message)?;
    let untrusted = [
        "x509:",
        "tls: failed to verify certificate",
        "certificate signed by unknown authority",
    ];
    if untrusted.iter().any(|u| message.contains(u)) {
        return Some(format!(
            "bkrun: the daemon does not trust {host}'s TLS certificate: give its CA in bkrun.toml ([buildkitd.registry.\"{host}\"] ca = [\"/path/ca.pem\"]), or, for a test registry only, add registry.insecure=true to --output\n"
        ));
    }
    message
        .contains("server gave HTTP response to HTTPS client")
        .then(|| format!(
            "bkrun: {host} speaks plain HTTP: say so in bkrun.toml ([buildkitd.registry.\"{host}\"] http = true)\n"
        ))
}

/// For a step whose binary is for another architecture and nothing emulates it.
pub fn emulation_hint(message: &str) -> Option<String> {
    message.contains("exec format error").then(|| {
        "bkrun: a step runs a binary built for another platform and this machine cannot run it: install QEMU's binfmt handlers with the F flag (Debian: apt-get install qemu-user-static binfmt-support; from a container, on its node), or build only for this machine's platform; bkrun doctor lists the platforms this machine runs\n".to_string()
    })
}

/// For a step that asks for an entitlement the build did not (`RUN --network=host` without
/// `--allow network.host`): BuildKit says only "network.host is not allowed".
pub fn allow_hint(message: &str) -> Option<String> {
    let (run, name) = [
        ("RUN --network=host", "network.host"),
        ("RUN --security=insecure", "security.insecure"),
    ]
    .into_iter()
    .find(|(_, name)| {
        message.contains(&format!("{name} is not allowed"))
            && !message.contains(&format!("granting entitlement {name}"))
    })?;
    Some(format!(
        "bkrun: a step uses {run}, which the build must allow: add --allow {name} to the build flags\n"
    ))
}

/// The entitlement a daemon refused to grant: BuildKit's "granting entitlement X is not allowed
/// by build daemon configuration", which means it was not started with it.
pub fn refused_entitlement(message: &str) -> Option<&str> {
    let rest = message.split("granting entitlement ").nth(1)?;
    let name = rest.split(" is not allowed").next()?;
    (!name.is_empty() && name.len() < rest.len()).then_some(name)
}

/// Whether a call failed because the connection broke rather than by the daemon's answer, and
/// the lowest cause if so. A daemon killed mid-call shows as Unavailable, or as Unknown
/// "transport error" with the broken pipe or reset connection underneath.
pub fn connection_lost(status: &tonic::Status) -> Option<String> {
    let mut lost = status.code() == tonic::Code::Unavailable;
    let mut cause = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            lost = true;
        }
        cause = e.to_string();
        source = e.source();
    }
    lost.then_some(cause)
}

/// Everything printed for a failed solve, ending with buildctl's `error: failed to solve: …` line.
pub fn render(status: &tonic::Status) -> String {
    let mut out = String::new();
    for s in sources(status) {
        if let Some(e) = excerpt(&s) {
            out.push_str(&e);
        }
    }
    for hint in [
        login_hint(status.message()),
        registry_tls_hint(status.message()),
        emulation_hint(status.message()),
        allow_hint(status.message()),
    ]
    .into_iter()
    .flatten()
    {
        out.push_str(&hint);
    }
    let _ = writeln!(out, "error: failed to solve: {}", status.message());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_told_from_an_answer() {
        let io = std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        );
        let mut st = tonic::Status::unknown("transport error");
        st.set_source(std::sync::Arc::new(io));
        assert_eq!(
            connection_lost(&st).as_deref(),
            Some("stream closed because of a broken pipe")
        );
        assert!(connection_lost(&tonic::Status::unavailable("gone")).is_some());
        assert!(connection_lost(&tonic::Status::unknown("dockerfile parse error")).is_none());
    }

    #[test]
    fn entitlement_errors_name_the_flag() {
        let m = "failed to load LLB: security.insecure is not allowed";
        assert!(allow_hint(m)
            .unwrap()
            .contains("add --allow security.insecure"));
        let refused =
            "granting entitlement network.host is not allowed by build daemon configuration";
        assert_eq!(allow_hint(refused), None);
        assert_eq!(refused_entitlement(refused), Some("network.host"));
        assert_eq!(refused_entitlement(m), None);
    }
    use crate::proto::pb::{Position, Range, SourceInfo};

    fn src(data: &str, start: i32, end: i32) -> Source {
        Source {
            info: Some(SourceInfo {
                filename: "Dockerfile".into(),
                data: data.as_bytes().to_vec(),
                ..Default::default()
            }),
            ranges: vec![Range {
                start: Some(Position {
                    line: start,
                    character: 0,
                }),
                end: Some(Position {
                    line: end,
                    character: 0,
                }),
            }],
        }
    }

    #[test]
    fn single_line_gets_four_lines_of_context() {
        let df = "FROM scratch\nCOPY a b\nRUN one\nRUN two\nRUN false\nRUN three\n";
        let e = excerpt(&src(df, 5, 5)).unwrap();
        assert_eq!(
            e,
            "Dockerfile:5\n--------------------\n   3 |     RUN one\n   4 |     RUN two\n   5 | >>> RUN false\n   6 |     RUN three\n   7 |     \n--------------------\n"
        );
    }

    #[test]
    fn first_line_and_ranges() {
        let df = "FROM nothing\nRUN a\n";
        let e = excerpt(&src(df, 1, 1)).unwrap();
        assert!(e.starts_with("Dockerfile:1\n"));
        assert!(e.contains("   1 | >>> FROM nothing\n"));
        assert!(excerpt(&src(df, 9, 9)).is_none());
    }

    #[test]
    fn a_refused_push_names_the_registry() {
        let m = "failed to push 127.0.0.1:5000/x:1: unexpected status from HEAD request to https://127.0.0.1:5000/v2/x/blobs/sha256:ab: 401 Unauthorized";
        let h = login_hint(m).unwrap();
        assert!(h.contains("`docker login 127.0.0.1:5000`"), "{h}");
        assert!(login_hint("process did not complete successfully").is_none());
        // A token server elsewhere: the registry named by bkrun's token error is the one to log in to.
        let m = "failed to push 127.0.0.1:5000/x:1: failed to authorize: cannot get a registry token for 127.0.0.1:5000 from https://auth.example/token: HTTP 403 Forbidden: the credentials in the Docker config for 127.0.0.1:5000 were refused: run `docker login 127.0.0.1:5000` again";
        let h = login_hint(m).unwrap();
        assert!(h.contains("`docker login 127.0.0.1:5000`"), "{h}");
    }

    #[test]
    fn an_untrusted_or_plain_http_registry_says_where_to_configure_it() {
        let m = "failed to push 127.0.0.1:5000/x:1: failed to do request: Head \"https://127.0.0.1:5000/v2/x/blobs/sha256:ab\": tls: failed to verify certificate: x509: certificate signed by unknown authority";
        let h = registry_tls_hint(m).unwrap();
        assert!(
            h.contains("[buildkitd.registry.\"127.0.0.1:5000\"] ca ="),
            "{h}"
        );
        assert!(h.contains("registry.insecure=true"), "{h}");
        let m = "failed to do request: Head \"https://r.example:5000/v2/\": http: server gave HTTP response to HTTPS client";
        assert!(registry_tls_hint(m).unwrap().contains("http = true"));
        assert!(registry_tls_hint("exit code: 1").is_none());
    }

    #[test]
    fn render_without_details_is_the_message() {
        let s = tonic::Status::unknown(
            "process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
        );
        assert_eq!(render(&s), "error: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1\n");
    }
}
