//! Where saved cache mounts live between runs: an OCI artifact (its own artifactType, one
//! tar+zstd layer per mount, annotated with the mount's key), in an OCI image layout directory
//! or in a registry. A save writes the new layers, then the manifest, then (last, by rename)
//! index.json or the tag: a save killed at any point leaves the previous one whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::outputs::{self, FileTarget};
use crate::registry::manifest::{empty_descriptor, EMPTY_BLOB, MANIFEST_MEDIA_TYPE};
use crate::registry::{self, Descriptor, Manifest};

pub const ARTIFACT_TYPE: &str = "application/vnd.bkrun.cache-mounts.v1";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// index.json's name for the save in a directory.
const REF_NAME: &str = "cache-mounts";

const A_KEY: &str = "dev.bkrun.cache-mount.key";
const A_ID: &str = "dev.bkrun.cache-mount.id";
const A_TARGET: &str = "dev.bkrun.cache-mount.target";
const A_FINGERPRINT: &str = "dev.bkrun.cache-mount.fingerprint";
const A_BYTES: &str = "dev.bkrun.cache-mount.bytes";

/// One saved mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub key: String,
    pub id: String,
    pub target: String,
    pub fingerprint: String,
    /// Bytes of file data in the mount.
    pub bytes: u64,
}

impl Layer {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// The manifest of a save listing `layers`.
fn manifest_of(layers: &[Layer]) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: empty_descriptor(),
        layers: layers.iter().map(descriptor_of).collect(),
        annotations: BTreeMap::new(),
    }
}

/// The saved mounts a manifest lists; a layer without our annotations is not one of ours.
fn layers_of(m: &Manifest) -> Result<Vec<Layer>> {
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        bail!(
            "it is not a save of cache mounts (artifactType {:?}, not {ARTIFACT_TYPE})",
            m.artifact_type.as_deref().unwrap_or("")
        );
    }
    Ok(m.layers.iter().filter_map(layer_of).collect())
}

fn descriptor_of(l: &Layer) -> Descriptor {
    let annotations = [
        (A_KEY, l.key.clone()),
        (A_ID, l.id.clone()),
        (A_TARGET, l.target.clone()),
        (A_FINGERPRINT, l.fingerprint.clone()),
        (A_BYTES, l.bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Descriptor {
        media_type: LAYER_TYPE.into(),
        digest: l.digest.clone(),
        size: l.size,
        artifact_type: None,
        annotations,
    }
}

fn layer_of(d: &Descriptor) -> Option<Layer> {
    let a = |k: &str| d.annotations.get(k).cloned();
    let hex = d.digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Layer {
        digest: d.digest.clone(),
        size: d.size,
        key: a(A_KEY)?,
        id: a(A_ID).unwrap_or_default(),
        target: a(A_TARGET).unwrap_or_default(),
        fingerprint: a(A_FINGERPRINT).unwrap_or_default(),
        bytes: a(A_BYTES).and_then(|b| b.parse().ok()).unwrap_or(0),
    })
}

/// The sha256 and size of a file.
pub fn digest_file(path: &Path) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let n = io::copy(&mut File::open(path)?, &mut h)?;
    Ok((format!("sha256:{:x}", h.finalize()), n))
}

/// What a store held at the start of a run.
#[derive(Debug, Default)]
pub struct Loaded {
    pub layers: Vec<Layer>,
    /// The directory whose `<hex>` files are the layers' blobs.
    pub blobs: Option<PathBuf>,
    /// A line to say about it (an interrupted save, a damaged index).
    pub note: Option<String>,
}

/// An OCI image layout directory.
pub struct DirStore {
    dir: PathBuf,
    /// The marker a save holds while it runs (a flocked temp the next run finds if killed).
    saving: Option<outputs::Temp>,
}

const SAVING: &str = ".cache-mounts-save.bkrun-";

