//! One build over the Control API: open the session the spec's services need, Solve, render the Status stream as progress, then finish the outputs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::connect::{explain_call, Target};
use super::errors;
use super::gateway::{self, Gateway};
use super::services::{self, Services};
use crate::cachemount::{self, CacheMounts};
use crate::progress::{Renderer, Summary};
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::frontend::CacheOptionsEntry as GwCacheEntry;
use crate::proto::moby::buildkit::v1::{
    BuildHistoryEventType, BuildHistoryRequest, CacheOptions, CacheOptionsEntry, Exporter,
    SolveRequest, SolveResponse, StatusRequest,
};
use crate::request::build::BuildSpec;
use crate::request::cache::imports_attr;
use crate::request::secret::{mask_values, short_secret_warnings};

/// Largest message we accept from the daemon (status batches can be big).
const MAX_MESSAGE: usize = 64 << 20;

/// Once Solve has answered, the Status stream gets this long without a message to end by
/// itself. A finished build's last progress is already on its way, so a quiet stream means the
/// daemon will never close it: BuildKit ends a job's progress only once the build is recorded in
/// its history, and a Solve refused before that (an entitlement the daemon does not grant, a bad
/// source policy) leaves the stream open forever; a Solve refused before the job exists (a bad
/// exporter or cache option) leaves it waiting 6 s for a job that never comes.
const STATUS_IDLE_AFTER_SOLVE: Duration = Duration::from_millis(300);

/// And at most this long in all, however chatty the stream is.
const STATUS_AFTER_SOLVE: Duration = Duration::from_secs(5);

/// The connection to the daemon broke during the build (the daemon died, or the network went):
/// the caller, which may know the daemon's fate, can say more.
#[derive(Debug)]
pub struct ConnectionLost(pub String);

impl std::fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost the connection to the daemon during the build: {}",
            self.0
        )
    }
}

impl std::error::Error for ConnectionLost {}

/// How a build ended.
#[derive(Debug)]
pub enum Outcome {
    /// The exporter's response (image digest and so on).
    Done(HashMap<String, String>),
    /// The daemon reported a failure, already shown to the user in buildctl's format.
    Failed(Failed),
    /// `--build-timeout` passed: the Solve was cancelled (nothing shown yet).
    TimedOut(Duration),
}

/// A failure as the daemon reported it, for the build's summary.
#[derive(Debug, Default)]
pub struct Failed {
    /// BuildKit's error message (masked).
    pub message: String,
    /// The Dockerfile lines around the failing instruction, as buildctl prints them.
    pub excerpt: Option<String>,
}

/// A build that ran: how it ended, what the cache did, and its steps and warnings (from its
/// progress).
#[derive(Debug)]
pub struct Built {
    pub outcome: Outcome,
    pub cache: crate::progress::CacheStats,
    pub steps: Vec<crate::progress::Step>,
    pub warnings: Vec<crate::proto::moby::buildkit::v1::VertexWarning>,
}

/// What a build needs before its Solve that no daemon answers: the secrets' masks, the cache
/// mounts' seeds, the session's services and the progress view. Made while a daemon bkrun
/// started is not ready yet (about 0.2 ms less between its READY=1 and the Solve), or just
/// before the build on a daemon that already serves.
pub struct Prepared {
    /// What to warn of (short secrets, services), said by the caller after its start-up line.
    warnings: Vec<String>,
    masks: Vec<Vec<u8>>,
    mounts: Option<CacheMounts>,
    session: crate::session::Session,
    services: Services,
    renderer: Renderer,
}

/// Prepares `spec`'s build; its warnings (short secrets, services) wait in it
/// (`Prepared::say_warnings`).
pub async fn prepare(spec: &BuildSpec) -> Result<Prepared> {
    // Secret values never reach the terminal or the CI log, whatever a step prints.
    let masks = mask_values(&spec.secrets);
    // And not in bkrun's own error lines either (a daemon log's tail, a step's error).
    crate::progress::mask::mask_in_errors(&masks);
    let mut warnings = short_secret_warnings(&spec.secrets);
    let mounts = cache_mounts(spec).await?;
    let extra = mounts.as_ref().map(CacheMounts::locals).unwrap_or_default();
    let (session, services) = services::build(spec, &extra, &mut |w| warnings.push(w))?;
    let renderer = renderer(spec, &masks).await?;
    crate::timeline::mark("services");
    Ok(Prepared {
        warnings,
        masks,
        mounts,
        session,
        services,
        renderer,
    })
}

