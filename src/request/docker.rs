//! docker/buildx-style `bkrun build [flags] PATH`, and buildctl lines with GitLab's extras, rewritten into buildctl's grammar, so all grammars reach the one resolving step.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::flags::BuildFlags;
use super::{attest, csv};

/// Files written from the exporter's response once the build succeeded (buildx's --iidfile,
/// kaniko's digest files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterBuild {
    pub iidfile: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    pub name_with_digest_file: Option<PathBuf>,
    pub name_tag_with_digest_file: Option<PathBuf>,
    /// The image names those files mention.
    pub names: Vec<String>,
    /// `-q`: print the image ID on stdout.
    pub print_id: bool,
}

/// A command line in buildctl's grammar, with what else the original asked for.
#[derive(Debug, Default)]
pub struct Normalized {
    pub args: BuildFlags,
    pub after: AfterBuild,
    /// One-line notices, printed before the build (what was read differently, or ignored).
    pub notes: Vec<String>,
    /// A context or Dockerfile read from stdin, removed when this is dropped.
    pub stdin_dir: Option<tempfile::TempDir>,
}

/// The flags that only the docker-style grammar has, with whether each is set.
fn docker_only(a: &BuildFlags) -> Vec<&'static str> {
    [
        ("--tag", !a.tag.is_empty()),
        ("--file", a.file.is_some()),
        ("--target", a.target.is_some()),
        ("--platform", !a.platform.is_empty()),
        ("--push", a.push),
        ("--load", a.load),
        ("--cache-from", !a.cache_from.is_empty()),
        ("--cache-to", !a.cache_to.is_empty()),
        ("--build-context", !a.build_context.is_empty()),
        ("--label", !a.label.is_empty()),
        ("--annotation", !a.annotation.is_empty()),
        ("--no-cache-filter", !a.no_cache_filter.is_empty()),
        ("--pull", a.pull),
        ("--network", a.network.is_some()),
        ("--add-host", !a.add_host.is_empty()),
        ("--iidfile", a.iidfile.is_some()),
        ("--quiet", a.quiet),
        ("--shm-size", a.shm_size.is_some()),
        ("--ulimit", !a.ulimit.is_empty()),
        ("--builder", a.builder.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(f, _)| f)
    .collect()
}

/// Rewrites `args` into buildctl's grammar. Docker-style when a context PATH is given; else
/// buildctl's grammar with `--build-arg` and a `--local dockerfile=FILE` taken as GitLab's
/// documentation uses them. `stdin` is read only for a `-` context or `-f -`.
pub fn normalize(args: &BuildFlags, stdin: &mut dyn Read) -> Result<Normalized> {
    let mut n = Normalized {
        args: args.clone(),
        ..Default::default()
    };
    for kv in &args.build_arg {
        n.args
            .opt
            .push(format!("build-arg:{}", key_value("--build-arg", kv)?));
    }
    n.args.build_arg.clear();
    let Some(context) = args.context.clone() else {
        if let Some(first) = docker_only(args).first() {
            bail!("{first} belongs to the docker-style grammar, which needs the build context as its last argument: e.g. `bkrun build -t app:1 --push .`");
        }
        dockerfile_file_as_dir(&mut n)?;
        // buildctl's grammar adds no attestation of its own, so its digests stay as buildctl's.
        attestations(args, &mut n.args, None)?;
        return Ok(n);
    };
    docker_style(args, &context, stdin, &mut n)?;
    Ok(n)
}

/// `K=V`, checked; a bare `K` is refused (docker would take its value from the environment,
/// which a CI log could not show).
fn key_value(flag: &str, kv: &str) -> Result<String> {
    match kv.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(kv.to_string()),
        _ => bail!("{flag} {kv:?} must be KEY=VALUE"),
    }
}