impl DirStore {
    pub fn new(dir: &Path) -> DirStore {
        DirStore {
            dir: dir.to_path_buf(),
            saving: None,
        }
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    /// Reads the last save; the directory is made if missing (under the rules every output
    /// directory follows). A save that was killed left its marker: it is cleared and said.
    pub fn load(&self) -> Result<Loaded> {
        let what = || format!("cannot use {} for cache mounts", self.dir.display());
        let dir = outputs::tree::layout_dir(&self.dir).with_context(what)?;
        self.refuse_foreign(&dir)?;
        let blobs = outputs::tree::layout_dir(&self.blobs()).with_context(what)?;
        let mut note = None;
        let interrupted = sweep(&dir, SAVING) + sweep(&dir, ".index.json.bkrun-");
        let leftovers = sweep(&blobs, ".");
        if interrupted > 0 {
            note = Some(format!(
                "the last save of cache mounts to {} was interrupted (removed {} unfinished file{}); restoring the save before it",
                self.dir.display(),
                interrupted + leftovers,
                if interrupted + leftovers == 1 { "" } else { "s" }
            ));
        }
        let loaded = |layers, note| Loaded {
            layers,
            blobs: Some(blobs.clone()),
            note,
        };
        let Some(manifest) = ours(&dir)? else {
            return Ok(loaded(Vec::new(), note));
        };
        match read_manifest(&manifest, &blobs).and_then(|m| layers_of(&m)) {
            Ok(layers) => {
                let layers = layers
                    .into_iter()
                    .filter(|l| blobs.join(l.hex()).is_file())
                    .collect();
                Ok(loaded(layers, note))
            }
            // Our own save, damaged (a disk that lost blobs): the next save replaces it.
            Err(e) => Ok(loaded(
                Vec::new(),
                Some(format!(
                    "the saved cache mounts in {} cannot be read ({e:#}); starting without them",
                    self.dir.display()
                )),
            )),
        }
    }

    /// A directory that holds anything but a save of bkrun's (someone's files, another OCI
    /// layout such as a local cache export) is not written into: a save would replace its
    /// index.json and remove blobs it does not list.
    fn refuse_foreign(&self, dir: &Path) -> Result<()> {
        let mine = |n: &str| {
            matches!(n, "index.json" | "oci-layout" | "blobs")
                || n.starts_with(SAVING)
                || n.starts_with(".index.json.bkrun-")
                || n.starts_with(".oci-layout.bkrun-")
        };
        let entries = std::fs::read_dir(dir)?;
        let other: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !mine(n))
            .collect();
        let foreign_index = dir.join("index.json").exists() && ours(dir).is_err();
        if !other.is_empty() || foreign_index {
            let why = match other.first() {
                Some(n) => format!("it holds other files ({n})"),
                None => "its index.json is not one bkrun wrote".to_string(),
            };
            bail!(
                "--cache-mounts {} is not a directory of saved cache mounts: {why}; give a directory of its own (it is made if missing)",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Marks the save as running (the next run sees it if this one is killed).
    pub fn begin(&mut self) -> Result<()> {
        let dir = outputs::tree::layout_dir(&self.dir)?;
        self.saving = Some(outputs::temps::marker(&dir, SAVING)?);
        Ok(())
    }

    /// Ends a save that changed nothing: the last save stands, and the marker goes.
    pub fn abandon(&mut self) {
        self.saving = None;
    }

    /// Puts `new` layer files in, then the manifest listing `layers`, then index.json; then
    /// removes blobs nothing lists any more.
    pub fn commit(&mut self, layers: &[Layer], new: &BTreeMap<String, PathBuf>) -> Result<()> {
        let blobs = outputs::tree::layout_dir(&self.blobs())?;
        for (digest, path) in new {
            let hex = digest.trim_start_matches("sha256:");
            put_file(&blobs.join(hex), &mut File::open(path)?)?;
        }
        let manifest = serde_json::to_vec(&manifest_of(layers))?;
        let (mdigest, msize) = (
            format!("sha256:{:x}", Sha256::digest(&manifest)),
            manifest.len() as u64,
        );
        put_file(&blobs.join(&mdigest[7..]), &mut manifest.as_slice())?;
        let empty = empty_descriptor().digest;
        put_file(&blobs.join(&empty[7..]), &mut &EMPTY_BLOB[..])?;
        let dir = outputs::tree::layout_dir(&self.dir)?;
        put_file(
            &dir.join("oci-layout"),
            &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
        )?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "artifactType": ARTIFACT_TYPE,
                "digest": mdigest,
                "size": msize,
                "annotations": {"org.opencontainers.image.ref.name": REF_NAME},
            }],
        });
        put_file(
            &dir.join("index.json"),
            &mut serde_json::to_vec(&index)?.as_slice(),
        )?;
        let mut keep: Vec<String> = layers.iter().map(|l| l.hex().to_string()).collect();
        keep.push(mdigest[7..].to_string());
        keep.push(empty[7..].to_string());
        remove_unlisted(&blobs, &keep);
        self.saving = None;
        Ok(())
    }
}

