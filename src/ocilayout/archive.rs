//! An OCI image layout an earlier build wrote — a tar archive (`--output type=oci,dest=x.tar`) or a directory (`tar=false`) — opened by descriptor and checked whole (index.json, every manifest and blob present, sizes and sha256 digests) before anything is sent; blobs are then read from it in place, never extracted.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::gojson::{Descriptor, IndexDoc};
use super::Digest;
use crate::safefs::resolve::{resolve, Resolved};
use crate::safefs::{Dir, Kind};

/// The most of index.json or of one manifest that is read: the distribution spec's floor for
/// manifests, which no registry refuses.
const MAX_DOC: u64 = 4 << 20;
/// How deep indexes may nest (an index of indexes of manifests is two).
const MAX_DEPTH: usize = 4;
/// The annotation an OCI layout tags its images with, and containerd's full image name.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const IMAGE_NAME: &str = "io.containerd.image.name";

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Where the layout's files are.
enum Store {
    /// A tar archive, and where each member's data starts and how long it is.
    Tar {
        file: File,
        members: HashMap<String, (u64, u64)>,
    },
    Dir(Dir),
}

/// An image layout, opened.
pub struct Layout {
    store: Store,
    /// The path as given, for messages.
    shown: PathBuf,
}

/// A manifest or index to push, byte for byte as the layout holds it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// A config or layer blob to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// One image of a layout, checked: its manifests in the order a registry must get them
/// (every child before the index that names it, the root last) and the blobs they name.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifests: Vec<Manifest>,
    pub blobs: Vec<Blob>,
    /// The config digest when the root is a single image manifest (docker's image ID).
    pub config: Option<String>,
}

impl Image {
    /// The manifest or index the references will name.
    pub fn root(&self) -> &Manifest {
        self.manifests
            .last()
            .expect("an image has its root manifest")
    }

    /// Bytes in blobs (configs and layers).
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// What a manifest or index says, as far as pushing goes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Layout {
    /// Opens `path` (a directory or a tar archive) by descriptor, the way an output is walked:
    /// a symlink is followed only where the kernel's protected_symlinks rule would.
    pub fn open(path: &Path) -> Result<Layout> {
        let shown = path.to_path_buf();
        let euid = nix::unistd::geteuid().as_raw();
        let place = match resolve(path, euid, true) {
            Ok(Resolved::At(p)) => p,
            Ok(Resolved::Fd(_)) => bail!(
                "{}: bkrun push reads an archive file or a layout directory, not a stream: save it to a file first",
                shown.display()
            ),
            Err(e) => bail!("cannot open {}: {e}", shown.display()),
        };
        let (Some(name), Some(node)) = (&place.name, place.node) else {
            bail!(
                "{}: no such file or directory: give the archive (--output type=oci,dest=FILE) or layout directory (tar=false) of an earlier build",
                shown.display()
            );
        };
        let store = match node.kind {
            Kind::Dir => Store::Dir(
                place
                    .dir
                    .sub(name)
                    .with_context(|| format!("cannot open {}", shown.display()))?,
            ),
            Kind::File => {
                let file = place
                    .dir
                    .open_at(name, libc::O_RDONLY, 0)
                    .with_context(|| format!("cannot open {}", shown.display()))?;
                let members = tar_members(&file, &shown)?;
                Store::Tar { file, members }
            }
            _ => bail!(
                "{} is neither a file nor a directory: give an OCI archive or layout directory",
                shown.display()
            ),
        };
        Ok(Layout { store, shown })
    }

    /// The image to push: the one index.json names, or the one `choice` (its tag, full image
    /// name or digest) picks; checked whole.
    pub fn image(&self, choice: Option<&str>) -> Result<Image> {
        let index = self.read_doc("index.json")?.with_context(|| {
            format!(
                "{} has no index.json, so it is no OCI image layout: give the archive of --output type=oci,dest=FILE (or tar=false's directory)",
                self.shown.display()
            )
        })?;
        let doc: IndexDoc = serde_json::from_slice(&index)
            .with_context(|| format!("{}: index.json is not an OCI index", self.shown.display()))?;
        let root = pick(&doc.manifests, choice).with_context(|| {
            format!(
                "{}: {}",
                self.shown.display(),
                pick_problem(&doc.manifests, choice)
            )
        })?;
        let mut img = Image {
            manifests: Vec::new(),
            blobs: Vec::new(),
            config: None,
        };
        let mut seen = BTreeSet::new();
        self.visit(root, &mut img, &mut seen, 0)?;
        if !is_index(root, None) {
            img.config = img.blobs.first().map(|b| b.digest.clone());
        }
        Ok(img)
    }

