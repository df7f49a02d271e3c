//! `bkrun build` flags → a checked build spec: every output, local dir and option is validated before a daemon exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::cache::{self, CacheEntry};
use super::csv;
use super::secret::{self, Secret};
use super::ssh::{self, SshAgent};
use crate::cli::BuildArgs;
use crate::progress;
use crate::session::token::RegistryTls;

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

    /// Where the exporter's output comes back to bkrun, if it does.
    pub fn destination(&self) -> Destination {
        let tar = self
            .attrs
            .get("tar")
            .and_then(|v| super::cache::parse_bool(v))
            .unwrap_or(true);
        match (self.kind.as_str(), self.dest()) {
            ("local", Some(d)) => Destination::Dir(PathBuf::from(d)),
            ("tar", d) | ("oci" | "docker", d) if self.kind == "tar" || tar => match d {
                None | Some("-") => Destination::Stdout,
                Some(p) => Destination::File(PathBuf::from(p)),
            },
            ("oci" | "docker", Some(d)) => Destination::Layout(PathBuf::from(d)),
            _ => Destination::Daemon,
        }
    }

    /// The exporter attributes sent to the daemon: `dest` is ours to act on, not the daemon's.
    pub fn daemon_attrs(&self) -> BTreeMap<String, String> {
        let mut a = self.attrs.clone();
        if self.destination() != Destination::Daemon {
            a.remove("dest");
        }
        a
    }
}

/// Where an output ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Dir(PathBuf),
    File(PathBuf),
    Stdout,
    /// An OCI image-layout directory (`tar=false`), written through the session's content store.
    Layout(PathBuf),
    /// Kept in the daemon (an image in its store, or pushed).
    Daemon,
}