/// A registry: the save is an artifact at a reference used exactly as given.
pub struct RegistryStore {
    reference: String,
    client: registry::Client,
    /// Where the pulled layers are (and whence unchanged ones are pushed again).
    pulled: PathBuf,
    _pulled: outputs::Temp,
}

impl RegistryStore {
    pub fn new(reference: &str, auth: &crate::request::registry::RegistryAuth) -> Result<Self> {
        let (pulled, temp) = outputs::temps::private_dir("bkrun-cachemounts-pulled-")
            .context("cannot make a temp dir for the pulled cache mounts (check TMPDIR)")?;
        Ok(RegistryStore {
            reference: reference.to_string(),
            client: registry::Client::new(auth)?,
            pulled,
            _pulled: temp,
        })
    }

    /// Pulls the last save (nothing there yet is not an error) and its layers.
    pub async fn load(&self) -> Result<Loaded> {
        let what = || format!("cannot pull the saved cache mounts from {}", self.reference);
        let blobs = Some(self.pulled.as_path().to_path_buf());
        let Some((manifest, _)) = self
            .client
            .pull_manifest(&self.reference)
            .await
            .with_context(what)?
        else {
            return Ok(Loaded {
                blobs,
                ..Default::default()
            });
        };
        let layers = layers_of(&manifest).with_context(what)?;
        for l in &layers {
            let file = File::create(self.pulled.as_path().join(l.hex())).with_context(what)?;
            self.client
                .fetch_blob(&self.reference, &descriptor_of(l), &file)
                .await
                .with_context(what)?;
        }
        Ok(Loaded {
            layers,
            blobs,
            note: None,
        })
    }

    /// Pushes the save listing `layers`: the `new` files, and the pulled ones for the rest
    /// (already in the registry: only checked). The tag moves last, when the manifest goes.
    pub async fn commit(&self, layers: &[Layer], new: &BTreeMap<String, PathBuf>) -> Result<()> {
        let artifact = registry::Artifact {
            artifact_type: ARTIFACT_TYPE.into(),
            annotations: BTreeMap::new(),
            layers: layers
                .iter()
                .map(|l| {
                    let d = descriptor_of(l);
                    registry::Layer {
                        path: new
                            .get(&l.digest)
                            .cloned()
                            .unwrap_or_else(|| self.pulled.as_path().join(l.hex())),
                        media_type: d.media_type,
                        digest: d.digest,
                        size: d.size,
                        annotations: d.annotations,
                    }
                })
                .collect(),
        };
        self.client
            .push_artifact(&self.reference, &artifact)
            .await
            .with_context(|| format!("cannot push the cache mounts to {}", self.reference))?;
        Ok(())
    }
}

