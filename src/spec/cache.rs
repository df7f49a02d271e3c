//! `--import-cache` / `--export-cache` values → cache entries for the Solve request, checked before a daemon starts.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::csv;

/// One cache import or export, as the daemon takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheEntry {
    /// Go's field names: the frontend reads the imports back from JSON.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Attrs")]
    pub attrs: BTreeMap<String, String>,
}

/// Cache backends the daemon handles on its own; `local` needs a client-side content store.
const SUPPORTED: &[&str] = &["registry", "inline"];

fn parse(flag: &str, value: &str) -> Result<CacheEntry> {
    let mut attrs: BTreeMap<String, String> = csv::pairs(value)
        .with_context(|| {
            format!("{flag} {value:?} is malformed: write it as type=registry,ref=REF")
        })?
        .into_iter()
        .collect();
    let Some(kind) = attrs.remove("type") else {
        bail!("{flag} {value:?} has no type: add type=registry (or type=inline)");
    };
    if kind == "local" {
        bail!("{flag} type=local is not supported by bkrun yet: use type=registry (a registry on 127.0.0.1 works), or run buildctl through `bkrun exec`");
    }
    if !SUPPORTED.contains(&kind.as_str()) {
        bail!("{flag} type={kind} is not supported: use type=registry or type=inline");
    }
    if kind == "registry" && attrs.get("ref").is_none_or(|r| r.is_empty()) {
        bail!("{flag} type=registry needs ref=REGISTRY/REPO:TAG");
    }
    Ok(CacheEntry { kind, attrs })
}

pub fn parse_export(value: &str) -> Result<CacheEntry> {
    let mut e = parse("--export-cache", value)?;
    // buildctl's default: only the final result's layers.
    e.attrs.entry("mode".into()).or_insert_with(|| "min".into());
    if let Some(m) = e.attrs.get("mode") {
        if m != "min" && m != "max" {
            bail!("--export-cache mode={m} is not a mode: use mode=min or mode=max");
        }
    }
    Ok(e)
}

pub fn parse_import(value: &str) -> Result<CacheEntry> {
    parse("--import-cache", value)
}

/// The `cache-imports` frontend attribute: the imports as JSON, so the frontend can use them too.
pub fn imports_attr(imports: &[CacheEntry]) -> Option<String> {
    (!imports.is_empty()).then(|| serde_json::to_string(imports).expect("plain strings serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_inline_entries() {
        let e = parse_export("type=registry,ref=127.0.0.1:5000/cache:1,mode=max").unwrap();
        assert_eq!(e.kind, "registry");
        assert_eq!(e.attrs["mode"], "max");
        assert_eq!(parse_export("type=inline").unwrap().attrs["mode"], "min");
        let i = parse_import("type=registry,ref=r/c:1").unwrap();
        assert_eq!(
            imports_attr(&[i]).unwrap(),
            r#"[{"Type":"registry","Attrs":{"ref":"r/c:1"}}]"#
        );
    }

    #[test]
    fn bad_entries_are_explained() {
        assert!(parse_export("ref=x")
            .unwrap_err()
            .to_string()
            .contains("has no type"));
        assert!(parse_export("type=registry")
            .unwrap_err()
            .to_string()
            .contains("needs ref="));
        assert!(parse_export("type=registry,ref=x,mode=all")
            .unwrap_err()
            .to_string()
            .contains("mode=min or mode=max"));
        assert!(parse_import("type=local,src=d")
            .unwrap_err()
            .to_string()
            .contains("not supported by bkrun yet"));
        assert!(parse_import("type=s3,bucket=b")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
