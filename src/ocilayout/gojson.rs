//! index.json as buildctl writes it: Go marshals OCI's Index, Descriptor and Platform structs with fields in declaration order, maps with sorted keys, empty `omitempty` fields left out, and no trailing newline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// image-spec v1.1 `Index` (with `Versioned`'s schemaVersion first).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndexDoc {
    #[serde(default)]
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_type: String,
    /// Not `omitempty` in Go: an index always says `"manifests"`.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// image-spec v1.1 `Descriptor`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Base64, as Go writes a []byte.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_type: String,
}

/// image-spec v1.1 `Platform`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// Go's json.Marshal output for `value`: compact, and with `<`, `>` and `&` escaped as
/// `\u003c`, `\u003e`, `\u0026` (Go's default HTML-safe escaping; they can only occur in strings).
pub fn marshal<T: Serialize>(value: &T) -> Vec<u8> {
    let text = serde_json::to_string(value).expect("plain structs serialize");
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_go_struct_order_maps_sorted_empties_omitted() {
        let d = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: "sha256:ab".into(),
            size: 3,
            annotations: BTreeMap::from([
                ("org.opencontainers.image.ref.name".into(), "1".into()),
                ("io.containerd.image.name".into(), "r/a:1".into()),
            ]),
            platform: Some(Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let idx = IndexDoc {
            schema_version: 2,
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            manifests: vec![d],
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(marshal(&idx)).unwrap(),
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ab","size":3,"annotations":{"io.containerd.image.name":"r/a:1","org.opencontainers.image.ref.name":"1"},"platform":{"architecture":"amd64","os":"linux"}}]}"#
        );
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        let mut d = Descriptor::default();
        d.annotations.insert("k".into(), "<a&b>".into());
        let text = String::from_utf8(marshal(&d)).unwrap();
        assert!(text.contains(r#""k":"\u003ca\u0026b\u003e""#), "{text}");
    }
}