/// A validated build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub frontend: Option<String>,
    pub locals: BTreeMap<String, PathBuf>,
    /// `--oci-layout ID=DIR`: image layouts the frontend reads as `oci-layout://ID@DIGEST`.
    pub oci_layouts: BTreeMap<String, PathBuf>,
    pub opts: BTreeMap<String, String>,
    pub outputs: Vec<Output>,
    pub progress: progress::Mode,
    pub allow: Vec<String>,
    pub metadata_file: Option<PathBuf>,
    /// `--trace FILE`: the Status stream appended as rawjson lines.
    pub trace: Option<PathBuf>,
    /// `--ref-file FILE`: the build's ref, written when it ends.
    pub ref_file: Option<PathBuf>,
    /// `--source-policy-file`: rules the daemon applies to every source.
    pub source_policy: Option<crate::proto::moby::buildkit::v1::sourcepolicy::Policy>,
    pub secrets: Vec<Secret>,
    pub ssh: Vec<SshAgent>,
    pub cache_imports: Vec<CacheEntry>,
    pub cache_exports: Vec<CacheEntry>,
    pub no_cache: bool,
    /// Extra TLS trust per registry host for the registry tokens bkrun fetches (from bkrun.toml).
    pub registry_tls: BTreeMap<String, RegistryTls>,
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
    let mut oci_layouts = BTreeMap::new();
    for l in &args.oci_layout {
        let (id, dir) = l
            .split_once('=')
            .filter(|(id, _)| !id.is_empty())
            .with_context(|| {
                format!("--oci-layout {l:?} must be ID=DIR, e.g. --oci-layout base=./base-image")
            })?;
        let dir = PathBuf::from(dir);
        if !dir.join("index.json").is_file() {
            bail!(
                "--oci-layout {id}={}: not an OCI image layout (no index.json there); export one with --output type=oci,tar=false,dest=DIR",
                dir.display()
            );
        }
        oci_layouts.insert(id.to_string(), dir);
    }
    let mut opts = BTreeMap::new();
    // As buildctl does, SOURCE_DATE_EPOCH in the environment becomes a build arg; --opt wins.
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        opts.insert("build-arg:SOURCE_DATE_EPOCH".to_string(), v);
    }
    for o in &args.opt {
        let Some((k, v)) = o.split_once('=') else {
            bail!(
                "--opt {o:?} must be KEY=VALUE, e.g. --opt build-arg:FOO=bar or --opt target=prod"
            );
        };
        opts.insert(k.to_string(), v.to_string());
    }
    // Pipelines behind a proxy: bkrun's own proxy variables become the build's predefined proxy
    // args, unless the user set that arg.
    for (k, v) in proxy_args(&|k| std::env::var(k).ok()) {
        opts.entry(k).or_insert(v);
    }
    if args.no_cache {
        opts.insert("no-cache".to_string(), String::new());
    }
    resolve_layout_tags(&mut opts, &oci_layouts)?;
    let outputs = args
        .output
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    // The daemon has one "export" store per session, so one layout directory per build.
    if outputs
        .iter()
        .filter(|o| matches!(o.destination(), Destination::Layout(_)))
        .count()
        > 1
    {
        bail!("only one --output can be an OCI layout directory (tar=false) per build: write the others as tarballs");
    }
    let progress: progress::Mode = args.progress.parse().map_err(|_| {
        anyhow::anyhow!(
            "--progress={} is not a progress mode: use auto, plain, tty, rawjson or quiet",
            args.progress
        )
    })?;
    // Flags of features bkrun's client does not have yet are refused, never silently ignored.
    let unsupported = [
        (
            "--registry-auth-tlscontext",
            !args.registry_auth_tlscontext.is_empty(),
        ),
        (
            "--debug-json-cache-metrics",
            args.debug_json_cache_metrics.is_some(),
        ),
        ("--proxy-network", args.proxy_network),
    ];
    if let Some((flag, _)) = unsupported.iter().find(|(_, set)| *set) {
        bail!("{flag} is not supported by bkrun's build client yet: drop it, or run buildctl through `bkrun exec -- buildctl build …`");
    }
    let cache_imports = args
        .import_cache
        .iter()
        .map(|v| cache::parse_import(v))
        .collect::<Result<Vec<_>>>()?;
    let cache_exports = args
        .export_cache
        .iter()
        .map(|v| cache::parse_export(v))
        .collect::<Result<Vec<_>>>()?;
    let env = |k: &str| std::env::var(k).ok();
    let secrets = args
        .secret
        .iter()
        .map(|s| secret::parse(s, &env))
        .collect::<Result<Vec<_>>>()?;
    let ssh = args
        .ssh
        .iter()
        .map(|v| ssh::parse(v, &env))
        .collect::<Result<Vec<SshAgent>>>()?;
    for (i, a) in ssh.iter().enumerate() {
        if ssh[..i].iter().any(|b| b.id == a.id) {
            bail!("--ssh {} is given twice: give each id once (several key files go in one value: --ssh {}=KEY1,KEY2)", a.id, a.id);
        }
    }
    for (flag, file) in [
        ("--metadata-file", &args.metadata_file),
        ("--trace", &args.trace),
        ("--ref-file", &args.ref_file),
    ] {
        if let Some(f) = file {
            check_parent(flag, f)?;
        }
    }
    if args.frontend.is_none() {
        bail!("bkrun build needs --frontend (e.g. --frontend dockerfile.v0); piping an LLB definition on stdin is not supported");
    }
    Ok(BuildSpec {
        frontend: args.frontend.clone(),
        locals,
        oci_layouts,
        opts,
        outputs,
        progress,
        no_cache: args.no_cache,
        allow: args.allow.clone(),
        metadata_file: args.metadata_file.clone(),
        trace: args.trace.clone(),
        ref_file: args.ref_file.clone(),
        source_policy: args
            .source_policy_file
            .as_deref()
            .map(super::policy::load)
            .transpose()?,
        secrets,
        ssh,
        cache_imports,
        cache_exports,
        registry_tls: BTreeMap::new(),
    })
}

