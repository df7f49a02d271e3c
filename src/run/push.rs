//! `bkrun push`: the layout opened and checked whole and the references and files settled before anything is sent, then the image pushed to each reference with bkrun's own registry client and the digest files written; no daemon is started.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::PushArgs;
use crate::config::Settings;
use crate::host::Host;
use crate::ocilayout::archive::{Image, Layout};
use crate::ocilayout::attestations;
use crate::request::push::PushSpec;
use crate::{client, registry, request};

/// A push, settled: what is pushed (opened and checked) and where.
pub(super) struct PushJob {
    spec: PushSpec,
    layout: Layout,
    image: Image,
}

/// Checks the command line and the layout, reading every blob once for its digest, before
/// any request is sent.
pub(super) fn settle(args: &PushArgs, settings: &Settings, host: &dyn Host) -> Result<PushJob> {
    let spec = request::push::resolve(&args.into(), settings, host)?;
    let layout = Layout::open(&spec.source)?;
    let image = layout.image(spec.image.as_deref())?;
    Ok(PushJob {
        spec,
        layout,
        image,
    })
}

/// Pushes to each reference in turn (the second finds the blobs there already), then writes
/// the digest files; one line per reference says what went.
pub(super) async fn run(job: PushJob) -> Result<i32> {
    let client = registry::Client::new(&job.spec.registry)?;
    let root = job.image.root().digest.clone();
    let attested = match attestations::list(&job.image.root().bytes).len() {
        0 => String::new(),
        1 => ", with 1 attestation manifest".into(),
        n => format!(", with {n} attestation manifests"),
    };
    for r in &job.spec.references {
        let started = Instant::now();
        let pushed = client
            .push_image(r, &job.layout, &job.image)
            .await
            .with_context(|| format!("cannot push {} to {r}", job.spec.source.display()))?;
        let sent: u64 = job
            .image
            .blobs
            .iter()
            .filter(|b| pushed.uploaded.contains(&b.digest))
            .map(|b| b.size)
            .sum();
        crate::say!(
            "bkrun: pushed {r} ({root}{attested}): {} of {} blobs sent ({}), the rest already there, in {:.1}s",
            pushed.uploaded.len(),
            job.image.blobs.len(),
            crate::cachemount::human(sent),
            started.elapsed().as_secs_f64()
        );
    }
    let response = response(&job);
    client::metadata::write_after(&job.spec.after, &response).await?;
    if let Some(f) = &job.spec.metadata_file {
        let text = serde_json::to_string_pretty(&response)?;
        crate::outputs::write_file(f, text.as_bytes())
            .await
            .with_context(|| format!("cannot write the --metadata-file {}", f.display()))?;
    }
    Ok(0)
}

/// What a build's exporter would have answered for this image: the pushed digest, the config
/// digest (a single image manifest only) and the names, so the digest files are a build's.
fn response(job: &PushJob) -> HashMap<String, String> {
    let mut r = HashMap::from([
        (
            "containerimage.digest".to_string(),
            job.image.root().digest.clone(),
        ),
        ("image.name".to_string(), job.spec.references.join(",")),
    ]);
    if let Some(c) = &job.image.config {
        r.insert("containerimage.config.digest".into(), c.clone());
    }
    r
}
