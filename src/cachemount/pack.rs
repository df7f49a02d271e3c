//! The side of cache mounts that runs inside the build's container: `bkrun __cache-mounts seed`
//! unpacks saved mounts into the new daemon's empty cache mounts, `… save` packs the used ones
//! into tar+zstd layers unless unchanged or over the size cap. bkrun's own static binary is the
//! only program there (no base image is needed), so this is plain std, no runtime.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// argv[1] that makes bkrun this helper.
pub const ARG: &str = "__cache-mounts";

/// zstd level for saved mounts: build caches are written once per run and read once per pod, so
/// a fast level (3, zstd's default) beats a smaller file.
const LEVEL: i32 = 3;

/// Runs the helper with the arguments after ARG and exits with its status.
pub fn main(args: &[String]) -> ! {
    let result = match args.first().map(String::as_str) {
        Some("seed") => seed(&args[1..]),
        Some("save") => save(&args[1..]),
        _ => Err(io::Error::other(format!(
            "usage: bkrun {ARG} seed|save …; this is run by bkrun inside a build, not by hand"
        ))),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("bkrun {ARG}: {e}");
            std::process::exit(1)
        }
    }
}

/// `seed SEEDS MOUNTS I:SHA256…`: each saved layer SEEDS/<sha256> is checked against its digest
/// and unpacked into MOUNTS/<I>, unless that mount already holds files (a state dir that
/// outlived its run has newer contents than any save).
fn seed(args: &[String]) -> io::Result<()> {
    let [seeds, mounts, wanted @ ..] = args else {
        return Err(io::Error::other("seed needs SEEDS MOUNTS I:SHA256…"));
    };
    for w in wanted {
        let (i, hex) = w
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad seed argument {w}")))?;
        let dest = Path::new(mounts).join(i);
        if fs::read_dir(&dest)?.next().is_some() {
            println!("cache mount {i}: already holds files; kept them");
            continue;
        }
        let blob = Path::new(seeds).join(hex);
        verify(&blob, hex)?;
        let files = unpack(&blob, &dest)?;
        println!("cache mount {i}: restored {files} entries");
    }
    Ok(())
}

/// Whether `blob` has the sha256 `hex` (a swapped file in a shared directory is refused).
fn verify(blob: &Path, hex: &str) -> io::Result<()> {
    let mut h = Sha256::new();
    io::copy(&mut BufReader::new(File::open(blob)?), &mut h)?;
    let got = hex_of(&h.finalize());
    if got != hex {
        return Err(io::Error::other(format!(
            "saved layer {hex} has sha256 {got}: the save was changed or damaged; remove it"
        )));
    }
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks a tar+zstd layer into `dest`, keeping owners where the user namespace maps them.
fn unpack(blob: &Path, dest: &Path) -> io::Result<usize> {
    let open = |owners: bool| -> io::Result<usize> {
        let mut archive = tar::Archive::new(zstd::Decoder::new(File::open(blob)?)?);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_preserve_ownerships(owners);
        archive.set_overwrite(true);
        let mut n = 0;
        for entry in archive.entries()? {
            entry?.unpack_in(dest)?;
            n += 1;
        }
        Ok(n)
    };
    match open(true) {
        // An owner outside this namespace's map (a rootless daemon with a narrow range): the
        // files are kept, owned by the namespace's root, as tar does when not run as root.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => open(false),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(false),
        other => other,
    }
}

/// What `save` found in one mount, written as OUT/<I>.json for bkrun to read.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// "saved", "unchanged" or "too-big".
    pub status: String,
    pub fingerprint: String,
    /// Bytes of file data in the mount.
    pub bytes: u64,
    pub entries: u64,
}