    /// Checks the manifest or index `d` and everything below it, adding them to `img` with
    /// children first.
    fn visit(
        &self,
        d: &Descriptor,
        img: &mut Image,
        seen: &mut BTreeSet<String>,
        depth: usize,
    ) -> Result<()> {
        if !seen.insert(d.digest.clone()) {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            bail!("{}: indexes nest deeper than {MAX_DEPTH} levels at {}: bkrun does not push such layouts", self.shown.display(), d.digest);
        }
        let bytes = self.read_blob_doc(d)?;
        let node: Node = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: the manifest {} is not JSON",
                self.shown.display(),
                d.digest
            )
        })?;
        let media_type = Some(&d.media_type)
            .filter(|m| !m.is_empty())
            .unwrap_or(&node.media_type)
            .clone();
        if media_type.is_empty() {
            bail!("{}: the manifest {} names no media type, so a registry could not serve it: export the image again", self.shown.display(), d.digest);
        }
        if is_index(d, Some(&node)) {
            for child in &node.manifests {
                self.visit(child, img, seen, depth + 1)?;
            }
        } else {
            let config = node.config.as_ref().with_context(|| {
                format!(
                    "{}: the manifest {} has no config",
                    self.shown.display(),
                    d.digest
                )
            })?;
            for b in std::iter::once(config).chain(&node.layers) {
                if !img.blobs.iter().any(|x| x.digest == b.digest) {
                    self.check_blob(b, &d.digest)?;
                    img.blobs.push(Blob {
                        digest: b.digest.clone(),
                        size: b.size as u64,
                    });
                }
            }
        }
        img.manifests.push(Manifest {
            media_type,
            digest: d.digest.clone(),
            bytes,
        });
        Ok(())
    }

    /// A manifest's bytes, checked against its descriptor.
    fn read_blob_doc(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let name = self.blob_name(&d.digest, "a manifest")?;
        if d.size < 0 || d.size as u64 > MAX_DOC {
            bail!(
                "{}: the manifest {} is {} bytes, more than a registry takes ({MAX_DOC})",
                self.shown.display(),
                d.digest,
                d.size
            );
        }
        let bytes = self
            .read_doc(&name)?
            .with_context(|| self.missing(&d.digest, "a manifest"))?;
        let got = Digest::sha256(&bytes).to_string();
        if bytes.len() as u64 != d.size as u64 || got != d.digest {
            bail!("{}: the manifest {} does not match its descriptor (it is {got}, {} bytes, not {} bytes): the layout is damaged; export the image again", self.shown.display(), d.digest, bytes.len(), d.size);
        }
        Ok(bytes)
    }

    /// Checks that the config or layer `d` of manifest `of` is there, of its size and digest.
    fn check_blob(&self, d: &Descriptor, of: &str) -> Result<()> {
        let what = format!("a blob of manifest {of}");
        self.blob_name(&d.digest, &what)?;
        let (mut f, size) = self
            .open_blob(&d.digest)?
            .with_context(|| self.missing(&d.digest, &what))?;
        if size != d.size as u64 {
            bail!("{}: the blob {} is {size} bytes, not the {} its manifest says: the layout is damaged; export the image again", self.shown.display(), d.digest, d.size);
        }
        let got = sha256_of(&mut f, size).with_context(|| {
            format!(
                "{}: cannot read the blob {}",
                self.shown.display(),
                d.digest
            )
        })?;
        if got != d.digest {
            bail!("{}: the blob {} holds other bytes (its sha256 is {got}): the layout is damaged; export the image again", self.shown.display(), d.digest);
        }
        Ok(())
    }

    fn missing(&self, digest: &str, what: &str) -> String {
        format!(
            "{}: {what} ({digest}) is missing: the layout is incomplete; export the image again",
            self.shown.display()
        )
    }

    /// `blobs/sha256/HEX` for a sha256 digest; other algorithms are refused (the registry
    /// client checks sha256 only).
    fn blob_name(&self, digest: &str, what: &str) -> Result<String> {
        match Digest::parse(digest) {
            Some(d) if d.algorithm() == "sha256" => Ok(format!("blobs/{}", d.to_string().replacen(':', "/", 1))),
            _ => bail!("{}: {what} has the digest {digest:?}, not sha256:<64 hex digits>: bkrun pushes sha256 layouts only", self.shown.display()),
        }
    }

    /// A descriptor open on blob `digest`, positioned at its first byte, and its size; None when
    /// the layout lacks it. Each call opens its own descriptor, so uploads never share an offset.
    pub fn open_blob(&self, digest: &str) -> Result<Option<(File, u64)>> {
        let name = self.blob_name(digest, "a blob")?;
        self.open_member(&name)
            .with_context(|| format!("{}: cannot read {name}", self.shown.display()))
    }

    fn open_member(&self, name: &str) -> io::Result<Option<(File, u64)>> {
        match &self.store {
            Store::Tar { file, members } => {
                let Some(&(offset, size)) = members.get(name) else {
                    return Ok(None);
                };
                let mut f = reopen(file)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Some((f, size)))
            }
            Store::Dir(root) => {
                let mut dir = root.try_clone()?;
                let mut parts = name.split('/').peekable();
                while let Some(part) = parts.next() {
                    if parts.peek().is_none() {
                        return open_file(&dir, OsStr::new(part));
                    }
                    dir = match dir.sub(OsStr::new(part)) {
                        Ok(d) => d,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                }
                Ok(None)
            }
        }
    }

    /// A small file of the layout (index.json, a manifest), read whole; None when absent.
    fn read_doc(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some((f, size)) = self
            .open_member(name)
            .with_context(|| format!("{}: cannot read {name}", self.shown.display()))?
        else {
            return Ok(None);
        };
        if size > MAX_DOC {
            bail!(
                "{}: {name} is {size} bytes, more than bkrun reads ({MAX_DOC})",
                self.shown.display()
            );
        }
        let mut out = Vec::with_capacity(size as usize);
        f.take(size).read_to_end(&mut out)?;
        Ok(Some(out))
    }
}

