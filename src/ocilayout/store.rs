//! The blob store of one image-layout directory: committed blobs under `blobs/`, and resumable writes (ingests) named by the writer's ref.
//!
//! The daemon writes a blob as: open an ingest for a ref, write at the
//! current offset, commit with the expected size and digest. A commit
//! verifies both and renames the ingest into `blobs/<alg>/<hex>`, so a
//! blob under `blobs/` is always whole. Ingests a build left unfinished
//! are removed by [`LocalStore::close`].

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::Digest as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("content {0} not found")]
    NotFound(String),
    #[error("content {0} already exists")]
    AlreadyExists(String),
    #[error("ref {0} is being written by another writer")]
    Locked(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Progress of an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    pub offset: u64,
    /// The size the writer announced; 0 when unknown.
    pub total: u64,
    /// The digest the writer announced, if any.
    pub expected: String,
    pub started: SystemTime,
    pub updated: SystemTime,
}

struct Ingest {
    path: PathBuf,
    status: Mutex<IngestStatus>,
    /// Held by the one writer of this ref; the data is only touched through it.
    data: Arc<tokio::sync::Mutex<IngestData>>,
}

struct IngestData {
    file: tokio::fs::File,
    hasher: sha2::Sha256,
}

/// One image-layout directory's blobs and the ingests of this session.
pub struct LocalStore {
    root: PathBuf,
    ingests: Mutex<HashMap<String, Arc<Ingest>>>,
    /// Whether we made `ingest/`: then we also remove it when it is empty again.
    made_ingest_dir: Mutex<bool>,
}

