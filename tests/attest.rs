//! Attestations against a real buildkitd and a docker-registry on 127.0.0.1: buildx's default provenance on a docker-style push, an SBOM made by a stand-in scanner image (BuildKit's SBOM protocol, pushed to the test registry first), both read back from the pushed index as in-toto statements; and buildctl's grammar adding nothing, so its digest stays buildctl's.

mod common;

use std::fs;
use std::path::PathBuf;

use common::registry::Registry;
use common::*;
use serde_json::Value;

/// A stand-in for docker/buildkit-syft-scanner, following BuildKit's SBOM protocol: it reads
/// the root filesystem at BUILDKIT_SCAN_SOURCE and writes one in-toto statement with an SPDX
/// document, named after the source, into BUILDKIT_SCAN_DESTINATION.
const SCANNER: &str = r#"set -e
src="$BUILDKIT_SCAN_SOURCE"
name=$(basename "$src")
files=$(find "$src" -type f | wc -l)
cat > "$BUILDKIT_SCAN_DESTINATION/$name.spdx.json" <<EOF
{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","dataLicense":"CC0-1.0","name":"bkrun-stand-in-scan","documentNamespace":"https://bkrun.invalid/stand-in/$name","creationInfo":{"created":"1970-01-01T00:00:00Z","creators":["Tool: bkrun-stand-in-scanner"]},"comment":"files: $files"}}
EOF
"#;

/// The scanner image's context: static busybox, the script, and an entrypoint that runs it
/// with busybox's shell and applets on PATH.
fn scanner_context(sb: &Sandbox) -> PathBuf {
    let ctx = sb.context(
        "scanner",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         COPY scan.sh /scan.sh\nENV PATH=/bin\nENTRYPOINT [\"/bin/sh\", \"/scan.sh\"]\n",
    );
    fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    fs::write(ctx.join("scan.sh"), SCANNER).unwrap();
    sb.own(&ctx);
    ctx
}

/// The in-toto statements attached to the image index `repo:tag`: (predicate type from the
/// layer's annotation, the statement), each parsed from its blob.
fn statements(reg: &Registry, repo: &str, tag: &str) -> Vec<(String, Value)> {
    let index = reg.manifest(repo, tag);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let mut out = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        if m["annotations"]["vnd.docker.reference.type"] != "attestation-manifest" {
            continue;
        }
        assert_eq!(m["platform"]["os"], "unknown", "{m}");
        assert_eq!(m["platform"]["architecture"], "unknown", "{m}");
        let att = reg.manifest(repo, m["digest"].as_str().unwrap());
        for l in att["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], "application/vnd.in-toto+json", "{l}");
            let blob = reg.blob(repo, l["digest"].as_str().unwrap());
            let statement: Value = serde_json::from_slice(&blob).unwrap();
            let kind = l["annotations"]["in-toto.io/predicate-type"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(statement["predicateType"], kind.as_str());
            out.push((kind, statement));
        }
    }
    out
}

#[test]
fn docker_style_push_carries_default_provenance_and_a_stand_in_sbom() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    // The scanner image, pushed without provenance: a plain image manifest.
    let scanner = format!("{}/tools/scanner:1", reg.host());
    run_ok(
        with_config(sb.bkrun(), &cfg)
            .args(["build", "-t", &scanner, "--push", "--provenance=false"])
            .arg("--progress=plain")
            .arg(scanner_context(&sb)),
    );
    let plain = reg.manifest("tools/scanner", "1");
    assert_eq!(
        plain["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "--provenance=false leaves a plain image: {plain}"
    );
    // The app, docker-style: buildx's default provenance, and the SBOM from the stand-in.
    let ctx = sb.context("app", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    sb.write("app/hello.txt", "hello\n");
    let app = format!("{}/docker/app:1", reg.host());
    let summary = sb.path("summary.json");
    let out = run_ok(
        with_config(sb.bkrun(), &cfg)
            .args(["build", "-t", &app, "--push"])
            .arg(format!("--sbom=generator={scanner}"))
            .arg("--summary")
            .arg(&summary)
            .args(["--summary-format", "json", "--progress=plain"])
            .arg(&ctx),
    );
    assert!(stderr(&out).contains("generating sbom"), "{}", show(&out));
    // The summary lists both attestations as they were asked of the frontend.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let asked: Vec<(&str, &str)> = summary["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["params"].as_str().unwrap()))
        .collect();
    assert!(
        asked.contains(&("provenance", "mode=min,inline-only=true"))
            && asked.contains(&("sbom", &*format!("generator={scanner}"))),
        "{summary}"
    );
    let found = statements(&reg, "docker/app", "1");
    let kinds: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    let provenance = found
        .iter()
        .find(|(k, _)| k.starts_with("https://slsa.dev/provenance/"))
        .unwrap_or_else(|| panic!("no provenance among {kinds:?}"));
    assert!(
        [
            "https://slsa.dev/provenance/v0.2",
            "https://slsa.dev/provenance/v1"
        ]
        .contains(&provenance.0.as_str()),
        "{kinds:?}"
    );
    let sbom = found
        .iter()
        .find(|(k, _)| k == "https://spdx.dev/Document")
        .unwrap_or_else(|| panic!("no SBOM among {kinds:?}"));
    assert_eq!(
        sbom.1["predicate"]["name"], "bkrun-stand-in-scan",
        "{}",
        sbom.1
    );
    assert_eq!(sbom.1["predicate"]["comment"], "files: 1", "{}", sbom.1);
    // The statement's subject is the image manifest it describes.
    let index = reg.manifest("docker/app", "1");
    let image = index["manifests"][0]["digest"].as_str().unwrap();
    let subject = sbom.1["subject"][0]["digest"]["sha256"].as_str().unwrap();
    assert_eq!(format!("sha256:{subject}"), image);
    drop(reg);
    sb.assert_clean();
}

#[test]
fn buildctl_grammar_adds_no_attestation_so_its_digest_is_buildctls() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let ctx = sb.context("app", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    sb.write("app/hello.txt", "hello\n");
    let line = |tag: &str| {
        let mut a = dockerfile_args(&ctx);
        a.push("--opt=build-arg:SOURCE_DATE_EPOCH=0".into());
        a.push(format!(
            "--output=type=image,name={}/plain/app:{tag},push=true",
            reg.host()
        ));
        a
    };
    // Each on a fresh state dir: buildctl through `bkrun exec`, then bkrun's own client.
    run_ok(
        with_config(sb.bkrun_root("state-buildctl"), &cfg)
            .args(["exec", "--", "buildctl", "build"])
            .args(line("buildctl")),
    );
    run_ok(
        with_config(sb.bkrun_root("state-bkrun"), &cfg)
            .arg("build")
            .args(line("bkrun")),
    );
    let m = reg.manifest("plain/app", "bkrun");
    assert_eq!(
        m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{m}"
    );
    assert_eq!(
        reg.digest("plain/app", "bkrun"),
        reg.digest("plain/app", "buildctl")
    );
    drop(reg);
    sb.assert_clean();
}
