//! Tests of archive.rs: layouts as tar archives and directories, good and damaged, checked before anything would be sent.

use std::path::{Path, PathBuf};

use super::archive::Layout;
use super::Digest;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The files of a small layout: an index (one image manifest + an attestation manifest) named
/// by index.json, as BuildKit's oci exporter writes it with provenance.
struct Files(Vec<(String, Vec<u8>)>);

fn blob(files: &mut Vec<(String, Vec<u8>)>, bytes: &[u8]) -> (String, usize) {
    let d = Digest::sha256(bytes).to_string();
    files.push((format!("blobs/{}", d.replacen(':', "/", 1)), bytes.to_vec()));
    (d, bytes.len())
}

fn desc(media: &str, (d, n): &(String, usize)) -> serde_json::Value {
    serde_json::json!({"mediaType": media, "digest": d, "size": n})
}

fn layout(images: usize) -> Files {
    let mut f = Vec::new();
    let mut tops = Vec::new();
    for i in 0..images {
        let config = blob(
            &mut f,
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{i}}}").as_bytes(),
        );
        let layer = blob(&mut f, format!("layer bytes {i}").as_bytes());
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)]});
        let m = blob(&mut f, m.to_string().as_bytes());
        let att_cfg = blob(&mut f, b"{}");
        let stmt = blob(
            &mut f,
            b"{\"predicateType\":\"https://slsa.dev/provenance/v0.2\"}",
        );
        let att = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &att_cfg),
            "layers": [desc("application/vnd.in-toto+json", &stmt)]});
        let att = blob(&mut f, att.to_string().as_bytes());
        let mut att_desc = desc(MANIFEST, &att);
        att_desc["platform"] = serde_json::json!({"architecture": "unknown", "os": "unknown"});
        att_desc["annotations"] = serde_json::json!({"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": m.0});
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc(MANIFEST, &m), att_desc]});
        let idx = blob(&mut f, idx.to_string().as_bytes());
        let mut top = desc(INDEX, &idx);
        top["annotations"] =
            serde_json::json!({"org.opencontainers.image.ref.name": format!("v{i}")});
        tops.push(top);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": tops});
    f.push((
        "oci-layout".into(),
        b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec(),
    ));
    f.push(("index.json".into(), index.to_string().into_bytes()));
    Files(f)
}

impl Files {
    fn tar(&self, path: &Path) {
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, bytes) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        b.finish().unwrap();
    }

    fn dir(&self, root: &Path) {
        for (name, bytes) in &self.0 {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }

    /// The blob whose bytes are `bytes`, changed by `f`.
    fn change(mut self, bytes: &[u8], f: impl FnOnce(&mut Vec<(String, Vec<u8>)>, usize)) -> Files {
        let i = self.0.iter().position(|(_, b)| b == bytes).unwrap();
        f(&mut self.0, i);
        self
    }
}

fn err(path: &Path, choice: Option<&str>) -> String {
    match Layout::open(path).and_then(|l| l.image(choice)) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("image.tar");
    (d, p)
}

#[test]
fn an_archive_and_a_directory_give_the_same_image_children_first() {
    let (d, tar) = tmp();
    layout(1).tar(&tar);
    let dir = d.path().join("layout");
    layout(1).dir(&dir);
    for p in [&tar, &dir] {
        let img = Layout::open(p).unwrap().image(None).unwrap();
        let kinds: Vec<&str> = img
            .manifests
            .iter()
            .map(|m| m.media_type.as_str())
            .collect();
        assert_eq!(kinds, [MANIFEST, MANIFEST, INDEX]);
        assert_eq!(
            img.root().digest,
            Digest::sha256(&img.root().bytes).to_string()
        );
        assert_eq!(img.blobs.len(), 4, "two configs and two layers");
        assert_eq!(img.config, None, "an index has no one config");
        // Each blob opens on its own descriptor at its first byte.
        let l = Layout::open(p).unwrap();
        let (mut f, size) = l.open_blob(&img.blobs[1].digest).unwrap().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, size), &mut got).unwrap();
        assert_eq!(got, b"layer bytes 0");
    }
}

#[test]
fn several_images_need_a_choice() {
    let (_d, tar) = tmp();
    layout(2).tar(&tar);
    let e = err(&tar, None);
    assert!(
        e.contains("names 2 images (v0, v1): choose one with --image"),
        "{e}"
    );
    let img = Layout::open(&tar).unwrap().image(Some("v1")).unwrap();
    assert_eq!(img.manifests.len(), 3);
    assert!(err(&tar, Some("v9")).contains("give a tag or digest from that list"));
}

#[test]
fn damaged_archives_are_refused_in_one_line() {
    let (d, tar) = tmp();
    let one_line = |e: &str| assert_eq!(e.lines().count(), 1, "{e}");
    // Not a tar at all, and a gzip one.
    std::fs::write(&tar, "x".repeat(2000)).unwrap();
    let e = err(&tar, None);
    assert!(
        e.contains("is not a tar archive") || e.contains("no index.json"),
        "{e}"
    );
    one_line(&e);
    std::fs::write(&tar, [0x1f, 0x8b, 8, 0]).unwrap();
    assert!(err(&tar, None).contains("gunzip it first"));
    // A tar without index.json.
    Files(vec![("hello".into(), b"hi".to_vec())]).tar(&tar);
    assert!(err(&tar, None).contains("has no index.json"));
    // A missing layer.
    layout(1)
        .change(b"layer bytes 0", |f, i| {
            f.remove(i);
        })
        .tar(&tar);
    let e = err(&tar, None);
    assert!(e.contains("is missing: the layout is incomplete"), "{e}");
    one_line(&e);
    // A layer with other bytes of the same length, and one cut short.
    layout(1)
        .change(b"layer bytes 0", |f, i| f[i].1 = b"layer bytes X".to_vec())
        .tar(&tar);
    assert!(err(&tar, None).contains("holds other bytes"));
    layout(1)
        .change(b"layer bytes 0", |f, i| f[i].1.truncate(3))
        .tar(&tar);
    assert!(err(&tar, None).contains("not the 13 its manifest says"));
    // Nothing there, and a directory that is no layout.
    assert!(err(&d.path().join("nope.tar"), None).contains("no such file or directory"));
    assert!(err(d.path(), None).contains("has no index.json"));
}