/// GitLab's troubleshooting shows `--local dockerfile=path/to/Dockerfile`: a file there means
/// its directory, and its name as the frontend's filename.
fn dockerfile_file_as_dir(n: &mut Normalized) -> Result<()> {
    for l in n.args.local.iter_mut() {
        let Some(path) = l.strip_prefix("dockerfile=") else {
            continue;
        };
        let p = Path::new(path);
        if !p.is_file() {
            continue;
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = p
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("Dockerfile");
        if !n.args.opt.iter().any(|o| o.starts_with("filename=")) {
            n.args.opt.push(format!("filename={name}"));
        }
        n.notes.push(format!(
            "--local dockerfile={path} is a file: using its directory {} with --opt filename={name}",
            dir.display()
        ));
        *l = format!("dockerfile={}", dir.display());
    }
    Ok(())
}

/// The docker-style grammar (a context PATH given) rewritten into buildctl's: what bkrun cannot
/// do is refused first, then the context and Dockerfile, frontend options, named contexts,
/// caches and outputs, each in its own step.
fn docker_style(
    args: &BuildFlags,
    context: &str,
    stdin: &mut dyn Read,
    n: &mut Normalized,
) -> Result<()> {
    refuse_what_bkrun_lacks(args)?;
    let a = &mut n.args;
    a.frontend.get_or_insert_with(|| "dockerfile.v0".into());
    a.context = None;
    context_and_dockerfile(args, context, stdin, n)?;
    let a = &mut n.args;
    frontend_options(args, a)?;
    named_contexts(args, a)?;
    caches(args, a);
    outputs(args, n)?;
    // As buildx: minimal provenance by default, where an image carries it.
    let default = image_output(&n.args.output).then_some(attest::BUILDX_DEFAULT_PROVENANCE);
    attestations(args, &mut n.args, default)?;
    n.after.iidfile = args.iidfile.clone();
    n.after.names = args.tag.clone();
    if args.quiet {
        n.args.progress = "quiet".into();
        n.after.print_id = true;
    }
    Ok(())
}

/// docker-style flags that need what bkrun has not got (a docker daemon, buildx builders), and
/// a context given twice.
fn refuse_what_bkrun_lacks(args: &BuildFlags) -> Result<()> {
    if args.load {
        bail!("--load needs a docker daemon, and there is none here: write the image with --output type=docker,dest=image.tar (then `docker load -i image.tar` where docker runs)");
    }
    if let Some(b) = &args.builder {
        bail!("--builder {b}: bkrun has no buildx builders; use --addr tcp://HOST:PORT for a remote BuildKit daemon, or no flag for an ephemeral one");
    }
    if !args.local.iter().all(|l| !l.starts_with("context=")) {
        bail!("the build context is given twice (PATH and --local context=…): keep one");
    }
    Ok(())
}

/// The context PATH (or `-`) and `-f` as the two local directories and the `filename` option;
/// what stdin holds is written into `n.stdin_dir`.
fn context_and_dockerfile(
    args: &BuildFlags,
    context: &str,
    stdin: &mut dyn Read,
    n: &mut Normalized,
) -> Result<()> {
    let (context_dir, dockerfile) = if context == "-" {
        let dir = read_stdin_context(stdin, n.stdin_dir.get_or_insert(tempdir()?))?;
        (dir.0, dir.1)
    } else if context.contains("://") || context.starts_with("git@") {
        bail!("the context {context} is a URL: bkrun builds from a directory; clone or download it first");
    } else {
        if !Path::new(context).is_dir() {
            bail!("the build context {context} is not a directory");
        }
        (PathBuf::from(context), None)
    };
    let dockerfile = match (args.file.as_deref(), dockerfile) {
        (Some("-"), _) => {
            let dir = n.stdin_dir.get_or_insert(tempdir()?);
            let mut text = Vec::new();
            stdin
                .read_to_end(&mut text)
                .context("cannot read the Dockerfile from stdin")?;
            std::fs::write(dir.path().join("Dockerfile"), text)?;
            dir.path().join("Dockerfile")
        }
        (Some(f), _) => PathBuf::from(f),
        (None, Some(from_stdin)) => from_stdin,
        (None, None) => context_dir.join("Dockerfile"),
    };
    if !dockerfile.is_file() {
        bail!(
            "no Dockerfile at {}: give its path with -f",
            dockerfile.display()
        );
    }
    let a = &mut n.args;
    a.local.push(format!("context={}", context_dir.display()));
    let df_dir = dockerfile
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    a.local.push(format!("dockerfile={}", df_dir.display()));
    let name = dockerfile
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("Dockerfile");
    a.opt.push(format!("filename={name}"));
    Ok(())
}

/// `--target`, `--platform`, `--label`, `--no-cache-filter`, `--pull`, `--network`,
/// `--add-host`, `--shm-size` and `--ulimit` as the Dockerfile frontend's options.
fn frontend_options(args: &BuildFlags, a: &mut BuildFlags) -> Result<()> {
    if let Some(t) = &args.target {
        a.opt.push(format!("target={t}"));
    }
    if !args.platform.is_empty() {
        a.opt.push(format!("platform={}", args.platform.join(",")));
    }
    for l in &args.label {
        a.opt.push(format!("label:{}", key_value("--label", l)?));
    }
    if !args.no_cache_filter.is_empty() && !args.no_cache {
        a.opt
            .push(format!("no-cache={}", args.no_cache_filter.join(",")));
    }
    if args.pull {
        a.opt.push("image-resolve-mode=pull".into());
    }
    if let Some(net) = &args.network {
        match net.as_str() {
            "default" => {}
            "none" | "host" => a.opt.push(format!("force-network-mode={net}")),
            _ => bail!("--network {net}: use default, none or host"),
        }
        if net == "host" && !a.allow.iter().any(|x| x == "network.host") {
            a.allow.push("network.host".into());
        }
    }
    if !args.add_host.is_empty() {
        let hosts = args
            .add_host
            .iter()
            .map(|h| match h.split_once(':') {
                Some((host, ip)) if !host.is_empty() && !ip.is_empty() => {
                    Ok(format!("{host}={ip}"))
                }
                _ => bail!("--add-host {h:?} must be HOST:IP"),
            })
            .collect::<Result<Vec<_>>>()?;
        a.opt.push(format!("add-hosts={}", hosts.join(",")));
    }
    if let Some(s) = &args.shm_size {
        a.opt.push(format!("shm-size={}", ram_bytes(s)?));
    }
    if !args.ulimit.is_empty() {
        a.opt.push(format!("ulimit={}", args.ulimit.join(",")));
    }
    Ok(())
}

/// `--build-context NAME=VALUE`: an OCI layout, a URL the daemon fetches, or a local directory.
fn named_contexts(args: &BuildFlags, a: &mut BuildFlags) -> Result<()> {
    for bc in &args.build_context {
        let (name, value) = bc
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .with_context(|| format!("--build-context {bc:?} must be NAME=VALUE"))?;
        if let Some(layout) = value.strip_prefix("oci-layout://") {
            let (dir, reference) = split_layout_ref(layout);
            a.oci_layout.push(format!("{name}={dir}"));
            a.opt
                .push(format!("context:{name}=oci-layout://{name}{reference}"));
        } else if value.contains("://") || value.starts_with("git@") {
            a.opt.push(format!("context:{name}={value}"));
        } else {
            a.local.push(format!("{name}={value}"));
            a.opt.push(format!("context:{name}=local:{name}"));
        }
    }
    Ok(())
}

/// `--cache-from` and `--cache-to` in buildx's grammar: a bare reference means a registry cache.
fn caches(args: &BuildFlags, a: &mut BuildFlags) {
    let cache = |v: &String| {
        if v.contains('=') {
            v.clone()
        } else {
            format!("type=registry,ref={v}")
        }
    };
    a.import_cache.extend(args.cache_from.iter().map(cache));
    a.export_cache.extend(args.cache_to.iter().map(cache));
}

fn tempdir() -> Result<tempfile::TempDir> {
    // Private: what stdin held is the user's source.
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .prefix("bkrun-stdin-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("cannot make a temp dir for what stdin holds: make TMPDIR writable")
}

/// `-` as the context: a tar archive (plain or gzip), unpacked as the context, or else a
/// Dockerfile with an empty context, as `docker build -` reads stdin.
fn read_stdin_context(
    stdin: &mut dyn Read,
    dir: &tempfile::TempDir,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let mut data = Vec::new();
    stdin
        .read_to_end(&mut data)
        .context("cannot read the context from stdin")?;
    let ctx = dir.path().join("context");
    std::fs::create_dir(&ctx)?;
    let gzip = data.starts_with(&[0x1f, 0x8b]);
    let is_tar = |d: &[u8]| d.len() > 262 && &d[257..262] == b"ustar";
    if gzip || is_tar(&data) {
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(&data[..]))
        } else {
            Box::new(&data[..])
        };
        tar::Archive::new(reader)
            .unpack(&ctx)
            .context("the tar archive on stdin cannot be unpacked")?;
        return Ok((ctx, None));
    }
    let df = dir.path().join("Dockerfile");
    std::fs::write(&df, &data)?;
    Ok((ctx, Some(df)))
}

