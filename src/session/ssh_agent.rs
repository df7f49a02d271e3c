//! An SSH agent inside bkrun: holds the private keys of `--ssh ID=KEYFILE` and answers the agent protocol (list keys, sign) on a forwarded byte stream.
//!
//! Only what a client of a forwarded agent needs is served: listing identities and signing.
//! Every other request (adding or removing keys, locking, extensions) is answered with
//! SSH_AGENT_FAILURE, as a read-only agent should. Facts from OpenSSH's PROTOCOL.agent
//! (draft-ietf-sshm-ssh-agent): a message is a big-endian u32 length, then a type byte and
//! its body; strings are a u32 length and the bytes.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha1::Sha1;
use signature::Signer;
use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
use ssh_key::sha2::{Digest, Sha256, Sha512};
use ssh_key::{HashAlg, PrivateKey};
use zeroize::Zeroizing;

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

/// Sign-request flags asking an RSA key for a SHA-2 signature instead of SHA-1 `ssh-rsa`.
const SSH_AGENT_RSA_SHA2_256: u32 = 2;
const SSH_AGENT_RSA_SHA2_512: u32 = 4;

/// Longest request accepted (OpenSSH's agent uses the same bound). A sign request carries a
/// public key and a session hash, far less; anything longer is a broken or hostile peer.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Longest key file read; an OpenSSH RSA-16384 key is ~12 KiB, BuildKit reads at most 100 KiB too.
const MAX_KEY_FILE: u64 = 100 * 1024;

/// Why a key file cannot be served; `--ssh` parsing turns it into advice.
#[derive(Debug)]
pub enum KeyFileError {
    Read(std::io::Error),
    TooLarge,
    /// Passphrase-protected; the detail names the cipher.
    Encrypted(String),
    NotAKey(String),
    /// A private key of a type or format this agent cannot sign with (its name).
    Unsupported(String),
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Read(e) => write!(f, "{e}"),
            KeyFileError::TooLarge => write!(f, "larger than {MAX_KEY_FILE} bytes"),
            KeyFileError::Encrypted(d) | KeyFileError::NotAKey(d) => f.write_str(d),
            KeyFileError::Unsupported(a) => f.write_str(a),
        }
    }
}

/// The private half, ready to sign. RSA is held as `rsa`'s key because ssh-key only signs
/// with SHA-512, while clients ask for SHA-256 or SHA-1 by flag.
enum Secret {
    Other(KeypairData),
    Rsa(Box<RsaPrivateKey>),
}

/// One identity of the agent: a private key from a file, its public blob and comment.
pub struct AgentKey {
    blob: Vec<u8>,
    comment: String,
    algorithm: String,
    fingerprint: String,
    secret: Secret,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public facts: the private key never reaches a log.
        f.debug_struct("AgentKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint)
            .field("comment", &self.comment)
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// Reads a private key file: OpenSSH format (any key ssh-keygen writes today), or PEM
    /// PKCS#1/PKCS#8 for RSA. Like ssh-add, the comment is the key's own, else the path.
    pub fn from_file(path: &Path) -> Result<AgentKey, KeyFileError> {
        let file = std::fs::File::open(path).map_err(KeyFileError::Read)?;
        let mut text = Zeroizing::new(Vec::new());
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(KeyFileError::Read)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(KeyFileError::TooLarge);
        }
        let key = parse_private_key(&text)?;
        AgentKey::new(key, &path.display().to_string())
    }

    fn new(key: PrivateKey, path: &str) -> Result<AgentKey, KeyFileError> {
        let algorithm = key.algorithm().as_str().to_string();
        let secret = match key.key_data() {
            KeypairData::Ed25519(_)
            | KeypairData::Ecdsa(EcdsaKeypair::NistP256 { .. })
            | KeypairData::Ecdsa(EcdsaKeypair::NistP384 { .. }) => {
                Secret::Other(key.key_data().clone())
            }
            KeypairData::Rsa(k) => Secret::Rsa(Box::new(rsa_private_key(k)?)),
            _ => return Err(KeyFileError::Unsupported(algorithm)),
        };
        let blob = key
            .public_key()
            .to_bytes()
            .map_err(|e| KeyFileError::NotAKey(e.to_string()))?;
        let comment = match key.comment() {
            "" => path.to_string(),
            c => c.to_string(),
        };
        Ok(AgentKey {
            blob,
            comment,
            algorithm,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            secret,
        })
    }

