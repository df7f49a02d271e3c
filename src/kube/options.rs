//! `bkrun kube`'s flags (and the files they name) checked and settled into typed options: every refusal happens here, naming its flag, before any object is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Toleration;

use super::flags::{KubeFlags, KubeKind};
use super::meta::{self, MapKind};
use super::quantity::{self, Quantity};
use crate::config::{self, FileConfig, GlobalFlags};
use crate::daemon::mode::ModeArg;

/// Where the files go in the pod, and what the daemon is told.
pub const BKRUN_CONFIG_DIR: &str = "/etc/bkrun";
pub const BUILDKITD_CONFIG_DIR: &str = "/etc/buildkit";
pub const CERTS_DIR: &str = "/certs";

/// A privileged pod runs the daemon as root; a rootless one as the images' user 1000; a
/// user-namespaced one as root with `privileged: true` inside the pod's user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodMode {
    Privileged,
    Rootless,
    Userns,
}

/// The user the rootless images run as (BuildKit's rootless image's `user`).
pub const ROOTLESS_UID: i64 = 1000;

impl PodMode {
    /// BuildKit's state dir (the cache) as bkrun picks it for the pod's user in our images.
    pub fn state_dir(self) -> &'static str {
        match self {
            PodMode::Privileged | PodMode::Userns => "/var/lib/buildkit",
            PodMode::Rootless => "/home/user/.local/share/buildkit",
        }
    }

    /// Where `bkrun daemon` puts its unix socket: root's /run/buildkit, or the rootless image's
    /// XDG_RUNTIME_DIR.
    pub fn socket_dir(self) -> &'static str {
        match self {
            PodMode::Privileged | PodMode::Userns => "/run/buildkit",
            PodMode::Rootless => "/run/user/1000/buildkit",
        }
    }
}

/// A container resource with its quantity.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    /// Keyed by the resource's name in the API (`cpu`, `memory`, `ephemeral-storage`).
    pub requests: BTreeMap<&'static str, Quantity>,
    pub limits: BTreeMap<&'static str, Quantity>,
}

/// Everything the objects are made from, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub name: String,
    pub namespace: Option<String>,
    pub kind: KubeKind,
    pub image: String,
    pub replicas: i32,
    pub mode: PodMode,
    pub service_account: Option<String>,
    pub scheduler_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub resources: Resources,
    /// The binfmt installer image, when emulators are installed.
    pub qemu_image: Option<String>,
    pub platforms: Vec<String>,
    /// buildkitd's flags as given (--buildkitd-flags), without the ones the generator adds.
    pub buildkitd_flags: Vec<String>,
    /// The files' texts, shipped in ConfigMaps.
    pub bkrun_toml: Option<String>,
    pub buildkitd_toml: Option<String>,
    /// The TLS Secret's name; None serves plaintext (--insecure-plaintext).
    pub tls_secret: Option<String>,
    pub port: u16,
    /// Namespace labels a NetworkPolicy admits clients from (all must match); empty: no policy.
    pub allow_from_namespace: BTreeMap<String, String>,
    /// StatefulSet only: each daemon's claim size and class.
    pub storage: Option<(Quantity, Option<String>)>,
    /// Where the daemon keeps its state and socket (the images' defaults, or bkrun.toml's).
    pub state_dir: String,
    pub socket_dir: String,
}

/// The global flags that say how this machine runs or reaches a daemon mean nothing for the
/// pods `bkrun kube` prints: refused by name rather than dropped, with what to use instead.
fn refuse_local_globals(g: &GlobalFlags) -> Result<()> {
    if matches!(g.mode, Some(m) if m != crate::daemon::mode::ModeArg::Auto) {
        bail!("--mode (or BKRUN_MODE) chooses this machine's daemon mode, not the pods': use --rootless for rootless daemons, or unset BKRUN_MODE");
    }
    let set = [
        ("--root", g.root.is_some()),
        ("--ready-timeout", g.ready_timeout.is_some()),
        ("--lock-timeout", g.lock_timeout.is_some()),
        ("--worker", g.worker.is_some()),
        ("--containerd-address", g.containerd_address.is_some()),
        ("--containerd-namespace", g.containerd_namespace.is_some()),
        ("--containerd-shared-dir", g.containerd_shared_dir.is_some()),
        ("--addr", !g.addr.is_empty()),
        ("--tlscacert", g.tlscacert.is_some()),
        ("--tlscert", g.tlscert.is_some()),
        ("--tlskey", g.tlskey.is_some()),
        ("--tlsservername", g.tlsservername.is_some()),
        ("--tlsdir", g.tlsdir.is_some()),
        ("--timeout", g.timeout.is_some()),
        ("--wait", g.wait),
        ("--connect-retry", g.connect_retry.is_some()),
    ];
    if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
        bail!("{flag} is about this machine's daemon or connection, not the pool's pods: drop it (the daemons' settings go in --bkrun-config FILE and --buildkitd-flags; their TLS comes from --tls-secret)");
    }
    Ok(())
}

