//! `--ssh` values → what each id forwards to `RUN --mount=type=ssh`: an agent socket, or private keys read from files; all checked before a daemon starts.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};

use super::csv::parse_bool;
use super::{clip, clip_path, clip_quoted, header_safe};
use crate::session::sshkey::{AgentKey, KeyFileError};

/// One forwarded agent: the id RUN steps ask for, and what answers behind it.
#[derive(Debug, Clone)]
pub struct SshAgent {
    pub id: String,
    pub source: SshSource,
}

#[derive(Debug, Clone)]
pub enum SshSource {
    /// A running agent's socket. Unless `raw`, RUN steps may only list keys and sign, as with
    /// buildctl: a build cannot add, remove or lock the user's keys.
    Socket { path: PathBuf, raw: bool },
    /// Keys from files, served by bkrun's own agent (no ssh-agent needed, as in most CI containers).
    Keys(Arc<[AgentKey]>),
}

/// Parses buildctl's `--ssh` grammar: `default` or `ID` (both use SSH_AUTH_SOCK), `ID=SOCKET`, or
/// `ID=KEYFILE[,KEYFILE...]`; a `raw=BOOL` item asks for the socket unfiltered. Key files are read and parsed here, so a bad one fails before a daemon starts.
pub fn parse(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<SshAgent> {
    let (id, items) = match value.split_once('=') {
        Some((id, p)) => (id, Some(p)),
        None => (value, None),
    };
    let shown = clip_quoted(value);
    if id.is_empty() {
        bail!("--ssh {shown} has no id: use --ssh default or --ssh ID=SOCKET|KEYFILE");
    }
    // The daemon sends the id back in a gRPC header when a RUN step opens the agent.
    header_safe("--ssh", "id", id)?;
    let idc = clip(id);
    let (raw, paths) = raw_and_paths(items, &shown)?;
    if raw && paths.len() != 1 {
        bail!("--ssh {shown}: raw=true forwards exactly one agent socket: write --ssh {idc}=SOCKET,raw=true");
    }
    // Like buildctl, an id with no path (or an empty one) means the agent in SSH_AUTH_SOCK.
    let source = if paths.is_empty() || paths == [""] {
        env_agent(&idc, raw, env)?
    } else {
        from_paths(id, &shown, raw, paths)?
    };
    Ok(SshAgent {
        id: id.to_string(),
        source,
    })
}

/// The comma-separated items after `ID=`: `raw=BOOL`, and the paths.
fn raw_and_paths<'a>(items: Option<&'a str>, shown: &str) -> Result<(bool, Vec<&'a str>)> {
    let mut raw = false;
    let mut paths = Vec::new();
    for item in items.into_iter().flat_map(|p| p.split(',')) {
        match item.strip_prefix("raw=") {
            Some(b) => {
                raw = parse_bool(b).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--ssh {shown}: raw={} is not a boolean: write raw=true or raw=false",
                        clip(b)
                    )
                })?
            }
            None => paths.push(item),
        }
    }
    Ok((raw, paths))
}

/// The agent socket SSH_AUTH_SOCK names, which must be set and be a socket. `idc`: the id, clipped.
fn env_agent(idc: &str, raw: bool, env: &dyn Fn(&str) -> Option<String>) -> Result<SshSource> {
    let Some(sock) = env("SSH_AUTH_SOCK") else {
        bail!("--ssh {idc} forwards the agent in SSH_AUTH_SOCK, which is not set: start ssh-agent (eval $(ssh-agent); ssh-add KEY), or give --ssh {idc}=SOCKET or --ssh {idc}=KEYFILE");
    };
    let socket = PathBuf::from(sock);
    match std::fs::metadata(&socket) {
        Ok(m) if m.file_type().is_socket() => Ok(SshSource::Socket { path: socket, raw }),
        Ok(_) => bail!("--ssh {idc}: SSH_AUTH_SOCK={} is not a socket: point it at a running ssh-agent, or give --ssh {idc}=KEYFILE", clip_path(&socket)),
        Err(e) => bail!("--ssh {idc}: cannot use the agent socket {} from SSH_AUTH_SOCK: is ssh-agent running? ({e})", clip_path(&socket)),
    }
}

/// Given paths: one agent socket, or key files read and parsed now (never both).
fn from_paths(id: &str, shown: &str, raw: bool, paths: Vec<&str>) -> Result<SshSource> {
    let idc = clip(id);
    let mut sockets = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        let path = PathBuf::from(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_socket() => sockets.push(path),
            Ok(_) => files.push(path),
            Err(e) => bail!(
                "--ssh {idc}: cannot use {}: give an agent socket or a private key file: {e}",
                clip_quoted(p)
            ),
        }
    }
    match (sockets.len(), files.len()) {
        (1, 0) => {
            return Ok(SshSource::Socket {
                path: sockets.remove(0),
                raw,
            })
        }
        (0, _) if raw => bail!("--ssh {shown}: raw=true forwards an agent socket, and {} is a key file: drop raw=true", clip_path(&files[0])),
        (0, _) => {}
        (1, _) => bail!("--ssh {shown} mixes an agent socket with key files: give one or the other (ssh-add the keys into the agent to use both)"),
        _ => bail!("--ssh {shown}: bkrun forwards one agent socket per id: load the keys into one agent with ssh-add, or give another id"),
    }
    let keys = files
        .iter()
        .map(|f| AgentKey::from_file(f).map_err(|e| key_error(id, f, e)))
        .collect::<Result<Vec<_>>>()?;
    Ok(SshSource::Keys(keys.into()))
}

