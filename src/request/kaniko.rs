//! kaniko's executor command line rewritten into buildctl's grammar (plus registry settings for the ephemeral daemon), so `/kaniko/executor --context … --destination …` builds the same image with BuildKit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{clip, clip_quoted};
use anyhow::{bail, Context, Result};

use super::docker::{AfterBuild, Normalized};
use super::flags::{BuildFlags, KanikoFlags};
use crate::config::RegistryConfig;

/// kaniko's command line as buildctl's, with the registry settings it implies.
#[derive(Debug, Default)]
pub struct Translated {
    pub build: Normalized,
    /// Per registry host: plain HTTP, unverified TLS, mirrors, CAs — for bkrun.toml's
    /// `[buildkitd.registry."HOST"]`, merged over what the file says.
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// The registry host of an image reference, as docker normalizes it (docker.io when the first
/// component is not a host).
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".into(),
    }
}

/// The repository of an image reference: without its tag or digest.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => &image[..image.len() - tag.len() - 1],
        None => image,
    }
}

/// kaniko's flags as buildctl's: each group of flags is rewritten in its own step, in the order
/// kaniko users meet their refusals (context, frontend options, outputs, cache, registries).
pub fn translate(k: &KanikoFlags) -> Result<Translated> {
    let mut notes: Vec<String> = meaningless_note(k).into_iter().collect();
    let mut a = BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        progress: "plain".into(),
        ..Default::default()
    };
    context_and_dockerfile(k, &mut a)?;
    // bkrun's own flags, accepted in kaniko's command line too: same meaning as in build's.
    a.cache_mounts = k.cache_mounts.clone();
    a.cache_mounts_max_size = k.cache_mounts_max_size.clone();
    a.summary = k.summary.clone();
    a.summary_format = k.summary_format.clone();
    a.tekton_results = k.tekton_results.clone();
    a.summary_dotenv = k.summary_dotenv.clone();
    a.build_timeout = k.build_timeout.clone();
    frontend_options(k, &mut a)?;
    outputs(k, &mut a)?;
    if a.output.is_empty() {
        notes.push("--no-push without --tar-path: the image stays in the build cache only".into());
    }
    registry_cache(k, &mut a)?;
    let registries = registries(k)?;

    Ok(Translated {
        build: Normalized {
            args: a,
            after: AfterBuild {
                digest_file: k.digest_file.clone(),
                name_with_digest_file: k.image_name_with_digest_file.clone(),
                name_tag_with_digest_file: k.image_name_tag_with_digest_file.clone(),
                names: k.destination.clone(),
                ..Default::default()
            },
            notes,
            stdin_dir: None,
        },
        registries,
    })
}

/// One notice naming every flag given that changes nothing under BuildKit.
fn meaningless_note(k: &KanikoFlags) -> Option<String> {
    let meaningless = k.meaningless();
    if meaningless.is_empty() {
        return None;
    }
    let verb = if meaningless.len() == 1 {
        "has"
    } else {
        "have"
    };
    Some(format!(
        "{} {verb} no meaning under BuildKit: ignored",
        meaningless.join(", ")
    ))
}

/// `--context` and `--dockerfile` as the two local directories and the `filename` option.
fn context_and_dockerfile(k: &KanikoFlags, a: &mut BuildFlags) -> Result<()> {
    let Some(context) = &k.context else {
        bail!("kaniko's --context is needed: the directory to build, e.g. --context=dir://$(pwd)");
    };
    let dir = context.strip_prefix("dir://").unwrap_or(context);
    if dir.contains("://") {
        bail!("--context {}: bkrun builds from a local directory (dir://DIR or DIR); fetch tar, git, s3 or gcs contexts in a step before", clip(context));
    }
    if !Path::new(dir).is_dir() {
        bail!("--context {} is not a directory", clip(dir));
    }
    // kaniko takes --dockerfile as given first, then inside the context.
    let as_given = PathBuf::from(&k.dockerfile);
    let dockerfile = if as_given.is_file() {
        as_given
    } else {
        Path::new(dir).join(&k.dockerfile)
    };
    if !dockerfile.is_file() {
        bail!(
            "--dockerfile {}: no such file, as given or in the context {}",
            clip(&k.dockerfile),
            clip(dir)
        );
    }
    a.local.push(format!("context={dir}"));
    let df_dir = dockerfile
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    a.local.push(format!("dockerfile={}", df_dir.display()));
    a.opt.push(format!(
        "filename={}",
        dockerfile
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("Dockerfile")
    ));
    Ok(())
}

