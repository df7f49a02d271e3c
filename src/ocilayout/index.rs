//! index.json of an image-layout directory: find a manifest by tag, record a new one under a tag, list what it references.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::gojson::{self, Descriptor, IndexDoc};
use super::Digest;

/// The annotation a tag is kept in (OCI image spec).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's full image name annotation; a tag lookup tries it first.
const IMAGE_NAME: &str = "io.containerd.image.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What an index entry is found by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A bare tag such as `latest` (cache exports use these).
    Tag(String),
    /// A full image name such as `docker.io/library/app:1`; its tag becomes the OCI ref name.
    Image(String),
}

/// The tag (or digest) part of a full image name, as containerd splits it: from the first
/// `:` or `@` after the host, without a leading `:`. A name without a host is kept whole.
fn reference_object(name: &str) -> &str {
    let Some(slash) = name.find('/') else {
        return name;
    };
    match name[slash..].find([':', '@']) {
        Some(i) => {
            let object = &name[slash + i..];
            object.strip_prefix(':').unwrap_or(object)
        }
        None => "",
    }
}

/// The index of one image-layout directory.
pub struct Index {
    root: PathBuf,
}

impl Index {
    pub fn new(root: &Path) -> Index {
        Index {
            root: root.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Holds `index.json.lock` (as buildctl does) so parallel jobs sharing a cache directory
    /// do not overwrite each other's entries.
    fn lock(&self) -> Result<(Flock<fs::File>, PathBuf)> {
        let path = self.root.join("index.json.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create the lock file {}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok((lock, path))
    }

    /// The parsed index, or `None` when the directory has none yet.
    pub fn read(&self) -> Result<Option<Value>> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not valid JSON", path.display()))
    }

    /// The manifest descriptor tagged `tag`, by image name first, then by OCI ref name.
    pub fn get(&self, tag: &str) -> Result<Option<Value>> {
        let Some(index) = self.read()? else {
            return Ok(None);
        };
        let manifests = manifests(&index);
        let by = |key: &str| {
            manifests
                .iter()
                .find(|m| m["annotations"][key].as_str() == Some(tag))
                .map(|m| (*m).clone())
        };
        Ok(by(IMAGE_NAME).or_else(|| by(REF_NAME)))
    }

    /// Records `descriptor` under each of `names`, replacing the entries that had those names.
    /// index.json is replaced whole (written aside, then renamed), never left half-written.
    pub fn put(&self, descriptor: &Value, names: &[Name]) -> Result<()> {
        let (_lock, lock_path) = self.lock()?;
        let result = self.put_locked(descriptor, names);
        let _ = fs::remove_file(lock_path);
        result
    }

    fn put_locked(&self, descriptor: &Value, names: &[Name]) -> Result<()> {
        let layout = self.root.join("oci-layout");
        fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("cannot write {}", layout.display()))?;
        // Typed, so the file is written field for field as buildctl's Go writes it.
        let mut index: IndexDoc = match self.read()? {
            Some(v) => serde_json::from_value(v)
                .with_context(|| format!("{} is not an OCI image index", self.path().display()))?,
            None => IndexDoc::default(),
        };
        if index.schema_version == 0 {
            index.schema_version = 2;
        }
        if index.media_type.is_empty() {
            index.media_type = INDEX_MEDIA_TYPE.into();
        }
        let descriptor: Descriptor = serde_json::from_value(descriptor.clone()).map_err(|e| {
            anyhow!("the daemon's descriptor is not an OCI descriptor ({e}): {descriptor}")
        })?;
        for name in names {
            let (image_name, ref_name) = match name {
                Name::Tag(t) => ("", t.as_str()),
                Name::Image(n) => (n.as_str(), reference_object(n)),
            };
            let mut entry = descriptor.clone();
            if !image_name.is_empty() {
                entry
                    .annotations
                    .insert(IMAGE_NAME.into(), image_name.into());
            }
            entry.annotations.insert(REF_NAME.into(), ref_name.into());
            // The entry this one replaces has the same pair of names (a missing one counts as empty).
            let name_of =
                |m: &Descriptor, key: &str| m.annotations.get(key).cloned().unwrap_or_default();
            index.manifests.retain(|m| {
                name_of(m, REF_NAME) != ref_name || name_of(m, IMAGE_NAME) != image_name
            });
            index.manifests.push(entry);
        }

        let path = self.path();
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root)
            .with_context(|| format!("cannot write next to {}", path.display()))?;
        tmp.write_all(&gojson::marshal(&index))
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
        tmp.persist(&path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// Every blob reachable from the index: manifests, indexes, configs and layers.
    pub fn referenced(&self) -> Result<BTreeSet<Digest>> {
        let mut seen = BTreeSet::new();
        let Some(index) = self.read()? else {
            return Ok(seen);
        };
        let mut todo: Vec<Value> = manifests(&index).into_iter().cloned().collect();
        while let Some(desc) = todo.pop() {
            let Some(digest) = desc["digest"].as_str().and_then(Digest::parse) else {
                continue;
            };
            if !seen.insert(digest.clone()) {
                continue;
            }
            let media_type = desc["mediaType"].as_str().unwrap_or_default();
            if !(media_type.contains("manifest") || media_type.contains("index")) {
                continue;
            }
            // A listed manifest may be missing (e.g. a foreign platform never pulled): nothing below it is kept then.
            let Ok(bytes) = fs::read(digest.blob_path(&self.root)) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            todo.extend(manifests(&doc).into_iter().cloned());
            todo.extend(doc["layers"].as_array().into_iter().flatten().cloned());
            if doc["config"].is_object() {
                todo.push(doc["config"].clone());
            }
        }
        Ok(seen)
    }
}

fn manifests(index: &Value) -> Vec<&Value> {
    index["manifests"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desc(body: &[u8], media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": Digest::sha256(body).to_string(), "size": body.len()})
    }

    #[test]
    fn tags_replace_their_own_entry_only() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::new(d.path());
        assert_eq!(idx.get("latest").unwrap(), None);
        let a = desc(b"a", "application/vnd.oci.image.manifest.v1+json");
        let b = desc(b"b", "application/vnd.oci.image.manifest.v1+json");
        idx.put(&a, &[Name::Tag("latest".into())]).unwrap();
        idx.put(&a, &[Name::Tag("v1".into())]).unwrap();
        idx.put(&b, &[Name::Tag("latest".into())]).unwrap();
        assert_eq!(idx.get("latest").unwrap().unwrap()["digest"], b["digest"]);
        assert_eq!(idx.get("v1").unwrap().unwrap()["digest"], a["digest"]);
        let index = idx.read().unwrap().unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        assert!(d.path().join("oci-layout").exists());
        assert!(!d.path().join("index.json.lock").exists());
    }

    #[test]
    fn image_names_win_over_ref_names_and_survive_tag_updates() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("index.json"),
            r#"{"schemaVersion":2,"manifests":[
              {"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","annotations":{"org.opencontainers.image.ref.name":"latest"}},
              {"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","annotations":{"io.containerd.image.name":"latest","org.opencontainers.image.ref.name":"latest"}}]}"#,
        )
        .unwrap();
        let idx = Index::new(d.path());
        assert!(idx.get("latest").unwrap().unwrap()["digest"]
            .as_str()
            .unwrap()
            .ends_with("2222"));
        idx.put(&desc(b"c", "x"), &[Name::Tag("latest".into())])
            .unwrap();
        let all = idx.read().unwrap().unwrap()["manifests"].clone();
        assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    }

    #[test]
    fn image_names_keep_their_tag_as_the_ref_name() {
        assert_eq!(reference_object("docker.io/library/app:1"), "1");
        assert_eq!(reference_object("127.0.0.1:5000/a/b:v2"), "v2");
        assert_eq!(
            reference_object("docker.io/library/app@sha256:ab"),
            "@sha256:ab"
        );
        assert_eq!(reference_object("docker.io/library/app"), "");
        let d = tempfile::tempdir().unwrap();
        let idx = Index::new(d.path());
        let a = desc(b"a", "application/vnd.oci.image.index.v1+json");
        idx.put(
            &a,
            &[
                Name::Image("docker.io/library/app:1".into()),
                Name::Image("docker.io/library/app:latest".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            idx.get("docker.io/library/app:1").unwrap().unwrap()["digest"],
            a["digest"]
        );
        let m = idx.get("latest").unwrap().unwrap();
        assert_eq!(m["annotations"][IMAGE_NAME], "docker.io/library/app:latest");
    }

    #[test]
    fn referenced_follows_manifests_to_configs_and_layers() {
        let d = tempfile::tempdir().unwrap();
        let blobs = d.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let layer = desc(b"layer", "application/vnd.oci.image.layer.v1.tar+gzip");
        let config = desc(b"config", "application/vnd.buildkit.cacheconfig.v0");
        let manifest = serde_json::to_vec(&json!({"config": config, "layers": [layer]})).unwrap();
        let md = Digest::sha256(&manifest);
        std::fs::write(md.blob_path(d.path()), &manifest).unwrap();
        let idx = Index::new(d.path());
        idx.put(
            &desc(&manifest, "application/vnd.oci.image.manifest.v1+json"),
            &[Name::Tag("latest".into())],
        )
        .unwrap();
        let refs = idx.referenced().unwrap();
        assert_eq!(refs.len(), 3);
        assert!(refs.contains(&Digest::sha256(b"layer")));
        assert!(refs.contains(&Digest::sha256(b"config")));
    }
}