impl Prepared {
    /// Says the warnings the preparation found, once (later calls say nothing).
    pub fn say_warnings(&mut self) {
        for w in std::mem::take(&mut self.warnings) {
            crate::say!("bkrun: {w}");
        }
    }
}

/// Runs `spec` on the daemon behind `channel`, from its `prepared` parts. Progress goes to
/// stderr as the spec settled it. Dropping the returned future cancels the build (the Solve
/// call is cancelled with it).
pub async fn build(
    channel: Channel,
    spec: &BuildSpec,
    target: &Target,
    prepared: Prepared,
) -> Result<Built> {
    let Prepared {
        warnings: _,
        masks,
        mut mounts,
        session,
        services,
        renderer,
    } = prepared;
    let mut session = session
        .begin(channel.clone())
        .context("cannot open a build session with the daemon")?;
    crate::timeline::mark("session");
    let reference = crate::session::random_id();
    let request = solve_request(spec, &services, session.id(), &reference);

    let mut control = ControlClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let saw_foreign_binary = Arc::new(AtomicBool::new(false));
    // None while the Solve runs, then whether it succeeded.
    let (solve_done, solved_rx) = watch::channel(None);
    let status_task = show_status(
        control.clone(),
        reference.clone(),
        renderer,
        saw_foreign_binary.clone(),
        solved_rx,
    );
    // Dropping `build` (a signal, the daemon's death) must end the Status call too: a call left
    // open keeps buildkitd from stopping gracefully.
    let mut status_task = AbortOnDrop(status_task);

    let solving = solve(&mut control, &channel, request, mounts.as_mut());
    // The session went without waiting for its answer (Session::begin): a refusal ends the
    // Solve, which would otherwise wait for the session forever.
    let solving = async {
        tokio::select! {
            solved = solving => Ok(solved),
            refused = session.refused() => Err(refused),
        }
    };
    // Dropping the Solve call cancels it; the daemon then cancels the job's steps, whose end
    // the Status stream still shows (so the steps still running can be named).
    crate::timeline::mark("solve");
    let solved = match spec.build_timeout {
        Some(limit) => tokio::time::timeout(limit, solving)
            .await
            .map_err(|_| TimedOut(limit)),
        None => Ok(solving.await),
    };
    crate::timeline::mark("result");
    let solved = match solved {
        Ok(Err(refused)) => return Err(session_refused(&refused, target)),
        Ok(Ok(solved)) => Ok(solved),
        Err(timed_out) => Err(timed_out),
    };
    let _ = solve_done.send(Some(matches!(solved, Ok(Ok(_)))));
    write_ref_file(spec, &reference).await;
    // The status stream ends by itself, or once quiet after Solve (show_status); this bound is
    // only for a renderer that cannot write.
    let bound = STATUS_AFTER_SOLVE + Duration::from_secs(1);
    let summary = tokio::time::timeout(bound, &mut status_task.0).await;
    drop(status_task);
    crate::timeline::mark("status");
    let _ = session.close().await;
    services.close();
    crate::timeline::mark("closed");
    let mut progress = summary
        .ok()
        .and_then(Result::ok)
        .map(shown)
        .unwrap_or_default();
    let foreign = saw_foreign_binary.load(Ordering::Relaxed);
    let outcome = match solved {
        Ok(solved) => finish(solved, &services, target, foreign, &masks)?,
        Err(TimedOut(limit)) => {
            services.targets.discard();
            Outcome::TimedOut(limit)
        }
    };
    if let Some(m) = mounts.as_mut() {
        if matches!(outcome, Outcome::Done(_)) {
            save_mounts(m, channel).await;
        }
        progress.cache.cache_mounts = Some(m.stats.numbers());
    }
    Ok(Built {
        outcome,
        cache: progress.cache,
        steps: progress.steps,
        warnings: progress.warnings,
    })
}

/// `--build-timeout` passed before the Solve answered.
struct TimedOut(Duration);