    /// The public key in SSH wire format, as listed and as named in sign requests.
    pub fn public_blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// Signs `data`; the result is the SSH signature encoding (algorithm name, then blob).
    /// RSA honours the SHA-2 flags and otherwise signs `ssh-rsa` (SHA-1), as the protocol
    /// and OpenSSH's agent do; other key types have one algorithm and ignore the flags.
    fn sign(&self, data: &[u8], flags: u32) -> Option<Vec<u8>> {
        let (name, sig) = match &self.secret {
            Secret::Other(k) => {
                let sig: ssh_key::Signature = k.try_sign(data).ok()?;
                (
                    sig.algorithm().as_str().to_string(),
                    sig.as_bytes().to_vec(),
                )
            }
            Secret::Rsa(k) => {
                let (name, scheme, hashed) = if flags & SSH_AGENT_RSA_SHA2_256 != 0 {
                    let h = Sha256::digest(data).to_vec();
                    ("rsa-sha2-256", Pkcs1v15Sign::new::<Sha256>(), h)
                } else if flags & SSH_AGENT_RSA_SHA2_512 != 0 {
                    let h = Sha512::digest(data).to_vec();
                    ("rsa-sha2-512", Pkcs1v15Sign::new::<Sha512>(), h)
                } else {
                    let h = Sha1::digest(data).to_vec();
                    ("ssh-rsa", Pkcs1v15Sign::new::<Sha1>(), h)
                };
                // With an RNG the private operation is blinded, which hides its timing.
                let sig = k
                    .sign_with_rng(&mut ssh_key::rand_core::OsRng, scheme, &hashed)
                    .ok()?;
                (name.to_string(), sig)
            }
        };
        let mut out = Vec::with_capacity(8 + name.len() + sig.len());
        put_string(&mut out, name.as_bytes());
        put_string(&mut out, &sig);
        Some(out)
    }
}

/// ssh-key's own conversion (0.6.7) passes the prime p twice, so every key fails its check; the
/// components are handed over here instead.
fn rsa_private_key(k: &RsaKeypair) -> Result<RsaPrivateKey, KeyFileError> {
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or_else(|| KeyFileError::NotAKey("a negative RSA component".into()))
    };
    let primes = vec![int(&k.private.p)?, int(&k.private.q)?];
    RsaPrivateKey::from_components(
        int(&k.public.n)?,
        int(&k.public.e)?,
        int(&k.private.d)?,
        primes,
    )
    .map_err(|e| KeyFileError::NotAKey(format!("inconsistent RSA key: {e}")))
}

/// Parses the text of a private key file, telling an encrypted key from a wrong file.
fn parse_private_key(text: &[u8]) -> Result<PrivateKey, KeyFileError> {
    let not_key = |what: &str| KeyFileError::NotAKey(what.to_string());
    let text = std::str::from_utf8(text).map_err(|_| not_key("not a text file"))?;
    let has = |label: &str| text.contains(&format!("-----BEGIN {label}-----"));
    if has("OPENSSH PRIVATE KEY") {
        // ssh-key 0.6 refuses an ECDSA scalar written shorter than its field (its top byte was
        // zero: 1 key in 256 for P-256, half of all P-521 keys); pad it first.
        let padded = pad_ecdsa_scalar(text);
        let text = padded.as_deref().map(|t| t.as_str()).unwrap_or(text);
        let key = PrivateKey::from_openssh(text).map_err(|e| not_key(&e.to_string()))?;
        if key.is_encrypted() {
            return Err(KeyFileError::Encrypted(format!(
                "encrypted with {}",
                key.cipher().as_str()
            )));
        }
        return Ok(key);
    }
    if has("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(KeyFileError::Encrypted("an encrypted PEM key".into()));
    }
    let rsa = if has("RSA PRIVATE KEY") {
        RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| not_key(&e.to_string()))?
    } else if has("PRIVATE KEY") {
        // PKCS#8 may hold any algorithm; only RSA is read here, others need OpenSSH format.
        RsaPrivateKey::from_pkcs8_pem(text)
            .map_err(|_| KeyFileError::Unsupported("PKCS#8 PEM (not RSA)".into()))?
    } else if text.contains("-----BEGIN ") && text.contains(" PRIVATE KEY-----") {
        let label = text
            .split("-----BEGIN ")
            .nth(1)
            .and_then(|r| r.split("-----").next())
            .unwrap_or("PEM");
        return Err(KeyFileError::Unsupported(format!("PEM {label}")));
    } else if text.contains("PUBLIC KEY") || text.starts_with("ssh-") || text.starts_with("ecdsa-")
    {
        return Err(not_key("a public key, not a private one"));
    } else {
        return Err(not_key("no PRIVATE KEY block"));
    };
    let pair = RsaKeypair::try_from(&rsa).map_err(|e| not_key(&e.to_string()))?;
    PrivateKey::new(KeypairData::Rsa(pair), "").map_err(|e| not_key(&e.to_string()))
}