/// The descriptor of our save in the layout's index.json; None when there is no index.json.
/// An index of something else is an error.
fn ours(dir: &Path) -> Result<Option<Descriptor>> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let bytes = match std::fs::read(dir.join("index.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let index: Index = serde_json::from_slice(&bytes)?;
    let m = index
        .manifests
        .into_iter()
        .find(|m| {
            m.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
                && m.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(REF_NAME)
        })
        .ok_or_else(|| anyhow!("its index.json lists no {REF_NAME} manifest"))?;
    Ok(Some(m))
}

/// The manifest `m` names, checked against its digest.
fn read_manifest(m: &Descriptor, blobs: &Path) -> Result<Manifest> {
    let hex = m
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("bad manifest digest {}", m.digest))?;
    let bytes = std::fs::read(blobs.join(hex))?;
    if format!("sha256:{:x}", Sha256::digest(&bytes)) != m.digest {
        bail!("the manifest blob {hex} does not match its digest");
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Writes a whole file through the one writer (beside it, renamed over it when complete).
fn put_file(dest: &Path, from: &mut dyn Read) -> Result<()> {
    let what = || format!("cannot write {}", dest.display());
    let FileTarget::Replace(beside) = outputs::file_target(dest).with_context(what)? else {
        bail!(
            "cannot write {}: it is a device or FIFO, not a file",
            dest.display()
        );
    };
    let (mut file, new) = beside.create().with_context(what)?;
    io::copy(from, &mut file).with_context(what)?;
    file.flush().with_context(what)?;
    file.sync_all().with_context(what)?;
    new.commit().with_context(what)
}

/// Removes abandoned temps named PREFIX… in `dir`; how many.
fn sweep(dir: &Path, prefix: &str) -> usize {
    match crate::safefs::Dir::open(dir) {
        Ok(d) => outputs::temps::sweep_abandoned(&d, prefix),
        Err(_) => 0,
    }
}

/// Removes the blobs in `dir` (64-hex names only) not in `keep`.
fn remove_unlisted(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if blob && !keep.contains(&name) {
            // unlink(2) removes a link itself, never what it points to.
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(key: &str, path: &Path) -> Layer {
        let (digest, size) = digest_file(path).unwrap();
        Layer {
            digest,
            size,
            key: key.into(),
            id: format!("/{key}"),
            target: "/root/.cache".into(),
            fingerprint: "f".into(),
            bytes: 9,
        }
    }

    #[test]
    fn a_save_is_read_back_and_an_old_blob_goes() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("cache");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::write(&a, b"layer a").unwrap();
        std::fs::write(&b, b"layer b").unwrap();
        let mut s = DirStore::new(&dest);
        assert!(s.load().unwrap().layers.is_empty());
        s.begin().unwrap();
        let la = layer("a", &a);
        s.commit(
            std::slice::from_ref(&la),
            &BTreeMap::from([(la.digest.clone(), a.clone())]),
        )
        .unwrap();
        let loaded = DirStore::new(&dest).load().unwrap();
        assert_eq!(loaded.layers, std::slice::from_ref(&la));
        assert!(loaded.note.is_none());
        let lb = layer("b", &b);
        let mut s = DirStore::new(&dest);
        s.begin().unwrap();
        s.commit(
            std::slice::from_ref(&lb),
            &BTreeMap::from([(lb.digest.clone(), b.clone())]),
        )
        .unwrap();
        assert!(!dest.join("blobs/sha256").join(la.hex()).exists());
        assert_eq!(DirStore::new(&dest).load().unwrap().layers, [lb]);
    }

    #[test]
    fn a_directory_of_other_things_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("main.go"), b"package main").unwrap();
        let e = DirStore::new(&src).load().unwrap_err().to_string();
        assert!(e.contains("it holds other files (main.go)"), "{e}");
        // A local cache export's layout: its index.json must not be replaced.
        let layout = t.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:00","size":1}]}"#;
        std::fs::write(layout.join("index.json"), index).unwrap();
        let e = DirStore::new(&layout).load().unwrap_err().to_string();
        assert!(e.contains("not one bkrun wrote"), "{e}");
        assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index);
        assert!(!layout.join("blobs").exists());
    }

    #[test]
    fn a_killed_save_is_said_and_the_previous_save_stays() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("cache");
        let a = t.path().join("a");
        std::fs::write(&a, b"layer a").unwrap();
        let la = layer("a", &a);
        let mut s = DirStore::new(&dest);
        s.load().unwrap();
        s.begin().unwrap();
        s.commit(
            std::slice::from_ref(&la),
            &BTreeMap::from([(la.digest.clone(), a.clone())]),
        )
        .unwrap();
        // A second save killed after its marker: the marker stays behind, unlocked.
        std::fs::write(dest.join(format!("{SAVING}x1y2z3")), b"").unwrap();
        std::thread::sleep(outputs::temps::ABANDONED_AFTER);
        let loaded = DirStore::new(&dest).load().unwrap();
        assert_eq!(loaded.layers, [la]);
        assert!(loaded.note.unwrap().contains("was interrupted"));
        assert!(DirStore::new(&dest).load().unwrap().note.is_none());
    }
}
