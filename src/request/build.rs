//! The resolving step of `bkrun build`: flags, bkrun.toml, the environment and the Docker config's location → one checked build spec, before a daemon exists.
//!
//! As ripgrep splits low- and high-level arguments: clap (src/cli/) only parses, with no I/O;
//! [`resolve`] is then the one place a build consults its flags, bkrun.toml's settings and the
//! host (environment, terminals, the files and directories flags name). Everything after it
//! reads the typed [`BuildSpec`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::cache::{self, CacheExport, CacheImport};
use super::cachemounts::{self, CacheMountsSpec};
use super::flags::BuildFlags;
use super::output::{self, check_parent, Destination, Output};
use super::progress::{self, ProgressSpec};
use super::regcache::{self, RegistryCache};
use super::registry::{self, RegistryAuth};
use super::secret::{self, Secret};
use super::ssh::{self, SshAgent};
use super::summary::{self, SummarySpec};
use super::{clip, clip_path, clip_quoted, entitlement, header_safe, policy};
use crate::config::Settings;
use crate::creds::dockerconfig;
use crate::host::Host;
use crate::proto::moby::buildkit::v1::sourcepolicy::Policy;

/// A validated build: what the rest of bkrun reads instead of flags and environment.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub frontend: String,
    pub locals: BTreeMap<String, PathBuf>,
    /// `--oci-layout ID=DIR`: image layouts the frontend reads as `oci-layout://ID@DIGEST`.
    pub oci_layouts: BTreeMap<String, PathBuf>,
    /// Frontend options: `--opt`, SOURCE_DATE_EPOCH and proxy build args, `no-cache`.
    pub opts: BTreeMap<String, String>,
    pub outputs: Vec<Output>,
    pub progress: ProgressSpec,
    pub allow: Vec<String>,
    pub metadata_file: Option<PathBuf>,
    /// `--trace FILE`: the Status stream appended as rawjson lines.
    pub trace: Option<PathBuf>,
    /// `--ref-file FILE`: the build's ref, written when it ends.
    pub ref_file: Option<PathBuf>,
    /// `--source-policy-file`: rules the daemon applies to every source.
    pub source_policy: Option<Policy>,
    pub secrets: Vec<Secret>,
    pub ssh: Vec<SshAgent>,
    /// Every cache import and export: the flags' and those `--cache` stands for.
    pub cache_imports: Vec<CacheImport>,
    pub cache_exports: Vec<CacheExport>,
    /// What `--cache REF` expanded into, for --debug.
    pub registry_cache: Option<RegistryCache>,
    /// Registry logins, client-side tokens and their TLS trust.
    pub registry: RegistryAuth,
    /// `--cache-mounts`: where RUN cache mounts are kept between runs.
    pub cache_mounts: Option<CacheMountsSpec>,
    /// Where the build's summary and result files go (`--summary`, the CI's own places).
    pub summary: SummarySpec,
    /// `--build-timeout`: the build is cancelled after this long.
    pub build_timeout: Option<std::time::Duration>,
}

impl BuildSpec {
    /// The `--output type=oci|docker,tar=false` directory, if any (at most one).
    pub fn layout_output(&self) -> Option<PathBuf> {
        self.outputs.iter().find_map(|o| match o.destination() {
            Destination::Layout(d) => Some(d),
            _ => None,
        })
    }
}

