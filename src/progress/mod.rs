//! Shows a build's progress from the Control.Status stream in the `--progress` mode asked for: plain (buildctl-identical text), tty (live frame), rawjson, or quiet.
//!
//! [`Renderer`] is the entry point: build one with [`Renderer::for_stderr`]
//! (or [`Renderer::new`] for any writer), then either push messages with
//! [`Renderer::update`]/[`Renderer::tick`]/[`Renderer::finish`] or hand it the
//! whole stream with [`Renderer::run`]. Secret values given in [`Options`]
//! are masked before anything is shown. The mode and look arrive settled
//! (`request::progress` reads the flag, the environment and the terminal); nothing
//! here reads the environment.

mod cachestats;
pub mod mask;
mod plain;
mod rawjson;
mod steps;
mod term;
mod trace;
mod tty;

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};

pub use crate::gocompat::times::Nanos;
pub use cachestats::{CacheMountStats, CacheStats, Export, Import, Transfer};
pub use mask::{Masker, MASK};
pub use plain::PlainPrinter;
pub use rawjson::{encode as encode_rawjson, RawJsonPrinter};
pub use steps::{Step, StepState};
pub use tty::{SizeFn, TtyPrinter, DEFAULT_TAIL_ROWS};

use crate::proto::moby::buildkit::v1::{StatusResponse, VertexWarning};

/// How often the live views redraw while no message arrives (upstream's
/// ticker), and the least time between two draws triggered by messages.
const TICK: Duration = Duration::from_millis(150);
const MIN_DRAW_INTERVAL: i64 = 100_000_000;

/// The `--progress` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// tty on a terminal, plain otherwise.
    #[default]
    Auto,
    Plain,
    Tty,
    RawJson,
    Quiet,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(Mode::Auto),
            "plain" => Ok(Mode::Plain),
            "tty" => Ok(Mode::Tty),
            "rawjson" => Ok(Mode::RawJson),
            "quiet" => Ok(Mode::Quiet),
            other => Err(format!(
                "invalid progress mode {other:?} (expected auto, plain, tty, rawjson or quiet)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Plain => "plain",
            Mode::Tty => "tty",
            Mode::RawJson => "rawjson",
            Mode::Quiet => "quiet",
        })
    }
}

impl Mode {
    /// Settles `Auto`: tty when the output is a terminal that is not
    /// TERM=dumb, plain otherwise. Other modes are returned as they are.
    pub fn resolve(self, is_terminal: bool, term: Option<&str>) -> Mode {
        match self {
            Mode::Auto if is_terminal && term != Some("dumb") => Mode::Tty,
            Mode::Auto => Mode::Plain,
            m => m,
        }
    }
}

/// A source of the current time, so tests can drive the views' timing.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;

    fn now_nanos(&self) -> Nanos {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        }
    }
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `nanos` since the epoch.
    pub fn at(nanos: Nanos) -> Self {
        ManualClock(Arc::new(AtomicI64::new(nanos)))
    }

    pub fn set(&self, nanos: Nanos) {
        self.0.store(nanos, Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        let d = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.0.fetch_add(d, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let n = self.0.load(Ordering::SeqCst);
        if n >= 0 {
            UNIX_EPOCH + Duration::from_nanos(n as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
        }
    }

    fn now_nanos(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

/// Allows one draw per 100ms, with a burst of one: a token bucket kept as
/// nanoseconds of credit, so arithmetic is exact.
#[derive(Debug)]
pub(crate) struct Limiter {
    credit: i64,
    last: Option<Nanos>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            credit: MIN_DRAW_INTERVAL,
            last: None,
        }
    }
}

impl Limiter {
    pub(crate) fn allow(&mut self, now: Nanos) -> bool {
        if let Some(last) = self.last {
            let elapsed = (now - last).max(0);
            self.credit = (self.credit.saturating_add(elapsed)).min(MIN_DRAW_INTERVAL);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.credit >= MIN_DRAW_INTERVAL {
            self.credit -= MIN_DRAW_INTERVAL;
            true
        } else {
            false
        }
    }
}

/// A step that failed (not one that was cancelled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub error: String,
}

/// What the build reported besides its result, for the caller to act on.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Every warning, in arrival order (masked).
    pub warnings: Vec<VertexWarning>,
    /// Failed steps, in the order they failed (masked).
    pub failed: Vec<Failure>,
    /// What the cache did: steps cached, the registry cache's import and export.
    pub cache: CacheStats,
    /// Every step shown, in the order they started, with its time and how it ended.
    pub steps: Vec<Step>,
}

/// Settings besides the mode.
pub struct Options {
    /// Values to show as `****` wherever they would appear.
    pub secrets: Vec<Vec<u8>>,
    pub clock: Arc<dyn Clock>,
    /// The terminal size for the tty view; (80, 10) when None.
    pub size: Option<SizeFn>,
    /// Colour finished steps in the tty view.
    pub color: bool,
    /// Output rows shown under running steps in the tty view.
    pub tail_rows: usize,
    /// Cut plain step names at 72 bytes.
    pub truncate_names: bool,
    /// `--trace`: every message is also appended here as one line of rawjson, masked like the view.
    pub trace: Option<Box<dyn io::Write + Send>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            secrets: Vec::new(),
            clock: Arc::new(SystemClock),
            size: None,
            color: true,
            tail_rows: DEFAULT_TAIL_ROWS,
            truncate_names: false,
            trace: None,
        }
    }
}

type Out = Box<dyn Write + Send>;

enum View {
    Plain(PlainPrinter<Out>),
    Tty(TtyPrinter<Out>),
    Raw(RawJsonPrinter<Out>),
    Quiet,
}

