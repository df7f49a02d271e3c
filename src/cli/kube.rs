//! `bkrun kube`'s flags: the Kubernetes objects of a pool of bkrun daemons, named as buildx's Kubernetes driver names its options where it has one.

use std::path::PathBuf;

use clap::{ArgAction, Args};

/// The workload that runs the daemons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeKind {
    /// Interchangeable daemons behind one Service: any replica serves any build.
    #[default]
    Deployment,
    /// Daemons with stable names (NAME-0, NAME-1, …) under a headless Service, for clients that
    /// pick one by a key so each project's cache stays warm on one daemon.
    Statefulset,
}

#[derive(Debug, Args, Clone, Default)]
pub struct KubeArgs {
    /// The Deployment or StatefulSet and its Service; also the prefix of its ConfigMaps.
    #[arg(long, value_name = "NAME", default_value = "bkrun-builder")]
    pub name: String,
    /// Namespace of every object (default: none written, so kubectl's current one).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// deployment (any replica serves) or statefulset (stable names for sticky routing).
    #[arg(long, value_enum, default_value = "deployment")]
    pub kind: KubeKind,
    /// A bkrun image (default: bkrun:privileged, or bkrun:rootless with --rootless).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// How many daemons.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..))]
    pub replicas: i32,
    /// Run the daemons as uid 1000 without privileges (what BuildKit's rootless mode needs:
    /// Unconfined seccomp and AppArmor); default privileged.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub rootless: bool,
    /// Run the daemons as root with `privileged: true` inside user-namespaced pods
    /// (`hostUsers: false`, as images/userns.yaml), whose privilege ends at the pod's user
    /// namespace; builds keep their process sandbox. Needs Kubernetes' user namespaces.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false, conflicts_with = "rootless")]
    pub userns: bool,
    /// The pods' ServiceAccount.
    #[arg(
        long = "serviceaccount",
        visible_alias = "service-account",
        value_name = "NAME"
    )]
    pub service_account: Option<String>,
    /// The scheduler that places the pods.
    #[arg(long = "schedulername", value_name = "NAME")]
    pub scheduler_name: Option<String>,
    /// A label on every object, KEY=VALUE (repeatable, or comma-separated).
    #[arg(long = "label", visible_alias = "labels", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// An annotation on every object and the pods, KEY=VALUE (repeatable, or comma-separated).
    #[arg(
        long = "annotation",
        visible_alias = "annotations",
        value_name = "KEY=VALUE"
    )]
    pub annotations: Vec<String>,
    /// Only nodes with these labels, KEY=VALUE (repeatable, or comma-separated).
    #[arg(
        long = "nodeselector",
        visible_alias = "node-selector",
        value_name = "KEY=VALUE"
    )]
    pub node_selector: Vec<String>,
    /// Taints the pods tolerate: key=K,operator=Equal|Exists,value=V,effect=E[,tolerationSeconds=N],
    /// several separated by ';' (repeatable).
    #[arg(
        long = "tolerations",
        visible_alias = "toleration",
        value_name = "TOLERATIONS"
    )]
    pub tolerations: Vec<String>,
    /// CPU the scheduler reserves for each daemon, e.g. 500m or 2.
    #[arg(long, value_name = "QUANTITY")]
    pub requests_cpu: Option<String>,
    /// Memory the scheduler reserves for each daemon, e.g. 2Gi.
    #[arg(long, value_name = "QUANTITY")]
    pub requests_memory: Option<String>,
    /// Node-local disk the scheduler reserves for each daemon, e.g. 20Gi.
    #[arg(long, value_name = "QUANTITY")]
    pub requests_ephemeral_storage: Option<String>,
    /// The most CPU a daemon may use.
    #[arg(long, value_name = "QUANTITY")]
    pub limits_cpu: Option<String>,
    /// The most memory a daemon may use (beyond it, its builds are OOM-killed).
    #[arg(long, value_name = "QUANTITY")]
    pub limits_memory: Option<String>,
    /// The most node-local disk a daemon may use (beyond it, the pod is evicted).
    #[arg(long, value_name = "QUANTITY")]
    pub limits_ephemeral_storage: Option<String>,
    /// Register QEMU emulators for foreign platforms on the node first (a privileged init
    /// container running --qemu-image).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub qemu_install: bool,
    /// The binfmt installer --qemu-install runs.
    #[arg(long, value_name = "IMAGE", default_value = "tonistiigi/binfmt:latest")]
    pub qemu_image: String,
    /// Platforms the daemons build for, e.g. linux/amd64,linux/arm64 (repeatable): buildkitd's
    /// --oci-worker-platform; foreign ones need emulators (--qemu-install) or matching nodes.
    #[arg(long = "platform", value_name = "PLATFORMS")]
    pub platforms: Vec<String>,
    /// A bkrun.toml for the daemons, shipped as a ConfigMap mounted at /etc/bkrun.
    #[arg(long, value_name = "FILE")]
    pub bkrun_config: Option<PathBuf>,
    /// A buildkitd.toml for the daemons, shipped as a ConfigMap mounted at /etc/buildkit.
    #[arg(long, value_name = "FILE")]
    pub buildkitd_config: Option<PathBuf>,
    /// The Kubernetes TLS Secret (ca.crt, tls.crt, tls.key) the daemons serve mutual TLS with:
    /// the server's certificate and key, and the CA that signs client certificates
    /// (default NAME-tls; --insecure-plaintext serves without TLS instead).
    #[arg(long, value_name = "SECRET")]
    pub tls_secret: Option<String>,
    /// The port the daemons listen on, and the Service's.
    #[arg(long, value_name = "PORT", default_value_t = 1234, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Admit connections to the daemons' port only from namespaces with this label, KEY=VALUE
    /// (repeatable: a namespace must have them all): adds a NetworkPolicy; default none.
    #[arg(long = "allow-from-namespace", value_name = "KEY=VALUE")]
    pub allow_from_namespace: Vec<String>,
    /// StatefulSet only: keep each daemon's cache on a PersistentVolumeClaim of this size (e.g.
    /// 50Gi), so it outlives the pod; default an emptyDir, which goes with it.
    #[arg(long, value_name = "QUANTITY")]
    pub storage: Option<String>,
    /// The StorageClass of --storage's claims (default: the cluster's default class).
    #[arg(long, value_name = "CLASS", requires = "storage")]
    pub storage_class: Option<String>,
}