/// `save MOUNTS OUT MAX I[:FINGERPRINT]…`: each MOUNTS/<I> is fingerprinted; one whose
/// fingerprint equals the restored one is reported unchanged, one over MAX bytes too big, and
/// any other is packed as OUT/<I>.tar.zst.
fn save(args: &[String]) -> io::Result<()> {
    let [mounts, out, max, wanted @ ..] = args else {
        return Err(io::Error::other(
            "save needs MOUNTS OUT MAX I[:FINGERPRINT]…",
        ));
    };
    let max: u64 = max
        .parse()
        .map_err(|_| io::Error::other(format!("bad size cap {max}")))?;
    for w in wanted {
        let (i, before) = w.split_once(':').unwrap_or((w, ""));
        let dir = Path::new(mounts).join(i);
        let tree = Tree::scan(&dir)?;
        let fingerprint = tree.fingerprint();
        let status = if fingerprint == before {
            "unchanged"
        } else if tree.bytes > max {
            "too-big"
        } else {
            pack(&dir, &tree, &Path::new(out).join(format!("{i}.tar.zst")))?;
            "saved"
        };
        let saved = Saved {
            status: status.into(),
            fingerprint,
            bytes: tree.bytes,
            entries: tree.entries.len() as u64,
        };
        let json = serde_json::to_vec(&saved).map_err(io::Error::other)?;
        fs::write(Path::new(out).join(format!("{i}.json")), json)?;
        println!("cache mount {i}: {status} ({} bytes)", tree.bytes);
    }
    Ok(())
}

/// A mount's entries, sorted, with what decides whether it changed.
pub struct Tree {
    entries: Vec<(PathBuf, fs::Metadata)>,
    bytes: u64,
}

impl Tree {
    /// Every entry below `root` (not `root` itself: its mode and owner are the RUN's flags),
    /// never following a link.
    pub fn scan(root: &Path) -> io::Result<Tree> {
        let mut entries = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut names: Vec<_> = fs::read_dir(root.join(&rel))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for name in names.into_iter().rev() {
                let rel = rel.join(name);
                let md = fs::symlink_metadata(root.join(&rel))?;
                if md.is_dir() {
                    stack.push(rel.clone());
                }
                entries.push((rel, md));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = entries
            .iter()
            .filter(|(_, m)| m.is_file())
            .map(|(_, m)| m.len())
            .sum();
        Ok(Tree { entries, bytes })
    }

    /// A digest of names, types, modes, owners, sizes and (for files) whole-second mtimes:
    /// what a tar layer keeps, so a mount restored from a layer has the layer's fingerprint.
    /// Directory mtimes are left out: unpacking a tree changes them.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (rel, md) in &self.entries {
            h.update(rel.as_os_str().as_encoded_bytes());
            let mtime = if md.is_dir() { 0 } else { md.mtime() };
            let line = format!(
                "\0{:o} {} {} {} {}\n",
                md.mode(),
                md.uid(),
                md.gid(),
                if md.is_file() { md.len() } else { 0 },
                mtime
            );
            h.update(line.as_bytes());
        }
        hex_of(&h.finalize())
    }
}

