//! `--metadata-file`: the exporter's response as the JSON buildctl writes (values that are base64 of a JSON object are embedded as that object), and bkrun's own numbers under `"bkrun"`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::progress::CacheStats;
use crate::request::docker::AfterBuild;
use crate::request::kaniko::repository;

/// The document buildctl writes for an exporter response, with bkrun's `"bkrun"` key beside
/// the daemon's (BuildKit's own keys are dotted, so it cannot clash).
pub fn document(response: &HashMap<String, String>, cache: &CacheStats) -> Value {
    let mut entries: Vec<(String, Value)> = response
        .iter()
        .map(|(k, v)| {
            let embedded = base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(&raw).ok())
                .filter(|m| !m.is_empty());
            (
                k.clone(),
                embedded.map_or_else(|| Value::String(v.clone()), Value::Object),
            )
        })
        .collect();
    entries.push(("bkrun".into(), bkrun(cache)));
    // Go writes the map with its keys sorted; an embedded object keeps the daemon's own order
    // (buildctl embeds it as a json.RawMessage).
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Object(entries.into_iter().collect())
}

/// bkrun's numbers: steps cached of steps finished, and what of the registry cache and the
/// cache mounts happened (what did not is left out).
fn bkrun(cache: &CacheStats) -> Value {
    let seconds = |d: std::time::Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let mut out = Map::new();
    out.insert(
        "steps".into(),
        json!({"cached": cache.steps_cached, "total": cache.steps_total}),
    );
    let mut registry = Map::new();
    if let Some(i) = &cache.registry_import {
        registry.insert("import_seconds".into(), json!(seconds(i.took)));
        if i.failed > 0 {
            registry.insert("imports_unavailable".into(), json!(i.failed));
        }
    }
    if let Some(e) = &cache.registry_export {
        registry.insert("export_seconds".into(), json!(seconds(e.took)));
        if e.failed {
            registry.insert("export_failed".into(), json!(true));
        }
    }
    if !registry.is_empty() {
        out.insert("registry_cache".into(), Value::Object(registry));
    }
    if let Some(m) = &cache.cache_mounts {
        let mut mounts = Map::new();
        for (what, t) in [("restored", &m.restored), ("saved", &m.saved)] {
            if let Some(t) = t {
                let t = json!({"count": t.count, "bytes": t.bytes, "seconds": seconds(t.took)});
                mounts.insert(what.into(), t);
            }
        }
        out.insert("cache_mounts".into(), Value::Object(mounts));
    }
    Value::Object(out)
}

/// Writes the document to `path` through the one writer (src/place): atomically over a
/// regular file (a symlink's target is replaced and the link kept), through a device, FIFO or
/// `/dev/stdout`, and never where the kernel's protection for shared directories would refuse.
pub async fn write(
    path: &Path,
    response: &HashMap<String, String>,
    cache: &CacheStats,
) -> Result<()> {
    let text = serde_json::to_string_pretty(&document(response, cache))?;
    crate::outputs::write_file(path, text.as_bytes())
        .await
        .with_context(|| format!("cannot write the --metadata-file {}", path.display()))
}

