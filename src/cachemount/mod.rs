//! `--cache-mounts`: RUN cache mounts that outlive the daemon. Before the build, the mounts a
//! previous run saved are unpacked into the new daemon's cache mounts, by a step of bkrun's own
//! that mounts them exactly as the build's RUNs do; after a successful build, each mount that
//! changed is packed and saved (a directory or a registry), atomically and within a size cap.
//!
//! `helper` is the step's root filesystem (bkrun itself), `pack` what runs inside it, `llb` the
//! step's definition and the mounts found in the frontend's, `store` where saves live.

pub mod helper;
pub mod llb;
pub mod pack;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::progress::{CacheMountStats, Transfer};
use crate::proto::pb;
use crate::request::build::BuildSpec;
use crate::request::cachemounts::{CacheMountsSpec, MountStore};
use crate::request::registry::RegistryAuth;
use helper::Helper;
use llb::{CacheMount, Found, Local, Step};
use store::{DirStore, Layer, Loaded, RegistryStore};

/// The session's name for the dir of saved layers.
const SEEDS_LOCAL: &str = "bkrun-cachemounts-seeds";

/// The save step: its definition, the local dirs it reads, and where its result goes (a
/// private temp dir, removed with it).
pub struct SaveStep {
    pub definition: pb::Definition,
    pub locals: HashMap<String, PathBuf>,
    pub out: PathBuf,
    _out: crate::outputs::Temp,
}

/// What the cache mounts cost and did in one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Mounts restored, the bytes of their layers, and the time it took (fetch and unpack).
    pub restored: usize,
    pub restored_bytes: u64,
    pub restore_time: Duration,
    /// Mounts saved (changed ones), the bytes of their new layers, and the time it took.
    pub saved: usize,
    pub saved_bytes: u64,
    pub save_time: Duration,
    /// Mounts the build used that had not changed since they were restored.
    pub unchanged: usize,
}

/// Where saves go.
enum Store {
    Dir(DirStore),
    Registry(Box<RegistryStore>),
}

/// One build's cache mounts.
pub struct CacheMounts {
    spec: CacheMountsSpec,
    store: Store,
    loaded: Loaded,
    helper: Helper,
    found: Found,
    /// The layer each restored mount came from, by the mount's key.
    restored: BTreeMap<String, Layer>,
    pub stats: Stats,
}

/// Whether the build can have cache mounts: a Dockerfile bkrun can read that never says
/// `type=cache` has none, and then the build is run as usual, with no extra step at all.
pub fn may_have_cache_mounts(spec: &BuildSpec) -> bool {
    if spec.frontend != "dockerfile.v0" {
        return true;
    }
    let Some(dir) = spec.locals.get("dockerfile") else {
        return true;
    };
    let name = spec
        .opts
        .get("filename")
        .map_or("Dockerfile", String::as_str);
    match std::fs::read(dir.join(name)) {
        Ok(text) => text
            .to_ascii_lowercase()
            .windows(10)
            .any(|w| w == b"type=cache"),
        Err(_) => true,
    }
}

impl CacheMounts {
    /// Before the session: reads what was saved and makes the step's root filesystem.
    pub async fn prepare(spec: &CacheMountsSpec, auth: &RegistryAuth) -> Result<CacheMounts> {
        let started = Instant::now();
        let (store, loaded) = match &spec.store {
            MountStore::Dir(d) => {
                let s = DirStore::new(d);
                let loaded = s.load()?;
                (Store::Dir(s), loaded)
            }
            MountStore::Registry(r) => {
                let s = RegistryStore::new(r, auth)?;
                // A save that cannot be pulled (the registry down, a login refused) costs the
                // build its warm start, not its result: said in one line, and built cold.
                let loaded = s.load().await.unwrap_or_else(|e| Loaded {
                    note: Some(format!("{e:#}; building without the saved cache mounts")),
                    ..Default::default()
                });
                (Store::Registry(Box::new(s)), loaded)
            }
        };
        if let Some(note) = &loaded.note {
            crate::say!("bkrun: {note}");
        }
        let helper = Helper::make()?;
        Ok(CacheMounts {
            spec: spec.clone(),
            store,
            loaded,
            helper,
            found: Found::default(),
            restored: BTreeMap::new(),
            stats: Stats {
                restore_time: started.elapsed(),
                ..Default::default()
            },
        })
    }

