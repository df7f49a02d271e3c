//! One build over the Control API: open the session the spec's services need, Solve, render the Status stream as progress, then finish the outputs.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::connect::{explain_call, Target};
use super::errors;
use super::services::{self, Services};
use crate::progress::{Renderer, Summary};
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::{
    CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, SolveResponse, StatusRequest,
};
use crate::session::{Session, SessionError, SessionHandle};
use crate::spec::build::BuildSpec;
use crate::spec::cache::imports_attr;
use crate::spec::secret::{mask_values, short_secret_warnings};

/// Largest message we accept from the daemon (status batches can be big).
const MAX_MESSAGE: usize = 64 << 20;

/// How a build ended.
#[derive(Debug)]
pub enum Outcome {
    /// The exporter's response (image digest and so on).
    Done(HashMap<String, String>),
    /// The daemon reported a failure, already shown to the user in buildctl's format.
    Failed,
}

/// Runs `spec` on the daemon behind `channel`. Progress goes to stderr as the spec settled it.
/// Dropping the returned future cancels the build (the Solve call is cancelled with it).
pub async fn build(channel: Channel, spec: &BuildSpec, target: &Target) -> Result<Outcome> {
    // Secret values never reach the terminal or the CI log, whatever a step prints.
    let masks = mask_values(&spec.secrets);
    for w in short_secret_warnings(&spec.secrets) {
        crate::say!("bkrun: {w}");
    }
    let (session, services) = services::build(spec, &mut |w| crate::say!("bkrun: {w}"))?;
    let session = open(session, channel.clone(), target).await?;
    let reference = crate::session::random_id();
    let request = solve_request(spec, &services, session.id(), &reference);

    let mut progress = spec.progress.options();
    progress.secrets.extend(masks.iter().cloned());
    if let Some(path) = &spec.trace {
        // Appended to, as buildctl does: one file can hold the traces of several builds.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the --trace file {}", path.display()))?;
        progress.trace = Some(Box::new(std::io::BufWriter::new(file)));
    }
    let renderer = Renderer::for_stderr(spec.progress.mode, progress);
    let mut control = ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let saw_foreign_binary = Arc::new(AtomicBool::new(false));
    let status_task = show_status(
        control.clone(),
        reference.clone(),
        renderer,
        saw_foreign_binary.clone(),
    );

    let solved = control.solve(request).await;
    if let Some(path) = &spec.ref_file {
        // Written whether the build succeeded or not, as buildctl does: the ref names its history record.
        if let Err(e) =
            crate::place::write_file(path, reference.as_bytes(), &crate::host::RealHost).await
        {
            crate::say!(
                "bkrun: cannot write the --ref-file {}: {e:#}",
                path.display()
            );
        }
    }
    // The status stream ends by itself once the daemon closes the job; don't hang on a daemon that doesn't.
    let summary = tokio::time::timeout(Duration::from_secs(10), status_task).await;
    let _ = session.close().await;
    services.close();
    if let Ok(Ok(Err(e))) = summary {
        crate::say!("bkrun: progress output failed: {e}");
    }
    finish(
        solved,
        &services,
        target,
        saw_foreign_binary.load(Ordering::Relaxed),
        &masks,
    )
}

/// Starts the session, saying in one line why the daemon refused it.
async fn open(session: Session, channel: Channel, target: &Target) -> Result<SessionHandle> {
    match session.start(channel).await {
        Ok(s) => Ok(s),
        Err(SessionError::Open(status)) => match explain_call(&status, target) {
            Some(why) => Err(anyhow!("{why}")),
            None => Err(anyhow!(
                "the daemon at {} refused a build session: {}",
                target.addr,
                status.message()
            )),
        },
        Err(e) => Err(e).context("cannot open a build session with the daemon"),
    }
}