/// An unencrypted OpenSSH-format ECDSA key whose private scalar is shorter than its field,
/// rewritten with the scalar left-padded to full size (same key); `None` when nothing needs doing.
///
/// Layout (OpenSSH PROTOCOL.key): "openssh-key-v1\0", cipher, kdf, kdf options, key count,
/// public key, then the private section: two check words, key type, curve, public point,
/// scalar (an mpint, so leading zeros are dropped), comment, and padding 1, 2, 3… to 8 bytes.
fn pad_ecdsa_scalar(text: &str) -> Option<Zeroizing<String>> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let body = text.split(BEGIN).nth(1)?.split(END).next()?;
    let b64: String = body.split_whitespace().collect();
    let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
    let mut r: &[u8] = raw.strip_prefix(MAGIC)?;
    let cipher = take_string(&mut r)?;
    let kdf = take_string(&mut r)?;
    let kdf_options = take_string(&mut r)?;
    let count = take_u32(&mut r)?;
    let public = take_string(&mut r)?;
    let private = take_string(&mut r)?;
    if cipher != b"none" || count != 1 {
        return None;
    }
    let mut p = private;
    let checks = p.get(..8)?;
    p = &p[8..];
    let kind = take_string(&mut p)?;
    let curve = take_string(&mut p)?;
    let size = match curve {
        b"nistp256" => 32,
        b"nistp384" => 48,
        b"nistp521" => 66,
        _ => return None,
    };
    if !kind.starts_with(b"ecdsa-sha2-") {
        return None;
    }
    let point = take_string(&mut p)?;
    let scalar = take_string(&mut p)?;
    let comment = take_string(&mut p)?;
    if scalar.len() >= size {
        return None;
    }
    let mut section = Zeroizing::new(Vec::new());
    section.extend_from_slice(checks);
    for field in [kind, curve, point] {
        put_string(&mut section, field);
    }
    let mut full = Zeroizing::new(vec![0u8; size - scalar.len()]);
    full.extend_from_slice(scalar);
    put_string(&mut section, &full);
    put_string(&mut section, comment);
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }
    let mut out = Zeroizing::new(MAGIC.to_vec());
    for field in [cipher, kdf, kdf_options] {
        put_string(&mut out, field);
    }
    out.extend_from_slice(&count.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, &section);
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*out));
    let mut pem = Zeroizing::new(format!("{BEGIN}\n"));
    for line in encoded.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(END);
    pem.push('\n');
    Some(pem)
}

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
                    put_string(&mut out, &k.blob);
                    put_string(&mut out, k.comment.as_bytes());
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
                    .find(|k| k.blob == blob)
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

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(u32::from_be_bytes(*head))
}