/// The progress view the spec settled, masking `masks`, with `--trace` opened.
async fn renderer(spec: &BuildSpec, masks: &[Vec<u8>]) -> Result<Renderer> {
    let mut progress = spec.progress.options();
    progress.secrets.extend(masks.iter().cloned());
    if let Some(path) = &spec.trace {
        // Appended to, as buildctl does: one file can hold the traces of several builds; made
        // private (0600) when new, through the one writer's rules for shared directories.
        let file = crate::outputs::open_append(path, 0o600)
            .await
            .with_context(|| format!("cannot open the --trace file {}", path.display()))?;
        progress.trace = Some(Box::new(std::io::BufWriter::new(file)));
    }
    Ok(Renderer::for_stderr(spec.progress.mode, progress))
}

/// What the progress collected; a view that could not write is said, and its numbers lost.
fn shown(rendered: std::io::Result<Summary>) -> Summary {
    rendered.unwrap_or_else(|e| {
        crate::say!("bkrun: progress output failed: {e}");
        Summary::default()
    })
}

/// `--ref-file`: written whether the build succeeded or not, as buildctl does (the ref names
/// its history record).
async fn write_ref_file(spec: &BuildSpec, reference: &str) {
    if let Some(path) = &spec.ref_file {
        if let Err(e) = crate::outputs::write_file(path, reference.as_bytes()).await {
            crate::say!(
                "bkrun: cannot write the --ref-file {}: {e:#}",
                path.display()
            );
        }
    }
}

/// Cache mounts kept between runs: only when asked for and the Dockerfile may use them.
async fn cache_mounts(spec: &BuildSpec) -> Result<Option<CacheMounts>> {
    match &spec.cache_mounts {
        Some(cm) if cachemount::may_have_cache_mounts(spec) => {
            Ok(Some(CacheMounts::prepare(cm, &spec.registry).await?))
        }
        _ => Ok(None),
    }
}

/// The build's Solve; with cache mounts, the frontend runs through the gateway beside it, so
/// its LLB can be read before the build's steps run (the Solve itself then names no frontend).
async fn solve(
    control: &mut ControlClient<Channel>,
    channel: &Channel,
    mut request: SolveRequest,
    mounts: Option<&mut CacheMounts>,
) -> Result<tonic::Response<SolveResponse>, tonic::Status> {
    let Some(m) = mounts else {
        return control.solve(request).await;
    };
    let frontend = std::mem::take(&mut request.frontend);
    let opts = request.frontend_attrs.clone();
    let imports = gateway_imports(&request);
    let reference = request.r#ref.clone();
    let gw = through_gateway(channel.clone(), &reference, &frontend, opts, imports, m);
    let (solved, ()) = tokio::join!(control.solve(request), gw);
    solved
}

/// Saves the cache mounts the build used, by a step of bkrun's own on the build's daemon. A
/// failure is said in one line; the build's result stands.
async fn save_mounts(mounts: &mut CacheMounts, channel: Channel) {
    let started = std::time::Instant::now();
    let saved = async {
        let Some(step) = mounts.save_step()? else {
            return Ok(());
        };
        let (def, locals) = (step.definition.clone(), step.locals.clone());
        super::step::solve(channel, def, locals, &step.out).await?;
        mounts.commit(step).await
    }
    .await;
    if let Err(e) = saved {
        mounts.save_failed(&e);
    }
    mounts.stats.save_time = started.elapsed();
}

/// The build's cache imports, for the frontend's own solves through the gateway.
fn gateway_imports(request: &SolveRequest) -> Vec<GwCacheEntry> {
    request
        .cache
        .iter()
        .flat_map(|c| c.imports.iter())
        .map(|e| GwCacheEntry {
            r#type: e.r#type.clone(),
            attrs: e.attrs.clone(),
        })
        .collect()
}