/// A regular file `name` in `dir`, never through a symlink, with its size.
fn open_file(dir: &Dir, name: &OsStr) -> io::Result<Option<(File, u64)>> {
    let f = match dir.open_at(name, libc::O_RDONLY, 0) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = crate::safefs::fstat(std::os::fd::AsFd::as_fd(&f))?;
    if st.kind != Kind::File {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(Some((f, st.size)))
}

/// A descriptor of the same open archive with an offset of its own (through /proc/self/fd,
/// the very inode judged at open, not its path again).
fn reopen(f: &File) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).or_else(|_| f.try_clone())
}

/// The members of a tar archive that an image layout uses (index.json and blobs), by name,
/// with where their data starts and their size; nothing is extracted.
fn tar_members(file: &File, shown: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let mut magic = [0u8; 2];
    let n = (&*file).read(&mut magic).unwrap_or(0);
    if n == 2 && magic == [0x1f, 0x8b] {
        bail!("{} is gzip-compressed: gunzip it first (bkrun push reads the plain tar of --output type=oci)", shown.display());
    }
    (&*file).seek(SeekFrom::Start(0))?;
    // The tar reader's own words may quote the file's bytes (newlines and all): left out.
    let not_tar = |_: io::Error| {
        anyhow::anyhow!("{} is not a tar archive: give the archive of --output type=oci,dest=FILE or its layout directory", shown.display())
    };
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let entry = entry.map_err(not_tar)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let path = entry.path_bytes();
        let name = String::from_utf8_lossy(&path);
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        if name == "index.json" || name.starts_with("blobs/") {
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    Ok(members)
}

/// The `sha256:HEX` of the next `size` bytes of `f`.
fn sha256_of(f: &mut File, size: u64) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it ends early",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Digest::from_sha256(&h.finalize()).to_string())
}

fn is_index(d: &Descriptor, node: Option<&Node>) -> bool {
    INDEX_TYPES.contains(&d.media_type.as_str())
        || node.is_some_and(|n| {
            INDEX_TYPES.contains(&n.media_type.as_str())
                || (!n.manifests.is_empty() && n.config.is_none())
        })
}

/// The descriptor of index.json that `choice` names (by tag, full image name or digest), or
/// its only one.
fn pick<'a>(manifests: &'a [Descriptor], choice: Option<&str>) -> Option<&'a Descriptor> {
    let Some(c) = choice else {
        return match manifests {
            [only] => Some(only),
            _ => None,
        };
    };
    let names = |d: &Descriptor| {
        [REF_NAME, IMAGE_NAME]
            .into_iter()
            .filter_map(|k| d.annotations.get(k).cloned())
            .collect::<Vec<_>>()
    };
    let mut found = manifests.iter().filter(|d| {
        d.digest == c
            || names(d)
                .iter()
                .any(|n| n == c || n.rsplit_once(':').is_some_and(|(_, tag)| tag == c))
    });
    let first = found.next()?;
    // Two images answering to one name is no choice either.
    found.next().is_none().then_some(first)
}

/// Why `pick` found nothing, with the names to choose from.
fn pick_problem(manifests: &[Descriptor], choice: Option<&str>) -> String {
    let names: Vec<String> = manifests
        .iter()
        .map(|d| {
            d.annotations
                .get(REF_NAME)
                .cloned()
                .unwrap_or_else(|| d.digest.clone())
        })
        .collect();
    match (choice, manifests.len()) {
        (_, 0) => "index.json names no image: export the image again".into(),
        (None, n) => format!(
            "index.json names {n} images ({}): choose one with --image TAG|DIGEST",
            names.join(", ")
        ),
        (Some(c), _) => format!(
            "no one image of index.json is {c:?} (it has {}): give a tag or digest from that list with --image",
            names.join(", ")
        ),
    }
}
