//! Build script: compiles our own proto/ definitions into Rust with protox (pure Rust, no protoc).

use std::io;

const PROTOS: &[&str] = &[
    "control.proto",
    "errdefs.proto",
    "filesync.proto",
    "fsutil.proto",
    "health.proto",
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
    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    // Both sides are generated: we call Control as a client and serve the
    // session services (FileSync, Health, ...) to the daemon.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
