//! An SSH agent inside bkrun: answers the agent protocol (list keys, sign) on a forwarded byte stream with the keys `--ssh ID=KEYFILE` read (crate::session::sshkey).
//!
//! Only what a client of a forwarded agent needs is served: listing identities and signing.
//! Every other request (adding or removing keys, locking, extensions) is answered with
//! SSH_AGENT_FAILURE, as a read-only agent should. Facts from OpenSSH's PROTOCOL.agent
//! (draft-ietf-sshm-ssh-agent): a message is a big-endian u32 length, then a type byte and
//! its body; strings are a u32 length and the bytes.

use std::fmt;
use std::sync::Arc;

use crate::session::sshkey::{put_string, take_string, take_u32, AgentKey};

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

/// Longest request accepted (OpenSSH's agent uses the same bound). A sign request carries a
/// public key and a session hash, far less; anything longer is a broken or hostile peer.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// One agent connection: collects the bytes the client sends and answers each whole request.
pub struct AgentConn {
    keys: Arc<[AgentKey]>,
    pending: Vec<u8>,
}

/// A request longer than [`MAX_MESSAGE`]: the stream cannot be resynchronised, so it ends.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong(pub usize);

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ssh agent request of {} bytes exceeds the {MAX_MESSAGE}-byte limit",
            self.0
        )
    }
}

impl AgentConn {
    pub fn new(keys: Arc<[AgentKey]>) -> Self {
        AgentConn {
            keys,
            pending: Vec::new(),
        }
    }

    /// Takes the next chunk of the stream, however it is cut, and returns the framed replies to
    /// every request it completes (possibly none).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TooLong> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(head) = self.pending.get(start..start + 4) {
            let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
            if len > MAX_MESSAGE {
                return Err(TooLong(len));
            }
            let Some(msg) = self.pending.get(start + 4..start + 4 + len) else {
                break;
            };
            let reply = self.answer(msg);
            put_string(&mut out, &reply);
            start += 4 + len;
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// The reply to one request (without its length).
    fn answer(&self, msg: &[u8]) -> Vec<u8> {
        let failure = vec![SSH_AGENT_FAILURE];
        match msg.split_first() {
            Some((&SSH_AGENTC_REQUEST_IDENTITIES, [])) => {
                let mut out = vec![SSH_AGENT_IDENTITIES_ANSWER];
                out.extend_from_slice(&(self.keys.len() as u32).to_be_bytes());
                for k in self.keys.iter() {
                    put_string(&mut out, k.public_blob());
                    put_string(&mut out, k.comment().as_bytes());
                }
                out
            }
            Some((&SSH_AGENTC_SIGN_REQUEST, mut body)) => {
                let (Some(blob), Some(data), Some(flags)) = (
                    take_string(&mut body),
                    take_string(&mut body),
                    take_u32(&mut body),
                ) else {
                    return failure;
                };
                if !body.is_empty() {
                    return failure;
                }
                let signed = self
                    .keys
                    .iter()
                    .find(|k| k.public_blob() == blob)
                    .and_then(|k| k.sign(data, flags));
                match signed {
                    Some(sig) => {
                        let mut out = vec![SSH_AGENT_SIGN_RESPONSE];
                        put_string(&mut out, &sig);
                        out
                    }
                    None => failure,
                }
            }
            _ => failure,
        }
    }
}

/// Whether a framed request (length prefix included) only lists keys or signs: all a build
/// needs from a forwarded agent.
pub fn is_read_only_request(frame: &[u8]) -> bool {
    matches!(
        frame.get(4),
        Some(&SSH_AGENTC_REQUEST_IDENTITIES | &SSH_AGENTC_SIGN_REQUEST)
    )
}