impl Options {
    /// Checks every flag and reads the files they name. The checks run in the order the flags
    /// are described to the user, so the first refusal is the one a reader expects.
    pub fn from_args(a: &KubeFlags, g: &GlobalFlags) -> Result<Options> {
        if g.config.is_some() {
            bail!("--config names the bkrun.toml this bkrun reads: to ship one to the daemons, give --bkrun-config FILE");
        }
        refuse_local_globals(g)?;
        check_names(a)?;
        let mode = match (a.rootless, a.userns) {
            (true, true) => bail!("--rootless and --userns are two ways to run the daemons: keep one (--userns runs root inside a hostUsers: false pod, --rootless uid 1000 with Unconfined profiles)"),
            (true, false) => PodMode::Rootless,
            (false, true) => PodMode::Userns,
            (false, false) => PodMode::Privileged,
        };
        let image = image(a, mode)?;

        let labels = meta::key_values("--label", MapKind::Label, &a.labels)?;
        let annotations = meta::key_values("--annotation", MapKind::Annotation, &a.annotations)?;
        let node_selector =
            meta::key_values("--nodeselector", MapKind::NodeSelector, &a.node_selector)?;
        let tolerations = meta::tolerations("--tolerations", &a.tolerations)?;
        let allow_from_namespace = meta::key_values(
            "--allow-from-namespace",
            MapKind::NamespaceSelector,
            &a.allow_from_namespace,
        )?;
        let resources = resources(a)?;
        let platforms = platforms(&a.platforms)?;

        let buildkitd_flags = buildkitd_flags(g)?;
        let files = DaemonFiles::read(a, mode, &buildkitd_flags)?;
        let tls_secret = tls_secret(a, g)?;
        let storage = storage(a)?;

        Ok(Options {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            kind: a.kind,
            image,
            replicas: a.replicas,
            mode,
            service_account: a.service_account.clone(),
            scheduler_name: a.scheduler_name.clone(),
            labels,
            annotations,
            node_selector,
            tolerations,
            resources,
            qemu_image: a.qemu_install.then(|| a.qemu_image.clone()),
            platforms,
            buildkitd_flags,
            bkrun_toml: files.bkrun_toml,
            buildkitd_toml: files.buildkitd_toml,
            tls_secret,
            port: a.port,
            allow_from_namespace,
            storage,
            state_dir: files
                .state_dir
                .unwrap_or_else(|| mode.state_dir().to_string()),
            socket_dir: files
                .socket_dir
                .unwrap_or_else(|| mode.socket_dir().to_string()),
        })
    }
}

/// --name, --namespace and the flags that name other objects: each must be a name the API
/// server accepts, refused here rather than by kubectl apply.
fn check_names(a: &KubeFlags) -> Result<()> {
    let limit = if a.kind == KubeKind::Statefulset {
        // A StatefulSet's pods carry a controller-revision-hash label of NAME-<10 characters>,
        // and a label value is at most 63 characters.
        52
    } else {
        63
    };
    if !meta::dns_label(&a.name) || a.name.len() > limit {
        bail!("--name {:?} is not a valid name: at most {limit} lowercase letters, digits and '-', starting and ending with a letter or digit", a.name);
    }
    if let Some(ns) = &a.namespace {
        if !meta::dns_label(ns) {
            bail!("--namespace {ns:?} is not a valid namespace: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit");
        }
    }
    for (flag, v) in [
        ("--serviceaccount", &a.service_account),
        ("--schedulername", &a.scheduler_name),
        ("--tls-secret", &a.tls_secret),
        ("--storage-class", &a.storage_class),
    ] {
        if let Some(v) = v {
            if !meta::dns_subdomain(v) {
                bail!("{flag} {v:?} is not a valid object name: lowercase letters, digits, '-' and '.'");
            }
        }
    }
    Ok(())
}

