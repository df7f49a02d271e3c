//! The client side of `type=local` caches: the directories the session serves, the manifest an import starts from, and index.json after an export.
//!
//! As with buildctl, an import whose directory holds no usable cache yet
//! (the first run of a pipeline) is skipped with a warning, not an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::ocilayout::index::Name;
use crate::ocilayout::{Digest, Index, LocalStore};
use crate::request::cache::{CacheExport, CacheImport, LocalImport};

/// The exporter-response key holding the cache manifest's descriptor (JSON).
const RESPONSE_CACHE_MANIFEST: &str = "cache.manifest";
/// Store ids the daemon asks for: this prefix and the directory as given in the entry.
const STORE_ID_PREFIX: &str = "local:";

struct ExportDir {
    dir: PathBuf,
    tag: String,
    reset: bool,
    store: Arc<LocalStore>,
}

/// The local cache directories of one build.
#[derive(Default)]
pub struct LocalCaches {
    stores: HashMap<String, Arc<LocalStore>>,
    exports: Vec<ExportDir>,
}

impl LocalCaches {
    /// Creates export directories, and gives each local import the digest of its manifest.
    /// Imports with nothing to import are removed from `imports`; `warn` hears why.
    pub fn prepare(
        imports: &mut Vec<CacheImport>,
        exports: &[CacheExport],
        warn: &mut dyn FnMut(String),
    ) -> Result<LocalCaches> {
        let mut caches = LocalCaches::default();
        for e in exports {
            let CacheExport::Local(e) = e else { continue };
            let dest = &e.dest;
            std::fs::create_dir_all(dest).with_context(|| {
                format!(
                    "cannot create the cache directory {dest}: check the path and its permissions"
                )
            })?;
            let store = caches.store(dest);
            caches.exports.push(ExportDir {
                dir: PathBuf::from(dest),
                tag: e.tag.clone(),
                reset: e.reset,
                store,
            });
        }
        let mut kept = Vec::with_capacity(imports.len());
        for e in imports.drain(..) {
            let CacheImport::Local(mut e) = e else {
                kept.push(e);
                continue;
            };
            match manifest_digest(Path::new(&e.src), &e) {
                Ok(digest) => {
                    e.attrs.insert("digest".into(), digest.to_string());
                    caches.store(&e.src);
                    kept.push(CacheImport::Local(e));
                }
                Err(why) => warn(format!(
                    "warning: --import-cache type=local,src={} skipped: {why}",
                    e.src
                )),
            }
        }
        *imports = kept;
        Ok(caches)
    }