/// Shows progress in one mode and collects the [`Summary`].
pub struct Renderer {
    view: View,
    masker: Masker,
    summary: Summary,
    /// Failed digests already in the summary.
    failed_seen: HashSet<String>,
    /// Counts cached steps in every mode, quiet included.
    tally: cachestats::Tally,
    /// Every step's last output lines, for a failed step's report.
    tails: steps::Tails,
    trace: Option<Box<dyn io::Write + Send>>,
}

impl Renderer {
    /// A renderer writing to `out`. `Auto` means plain here, since nothing is
    /// known about `out`; use [`Renderer::for_stderr`] to detect a terminal.
    pub fn new(mode: Mode, out: Out, opts: Options) -> Self {
        let view = match mode {
            Mode::Auto | Mode::Plain => {
                View::Plain(PlainPrinter::new(out, opts.clock).truncate_names(opts.truncate_names))
            }
            Mode::Tty => {
                let size = opts.size.unwrap_or_else(|| Box::new(|| (80, 10)));
                View::Tty(
                    TtyPrinter::new(out, opts.clock, size)
                        .color(opts.color)
                        .tail_rows(opts.tail_rows),
                )
            }
            Mode::RawJson => View::Raw(RawJsonPrinter::new(out)),
            Mode::Quiet => View::Quiet,
        };
        Renderer {
            view,
            masker: Masker::new(opts.secrets),
            summary: Summary::default(),
            failed_seen: HashSet::new(),
            tally: cachestats::Tally::default(),
            tails: steps::Tails::default(),
            trace: opts.trace,
        }
    }

    /// A renderer on standard error in a settled mode (request::progress decides it from the flag,
    /// the environment and the terminal); the tty view follows the terminal's size.
    pub fn for_stderr(mode: Mode, mut opts: Options) -> Self {
        if opts.size.is_none() {
            opts.size = Some(Box::new(stderr_size));
        }
        Renderer::new(mode, Box::new(io::stderr()), opts)
    }

    /// Takes one message from the stream.
    pub fn update(&mut self, resp: StatusResponse) -> io::Result<()> {
        let resp = self.masker.apply(resp);
        self.show(resp)
    }

    /// Records and displays an already masked message.
    fn show(&mut self, resp: StatusResponse) -> io::Result<()> {
        self.note(&resp);
        if let Some(t) = &mut self.trace {
            writeln!(t, "{}", encode_rawjson(&resp))?;
        }
        match &mut self.view {
            View::Plain(p) => p.update(&resp),
            View::Tty(p) => p.update(&resp),
            View::Raw(p) => p.update(&resp),
            View::Quiet => Ok(()),
        }
    }

    /// Call about every 150ms while no message arrives: prints batched
    /// plain output and moves the tty timers.
    pub fn tick(&mut self) -> io::Result<()> {
        match &mut self.view {
            View::Plain(p) => p.refresh(),
            View::Tty(p) => p.refresh(),
            View::Raw(_) | View::Quiet => Ok(()),
        }
    }

    /// Ends the display (final frame, failed steps' logs) and returns what
    /// was collected.
    pub fn finish(mut self) -> io::Result<Summary> {
        // Already masked: passing it through the masker again could hold
        // its end back once more, and then nothing would release it.
        if let Some(rest) = self.masker.flush() {
            self.show(rest)?;
        }
        match &mut self.view {
            View::Plain(p) => p.finish()?,
            View::Tty(p) => p.finish()?,
            View::Raw(_) | View::Quiet => {}
        }
        if let Some(t) = &mut self.trace {
            t.flush()?;
        }
        self.summary.cache = self.tally.stats();
        let view = &self.view;
        let number = |digest: &str| match view {
            View::Plain(p) => p.number(digest),
            _ => None,
        };
        self.summary.steps = self.tally.steps(&self.tails, &number);
        Ok(self.summary)
    }

    /// Drives the renderer from a stream until it ends, ticking in between.
    pub async fn run<S>(mut self, stream: S) -> io::Result<Summary>
    where
        S: Stream<Item = StatusResponse>,
    {
        let mut stream = std::pin::pin!(stream);
        let sleep = tokio::time::sleep(TICK);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(resp) => {
                        self.update(resp)?;
                        sleep.as_mut().reset(tokio::time::Instant::now() + TICK);
                    }
                    None => break,
                },
                () = &mut sleep => {
                    self.tick()?;
                    sleep.as_mut().reset(tokio::time::Instant::now() + TICK);
                }
            }
        }
        self.finish()
    }

    fn note(&mut self, resp: &StatusResponse) {
        self.tally.update(resp);
        self.tails.update(resp);
        self.summary.warnings.extend(resp.warnings.iter().cloned());
        for v in &resp.vertexes {
            if v.error.is_empty() || v.error.ends_with("context canceled") {
                continue;
            }
            if self.failed_seen.insert(v.digest.clone()) {
                self.summary.failed.push(Failure {
                    name: v.name.clone(),
                    error: v.error.clone(),
                });
            }
        }
    }
}

/// Shows `stream` on standard error in `mode`; the convenience form of
/// [`Renderer::for_stderr`] followed by [`Renderer::run`].
pub async fn render<S>(mode: Mode, stream: S, opts: Options) -> io::Result<Summary>
where
    S: Stream<Item = StatusResponse>,
{
    Renderer::for_stderr(mode, opts).run(stream).await
}

/// The terminal size of standard error, (80, 10) when unknown (upstream's
/// fallback).
pub fn stderr_size() -> (usize, usize) {
    // SAFETY: winsize is plain integers, for which all zeros is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ only writes a winsize into the struct we pass; nix offers the ioctl
    // only through its macros, which generate an unsafe fn all the same.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (80, 10)
    }
}

#[cfg(test)]
mod tests;
