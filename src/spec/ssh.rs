//! `--ssh` values → the agent sockets to forward to `RUN --mount=type=ssh`, checked before a daemon starts.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// One forwarded agent: the id RUN steps ask for, and the socket behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAgent {
    pub id: String,
    pub socket: PathBuf,
}

/// Parses buildctl's `--ssh` grammar: `default`, `ID` (both use SSH_AUTH_SOCK) or `ID=SOCKET`.
pub fn parse(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<SshAgent> {
    let (id, paths) = match value.split_once('=') {
        Some((id, p)) => (id, Some(p)),
        None => (value, None),
    };
    if id.is_empty() {
        bail!("--ssh {value:?} has no id: use --ssh default or --ssh ID=SOCKET");
    }
    let socket = match paths {
        None => match env("SSH_AUTH_SOCK") {
            Some(s) => PathBuf::from(s),
            None => bail!("--ssh {id} forwards the agent in SSH_AUTH_SOCK, which is not set: start ssh-agent (eval $(ssh-agent); ssh-add KEY) or give --ssh {id}=SOCKET"),
        },
        Some(p) => {
            let parts: Vec<&str> = p.split(',').filter(|s| !s.starts_with("raw=")).collect();
            if parts.len() != 1 {
                bail!("--ssh {value:?}: bkrun forwards one agent socket per id; load several keys into one agent with ssh-add");
            }
            PathBuf::from(parts[0])
        }
    };
    match std::fs::metadata(&socket) {
        Ok(m) if m.file_type().is_socket() => Ok(SshAgent { id: id.to_string(), socket }),
        Ok(_) => bail!("--ssh {id}={}: that is a file, not an agent socket; key files are not supported yet: run ssh-add {} and pass --ssh {id}", socket.display(), socket.display()),
        Err(e) => bail!("--ssh {id}: cannot use the agent socket {}: {e}; is ssh-agent running?", socket.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_from_the_flag_or_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let s = sock.display().to_string();
        let env = |k: &str| (k == "SSH_AUTH_SOCK").then(|| s.clone());
        assert_eq!(
            parse("default", &env).unwrap(),
            SshAgent {
                id: "default".into(),
                socket: sock.clone()
            }
        );
        assert_eq!(parse(&format!("git={s}"), &|_| None).unwrap().id, "git");
        assert!(parse("default", &|_| None)
            .unwrap_err()
            .to_string()
            .contains("SSH_AUTH_SOCK"));
        let key = d.path().join("id_ed25519");
        std::fs::write(&key, "k").unwrap();
        assert!(parse(&format!("k={}", key.display()), &|_| None)
            .unwrap_err()
            .to_string()
            .contains("ssh-add"));
    }
}
