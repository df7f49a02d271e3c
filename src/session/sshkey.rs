//! Private key files for bkrun's own SSH agent: OpenSSH or PEM keys read and checked (before a daemon starts), then signing in SSH's signature encoding; no bkrun imports.
//!
//! `--ssh ID=KEYFILE` parsing reads the keys here (request), and the session's agent
//! (session::ssh_agent) lists and signs with them. Facts from OpenSSH's PROTOCOL.key
//! and PROTOCOL.agent: strings are a big-endian u32 length and the bytes.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crypto_bigint::U4096;
use ring::rand::SystemRandom;
use ring::rsa::{KeyPair as RsaKeyPair, KeyPairComponents, PublicKeyComponents};
use ring::signature::{RsaEncoding, RSA_PKCS1_SHA256, RSA_PKCS1_SHA512};
use signature::Signer;
use ssh_key::private::{EcdsaKeypair, KeypairData};
use ssh_key::public::{KeyData, RsaPublicKey};
use ssh_key::{HashAlg, Mpint, PrivateKey, PublicKey};
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

/// The private half, ready to sign. RSA is held as ring's key: its private operation runs in
/// constant time (RUSTSEC-2023-0071 is the timing leak of the `rsa` crate this replaced), and
/// ssh-key alone signs RSA only with SHA-512, while clients ask for SHA-256 by flag.
enum Secret {
    Other(KeypairData),
    Rsa(Box<RsaKeyPair>),
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
        let (public, comment, secret) = parse_private_key(&text)?;
        AgentKey::new(public, comment, secret, &path.display().to_string())
    }

    fn new(
        public: PublicKey,
        comment: String,
        secret: Secret,
        path: &str,
    ) -> Result<AgentKey, KeyFileError> {
        let blob = public
            .to_bytes()
            .map_err(|e| KeyFileError::NotAKey(e.to_string()))?;
        let comment = match comment.as_str() {
            "" => path.to_string(),
            _ => comment,
        };
        Ok(AgentKey {
            blob,
            comment,
            algorithm: public.algorithm().as_str().to_string(),
            fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
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
    /// RSA honours the SHA-2 flags (SHA-256 first when both are set, as OpenSSH's agent does);
    /// other key types have one algorithm and ignore the flags.
    ///
    /// RSA without a flag asks for `ssh-rsa` (SHA-1), which is refused (`None`, so the agent
    /// answers SSH_AGENT_FAILURE): ring signs PKCS#1 v1.5 only with SHA-2 and keeps SHA-1 for
    /// verifying legacy signatures. OpenSSH clients ask for rsa-sha2-* whenever the server
    /// announces it (every server since OpenSSH 7.2, GitHub, GitLab), and since 8.8 do not
    /// offer ssh-rsa at all.
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
                let (name, encoding): (&str, &'static dyn RsaEncoding) =
                    if flags & RSA_SHA2_256 != 0 {
                        ("rsa-sha2-256", &RSA_PKCS1_SHA256)
                    } else if flags & RSA_SHA2_512 != 0 {
                        ("rsa-sha2-512", &RSA_PKCS1_SHA512)
                    } else {
                        return None;
                    };
                let mut sig = vec![0; k.public().modulus_len()];
                // ring hashes `data` itself and blinds the private operation with the RNG.
                k.sign(encoding, &SystemRandom::new(), data, &mut sig)
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

/// An RSA private key's numbers as both file formats carry them (big-endian, no sign byte):
/// OpenSSH's n, e, d, iqmp, p, q; PKCS#1's also dP and dQ, which are recomputed from d instead.
struct RsaNumbers<'a> {
    n: &'a [u8],
    e: &'a [u8],
    d: &'a [u8],
    p: &'a [u8],
    q: &'a [u8],
    iqmp: &'a [u8],
}

impl RsaNumbers<'_> {
    /// The public key (for the listed blob) and ring's signing key.
    fn into_key(self) -> Result<(PublicKey, Secret), KeyFileError> {
        let bits = bit_len(self.n);
        // ring signs with 2048- to 4096-bit moduli whose primes are whole multiples of 512
        // bits, so 2048, 3072 and 4096 (ssh-keygen's default is 3072); say so rather than
        // passing on ring's terse rejection.
        if !(2048..=4096).contains(&bits) || bits.div_ceil(2) % 512 != 0 {
            return Err(KeyFileError::Unsupported(format!(
                "an RSA key of {bits} bits: bkrun's agent signs with RSA keys of 2048, 3072 or 4096 bits"
            )));
        }
        let (dp, dq) = (crt_exponent(self.d, self.p)?, crt_exponent(self.d, self.q)?);
        let components = KeyPairComponents {
            public_key: PublicKeyComponents {
                n: self.n,
                e: self.e,
            },
            d: self.d,
            p: self.p,
            q: self.q,
            dP: trim(&dp),
            dQ: trim(&dq),
            qInv: self.iqmp,
        };
        let pair = RsaKeyPair::from_components(&components)
            .map_err(|e| KeyFileError::NotAKey(format!("inconsistent RSA key: {e}")))?;
        let mpint = |b: &[u8]| {
            Mpint::from_positive_bytes(b).map_err(|e| KeyFileError::NotAKey(e.to_string()))
        };
        let public = RsaPublicKey {
            e: mpint(self.e)?,
            n: mpint(self.n)?,
        };
        Ok((
            PublicKey::new(KeyData::Rsa(public), ""),
            Secret::Rsa(Box::new(pair)),
        ))
    }
}

/// `d mod (prime − 1)`, the CRT exponent ring needs and OpenSSH files leave out. Computed once
/// per key at load time, in constant time with respect to d (crypto-bigint), zeroed after use.
fn crt_exponent(d: &[u8], prime: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    const BYTES: usize = U4096::BYTES;
    let uint = |b: &[u8]| {
        let b = trim(b);
        if b.len() > BYTES {
            return Err(KeyFileError::NotAKey(
                "an RSA component over 4096 bits".into(),
            ));
        }
        let mut buf = Zeroizing::new([0u8; BYTES]);
        buf[BYTES - b.len()..].copy_from_slice(b);
        Ok(Zeroizing::new(U4096::from_be_slice(&*buf)))
    };
    let (d, prime) = (uint(d)?, uint(prime)?);
    let modulus = Zeroizing::new(prime.wrapping_sub(&U4096::ONE));
    // Constant time in d for a given modulus; only the modulus's bit length (public: half the
    // key size) shapes the work. `ok` is false only for a zero modulus (a "prime" of 1).
    let (rem, ok) = d.const_rem(&modulus);
    let rem = Zeroizing::new(rem);
    if !bool::from(ok) {
        return Err(KeyFileError::NotAKey("an RSA prime of 1".into()));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(BYTES));
    // Limbs are little-endian words; each word's bytes big-endian.
    for word in rem.as_words().iter().rev() {
        out.extend_from_slice(&word.to_be_bytes());
    }
    Ok(out)
}

/// Big-endian bytes without leading zeros (DER integers and padded buffers carry them).
fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn bit_len(b: &[u8]) -> usize {
    let b = trim(b);
    b.first()
        .map_or(0, |&top| b.len() * 8 - top.leading_zeros() as usize)
}

/// Parses the text of a private key file into its public key, comment and secret, telling an
/// encrypted key from a wrong file.
fn parse_private_key(text: &[u8]) -> Result<(PublicKey, String, Secret), KeyFileError> {
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
        let comment = key.comment().to_string();
        return match key.key_data() {
            KeypairData::Ed25519(_)
            | KeypairData::Ecdsa(EcdsaKeypair::NistP256 { .. })
            | KeypairData::Ecdsa(EcdsaKeypair::NistP384 { .. }) => Ok((
                key.public_key().clone(),
                comment,
                Secret::Other(key.key_data().clone()),
            )),
            KeypairData::Rsa(k) => {
                fn positive(m: &Mpint) -> Result<&[u8], KeyFileError> {
                    m.as_positive_bytes()
                        .ok_or_else(|| KeyFileError::NotAKey("a negative RSA component".into()))
                }
                let (public, secret) = RsaNumbers {
                    n: positive(&k.public.n)?,
                    e: positive(&k.public.e)?,
                    d: positive(&k.private.d)?,
                    p: positive(&k.private.p)?,
                    q: positive(&k.private.q)?,
                    iqmp: positive(&k.private.iqmp)?,
                }
                .into_key()?;
                Ok((public, comment, secret))
            }
            _ => Err(KeyFileError::Unsupported(
                key.algorithm().as_str().to_string(),
            )),
        };
    }
    if has("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(KeyFileError::Encrypted("an encrypted PEM key".into()));
    }
    let der = if has("RSA PRIVATE KEY") {
        pem_body(text, "RSA PRIVATE KEY").ok_or_else(|| not_key("a broken PEM block"))?
    } else if has("PRIVATE KEY") {
        // PKCS#8 may hold any algorithm; only RSA is read here, others need OpenSSH format.
        let p8 = pem_body(text, "PRIVATE KEY").ok_or_else(|| not_key("a broken PEM block"))?;
        let inner = pkcs8_rsa(&p8)
            .ok_or_else(|| KeyFileError::Unsupported("PKCS#8 PEM (not RSA)".into()))?;
        Zeroizing::new(inner.to_vec())
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
    let numbers = pkcs1_rsa(&der).ok_or_else(|| not_key("a malformed PKCS#1 RSA key"))?;
    let (public, secret) = numbers.into_key()?;
    Ok((public, String::new(), secret))
}

/// The DER bytes of the first `label` PEM block (RFC 7468; encrypted blocks were refused).
fn pem_body(text: &str, label: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let body = text
        .split(&format!("-----BEGIN {label}-----"))
        .nth(1)?
        .split(&format!("-----END {label}-----"))
        .next()?;
    let b64 = Zeroizing::new(body.split_whitespace().collect::<String>());
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

/// Takes one DER element with `tag` off the front of `b` and returns its contents (definite
/// lengths only, as DER has).
fn der_take<'a>(b: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    let (&t, rest) = b.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    if t != tag {
        return None;
    }
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    *b = rest;
    Some(contents)
}

const DER_INTEGER: u8 = 0x02;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;

/// PKCS#1 RSAPrivateKey (RFC 8017 A.1.2): version 0 (two primes), n, e, d, p, q, dP, dQ, qInv.
fn pkcs1_rsa(der: &[u8]) -> Option<RsaNumbers<'_>> {
    let mut outer = der;
    let mut seq = der_take(&mut outer, DER_SEQUENCE)?;
    if der_take(&mut seq, DER_INTEGER)? != [0] {
        return None;
    }
    let mut int = || der_take(&mut seq, DER_INTEGER).map(trim);
    let (n, e, d, p, q, _dp, _dq, iqmp) = (
        int()?,
        int()?,
        int()?,
        int()?,
        int()?,
        int()?,
        int()?,
        int()?,
    );
    Some(RsaNumbers {
        n,
        e,
        d,
        p,
        q,
        iqmp,
    })
}

