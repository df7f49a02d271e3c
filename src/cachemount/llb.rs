//! The LLB side of cache mounts: finding the `RUN --mount=type=cache` mounts in the definition
//! the Dockerfile frontend returned, and writing the one exec step that seeds or saves them
//! through the very same mounts. The daemon keys a cache mount by its ID plus, when the RUN set
//! uid/gid/mode, the ID of the frontend's "[internal] setting cache mount permissions" result,
//! which is stable only inside one daemon; copying that input op byte for byte gives our step
//! the same key by construction.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::pb;

/// One cache mount the build's steps use.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheMount {
    /// The mount's ID as the frontend wrote it (its namespace prefix included).
    pub id: String,
    /// Where the first RUN that uses it mounts it, for messages.
    pub target: String,
    pub sharing: i32,
    pub selector: String,
    /// The input op and the ops it needs (raw bytes, as the frontend wrote them), if any.
    pub input: Option<Input>,
    /// What a saved mount is matched by across runs: the ID, the input op's digest, the selector.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub digest: String,
    pub index: i64,
    /// Every op the input needs, by digest, with its metadata.
    pub ops: BTreeMap<String, (Vec<u8>, Option<pb::OpMetadata>)>,
}

/// The cache mounts of one or more definitions (a multi-platform build returns several), each
/// key once, and the RUN targets of those that cannot be kept.
#[derive(Debug, Default)]
pub struct Found {
    pub mounts: Vec<CacheMount>,
    /// `from=`/`source=` mounts: their contents come from another step, so they are not saved.
    pub skipped: Vec<String>,
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Ops of a definition by digest.
struct Graph<'a> {
    ops: HashMap<String, (&'a [u8], pb::Op)>,
    metadata: &'a HashMap<String, pb::OpMetadata>,
}

impl<'a> Graph<'a> {
    fn new(def: &'a pb::Definition) -> Result<Graph<'a>> {
        let mut ops = HashMap::new();
        for bytes in &def.def {
            let op =
                pb::Op::decode(bytes.as_slice()).context("the frontend's LLB did not decode")?;
            ops.insert(sha256_digest(bytes), (bytes.as_slice(), op));
        }
        Ok(Graph {
            ops,
            metadata: &def.metadata,
        })
    }

    /// `digest` and every op below it.
    fn closure(&self, digest: &str) -> BTreeMap<String, (Vec<u8>, Option<pb::OpMetadata>)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![digest.to_string()];
        while let Some(d) = todo.pop() {
            if out.contains_key(&d) {
                continue;
            }
            let Some((bytes, op)) = self.ops.get(&d) else {
                continue;
            };
            todo.extend(op.inputs.iter().map(|i| i.digest.clone()));
            out.insert(d.clone(), (bytes.to_vec(), self.metadata.get(&d).cloned()));
        }
        out
    }

    /// Whether `digest` is the frontend's permissions step: one mkdir on nothing.
    fn is_permissions_step(&self, digest: &str) -> bool {
        let Some((_, op)) = self.ops.get(digest) else {
            return false;
        };
        match &op.op {
            Some(pb::op::Op::File(f)) => {
                op.inputs.is_empty()
                    && f.actions.len() == 1
                    && matches!(f.actions[0].action, Some(pb::file_action::Action::Mkdir(_)))
            }
            _ => false,
        }
    }
}

/// The cache mounts of `defs`, in the order the definitions list their steps.
pub fn find(defs: &[&pb::Definition]) -> Result<Found> {
    let mut found = Found::default();
    for def in defs {
        let graph = Graph::new(def)?;
        for bytes in &def.def {
            let op = pb::Op::decode(bytes.as_slice())?;
            let Some(pb::op::Op::Exec(exec)) = &op.op else {
                continue;
            };
            for m in &exec.mounts {
                if m.mount_type != pb::MountType::Cache as i32 {
                    continue;
                }
                let Some(cache) = &m.cache_opt else { continue };
                let input = match usize::try_from(m.input) {
                    Err(_) => None,
                    Ok(i) => {
                        let Some(inp) = op.inputs.get(i) else {
                            bail!("the frontend's LLB names an input that is not there");
                        };
                        Some(inp.clone())
                    }
                };
                let keepable = match &input {
                    None => m.selector.is_empty() || m.selector == "/",
                    Some(i) => graph.is_permissions_step(&i.digest) && m.selector == "/cache",
                };
                if !keepable {
                    if !found.skipped.contains(&m.dest) {
                        found.skipped.push(m.dest.clone());
                    }
                    continue;
                }
                let key = key_of(&cache.id, input.as_ref(), &m.selector);
                if found.mounts.iter().any(|f| f.key == key) {
                    continue;
                }
                found.mounts.push(CacheMount {
                    id: cache.id.clone(),
                    target: m.dest.clone(),
                    sharing: cache.sharing,
                    selector: m.selector.clone(),
                    input: input.map(|i| Input {
                        ops: graph.closure(&i.digest),
                        digest: i.digest,
                        index: i.index,
                    }),
                    key,
                });
            }
        }
    }
    Ok(found)
}

fn key_of(id: &str, input: Option<&pb::Input>, selector: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0]);
    if let Some(i) = input {
        h.update(format!("{}:{}", i.digest, i.index).as_bytes());
    }
    h.update([0]);
    h.update(selector.as_bytes());
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where our step mounts things: its root is bkrun's own binary (a local dir), the saved layers
/// come in as another, each cache mount goes at MOUNTS/<i>, and a save writes into OUT.
pub const ROOT_BIN: &str = "/.bkrun/bkrun";
pub const LIB_DIR: &str = "/.bkrun/lib";
pub const SEEDS: &str = "/.bkrun/seeds";
pub const MOUNTS: &str = "/.bkrun/mounts";
pub const OUT: &str = "/.bkrun/out";

