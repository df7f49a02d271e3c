//! `debug workers`, `debug info`, `du`, `prune` and `prune-histories` (client::histories) over the Control API, printed exactly as buildctl prints them.
//!
//! The calls are thin; the layouts are pure functions from the daemon's records to text, so
//! they are tested against outputs recorded from buildctl v0.32.2.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::Result;
use tonic::transport::Channel;

use super::errors::failed;
use crate::gocompat::durations::go_duration;
use crate::gocompat::sizes::{bytes, Digits};
use crate::gocompat::tabwriter::{align, SPACES, TABS};
use crate::gocompat::times::go_time;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::types::{BuildkitVersion, WorkerRecord};
use crate::proto::moby::buildkit::v1::{
    DiskUsageRequest, InfoRequest, ListWorkersRequest, PruneRequest, UsageRecord,
};
use crate::proto::pb::Platform;

/// One of the commands that ask the daemon about itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Workers {
        filters: Vec<String>,
        verbose: bool,
    },
    Info,
    DiskUsage {
        filters: Vec<String>,
        verbose: bool,
    },
    Prune(Prune),
    /// Delete every unpinned build-history record; `format` is a checked `--format` template.
    PruneHistories {
        format: Option<String>,
    },
}

/// What `prune` asks the daemon to remove; sizes in bytes, the duration in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prune {
    pub filters: Vec<String>,
    pub all: bool,
    pub keep_duration: i64,
    pub reserved_space: i64,
    pub max_used_space: i64,
    pub min_free_space: i64,
    pub verbose: bool,
}

/// `prune`'s limits as given, in buildctl's flags (src/cli/ maps them here): MB for the old
/// names (--keep-storage, --keep-storage-min, --free-storage), bytes and nanoseconds for the
/// new ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneFlags {
    pub filters: Vec<String>,
    pub all: bool,
    pub verbose: bool,
    pub keep_duration: Option<i64>,
    pub keep_storage: Option<f64>,
    pub keep_storage_min: Option<f64>,
    pub free_storage: Option<f64>,
    pub reserved_space: Option<i64>,
    pub max_used_space: Option<i64>,
    pub min_free_space: Option<i64>,
}

impl From<&PruneFlags> for Prune {
    /// The request in the daemon's units: bytes and nanoseconds, 0 for "no limit".
    fn from(f: &PruneFlags) -> Prune {
        // buildctl truncates MB × 10⁶ to whole bytes.
        let mb = |v: Option<f64>| v.map(|v| (v * 1e6) as i64);
        Prune {
            filters: f.filters.clone(),
            all: f.all,
            keep_duration: f.keep_duration.unwrap_or(0),
            reserved_space: mb(f.keep_storage_min).or(f.reserved_space).unwrap_or(0),
            max_used_space: mb(f.keep_storage).or(f.max_used_space).unwrap_or(0),
            min_free_space: mb(f.free_storage).or(f.min_free_space).unwrap_or(0),
            verbose: f.verbose,
        }
    }
}

/// Removes the daemon's local-source records, the snapshots of `--local` dirs it updates in place
/// from one build to the next. A transfer cut off by SIGKILL leaves one with files and checksums
/// that disagree, and every later build of that context fails to compute its cache key; dropped,
/// the next build transfers the context whole. Returns how many went and their size.
pub async fn prune_local_sources(channel: Channel) -> Result<(usize, i64)> {
    let mut stream = ControlClient::new(channel)
        .prune(PruneRequest {
            filter: vec!["type==source.local".into()],
            ..Default::default()
        })
        .await
        .map_err(failed("failed to call prune"))?
        .into_inner();
    let (mut n, mut size) = (0, 0i64);
    while let Some(rec) = stream.message().await.map_err(failed("prune stopped"))? {
        n += 1;
        size = size.saturating_add(rec.size);
    }
    Ok((n, size))
}

