//! End-to-end tests of OCI image-layout directories against a real buildkitd: `--output type=oci,tar=false` written through bkrun's session content store, equal to buildctl's, and read back with `--oci-layout`.

mod common;

use std::path::Path;

use common::*;

fn index(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

fn blobs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn oci_layout_output_equals_buildctls_and_feeds_a_second_build() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let ctx = sb.hello_context();
        let ours = sb.path("layout-bkrun");
        let theirs = sb.path("layout-buildctl");
        let name = "name=example.com/bkrun/hello:1";
        // A fixed epoch: the exporter stamps the index with a creation time otherwise.
        let (our_meta, their_meta) = (sb.path("meta-bkrun.json"), sb.path("meta-buildctl.json"));
        run_ok(
            sb.bkrun_root("state")
                .env("SOURCE_DATE_EPOCH", "0")
                .arg("build")
                .args(sb.build_args(&ctx))
                .arg(format!("--metadata-file={}", our_meta.display()))
                .arg(format!(
                    "--output=type=oci,tar=false,dest={},{name}",
                    ours.display()
                )),
        );
        run_ok(
            sb.buildctl_build("state")
                .env("SOURCE_DATE_EPOCH", "0")
                .args(sb.build_args(&ctx))
                .arg(format!("--metadata-file={}", their_meta.display()))
                .arg(format!(
                    "--output=type=oci,tar=false,dest={},{name}",
                    theirs.display()
                )),
        );
        assert_eq!(index(&ours), index(&theirs), "{mode:?}: index.json differs");
        // Byte for byte: Go's field order, sorted maps, no trailing newline.
        let bytes = |p: &Path| String::from_utf8(std::fs::read(p).unwrap()).unwrap();
        assert_eq!(
            bytes(&ours.join("index.json")),
            bytes(&theirs.join("index.json")),
            "{mode:?}: index.json bytes differ"
        );
        assert_eq!(
            without_bkrun_key(&bytes(&our_meta)),
            bytes(&their_meta),
            "{mode:?}: --metadata-file bytes differ"
        );
        assert_eq!(blobs(&ours), blobs(&theirs), "{mode:?}: blobs differ");
        for b in blobs(&ours) {
            assert_eq!(
                std::fs::read(ours.join("blobs/sha256").join(&b)).unwrap(),
                std::fs::read(theirs.join("blobs/sha256").join(&b)).unwrap()
            );
        }
        assert!(
            !ours.join("ingest").exists(),
            "{mode:?}: ingest left behind"
        );
        assert!(ours.join("oci-layout").exists());

        // The layout as a named context, by tag: bkrun finds the digest in index.json.
        let ctx2 = sb.context("second", "FROM app\nRUN cat /hello.txt > /again.txt\n");
        let out = sb.path("out");
        run_ok(
            sb.bkrun_root("state2")
                .arg("build")
                .args(sb.build_args(&ctx2))
                .arg(format!("--oci-layout=app={}", ours.display()))
                .arg("--opt=context:app=oci-layout://app:1")
                .arg(format!("--output=type=local,dest={}", out.display())),
        );
        assert!(
            std::fs::read_to_string(out.join("again.txt"))
                .unwrap()
                .starts_with("hello from bkrun"),
            "{mode:?}"
        );
        sb.assert_clean();
    }
}

#[test]
fn layout_flags_are_checked_before_any_daemon_starts() {
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = sb.context("ctx", "FROM app\n");
    let empty = sb.mkdir("empty");
    let layout = sb.mkdir("layout");
    std::fs::write(
        layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let file = sb.write("file", "x");
    for (flags, says) in [
        (
            vec![format!("--oci-layout=app={}", empty.display())],
            "not an OCI image layout",
        ),
        (
            vec!["--opt=context:app=oci-layout://app".to_string()],
            "add --oci-layout app=DIR",
        ),
        (
            vec![
                format!("--oci-layout=app={}", layout.display()),
                "--opt=context:app=oci-layout://app:v9".to_string(),
            ],
            "has no image tagged v9",
        ),
        (
            vec![format!(
                "--output=type=oci,tar=false,dest={}",
                file.display()
            )],
            "that is a file",
        ),
    ] {
        let out = sb
            .bkrun()
            .arg("build")
            .args(sb.build_args(&ctx))
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", show(&out));
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    sb.assert_clean();
}

/// A metadata file with bkrun's own numbers (its first key, "bkrun") taken out: what is left
/// must be buildctl's, byte for byte.
fn without_bkrun_key(text: &str) -> String {
    let Some(start) = text.find("  \"bkrun\": {") else {
        return text.to_string();
    };
    let end = text[start..]
        .find("\n  },\n")
        .map(|e| start + e + "\n  },\n".len())
        .expect("the bkrun key's object ends");
    format!("{}{}", &text[..start], &text[end..])
}