/// Settles a build from its flags, bkrun.toml's `settings` and the `host`: every check that can
/// fail does so here, in milliseconds, before a daemon exists. Each flag is settled in its own
/// step, in this order, so the first mistake named is the same whatever else is wrong.
pub fn resolve(args: &BuildFlags, settings: &Settings, host: &dyn Host) -> Result<BuildSpec> {
    // buildctl reads these with os.LookupEnv, where an empty value is still a value.
    let env_raw = |k: &str| host.env_raw(k);
    let env = |k: &str| host.env(k);
    let locals = locals(&args.local)?;
    let oci_layouts = oci_layouts(&args.oci_layout)?;
    let opts = opts(args, &env_raw, &env, &oci_layouts)?;
    let outputs = outputs(&args.output, host.stdout_is_terminal())?;
    let progress = progress::resolve(&args.progress, &env, host.stderr_is_terminal())?;
    refuse_unsupported(args)?;
    entitlement::check(&args.allow)?;
    let (mut cache_imports, mut cache_exports) = caches(args)?;
    let registry_cache = registry_cache(args, settings, &locals, &env)?;
    if let Some(r) = &registry_cache {
        cache_imports.extend(r.cache_imports());
        cache_exports.push(r.cache_export());
    }
    let secrets = secrets(&args.secret, &env_raw)?;
    let ssh = ssh_agents(&args.ssh, &env_raw)?;
    check_file_parents(args)?;
    let Some(frontend) = args.frontend.clone() else {
        bail!("bkrun build needs --frontend (e.g. --frontend dockerfile.v0); piping an LLB definition on stdin is not supported");
    };
    let source_policy = args
        .source_policy_file
        .as_deref()
        .map(policy::load)
        .transpose()?;
    let registry = registry_auth(settings, &env_raw, &env)?;
    let cache_mounts = cachemounts::resolve(
        args.cache_mounts.as_deref(),
        args.cache_mounts_max_size.as_deref(),
        &env_raw,
        &settings.build_defaults,
    )?;
    let summary = summary::resolve(args, &settings.build_defaults, host)?;
    let build_timeout = summary::build_timeout(args, &settings.build_defaults)?;
    let spec = BuildSpec {
        frontend,
        locals,
        oci_layouts,
        opts,
        outputs,
        progress,
        allow: args.allow.clone(),
        metadata_file: args.metadata_file.clone(),
        trace: args.trace.clone(),
        ref_file: args.ref_file.clone(),
        source_policy,
        secrets,
        ssh,
        cache_imports,
        cache_exports,
        registry_cache,
        registry,
        cache_mounts,
        summary,
        build_timeout,
    };
    summary::check_image_results(&spec.summary, &spec.outputs)?;
    // Last, so a flag's own mistake is named first; still before any daemon exists.
    super::dests::check_outputs(&spec.outputs, host)?;
    super::dests::check_files(
        spec.metadata_file.as_deref(),
        spec.ref_file.as_deref(),
        spec.trace.as_deref(),
        host,
    )?;
    super::dests::check_summary(&spec.summary, host)?;
    Ok(spec)
}

/// `--local NAME=DIR`s: each name once, each directory existing.
fn locals(flags: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut locals = BTreeMap::new();
    for l in flags {
        let (name, dir) = l.split_once('=').with_context(|| {
            format!(
                "--local {} must be NAME=DIR, e.g. --local context=.",
                clip_quoted(l)
            )
        })?;
        local_name(name)?;
        if dir.is_empty() {
            bail!(
                "--local {}= has no directory: write --local {}=DIR (. for the current one)",
                clip(name),
                clip(name)
            );
        }
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!(
                "--local {}={}: no such directory; create it or fix the path",
                clip(name),
                clip_path(&dir)
            );
        }
        if locals.insert(name.to_string(), dir).is_some() {
            bail!(
                "--local {} is given twice: give each name one directory",
                clip(name)
            );
        }
    }
    Ok(locals)
}

