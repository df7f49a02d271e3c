//! `bkrun push` against a real buildkitd (which writes the archive) and a password-protected TLS docker-registry on 127.0.0.1: an OCI archive and its layout directory pushed to two tags with the Docker config's login and bkrun.toml's CA, the registry's digests equal to the archive's, the digest files written; damaged archives refused in one line with no daemon started.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::registry::{docker_login, Registry};
use common::*;

/// The digest the registry gives `repo:tag` (any manifest type), asked with curl as a client
/// with the login and the test CA would.
fn registry_digest(reg: &Registry, certs: &Path, repo: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-I", "--cacert"])
        .arg(certs.join("ca.pem"))
        .args(["-u", "builder:s3cr3t-pw", "-H"])
        .arg("Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
        .arg(format!("https://{}/v2/{repo}/manifests/{tag}", reg.host()))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest: ")
                .map(|d| d.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest for {repo}:{tag}: {head}"))
}

/// The digest index.json of the archive names (its one image).
fn archive_digest(archive: &Path) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn an_oci_archive_and_its_layout_pushed_to_two_tags_of_a_private_registry() {
    let sb = Sandbox::new(Mode::Privileged);
    let (reg, certs) = Registry::start_auth(&sb);
    let host = reg.host();
    let cfg = sb.write(
        "bkrun.toml",
        &format!(
            "[buildkitd.registry.\"{host}\"]\nhttp = false\nca = [\"{}/ca.pem\"]\n",
            certs.display()
        ),
    );
    let login = docker_login(&sb, "docker", &host, "builder:s3cr3t-pw");
    let archive = build_archive(&sb);
    let want = archive_digest(&archive);
    let (digest_file, names_file) = (sb.path("digest"), sb.path("names"));
    let push = |source: &Path, refs: &[String], extra: &[String]| {
        let mut c = with_config(sb.bkrun(), &cfg);
        c.env("DOCKER_CONFIG", &login)
            .arg("push")
            .arg(source)
            .args(refs)
            .args(extra);
        c
    };
    let refs = [
        format!("{host}/pushed/app:1"),
        format!("{host}/pushed/app:2"),
    ];
    let t = Instant::now();
    let out = run_ok(&mut push(
        &archive,
        &refs,
        &[
            format!("--digest-file={}", digest_file.display()),
            format!("--image-name-tag-with-digest-file={}", names_file.display()),
        ],
    ));
    eprintln!(
        "bkrun push of the archive to two tags took {:?}",
        t.elapsed()
    );
    let err = stderr(&out);
    assert_eq!(err.matches("bkrun: pushed ").count(), 2, "{err}");
    // The build's provenance went along: the index's attestation manifest.
    assert!(err.contains("with 1 attestation manifest"), "{err}");
    assert_eq!(registry_digest(&reg, &certs, "pushed/app", "1"), want);
    assert_eq!(registry_digest(&reg, &certs, "pushed/app", "2"), want);
    assert_eq!(fs::read_to_string(&digest_file).unwrap(), want);
    assert_eq!(
        fs::read_to_string(&names_file).unwrap(),
        format!("{}@{want}\n{}@{want}\n", refs[0], refs[1])
    );
    // The same image as a layout directory (tar=false), to another repository.
    let layout = sb.mkdir("layout");
    sh_in(&layout, &format!("tar -xf {}", archive.display()));
    let other = [format!("{host}/pushed/layout:1")];
    run_ok(&mut push(&layout, &other, &[]));
    assert_eq!(registry_digest(&reg, &certs, "pushed/layout", "1"), want);
    // Without the login: refused, naming the login to run.
    let mut anon = with_config(sb.bkrun(), &cfg);
    anon.env("DOCKER_CONFIG", sb.mkdir("docker-empty"))
        .arg("push")
        .arg(&archive)
        .arg(format!("{host}/pushed/anon:1"));
    let err = stderr(&run_fails(&mut anon));
    assert!(err.contains(&format!("docker login {host}")), "{err}");
    // No push started a daemon: the sandbox's own state dir is untouched.
    assert_eq!(fs::read_dir(sb.path("state")).unwrap().count(), 0);
    refusals(&sb, &layout, &host);
    drop(reg);
    sb.assert_clean();
}

/// The archive an earlier build writes, with provenance: an index of an image and its
/// attestation manifest (children to push before the index). Asked for: BuildKit leaves
/// buildx's inline-only default provenance out of OCI archives.
fn build_archive(sb: &Sandbox) -> std::path::PathBuf {
    let ctx = sb.context("app", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    sb.write("app/hello.txt", "hello\n");
    let archive = sb.path("app.tar");
    run_ok(
        sb.bkrun_root("state-build")
            .args(["build", "--progress=plain", "--provenance=mode=min", "-o"])
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&ctx),
    );
    archive
}

/// Damaged archives and layouts: one line each, before any daemon or request.
fn refusals(sb: &Sandbox, layout: &Path, host: &str) {
    let refuse = |source: &Path, extra: &[&str], says: &str| {
        let t = Instant::now();
        let out = run_fails(
            sb.bkrun()
                .arg("push")
                .arg(source)
                .arg(format!("{host}/pushed/bad:1"))
                .args(extra),
        );
        let err = stderr(&out);
        assert!(err.contains(says), "{says}: {}", show(&out));
        assert_eq!(err.lines().count(), 1, "{err}");
        sb.assert_no_daemon_started(t);
    };
    let garbage = sb.write("garbage.tar", &"not a tar archive\n".repeat(100));
    refuse(&garbage, &[], "is not a tar archive");
    let no_index = sb.path("no-index.tar");
    sh_in(
        &sb.dir,
        &format!("tar -cf {} garbage.tar", no_index.display()),
    );
    refuse(&no_index, &[], "has no index.json");
    refuse(
        layout,
        &["--image", "v9"],
        "give a tag or digest from that list",
    );
    // One blob removed (the largest: the layer): incomplete.
    let blobs = layout.join("blobs/sha256");
    let largest = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let bytes = fs::read(&largest).unwrap();
    fs::write(&largest, b"other bytes").unwrap();
    refuse(layout, &[], "the layout is damaged");
    fs::remove_file(&largest).unwrap();
    refuse(layout, &[], "the layout is incomplete");
    fs::write(&largest, bytes).unwrap();
}
