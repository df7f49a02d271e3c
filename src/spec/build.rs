//! `bkrun build` flags → a checked build spec: every output, local dir and option is validated before a daemon exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::csv;
use crate::cli::BuildArgs;

/// Where a result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: String,
    pub attrs: BTreeMap<String, String>,
}

impl Output {
    pub fn dest(&self) -> Option<&str> {
        self.attrs.get("dest").map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Auto,
    Plain,
    Tty,
    RawJson,
    Quiet,
}

/// A validated build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub frontend: Option<String>,
    pub locals: BTreeMap<String, PathBuf>,
    pub opts: BTreeMap<String, String>,
    pub outputs: Vec<Output>,
    pub progress: Progress,
    pub no_cache: bool,
}

const OUTPUT_TYPES: &[&str] = &[
    "local",
    "tar",
    "oci",
    "docker",
    "image",
    "registry",
    "cacheonly",
];

pub fn parse(args: &BuildArgs) -> Result<BuildSpec> {
    let mut locals = BTreeMap::new();
    for l in &args.local {
        let (name, dir) = l
            .split_once('=')
            .with_context(|| format!("--local {l:?} must be NAME=DIR, e.g. --local context=."))?;
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!(
                "--local {name}={}: no such directory; create it or fix the path",
                dir.display()
            );
        }
        locals.insert(name.to_string(), dir);
    }
    let mut opts = BTreeMap::new();
    for o in &args.opt {
        let (k, v) = o.split_once('=').unwrap_or((o.as_str(), ""));
        opts.insert(k.to_string(), v.to_string());
    }
    let outputs = args
        .output
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    let progress = match args.progress.as_str() {
        "auto" => Progress::Auto,
        "plain" => Progress::Plain,
        "tty" => Progress::Tty,
        "rawjson" => Progress::RawJson,
        "quiet" => Progress::Quiet,
        p => bail!("--progress={p} is not a progress mode: use auto, plain, tty, rawjson or quiet"),
    };
    Ok(BuildSpec {
        frontend: args.frontend.clone(),
        locals,
        opts,
        outputs,
        progress,
        no_cache: args.no_cache,
    })
}

/// Parses one --output value and checks its destination can be written.
pub fn parse_output(s: &str) -> Result<Output> {
    let pairs = csv::pairs(s).with_context(|| {
        format!("--output {s:?} is malformed: write it as type=TYPE,key=value,…")
    })?;
    let mut attrs: BTreeMap<String, String> = pairs.into_iter().collect();
    let Some(kind) = attrs.remove("type") else {
        bail!("--output {s:?} has no type: add type=local|tar|oci|docker|image|registry");
    };
    if !OUTPUT_TYPES.contains(&kind.as_str()) {
        bail!(
            "--output type={kind} is unknown: use one of {}",
            OUTPUT_TYPES.join(", ")
        );
    }
    let out = Output { kind, attrs };
    match (out.kind.as_str(), out.dest()) {
        ("local", None) => bail!("--output type=local needs dest=DIR"),
        ("local", Some("-")) => bail!(
            "--output type=local cannot write to stdout: give dest=DIR, or use type=tar,dest=-"
        ),
        ("local", Some(d)) => check_parent("--output type=local", Path::new(d))?,
        ("tar" | "oci" | "docker", Some(d)) if d != "-" => {
            if Path::new(d).is_dir() {
                bail!(
                    "--output type={},dest={d}: dest is a directory; give a file path",
                    out.kind
                );
            }
            check_parent(&format!("--output type={}", out.kind), Path::new(d))?
        }
        _ => {}
    }
    Ok(out)
}

fn check_parent(what: &str, p: &Path) -> Result<()> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{what},dest={}: its parent directory {} does not exist; create it first",
            p.display(),
            parent.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked() {
        assert_eq!(parse_output("type=local,dest=.").unwrap().kind, "local");
        assert_eq!(parse_output("type=tar,dest=-").unwrap().dest(), Some("-"));
        assert!(parse_output("dest=x")
            .unwrap_err()
            .to_string()
            .contains("no type"));
        assert!(parse_output("type=zip,dest=x")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(parse_output("type=local")
            .unwrap_err()
            .to_string()
            .contains("dest=DIR"));
        assert!(parse_output("type=tar,dest=/no/such/dir/x.tar")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(parse_output("type=oci,dest=/tmp")
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }

    #[test]
    fn locals_must_exist() {
        let args = BuildArgs {
            local: vec!["context=/no/such/dir".into()],
            progress: "auto".into(),
            ..Default::default()
        };
        assert!(parse(&args)
            .unwrap_err()
            .to_string()
            .contains("no such directory"));
    }

    #[test]
    fn progress_modes() {
        let args = BuildArgs {
            progress: "fancy".into(),
            ..Default::default()
        };
        assert!(parse(&args)
            .unwrap_err()
            .to_string()
            .contains("auto, plain"));
    }
}