impl From<KubeKind> for crate::kube::KubeKind {
    fn from(k: KubeKind) -> Self {
        match k {
            KubeKind::Deployment => Self::Deployment,
            KubeKind::Statefulset => Self::Statefulset,
        }
    }
}

impl From<&KubeArgs> for crate::kube::KubeFlags {
    fn from(a: &KubeArgs) -> Self {
        let KubeArgs {
            name,
            namespace,
            kind,
            image,
            replicas,
            rootless,
            userns,
            service_account,
            scheduler_name,
            labels,
            annotations,
            node_selector,
            tolerations,
            requests_cpu,
            requests_memory,
            requests_ephemeral_storage,
            limits_cpu,
            limits_memory,
            limits_ephemeral_storage,
            qemu_install,
            qemu_image,
            platforms,
            bkrun_config,
            buildkitd_config,
            tls_secret,
            port,
            allow_from_namespace,
            storage,
            storage_class,
        } = a.clone();
        crate::kube::KubeFlags {
            name,
            namespace,
            kind: kind.into(),
            image,
            replicas,
            rootless,
            userns,
            service_account,
            scheduler_name,
            labels,
            annotations,
            node_selector,
            tolerations,
            requests_cpu,
            requests_memory,
            requests_ephemeral_storage,
            limits_cpu,
            limits_memory,
            limits_ephemeral_storage,
            qemu_install,
            qemu_image,
            platforms,
            bkrun_config,
            buildkitd_config,
            tls_secret,
            port,
            allow_from_namespace,
            storage,
            storage_class,
        }
    }
}