/// The Dockerfile's predefined proxy args, in both spellings.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// `build-arg:NAME=value` for each proxy variable set in the environment.
pub fn proxy_args(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    PROXY_VARS
        .iter()
        .filter_map(|k| {
            env(k)
                .filter(|v| !v.is_empty())
                .map(|v| (format!("build-arg:{k}"), v))
        })
        .collect()
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
    if let Some(v) = attrs.get("output") {
        bail!("--output output={v} is not an option: you meant dest={v}");
    }
    if let Some(t) = attrs.get("tar") {
        if super::cache::parse_bool(t).is_none() {
            bail!("--output tar={t} is not a boolean: use tar=true (a tarball) or tar=false (a directory)");
        }
    }
    let out = Output { kind, attrs };
    if let Destination::Layout(d) = out.destination() {
        if d.as_os_str() == "-" {
            bail!(
                "--output type={},tar=false writes a directory: give dest=DIR, not -",
                out.kind
            );
        }
        if d.exists() && !d.is_dir() {
            bail!("--output type={},tar=false,dest={}: that is a file; give a directory (it is created if missing)", out.kind, d.display());
        }
        check_parent(&format!("--output type={},tar=false", out.kind), &d)?;
        return Ok(out);
    }
    if matches!(out.kind.as_str(), "oci" | "docker")
        && out.dest().is_none()
        && !out
            .attrs
            .get("tar")
            .and_then(|t| super::cache::parse_bool(t))
            .unwrap_or(true)
    {
        bail!("--output type={},tar=false needs dest=DIR", out.kind);
    }
    match (out.kind.as_str(), out.dest()) {
        ("local", None) => bail!("--output type=local needs dest=DIR"),
        ("local", Some("-")) => bail!(
            "--output type=local cannot write to stdout: give dest=DIR, or use type=tar,dest=-"
        ),
        ("local", Some(d)) => check_parent("--output type=local", Path::new(d))?,
        ("tar" | "oci" | "docker", None | Some("-"))
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) =>
        {
            bail!("--output type={} would write a tarball to the terminal: give dest=FILE, or redirect stdout", out.kind);
        }
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

/// `--opt context:NAME=oci-layout://ID[:TAG]` without a digest: BuildKit needs one, so the tag
/// (default `latest`) is looked up in that layout's index.json here, before any daemon starts.
fn resolve_layout_tags(
    opts: &mut BTreeMap<String, String>,
    layouts: &BTreeMap<String, PathBuf>,
) -> Result<()> {
    for (key, value) in opts.iter_mut() {
        let Some(reference) = value.strip_prefix("oci-layout://") else {
            continue;
        };
        if !key.starts_with("context:") {
            continue;
        }
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        let (id, tag) = match name.rsplit_once(':') {
            Some((id, tag)) if !tag.contains('/') => (id, Some(tag)),
            _ => (name, None),
        };
        let Some(dir) = layouts.get(id) else {
            bail!("--opt {key}={value}: no OCI layout named {id}: add --oci-layout {id}=DIR");
        };
        if digest.is_some() {
            continue;
        }
        let tag = tag.unwrap_or("latest");
        let found = crate::ocilayout::Index::new(dir).get(tag)?;
        let Some(digest) = found.as_ref().and_then(|d| d["digest"].as_str()) else {
            bail!(
                "--opt {key}={value}: {}/index.json has no image tagged {tag}: name one that is there, or give @sha256:DIGEST",
                dir.display()
            );
        };
        *value = format!("oci-layout://{id}:{tag}@{digest}");
    }
    Ok(())
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
    fn destinations_and_daemon_attrs() {
        let o = parse_output("type=local,dest=out").unwrap();
        assert_eq!(o.destination(), Destination::Dir("out".into()));
        assert!(o.daemon_attrs().is_empty());
        let o = parse_output("type=oci,dest=x.tar,rewrite-timestamp=true").unwrap();
        assert_eq!(o.destination(), Destination::File("x.tar".into()));
        assert_eq!(
            o.daemon_attrs().keys().collect::<Vec<_>>(),
            ["rewrite-timestamp"]
        );
        let o = parse_output("type=image,name=a/b").unwrap();
        assert_eq!(o.destination(), Destination::Daemon);
        assert_eq!(
            parse_output("type=oci,dest=x,tar=false")
                .unwrap()
                .destination(),
            Destination::Layout("x".into())
        );
        assert!(!parse_output("type=oci,dest=x,tar=false")
            .unwrap()
            .daemon_attrs()
            .contains_key("dest"));
        assert!(parse_output("type=oci,tar=false")
            .unwrap_err()
            .to_string()
            .contains("needs dest=DIR"));
        assert!(parse_output("type=oci,dest=x,tar=maybe").is_err());
        assert!(parse_output("type=tar,output=x")
            .unwrap_err()
            .to_string()
            .contains("dest=x"));
    }

    #[test]
    fn unsupported_flags_are_refused_not_ignored() {
        let args = BuildArgs {
            proxy_network: true,
            frontend: Some("x".into()),
            progress: "auto".into(),
            ..Default::default()
        };
        let e = parse(&args).unwrap_err().to_string();
        assert!(
            e.starts_with("--proxy-network is not supported")
                && e.contains("bkrun exec -- buildctl"),
            "{e}"
        );
    }

    #[test]
    fn proxy_variables_become_build_args() {
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://proxy:3128".to_string()),
            "no_proxy" => Some("localhost".to_string()),
            _ => None,
        };
        assert_eq!(
            proxy_args(&env),
            [
                (
                    "build-arg:HTTPS_PROXY".to_string(),
                    "http://proxy:3128".to_string()
                ),
                ("build-arg:no_proxy".to_string(), "localhost".to_string())
            ]
        );
    }

    #[test]
    fn opts_need_a_value() {
        let args = BuildArgs {
            opt: vec!["target".into()],
            frontend: Some("x".into()),
            progress: "auto".into(),
            ..Default::default()
        };
        assert!(parse(&args).unwrap_err().to_string().contains("KEY=VALUE"));
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