/// The daemon's image (our image for the mode unless --image names one); --qemu-image is
/// checked here too, even when emulators are not installed, so a typo never waits for later.
fn image(a: &KubeFlags, mode: PodMode) -> Result<String> {
    let image = a.image.clone().unwrap_or_else(|| {
        match mode {
            PodMode::Privileged | PodMode::Userns => "bkrun:privileged",
            PodMode::Rootless => "bkrun:rootless",
        }
        .to_string()
    });
    for (flag, v) in [("--image", &image), ("--qemu-image", &a.qemu_image)] {
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            bail!("{flag} {v:?} is not an image reference");
        }
    }
    Ok(image)
}

/// --buildkitd-flags split as a shell would, refusing the flags the generator sets itself.
fn buildkitd_flags(g: &GlobalFlags) -> Result<Vec<String>> {
    let flags = match &g.buildkitd_flags {
        Some(s) => shell_words::split(s).with_context(|| {
            format!("--buildkitd-flags {s:?} cannot be split as a shell would: check its quotes")
        })?,
        None => Vec::new(),
    };
    for f in &flags {
        let name = f.split('=').next().unwrap_or(f);
        if matches!(
            name,
            "--addr" | "--root" | "--tlscert" | "--tlskey" | "--tlscacert"
        ) {
            bail!("--buildkitd-flags: {name} is set by bkrun kube (the listener, TLS and state dir come from --port, --tls-secret and the image): drop it");
        }
    }
    // The daemons refuse a plaintext debug listener off loopback when they start (the one TLS
    // rule, src/config/listen.rs): refused here, before a pod would crash-loop on it.
    for addr in config::listen::values(&flags, "--debugaddr") {
        config::listen::check_debug("--buildkitd-flags --debugaddr", &addr, g.insecure_plaintext)?;
    }
    Ok(flags)
}

/// The files shipped to the daemons (--bkrun-config, --buildkitd-config), read and checked,
/// with the state and socket dirs the shipped bkrun.toml sets (None: the image's defaults).
struct DaemonFiles {
    bkrun_toml: Option<String>,
    buildkitd_toml: Option<String>,
    state_dir: Option<String>,
    socket_dir: Option<String>,
}

impl DaemonFiles {
    fn read(a: &KubeFlags, mode: PodMode, buildkitd_flags: &[String]) -> Result<DaemonFiles> {
        let bkrun_toml = read(a.bkrun_config.as_deref(), "--bkrun-config")?;
        let file_config = match &bkrun_toml {
            Some(text) => Some(config::parse_config(text).with_context(|| {
                format!(
                    "--bkrun-config {} is not a valid bkrun.toml: fix it and retry",
                    a.bkrun_config.as_deref().unwrap_or(Path::new("")).display()
                )
            })?),
            None => None,
        };
        let buildkitd_toml = read(a.buildkitd_config.as_deref(), "--buildkitd-config")?;
        if let Some(text) = &buildkitd_toml {
            text.parse::<toml::Table>().with_context(|| {
                format!(
                    "--buildkitd-config {} is not valid TOML: fix it and retry",
                    a.buildkitd_config
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                )
            })?;
            if config::flag_value(buildkitd_flags, "--config").is_some() {
                bail!("both --buildkitd-config and a --config in --buildkitd-flags name buildkitd's configuration: keep one of them");
            }
        }
        let (state_dir, socket_dir) = match &file_config {
            Some(fc) => check_file_config(
                fc,
                mode,
                buildkitd_toml.is_some()
                    || config::flag_value(buildkitd_flags, "--config").is_some(),
            )?,
            None => (None, None),
        };
        Ok(DaemonFiles {
            bkrun_toml,
            buildkitd_toml,
            state_dir,
            socket_dir,
        })
    }
}