/// The framed SSH_AGENT_FAILURE answer.
pub fn failure_frame() -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    put_string(&mut out, &[SSH_AGENT_FAILURE]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::sshkey::tests::{keygen, pub_blob};
    use crate::session::sshkey::{RSA_SHA2_256, RSA_SHA2_512};
    use signature::Verifier;
    use std::path::{Path, PathBuf};

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, msg);
        out
    }

    /// Splits framed replies into messages.
    fn replies(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            out.push(take_string(&mut bytes).unwrap().to_vec());
        }
        out
    }

    fn sign_request(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut m = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut m, blob);
        put_string(&mut m, data);
        m.extend_from_slice(&flags.to_be_bytes());
        frame(&m)
    }

    /// Signs through the protocol and checks the signature with the public key alone.
    fn sign_and_verify(conn: &mut AgentConn, blob: &[u8], flags: u32, want: &str) {
        let data = b"session id and userauth request".as_slice();
        let out = replies(&conn.feed(&sign_request(blob, data, flags)).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][0], SSH_AGENT_SIGN_RESPONSE, "{want}");
        let mut body = &out[0][1..];
        let mut sig = take_string(&mut body).unwrap();
        assert!(body.is_empty());
        let name = std::str::from_utf8(take_string(&mut sig).unwrap()).unwrap();
        let raw = take_string(&mut sig).unwrap();
        assert!(sig.is_empty());
        assert_eq!(name, want);
        let public = ssh_key::PublicKey::from_bytes(blob).unwrap();
        if let Some(k) = public.key_data().rsa() {
            // ssh-key verifies RSA only with its `rsa` feature, which is left out; ring checks.
            let ring_alg = match name {
                "rsa-sha2-256" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                "rsa-sha2-512" => &ring::signature::RSA_PKCS1_2048_8192_SHA512,
                other => panic!("unexpected RSA signature {other}"),
            };
            let components = ring::signature::RsaPublicKeyComponents {
                n: k.n.as_positive_bytes().unwrap(),
                e: k.e.as_positive_bytes().unwrap(),
            };
            components.verify(ring_alg, data, raw).unwrap();
            // A signature over other data must not verify: the check above is not vacuous.
            assert!(components.verify(ring_alg, b"other data", raw).is_err());
        } else {
            let sig = ssh_key::Signature::new(ssh_key::Algorithm::new(name).unwrap(), raw).unwrap();
            public.key_data().verify(data, &sig).unwrap();
            assert!(public.key_data().verify(b"other data", &sig).is_err());
        }
    }

    /// An RSA key asked for `ssh-rsa` (SHA-1, no flag) is refused: ring signs only with SHA-2.
    fn sha1_is_refused(conn: &mut AgentConn, blob: &[u8]) {
        let out = replies(&conn.feed(&sign_request(blob, b"data", 0)).unwrap());
        assert_eq!(out, vec![vec![SSH_AGENT_FAILURE]]);
    }

    #[test]
    fn every_key_type_lists_and_signs_verifiably() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let files = [
            (
                keygen(p, "ed", &["-t", "ed25519", "-C", "ed-comment"]),
                vec![(0, "ssh-ed25519")],
            ),
            (
                keygen(p, "p256", &["-t", "ecdsa", "-b", "256", "-C", ""]),
                vec![(0, "ecdsa-sha2-nistp256")],
            ),
            (
                keygen(p, "p384", &["-t", "ecdsa", "-b", "384"]),
                vec![(0, "ecdsa-sha2-nistp384")],
            ),
            (
                keygen(p, "rsa", &["-t", "rsa", "-b", "2048"]),
                vec![
                    (RSA_SHA2_256, "rsa-sha2-256"),
                    (RSA_SHA2_512, "rsa-sha2-512"),
                    // OpenSSH's agent prefers SHA-256 when both bits are set.
                    (RSA_SHA2_256 | RSA_SHA2_512, "rsa-sha2-256"),
                ],
            ),
            (
                keygen(p, "rsa-pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]),
                vec![(RSA_SHA2_512, "rsa-sha2-512")],
            ),
            (
                keygen(p, "rsa-pkcs8", &["-t", "rsa", "-b", "2048", "-m", "PKCS8"]),
                vec![(RSA_SHA2_256, "rsa-sha2-256")],
            ),
            // The SHA-2 flags are for RSA only; other keys ignore them.
            (
                keygen(p, "ed-flags", &["-t", "ed25519"]),
                vec![(RSA_SHA2_256, "ssh-ed25519")],
            ),
        ];
        let keys: Vec<AgentKey> = files
            .iter()
            .map(|(f, _)| AgentKey::from_file(f).unwrap())
            .collect();
        for ((f, _), k) in files.iter().zip(&keys) {
            assert_eq!(k.public_blob(), pub_blob(f), "{}", f.display());
        }
        // Like ssh-add: the key's own comment, else its path (PEM files carry none).
        assert_eq!(keys[0].comment(), "ed-comment");
        assert_eq!(keys[1].comment(), files[1].0.display().to_string());
        assert_eq!(keys[4].comment(), files[4].0.display().to_string());

        let keys: Arc<[AgentKey]> = keys.into();
        let mut conn = AgentConn::new(keys.clone());
        let out = replies(&conn.feed(&frame(&[SSH_AGENTC_REQUEST_IDENTITIES])).unwrap());
        assert_eq!(out.len(), 1);
        let mut body = &out[0][..];
        assert_eq!(body[0], SSH_AGENT_IDENTITIES_ANSWER);
        body = &body[1..];
        assert_eq!(take_u32(&mut body), Some(files.len() as u32));
        for k in keys.iter() {
            assert_eq!(take_string(&mut body).unwrap(), k.public_blob());
            assert_eq!(take_string(&mut body).unwrap(), k.comment().as_bytes());
        }
        assert!(body.is_empty());

        for ((_, tries), k) in files.iter().zip(keys.iter()) {
            for (flags, want) in tries {
                sign_and_verify(&mut conn, k.public_blob(), *flags, want);
            }
        }
        // Each RSA key (OpenSSH, PKCS#1 and PKCS#8 files) refuses SHA-1; the connection goes on.
        for k in &keys[3..6] {
            sha1_is_refused(&mut conn, k.public_blob());
            sign_and_verify(&mut conn, k.public_blob(), RSA_SHA2_512, "rsa-sha2-512");
        }
    }

    fn ed25519(dir: &Path) -> (PathBuf, Arc<[AgentKey]>) {
        let f = keygen(dir, "k", &["-t", "ed25519"]);
        let keys: Arc<[AgentKey]> = vec![AgentKey::from_file(&f).unwrap()].into();
        (f, keys)
    }

    #[test]
    fn requests_split_or_coalesced_in_chunks_are_each_answered() {
        let d = tempfile::tempdir().unwrap();
        let (_, keys) = ed25519(d.path());
        let whole = replies(
            &AgentConn::new(keys.clone())
                .feed(&frame(&[SSH_AGENTC_REQUEST_IDENTITIES]))
                .unwrap(),
        );
        let sign = sign_request(keys[0].public_blob(), b"data", 0);

        // One byte at a time: nothing until the last byte of each request.
        let mut conn = AgentConn::new(keys.clone());
        let mut stream = frame(&[SSH_AGENTC_REQUEST_IDENTITIES]);
        stream.extend_from_slice(&sign);
        let mut got = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            let out = conn.feed(&[*b]).unwrap();
            if i == 4 || i == stream.len() - 1 {
                got.extend(replies(&out));
            } else {
                assert!(out.is_empty(), "reply before byte {i} completed a request");
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], whole[0]);
        assert_eq!(got[1][0], SSH_AGENT_SIGN_RESPONSE);

        // Three requests and half of a fourth in one chunk, the rest in the next.
        let mut conn = AgentConn::new(keys.clone());
        let mut chunk = Vec::new();
        for _ in 0..3 {
            chunk.extend_from_slice(&frame(&[SSH_AGENTC_REQUEST_IDENTITIES]));
        }
        chunk.extend_from_slice(&sign[..7]);
        let out = replies(&conn.feed(&chunk).unwrap());
        assert_eq!(out, vec![whole[0].clone(); 3]);
        let out = replies(&conn.feed(&sign[7..]).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][0], SSH_AGENT_SIGN_RESPONSE);
    }

    #[test]
    fn anything_but_list_and_sign_fails_and_oversized_requests_end_the_stream() {
        let d = tempfile::tempdir().unwrap();
        let (_, keys) = ed25519(d.path());
        let blob = keys[0].public_blob().to_vec();
        let mut conn = AgentConn::new(keys);
        let failure = vec![vec![SSH_AGENT_FAILURE]];
        let mut add = vec![17u8];
        put_string(&mut add, b"ssh-ed25519");
        let mut unknown_key = blob.clone();
        *unknown_key.last_mut().unwrap() ^= 1;
        let mut trailing = sign_request(&blob, b"x", 0);
        trailing.push(0);
        trailing[3] += 1;
        for request in [
            frame(&add),                                // add identity
            frame(&[19]),                               // remove all identities
            frame(&[22, 0, 0, 0, 1, b'p']),             // lock
            frame(&[27, 0, 0, 0, 1, b'e']),             // extension
            frame(&[]),                                 // empty message
            frame(&[SSH_AGENTC_REQUEST_IDENTITIES, 0]), // list with a body
            frame(&[SSH_AGENTC_SIGN_REQUEST, 0, 0, 1]), // truncated
            sign_request(&unknown_key, b"x", 0),
            trailing,
        ] {
            assert_eq!(
                replies(&conn.feed(&request).unwrap()),
                failure,
                "{request:?}"
            );
        }
        // Still serving after all of that.
        let ok = replies(&conn.feed(&sign_request(&blob, b"x", 0)).unwrap());
        assert_eq!(ok[0][0], SSH_AGENT_SIGN_RESPONSE);

        let at_limit = (MAX_MESSAGE as u32).to_be_bytes();
        assert_eq!(conn.feed(&at_limit).unwrap(), Vec::<u8>::new());
        let mut conn = AgentConn::new(conn.keys.clone());
        let over = (MAX_MESSAGE as u32 + 1).to_be_bytes();
        assert_eq!(conn.feed(&over), Err(TooLong(MAX_MESSAGE + 1)));
    }
}
