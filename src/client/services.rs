//! The session's services for one build, built from its spec: local dirs (FileSync), export targets (FileSend), content stores for local caches and OCI layouts, registry auth, ssh and secrets; spec types become the session's own here.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::layouts::Layouts;
use super::localcache::LocalCaches;
use crate::request::build::BuildSpec;
use crate::request::cache::CacheImport;
use crate::request::output::Destination;
use crate::request::registry::RegistryAuth;
use crate::request::ssh::{self, SshAgent};
use crate::session::auth::AuthProvider;
use crate::session::content::ContentStores;
use crate::session::filesend::{FileSendTargets, Sink};
use crate::session::filesync::FileSyncProvider;
use crate::session::secrets::SecretsProvider;
use crate::session::ssh::{SshForwarder, SshSource};
use crate::session::Session;

/// What a build's session serves besides the session itself, kept to finish the build with.
pub struct Services {
    /// Where FileSend outputs land, by exporter index.
    pub targets: FileSendTargets,
    pub local_caches: LocalCaches,
    pub layouts: Layouts,
    /// The cache imports to ask for: local ones with their manifest digest, those with nothing
    /// to import yet left out.
    pub cache_imports: Vec<CacheImport>,
}

impl Services {
    /// Removes the stores' unfinished writes, however the build ended.
    pub fn close(&self) {
        self.local_caches.close();
        self.layouts.close();
    }

    /// After a successful build: exported files move into place, then local caches and the OCI
    /// layout output record what the daemon wrote.
    pub fn finish(&self, response: &HashMap<String, String>) -> Result<()> {
        use anyhow::Context as _;
        self.targets
            .commit()
            .context("cannot move the exported file into place")?;
        self.local_caches.finish(response)?;
        self.layouts.finish(response)
    }
}