impl LocalStore {
    /// A store over `root`, which must be a directory.
    pub fn new(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_path_buf(),
            ingests: Mutex::new(HashMap::new()),
            made_ingest_dir: Mutex::new(false),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn info(&self, digest: &Digest) -> Result<BlobInfo, StoreError> {
        let path = digest.blob_path(&self.root);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(blob_info(digest.clone(), &m)),
            Ok(_) => Err(StoreError::NotFound(digest.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(digest.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The blob opened for reading, with its size.
    pub async fn open(&self, digest: &Digest) -> Result<(tokio::fs::File, u64), StoreError> {
        let info = self.info(digest)?;
        let file = tokio::fs::File::open(digest.blob_path(&self.root)).await?;
        Ok((file, info.size))
    }

    pub fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match fs::remove_file(digest.blob_path(&self.root)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(digest.to_string()))
            }
            r => Ok(r?),
        }
    }

    /// Every committed blob. Files under `blobs/` whose names are not digests are not blobs.
    pub fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let mut out = Vec::new();
        let algorithms = match fs::read_dir(self.root.join("blobs")) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for alg in algorithms {
            let alg = alg?;
            if !alg.file_type()?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(alg.path())? {
                let blob = blob?;
                let name = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    blob.file_name().to_string_lossy()
                );
                let Some(digest) = Digest::parse(&name) else {
                    continue;
                };
                let meta = blob.metadata()?;
                if meta.is_file() {
                    out.push(blob_info(digest, &meta));
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Removes every blob not in `keep`; returns how many and their bytes.
    /// Only files named by a digest under `blobs/<alg>/` are ever removed.
    pub fn remove_unreferenced(&self, keep: &BTreeSet<Digest>) -> Result<(usize, u64), StoreError> {
        let mut removed = (0, 0);
        for blob in self.list()? {
            if !keep.contains(&blob.digest) {
                fs::remove_file(blob.digest.blob_path(&self.root))?;
                removed.0 += 1;
                removed.1 += blob.size;
            }
        }
        Ok(removed)
    }

    pub fn status(&self, reference: &str) -> Result<IngestStatus, StoreError> {
        let ingests = self.ingests.lock().expect("ingest map lock");
        let ingest = ingests
            .get(reference)
            .ok_or_else(|| StoreError::NotFound(format!("ingest {reference}")))?;
        let status = ingest.status.lock().expect("ingest status lock").clone();
        Ok(status)
    }

    pub fn statuses(&self) -> Vec<IngestStatus> {
        let ingests = self.ingests.lock().expect("ingest map lock");
        let mut out: Vec<IngestStatus> = ingests
            .values()
            .map(|i| i.status.lock().expect("ingest status lock").clone())
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        out
    }

    /// Drops the ingest of `reference` and its data.
    pub fn abort(&self, reference: &str) -> Result<(), StoreError> {
        let ingest = self
            .ingests
            .lock()
            .expect("ingest map lock")
            .remove(reference)
            .ok_or_else(|| StoreError::NotFound(format!("ingest {reference}")))?;
        remove_if_present(&ingest.path)?;
        Ok(())
    }

    /// The writer of `reference`: resumes that ingest if one exists, else starts one.
    /// A second concurrent writer of the same ref is refused with [`StoreError::Locked`].
    pub async fn writer(
        self: &Arc<Self>,
        reference: &str,
        total: u64,
        expected: &str,
    ) -> Result<Writer, StoreError> {
        let ingest = self.ingest(reference).await?;
        let data = ingest
            .data
            .clone()
            .try_lock_owned()
            .map_err(|_| StoreError::Locked(reference.to_string()))?;
        {
            let mut st = ingest.status.lock().expect("ingest status lock");
            if total > 0 {
                st.total = total;
            }
            if !expected.is_empty() {
                st.expected = expected.to_string();
            }
        }
        Ok(Writer {
            store: self.clone(),
            ingest,
            data,
        })
    }

    async fn ingest(&self, reference: &str) -> Result<Arc<Ingest>, StoreError> {
        if let Some(i) = self.ingests.lock().expect("ingest map lock").get(reference) {
            return Ok(i.clone());
        }
        let dir = self.root.join("ingest");
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            *self.made_ingest_dir.lock().expect("flag lock") = true;
        }
        // The ref is the daemon's text; only its hash names a file.
        let path = dir.join(
            Digest::sha256(reference.as_bytes())
                .to_string()
                .replace(':', "-"),
        );
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await?;
        let now = SystemTime::now();
        let ingest = Arc::new(Ingest {
            path,
            status: Mutex::new(IngestStatus {
                reference: reference.to_string(),
                offset: 0,
                total: 0,
                expected: String::new(),
                started: now,
                updated: now,
            }),
            data: Arc::new(tokio::sync::Mutex::new(IngestData {
                file,
                hasher: sha2::Sha256::new(),
            })),
        });
        let mut ingests = self.ingests.lock().expect("ingest map lock");
        // Two first writers raced: the one already in the map wins, ours is dropped.
        let kept = ingests
            .entry(reference.to_string())
            .or_insert_with(|| ingest.clone())
            .clone();
        if !Arc::ptr_eq(&kept, &ingest) {
            let _ = fs::remove_file(&ingest.path);
        }
        Ok(kept)
    }

    /// Removes what unfinished writes left. Committed blobs stay.
    pub fn close(&self) {
        let ingests: Vec<Arc<Ingest>> = self
            .ingests
            .lock()
            .expect("ingest map lock")
            .drain()
            .map(|(_, i)| i)
            .collect();
        for i in ingests {
            let _ = fs::remove_file(&i.path);
        }
        if *self.made_ingest_dir.lock().expect("flag lock") {
            // Fails harmlessly when another writer still uses it.
            let _ = fs::remove_dir(self.root.join("ingest"));
        }
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The one writer of an ingest; dropping it leaves the ingest resumable.
pub struct Writer {
    store: Arc<LocalStore>,
    ingest: Arc<Ingest>,
    data: tokio::sync::OwnedMutexGuard<IngestData>,
}

impl Writer {
    pub fn status(&self) -> IngestStatus {
        self.ingest
            .status
            .lock()
            .expect("ingest status lock")
            .clone()
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(self.data.hasher.clone().finalize().as_slice())
    }

    pub fn set_total(&self, total: u64) {
        self.ingest.status.lock().expect("ingest status lock").total = total;
    }

    /// Starts the ingest over: the writer resends from offset 0.
    pub async fn truncate(&mut self) -> Result<(), StoreError> {
        self.data.file.set_len(0).await?;
        self.data.file.seek(io::SeekFrom::Start(0)).await?;
        self.data.hasher = sha2::Sha256::new();
        self.update(|st| st.offset = 0);
        Ok(())
    }

    /// Appends at the current offset.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.data.file.write_all(bytes).await?;
        self.data.hasher.update(bytes);
        self.update(|st| st.offset += bytes.len() as u64);
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut IngestStatus)) {
        let mut st = self.ingest.status.lock().expect("ingest status lock");
        f(&mut st);
        st.updated = SystemTime::now();
    }

    /// Verifies size and digest and moves the data into `blobs/`. `size` 0 means unchecked.
    pub async fn commit(
        mut self,
        size: u64,
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        self.data.file.flush().await?;
        self.data.file.sync_all().await?;
        let written = self.status().offset;
        if size > 0 && size != written {
            return Err(StoreError::FailedPrecondition(format!(
                "unexpected commit size {written}, expected {size}"
            )));
        }
        let digest = self.digest();
        if let Some(e) = expected {
            if e.algorithm() != digest.algorithm() {
                return Err(StoreError::FailedPrecondition(format!(
                    "cannot verify {e}: bkrun's store hashes with sha256"
                )));
            }
            if *e != digest {
                return Err(StoreError::FailedPrecondition(format!(
                    "unexpected commit digest {digest}, expected {e}"
                )));
            }
        }
        let target = digest.blob_path(&self.store.root);
        let reference = self.status().reference;
        let forget = |store: &LocalStore| {
            store
                .ingests
                .lock()
                .expect("ingest map lock")
                .remove(&reference);
        };
        fs::create_dir_all(target.parent().expect("blob paths have a parent"))?;
        if target.exists() {
            remove_if_present(&self.ingest.path)?;
            forget(&self.store);
            return Err(StoreError::AlreadyExists(digest.to_string()));
        }
        fs::rename(&self.ingest.path, &target)?;
        forget(&self.store);
        Ok(digest)
    }
}

fn blob_info(digest: Digest, meta: &fs::Metadata) -> BlobInfo {
    let created = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    BlobInfo {
        digest,
        size: meta.len(),
        created,
        updated: meta.accessed().unwrap_or(created),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_is_committed_only_when_size_and_digest_match() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(d.path()));
        let want = Digest::sha256(b"hello world");

        let mut w = store.writer("layer-1", 11, "").await.unwrap();
        w.write(b"hello ").await.unwrap();
        // A second writer of the same ref waits its turn.
        assert!(matches!(
            store.writer("layer-1", 0, "").await,
            Err(StoreError::Locked(_))
        ));
        assert_eq!(store.status("layer-1").unwrap().offset, 6);
        drop(w);
        // Resumed where it stopped.
        let mut w = store.writer("layer-1", 0, "").await.unwrap();
        assert_eq!(w.status().offset, 6);
        w.write(b"world").await.unwrap();
        assert_eq!(w.digest(), want);
        assert_eq!(w.commit(11, Some(&want)).await.unwrap(), want);
        assert_eq!(store.info(&want).unwrap().size, 11);
        assert_eq!(
            std::fs::read(want.blob_path(d.path())).unwrap(),
            b"hello world"
        );
        assert!(store.statuses().is_empty());

        let mut w = store.writer("bad", 0, "").await.unwrap();
        w.write(b"oops").await.unwrap();
        assert!(matches!(
            w.commit(0, Some(&want)).await,
            Err(StoreError::FailedPrecondition(m)) if m.contains("unexpected commit digest")
        ));
        let w = store.writer("bad", 0, "").await.unwrap();
        assert!(matches!(
            w.commit(5, None).await,
            Err(StoreError::FailedPrecondition(m)) if m.contains("size 4, expected 5")
        ));
        let mut w = store.writer("again", 0, "").await.unwrap();
        w.write(b"hello world").await.unwrap();
        assert!(matches!(
            w.commit(0, None).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let mut w = store.writer("restart", 0, "").await.unwrap();
        w.write(b"junk").await.unwrap();
        w.truncate().await.unwrap();
        w.write(b"x").await.unwrap();
        assert_eq!(w.digest(), Digest::sha256(b"x"));
        drop(w);

        store.close();
        assert!(
            !d.path().join("ingest").exists(),
            "unfinished ingests are removed"
        );
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn unreferenced_blobs_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalStore::new(d.path());
        let keep = Digest::sha256(b"keep");
        let drop = Digest::sha256(b"drop");
        for (dg, body) in [(&keep, b"keep"), (&drop, b"drop")] {
            std::fs::create_dir_all(dg.blob_path(d.path()).parent().unwrap()).unwrap();
            std::fs::write(dg.blob_path(d.path()), body).unwrap();
        }
        std::fs::write(d.path().join("blobs/sha256/notes.txt"), "mine").unwrap();
        let removed = store
            .remove_unreferenced(&BTreeSet::from([keep.clone()]))
            .unwrap();
        assert_eq!(removed, (1, 4));
        assert!(keep.blob_path(d.path()).exists());
        assert!(!drop.blob_path(d.path()).exists());
        assert!(d.path().join("blobs/sha256/notes.txt").exists());
    }
}