/// Runs the frontend through the gateway, restores the cache mounts its LLB uses, and hands
/// its result back to the build. A restore that fails is said and the build goes on cold.
async fn through_gateway(
    channel: Channel,
    reference: &str,
    frontend: &str,
    opts: HashMap<String, String>,
    imports: Vec<GwCacheEntry>,
    mounts: &mut CacheMounts,
) {
    let mut gw = Gateway::new(channel, reference);
    let result = gw.frontend(frontend, opts, imports).await;
    if let Ok(r) = &result {
        match mounts.read(&gateway::definitions(r)) {
            Ok(Some(def)) => {
                let started = std::time::Instant::now();
                if let Err(e) = gw.evaluate(def).await {
                    crate::say!(
                        "bkrun: cannot restore the cache mounts, building without them: {}",
                        e.message()
                    );
                    mounts.restore_failed();
                }
                mounts.restored_in(started.elapsed());
            }
            Ok(None) => {}
            Err(e) => crate::say!("bkrun: cannot read the build's cache mounts: {e:#}"),
        }
    }
    // Refused when the Solve has already failed, which reports it.
    let _ = gw.finish(result).await;
}

/// The daemon's refusal of the build session, explained where the call's status says why.
fn session_refused(status: &tonic::Status, target: &Target) -> anyhow::Error {
    match explain_call(status, target) {
        Some(why) => anyhow!("{why}"),
        None => anyhow!(
            "the daemon at {} refused a build session: {}",
            target.addr,
            status.message()
        ),
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

/// A task that is cancelled when its handle goes (tokio's own handle lets it run on).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renders the build's Status stream until it ends, or until it has been quiet for
/// STATUS_IDLE_AFTER_SOLVE once `solve_done` fires; `foreign` is set when a step's output
/// shows the kernel refusing a binary of another architecture.
fn show_status(
    mut control: ControlClient<Channel>,
    reference: String,
    renderer: Renderer,
    foreign: Arc<AtomicBool>,
    solved: watch::Receiver<Option<bool>>,
) -> JoinHandle<std::io::Result<Summary>> {
    tokio::spawn(async move {
        // Asked for only once the job exists: BuildKit answers a Status call for a job not made
        // yet by waiting 6 s for it, and keeps waiting even after the call is cancelled, which
        // holds up the daemon's graceful stop; a Solve refused before the job exists never
        // makes one.
        if !job_started(&mut control, &reference, solved.clone()).await {
            return renderer.finish();
        }
        let stream = match control.status(StatusRequest { r#ref: reference }).await {
            Ok(r) => r.into_inner(),
            Err(_) => return renderer.finish(),
        };
        let mut done = solved;
        let done = Box::pin(async move {
            let _ = done.wait_for(Option::is_some).await;
        });
        let stream = until_quiet_after(stream, done, STATUS_IDLE_AFTER_SOLVE, STATUS_AFTER_SOLVE);
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

/// Whether the build's job exists on the daemon (so a Status call for it answers at once):
/// its history record has started, or the Solve succeeded. False when the Solve failed and no
/// record started within STATUS_IDLE_AFTER_SOLVE of it: it was refused before the job was made,
/// and there is no progress to show. A daemon without the history API is assumed to have it.
async fn job_started(
    control: &mut ControlClient<Channel>,
    reference: &str,
    mut solved: watch::Receiver<Option<bool>>,
) -> bool {
    let request = BuildHistoryRequest {
        active_only: true,
        r#ref: reference.to_string(),
        ..Default::default()
    };
    let started = async {
        let Ok(resp) = control.listen_build_history(request).await else {
            return;
        };
        let mut events = resp.into_inner();
        while let Some(Ok(e)) = events.next().await {
            if e.r#type() == BuildHistoryEventType::Started {
                return;
            }
        }
        // Ended or failed without the event: fall back to asking for the status anyway.
    };
    tokio::pin!(started);
    tokio::select! {
        () = &mut started => return true,
        r = solved.wait_for(Option::is_some) => {
            if matches!(r.as_deref(), Ok(Some(true))) {
                return true;
            }
        }
    }
    // The Solve failed: its record's event may still be on its way.
    tokio::time::timeout(STATUS_IDLE_AFTER_SOLVE, started)
        .await
        .is_ok()
}

/// `stream` until it ends, or, once `done` has fired, until no item came for `idle` or `cap`
/// has passed. Ending it drops the call, which cancels it on the daemon.
fn until_quiet_after<S, F>(
    stream: S,
    done: F,
    idle: Duration,
    cap: Duration,
) -> impl futures::Stream<Item = S::Item>
where
    S: futures::Stream + Unpin,
    F: std::future::Future + Unpin,
{
    use tokio::time::Instant;
    // Before `done`: no deadline. After: the earlier of the idle and the overall deadline.
    struct State<S, F> {
        stream: S,
        done: Option<F>,
        cap_at: Option<Instant>,
    }
    let state = State {
        stream,
        done: Some(done),
        cap_at: None,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            let deadline = st.cap_at.map(|cap_at| cap_at.min(Instant::now() + idle));
            let quiet = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let done = async {
                match &mut st.done {
                    Some(f) => {
                        f.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = st.stream.next() => return item.map(|i| (i, st)),
                () = done => {
                    st.done = None;
                    st.cap_at = Some(Instant::now() + cap);
                }
                () = quiet => return None,
            }
        }
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
            if let Some(why) = errors::connection_lost(&status) {
                return Err(ConnectionLost(why).into());
            }
            let mut shown = errors::render(&status);
            if let Some(name) = errors::refused_entitlement(status.message()) {
                shown.insert_str(0, &refusal_hint(name, target));
            }
            if saw_foreign_binary && errors::emulation_hint(status.message()).is_none() {
                shown.insert_str(
                    0,
                    &errors::emulation_hint("exec format error").unwrap_or_default(),
                );
            }
            crate::say_raw!("{}", mask_text(&shown, masks));
            let excerpt: String = errors::sources(&status)
                .iter()
                .filter_map(errors::excerpt)
                .collect();
            Ok(Outcome::Failed(Failed {
                message: mask_text(status.message(), masks),
                excerpt: Some(mask_text(&excerpt, masks)).filter(|x| !x.is_empty()),
            }))
        }
    }
}

/// What to do about a daemon that was not started with the entitlement `--allow NAME` asks for.
fn refusal_hint(name: &str, target: &Target) -> String {
    match &target.origin {
        // Someone else's daemon: only its operator can grant it.
        Some(origin) => format!(
            "bkrun: the daemon at {} (from {origin}) does not grant --allow {name}: ask its operator to start buildkitd with --allow-insecure-entitlement {name} (or insecure-entitlements in its buildkitd.toml), or build without --allow {name}\n",
            target.addr
        ),
        // bkrun's own daemon is started with every entitlement the build asks for, so only the
        // user's daemon flags or config file can have taken it away.
        None => format!(
            "bkrun: buildkitd refused --allow {name} although bkrun started it with --allow-insecure-entitlement={name}: check BUILDKITD_FLAGS and the buildkitd config they name\n"
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that yields an item every `every` for ever: a Status stream the daemon never closes.
    fn ticking(every: Duration) -> impl futures::Stream<Item = u32> + Unpin {
        Box::pin(futures::stream::unfold(0u32, move |i| async move {
            tokio::time::sleep(every).await;
            Some((i, i + 1))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_soon_after_solve() {
        // The daemon never closes it and sends nothing: a Solve refused after its job was made.
        let silent = futures::stream::pending::<u32>();
        let done = tokio::time::sleep(Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        let items: Vec<u32> = until_quiet_after(
            silent,
            Box::pin(done),
            STATUS_IDLE_AFTER_SOLVE,
            STATUS_AFTER_SOLVE,
        )
        .collect()
        .await;
        assert!(items.is_empty());
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2) + STATUS_IDLE_AFTER_SOLVE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn before_solve_ends_a_stream_may_be_quiet_for_long() {
        // A long RUN step prints nothing for minutes: the display must not end.
        let slow = ticking(Duration::from_secs(60)).take(3);
        let done = std::future::pending::<()>();
        let items: Vec<u32> = until_quiet_after(
            slow,
            Box::pin(done),
            STATUS_IDLE_AFTER_SOLVE,
            STATUS_AFTER_SOLVE,
        )
        .collect()
        .await;
        assert_eq!(items, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chatty_stream_is_cut_at_the_cap() {
        let chatty = ticking(Duration::from_millis(100));
        let done = tokio::time::sleep(Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        let items: Vec<u32> = until_quiet_after(
            chatty,
            Box::pin(done),
            STATUS_IDLE_AFTER_SOLVE,
            STATUS_AFTER_SOLVE,
        )
        .collect()
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(1) + STATUS_AFTER_SOLVE);
        assert!(items.len() >= 55, "{}", items.len());
    }
}