/// A local dir the build's session serves, as a source op (no session named: the daemon asks
/// the session of the Solve it runs in).
pub struct Local<'a> {
    pub name: &'a str,
    /// Only these paths are sent (empty: everything).
    pub includes: Vec<String>,
}

/// What our one exec step is.
pub struct Step<'a> {
    /// The dir holding bkrun (and, for a dynamically linked bkrun, its loader and libraries).
    pub helper: Local<'a>,
    /// The command after the program: the loader's arguments come first when there is one.
    pub argv: Vec<String>,
    /// The dir of saved layers, for a seed.
    pub seeds: Option<Local<'a>>,
    pub mounts: &'a [&'a CacheMount],
    /// A save writes its layers into an output mount, which is the step's result.
    pub output: bool,
    pub name: &'a str,
}

/// The definition of `step`, ready to Solve.
pub fn definition(step: &Step) -> pb::Definition {
    let mut b = Builder::default();
    let helper = b.op(
        local_op(&step.helper),
        Some(named("[bkrun] load bkrun for its own step")),
    );
    // A writable root (output 0), so the runtime can make the mount points it needs.
    b.mount(Some((helper, 0)), "/", 0, |_| {});
    if let Some(seeds) = &step.seeds {
        let d = b.op(
            local_op(seeds),
            Some(named("[bkrun] load the saved cache mounts")),
        );
        b.mount(Some((d, 0)), SEEDS, -1, |m| m.readonly = true);
    }
    if step.output {
        b.mount(None, OUT, 1, |_| {});
    }
    for (i, m) in step.mounts.iter().enumerate() {
        let input = m.input.as_ref().map(|inp| {
            for (d, (bytes, meta)) in &inp.ops {
                let got = b.op(bytes.clone(), meta.clone());
                debug_assert_eq!(&got, d);
            }
            (inp.digest.clone(), inp.index)
        });
        b.mount(input, &format!("{MOUNTS}/{i}"), -1, |mount| {
            mount.selector = m.selector.clone();
            mount.mount_type = pb::MountType::Cache as i32;
            mount.cache_opt = Some(pb::CacheOpt {
                id: m.id.clone(),
                sharing: m.sharing,
            });
        });
    }
    b.finish(step)
}

fn named(what: &str) -> pb::OpMetadata {
    pb::OpMetadata {
        description: [("llb.customname".to_string(), what.to_string())].into(),
        ..Default::default()
    }
}

/// A definition being written: its ops (each once), and the exec step's inputs and mounts.
#[derive(Default)]
struct Builder {
    def: pb::Definition,
    inputs: Vec<pb::Input>,
    mounts: Vec<pb::Mount>,
}

impl Builder {
    /// Adds an op (once) with its metadata; its digest.
    fn op(&mut self, bytes: Vec<u8>, meta: Option<pb::OpMetadata>) -> String {
        let d = sha256_digest(&bytes);
        if !self.def.def.contains(&bytes) {
            self.def.def.push(bytes);
        }
        if let Some(m) = meta {
            self.def.metadata.insert(d.clone(), m);
        }
        d
    }

    /// A mount of the exec step at `dest`, of op output `input` (None: nothing), with `output`
    /// (-1: none), adjusted by `more`.
    fn mount(
        &mut self,
        input: Option<(String, i64)>,
        dest: &str,
        output: i64,
        more: impl FnOnce(&mut pb::Mount),
    ) {
        let input = match input {
            None => -1,
            Some((digest, index)) => {
                self.inputs.push(pb::Input { digest, index });
                (self.inputs.len() - 1) as i64
            }
        };
        let mut m = pb::Mount {
            input,
            dest: dest.into(),
            output,
            ..Default::default()
        };
        more(&mut m);
        self.mounts.push(m);
    }

