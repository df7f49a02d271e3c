//! OCI 1.1 artifacts as bkrun pushes them: the layer files, the image manifest's JSON (empty config, `artifactType`), and sha256 digests of files and bytes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI 1.1's empty descriptor: an artifact has no config, so it points at the two bytes `{}`.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_BLOB: &[u8] = b"{}";
/// Registries must take manifests of 4 MiB (the distribution spec's floor); bkrun reads no more.
pub const MAX_MANIFEST: usize = 4 << 20;

/// A content descriptor, in the OCI image spec's JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (schema 2), as pushed and as pulled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One layer of an artifact: a file on disk and how the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub media_type: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

impl Layer {
    /// A layer for `path`, its digest and size read from the file (blocking: call it off the
    /// async threads for big files).
    pub fn from_file(path: &Path, media_type: &str) -> Result<Layer> {
        let (digest, size) = file_digest(path)?;
        Ok(Layer {
            path: path.to_path_buf(),
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        })
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            artifact_type: None,
            annotations: self.annotations.clone(),
        }
    }
}

/// What bkrun pushes: an OCI 1.1 artifact, its type, the manifest's annotations and its layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    pub artifact_type: String,
    pub annotations: BTreeMap<String, String>,
    pub layers: Vec<Layer>,
}

impl Artifact {
    /// The image manifest that describes the artifact, with the empty config.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            artifact_type: Some(self.artifact_type.clone()).filter(|t| !t.is_empty()),
            config: empty_descriptor(),
            layers: self.layers.iter().map(Layer::descriptor).collect(),
            annotations: self.annotations.clone(),
        }
    }
}

pub fn empty_descriptor() -> Descriptor {
    Descriptor {
        media_type: EMPTY_MEDIA_TYPE.to_string(),
        digest: bytes_digest(EMPTY_BLOB),
        size: EMPTY_BLOB.len() as u64,
        artifact_type: None,
        annotations: BTreeMap::new(),
    }
}

pub fn bytes_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(b)))
}

/// The file's `sha256:<hex>` and size, read in chunks (layers may be gigabytes).
pub fn file_digest(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the layer {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read the layer {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex(&h.finalize())), size))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest as the registry API takes it in a path: `sha256:` and 64 lower-case hex digits.
pub fn valid_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_manifest_has_the_empty_config_and_oci_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, b"hello").unwrap();
        let mut layer =
            Layer::from_file(&p, "application/vnd.oci.image.layer.v1.tar+zstd").unwrap();
        layer
            .annotations
            .insert("org.example.id".into(), "x".into());
        let a = Artifact {
            artifact_type: "application/vnd.bkrun.cache-mounts.v1".into(),
            annotations: BTreeMap::from([("org.example.k".into(), "v".into())]),
            layers: vec![layer],
        };
        let json = serde_json::to_value(a.manifest()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.bkrun.cache-mounts.v1",
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                    "size": 2
                },
                "layers": [{
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                    "digest": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                    "size": 5,
                    "annotations": {"org.example.id": "x"}
                }],
                "annotations": {"org.example.k": "v"}
            })
        );
        let back: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, a.manifest());
    }

    #[test]
    fn digests_as_the_api_takes_them() {
        assert!(valid_sha256(&bytes_digest(b"")));
        assert!(!valid_sha256("sha256:ABC"));
        assert!(!valid_sha256("sha512:00"));
        assert!(!valid_sha256(&format!("sha256:{}/..", "0".repeat(61))));
    }
}