    fn store(&mut self, dir: &str) -> Arc<LocalStore> {
        self.stores
            .entry(format!("{STORE_ID_PREFIX}{dir}"))
            .or_insert_with(|| Arc::new(LocalStore::new(Path::new(dir))))
            .clone()
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// The stores to serve, by the id the daemon asks for.
    pub fn stores(&self) -> impl Iterator<Item = (&String, &Arc<LocalStore>)> {
        self.stores.iter()
    }

    /// After a successful build: tag the new cache manifest in each export's index.json,
    /// then, where reset=true, drop the blobs no tagged manifest needs any more.
    pub fn finish(&self, response: &HashMap<String, String>) -> Result<()> {
        let Some(desc) = response.get(RESPONSE_CACHE_MANIFEST) else {
            return Ok(());
        };
        let desc: Value = serde_json::from_str(desc)
            .context("the daemon's cache manifest descriptor is not JSON")?;
        for ex in &self.exports {
            let index = Index::new(&ex.dir);
            index
                .put(&desc, &[Name::Tag(ex.tag.clone())])
                .with_context(|| {
                    format!(
                        "the cache was written to {} but its index.json could not be updated",
                        ex.dir.display()
                    )
                })?;
            if ex.reset {
                let keep = index.referenced()?;
                ex.store.remove_unreferenced(&keep).with_context(|| {
                    format!("cannot remove unused blobs from {}", ex.dir.display())
                })?;
            }
        }
        Ok(())
    }

    /// Removes unfinished writes; committed blobs stay.
    pub fn close(&self) {
        for s in self.stores.values() {
            s.close();
        }
    }
}

/// The manifest an import starts from: its explicit digest, else the one tagged in index.json.
fn manifest_digest(dir: &Path, e: &LocalImport) -> std::result::Result<Digest, String> {
    if !dir.is_dir() {
        return Err("the directory does not exist (no cache was exported there yet)".into());
    }
    let digest = match e.digest() {
        Some(d) => Digest::parse(d).ok_or_else(|| format!("digest={d} is not a digest"))?,
        None => {
            let tag = &e.tag;
            let desc = Index::new(dir)
                .get(tag)
                .map_err(|err| format!("{err:#}"))?
                .ok_or_else(|| format!("its index.json has no cache tagged {tag}"))?;
            desc["digest"]
                .as_str()
                .and_then(Digest::parse)
                .ok_or_else(|| {
                    format!("the entry tagged {tag} in its index.json has no valid digest")
                })?
        }
    };
    if !digest.blob_path(dir).is_file() {
        return Err(format!("{digest} is missing from its blobs/"));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::cache::{parse_export, parse_import};

    #[test]
    fn imports_without_a_cache_are_skipped_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let s = dir.display().to_string();
        let mut imports = vec![
            parse_import(&format!("type=local,src={s}")).unwrap(),
            parse_import("type=registry,ref=r/c").unwrap(),
        ];
        let mut warnings = Vec::new();
        let caches = LocalCaches::prepare(&mut imports, &[], &mut |w| warnings.push(w)).unwrap();
        assert!(caches.is_empty());
        assert_eq!(imports.len(), 1);
        assert!(warnings[0].contains("does not exist"), "{warnings:?}");

        std::fs::create_dir(&dir).unwrap();
        let mut imports = vec![parse_import(&format!("type=local,src={s}")).unwrap()];
        LocalCaches::prepare(&mut imports, &[], &mut |w| warnings.push(w)).unwrap();
        assert!(warnings[1].contains("index.json"), "{warnings:?}");
    }

    #[test]
    fn an_export_is_tagged_then_imported_by_its_digest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("new/cache");
        let s = dir.display().to_string();
        let exports =
            vec![parse_export(&format!("type=local,dest={s},tag=main,reset=true")).unwrap()];
        let mut none = Vec::new();
        let caches = LocalCaches::prepare(&mut none, &exports, &mut |w| panic!("{w}")).unwrap();
        assert!(
            dir.is_dir(),
            "the export directory is created before the build"
        );

        // What the daemon would have written: a manifest, and an orphan from an older export.
        let manifest = br#"{"layers":[]}"#;
        let md = Digest::sha256(manifest);
        std::fs::create_dir_all(md.blob_path(&dir).parent().unwrap()).unwrap();
        std::fs::write(md.blob_path(&dir), manifest).unwrap();
        let orphan = Digest::sha256(b"old");
        std::fs::write(orphan.blob_path(&dir), b"old").unwrap();
        let desc = serde_json::json!({"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md.to_string(),"size":manifest.len()});
        caches
            .finish(&HashMap::from([(
                RESPONSE_CACHE_MANIFEST.to_string(),
                desc.to_string(),
            )]))
            .unwrap();
        assert!(
            !orphan.blob_path(&dir).exists(),
            "reset=true drops unreferenced blobs"
        );
        assert!(md.blob_path(&dir).exists());

        let mut imports = vec![parse_import(&format!("type=local,src={s},tag=main")).unwrap()];
        let caches = LocalCaches::prepare(&mut imports, &[], &mut |w| panic!("{w}")).unwrap();
        assert_eq!(imports[0].attrs()["digest"], md.to_string());
        assert_eq!(caches.stores.len(), 1);
        assert!(caches.stores.contains_key(&format!("local:{s}")));
    }
}