    /// The local dirs the build's session serves for bkrun's steps.
    pub fn locals(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![(helper::LOCAL.to_string(), self.helper.path().to_path_buf())];
        if let Some(b) = &self.loaded.blobs {
            v.push((SEEDS_LOCAL.to_string(), b.clone()));
        }
        v
    }

    /// Reads the cache mounts of the frontend's definitions; returns the step that restores
    /// those with a save, if any.
    pub fn read(&mut self, defs: &[&pb::Definition]) -> Result<Option<pb::Definition>> {
        self.found = llb::find(defs)?;
        for target in &self.found.skipped {
            crate::say!(
                "bkrun: the cache mount at {target} is not kept between runs: its contents come from another step (from= or source=)"
            );
        }
        let mut mounts: Vec<&CacheMount> = Vec::new();
        let mut args = vec![
            "seed".to_string(),
            llb::SEEDS.to_string(),
            llb::MOUNTS.to_string(),
        ];
        let mut includes = Vec::new();
        for m in &self.found.mounts {
            let Some(layer) = self.loaded.layers.iter().find(|l| l.key == m.key) else {
                continue;
            };
            args.push(format!("{}:{}", mounts.len(), layer.hex()));
            includes.push(layer.hex().to_string());
            self.restored.insert(m.key.clone(), layer.clone());
            self.stats.restored_bytes += layer.size;
            mounts.push(m);
        }
        if mounts.is_empty() {
            return Ok(None);
        }
        self.stats.restored = mounts.len();
        let step = Step {
            helper: Local {
                name: helper::LOCAL,
                includes: Vec::new(),
            },
            argv: self.helper.argv(&args),
            seeds: Some(Local {
                name: SEEDS_LOCAL,
                includes,
            }),
            mounts: &mounts,
            output: false,
            name: "[bkrun] restoring cache mounts",
        };
        Ok(Some(llb::definition(&step)))
    }

    /// The restore step failed: nothing counts as restored (a save compares with nothing).
    pub fn restore_failed(&mut self) {
        self.restored.clear();
        self.stats.restored = 0;
        self.stats.restored_bytes = 0;
    }

    /// Counts a restore step's time.
    pub fn restored_in(&mut self, took: Duration) {
        self.stats.restore_time += took;
    }

    /// After a successful build: the step that packs each mount the build used, to be solved
    /// on the build's daemon with its result exported into the step's `out`; None when the
    /// build used no mount that can be kept. A directory store is marked as being saved to.
    pub fn save_step(&mut self) -> Result<Option<SaveStep>> {
        if self.found.mounts.is_empty() {
            return Ok(None);
        }
        let mounts: Vec<&CacheMount> = self.found.mounts.iter().collect();
        let mut args = vec![
            "save".to_string(),
            llb::MOUNTS.to_string(),
            llb::OUT.to_string(),
            self.spec.max_size.to_string(),
        ];
        for (i, m) in mounts.iter().enumerate() {
            match self.restored.get(&m.key) {
                Some(l) => args.push(format!("{i}:{}", l.fingerprint)),
                None => args.push(i.to_string()),
            }
        }
        let step = Step {
            helper: Local {
                name: helper::LOCAL,
                includes: Vec::new(),
            },
            argv: self.helper.argv(&args),
            seeds: None,
            mounts: &mounts,
            output: true,
            name: "[bkrun] saving cache mounts",
        };
        let definition = llb::definition(&step);
        if let Store::Dir(store) = &mut self.store {
            store.begin()?;
        }
        let (out, temp) = crate::outputs::temps::private_dir("bkrun-cachemounts-out-")
            .context("cannot make a temp dir for the saved cache mounts (check TMPDIR)")?;
        let locals = HashMap::from([(helper::LOCAL.to_string(), self.helper.path().to_path_buf())]);
        Ok(Some(SaveStep {
            definition,
            locals,
            out,
            _out: temp,
        }))
    }