/// Runs `req` against the daemon behind `channel`, writing buildctl's output to `out`.
pub async fn run(channel: Channel, req: &Request, out: &mut impl Write) -> Result<()> {
    let mut control = ControlClient::new(channel);
    match req {
        Request::Workers { filters, verbose } => {
            let workers = control
                .list_workers(ListWorkersRequest {
                    filter: filters.clone(),
                })
                .await
                .map_err(failed("failed to list workers"))?
                .into_inner()
                .record;
            let text = if *verbose {
                workers_verbose(&workers)
            } else {
                workers_table(&workers)
            };
            out.write_all(text.as_bytes())?;
        }
        Request::Info => {
            let info = control
                .info(InfoRequest {})
                .await
                .map_err(failed("failed to call info"))?
                .into_inner();
            out.write_all(info_text(info.buildkit_version.as_ref()).as_bytes())?;
        }
        Request::DiskUsage { filters, verbose } => {
            let mut records = control
                .disk_usage(DiskUsageRequest {
                    filter: filters.clone(),
                    age_limit: 0,
                })
                .await
                .map_err(failed("failed to call diskusage"))?
                .into_inner()
                .record;
            sort_usage(&mut records);
            let text = if *verbose {
                usage_verbose(&records)
            } else {
                usage_table(&records)
            };
            out.write_all(text.as_bytes())?;
            // buildctl leaves the totals out once the list is filtered.
            if filters.is_empty() {
                out.write_all(usage_summary(&records).as_bytes())?;
            }
        }
        Request::Prune(p) => {
            let mut stream = control
                .prune(PruneRequest {
                    filter: p.filters.clone(),
                    all: p.all,
                    keep_duration: p.keep_duration,
                    reserved_space: p.reserved_space,
                    max_used_space: p.max_used_space,
                    min_free_space: p.min_free_space,
                })
                .await
                .map_err(failed("failed to call prune"))?
                .into_inner();
            let mut total = 0i64;
            let mut first = true;
            // Each removal is shown as it is reported, so a long prune shows progress.
            while let Some(rec) = stream.message().await.map_err(failed("prune stopped"))? {
                total = total.saturating_add(rec.size);
                out.write_all(pruned(&rec, p.verbose, first).as_bytes())?;
                out.flush()?;
                first = false;
            }
            out.write_all(prune_total(total).as_bytes())?;
        }
        Request::PruneHistories { format } => {
            super::histories::prune(&mut control, format.as_deref(), out).await?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `debug workers`: one line per worker, its ID and platforms.
pub fn workers_table(workers: &[WorkerRecord]) -> String {
    let mut t = String::from("ID\tPLATFORMS\n");
    for w in workers {
        let _ = writeln!(t, "{}\t{}", w.id, platforms(&w.platforms));
    }
    align(TABS, &t)
}

/// `debug workers -v`: every worker's version, labels, devices and GC rules, a blank line after each.
pub fn workers_verbose(workers: &[WorkerRecord]) -> String {
    let mut t = String::new();
    for w in workers {
        let v = w.buildkit_version.clone().unwrap_or_default();
        let _ = writeln!(t, "ID:\t{}", w.id);
        let _ = writeln!(t, "Platforms:\t{}", platforms(&w.platforms));
        let _ = writeln!(t, "BuildKit:\t{} {} {}", v.package, v.version, v.revision);
        if !v.dockerfile_version.is_empty() {
            let _ = writeln!(t, "Dockerfile:\t{}", v.dockerfile_version);
        }
        t.push_str("Labels:\n");
        for (k, v) in sorted(&w.labels) {
            let _ = writeln!(t, "\t{k}:\t{v}");
        }
        if !w.cdi_devices.is_empty() {
            t.push_str("Devices:\n");
            for d in &w.cdi_devices {
                let _ = writeln!(t, "\tName:\t{}", d.name);
                if d.on_demand {
                    let _ = writeln!(t, "\tOnDemand:\t{}", d.on_demand);
                } else {
                    let _ = writeln!(t, "\tAutoAllow:\t{}", d.auto_allow);
                }
                for (k, v) in sorted(&d.annotations) {
                    let _ = writeln!(t, "\tAnnotations:\t{k}:\t{v}");
                }
            }
            t.push('\n');
        }
        for (i, rule) in w.gc_policy.iter().enumerate() {
            let _ = writeln!(t, "GC Policy rule#{i}:");
            let _ = writeln!(t, "\tAll:\t{}", rule.all);
            if !rule.filters.is_empty() {
                let _ = writeln!(t, "\tFilters:\t{}", rule.filters.join(" "));
            }
            if rule.keep_duration > 0 {
                let _ = writeln!(t, "\tKeep duration:\t{}", go_duration(rule.keep_duration));
            }
            let sizes = [
                ("Reserved space", rule.reserved_space),
                ("Minimum free space", rule.min_free_space),
                ("Maximum used space", rule.max_used_space),
            ];
            for (label, n) in sizes {
                if n > 0 {
                    let _ = writeln!(t, "\t{label}:\t{}", bytes(n, Digits::Shortest));
                }
            }
        }
        t.push('\n');
    }
    align(TABS, &t)
}

/// `debug info`: the daemon's version, and the built-in Dockerfile frontend's when it has one.
pub fn info_text(v: Option<&BuildkitVersion>) -> String {
    let v = v.cloned().unwrap_or_default();
    let mut t = format!("BuildKit:\t{} {} {}\n", v.package, v.version, v.revision);
    if !v.dockerfile_version.is_empty() {
        let _ = writeln!(t, "Dockerfile:\t{}", v.dockerfile_version);
    }
    align(SPACES, &t)
}

/// buildctl lists records smallest first, ties by ID.
pub fn sort_usage(records: &mut [UsageRecord]) {
    records.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.id.cmp(&b.id)));
}

const USAGE_HEADER: &str = "ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED\n";

/// `du`: one row per record. The LAST ACCESSED heading has never had values under it in buildctl.
pub fn usage_table(records: &[UsageRecord]) -> String {
    let mut t = String::from(USAGE_HEADER);
    for r in records {
        usage_row(&mut t, r);
    }
    align(TABS, &t)
}

/// A row: `*` marks a mutable record's ID and a shared record's size.
fn usage_row(t: &mut String, r: &UsageRecord) {
    let id = if r.mutable {
        format!("{}*", r.id)
    } else {
        r.id.clone()
    };
    let mut size = bytes(r.size, Digits::Two);
    if r.shared {
        size.push('*');
    }
    let _ = writeln!(t, "{id:<71}\t{:<11}\t{size}\t", !r.in_use);
}

/// `du -v`: a block of fields per record, a blank line after each.
pub fn usage_verbose(records: &[UsageRecord]) -> String {
    let mut t = String::new();
    for r in records {
        usage_fields(&mut t, r);
    }
    align(TABS, &t)
}

fn usage_fields(t: &mut String, r: &UsageRecord) {
    let _ = writeln!(t, "ID:\t{}", r.id);
    if !r.parents.is_empty() {
        let _ = writeln!(t, "Parents:\t{}", r.parents.join(";"));
    }
    let _ = writeln!(t, "Created at:\t{}", go_time(r.created_at.as_ref()));
    let _ = writeln!(t, "Mutable:\t{}", r.mutable);
    let _ = writeln!(t, "Reclaimable:\t{}", !r.in_use);
    let _ = writeln!(t, "Shared:\t{}", r.shared);
    let _ = writeln!(t, "Size:\t{}", bytes(r.size, Digits::Two));
    if !r.description.is_empty() {
        let _ = writeln!(t, "Description:\t{}", r.description);
    }
    let _ = writeln!(t, "Usage count:\t{}", r.usage_count);
    if let Some(ts) = &r.last_used_at {
        let _ = writeln!(t, "Last used:\t{}", go_time(Some(ts)));
    }
    if !r.record_type.is_empty() {
        let _ = writeln!(t, "Type:\t{}", r.record_type);
    }
    t.push('\n');
}

/// The totals under `du`; shared and private only appear when something is shared.
pub fn usage_summary(records: &[UsageRecord]) -> String {
    let (mut total, mut reclaimable, mut shared) = (0i64, 0i64, 0i64);
    for r in records {
        if r.size > 0 {
            total += r.size;
            if !r.in_use {
                reclaimable += r.size;
            }
        }
        if r.shared {
            shared += r.size;
        }
    }
    let mut t = String::new();
    if shared > 0 {
        let _ = writeln!(t, "Shared:\t{}", bytes(shared, Digits::Two));
        let _ = writeln!(t, "Private:\t{}", bytes(total - shared, Digits::Two));
    }
    let _ = writeln!(t, "Reclaimable:\t{}", bytes(reclaimable, Digits::Two));
    let _ = writeln!(t, "Total:\t{}", bytes(total, Digits::Two));
    align(TABS, &t)
}

/// One removed record as `prune` shows it. buildctl aligns each row on its own (the header
/// goes with the first), so column widths can differ from `du`'s for the same records.
pub fn pruned(r: &UsageRecord, verbose: bool, first: bool) -> String {
    let mut t = String::new();
    if verbose {
        usage_fields(&mut t, r);
    } else {
        if first {
            t.push_str(USAGE_HEADER);
        }
        usage_row(&mut t, r);
    }
    align(TABS, &t)
}

/// The line after the removed records.
pub fn prune_total(total: i64) -> String {
    align(TABS, &format!("Total:\t{}\n", bytes(total, Digits::Two)))
}

fn sorted<V>(m: &std::collections::HashMap<String, V>) -> Vec<(&String, &V)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Platforms as `os/arch[/variant]`, comma-separated, after the normalisation buildctl applies
/// (so an amd64 `v1` variant or an arm64 `v8` one is not shown).
pub fn platforms(list: &[Platform]) -> String {
    list.iter().map(platform).collect::<Vec<_>>().join(",")
}

fn platform(p: &Platform) -> String {
    let os = match p.os.to_lowercase().as_str() {
        // buildctl fills a missing OS in with its own, and it runs here, on Linux.
        "" => "linux".to_string(),
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    };
    let (arch, variant) = normalize_arch(&p.architecture.to_lowercase(), &p.variant.to_lowercase());
    [os, arch, variant]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (a, v) = match (arch, variant) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", "9" | "9.0" | "v9.0") => ("arm64", "v9"),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", v @ ("5" | "6" | "8")) => return ("arm".into(), format!("v{v}")),
        (a, v) => (a, v),
    };
    (a.into(), v.into())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost_types::Timestamp;

    use super::*;
    use crate::proto::moby::buildkit::v1::types::{CdiDevice, GcPolicy};

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/admin/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn plat(arch: &str, variant: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        }
    }

    /// The worker behind the recorded outputs.
    fn worker() -> WorkerRecord {
        let labels = [
            ("executor", "oci"),
            ("hostname", "vm"),
            ("network", "host"),
            ("oci.process-mode", "sandbox"),
            ("selinux.enabled", "false"),
            ("snapshotter", "overlayfs"),
        ];
        let big = |all| GcPolicy {
            all,
            reserved_space: 10_000_000_000,
            min_free_space: 51_000_000_000,
            max_used_space: 100_000_000_000,
            ..Default::default()
        };
        let hours = |h: i64| h * 3_600_000_000_000;
        WorkerRecord {
            id: "zasukgu0y5ifwg2vp6sy9fc87".into(),
            labels: labels
                .iter()
                .map(|(k, v)| {
                    (
                        format!("org.mobyproject.buildkit.worker.{k}"),
                        v.to_string(),
                    )
                })
                .collect(),
            platforms: vec![
                plat("amd64", ""),
                plat("amd64", "v2"),
                plat("amd64", "v3"),
                plat("amd64", "v4"),
                plat("386", ""),
            ],
            gc_policy: vec![
                GcPolicy {
                    filters: vec![
                        "type==source.local".into(),
                        "type==exec.cachemount".into(),
                        "type==source.git.checkout".into(),
                    ],
                    keep_duration: hours(48),
                    max_used_space: 512_000_000,
                    ..Default::default()
                },
                GcPolicy {
                    keep_duration: hours(1440),
                    ..big(false)
                },
                big(false),
                big(true),
            ],
            buildkit_version: Some(version()),
            cdi_devices: vec![],
        }
    }

    fn version() -> BuildkitVersion {
        BuildkitVersion {
            package: "github.com/moby/buildkit".into(),
            version: "v0.32.2".into(),
            revision: String::new(),
            dockerfile_version: "1.26.0".into(),
        }
    }

    fn ts(secs: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: secs,
            nanos,
        })
    }

    /// The records of the recorded `du`, in the daemon's (unsorted) order.
    fn records() -> Vec<UsageRecord> {
        const T: i64 = 1_795_263_076; // 2026-11-21 12:11:16 UTC
        let rec = |id: &str, size, created, used, desc: &str, kind: &str| UsageRecord {
            id: id.into(),
            mutable: true,
            size,
            created_at: ts(T, created),
            last_used_at: ts(T, used),
            usage_count: 1,
            description: desc.into(),
            record_type: kind.into(),
            ..Default::default()
        };
        vec![
            rec(
                "tkyhit0mkkzqrwi4htahajvf2",
                8192,
                234_025_529,
                385_095_120,
                "[1/1] COPY somefile /",
                "regular",
            ),
            rec(
                "7i8zt2nasgkfx8hunnkyy86dz",
                8192,
                101_260_570,
                380_234_697,
                "local source for dockerfile",
                "source.local",
            ),
            rec(
                "s7i2ruiltusfaiwshh28agsjw",
                4096,
                122_015_003,
                381_571_095,
                "local source for context",
                "source.local",
            ),
            rec(
                "61t1ocio3c52y1pg01xnjkjjz",
                8192,
                187_866_947,
                378_846_222,
                "local source for context",
                "source.local",
            ),
        ]
    }

    fn sorted_records() -> Vec<UsageRecord> {
        let mut r = records();
        sort_usage(&mut r);
        r
    }

    #[test]
    fn workers_match_buildctl() {
        assert_eq!(workers_table(&[worker()]), fixture("workers.txt"));
        assert_eq!(workers_verbose(&[worker()]), fixture("workers-v.txt"));
        assert_eq!(workers_table(&[]), fixture("workers-none.txt"));
    }

    #[test]
    fn info_matches_buildctl() {
        assert_eq!(info_text(Some(&version())), fixture("info.txt"));
    }

    #[test]
    fn du_matches_buildctl() {
        let r = sorted_records();
        assert_eq!(usage_table(&r) + &usage_summary(&r), fixture("du.txt"));
        assert_eq!(usage_verbose(&r) + &usage_summary(&r), fixture("du-v.txt"));
        assert_eq!(usage_table(&r[3..]), fixture("du-filter.txt"));
        assert_eq!(
            usage_table(&[]) + &usage_summary(&[]),
            fixture("du-empty.txt")
        );
    }

    #[test]
    fn prune_matches_buildctl() {
        let all = sorted_records();
        let show = |recs: &[UsageRecord], verbose: bool| {
            let mut out = String::new();
            let mut total = 0;
            for (i, r) in recs.iter().enumerate() {
                total += r.size;
                out += &pruned(r, verbose, i == 0);
            }
            out + &prune_total(total)
        };
        assert_eq!(show(&all[3..], false), fixture("prune-filter.txt"));
        // The daemon reports no record type for what it removed.
        let removed: Vec<_> = [1, 2, 0]
            .iter()
            .map(|&i| UsageRecord {
                record_type: String::new(),
                ..all[i].clone()
            })
            .collect();
        assert_eq!(show(&removed, true), fixture("prune-v.txt"));
        assert_eq!(show(&[], false), fixture("prune-empty.txt"));
    }

    #[test]
    fn shared_and_in_use_records() {
        let mut r = sorted_records();
        r[0].shared = true;
        r[1].in_use = true;
        r[1].mutable = false;
        r[1].parents = vec!["a".into(), "b".into()];
        let table = usage_table(&r);
        let row = format!(
            "\n{:<71}\tfalse      \t8.19kB\t\n",
            "61t1ocio3c52y1pg01xnjkjjz"
        );
        assert!(table.contains(&row), "{table}");
        assert!(table.contains("\ttrue       \t4.10kB*\t\n"), "{table}");
        assert_eq!(
            usage_summary(&r),
            "Shared:\t\t4.10kB\nPrivate:\t24.58kB\nReclaimable:\t20.48kB\nTotal:\t\t28.67kB\n"
        );
        assert!(usage_verbose(&r).contains("\nParents:\ta;b\n"));
    }

    #[test]
    fn devices_in_verbose_workers() {
        let mut w = worker();
        w.gc_policy.clear();
        w.labels = HashMap::from([("k".into(), "v".into())]);
        w.cdi_devices = vec![
            CdiDevice {
                name: "vendor.com/gpu=all".into(),
                auto_allow: true,
                annotations: HashMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
                on_demand: false,
            },
            CdiDevice {
                name: "x".into(),
                on_demand: true,
                ..Default::default()
            },
        ];
        let t = workers_verbose(&[w]);
        assert!(
            t.ends_with("Labels:\n\tk:\tv\nDevices:\n\tName:\t\tvendor.com/gpu=all\n\tAutoAllow:\ttrue\n\tAnnotations:\ta:\t1\n\tAnnotations:\tb:\t2\n\tName:\t\tx\n\tOnDemand:\ttrue\n\n\n"),
            "{t}"
        );
    }

    #[test]
    fn platform_normalisation() {
        let p = |os: &str, arch: &str, variant: &str| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        };
        assert_eq!(
            platforms(&[
                p("linux", "x86_64", "v1"),
                p("linux", "aarch64", "v8"),
                p("", "arm", ""),
                p("Linux", "armel", ""),
                p("linux", "arm64", "9.0"),
                p("windows", "amd64", ""),
            ]),
            "linux/amd64,linux/arm64,linux/arm/v7,linux/arm/v6,linux/arm64/v9,windows/amd64"
        );
    }
}
