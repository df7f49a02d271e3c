//! Private key files for bkrun's own SSH agent: OpenSSH or PEM keys read and checked (before a daemon starts), then signing in SSH's signature encoding; no bkrun imports.
//!
//! `--ssh ID=KEYFILE` parsing reads the keys here (spec), and the session's agent
//! (session::ssh_agent) lists and signs with them. Facts from OpenSSH's PROTOCOL.key
//! and PROTOCOL.agent: strings are a big-endian u32 length and the bytes.

use std::fmt;
use std::io::Read;
use std::path::Path;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha1::Sha1;
use signature::Signer;
use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
use ssh_key::sha2::{Digest, Sha256, Sha512};
use ssh_key::{HashAlg, PrivateKey};
use zeroize::Zeroizing;

/// Sign-request flags asking an RSA key for a SHA-2 signature instead of SHA-1 `ssh-rsa`.
pub const RSA_SHA2_256: u32 = 2;
pub const RSA_SHA2_512: u32 = 4;

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
    pub fn sign(&self, data: &[u8], flags: u32) -> Option<Vec<u8>> {
        let (name, sig) = match &self.secret {
            Secret::Other(k) => {
                let sig: ssh_key::Signature = k.try_sign(data).ok()?;
                (
                    sig.algorithm().as_str().to_string(),
                    sig.as_bytes().to_vec(),
                )
            }
            Secret::Rsa(k) => {
                let (name, scheme, hashed) = if flags & RSA_SHA2_256 != 0 {
                    let h = Sha256::digest(data).to_vec();
                    ("rsa-sha2-256", Pkcs1v15Sign::new::<Sha256>(), h)
                } else if flags & RSA_SHA2_512 != 0 {
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

/// Appends an SSH wire-format string: a big-endian u32 length, then the bytes.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Takes a big-endian u32 off the front of `b`.
pub fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(u32::from_be_bytes(*head))
}

/// Takes an SSH wire-format string off the front of `b`.
pub fn take_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
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

    fn ed25519(dir: &Path) -> (PathBuf, Vec<AgentKey>) {
        let f = keygen(dir, "k", &["-t", "ed25519"]);
        let keys = vec![AgentKey::from_file(&f).unwrap()];
        (f, keys)
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