/// `--oci-layout ID=DIR`s: each id once, each directory an OCI image layout.
fn oci_layouts(flags: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut oci_layouts = BTreeMap::new();
    for l in flags {
        let (id, dir) = l
            .split_once('=')
            .filter(|(id, _)| !id.is_empty())
            .with_context(|| {
                format!(
                    "--oci-layout {} must be ID=DIR, e.g. --oci-layout base=./base-image",
                    clip_quoted(l)
                )
            })?;
        // The daemon names the store "oci:ID" in a gRPC header when it reads the layout.
        header_safe("--oci-layout", "id", id)?;
        let dir = PathBuf::from(dir);
        if !dir.join("index.json").is_file() {
            bail!(
                "--oci-layout {}={}: not an OCI image layout (no index.json there); export one with --output type=oci,tar=false,dest=DIR",
                clip(id),
                clip_path(&dir)
            );
        }
        if oci_layouts.insert(id.to_string(), dir).is_some() {
            bail!(
                "--oci-layout {} is given twice: give each id one directory",
                clip(id)
            );
        }
    }
    Ok(oci_layouts)
}

/// The frontend options: SOURCE_DATE_EPOCH from the environment, `--opt`s over it, proxy
/// variables under them, `--no-cache`, and layout tags settled to digests.
fn opts(
    args: &BuildFlags,
    env_raw: &dyn Fn(&str) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    oci_layouts: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, String>> {
    let mut opts = BTreeMap::new();
    // As buildctl does, SOURCE_DATE_EPOCH in the environment becomes a build arg; --opt wins.
    if let Some(v) = env_raw("SOURCE_DATE_EPOCH") {
        opts.insert("build-arg:SOURCE_DATE_EPOCH".to_string(), v);
    }
    for o in &args.opt {
        let Some((k, v)) = o.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!(
                "--opt {} must be KEY=VALUE, e.g. --opt build-arg:FOO=bar or --opt target=prod",
                clip_quoted(o)
            );
        };
        opts.insert(k.to_string(), v.to_string());
    }
    // Pipelines behind a proxy: bkrun's own proxy variables become the build's predefined proxy
    // args, unless the user set that arg.
    for (k, v) in proxy_args(env) {
        opts.entry(k).or_insert(v);
    }
    if args.no_cache {
        opts.insert("no-cache".to_string(), String::new());
    }
    resolve_layout_tags(&mut opts, oci_layouts)?;
    Ok(opts)
}

/// `--output`s, of which at most one is a layout directory.
fn outputs(flags: &[String], stdout_tty: bool) -> Result<Vec<Output>> {
    let outputs = flags
        .iter()
        .map(|o| output::parse(o, stdout_tty))
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
    Ok(outputs)
}

/// Flags of features bkrun's client does not have yet are refused, never silently ignored.
fn refuse_unsupported(args: &BuildFlags) -> Result<()> {
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
    Ok(())
}

/// `--import-cache` and `--export-cache`s.
fn caches(args: &BuildFlags) -> Result<(Vec<CacheImport>, Vec<CacheExport>)> {
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
    Ok((cache_imports, cache_exports))
}