/// The TLS Secret the daemons mount: --tls-secret, or NAME-tls; None with --insecure-plaintext.
fn tls_secret(a: &KubeFlags, g: &GlobalFlags) -> Result<Option<String>> {
    if g.insecure_plaintext {
        if a.tls_secret.is_some() {
            bail!("--tls-secret and --insecure-plaintext contradict each other: the daemons serve either mutual TLS or plaintext");
        }
        return Ok(None);
    }
    Ok(Some(
        a.tls_secret
            .clone()
            .unwrap_or_else(|| format!("{}-tls", a.name)),
    ))
}

/// --storage's claim size and class, which only a StatefulSet can give each daemon.
fn storage(a: &KubeFlags) -> Result<Option<(Quantity, Option<String>)>> {
    let Some(size) = &a.storage else {
        return Ok(None);
    };
    if a.kind != KubeKind::Statefulset {
        bail!("--storage gives each daemon a claim of its own, which only a StatefulSet has: add --kind statefulset, or drop --storage (a Deployment's daemons keep their cache in an emptyDir)");
    }
    let q = quantity::resource("--storage", size)?;
    if q.value <= 0.0 {
        bail!("--storage {size:?} is empty: give a size such as 50Gi");
    }
    Ok(Some((q, a.storage_class.clone())))
}

fn read(path: Option<&Path>, flag: &str) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {flag} {}: check the path", p.display()))
    })
    .transpose()
}

/// What the shipped bkrun.toml says that the objects must agree with: its mode against the
/// pod's, its [buildkitd] table against --buildkitd-config, and its state and socket dirs, which
/// the volume and the readiness probe follow.
fn check_file_config(
    fc: &FileConfig,
    mode: PodMode,
    buildkitd_configured: bool,
) -> Result<(Option<String>, Option<String>)> {
    match (fc.mode, mode) {
        (Some(ModeArg::Privileged), PodMode::Rootless) => {
            bail!("--bkrun-config sets mode = \"privileged\" but --rootless pods run as uid 1000: drop one of them")
        }
        (Some(ModeArg::Rootless | ModeArg::RootlessStrict), PodMode::Privileged) => {
            bail!("--bkrun-config sets a rootless mode but the pods are privileged: add --rootless, or drop the mode from the file")
        }
        (Some(ModeArg::Rootless | ModeArg::RootlessStrict), PodMode::Userns) => {
            bail!("--bkrun-config sets a rootless mode but --userns pods run root, privileged in their user namespace: drop --userns for --rootless, or drop the mode from the file")
        }
        _ => {}
    }
    if fc.buildkitd.is_some() && buildkitd_configured {
        bail!("both --bkrun-config's [buildkitd] table and --buildkitd-config (or a --config in --buildkitd-flags) configure buildkitd: keep one of them");
    }
    let dir = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    Ok((dir(&fc.root), dir(&fc.socket_dir)))
}

fn resources(a: &KubeFlags) -> Result<Resources> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (name, req, lim) in [
        ("cpu", &a.requests_cpu, &a.limits_cpu),
        ("memory", &a.requests_memory, &a.limits_memory),
        (
            "ephemeral-storage",
            &a.requests_ephemeral_storage,
            &a.limits_ephemeral_storage,
        ),
    ] {
        let req_flag = format!("--requests-{name}");
        let lim_flag = format!("--limits-{name}");
        let r = req
            .as_deref()
            .map(|v| quantity::resource(&req_flag, v))
            .transpose()?;
        let l = lim
            .as_deref()
            .map(|v| quantity::resource(&lim_flag, v))
            .transpose()?;
        if let (Some(r), Some(l)) = (&r, &l) {
            // The API server refuses a request above its limit; a hair of float error is not one.
            if r.value > l.value * (1.0 + 1e-12) {
                bail!(
                    "{req_flag} {:?} is more than {lim_flag} {:?}: a request may not exceed its limit",
                    r.text,
                    l.text
                );
            }
        }
        requests.extend(r.map(|q| (name, q)));
        limits.extend(l.map(|q| (name, q)));
    }
    Ok(Resources { requests, limits })
}

/// `os/arch[/variant]`, comma-separated or repeated; duplicates dropped, order kept.
fn platforms(values: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for p in values.iter().flat_map(|v| v.split(',')) {
        let parts: Vec<&str> = p.split('/').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            });
        if !ok {
            bail!("--platform {p:?} is not a platform: give os/arch[/variant], e.g. linux/arm64 or linux/arm/v7");
        }
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    Ok(out)
}
