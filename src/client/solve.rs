//! One build over the Control API: a session serving the local dirs and export targets, Solve, and the Status stream rendered as progress.

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use tonic::transport::Channel;

use super::connect::{explain_call, Target};
use super::errors;
use super::layouts::Layouts;
use super::localcache::LocalCaches;
use crate::progress::{Options as ProgressOptions, Renderer};
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::{
    CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, StatusRequest,
};
use crate::session::auth::{client_tokens_enabled, config_path, AuthProvider, DockerConfig};
use crate::session::content::ContentStores;
use crate::session::filesend::{FileSendTargets, Sink};
use crate::session::filesync::FileSyncProvider;
use crate::session::secrets::SecretsProvider;
use crate::session::ssh::SshForwarder;
use crate::session::{Session, SessionError};
use crate::spec::build::{BuildSpec, Destination};
use crate::spec::cache::{imports_attr, CacheEntry};
use crate::spec::secret::mask_values;

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

/// Runs `spec` on the daemon behind `channel`. Progress goes to stderr in the spec's mode.
/// Dropping the returned future cancels the build (the Solve call is cancelled with it).
pub async fn build(
    channel: Channel,
    spec: &BuildSpec,
    mut progress: ProgressOptions,
    target: &Target,
) -> Result<Outcome> {
    // Secret values never reach the terminal or the CI log, whatever a step prints.
    let masks = mask_values(&spec.secrets);
    progress.secrets.extend(masks.iter().cloned());
    let mut targets = HashMap::new();
    let mut exporters = Vec::new();
    for (i, out) in spec.outputs.iter().enumerate() {
        match out.destination() {
            Destination::Dir(d) => targets.insert(i as u32, Sink::Dir(d)),
            Destination::File(f) => targets.insert(i as u32, Sink::File(Some(f))),
            Destination::Stdout => targets.insert(i as u32, Sink::File(None)),
            // Served as the content store below; nothing comes back through FileSend.
            Destination::Layout(_) => None,
            Destination::Daemon => None,
        };
        exporters.push(Exporter {
            r#type: out.kind.clone(),
            attrs: out.daemon_attrs().into_iter().collect(),
        });
    }
    let targets = FileSendTargets::new(targets);
    let locals = spec
        .locals
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Local caches: import digests from index.json, export directories created, before Solve.
    let mut cache_imports = spec.cache_imports.clone();
    let local_caches = LocalCaches::prepare(&mut cache_imports, &spec.cache_exports, &mut |w| {
        eprintln!("bkrun: {w}")
    })?;
    let mut frontend_attrs: HashMap<String, String> = spec
        .opts
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The frontend gets the imports too, so its own solves can use them (as buildctl does).
    if let Some(attr) = imports_attr(&cache_imports) {
        frontend_attrs.insert("cache-imports".into(), attr);
    }
    let layout_output = spec.outputs.iter().find_map(|o| match o.destination() {
        Destination::Layout(d) => Some(d),
        _ => None,
    });
    let layouts = Layouts::prepare(&spec.oci_layouts, layout_output.as_deref())?;
    let mut session =
        Session::new("bkrun").add_service(FileSyncProvider::new(locals).into_server());
    let stores: HashMap<_, _> = local_caches
        .stores()
        .chain(layouts.stores())
        .map(|(id, s)| (id.clone(), s.clone()))
        .collect();
    if !stores.is_empty() {
        session = session.add_service(ContentStores::new(stores).into_server());
    }
    if !targets.is_empty() {
        session = session.add_service_with_methods(targets.clone(), &["DiffCopy"]);
    }
    // Registry credentials, as buildctl offers them: from the Docker config of whoever runs bkrun.
    // Registry tokens too, fetched here with those credentials unless BUILDKIT_NO_CLIENT_TOKEN.
    let docker_config = DockerConfig::load(config_path(&|k| std::env::var(k).ok()).as_deref())?;
    let client_tokens =
        client_tokens_enabled(std::env::var("BUILDKIT_NO_CLIENT_TOKEN").ok().as_deref());
    session = session.add_service(
        AuthProvider::new(docker_config, spec.registry_tls.clone(), client_tokens).into_server(),
    );
    if !spec.ssh.is_empty() {
        session = session.add_service(SshForwarder::new(&spec.ssh).into_server());
    }
    if !spec.secrets.is_empty() {
        session = session.add_service(SecretsProvider::new(&spec.secrets).into_server());
    }
    let session = match session.start(channel.clone()).await {
        Ok(s) => s,
        Err(SessionError::Open(status)) => match explain_call(&status, target) {
            Some(why) => return Err(anyhow!("{why}")),
            None => {
                return Err(anyhow!(
                    "the daemon at {} refused a build session: {}",
                    target.addr,
                    status.message()
                ))
            }
        },
        Err(e) => return Err(e).context("cannot open a build session with the daemon"),
    };

    let reference = crate::session::random_id();
    let (exporter_deprecated, exporter_attrs_deprecated) = exporters
        .first()
        .map(|e| (e.r#type.clone(), e.attrs.clone()))
        .unwrap_or_default();
    let request = SolveRequest {
        r#ref: reference.clone(),
        session: session.id().to_string(),
        frontend: spec.frontend.clone().unwrap_or_default(),
        frontend_attrs,
        exporters,
        exporter_deprecated,
        exporter_attrs_deprecated,
        cache: Some(CacheOptions {
            exports: spec.cache_exports.iter().map(cache_entry).collect(),
            imports: cache_imports.iter().map(cache_entry).collect(),
            ..Default::default()
        }),
        entitlements: spec.allow.clone(),
        source_policy: spec.source_policy.clone(),
        ..Default::default()
    };

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
    let mut control = ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let renderer = Renderer::for_stderr(spec.progress, progress)?;
    let mut status_client = control.clone();
    let status_ref = reference.clone();
    let saw_foreign_binary = Arc::new(AtomicBool::new(false));
    let foreign = saw_foreign_binary.clone();
    let status_task = tokio::spawn(async move {
        let stream = match status_client
            .status(StatusRequest { r#ref: status_ref })
            .await
        {
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
    });

    let solved = control.solve(request).await;
    if let Some(path) = &spec.ref_file {
        // Written whether the build succeeded or not, as buildctl does: the ref names its history record.
        if let Err(e) = write_ref_file(path, &reference) {
            eprintln!(
                "bkrun: cannot write the --ref-file {}: {e:#}",
                path.display()
            );
        }
    }
    // The status stream ends by itself once the daemon closes the job; don't hang on a daemon that doesn't.
    let summary = tokio::time::timeout(Duration::from_secs(10), status_task).await;
    let _ = session.close().await;
    local_caches.close();
    layouts.close();
    if let Ok(Ok(Err(e))) = summary {
        eprintln!("bkrun: progress output failed: {e}");
    }
    match solved {
        Ok(resp) => {
            targets
                .commit()
                .context("cannot move the exported file into place")?;
            let response: HashMap<String, String> =
                resp.into_inner().exporter_response.into_iter().collect();
            local_caches.finish(&response)?;
            layouts.finish(&response)?;
            Ok(Outcome::Done(response))
        }
        Err(status) => {
            targets.discard();
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
            if saw_foreign_binary.load(Ordering::Relaxed)
                && errors::emulation_hint(status.message()).is_none()
            {
                shown.insert_str(
                    0,
                    &errors::emulation_hint("exec format error").unwrap_or_default(),
                );
            }
            eprint!("{}", mask_text(&shown, &masks));
            Ok(Outcome::Failed)
        }
    }
}

/// Replaces `path` whole with the build's ref.
fn write_ref_file(path: &std::path::Path, reference: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, reference.as_bytes())?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)?;
    Ok(())
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

fn cache_entry(e: &CacheEntry) -> CacheOptionsEntry {
    CacheOptionsEntry {
        r#type: e.kind.clone(),
        attrs: e
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