/// The session's shared key: which local dirs these are, from their names and canonical paths.
///
/// A daemon keeps a snapshot of each local source per (name, shared key) and brings it up to
/// date by file name, size and mtime. With no key (as buildctl sends) every project's `context`
/// is one snapshot: a build of another project with files of the same names, sizes and mtimes
/// (one checkout tick, an archive's stamps) would get the first project's contents, and a
/// daemon shared by many projects re-sends each context whole whenever the project changes.
/// buildx keys by the context's name for the same reason; the canonical paths keep two
/// projects that share a directory name apart, and the project names (`projects`, the git
/// origin) two that share a path (every Tekton workspace is /workspace/source).
fn shared_key(
    locals: &std::collections::BTreeMap<String, std::path::PathBuf>,
    projects: &std::collections::BTreeMap<String, String>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, dir) in locals {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        h.update(name.as_bytes());
        h.update([0]);
        h.update(dir.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(projects.get(name).map_or(&[][..], |p| p.as_bytes()));
        h.update([0]);
    }
    let d = h.finalize();
    d[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Each local dir's project (request/routekey.rs: its git origin and path inside it, as the
/// route key names it), named here where the session is made: for a daemon bkrun starts, while
/// the daemon starts rather than before its spawn (each dir's checkout looked for, its git
/// config read).
fn projects(
    locals: &std::collections::BTreeMap<String, std::path::PathBuf>,
) -> std::collections::BTreeMap<String, String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = locals.values().map(|d| cwd.join(d)).collect();
    let names = crate::request::routekey::for_dirs(dirs.iter().map(std::path::PathBuf::as_path));
    locals.keys().cloned().zip(names).collect()
}

/// The session for `spec`, not yet started, and what it serves. Cache and layout directories
/// are created here; local cache imports are resolved to their manifests (`warn` hears which
/// are skipped).
/// `extra` are bkrun's own local dirs (the cache mounts' steps), outside the shared key.
pub fn build(
    spec: &BuildSpec,
    extra: &[(String, std::path::PathBuf)],
    warn: &mut dyn FnMut(String),
) -> Result<(Session, Services)> {
    let mut targets = HashMap::new();
    for (i, out) in spec.outputs.iter().enumerate() {
        let sink = match out.destination() {
            Destination::Dir(d) => Sink::Dir(d),
            Destination::File(f) => Sink::File(Some(f)),
            Destination::Stdout => Sink::File(None),
            // Served as a content store; nothing comes back through FileSend.
            Destination::Layout(_) | Destination::Daemon => continue,
        };
        targets.insert(i as u32, sink);
    }
    let targets = FileSendTargets::new(targets);
    let locals = spec
        .locals
        .iter()
        .chain(extra.iter().map(|(k, v)| (k, v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Local caches: import digests from index.json, export directories created, before Solve.
    let mut cache_imports = spec.cache_imports.clone();
    let local_caches = LocalCaches::prepare(&mut cache_imports, &spec.cache_exports, warn)?;
    let layouts = Layouts::prepare(&spec.oci_layouts, spec.layout_output().as_deref())?;
    let mut session = Session::new("bkrun")
        .with_shared_key(shared_key(&spec.locals, &projects(&spec.locals)))
        .add_service(FileSyncProvider::new(locals).into_server());
    let stores: HashMap<_, _> = local_caches
        .stores()
        .chain(layouts.stores())
        .map(|(id, s)| (id.clone(), s.clone()))
        .collect();
    if !stores.is_empty() {
        session = session.add_service(ContentStores::new(stores).into_server());
    }
    if !targets.is_empty() {
        session = session.add_service_with_methods(targets.clone(), &["DiffCopy"]);
    }
    session = session.add_service(auth(&spec.registry)?.into_server());
    if !spec.ssh.is_empty() {
        session = session.add_service(SshForwarder::new(ssh_sources(&spec.ssh)).into_server());
    }
    if !spec.secrets.is_empty() {
        let by_id = spec
            .secrets
            .iter()
            .map(|s| (s.id.clone(), s.data.clone()))
            .collect();
        session = session.add_service(SecretsProvider::new(by_id).into_server());
    }
    let services = Services {
        targets,
        local_caches,
        layouts,
        cache_imports,
    };
    Ok((session, services))
}

/// The Auth service over the spec's credential sources (a broken one fails here, before Solve).
fn auth(registry: &RegistryAuth) -> Result<AuthProvider> {
    Ok(AuthProvider::new(
        Arc::new(registry.store()?),
        registry.session_tls(),
        registry.client_tokens,
    ))
}

fn ssh_sources(agents: &[SshAgent]) -> HashMap<String, SshSource> {
    agents
        .iter()
        .map(|a| {
            let source = match &a.source {
                ssh::SshSource::Socket { path, raw } => SshSource::Socket {
                    path: path.clone(),
                    raw: *raw,
                },
                ssh::SshSource::Keys(keys) => SshSource::Keys(keys.clone()),
            };
            (a.id.clone(), source)
        })
        .collect()
}

#[cfg(test)]
mod shared_key_tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[test]
    fn the_shared_key_tells_local_dir_sets_apart() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let set = |dirs: &[(&str, PathBuf)]| -> BTreeMap<String, PathBuf> {
            dirs.iter()
                .map(|(n, d)| (n.to_string(), d.clone()))
                .collect()
        };
        let none = BTreeMap::new();
        let k = super::shared_key(&set(&[("context", a.clone())]), &none);
        assert_eq!(k.len(), 24);
        assert_eq!(
            k,
            super::shared_key(&set(&[("context", a.join("../a"))]), &none)
        );
        assert_ne!(k, super::shared_key(&set(&[("context", b.clone())]), &none));
        assert_ne!(k, super::shared_key(&set(&[("src", a.clone())]), &none));
        assert_ne!(
            k,
            super::shared_key(&set(&[("context", a.clone()), ("dockerfile", b)]), &none)
        );
        // One path (every Tekton workspace is /workspace/source), two projects: two keys.
        let of = |p: &str| BTreeMap::from([("context".to_string(), p.to_string())]);
        let one = super::shared_key(&set(&[("context", a.clone())]), &of("github.com/o/app"));
        let two = super::shared_key(&set(&[("context", a.clone())]), &of("github.com/o/web"));
        assert_ne!(one, two);
    }
}
