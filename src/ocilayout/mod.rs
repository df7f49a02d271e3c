//! OCI image-layout directories on the client: the blob store the daemon reads and writes over the session, and their index.json.
//!
//! A `type=local` cache is such a directory: blobs under `blobs/<alg>/<hex>`,
//! and `index.json` naming the cache manifest by tag.

pub mod archive;
#[cfg(test)]
mod archive_tests;
pub mod attestations;
mod gojson;
pub mod index;
pub mod store;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

pub use index::Index;
pub use store::LocalStore;

/// A content digest such as `sha256:9f86…`, validated so it can name a file safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: &'static str,
    hex: String,
}

/// Algorithms an OCI digest may use, with their hex lengths.
const ALGORITHMS: &[(&str, usize)] = &[("sha256", 64), ("sha384", 96), ("sha512", 128)];

impl Digest {
    /// Parses `alg:hex`; anything else (including path tricks) is refused.
    pub fn parse(s: &str) -> Option<Digest> {
        let (alg, hex) = s.split_once(':')?;
        let &(algorithm, len) = ALGORITHMS.iter().find(|(a, _)| *a == alg)?;
        let valid = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Self::from_sha256(sha2::Sha256::digest(bytes).as_slice())
    }

    /// The digest for a finished SHA-256 hash.
    pub fn from_sha256(sum: &[u8]) -> Digest {
        let mut hex = String::with_capacity(64);
        for b in sum {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest {
            algorithm: "sha256",
            hex,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// Where the blob lives under an image-layout root.
    pub fn blob_path(&self, root: &Path) -> PathBuf {
        root.join("blobs").join(self.algorithm).join(&self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_naming_files() {
        let d = Digest::sha256(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&d.to_string()), Some(d.clone()));
        assert_eq!(
            d.blob_path(Path::new("/c")),
            Path::new(
                "/c/blobs/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            )
        );
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "md5:0123456789abcdef0123456789abcdef",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:",
        ] {
            assert_eq!(Digest::parse(bad), None, "{bad}");
        }
    }
}
