//! Reaching a pool of daemons: each tried in the order given (the route key's), with a few seconds to connect and answer, the first that serves used; whole rounds repeated, with backoff, while every one is briefly away.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tonic::transport::Channel;

use super::connect::{self, Backoff, Failure, Target};
use super::probe;

/// How long one daemon of a pool gets to connect and answer ListWorkers before the next is
/// tried: a serving daemon answers in milliseconds, and a pod that is gone is refused at once or
/// not resolved, so this bounds only a silent network.
pub const TRY_BOUND: Duration = Duration::from_secs(3);

/// The daemon that serves, and why the ones before it in the order were passed over.
pub struct Chosen {
    /// Its place in the order given.
    pub index: usize,
    pub channel: Channel,
    /// (address, why), in the order they were tried.
    pub passed: Vec<(String, String)>,
}

/// Tries `ordered` in order until one serves; while all fail and some may come back (refused,
/// timed out), tries the round again until `retry_for` (the targets') has passed.
pub async fn first_serving(ordered: &[Target]) -> Result<Chosen> {
    let retry_for = ordered.first().map_or(Duration::ZERO, |t| t.retry_for);
    let mut backoff = Backoff::new(Duration::from_millis(200), retry_for);
    loop {
        let mut passed = Vec::new();
        let mut may_return = false;
        for (index, t) in ordered.iter().enumerate() {
            match try_one(t).await {
                Ok(channel) => {
                    return Ok(Chosen {
                        index,
                        channel,
                        passed: passed.into_iter().map(|(a, w, _)| (a, w)).collect(),
                    })
                }
                Err(f) => {
                    may_return |= f.retryable;
                    passed.push((t.addr.clone(), reason(&t.addr, &f.explained), f.retryable));
                }
            }
        }
        let each = passed
            .iter()
            .map(|(a, why, _)| format!("{a} ({why})"))
            .collect::<Vec<_>>()
            .join(", ");
        let wait = backoff.next_wait().filter(|_| may_return);
        let Some(wait) = wait else {
            let from = ordered
                .first()
                .and_then(|t| t.origin.as_deref())
                .map_or(String::new(), |o| format!(" (from {o})"));
            return Err(anyhow!(
                "none of the {} daemons of the pool{from} serves: {each}",
                ordered.len()
            ));
        };
        crate::say!(
            "bkrun: no daemon of the pool serves yet: {each}; retrying in {:.1}s",
            wait.as_secs_f64()
        );
        backoff.wait().await;
    }
}

/// One daemon: connected, and answering with a worker, within TRY_BOUND.
async fn try_one(t: &Target) -> Result<Channel, Failure> {
    let attempt = async {
        let channel = connect::try_once(t).await?;
        match probe::workers_on(channel.clone()).await {
            Ok(n) if n > 0 => Ok(channel),
            Ok(_) => Err(Failure {
                retryable: true,
                explained: "it has no worker yet".into(),
            }),
            // A TLS refusal that came after the handshake is not going to change.
            Err(e) => Err(match connect::explain_error(&e, t) {
                Some(why) => Failure {
                    retryable: false,
                    explained: why,
                },
                None => Failure {
                    retryable: true,
                    explained: format!("it does not serve: {e:#}"),
                },
            }),
        }
    };
    match tokio::time::timeout(TRY_BOUND, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            retryable: true,
            explained: format!("no answer within {}s", TRY_BOUND.as_secs()),
        }),
    }
}

/// The explanation without the address it starts with, since the caller names it.
fn reason(addr: &str, explained: &str) -> String {
    explained
        .strip_prefix(&format!("cannot connect to {addr}: "))
        .or_else(|| explained.strip_prefix(&format!("{addr} ")))
        .unwrap_or(explained)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn refused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn reasons_drop_the_address() {
        assert_eq!(
            reason(
                "tcp://a:1",
                "cannot connect to tcp://a:1: connection refused"
            ),
            "connection refused"
        );
        assert_eq!(
            reason("tcp://a:1", "tcp://a:1 rejected the client certificate"),
            "rejected the client certificate"
        );
        assert_eq!(
            reason("tcp://a:1", "no answer within 3s"),
            "no answer within 3s"
        );
    }

    #[tokio::test]
    async fn when_none_serves_one_line_names_each() {
        // Bound and dropped: nothing listens there, so connections are refused at once.
        let (a, b) = (refused_port(), refused_port());
        let t = |p: u16| Target {
            origin: Some("--addr".into()),
            ..Target::unix(&format!("tcp://127.0.0.1:{p}"))
        };
        let started = Instant::now();
        let e = first_serving(&[t(a), t(b)])
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no retry with retry_for 0"
        );
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with("none of the 2 daemons of the pool (from --addr) serves: ")
                && e.contains(&format!("tcp://127.0.0.1:{a} (connection refused"))
                && e.contains(&format!("tcp://127.0.0.1:{b} (connection refused")),
            "{e}"
        );
    }
}
