//! The attestation manifests of an image index as BuildKit stores them (docs/attestations/attestation-storage.md: platform unknown/unknown, annotation `vnd.docker.reference.type=attestation-manifest`), listed for what a build or a push reports.

use super::gojson::IndexDoc;

const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// One attestation manifest of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationManifest {
    pub digest: String,
    /// The image manifest it describes, when the index says.
    pub refers_to: Option<String>,
}

/// The attestation manifests `index` (an image index's JSON) names; none for anything else
/// (an image manifest, or bytes that are not an index).
pub fn list(index: &[u8]) -> Vec<AttestationManifest> {
    let Ok(doc) = serde_json::from_slice::<IndexDoc>(index) else {
        return Vec::new();
    };
    doc.manifests
        .iter()
        .filter(|d| {
            d.annotations.get(REFERENCE_TYPE).map(String::as_str) == Some(ATTESTATION_MANIFEST)
                && d.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "unknown" && p.architecture == "unknown")
        })
        .map(|d| AttestationManifest {
            digest: d.digest.clone(),
            refers_to: d.annotations.get(REFERENCE_DIGEST).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_attestation_manifests_are_listed() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"architecture":"unknown","os":"unknown"},
             "annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"sha256:aa"}}]}"#;
        assert_eq!(
            list(index),
            [AttestationManifest {
                digest: "sha256:bb".into(),
                refers_to: Some("sha256:aa".into())
            }]
        );
        assert!(list(br#"{"schemaVersion":2,"config":{}}"#).is_empty());
        assert!(list(b"not json").is_empty());
    }
}