/// Writes the tree as a tar+zstd layer (paths relative, owners and modes kept, links as links).
fn pack(root: &Path, tree: &Tree, dest: &Path) -> io::Result<()> {
    let file = BufWriter::new(File::create(dest)?);
    let mut zst = zstd::Encoder::new(file, LEVEL)?;
    // Both cores: packing a large build cache is the longest part of a save.
    let _ = zst.multithread(2);
    let mut builder = tar::Builder::new(zst);
    builder.follow_symlinks(false);
    for (rel, md) in &tree.entries {
        let path = root.join(rel);
        if md.is_file() {
            let mut f = File::open(&path)?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata(md);
            header.set_size(md.len());
            builder.append_data(&mut header, rel, (&mut f).take(md.len()))?;
        } else if md.file_type().is_socket() {
            // A daemon's socket left in a cache dir means nothing in the next run.
            continue;
        } else {
            builder.append_path_with_name(&path, rel)?;
        }
    }
    let zst = builder.into_inner()?;
    let mut file = zst.finish()?;
    file.flush()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(dir: &Path) {
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), b"hello").unwrap();
        fs::write(dir.join("top"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("a/b/f", dir.join("link")).unwrap();
    }

    #[test]
    fn a_packed_tree_unpacks_to_the_same_fingerprint() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        tree_with(&src);
        let before = Tree::scan(&src).unwrap();
        let blob = t.path().join("layer");
        pack(&src, &before, &blob).unwrap();
        // Directory mtimes change on unpacking, file mtimes are kept to the second.
        std::thread::sleep(std::time::Duration::from_millis(20));
        unpack(&blob, &dst).unwrap();
        let after = Tree::scan(&dst).unwrap();
        assert_eq!(before.fingerprint(), after.fingerprint());
        assert_eq!(after.bytes, 100_005);
        assert_eq!(fs::read(dst.join("a/b/f")).unwrap(), b"hello");
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/b/f"));
    }

    #[test]
    fn a_changed_file_changes_the_fingerprint() {
        let t = tempfile::tempdir().unwrap();
        tree_with(t.path());
        let a = Tree::scan(t.path()).unwrap().fingerprint();
        fs::write(t.path().join("a/b/f"), b"hello, world").unwrap();
        assert_ne!(a, Tree::scan(t.path()).unwrap().fingerprint());
    }

    #[test]
    fn save_reports_unchanged_too_big_and_saved() {
        let t = tempfile::tempdir().unwrap();
        let (mounts, out) = (t.path().join("m"), t.path().join("o"));
        for i in ["0", "1", "2"] {
            fs::create_dir_all(mounts.join(i)).unwrap();
            tree_with(&mounts.join(i));
        }
        fs::create_dir(&out).unwrap();
        let fp0 = Tree::scan(&mounts.join("0")).unwrap().fingerprint();
        fs::write(mounts.join("2/big"), vec![1u8; 300_000]).unwrap();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        save(&s(&[
            mounts.to_str().unwrap(),
            out.to_str().unwrap(),
            "200000",
            &format!("0:{fp0}"),
            "1",
            "2",
        ]))
        .unwrap();
        let read = |i: &str| -> Saved {
            serde_json::from_slice(&fs::read(out.join(format!("{i}.json"))).unwrap()).unwrap()
        };
        assert_eq!(read("0").status, "unchanged");
        assert_eq!(read("1").status, "saved");
        assert_eq!(read("2").status, "too-big");
        assert!(out.join("1.tar.zst").exists());
        assert!(!out.join("2.tar.zst").exists());
    }

    #[test]
    fn seed_refuses_a_layer_whose_digest_differs_and_keeps_a_full_mount() {
        let t = tempfile::tempdir().unwrap();
        let (seeds, mounts) = (t.path().join("s"), t.path().join("m"));
        fs::create_dir_all(mounts.join("0")).unwrap();
        fs::create_dir_all(mounts.join("1")).unwrap();
        fs::create_dir(&seeds).unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree_with(&src);
        let blob = t.path().join("layer");
        pack(&src, &Tree::scan(&src).unwrap(), &blob).unwrap();
        let mut h = Sha256::new();
        h.update(fs::read(&blob).unwrap());
        let hex = hex_of(&h.finalize());
        fs::copy(&blob, seeds.join(&hex)).unwrap();
        fs::write(mounts.join("1/kept"), b"x").unwrap();
        let s = |v: &[String]| v.to_vec();
        let base = [seeds.display().to_string(), mounts.display().to_string()];
        seed(&s(&[
            base[0].clone(),
            base[1].clone(),
            format!("0:{hex}"),
            format!("1:{hex}"),
        ]))
        .unwrap();
        assert_eq!(fs::read(mounts.join("0/a/b/f")).unwrap(), b"hello");
        assert!(!mounts.join("1/top").exists());
        let bad = "0".repeat(64);
        fs::copy(&blob, seeds.join(&bad)).unwrap();
        fs::remove_dir_all(mounts.join("0")).unwrap();
        fs::create_dir(mounts.join("0")).unwrap();
        let e = seed(&s(&[base[0].clone(), base[1].clone(), format!("0:{bad}")])).unwrap_err();
        assert!(e.to_string().contains("was changed or damaged"), "{e}");
    }
}