fn key_error(id: &str, file: &Path, e: KeyFileError) -> anyhow::Error {
    let idc = clip(id);
    let f = clip_path(file);
    match e {
        KeyFileError::Read(_) => anyhow::anyhow!("--ssh {idc}: cannot read the key file {f}: check the path and that bkrun's user may read it: {e}"),
        KeyFileError::Encrypted(_) => anyhow::anyhow!("--ssh {idc}: the key file {f} is passphrase-protected and bkrun does not ask for passphrases: load it with ssh-add {f} and pass --ssh {idc} (or --ssh {idc}=$SSH_AUTH_SOCK): {e}"),
        KeyFileError::NotAKey(_) | KeyFileError::TooLarge => anyhow::anyhow!("--ssh {idc}: {f} is not a private key file: give a private key (e.g. ~/.ssh/id_ed25519, not the .pub) or an agent socket: {e}"),
        KeyFileError::Unsupported(_) => anyhow::anyhow!("--ssh {idc}: {f} is a kind of key bkrun's agent cannot sign with: use an ed25519, RSA or ECDSA P-256/P-384 key (ssh-keygen -p -f FILE rewrites a PEM key in OpenSSH format), or load it with ssh-add and pass --ssh {idc}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn keygen(dir: &Path, name: &str, passphrase: &str) -> String {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen (openssh-client) is needed");
        assert!(out.status.success(), "{out:?}");
        path.display().to_string()
    }

    fn err(value: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        parse(value, env).unwrap_err().to_string()
    }

    #[test]
    fn sockets_from_the_flag_or_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let s = sock.display().to_string();
        let env = |k: &str| (k == "SSH_AUTH_SOCK").then(|| s.clone());
        let socket_of = |a: SshAgent| match a.source {
            SshSource::Socket { path, .. } => (a.id, path),
            SshSource::Keys(_) => panic!("keys for a socket"),
        };
        for value in ["default", "default=", "default=raw=false", "default=,raw=1"] {
            assert_eq!(
                socket_of(parse(value, &env).unwrap()),
                ("default".into(), sock.clone()),
                "{value}"
            );
        }
        assert_eq!(
            socket_of(parse(&format!("git={s}"), &|_| None).unwrap()).0,
            "git"
        );
        assert_eq!(
            socket_of(parse(&format!("git={s},raw=true"), &|_| None).unwrap()).1,
            sock
        );
        assert!(err("default", &|_| None).contains("SSH_AUTH_SOCK"));
        assert!(err(&format!("a={s},raw=yes"), &|_| None).contains("raw=yes is not a boolean"));
        assert!(err("a=raw=true", &env).contains("exactly one agent socket"));
        assert!(err(&format!("a={s},{s}"), &|_| None).contains("one agent socket per id"));
        assert!(err("a=/no/such/file", &|_| None).contains("cannot use \"/no/such/file\""));
    }

    #[test]
    fn key_files_are_read_up_front_and_mixing_follows_buildctl() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let sock = p.join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let s = sock.display().to_string();
        let (k1, k2) = (keygen(p, "k1", ""), keygen(p, "k2", ""));
        match parse(&format!("deploy={k1},{k2}"), &|_| None).unwrap() {
            SshAgent {
                id,
                source: SshSource::Keys(keys),
            } => {
                assert_eq!(id, "deploy");
                assert_eq!(keys.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err(&format!("a={k1},{s}"), &|_| None).contains("mixes an agent socket with key files")
        );
        assert!(
            err(&format!("a={s},{k1}"), &|_| None).contains("mixes an agent socket with key files")
        );
        assert!(err(&format!("a={k1},raw=true"), &|_| None).contains("drop raw=true"));

        let enc = keygen(p, "enc", "pass");
        let e = err(&format!("git={k1},{enc}"), &|_| None);
        assert!(
            e.starts_with(&format!(
                "--ssh git: the key file {enc} is passphrase-protected"
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "ssh-add {enc} and pass --ssh git (or --ssh git=$SSH_AUTH_SOCK)"
            )),
            "{e}"
        );
        let e = err(&format!("git={k1}.pub"), &|_| None);
        assert!(
            e.contains("is not a private key file") && e.contains("not the .pub"),
            "{e}"
        );
        // A directory opens but does not read, even as root.
        let e = err(&format!("git={}", p.display()), &|_| None);
        assert!(e.contains("cannot read the key file"), "{e}");
    }
}
