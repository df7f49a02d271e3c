//! `--import-cache` / `--export-cache` values → cache entries for the Solve request, checked before a daemon starts.

use std::collections::BTreeMap;
use std::path::Path;

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

/// Cache backends bkrun offers: the daemon handles `registry` and `inline` on its own; `local`
/// goes through the content store bkrun serves in the session.
const SUPPORTED: &[&str] = &["registry", "inline", "local"];

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
    if !SUPPORTED.contains(&kind.as_str()) {
        bail!("{flag} type={kind} is not supported: use type=registry, type=local or type=inline");
    }
    if kind == "registry" && attrs.get("ref").is_none_or(|r| r.is_empty()) {
        bail!("{flag} type=registry needs ref=REGISTRY/REPO:TAG");
    }
    Ok(CacheEntry { kind, attrs })
}

pub fn parse_export(value: &str) -> Result<CacheEntry> {
    let mut e = parse("--export-cache", value)?;
    if e.kind == "local" {
        let Some(dest) = e.attrs.get("dest").filter(|d| !d.is_empty()) else {
            bail!("--export-cache type=local needs dest=DIR (the cache directory; created if missing)");
        };
        if Path::new(dest).exists() && !Path::new(dest).is_dir() {
            bail!("--export-cache type=local,dest={dest}: that is a file, not a directory: give a directory for the cache");
        }
        if let Some(r) = e.attrs.get("reset") {
            if parse_bool(r).is_none() {
                bail!("--export-cache reset={r} is not a boolean: use reset=true or reset=false");
            }
        }
        check_tag("--export-cache", &e)?;
    }
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
    let e = parse("--import-cache", value)?;
    if e.kind == "local" {
        if e.attrs.get("src").is_none_or(|s| s.is_empty()) {
            bail!("--import-cache type=local needs src=DIR (a directory an earlier --export-cache type=local,dest=DIR wrote)");
        }
        check_tag("--import-cache", &e)?;
    }
    Ok(e)
}

/// A local cache is found by its tag in index.json; an empty tag could never match.
fn check_tag(flag: &str, e: &CacheEntry) -> Result<()> {
    if e.attrs.get("tag").is_some_and(|t| t.is_empty()) {
        bail!("{flag} type=local,tag= is empty: drop it (the default is latest) or give a tag");
    }
    Ok(())
}

/// Go's strconv.ParseBool spellings, which buildctl accepts.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
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
        assert!(parse_import("type=local")
            .unwrap_err()
            .to_string()
            .contains("needs src=DIR"));
        assert!(parse_export("type=local,dest=")
            .unwrap_err()
            .to_string()
            .contains("needs dest=DIR"));
        assert!(parse_export("type=local,dest=/etc/hostname")
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        assert!(parse_export("type=local,dest=d,reset=yes")
            .unwrap_err()
            .to_string()
            .contains("reset=true"));
        assert!(parse_import("type=local,src=d,tag=")
            .unwrap_err()
            .to_string()
            .contains("tag= is empty"));
        assert_eq!(
            parse_export("type=local,dest=/no/such/dir,mode=max")
                .unwrap()
                .attrs["mode"],
            "max"
        );
        assert!(parse_import("type=s3,bucket=b")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
