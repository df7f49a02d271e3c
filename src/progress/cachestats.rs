//! What the cache did for one build, read from its Status stream: how many steps were cached (counted as the plain view prints `CACHED`) of how many finished, and how long the registry cache's import and export took; shown as one line when the build ends.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::trace::{merge_intervals, Interval, Trace};
use crate::gocompat::times::Nanos;
use crate::proto::moby::buildkit::v1::StatusResponse;

/// BuildKit's names for the registry cache's vertices (v0.32.2): the importer's is this followed
/// by the cache's id (for a registry, its ref), the exporter's is its own.
const IMPORT_PREFIX: &str = "importing cache manifest from ";
const REGISTRY_EXPORT: &str = "exporting cache to registry";

/// The other cache types' import ids: BuildKit names them `TYPE:HASH` (a decimal hash), where a
/// registry's id is its ref.
const OTHER_IMPORTERS: &[&str] = &["local", "gha", "s3", "azblob", "gcs", "oss"];

/// What the cache did: the numbers behind the last line of a build and `--metadata-file`'s
/// `"bkrun"` key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheStats {
    /// Steps BuildKit took from the cache: exactly the `CACHED` lines of the plain view, each
    /// step once.
    pub steps_cached: usize,
    /// Steps that finished without error, cached or run; bookkeeping that is never cached
    /// (loading local files, resolving image metadata, exporting) is left out.
    pub steps_total: usize,
    /// The registry cache's imports, when there were any.
    pub registry_import: Option<Import>,
    /// The registry cache's export, when there was one.
    pub registry_export: Option<Export>,
    /// RUN cache mounts restored before and saved after the build (filled in by whoever did
    /// that; None when they were not asked for).
    pub cache_mounts: Option<CacheMountStats>,
}

/// The registry cache's imports: their time together, and how many of them failed (a branch's
/// ref that does not exist yet, an unreadable registry).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Import {
    pub took: Duration,
    pub refs: usize,
    pub failed: usize,
}

/// The registry cache's export: its time, and whether it failed (with ignore-error=true the
/// build succeeds anyway).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Export {
    pub took: Duration,
    pub failed: bool,
}

/// RUN cache mounts moved in or out of the daemon's state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheMountStats {
    pub restored: Option<Transfer>,
    pub saved: Option<Transfer>,
}

/// Some cache mounts, their size and the time moving them took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transfer {
    pub count: usize,
    pub bytes: u64,
    pub took: Duration,
}

impl CacheStats {
    /// The one line printed when a build ends, e.g. `bkrun: cache: 7 of 9 steps cached;
    /// registry cache imported in 0.4s, exported in 1.2s`.
    pub fn line(&self) -> String {
        let step = if self.steps_total == 1 {
            "step"
        } else {
            "steps"
        };
        let mut parts = vec![format!(
            "{} of {} {step} cached",
            self.steps_cached, self.steps_total
        )];
        let mut registry = Vec::new();
        if let Some(i) = &self.registry_import {
            let mut s = format!("imported in {}", secs(i.took));
            if i.failed > 0 {
                s.push_str(&format!(" ({} of {} refs unavailable)", i.failed, i.refs));
            }
            registry.push(s);
        }
        if let Some(e) = &self.registry_export {
            registry.push(match e.failed {
                true => format!("export failed after {}", secs(e.took)),
                false => format!("exported in {}", secs(e.took)),
            });
        }
        if !registry.is_empty() {
            parts.push(format!("registry cache {}", registry.join(", ")));
        }
        if let Some(m) = self.cache_mounts.as_ref().and_then(CacheMountStats::shown) {
            parts.push(m);
        }
        format!("bkrun: cache: {}", parts.join("; "))
    }
}

impl CacheMountStats {
    /// `cache mounts restored 2 (14.2 MiB, 0.8s), saved 1 (3.1 MiB, 1.1s)`; None when neither.
    fn shown(&self) -> Option<String> {
        let moved = [("restored", &self.restored), ("saved", &self.saved)]
            .into_iter()
            .filter_map(|(what, t)| {
                t.map(|t| {
                    format!(
                        "{what} {} ({}, {})",
                        t.count,
                        mebibytes(t.bytes),
                        secs(t.took)
                    )
                })
            })
            .collect::<Vec<_>>();
        (!moved.is_empty()).then(|| format!("cache mounts {}", moved.join(", ")))
    }
}

