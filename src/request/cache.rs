//! `--import-cache` / `--export-cache` values → typed cache entries for the Solve request, checked before a daemon starts: caches the daemon reaches itself (registry, inline) apart from `type=local` directories bkrun serves.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::csv::{self, parse_bool};
use super::{clip, clip_quoted, header_safe, reference};

/// A cache the daemon reaches on its own: a registry ref, or the image's inline cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCache {
    pub kind: RemoteKind,
    pub attrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    Registry,
    Inline,
}

impl RemoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteKind::Registry => "registry",
            RemoteKind::Inline => "inline",
        }
    }
}

/// `--import-cache type=local,src=DIR`: a directory an earlier local export wrote, which bkrun
/// serves through the session's content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImport {
    /// As given: the daemon asks for the store by this string.
    pub src: String,
    /// The index.json tag the import starts from (default `latest`).
    pub tag: String,
    /// Every attribute as given, sent to the daemon (`digest` is added once it is known).
    pub attrs: BTreeMap<String, String>,
}

impl LocalImport {
    /// The manifest digest given on the command line, if any.
    pub fn digest(&self) -> Option<&str> {
        self.attrs.get("digest").map(String::as_str)
    }
}

/// `--export-cache type=local,dest=DIR`: a directory bkrun creates and serves, tagged in its
/// index.json after the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExport {
    /// As given: the daemon asks for the store by this string.
    pub dest: String,
    /// The index.json tag the new cache gets (default `latest`).
    pub tag: String,
    /// reset=true: blobs no tagged manifest needs are removed after the export.
    pub reset: bool,
    /// Every attribute as given, `mode` defaulted, sent to the daemon.
    pub attrs: BTreeMap<String, String>,
}

/// One `--import-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheImport {
    Remote(RemoteCache),
    Local(LocalImport),
}

/// One `--export-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheExport {
    Remote(RemoteCache),
    Local(LocalExport),
}

impl CacheImport {
    /// The cache type, as the daemon takes it.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheImport::Remote(r) => r.kind.as_str(),
            CacheImport::Local(_) => "local",
        }
    }

    /// The attributes, as the daemon takes them.
    pub fn attrs(&self) -> &BTreeMap<String, String> {
        match self {
            CacheImport::Remote(r) => &r.attrs,
            CacheImport::Local(l) => &l.attrs,
        }
    }
}

impl CacheExport {
    /// The cache type, as the daemon takes it.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheExport::Remote(r) => r.kind.as_str(),
            CacheExport::Local(_) => "local",
        }
    }

    /// The attributes, as the daemon takes them.
    pub fn attrs(&self) -> &BTreeMap<String, String> {
        match self {
            CacheExport::Remote(r) => &r.attrs,
            CacheExport::Local(l) => &l.attrs,
        }
    }
}

/// Splits a value into its type and attributes; a registry needs a ref.
fn parse(flag: &str, value: &str) -> Result<(Option<RemoteKind>, BTreeMap<String, String>)> {
    let mut attrs: BTreeMap<String, String> = csv::pairs(value)
        .with_context(|| {
            format!(
                "{flag} {} is malformed: write it as type=registry,ref=REF",
                clip_quoted(value)
            )
        })?
        .into_iter()
        .collect();
    let Some(kind) = attrs.remove("type") else {
        bail!(
            "{flag} {} has no type: add type=registry (or type=inline)",
            clip_quoted(value)
        );
    };
    let kind = match kind.as_str() {
        "registry" => Some(RemoteKind::Registry),
        "inline" => Some(RemoteKind::Inline),
        "local" => None,
        _ => bail!(
            "{flag} type={} is not supported: use type=registry, type=local or type=inline",
            clip(&kind)
        ),
    };
    if kind == Some(RemoteKind::Registry) {
        let Some(r) = attrs.get("ref").filter(|r| !r.is_empty()) else {
            bail!("{flag} type=registry needs ref=REGISTRY/REPO:TAG");
        };
        if let Some(why) = reference::problem(r) {
            bail!(
                "{flag} type=registry,ref={} is not an image reference ({why}): write ref=REGISTRY/REPO:TAG in lower case, e.g. ref=127.0.0.1:5000/app/cache:latest",
                clip(r)
            );
        }
    }
    Ok((kind, attrs))
}