/// The PKCS#1 key inside a PKCS#8 PrivateKeyInfo (RFC 5208) whose algorithm is rsaEncryption;
/// `None` for any other algorithm.
fn pkcs8_rsa(der: &[u8]) -> Option<&[u8]> {
    // 1.2.840.113549.1.1.1
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let mut outer = der;
    let mut seq = der_take(&mut outer, DER_SEQUENCE)?;
    der_take(&mut seq, DER_INTEGER)?;
    let mut alg = der_take(&mut seq, DER_SEQUENCE)?;
    if der_take(&mut alg, DER_OID)? != RSA_ENCRYPTION {
        return None;
    }
    der_take(&mut seq, DER_OCTET_STRING)
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
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use sha2::{Digest, Sha512};
    use std::path::PathBuf;
    use std::process::Command;

    /// A key written by ssh-keygen: the same files users pass (the agent's tests use it too).
    pub(crate) fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
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

    pub(crate) fn pub_blob(key: &Path) -> Vec<u8> {
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
        let secret = PrivateKey::from_openssh(std::fs::read_to_string(&f).unwrap()).unwrap();
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
    /// Runs `cmd` with `input` on stdin and returns its stdout.
    fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        out.stdout
    }

    /// The signature blob of an SSH signature encoding, after checking its algorithm name.
    fn sig_blob(encoded: &[u8], want: &str) -> Vec<u8> {
        let mut b = encoded;
        assert_eq!(take_string(&mut b).unwrap(), want.as_bytes());
        let blob = take_string(&mut b).unwrap().to_vec();
        assert!(b.is_empty());
        blob
    }

    /// OpenSSH's own signature over `message` (`ssh-keygen -Y sign`, PROTOCOL.sshsig) and the
    /// bytes it signed: "SSHSIG", namespace, reserved, hash name, SHA-512 of the message.
    fn sshsig(key: &Path, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let armored = pipe(
            Command::new("ssh-keygen")
                .args(["-q", "-Y", "sign", "-n", "bkrun-test", "-f"])
                .arg(key),
            message,
        );
        let armored = String::from_utf8(armored).unwrap();
        let b64: String = armored
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut r = raw.strip_prefix(b"SSHSIG".as_slice()).unwrap();
        assert_eq!(take_u32(&mut r), Some(1));
        let _public = take_string(&mut r).unwrap();
        let namespace = take_string(&mut r).unwrap();
        let reserved = take_string(&mut r).unwrap();
        let hash = take_string(&mut r).unwrap();
        assert_eq!(hash, b"sha512");
        let signature = take_string(&mut r).unwrap().to_vec();
        assert!(r.is_empty());
        let mut signed = b"SSHSIG".to_vec();
        put_string(&mut signed, namespace);
        put_string(&mut signed, reserved);
        put_string(&mut signed, hash);
        put_string(&mut signed, &Sha512::digest(message));
        (signed, signature)
    }

    #[test]
    fn rsa_signatures_verify_and_equal_openssh_and_openssl_byte_for_byte() {
        use ring::signature::{
            RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA512,
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let data = b"session id and userauth request".as_slice();
        let mut files = Vec::new();
        // Every size ring signs with, in OpenSSH format (dP and dQ computed here from d) and
        // in the two PEM formats (which carry them).
        for bits in ["2048", "3072", "4096"] {
            files.push(keygen(p, &format!("os{bits}"), &["-t", "rsa", "-b", bits]));
        }
        files.push(keygen(p, "pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]));
        files.push(keygen(p, "p8", &["-t", "rsa", "-b", "3072", "-m", "PKCS8"]));
        for f in &files {
            let key = AgentKey::from_file(f).unwrap();
            assert_eq!(key.public_blob(), pub_blob(f), "{}", f.display());
            let public = ssh_key::PublicKey::from_bytes(key.public_blob()).unwrap();
            let rsa = public.key_data().rsa().unwrap();
            let components = RsaPublicKeyComponents {
                n: rsa.n.as_positive_bytes().unwrap(),
                e: rsa.e.as_positive_bytes().unwrap(),
            };
            for (flags, name, alg) in [
                (RSA_SHA2_256, "rsa-sha2-256", &RSA_PKCS1_2048_8192_SHA256),
                (RSA_SHA2_512, "rsa-sha2-512", &RSA_PKCS1_2048_8192_SHA512),
            ] {
                let sig = sig_blob(&key.sign(data, flags).unwrap(), name);
                components.verify(alg, data, &sig).unwrap();
                assert!(components.verify(alg, b"other data", &sig).is_err());
                // PKCS#1 v1.5 is deterministic: the same key signs the same bytes as OpenSSL
                // (which reads the PEM files).
                if f.ends_with("pem") || f.ends_with("p8") {
                    let digest = if name.ends_with("256") {
                        "-sha256"
                    } else {
                        "-sha512"
                    };
                    let reference = pipe(
                        Command::new("openssl")
                            .args(["dgst", digest, "-sign"])
                            .arg(f),
                        data,
                    );
                    assert_eq!(sig, reference, "{} {name}", f.display());
                }
            }
            assert!(key.sign(data, 0).is_none(), "ssh-rsa (SHA-1) is refused");
            // OpenSSH signs with the very file too (rsa-sha2-512 in its SSHSIG format).
            let (signed, reference) = sshsig(f, b"a file to sign");
            assert_eq!(
                key.sign(&signed, RSA_SHA2_512).unwrap(),
                reference,
                "{}",
                f.display()
            );
        }
    }

    #[test]
    fn rsa_keys_ring_cannot_sign_with_say_which_sizes_it_can() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for (name, args, bits) in [
            ("small", &["-t", "rsa", "-b", "1024"][..], 1024),
            // 1280-bit primes: not a multiple of 512, which ring requires.
            ("odd", &["-t", "rsa", "-b", "2560"][..], 2560),
            (
                "small-pem",
                &["-t", "rsa", "-b", "1024", "-m", "PEM"][..],
                1024,
            ),
        ] {
            let f = keygen(p, name, args);
            let e = AgentKey::from_file(&f).unwrap_err();
            assert!(matches!(e, KeyFileError::Unsupported(_)), "{name}: {e:?}");
            assert_eq!(
                e.to_string(),
                format!("an RSA key of {bits} bits: bkrun's agent signs with RSA keys of 2048, 3072 or 4096 bits")
            );
        }
        let ec8 = keygen(p, "ec-p8", &["-t", "ecdsa", "-m", "PKCS8"]);
        assert_eq!(
            AgentKey::from_file(&ec8).unwrap_err().to_string(),
            "PKCS#8 PEM (not RSA)"
        );
        // A PKCS#1 key with one byte of its body changed is no key at all.
        let pem = keygen(p, "pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]);
        let text = std::fs::read_to_string(&pem).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let last = der.len() - 1;
        der[last] ^= 1; // the low byte of qInv
        let broken = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        std::fs::write(p.join("broken"), broken).unwrap();
        let e = AgentKey::from_file(&p.join("broken")).unwrap_err();
        assert!(
            matches!(e, KeyFileError::NotAKey(_))
                && e.to_string().starts_with("inconsistent RSA key"),
            "{e:?}"
        );
    }
}