/// Seconds to a tenth, as the plain view shows a step's time.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Collects [`CacheStats`] from the Status stream in every progress mode. Its own [`Trace`]
/// folds vertices into steps exactly as the plain view does (progress groups as one step); it
/// is fed vertices only, so it holds no logs.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    trace: Trace,
    /// The registry cache's import and export vertices: each run's start → stop, and the error.
    imports: HashMap<String, Runs>,
    exports: HashMap<String, Runs>,
}

#[derive(Debug, Default)]
struct Runs {
    intervals: BTreeMap<Nanos, Interval>,
    error: bool,
}

impl Tally {
    pub(crate) fn update(&mut self, resp: &StatusResponse) {
        if resp.vertexes.is_empty() {
            return;
        }
        let vertices = StatusResponse {
            vertexes: resp.vertexes.clone(),
            ..StatusResponse::default()
        };
        // The trace's clock only paces the views' redraws; counting needs none.
        self.trace.update(&vertices, 0);
        for v in &resp.vertexes {
            let runs = if is_registry_import(&v.name) {
                self.imports.entry(v.digest.clone()).or_default()
            } else if v.name == REGISTRY_EXPORT {
                self.exports.entry(v.digest.clone()).or_default()
            } else {
                continue;
            };
            let info = super::trace::VertexInfo::from(v);
            if let Some(start) = info.started {
                runs.intervals.insert(
                    start,
                    Interval {
                        start: Some(start),
                        stop: info.completed,
                    },
                );
            }
            runs.error |= !v.error.is_empty();
        }
    }

    /// The steps seen, for the build's summary.
    pub(crate) fn steps(
        &self,
        tails: &super::steps::Tails,
        number: &dyn Fn(&str) -> Option<usize>,
    ) -> Vec<super::Step> {
        super::steps::steps(&self.trace, tails, number)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let (mut cached, mut total) = (0, 0);
        for v in &self.trace.vtxs {
            // As the plain view: a hidden group is never shown; a failed or cancelled step
            // has not finished; a step reported cached prints CACHED whatever its name.
            if v.hidden || !v.is_completed() || !v.info.error.is_empty() {
                continue;
            }
            if v.info.cached {
                cached += 1;
                total += 1;
            } else if !never_cached(&v.info.name) {
                total += 1;
            }
        }
        let import = (!self.imports.is_empty()).then(|| Import {
            took: took(self.imports.values()),
            refs: self.imports.len(),
            failed: self.imports.values().filter(|r| r.error).count(),
        });
        let export = (!self.exports.is_empty()).then(|| Export {
            took: took(self.exports.values()),
            failed: self.exports.values().any(|r| r.error),
        });
        CacheStats {
            steps_cached: cached,
            steps_total: total,
            registry_import: import,
            registry_export: export,
            cache_mounts: None,
        }
    }
}

/// The time the vertices' finished runs took, summed (a run still going when the stream ended
/// is not counted).
fn took<'a>(runs: impl Iterator<Item = &'a Runs>) -> Duration {
    let nanos: i64 = runs
        .flat_map(|r| merge_intervals(r.intervals.values().copied()))
        .filter_map(|i| Some(i.stop? - i.start?))
        .filter(|&n| n > 0)
        .sum();
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// Whether a cache importer's vertex is a registry's: its id is the ref, where the other types'
/// are `TYPE:DIGITS`.
fn is_registry_import(name: &str) -> bool {
    let Some(id) = name.strip_prefix(IMPORT_PREFIX) else {
        return false;
    };
    match id.split_once(':') {
        Some((kind, hash)) if OTHER_IMPORTERS.contains(&kind) => {
            hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_digit())
        }
        _ => true,
    }
}