/// Build args, target, platform, labels, reproducibility and verbosity as frontend options and
/// a progress mode.
fn frontend_options(k: &KanikoFlags, a: &mut BuildFlags) -> Result<()> {
    for b in &k.build_arg {
        if !b.contains('=') {
            bail!("--build-arg {} must be KEY=VALUE", clip_quoted(b));
        }
        a.opt.push(format!("build-arg:{b}"));
    }
    if let Some(s) = &k.target {
        a.opt.push(format!("target={s}"));
    }
    if let Some(p) = &k.custom_platform {
        a.opt.push(format!("platform={p}"));
    }
    for l in &k.label {
        if !l.contains('=') {
            bail!("--label {} must be KEY=VALUE", clip_quoted(l));
        }
        a.opt.push(format!("label:{l}"));
    }
    if k.reproducible {
        a.opt.push("build-arg:SOURCE_DATE_EPOCH=0".into());
    }
    // kaniko made no attestations: only those asked for, so digest files stay as they were.
    let asked = super::attest::gather(&k.attest, k.sbom.as_deref(), k.provenance.as_deref())?;
    a.opt.extend(super::attest::opts(&asked, None));
    a.progress = match k.verbosity.as_str() {
        "panic" | "fatal" | "error" | "warn" => "quiet".into(),
        "info" | "debug" | "trace" => "plain".into(),
        v => bail!(
            "--verbosity {}: use panic, fatal, error, warn, info, debug or trace",
            clip(v)
        ),
    };
    Ok(())
}

/// The push, `--tar-path` and `--oci-layout-path` outputs, each with the same image attributes.
fn outputs(k: &KanikoFlags, a: &mut BuildFlags) -> Result<()> {
    let mut image_attrs = String::new();
    if k.reproducible {
        image_attrs.push_str(",rewrite-timestamp=true");
    }
    if let Some(c) = &k.compression {
        match c.as_str() {
            "gzip" | "zstd" => {
                image_attrs.push_str(&format!(",compression={c},force-compression=true"))
            }
            _ => bail!("--compression {}: use gzip or zstd", clip(c)),
        }
    }
    let names = format!("\"name={}\"", k.destination.join(","));
    if !k.no_push {
        if k.destination.is_empty() {
            bail!("kaniko's --destination is needed to push (or pass --no-push)");
        }
        a.output
            .push(format!("type=image,{names},push=true{image_attrs}"));
    }
    if let Some(tar) = &k.tar_path {
        let named = if k.destination.is_empty() {
            String::new()
        } else {
            format!(",{names}")
        };
        a.output.push(format!(
            "type=docker,dest={}{named}{image_attrs}",
            tar.display()
        ));
    }
    if let Some(dir) = &k.oci_layout_path {
        a.output.push(format!(
            "type=oci,tar=false,dest={}{image_attrs}",
            dir.display()
        ));
    }
    Ok(())
}

/// `--cache`: a registry cache imported and exported at `--cache-repo`, or beside the first
/// destination.
fn registry_cache(k: &KanikoFlags, a: &mut BuildFlags) -> Result<()> {
    if !k.cache {
        return Ok(());
    }
    let repo = match (&k.cache_repo, k.destination.first()) {
        (Some(r), _) => r.clone(),
        (None, Some(d)) => format!("{}/cache", repository(d)),
        (None, None) => {
            bail!("--cache needs --cache-repo (or a --destination to put the cache beside)")
        }
    };
    let reference = if repository(&repo) == repo {
        format!("{repo}:buildcache")
    } else {
        repo
    };
    a.import_cache
        .push(format!("type=registry,ref={reference}"));
    a.export_cache
        .push(format!("type=registry,ref={reference},mode=max"));
    Ok(())
}