/// The Solve request: frontend, its options, exporters, caches, entitlements and source policy.
fn solve_request(
    spec: &BuildSpec,
    services: &Services,
    session: &str,
    reference: &str,
) -> SolveRequest {
    let exporters: Vec<Exporter> = spec
        .outputs
        .iter()
        .map(|out| Exporter {
            r#type: out.kind.as_str().to_string(),
            attrs: out.daemon_attrs().into_iter().collect(),
        })
        .collect();
    let mut frontend_attrs: HashMap<String, String> = spec
        .opts
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The frontend gets the imports too, so its own solves can use them (as buildctl does).
    if let Some(attr) = imports_attr(&services.cache_imports) {
        frontend_attrs.insert("cache-imports".into(), attr);
    }
    let (exporter_deprecated, exporter_attrs_deprecated) = exporters
        .first()
        .map(|e| (e.r#type.clone(), e.attrs.clone()))
        .unwrap_or_default();
    SolveRequest {
        r#ref: reference.to_string(),
        session: session.to_string(),
        frontend: spec.frontend.clone(),
        frontend_attrs,
        exporters,
        exporter_deprecated,
        exporter_attrs_deprecated,
        cache: Some(CacheOptions {
            exports: spec
                .cache_exports
                .iter()
                .map(|e| cache_entry(e.kind(), e.attrs()))
                .collect(),
            imports: services
                .cache_imports
                .iter()
                .map(|e| cache_entry(e.kind(), e.attrs()))
                .collect(),
            ..Default::default()
        }),
        entitlements: spec.allow.clone(),
        source_policy: spec.source_policy.clone(),
        ..Default::default()
    }
}

/// Renders the build's Status stream until it ends; `foreign` is set when a step's output
/// shows the kernel refusing a binary of another architecture.
fn show_status(
    mut control: ControlClient<Channel>,
    reference: String,
    renderer: Renderer,
    foreign: Arc<AtomicBool>,
) -> JoinHandle<std::io::Result<Summary>> {
    tokio::spawn(async move {
        let stream = match control.status(StatusRequest { r#ref: reference }).await {
            Ok(r) => r.into_inner(),
            Err(_) => return renderer.finish(),
        };
        // The stream ends when the build does; an error just ends the display.
        let stream = stream
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| async { r.ok() })
            .inspect(move |resp| {
                // A step's own output is the only place the kernel's refusal to run a foreign binary shows.
                if resp
                    .logs
                    .iter()
                    .any(|l| l.msg.windows(17).any(|w| w == b"exec format error"))
                {
                    foreign.store(true, Ordering::Relaxed);
                }
            });
        renderer.run(stream).await
    })
}

/// Finishes the outputs of a solved build, or explains a failed one in buildctl's words.
fn finish(
    solved: Result<tonic::Response<SolveResponse>, tonic::Status>,
    services: &Services,
    target: &Target,
    saw_foreign_binary: bool,
    masks: &[Vec<u8>],
) -> Result<Outcome> {
    match solved {
        Ok(resp) => {
            let response: HashMap<String, String> =
                resp.into_inner().exporter_response.into_iter().collect();
            services.finish(&response)?;
            Ok(Outcome::Done(response))
        }
        Err(status) => {
            services.targets.discard();
            if let Some(why) = explain_call(&status, target) {
                return Err(anyhow!("{why}"));
            }
            if status.code() == tonic::Code::Unavailable {
                return Err(anyhow!(
                    "lost the connection to the daemon during the build: {}",
                    status.message()
                ));
            }
            let mut shown = errors::render(&status);
            if saw_foreign_binary && errors::emulation_hint(status.message()).is_none() {
                shown.insert_str(
                    0,
                    &errors::emulation_hint("exec format error").unwrap_or_default(),
                );
            }
            crate::say_raw!("{}", mask_text(&shown, masks));
            Ok(Outcome::Failed)
        }
    }
}

/// `text` with every secret value replaced by `****`, as the progress views mask them.
fn mask_text(text: &str, masks: &[Vec<u8>]) -> String {
    let mut out = text.to_string();
    // Longest first, so a value that contains another is hidden whole.
    let mut masks: Vec<&Vec<u8>> = masks.iter().collect();
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in masks {
        if let Ok(s) = std::str::from_utf8(m) {
            out = out.replace(s, "****");
        }
    }
    out
}

fn cache_entry(kind: &str, attrs: &BTreeMap<String, String>) -> CacheOptionsEntry {
    CacheOptionsEntry {
        r#type: kind.to_string(),
        attrs: attrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}