    /// After the save step ran: the changed mounts go to the store (nothing, when none changed).
    pub async fn commit(&mut self, step: SaveStep) -> Result<()> {
        let mounts: Vec<CacheMount> = self.found.mounts.clone();
        let mounts: Vec<&CacheMount> = mounts.iter().collect();
        let (layers, new) = self.collect(&mounts, &step.out)?;
        match &mut self.store {
            // Nothing changed: the last save stands as it is (and a directory's marker goes).
            Store::Dir(store) if new.is_empty() => {
                store.abandon();
                Ok(())
            }
            Store::Registry(_) if new.is_empty() => Ok(()),
            Store::Dir(store) => store.commit(&layers, &new),
            Store::Registry(store) => store.commit(&layers, &new).await,
        }
    }

    /// Says why a save failed; the build's result stands.
    pub fn save_failed(&self, e: &anyhow::Error) {
        crate::say!(
            "bkrun: cannot save the cache mounts to {}: {e:#}",
            self.spec.store
        );
    }

    /// The save's results: every layer the next run should find (new ones, and unchanged or
    /// too big mounts' previous ones, and other builds' mounts), and the new files by digest.
    fn collect(
        &mut self,
        mounts: &[&CacheMount],
        out: &Path,
    ) -> Result<(Vec<Layer>, BTreeMap<String, PathBuf>)> {
        let mut layers = Vec::new();
        let mut new = BTreeMap::new();
        for (i, m) in mounts.iter().enumerate() {
            let report: pack::Saved = serde_json::from_slice(
                &std::fs::read(out.join(format!("{i}.json")))
                    .with_context(|| format!("the save step wrote no report for mount {i}"))?,
            )?;
            let previous = self.loaded.layers.iter().find(|l| l.key == m.key);
            match report.status.as_str() {
                "saved" => {
                    let file = out.join(format!("{i}.tar.zst"));
                    let (digest, size) = store::digest_file(&file)?;
                    self.stats.saved += 1;
                    self.stats.saved_bytes += size;
                    new.insert(digest.clone(), file);
                    layers.push(Layer {
                        digest,
                        size,
                        key: m.key.clone(),
                        id: m.id.clone(),
                        target: m.target.clone(),
                        fingerprint: report.fingerprint,
                        bytes: report.bytes,
                    });
                }
                status => {
                    if status == "too-big" {
                        crate::say!(
                            "bkrun: the cache mount at {} holds {}, over the cap of {} (--cache-mounts-max-size): not saved{}",
                            m.target,
                            human(report.bytes),
                            human(self.spec.max_size),
                            if previous.is_some() { "; its last save stays" } else { "" }
                        );
                    } else {
                        self.stats.unchanged += 1;
                    }
                    layers.extend(previous.cloned());
                }
            }
        }
        // Mounts of other builds that share this store stay (another target, another Dockerfile).
        let used: Vec<&str> = mounts.iter().map(|m| m.key.as_str()).collect();
        layers.extend(
            self.loaded
                .layers
                .iter()
                .filter(|l| !used.contains(&l.key.as_str()))
                .cloned(),
        );
        Ok((layers, new))
    }
}

impl Stats {
    /// The numbers the cache line and --metadata-file show.
    pub fn numbers(&self) -> CacheMountStats {
        let transfer = |count, bytes, took| Transfer { count, bytes, took };
        CacheMountStats {
            restored: Some(transfer(
                self.restored,
                self.restored_bytes,
                self.restore_time,
            )),
            saved: Some(transfer(self.saved, self.saved_bytes, self.save_time)),
        }
    }
}

/// Bytes as the cache line and messages show them (KiB … PiB, one decimal: `2.0 GiB`); also the
/// build summary's and its diagnoses' figures.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
