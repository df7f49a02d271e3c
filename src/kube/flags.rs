//! `bkrun kube`'s flags as plain values (src/cli/ parses them and maps them into these).

use std::path::PathBuf;

/// The workload that runs the daemons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubeKind {
    /// Interchangeable daemons behind one Service: any replica serves any build.
    #[default]
    Deployment,
    /// Daemons with stable names (NAME-0, NAME-1, …) under a headless Service.
    Statefulset,
}

/// `bkrun kube`'s flags as given; [`super::Options::from_args`] checks and settles them. The
/// fields are named as the flags are (src/cli/kube.rs says what each one means).
#[derive(Debug, Clone, Default)]
pub struct KubeFlags {
    pub name: String,
    pub namespace: Option<String>,
    pub kind: KubeKind,
    pub image: Option<String>,
    pub replicas: i32,
    pub rootless: bool,
    pub userns: bool,
    pub service_account: Option<String>,
    pub scheduler_name: Option<String>,
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
    pub node_selector: Vec<String>,
    pub tolerations: Vec<String>,
    pub requests_cpu: Option<String>,
    pub requests_memory: Option<String>,
    pub requests_ephemeral_storage: Option<String>,
    pub limits_cpu: Option<String>,
    pub limits_memory: Option<String>,
    pub limits_ephemeral_storage: Option<String>,
    pub qemu_install: bool,
    pub qemu_image: String,
    pub platforms: Vec<String>,
    pub bkrun_config: Option<PathBuf>,
    pub buildkitd_config: Option<PathBuf>,
    pub tls_secret: Option<String>,
    pub port: u16,
    pub allow_from_namespace: Vec<String>,
    pub storage: Option<String>,
    pub storage_class: Option<String>,
}
