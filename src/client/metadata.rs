//! `--metadata-file`: the exporter's response as the JSON buildctl writes (values that are base64 of a JSON object are embedded as that object).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{Map, Value};

/// The document buildctl writes for an exporter response.
pub fn document(response: &HashMap<String, String>) -> Value {
    // Go writes the map with its keys sorted; an embedded object keeps the daemon's own order
    // (buildctl embeds it as a json.RawMessage).
    let mut keys: Vec<&String> = response.keys().collect();
    keys.sort();
    let mut out = Map::new();
    for (k, v) in keys.into_iter().map(|k| (k, &response[k])) {
        let embedded = base64::engine::general_purpose::STANDARD
            .decode(v)
            .ok()
            .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(&raw).ok())
            .filter(|m| !m.is_empty());
        out.insert(
            k.clone(),
            embedded.map_or_else(|| Value::String(v.clone()), Value::Object),
        );
    }
    Value::Object(out)
}

/// Writes the document to `path` atomically (a partial file is never seen).
pub fn write(path: &Path, response: &HashMap<String, String>) -> Result<()> {
    let text = serde_json::to_string_pretty(&document(response))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!(
            "cannot write the metadata file {}: is {} writable?",
            path.display(),
            dir.display()
        )
    })?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("cannot write the metadata file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_embedded_and_others_kept() {
        // Out of alphabetical order on purpose: the daemon's order must survive.
        let desc = r#"{"size":3,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let resp = HashMap::from([
            (
                "containerimage.digest".to_string(),
                "sha256:abc".to_string(),
            ),
            (
                "containerimage.descriptor".to_string(),
                base64::engine::general_purpose::STANDARD.encode(desc),
            ),
            ("image.name".to_string(), "reg/x:1".to_string()),
        ]);
        let doc = document(&resp);
        assert_eq!(doc["containerimage.digest"], "sha256:abc");
        assert_eq!(doc["containerimage.descriptor"]["size"], 3);
        assert_eq!(doc["image.name"], "reg/x:1");
        let text = serde_json::to_string_pretty(&doc).unwrap();
        // Keys sorted, two-space indent, as Go's MarshalIndent writes a map; the embedded
        // descriptor in the daemon's order.
        assert!(
            text.starts_with("{\n  \"containerimage.descriptor\": {\n    \"size\""),
            "{text}"
        );
    }
}
