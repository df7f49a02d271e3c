//! One of bkrun's own steps as a Solve of its own on the build's daemon (a cache mounts' save):
//! an LLB definition, the local dirs it reads, and a directory its result is exported into.
//! Quiet: its progress is not shown; a failure comes back as one error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tonic::transport::Channel;

use super::errors;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::{Exporter, SolveRequest};
use crate::proto::pb;
use crate::session::filesend::{FileSendTargets, Sink};
use crate::session::filesync::FileSyncProvider;
use crate::session::Session;

/// Solves `def`, serving `locals`, and exports its result as files into `into` (made by the
/// caller, private; received beside it and moved in once complete).
pub async fn solve(
    channel: Channel,
    def: pb::Definition,
    locals: HashMap<String, PathBuf>,
    into: &Path,
) -> Result<()> {
    let targets = FileSendTargets::new(HashMap::from([(0, Sink::Dir(into.to_path_buf()))]));
    let session = Session::new("bkrun")
        .add_service(FileSyncProvider::new(locals).into_server())
        .add_service_with_methods(targets.clone(), &["DiffCopy"]);
    let session = session
        .start(channel.clone())
        .await
        .context("cannot open a session with the daemon")?;
    let request = SolveRequest {
        r#ref: crate::session::random_id(),
        session: session.id().to_string(),
        definition: Some(def),
        exporters: vec![Exporter {
            r#type: "local".into(),
            attrs: HashMap::new(),
        }],
        exporter_deprecated: "local".into(),
        ..Default::default()
    };
    let solved = ControlClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .solve(request)
        .await;
    let _ = session.close().await;
    match solved {
        Ok(_) => targets
            .commit()
            .context("cannot move the saved files into place"),
        Err(status) => {
            targets.discard();
            let shown = errors::render(&status);
            Err(anyhow!("{}", shown.trim_end()))
        }
    }
}