pub fn parse_export(value: &str) -> Result<CacheExport> {
    let (kind, attrs) = parse("--export-cache", value)?;
    let mut export = match kind {
        Some(kind) => CacheExport::Remote(RemoteCache { kind, attrs }),
        None => CacheExport::Local(local_export(attrs)?),
    };
    let attrs = match &mut export {
        CacheExport::Remote(r) => &mut r.attrs,
        CacheExport::Local(l) => &mut l.attrs,
    };
    // buildctl's default: only the final result's layers.
    let mode = attrs.entry("mode".into()).or_insert_with(|| "min".into());
    if mode != "min" && mode != "max" {
        bail!(
            "--export-cache mode={} is not a mode: use mode=min or mode=max",
            clip(mode)
        );
    }
    Ok(export)
}

fn local_export(attrs: BTreeMap<String, String>) -> Result<LocalExport> {
    let Some(dest) = attrs.get("dest").filter(|d| !d.is_empty()).cloned() else {
        bail!("--export-cache type=local needs dest=DIR (the cache directory; created if missing)");
    };
    // The daemon names the store "local:DIR" in a gRPC header when it calls back.
    header_safe("--export-cache type=local", "directory", &dest)?;
    if Path::new(&dest).exists() && !Path::new(&dest).is_dir() {
        bail!(
            "--export-cache type=local,dest={}: that is a file, not a directory: give a directory for the cache",
            clip(&dest)
        );
    }
    let reset = match attrs.get("reset") {
        None => false,
        Some(r) => parse_bool(r).with_context(|| {
            format!(
                "--export-cache reset={} is not a boolean: use reset=true or reset=false",
                clip(r)
            )
        })?,
    };
    let tag = tag("--export-cache", &attrs)?;
    Ok(LocalExport {
        dest,
        tag,
        reset,
        attrs,
    })
}

pub fn parse_import(value: &str) -> Result<CacheImport> {
    let (kind, attrs) = parse("--import-cache", value)?;
    if let Some(kind) = kind {
        return Ok(CacheImport::Remote(RemoteCache { kind, attrs }));
    }
    let Some(src) = attrs.get("src").filter(|s| !s.is_empty()).cloned() else {
        bail!("--import-cache type=local needs src=DIR (a directory an earlier --export-cache type=local,dest=DIR wrote)");
    };
    header_safe("--import-cache type=local", "directory", &src)?;
    let tag = tag("--import-cache", &attrs)?;
    Ok(CacheImport::Local(LocalImport { src, tag, attrs }))
}

/// A local cache is found by its tag in index.json; an empty tag could never match.
fn tag(flag: &str, attrs: &BTreeMap<String, String>) -> Result<String> {
    match attrs.get("tag") {
        Some(t) if t.is_empty() => {
            bail!("{flag} type=local,tag= is empty: drop it (the default is latest) or give a tag")
        }
        Some(t) => Ok(t.clone()),
        None => Ok("latest".into()),
    }
}

/// The `cache-imports` frontend attribute: the imports as JSON, so the frontend can use them too.
pub fn imports_attr(imports: &[CacheImport]) -> Option<String> {
    /// Go's field names: the frontend reads the imports back from JSON.
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(rename = "Type")]
        kind: &'a str,
        #[serde(rename = "Attrs")]
        attrs: &'a BTreeMap<String, String>,
    }
    let entries: Vec<Entry> = imports
        .iter()
        .map(|i| Entry {
            kind: i.kind(),
            attrs: i.attrs(),
        })
        .collect();
    (!entries.is_empty()).then(|| serde_json::to_string(&entries).expect("plain strings serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_inline_entries() {
        let e = parse_export("type=registry,ref=127.0.0.1:5000/cache:1,mode=max").unwrap();
        assert_eq!(e.kind(), "registry");
        assert_eq!(e.attrs()["mode"], "max");
        assert_eq!(parse_export("type=inline").unwrap().attrs()["mode"], "min");
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
                .attrs()["mode"],
            "max"
        );
        for bad in [
            "type=registry,ref=foo/Bar",
            "type=registry,ref=a b",
            "type=registry,ref=r/c:",
        ] {
            let e = parse_export(bad).unwrap_err().to_string();
            assert!(e.starts_with("--export-cache type=registry,ref="), "{e}");
            assert!(parse_import(bad).is_err(), "{bad}");
        }
        let e = parse_export("type=local,dest=/tmp/caché")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--export-cache type=local: the directory"),
            "{e}"
        );
        assert!(parse_import("type=local,src=/tmp/caché").is_err());
        assert!(parse_import("type=s3,bucket=b")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