fn take_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(b)? as usize;
    if b.len() < len {
        return None;
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use signature::Verifier;
    use std::path::PathBuf;
    use std::process::Command;

    /// A key written by ssh-keygen: the same files users pass.
    fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", ""])
            .args(args)
            .arg("-f")
            .arg(&path)
            .output()
            .expect("ssh-keygen (openssh-client) is needed");
        assert!(out.status.success(), "{out:?}");
        path
    }

    fn pub_blob(key: &Path) -> Vec<u8> {
        let text = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let b64 = text.split_whitespace().nth(1).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

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
        if name == "ssh-rsa" {
            // ssh-key verifies only SHA-2 RSA signatures; check SHA-1 with rsa itself.
            let k = public.key_data().rsa().unwrap();
            let n = rsa::BigUint::from_bytes_be(k.n.as_positive_bytes().unwrap());
            let e = rsa::BigUint::from_bytes_be(k.e.as_positive_bytes().unwrap());
            rsa::RsaPublicKey::new(n, e)
                .unwrap()
                .verify(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(data), raw)
                .unwrap();
        } else {
            let sig = ssh_key::Signature::new(ssh_key::Algorithm::new(name).unwrap(), raw).unwrap();
            public.key_data().verify(data, &sig).unwrap();
        }
        // A signature over other data must not verify: the check above is not vacuous.
        if name != "ssh-rsa" {
            let sig = ssh_key::Signature::new(ssh_key::Algorithm::new(name).unwrap(), raw).unwrap();
            assert!(public.key_data().verify(b"other data", &sig).is_err());
        }
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
                    (0, "ssh-rsa"),
                    (SSH_AGENT_RSA_SHA2_256, "rsa-sha2-256"),
                    (SSH_AGENT_RSA_SHA2_512, "rsa-sha2-512"),
                    // OpenSSH's agent prefers SHA-256 when both bits are set.
                    (
                        SSH_AGENT_RSA_SHA2_256 | SSH_AGENT_RSA_SHA2_512,
                        "rsa-sha2-256",
                    ),
                ],
            ),
            (
                keygen(p, "rsa-pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]),
                vec![(SSH_AGENT_RSA_SHA2_512, "rsa-sha2-512")],
            ),
            (
                keygen(p, "rsa-pkcs8", &["-t", "rsa", "-b", "2048", "-m", "PKCS8"]),
                vec![(SSH_AGENT_RSA_SHA2_256, "rsa-sha2-256")],
            ),
            // The SHA-2 flags are for RSA only; other keys ignore them.
            (
                keygen(p, "ed-flags", &["-t", "ed25519"]),
                vec![(SSH_AGENT_RSA_SHA2_256, "ssh-ed25519")],
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

    #[test]
    fn ecdsa_scalars_written_short_are_padded_to_the_same_key() {
        let d = tempfile::tempdir().unwrap();
        // Half of all P-521 scalars have a zero top byte, which OpenSSH's mpint drops.
        let short = (0..40)
            .map(|i| {
                keygen(
                    d.path(),
                    &format!("p521-{i}"),
                    &["-t", "ecdsa", "-b", "521"],
                )
            })
            .find(|f| pad_ecdsa_scalar(&std::fs::read_to_string(f).unwrap()).is_some())
            .expect("one P-521 key in 40 with a short scalar");
        let padded = pad_ecdsa_scalar(&std::fs::read_to_string(&short).unwrap()).unwrap();
        let key = PrivateKey::from_openssh(padded.as_str()).unwrap();
        assert_eq!(key.public_key().to_bytes().unwrap(), pub_blob(&short));
        let full = keygen(d.path(), "ed", &["-t", "ed25519"]);
        assert!(pad_ecdsa_scalar(&std::fs::read_to_string(full).unwrap()).is_none());
    }

    #[test]
    fn unusable_files_say_why_and_keys_stay_out_of_debug_output() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let (f, keys) = ed25519(p);
        let secret = PrivateKey::read_openssh_file(&f).unwrap();
        let secret_hex = format!("{:x}", secret.key_data().ed25519().unwrap().private);
        let debug = format!("{:?}", keys[0]);
        assert!(
            debug.contains("ssh-ed25519") && debug.contains("SHA256:"),
            "{debug}"
        );
        assert!(!debug.contains(&secret_hex[..16]), "{debug}");

        let enc = keygen(p, "enc", &["-t", "ed25519", "-N", "pass"]);
        assert!(matches!(
            AgentKey::from_file(&enc),
            Err(KeyFileError::Encrypted(_))
        ));
        let enc_pem = keygen(
            p,
            "enc-pem",
            &[
                "-t",
                "rsa",
                "-b",
                "1024",
                "-m",
                "PEM",
                "-N",
                "long passphrase",
            ],
        );
        assert!(matches!(
            AgentKey::from_file(&enc_pem),
            Err(KeyFileError::Encrypted(_))
        ));
        let e = AgentKey::from_file(&f.with_extension("pub")).unwrap_err();
        assert!(matches!(e, KeyFileError::NotAKey(_)), "{e}");
        assert!(matches!(
            AgentKey::from_file(&p.join("missing")),
            Err(KeyFileError::Read(_))
        ));
        std::fs::write(p.join("big"), vec![b'a'; 200 * 1024]).unwrap();
        assert!(matches!(
            AgentKey::from_file(&p.join("big")),
            Err(KeyFileError::TooLarge)
        ));
        let ec_pem = keygen(p, "ec-pem", &["-t", "ecdsa", "-m", "PEM"]);
        let e = AgentKey::from_file(&ec_pem).unwrap_err();
        assert_eq!(e.to_string(), "PEM EC PRIVATE KEY");
        let p521 = keygen(p, "p521", &["-t", "ecdsa", "-b", "521"]);
        let e = AgentKey::from_file(&p521).unwrap_err();
        assert_eq!(e.to_string(), "ecdsa-sha2-nistp521");
    }
}