/// `DIR`, `DIR:TAG` or `DIR@sha256:…` → the directory and the `:TAG`/`@DIGEST` suffix (default `:latest`).
fn split_layout_ref(s: &str) -> (&str, String) {
    if let Some((dir, digest)) = s.rsplit_once('@') {
        return (dir, format!("@{digest}"));
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    match last.rsplit_once(':') {
        Some((_, tag)) => (&s[..s.len() - tag.len() - 1], format!(":{tag}")),
        None => (s, ":latest".into()),
    }
}

/// docker's size units for --shm-size (binary multiples: 128m is 128 MiB).
fn ram_bytes(s: &str) -> Result<u64> {
    let lower = s.to_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last() {
        Some('k') => (&lower[..lower.trim_end_matches('b').len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("--shm-size {s:?} is not a size such as 64m or 1g"))?;
    Ok((n * mult as f64) as u64)
}

/// `--sbom`, `--provenance` and `--attest` as the frontend's `attest:` options (with
/// `default_provenance` when the line names no provenance).
fn attestations(
    args: &BuildFlags,
    a: &mut BuildFlags,
    default_provenance: Option<&str>,
) -> Result<()> {
    let asked = attest::gather(
        &args.attest,
        args.sbom.as_deref(),
        args.provenance.as_deref(),
    )?;
    attest::not_also_in_opts(&asked, &args.opt)?;
    a.opt.extend(attest::opts(&asked, default_provenance));
    Ok(())
}

/// Whether one of `outputs` (buildctl's spelling) exports an image: image, OCI or docker.
fn image_output(outputs: &[String]) -> bool {
    outputs.iter().any(|o| {
        ["type=image", "type=oci", "type=docker"]
            .iter()
            .any(|t| o.starts_with(t))
    })
}

/// buildx's outputs: `-o DIR` and `-o -` shorthands, `type=registry`, names from `-t`, `--push`.
fn outputs(args: &BuildFlags, n: &mut Normalized) -> Result<()> {
    let quoted_names = || format!("\"name={}\"", args.tag.join(","));
    let mut outs = Vec::new();
    for o in &args.output {
        let mut o = if o == "-" {
            "type=tar,dest=-".to_string()
        } else if !o.contains('=') {
            format!("type=local,dest={o}")
        } else {
            o.clone()
        };
        let fields = csv::pairs(&o).with_context(|| format!("--output {o:?}"))?;
        let kind = fields
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let has = |key: &str| fields.iter().any(|(k, _)| k == key);
        if kind == "registry" {
            o = o.replacen("type=registry", "type=image", 1);
            if !has("push") {
                o.push_str(",push=true");
            }
        }
        let image_like = matches!(kind.as_str(), "registry" | "image" | "oci" | "docker");
        if image_like && !has("name") && !args.tag.is_empty() {
            o.push(',');
            o.push_str(&quoted_names());
        }
        if args.push && kind == "image" && !has("push") {
            o.push_str(",push=true");
        }
        if image_like {
            o.push_str(&annotation_attrs(&args.annotation)?);
        }
        outs.push(o);
    }
    if args.push && args.output.is_empty() {
        if args.tag.is_empty() {
            bail!("--push needs the image's name: add -t REGISTRY/NAME:TAG");
        }
        outs.push(format!(
            "type=image,{},push=true{}",
            quoted_names(),
            annotation_attrs(&args.annotation)?
        ));
    }
    if (args.iidfile.is_some() || args.quiet) && !image_output(&outs) {
        bail!("--iidfile and --quiet report an image, and this build exports none: add --push (with -t) or --output type=image|oci|docker");
    }
    if outs.is_empty() {
        if !args.annotation.is_empty() {
            bail!("--annotation needs an image output: add --push (with -t) or --output type=image|oci|docker");
        }
        n.notes.push("no --push or --output: the result stays in the build cache only (add --push with -t NAME, or --output type=local,dest=DIR)".into());
    }
    n.args.output = outs;
    Ok(())
}

/// buildx's `--annotation [TYPE:]K=V` as exporter attributes.
fn annotation_attrs(annotations: &[String]) -> Result<String> {
    let mut s = String::new();
    for an in annotations {
        let (kind, kv) = match an.split_once(':') {
            Some((t, kv))
                if [
                    "manifest",
                    "index",
                    "manifest-descriptor",
                    "index-descriptor",
                ]
                .contains(&t)
                    && kv.contains('=') =>
            {
                (format!("annotation-{t}"), kv)
            }
            _ => ("annotation".to_string(), an.as_str()),
        };
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--annotation {an:?} must be [TYPE:]KEY=VALUE"))?;
        // Quoted: a value may hold commas.
        s.push_str(&format!(",\"{kind}.{k}={}\"", v.replace('"', "\"\"")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> BuildFlags {
        let mut argv = vec!["bkrun", "build"];
        argv.extend(line);
        crate::cli::parse_build(argv).unwrap()
    }

    fn ctx() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        d
    }

    #[test]
    fn docker_style_tag_push_target_args_and_a_named_context() {
        let d = ctx();
        let p = d.path().display().to_string();
        let n = normalize(
            &args(&[
                "-t",
                "r/a:1",
                "-t",
                "r/a:latest",
                "--push",
                "--target",
                "prod",
                "--build-arg",
                "V=1",
                "--build-context",
                "base=docker-image://alpine:3",
                "--build-context",
                "lib=/src/lib",
                "--platform",
                "linux/amd64",
                "--platform",
                "linux/arm64",
                &p,
            ]),
            &mut std::io::empty(),
        )
        .unwrap();
        let a = &n.args;
        assert_eq!(a.frontend.as_deref(), Some("dockerfile.v0"));
        assert_eq!(
            a.local,
            [
                format!("context={p}"),
                format!("dockerfile={p}"),
                "lib=/src/lib".into()
            ]
        );
        assert_eq!(
            a.opt,
            [
                "build-arg:V=1",
                "filename=Dockerfile",
                "target=prod",
                "platform=linux/amd64,linux/arm64",
                "context:base=docker-image://alpine:3",
                "context:lib=local:lib",
                "attest:provenance=mode=min,inline-only=true",
            ]
        );
        assert_eq!(a.output, ["type=image,\"name=r/a:1,r/a:latest\",push=true"]);
        assert_eq!(n.after.names, ["r/a:1", "r/a:latest"]);
    }

    #[test]
    fn buildx_output_forms() {
        let d = ctx();
        let p = d.path().display().to_string();
        let outs = |extra: &[&str]| {
            let mut line = extra.to_vec();
            line.push(&p);
            normalize(&args(&line), &mut std::io::empty())
                .unwrap()
                .args
                .output
        };
        assert_eq!(outs(&["-o", "out"]), ["type=local,dest=out"]);
        assert_eq!(outs(&["-o", "-"]), ["type=tar,dest=-"]);
        assert_eq!(
            outs(&["-t", "r/a", "-o", "type=registry"]),
            ["type=image,push=true,\"name=r/a\""]
        );
        assert_eq!(
            outs(&["-t", "r/a", "--push", "--annotation", "org.x=a,b", "--annotation", "index:k=v"]),
            ["type=image,\"name=r/a\",push=true,\"annotation.org.x=a,b\",\"annotation-index.k=v\""]
        );
        let n = normalize(&args(&[&p]), &mut std::io::empty()).unwrap();
        assert!(n.args.output.is_empty());
        assert!(n.notes[0].contains("stays in the build cache"));
    }

    #[test]
    fn attestations_in_each_grammar() {
        let d = ctx();
        let p = d.path().display().to_string();
        let opts = |line: &[&str]| -> Vec<String> {
            let n = normalize(&args(line), &mut std::io::empty()).unwrap();
            n.args
                .opt
                .into_iter()
                .filter(|o| o.starts_with("attest:"))
                .collect()
        };
        // docker-style: buildx's default provenance on image exports only, unless turned off.
        let default = ["attest:provenance=mode=min,inline-only=true"];
        assert_eq!(opts(&["-t", "r/a", "--push", &p]), default);
        assert_eq!(opts(&["-o", "type=oci,dest=x.tar", &p]), default);
        assert!(opts(&["-o", "out", &p]).is_empty());
        assert!(opts(&["-t", "r/a", "--push", "--provenance=false", &p]).is_empty());
        assert_eq!(
            opts(&[
                "-t",
                "r/a",
                "--push",
                "--sbom=generator=r/scan",
                "--provenance=mode=max",
                &p
            ]),
            [
                "attest:sbom=type=sbom,generator=r/scan",
                "attest:provenance=type=provenance,mode=max"
            ]
        );
        // buildctl's grammar: only what the line asks for.
        let buildctl = [
            "--frontend=dockerfile.v0",
            "--local=context=.",
            "--output=type=image,name=r/a,push=true",
        ];
        assert!(opts(&buildctl).is_empty());
        let mut with = buildctl.to_vec();
        with.push("--attest=type=sbom");
        assert_eq!(opts(&with), ["attest:sbom=type=sbom"]);
        with.push("--opt=attest:sbom=generator=r/s");
        let e = normalize(&args(&with), &mut std::io::empty()).unwrap_err();
        assert!(e.to_string().contains("asked for twice"), "{e}");
    }

    #[test]
    fn refusals_name_the_way_round() {
        let d = ctx();
        let p = d.path().display().to_string();
        let err = |line: &[&str]| {
            format!(
                "{:#}",
                normalize(&args(line), &mut std::io::empty()).unwrap_err()
            )
        };
        assert!(err(&["--load", &p]).contains("type=docker,dest="));
        assert!(err(&["--push", &p]).contains("-t REGISTRY/NAME:TAG"));
        assert!(err(&["--sbom=generator=Bad", &p]).contains("not an image reference"));
        assert!(err(&["-t", "x"]).contains("needs the build context"));
        assert!(err(&["https://github.com/x/y.git"]).contains("URL"));
    }

    #[test]
    fn dockerfile_and_context_from_stdin() {
        // `-`: a plain Dockerfile on stdin, with an empty context.
        let n = normalize(&args(&["-"]), &mut &b"FROM scratch\n"[..]).unwrap();
        let dir = n.stdin_dir.as_ref().unwrap().path().to_path_buf();
        assert!(n
            .args
            .local
            .contains(&format!("context={}", dir.join("context").display())));
        assert!(n
            .args
            .local
            .contains(&format!("dockerfile={}", dir.display())));
        // `-`: a tar archive is the context.
        let mut tarball = tar::Builder::new(Vec::new());
        let body = b"FROM scratch\nCOPY f /\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tarball
            .append_data(&mut h, "Dockerfile", &body[..])
            .unwrap();
        let data = tarball.into_inner().unwrap();
        let n = normalize(&args(&["-"]), &mut &data[..]).unwrap();
        let ctx = n.stdin_dir.as_ref().unwrap().path().join("context");
        assert!(ctx.join("Dockerfile").is_file());
        drop(n);
        assert!(!ctx.exists(), "the stdin context goes with the build");
    }

    #[test]
    fn gitlab_build_args_and_a_dockerfile_given_as_a_file() {
        let d = ctx();
        let df = d.path().join("Dockerfile");
        let n = normalize(
            &args(&[
                "--frontend",
                "dockerfile.v0",
                "--local",
                "context=.",
                "--local",
                &format!("dockerfile={}", df.display()),
                "--build-arg",
                "HTTP_PROXY=http://proxy:3128",
            ]),
            &mut std::io::empty(),
        )
        .unwrap();
        assert_eq!(
            n.args.local[1],
            format!("dockerfile={}", d.path().display())
        );
        assert_eq!(
            n.args.opt,
            [
                "build-arg:HTTP_PROXY=http://proxy:3128",
                "filename=Dockerfile"
            ]
        );
        assert!(n.notes[0].contains("is a file"));
    }

    #[test]
    fn layout_refs_and_sizes() {
        assert_eq!(split_layout_ref("./l:v1"), ("./l", ":v1".into()));
        assert_eq!(split_layout_ref("/a/l"), ("/a/l", ":latest".into()));
        assert_eq!(split_layout_ref("l@sha256:ab"), ("l", "@sha256:ab".into()));
        assert_eq!(ram_bytes("128m").unwrap(), 128 << 20);
        assert_eq!(ram_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(ram_bytes("4096").unwrap(), 4096);
    }
}