/// Vertices that are bookkeeping rather than build steps and that BuildKit never takes from
/// the cache: loading the client's files and resolving image metadata (`[internal] load …`,
/// `[context NAME] load …`, `[internal] resolve …`), registry logins (`[auth] …`), exporting the
/// result or the cache, importing the cache, and resolving an image's config. Counting them would
/// keep a build whose every step was cached from ever reading `N of N`.
fn never_cached(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "[auth] ",
        "exporting ",
        IMPORT_PREFIX,
        "resolve image config for ",
        "Verifying build result",
    ];
    if PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    let Some((tag, rest)) = name.strip_prefix('[').and_then(|n| n.split_once("] ")) else {
        return false;
    };
    // `[internal]`, `[linux/arm64 internal]` (a multi-platform build), `[context NAME]`.
    let bookkeeping =
        tag == "internal" || tag.ends_with(" internal") || tag.starts_with("context ");
    bookkeeping
        && ["load ", "resolve ", "OCI load "]
            .iter()
            .any(|p| rest.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::moby::buildkit::v1::Vertex;
    use crate::proto::pb::ProgressGroup;

    fn ts(secs: f64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: secs.trunc() as i64,
            nanos: (secs.fract() * 1e9).round() as i32,
        })
    }

    fn vtx(digest: &str, name: &str, started: f64, completed: Option<f64>, cached: bool) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            started: ts(started),
            completed: completed.and_then(ts),
            cached,
            ..Vertex::default()
        }
    }

    fn feed(t: &mut Tally, vs: Vec<Vertex>) {
        t.update(&StatusResponse {
            vertexes: vs,
            ..StatusResponse::default()
        });
    }

    #[test]
    fn steps_are_counted_once_as_plain_shows_them() {
        let mut t = Tally::default();
        feed(
            &mut t,
            vec![
                vtx(
                    "a",
                    "[internal] load build definition from Dockerfile",
                    1.0,
                    None,
                    false,
                ),
                vtx(
                    "b",
                    "[1/3] FROM docker.io/library/busybox",
                    1.0,
                    None,
                    false,
                ),
            ],
        );
        feed(
            &mut t,
            vec![
                vtx(
                    "a",
                    "[internal] load build definition from Dockerfile",
                    1.0,
                    Some(1.1),
                    false,
                ),
                vtx(
                    "b",
                    "[1/3] FROM docker.io/library/busybox",
                    1.0,
                    Some(1.0),
                    true,
                ),
                // Reported twice: still one step.
                vtx(
                    "b",
                    "[1/3] FROM docker.io/library/busybox",
                    1.0,
                    Some(1.0),
                    true,
                ),
                vtx("c", "[2/3] RUN make", 1.2, Some(3.0), false),
                vtx("d", "[3/3] RUN fail", 1.2, Some(3.0), false),
                vtx(
                    "e",
                    "[internal] setting cache mount permissions",
                    1.0,
                    Some(1.0),
                    true,
                ),
                vtx("f", "exporting to image", 3.0, Some(3.5), false),
                vtx("g", "[3/3] RUN still going", 3.0, None, false),
            ],
        );
        let mut failed = vtx("d", "[3/3] RUN fail", 1.2, Some(3.0), false);
        failed.error = "exit code: 1".into();
        feed(&mut t, vec![failed]);
        let s = t.stats();
        // b and e are CACHED (e is [internal] yet a real step); c ran; a, f are bookkeeping.
        assert_eq!((s.steps_cached, s.steps_total), (2, 3));
        assert_eq!(s.registry_import, None);
        assert_eq!(s.line(), "bkrun: cache: 2 of 3 steps cached");
    }

    #[test]
    fn a_progress_group_is_one_step_cached_only_when_all_its_members_are() {
        let group = |d: &str, cached: bool| Vertex {
            progress_group: Some(ProgressGroup {
                id: "g".into(),
                name: "[2/2] COPY --link a b".into(),
                weak: false,
            }),
            ..vtx(d, "member", 1.0, Some(1.5), cached)
        };
        let mut t = Tally::default();
        feed(&mut t, vec![group("m1", true), group("m2", true)]);
        assert_eq!((t.stats().steps_cached, t.stats().steps_total), (1, 1));
        feed(&mut t, vec![group("m3", false)]);
        assert_eq!((t.stats().steps_cached, t.stats().steps_total), (0, 1));
    }

    #[test]
    fn registry_cache_times_come_from_its_vertices() {
        let mut t = Tally::default();
        let mut missing = vtx(
            "i1",
            "importing cache manifest from r/c:feature-x",
            1.0,
            Some(1.25),
            false,
        );
        missing.error = "r/c:feature-x: not found".into();
        feed(
            &mut t,
            vec![
                missing,
                vtx(
                    "i2",
                    "importing cache manifest from 127.0.0.1:5000/c:main",
                    1.25,
                    Some(1.4),
                    false,
                ),
                // Other cache types are not the registry's.
                vtx(
                    "l",
                    "importing cache manifest from local:15821783609297185231",
                    1.0,
                    Some(9.0),
                    false,
                ),
                vtx("x", "exporting cache to registry", 5.0, None, false),
            ],
        );
        feed(
            &mut t,
            vec![vtx(
                "x",
                "exporting cache to registry",
                5.0,
                Some(6.2),
                false,
            )],
        );
        let s = t.stats();
        assert_eq!(
            s.registry_import,
            Some(Import {
                took: Duration::from_millis(400),
                refs: 2,
                failed: 1
            })
        );
        assert_eq!(s.registry_export.unwrap().took, Duration::from_millis(1200));
        assert_eq!(
            s.line(),
            "bkrun: cache: 0 of 0 steps cached; registry cache imported in 0.4s (1 of 2 refs unavailable), exported in 1.2s"
        );
    }

    #[test]
    fn the_line_names_what_happened_and_cache_mounts_when_given() {
        let s = CacheStats {
            steps_cached: 7,
            steps_total: 9,
            registry_import: Some(Import {
                took: Duration::from_millis(400),
                refs: 1,
                failed: 0,
            }),
            registry_export: Some(Export {
                took: Duration::from_millis(1200),
                failed: false,
            }),
            cache_mounts: Some(CacheMountStats {
                restored: Some(Transfer {
                    count: 2,
                    bytes: 14_889_779,
                    took: Duration::from_millis(800),
                }),
                saved: Some(Transfer {
                    count: 1,
                    bytes: 3_250_586,
                    took: Duration::from_millis(1100),
                }),
            }),
        };
        assert_eq!(
            s.line(),
            "bkrun: cache: 7 of 9 steps cached; registry cache imported in 0.4s, exported in 1.2s; cache mounts restored 2 (14.2 MiB, 0.8s), saved 1 (3.1 MiB, 1.1s)"
        );
        let s = CacheStats {
            steps_total: 1,
            registry_export: Some(Export {
                took: Duration::from_millis(50),
                failed: true,
            }),
            cache_mounts: Some(CacheMountStats::default()),
            ..CacheStats::default()
        };
        assert_eq!(
            s.line(),
            "bkrun: cache: 0 of 1 step cached; registry cache export failed after 0.1s"
        );
    }

    #[test]
    fn bookkeeping_is_not_a_step() {
        for name in [
            "[internal] load build definition from Dockerfile",
            "[internal] load .dockerignore",
            "[internal] load build context",
            "[internal] load metadata for docker.io/library/alpine:latest",
            "[linux/arm64 internal] load metadata for docker.io/library/alpine:latest",
            "[internal] resolve main build context metadata",
            "[context busybox] load from client",
            "[context base] OCI load from client",
            "[auth] library/alpine:pull token for registry-1.docker.io",
            "exporting to image",
            "exporting cache to registry",
            "importing cache manifest from r/c:main",
            "resolve image config for docker-image://docker.io/library/busybox:latest",
        ] {
            assert!(never_cached(name), "{name}");
        }
        for name in [
            "[1/3] FROM docker.io/library/busybox",
            "[stage-1 2/2] COPY --from=build /out /",
            "[internal] setting cache mount permissions",
            "[internal] preparing inline document",
            "[context busybox] copy /busybox",
            "mkfile /hello",
        ] {
            assert!(!never_cached(name), "{name}");
        }
    }
}