/// `--cache REF` (or BKRUN_CACHE, or bkrun.toml's `cache`), its branch read from the flag, the
/// CI's variables or the git checkout holding the build context.
fn registry_cache(
    args: &BuildFlags,
    settings: &Settings,
    locals: &BTreeMap<String, PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<RegistryCache>> {
    let given = regcache::Given {
        cache: args.cache.as_deref(),
        branch: args.cache_branch.as_deref(),
        default_branch: args.cache_default_branch.as_deref(),
        from_file: settings.build_defaults.cache.as_deref(),
        checkout: Some(
            locals
                .get("context")
                .map_or(std::path::Path::new("."), PathBuf::as_path),
        ),
    };
    regcache::settle(given, env)
}

/// `--secret`s, each id once.
fn secrets(flags: &[String], env_raw: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Secret>> {
    let secrets = flags
        .iter()
        .map(|s| secret::parse(s, env_raw))
        .collect::<Result<Vec<Secret>>>()?;
    // buildctl keeps the last of two secrets with one id; which file a RUN step gets should
    // not hang on the order of flags.
    for (i, a) in secrets.iter().enumerate() {
        if secrets[..i].iter().any(|b| b.id == a.id) {
            bail!(
                "--secret id={} is given twice: give each id once",
                clip(&a.id)
            );
        }
    }
    Ok(secrets)
}

/// `--ssh` agents and key sets, each id once.
fn ssh_agents(flags: &[String], env_raw: &dyn Fn(&str) -> Option<String>) -> Result<Vec<SshAgent>> {
    let ssh = flags
        .iter()
        .map(|v| ssh::parse(v, env_raw))
        .collect::<Result<Vec<SshAgent>>>()?;
    for (i, a) in ssh.iter().enumerate() {
        if ssh[..i].iter().any(|b| b.id == a.id) {
            bail!("--ssh {} is given twice: give each id once (several key files go in one value: --ssh {}=KEY1,KEY2)", a.id, a.id);
        }
    }
    Ok(ssh)
}

/// The files bkrun writes beside the build (`--metadata-file`, `--trace`, `--ref-file`) can be
/// created: their parent directories exist.
fn check_file_parents(args: &BuildFlags) -> Result<()> {
    for (flag, file) in [
        ("--metadata-file", &args.metadata_file),
        ("--trace", &args.trace),
        ("--ref-file", &args.ref_file),
        ("--summary", &args.summary),
        ("--summary-dotenv", &args.summary_dotenv),
    ] {
        if let Some(f) = file {
            check_parent(flag, f)?;
        }
    }
    Ok(())
}

/// Registry credentials, as buildctl offers them: from the Docker config of whoever runs bkrun
/// (read when the daemon asks). Tokens too, unless BUILDKIT_NO_CLIENT_TOKEN. TLS trust from
/// bkrun.toml's registry settings.
pub fn registry_auth(
    settings: &Settings,
    env_raw: &dyn Fn(&str) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RegistryAuth> {
    let sources = crate::creds::locate(env_raw);
    // Fail fast: a DOCKER_AUTH_CONFIG or login file that is not what it should be stops the
    // command here, before a daemon starts.
    crate::creds::check(&sources)?;
    Ok(RegistryAuth {
        docker_config: dockerconfig::config_path(env_raw),
        client_tokens: registry::client_tokens_enabled(env("BUILDKIT_NO_CLIENT_TOKEN").as_deref()),
        tls: registry::tls_from(settings.daemon_config.as_ref()),
        sources,
    })
}

/// Checks a `--local` name. It reaches the daemon in the LLB (`local://NAME`) and comes back in
/// the header of the daemon's file-sync call, where BuildKit URL-encodes non-ASCII but not control
/// characters, which grpc-go then refuses; an empty name matches no source at all.
fn local_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!(
            "--local: the name before = is empty: write --local NAME=DIR, e.g. --local context=."
        );
    }
    if name.chars().any(char::is_control) {
        bail!(
            "--local {}: a name cannot hold control characters: use letters, digits, - and _",
            clip(name)
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    /// Settings from this bkrun.toml text, and nothing else from the machine.
    fn settings(toml: &str) -> Settings {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("bkrun.toml");
        std::fs::write(&path, toml).unwrap();
        let args = crate::config::GlobalFlags {
            config: Some(path),
            ..Default::default()
        };
        Settings::load(&args, &FakeHost::user()).unwrap()
    }

    fn parse(args: &BuildFlags) -> Result<BuildSpec> {
        resolve(args, &settings(""), &FakeHost::user())
    }

    fn build_args() -> BuildFlags {
        BuildFlags {
            frontend: Some("dockerfile.v0".into()),
            progress: "auto".into(),
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_flags_are_refused_not_ignored() {
        let args = BuildFlags {
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
        let args = BuildFlags {
            opt: vec!["target".into()],
            frontend: Some("x".into()),
            progress: "auto".into(),
            ..Default::default()
        };
        assert!(parse(&args).unwrap_err().to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn locals_must_exist() {
        let args = BuildFlags {
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
    fn local_names_and_ids_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let with = |a: BuildFlags| resolve(&a, &settings(""), &FakeHost::user());
        let e = with(BuildFlags {
            local: vec![format!("={dir}")],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--local: the name before = is empty"), "{e}");
        let e = with(BuildFlags {
            local: vec!["context=".into()],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no directory"), "{e}");
        let e = with(BuildFlags {
            local: vec![format!("a\nb={dir}")],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("control characters") && !e.contains('\n'), "{e}");
        let e = with(BuildFlags {
            local: vec![format!("context={dir}"), format!("context={dir}")],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = with(BuildFlags {
            oci_layout: vec![format!("bäse={dir}")],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--oci-layout: the id"), "{e}");
        let e = with(BuildFlags {
            opt: vec!["=x".into()],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let f = d.path().join("s");
        std::fs::write(&f, "pw12").unwrap();
        let e = with(BuildFlags {
            secret: vec![
                format!("id=a,src={}", f.display()),
                format!("id=a,src={}", f.display()),
            ],
            ..build_args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--secret id=a is given twice"), "{e}");
    }

    #[test]
    fn progress_modes() {
        let args = BuildFlags {
            progress: "fancy".into(),
            ..Default::default()
        };
        assert!(parse(&args)
            .unwrap_err()
            .to_string()
            .contains("auto, plain"));
    }

    #[test]
    fn the_environment_is_read_through_the_host() {
        let host = FakeHost {
            env: vec![
                ("HOME", "/home/u"),
                ("SOURCE_DATE_EPOCH", ""),
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("BUILDKIT_NO_CLIENT_TOKEN", "1"),
                ("BUILDKIT_PROGRESS", "rawjson"),
                ("NO_COLOR", "1"),
            ],
            ..FakeHost::user()
        };
        let spec = resolve(&build_args(), &settings(""), &host).unwrap();
        // An empty SOURCE_DATE_EPOCH is still passed on, as buildctl's os.LookupEnv sees it.
        assert_eq!(spec.opts["build-arg:SOURCE_DATE_EPOCH"], "");
        assert_eq!(spec.opts["build-arg:HTTPS_PROXY"], "http://proxy:3128");
        assert_eq!(spec.progress.mode, crate::progress::Mode::RawJson);
        assert!(!spec.progress.color);
        assert_eq!(
            spec.registry.docker_config,
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert!(!spec.registry.client_tokens);
        assert_eq!(spec.registry.tls, BTreeMap::new());
        assert_eq!(
            spec.registry.sources.inputs.first().map(|i| i.label()),
            Some("the Docker config /home/u/.docker/config.json".to_string())
        );
        let spec = parse(&build_args()).unwrap();
        assert!(spec.registry.client_tokens);
        assert_eq!(spec.progress.mode, crate::progress::Mode::Plain);
        assert!(!spec.opts.contains_key("build-arg:SOURCE_DATE_EPOCH"));
    }

    #[test]
    fn registry_tls_comes_from_the_settings() {
        let s = settings("[buildkitd.registry.\"reg.example\"]\ninsecure = true\n");
        let spec = resolve(&build_args(), &s, &FakeHost::user()).unwrap();
        assert!(spec.registry.tls["reg.example"].insecure);
    }

    #[test]
    fn terminals_are_the_hosts() {
        let tty = FakeHost {
            tty: true,
            ..FakeHost::user()
        };
        let args = BuildFlags {
            output: vec!["type=tar".into()],
            ..build_args()
        };
        let e = resolve(&args, &settings(""), &tty).unwrap_err().to_string();
        assert!(e.contains("would write a tarball to the terminal"), "{e}");
        let spec = resolve(&build_args(), &settings(""), &tty).unwrap();
        assert_eq!(spec.progress.mode, crate::progress::Mode::Tty);
        let args = BuildFlags {
            progress: "tty".into(),
            ..build_args()
        };
        let e = parse(&args).unwrap_err().to_string();
        assert_eq!(e, "--progress=tty needs standard error to be a terminal");
    }
}