/// The files buildx's --iidfile and kaniko's digest flags ask for, and `-q`'s image ID on
/// stdout, from the exporter's response. The image ID is the config digest, as docker means
/// it (the manifest digest when there is none); kaniko's files hold the manifest digest. Every
/// value is found before any file is written, and each file is written as `write` writes.
pub async fn write_after(after: &AfterBuild, response: &HashMap<String, String>) -> Result<()> {
    let manifest = response.get("containerimage.digest");
    let id = response.get("containerimage.config.digest").or(manifest);
    let need = |what: &str, v: Option<&String>| -> Result<String> {
        v.cloned().with_context(|| {
            format!("{what} was asked for, but the build exported no image: give it an image output (--push or --output type=image|docker|oci)")
        })
    };
    let lines = |with_tag: bool, digest: &str| {
        after
            .names
            .iter()
            .map(|n| {
                let name = if with_tag { n.as_str() } else { repository(n) };
                format!("{name}@{digest}\n")
            })
            .collect::<String>()
    };
    let mut files: Vec<(&Path, &str, String)> = Vec::new();
    if let Some(f) = &after.iidfile {
        files.push((f, "--iidfile", need("--iidfile", id)?));
    }
    let print_id = match after.print_id {
        true => Some(need("--quiet", id)?),
        false => None,
    };
    if let Some(f) = &after.digest_file {
        files.push((f, "--digest-file", need("--digest-file", manifest)?));
    }
    if let Some(f) = &after.name_with_digest_file {
        let flag = "--image-name-with-digest-file";
        files.push((f, flag, lines(false, &need(flag, manifest)?)));
    }
    if let Some(f) = &after.name_tag_with_digest_file {
        let flag = "--image-name-tag-with-digest-file";
        files.push((f, flag, lines(true, &need(flag, manifest)?)));
    }
    for (path, flag, text) in files {
        crate::outputs::write_file(path, text.as_bytes())
            .await
            .with_context(|| format!("cannot write the {flag} file {}", path.display()))?;
    }
    if let Some(id) = print_id {
        crate::say_out!("{id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kaniko_digest_files_and_the_image_id() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        let after = AfterBuild {
            iidfile: Some(p("iid")),
            digest_file: Some(p("digest")),
            name_with_digest_file: Some(p("names")),
            name_tag_with_digest_file: Some(p("tags")),
            names: vec![
                "127.0.0.1:5000/app:1".into(),
                "127.0.0.1:5000/app:latest".into(),
            ],
            print_id: false,
        };
        let resp = HashMap::from([
            ("containerimage.digest".to_string(), "sha256:m".to_string()),
            (
                "containerimage.config.digest".to_string(),
                "sha256:c".to_string(),
            ),
        ]);
        write_after(&after, &resp).await.unwrap();
        let read = |n: &str| std::fs::read_to_string(p(n)).unwrap();
        assert_eq!(read("iid"), "sha256:c");
        assert_eq!(read("digest"), "sha256:m");
        assert_eq!(
            read("names"),
            "127.0.0.1:5000/app@sha256:m\n127.0.0.1:5000/app@sha256:m\n"
        );
        assert_eq!(
            read("tags"),
            "127.0.0.1:5000/app:1@sha256:m\n127.0.0.1:5000/app:latest@sha256:m\n"
        );
        let e = write_after(&after, &HashMap::new()).await.unwrap_err();
        assert!(e.to_string().contains("--iidfile was asked for"), "{e}");
    }

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
        let doc = document(&resp, &CacheStats::default());
        assert_eq!(doc["containerimage.digest"], "sha256:abc");
        assert_eq!(doc["containerimage.descriptor"]["size"], 3);
        assert_eq!(doc["image.name"], "reg/x:1");
        let text = serde_json::to_string_pretty(&doc).unwrap();
        // Keys sorted, two-space indent, as Go's MarshalIndent writes a map; the embedded
        // descriptor in the daemon's order.
        assert!(
            text.starts_with("{\n  \"bkrun\": {\n    \"steps\": {\n      \"cached\": 0,\n      \"total\": 0\n    }\n  },\n  \"containerimage.descriptor\": {\n    \"size\""),
            "{text}"
        );
    }

    #[test]
    fn bkrun_numbers_leave_out_what_did_not_happen() {
        use crate::progress::{CacheMountStats, Export, Import, Transfer};
        use std::time::Duration;
        let mut cache = CacheStats {
            steps_cached: 7,
            steps_total: 9,
            registry_import: Some(Import {
                took: Duration::from_micros(412_345),
                refs: 2,
                failed: 0,
            }),
            registry_export: Some(Export {
                took: Duration::from_millis(1200),
                failed: false,
            }),
            cache_mounts: None,
        };
        assert_eq!(
            document(&HashMap::new(), &cache)["bkrun"],
            serde_json::json!({
                "steps": {"cached": 7, "total": 9},
                "registry_cache": {"import_seconds": 0.412, "export_seconds": 1.2}
            })
        );
        cache.registry_import = None;
        cache.registry_export = Some(Export {
            took: Duration::ZERO,
            failed: true,
        });
        cache.cache_mounts = Some(CacheMountStats {
            restored: Some(Transfer {
                count: 2,
                bytes: 10,
                took: Duration::from_millis(800),
            }),
            saved: None,
        });
        assert_eq!(
            document(&HashMap::new(), &cache)["bkrun"],
            serde_json::json!({
                "steps": {"cached": 7, "total": 9},
                "registry_cache": {"export_seconds": 0.0, "export_failed": true},
                "cache_mounts": {"restored": {"count": 2, "bytes": 10, "seconds": 0.8}}
            })
        );
    }
}