/// kaniko's per-registry flags as the ephemeral daemon's registry settings.
fn registries(k: &KanikoFlags) -> Result<BTreeMap<String, RegistryConfig>> {
    let mut registries: BTreeMap<String, RegistryConfig> = BTreeMap::new();
    let dest_hosts: Vec<String> = k.destination.iter().map(|d| registry_host(d)).collect();
    fn reg<'a>(m: &'a mut BTreeMap<String, RegistryConfig>, host: &str) -> &'a mut RegistryConfig {
        m.entry(host.to_string()).or_default()
    }
    if k.insecure {
        for h in &dest_hosts {
            reg(&mut registries, h).http = Some(true);
        }
    }
    for h in &k.insecure_registry {
        reg(&mut registries, h).http = Some(true);
    }
    if k.skip_tls_verify {
        for h in &dest_hosts {
            reg(&mut registries, h).insecure = Some(true);
        }
    }
    for h in &k.skip_tls_verify_registry {
        reg(&mut registries, h).insecure = Some(true);
    }
    for m in &k.registry_mirror {
        reg(&mut registries, "docker.io").mirrors.push(m.clone());
    }
    for rc in &k.registry_certificate {
        let (host, file) = rc
            .split_once('=')
            .filter(|(h, f)| !h.is_empty() && !f.is_empty())
            .with_context(|| {
                format!(
                    "--registry-certificate {} must be HOST=FILE",
                    clip_quoted(rc)
                )
            })?;
        if !Path::new(file).is_file() {
            bail!(
                "--registry-certificate {}={}: no such file",
                clip(host),
                clip(file)
            );
        }
        reg(&mut registries, host).ca.push(file.to_string());
    }
    Ok(registries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kaniko(line: &[&str]) -> KanikoFlags {
        let mut argv = vec!["bkrun", "kaniko"];
        argv.extend(line);
        crate::cli::parse_kaniko(argv).unwrap()
    }

    #[test]
    fn attestations_only_when_asked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let ctx = format!("dir://{}", d.path().display());
        let attests = |extra: &[&str]| -> Vec<String> {
            let mut line = vec!["--context", &ctx, "--destination", "r/a:1"];
            line.extend(extra);
            let t = translate(&kaniko(&line)).unwrap();
            t.build
                .args
                .opt
                .into_iter()
                .filter(|o| o.starts_with("attest:"))
                .collect()
        };
        assert!(attests(&[]).is_empty());
        assert_eq!(
            attests(&["--sbom=generator=r/scan:1", "--provenance=mode=max"]),
            [
                "attest:sbom=type=sbom,generator=r/scan:1",
                "attest:provenance=type=provenance,mode=max"
            ]
        );
        assert_eq!(
            attests(&["--attest", "type=provenance"]),
            ["attest:provenance=type=provenance"]
        );
    }

    #[test]
    fn a_kaniko_pipeline_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("docker")).unwrap();
        std::fs::write(d.path().join("docker/Dockerfile.app"), "FROM scratch\n").unwrap();
        let ctx = format!("dir://{}", d.path().display());
        let t = translate(&kaniko(&[
            "--context",
            &ctx,
            "--dockerfile",
            "docker/Dockerfile.app",
            "--destination",
            "127.0.0.1:5000/app:1",
            "--destination",
            "127.0.0.1:5000/app:latest",
            "--build-arg",
            "V=2",
            "--cache=true",
            "--insecure",
            "--digest-file",
            "/tmp/d",
            "--tar-path",
            "/tmp/app.tar",
            "--snapshot-mode=redo",
            "--use-new-run",
        ]))
        .unwrap();
        let a = &t.build.args;
        assert_eq!(
            a.local,
            [
                format!("context={}", d.path().display()),
                format!("dockerfile={}", d.path().join("docker").display())
            ]
        );
        assert_eq!(a.opt, ["filename=Dockerfile.app", "build-arg:V=2"]);
        assert_eq!(
            a.output,
            [
                "type=image,\"name=127.0.0.1:5000/app:1,127.0.0.1:5000/app:latest\",push=true",
                "type=docker,dest=/tmp/app.tar,\"name=127.0.0.1:5000/app:1,127.0.0.1:5000/app:latest\"",
            ]
        );
        assert_eq!(
            a.import_cache,
            ["type=registry,ref=127.0.0.1:5000/app/cache:buildcache"]
        );
        assert_eq!(
            a.export_cache,
            ["type=registry,ref=127.0.0.1:5000/app/cache:buildcache,mode=max"]
        );
        assert_eq!(t.registries["127.0.0.1:5000"].http, Some(true));
        assert_eq!(
            t.build.after.digest_file.as_deref(),
            Some(Path::new("/tmp/d"))
        );
        assert!(t.build.notes[0].contains("--snapshot-mode, --use-new-run have no meaning"));
    }

    #[test]
    fn refusals_and_hosts() {
        let err = |line: &[&str]| format!("{:#}", translate(&kaniko(line)).unwrap_err());
        assert!(err(&["--destination", "x/y"]).contains("--context is needed"));
        assert!(err(&["--context", "s3://bucket/ctx.tgz", "--no-push"]).contains("local directory"));
        assert_eq!(registry_host("alpine"), "docker.io");
        assert_eq!(registry_host("library/alpine:3"), "docker.io");
        assert_eq!(registry_host("localhost/a"), "localhost");
        assert_eq!(registry_host("ghcr.io/o/a:1"), "ghcr.io");
        assert_eq!(repository("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app");
        assert_eq!(repository("r.io/a@sha256:ab"), "r.io/a");
        assert_eq!(repository("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
    }
}
