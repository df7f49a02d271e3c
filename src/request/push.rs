//! `bkrun push`, settled before anything is read or sent: the references checked, the digest files' places proved writable, and the registry settings a build would use (the Docker config's logins, bkrun.toml's TLS and plain-http rules per host).

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::docker::AfterBuild;
use super::flags::PushFlags;
use super::reference::Reference;
use super::registry::RegistryAuth;
use super::{build, clip, dests};
use crate::config::Settings;
use crate::host::Host;

/// A push, settled.
#[derive(Debug, Clone)]
pub struct PushSpec {
    pub source: PathBuf,
    pub references: Vec<String>,
    /// Which image of the layout's index.json, when it names several.
    pub image: Option<String>,
    /// The digest files, written as a build's are from a response holding the pushed digest.
    pub after: AfterBuild,
    pub metadata_file: Option<PathBuf>,
    pub registry: RegistryAuth,
}

/// Checks `f` against the settings and the host.
pub fn resolve(f: &PushFlags, settings: &Settings, host: &dyn Host) -> Result<PushSpec> {
    for r in &f.references {
        if let Err(why) = Reference::parse(r) {
            bail!(
                "{} is not an image reference ({why}): give REGISTRY/REPOSITORY[:TAG], e.g. registry.example.com/app:1",
                clip(r)
            );
        }
    }
    for (i, r) in f.references.iter().enumerate() {
        if f.references[..i].contains(r) {
            bail!("{} is given twice: give each reference once", clip(r));
        }
    }
    let after = AfterBuild {
        iidfile: f.iidfile.clone(),
        digest_file: f.digest_file.clone(),
        name_with_digest_file: f.image_name_with_digest_file.clone(),
        name_tag_with_digest_file: f.image_name_tag_with_digest_file.clone(),
        names: f.references.clone(),
        print_id: false,
    };
    dests::check_after(&after, host)?;
    dests::check_files(f.metadata_file.as_deref(), None, None, host)?;
    let env_raw = |k: &str| host.env_raw(k);
    let env = |k: &str| host.env(k);
    Ok(PushSpec {
        source: f.source.clone(),
        references: f.references.clone(),
        image: f.image.clone(),
        after,
        metadata_file: f.metadata_file.clone(),
        registry: build::registry_auth(settings, &env_raw, &env)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn push(line: &[&str]) -> Result<PushSpec> {
        let mut argv = vec!["bkrun", "push"];
        argv.extend(line);
        let f = crate::cli::parse_push(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Settings from an empty bkrun.toml, nothing else from the machine.
        let d = tempfile::tempdir()?;
        std::fs::write(d.path().join("bkrun.toml"), "")?;
        let global = crate::config::GlobalFlags {
            config: Some(d.path().join("bkrun.toml")),
            ..Default::default()
        };
        let settings = Settings::load(&global, &FakeHost::user())?;
        resolve(&f, &settings, &FakeHost::user())
    }

    #[test]
    fn references_and_files_checked_first() {
        let d = tempfile::tempdir().unwrap();
        let digest = d.path().join("digest");
        let ok = push(&[
            "x.tar",
            "127.0.0.1:5000/app:1",
            "127.0.0.1:5000/app:2",
            "--digest-file",
            digest.to_str().unwrap(),
            "--image",
            "v1",
        ])
        .unwrap();
        assert_eq!(ok.references.len(), 2);
        assert_eq!(ok.after.digest_file.as_deref(), Some(digest.as_path()));
        assert_eq!(ok.image.as_deref(), Some("v1"));
        let err = |line: &[&str]| format!("{:#}", push(line).unwrap_err());
        assert!(err(&["x.tar"]).contains("REF"));
        assert!(err(&["x.tar", "Bad/Name"]).contains("is not an image reference"));
        assert!(err(&["x.tar", "r/a:1", "r/a:1"]).contains("given twice"));
        assert!(err(&["x.tar", "r/a", "--digest-file", "/no/such/dir/d"]).contains("--digest-file"));
    }
}
