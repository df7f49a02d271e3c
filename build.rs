//! Build script: compiles our own proto/ definitions into Rust with protox (pure Rust, no protoc).

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "content.proto",
    "control.proto",
    "errdefs.proto",
    "filesync.proto",
    "fsutil.proto",
    "gateway.proto",
    "health.proto",
    "leases.proto",
    "ops.proto",
    "policy.proto",
    "secrets.proto",
    "ssh.proto",
    "stack.proto",
    "status.proto",
    "worker.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    commit();
    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    write_service_methods(&fds)?;
    // Both sides are generated: we call Control as a client and serve the
    // session services (FileSync, Health, ...) to the daemon.
    // BuildKit sends error details as Go-JSON inside google.rpc.Status (type
    // URLs ending in "+json"), so the types we read from there also get serde.
    let json = "#[derive(serde::Deserialize)] #[serde(default)]";
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .type_attribute(".errdefs.Vertex", json)
        .type_attribute(".errdefs.Source", json)
        .type_attribute(".pb.SourceInfo", json)
        .type_attribute(".pb.Range", json)
        .type_attribute(".pb.Position", json)
        .field_attribute(
            ".pb.SourceInfo.data",
            "#[serde(deserialize_with = \"crate::proto::go_json_bytes\")]",
        )
        // The embedded LLB definition is not needed to show an excerpt.
        .field_attribute(".pb.SourceInfo.definition", "#[serde(skip)]")
        .compile_fds(fds)
}

/// The session must announce every method it serves, but tonic's generated
/// servers only expose their service name, so we emit a name -> methods table.
fn write_service_methods(fds: &prost_types::FileDescriptorSet) -> io::Result<()> {
    let mut out = String::from("pub const SERVICE_METHODS: &[(&str, &[&str])] = &[\n");
    for file in &fds.file {
        let package = file.package();
        for svc in &file.service {
            let full = if package.is_empty() {
                svc.name().to_string()
            } else {
                format!("{package}.{}", svc.name())
            };
            let methods: Vec<String> = svc
                .method
                .iter()
                .map(|m| format!("{:?}", m.name()))
                .collect();
            writeln!(out, "    ({full:?}, &[{}]),", methods.join(", ")).expect("write to String");
        }
    }
    out.push_str("];\n");
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(dir.join("service_methods.rs"), out)
}

/// The commit `bkrun --version` names; "unknown" outside a git checkout (e.g. a source tarball).
fn commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BKRUN_COMMIT={commit}");
    // Built again when HEAD moves: a checkout, or a commit on the current branch.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    // Branch refs live in the common dir, which differs from the git dir in a worktree.
    if let (Some(common), Some(head)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        let loose = std::path::Path::new(&common).join(&head);
        if loose.exists() {
            println!("cargo:rerun-if-changed={}", loose.display());
        }
    }
}