    /// The exec step itself, then the last op, which names the result: a save's output
    /// mount, a seed's root.
    fn finish(mut self, step: &Step) -> pb::Definition {
        let exec = pb::Op {
            inputs: std::mem::take(&mut self.inputs),
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: step.argv.clone(),
                    // Never answered from the cache (what it reads, the cache mounts, is not in
                    // its key), through a value of its own rather than ignore_cache: BuildKit
                    // empties the cache mounts of a step that ignores the cache before running
                    // it (--no-cache).
                    env: vec![
                        "PATH=/.bkrun".into(),
                        format!("BKRUN_STEP={}", crate::session::random_id()),
                    ],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                mounts: std::mem::take(&mut self.mounts),
                ..Default::default()
            })),
            ..Default::default()
        };
        let exec = self.op(exec.encode_to_vec(), Some(named(step.name)));
        let root = pb::Op {
            inputs: vec![pb::Input {
                digest: exec,
                index: i64::from(step.output),
            }],
            ..Default::default()
        };
        self.def.def.push(root.encode_to_vec());
        self.def
    }
}

fn local_op(local: &Local) -> Vec<u8> {
    let mut attrs = HashMap::from([("local.sharedkeyhint".to_string(), local.name.to_string())]);
    if !local.includes.is_empty() {
        // A JSON list, as BuildKit's LLB client writes it.
        let list = serde_json::to_string(&local.includes).unwrap_or_default();
        attrs.insert("local.includepattern".to_string(), list);
    }
    pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("local://{}", local.name),
            attrs,
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_bytes(op: pb::Op) -> Vec<u8> {
        op.encode_to_vec()
    }

    /// A definition like the frontend's for two RUNs: one plain cache mount, one with uid set,
    /// and one mount from another stage.
    fn frontend_def() -> pb::Definition {
        let mkdir = op_bytes(pb::Op {
            op: Some(pb::op::Op::File(pb::FileOp {
                actions: vec![pb::FileAction {
                    input: -1,
                    secondary_input: -1,
                    output: 0,
                    action: Some(pb::file_action::Action::Mkdir(Default::default())),
                }],
            })),
            ..Default::default()
        });
        let stage = op_bytes(pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: "docker-image://x".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        let cache = |input: i64, sel: &str, id: &str, dest: &str| pb::Mount {
            input,
            selector: sel.into(),
            dest: dest.into(),
            output: -1,
            mount_type: pb::MountType::Cache as i32,
            cache_opt: Some(pb::CacheOpt {
                id: id.into(),
                sharing: 0,
            }),
            ..Default::default()
        };
        let exec = op_bytes(pb::Op {
            inputs: vec![
                pb::Input {
                    digest: sha256_digest(&mkdir),
                    index: 0,
                },
                pb::Input {
                    digest: sha256_digest(&stage),
                    index: 0,
                },
            ],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                mounts: vec![
                    cache(-1, "", "/go", "/go"),
                    cache(0, "/cache", "/owned", "/home/u/.cache"),
                    cache(1, "/src", "/from", "/from"),
                    cache(-1, "", "/go", "/go"),
                ],
                ..Default::default()
            })),
            ..Default::default()
        });
        pb::Definition {
            def: vec![mkdir, stage, exec],
            ..Default::default()
        }
    }

    #[test]
    fn finds_each_mount_once_and_skips_mounts_from_other_steps() {
        let def = frontend_def();
        let found = find(&[&def]).unwrap();
        let ids: Vec<_> = found.mounts.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["/go", "/owned"]);
        assert_eq!(found.skipped, ["/from"]);
        let owned = &found.mounts[1];
        let input = owned.input.as_ref().unwrap();
        assert_eq!(input.ops.len(), 1);
        assert_eq!(input.digest, sha256_digest(&def.def[0]));
        assert_ne!(found.mounts[0].key, owned.key);
    }

    #[test]
    fn our_step_carries_the_frontends_input_op_byte_for_byte() {
        let def = frontend_def();
        let found = find(&[&def]).unwrap();
        let mounts: Vec<&CacheMount> = found.mounts.iter().collect();
        let step = Step {
            helper: Local {
                name: "bkrun-helper",
                includes: Vec::new(),
            },
            argv: vec![ROOT_BIN.into()],
            seeds: None,
            mounts: &mounts,
            output: true,
            name: "[bkrun] saving cache mounts",
        };
        let ours = definition(&step);
        assert!(ours.def.contains(&def.def[0]));
        let exec = ours
            .def
            .iter()
            .map(|b| pb::Op::decode(b.as_slice()).unwrap())
            .find_map(|op| match op.op {
                Some(pb::op::Op::Exec(e)) => Some((op.inputs, e)),
                _ => None,
            })
            .unwrap();
        let (inputs, exec) = exec;
        let owned = exec.mounts.iter().find(|m| m.selector == "/cache").unwrap();
        assert_eq!(
            inputs[owned.input as usize].digest,
            sha256_digest(&def.def[0])
        );
        assert_eq!(owned.cache_opt.as_ref().unwrap().id, "/owned");
        // The last op names the exec's first output.
        let root = pb::Op::decode(ours.def.last().unwrap().as_slice()).unwrap();
        assert!(root.op.is_none());
        // ignore_cache would empty the mounts first (BuildKit's --no-cache): a nonce instead.
        assert!(ours.metadata.values().all(|m| !m.ignore_cache));
    }
}
