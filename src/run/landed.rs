//! After a build, one line per image that was not pushed saying where it now is: containerd's image store (with the containerd worker), or only the ephemeral daemon's state dir.

use std::collections::HashMap;

use crate::config::Worker;
use crate::request::csv::parse_bool;
use crate::request::output::{Output, OutputKind};

/// The lines to print for `outputs` once the daemon answered with `response` (its exporter
/// response: `containerimage.digest`, …). Pushed images say nothing here: the progress shows
/// the push.
pub fn lines(
    outputs: &[Output],
    response: &HashMap<String, String>,
    worker: &Worker,
) -> Vec<String> {
    let digest = response
        .get("containerimage.digest")
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let flag = |o: &Output, key: &str| {
        o.attrs
            .get(key)
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    };
    outputs
        .iter()
        .filter(|o| o.kind == OutputKind::Image && !flag(o, "push"))
        .filter_map(|o| {
            let name = o.attrs.get("name").filter(|n| !n.is_empty())?;
            Some(match worker {
                Worker::Containerd {
                    address, namespace, ..
                } => format!(
                    "bkrun: image {name}{digest} is in containerd's image store at {}, namespace {namespace}{}; not pushed",
                    address.display(),
                    if flag(o, "unpack") {
                        ", unpacked for its snapshotter"
                    } else {
                        ""
                    }
                ),
                Worker::Oci => format!(
                    "bkrun: image {name}{digest} was not pushed: it is only in the build cache in the state dir; add push=true to push it, or use --output type=oci or type=docker for a file"
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::output::parse;

    fn parse_output(s: &str) -> anyhow::Result<Output> {
        parse(s, false)
    }

    fn containerd() -> Worker {
        Worker::Containerd {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "buildkit".into(),
            shared_dir: None,
        }
    }

    #[test]
    fn an_unpushed_image_says_where_it_is_and_a_pushed_one_says_nothing() {
        let response =
            HashMap::from([("containerimage.digest".to_string(), "sha256:ab".to_string())]);
        let outs = [
            parse_output("type=image,name=example.test/a:1,unpack=true").unwrap(),
            parse_output("type=image,name=example.test/b:1,push=true").unwrap(),
            parse_output("type=local,dest=out").unwrap(),
        ];
        assert_eq!(
            lines(&outs, &response, &containerd()),
            ["bkrun: image example.test/a:1 (sha256:ab) is in containerd's image store at /run/containerd/containerd.sock, namespace buildkit, unpacked for its snapshotter; not pushed"]
        );
        let l = lines(&outs[..1], &HashMap::new(), &Worker::Oci);
        assert!(
            l[0].starts_with(
                "bkrun: image example.test/a:1 was not pushed: it is only in the build cache"
            ),
            "{l:?}"
        );
        assert!(lines(
            &[parse_output("type=registry,name=x/y").unwrap()],
            &response,
            &Worker::Oci
        )
        .is_empty());
    }
}
