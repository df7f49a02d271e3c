//! Waiting until the daemon serves: its sd_notify READY=1 races a probe the caller hands in (the daemon half speaks no gRPC), and the daemon exiting ends the wait at once.

use std::path::Path;

use tokio::net::UnixDatagram;

/// Binds the datagram socket buildkitd reports READY=1 to (it does so just before it serves).
pub fn bind_notify_socket(path: &Path) -> std::io::Result<UnixDatagram> {
    UnixDatagram::bind(path)
}

/// Resolves when a READY=1 line arrives on `sock`.
pub async fn notified(sock: &UnixDatagram) {
    let mut buf = vec![0u8; 4096];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) if is_ready_message(&buf[..n]) => return,
            Ok(_) => continue,
            // A broken notify socket must not end the wait: the probe still answers.
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

/// sd_notify messages are newline-separated KEY=VALUE assignments.
pub fn is_ready_message(msg: &[u8]) -> bool {
    msg.split(|b| *b == b'\n').any(|l| l == b"READY=1")
}

/// What told bkrun the daemon serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyBy {
    /// buildkitd's sd_notify READY=1.
    Notify,
    /// The caller's probe (a gRPC call) answered first; rootlesskit may not pass NOTIFY_SOCKET on.
    Probe,
}

impl std::fmt::Display for ReadyBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadyBy::Notify => "READY=1",
            ReadyBy::Probe => "gRPC probe",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_found_among_other_assignments() {
        assert!(is_ready_message(b"READY=1"));
        assert!(is_ready_message(b"STATUS=serving\nREADY=1\n"));
        assert!(!is_ready_message(b"READY=0"));
        assert!(!is_ready_message(b"STOPPING=1"));
    }

    #[tokio::test]
    async fn notify_socket_receives_ready() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = bind_notify_socket(&path).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"STATUS=x", &path).unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), notified(&sock))
            .await
            .unwrap();
    }
}
