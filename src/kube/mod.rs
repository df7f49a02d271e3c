//! `bkrun kube`: the Kubernetes objects of a pool of `bkrun daemon`s (ConfigMaps, a Service, a NetworkPolicy when asked, a Deployment or a StatefulSet), built from the API's own types out of checked options; options.rs checks the flags, yaml.rs prints the objects.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, AppArmorProfile, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

pub mod flags;
pub mod meta;
pub mod options;
pub mod quantity;
pub mod yaml;

pub use flags::{KubeFlags, KubeKind};
pub use options::{Options, PodMode};

use options::{BKRUN_CONFIG_DIR, BUILDKITD_CONFIG_DIR, CERTS_DIR, ROOTLESS_UID};

/// The daemon's container, and the name of its port (the Service targets it by name).
pub const CONTAINER: &str = "bkrun";
pub const PORT_NAME: &str = "buildkit";
/// The value of the name label on every object; the instance label holds the pool's name.
const APP: &str = "bkrun";

/// The objects of one pool, in the order they are applied: what the pods mount first.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub config_maps: Vec<ConfigMap>,
    pub service: Service,
    /// --allow-from-namespace's: applied before the workload, so no daemon serves unfenced.
    pub network_policy: Option<NetworkPolicy>,
    pub workload: Workload,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
}

impl Workload {
    pub fn pod_template(&self) -> &PodTemplateSpec {
        match self {
            Workload::Deployment(d) => &d.spec.as_ref().expect("built with a spec").template,
            Workload::StatefulSet(s) => &s.spec.as_ref().expect("built with a spec").template,
        }
    }
}

/// Builds the pool's objects from checked options.
pub fn pool(o: &Options) -> Pool {
    // The selector finds the pool's pods; every object also carries --label's labels.
    let selector: BTreeMap<String, String> = BTreeMap::from([
        (meta::NAME_LABEL.to_string(), APP.to_string()),
        (meta::INSTANCE_LABEL.to_string(), o.name.clone()),
    ]);
    let mut labels = o.labels.clone();
    labels.extend(selector.clone());

    let config_maps = config_maps(o, &labels);
    let service = service(o, &labels, &selector);
    let network_policy = network_policy(o, &labels, &selector);
    let template = pod_template(o, &labels, &selector, &config_maps);
    let workload = workload(o, &labels, selector, template);
    Pool {
        config_maps,
        service,
        network_policy,
        workload,
    }
}

/// A top-level object's metadata: its name, the pool's namespace, labels and annotations.
fn object_meta(o: &Options, labels: &BTreeMap<String, String>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: o.namespace.clone(),
        labels: Some(labels.clone()),
        annotations: (!o.annotations.is_empty()).then(|| o.annotations.clone()),
        ..Default::default()
    }
}

/// One ConfigMap per file shipped (bkrun.toml, buildkitd.toml), named NAME-<volume>.
fn config_maps(o: &Options, labels: &BTreeMap<String, String>) -> Vec<ConfigMap> {
    let mut config_maps = Vec::new();
    for (suffix, key, text) in [
        ("bkrun-config", "bkrun.toml", &o.bkrun_toml),
        ("buildkitd-config", "buildkitd.toml", &o.buildkitd_toml),
    ] {
        if let Some(text) = text {
            config_maps.push(ConfigMap {
                metadata: object_meta(o, labels, format!("{}-{suffix}", o.name)),
                data: Some(BTreeMap::from([(key.to_string(), text.clone())])),
                ..Default::default()
            });
        }
    }
    config_maps
}

fn service(
    o: &Options,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> Service {
    let headless = o.kind == KubeKind::Statefulset;
    Service {
        metadata: object_meta(o, labels, o.name.clone()),
        spec: Some(ServiceSpec {
            // A StatefulSet's headless Service gives each daemon its own DNS name,
            // NAME-i.NAME.NAMESPACE.svc, which clients that pick a daemon by key connect to.
            cluster_ip: headless.then(|| "None".to_string()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: o.port.into(),
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Once a policy selects the daemons' pods for ingress, only what it admits reaches them: the
/// port, from pods in namespaces with all the given labels. (The readiness probe is exec.)
fn network_policy(
    o: &Options,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> Option<NetworkPolicy> {
    (!o.allow_from_namespace.is_empty()).then(|| NetworkPolicy {
        metadata: object_meta(o, labels, o.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(o.allow_from_namespace.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(o.port.into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    })
}

/// The pods' template; the ConfigMaps' digest in its annotations rolls the pods when a shipped
/// file changes.
fn pod_template(
    o: &Options,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    config_maps: &[ConfigMap],
) -> PodTemplateSpec {
    let mut pod_annotations = o.annotations.clone();
    if !config_maps.is_empty() {
        pod_annotations.insert(meta::CONFIG_ANNOTATION.into(), config_digest(config_maps));
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(pod_spec(o, selector)),
    }
}

/// The Deployment or StatefulSet (--kind) that runs the template's pods.
fn workload(
    o: &Options,
    labels: &BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    template: PodTemplateSpec,
) -> Workload {
    let label_selector = LabelSelector {
        match_labels: Some(selector),
        ..Default::default()
    };
    match o.kind {
        KubeKind::Deployment => Workload::Deployment(Deployment {
            metadata: object_meta(o, labels, o.name.clone()),
            spec: Some(DeploymentSpec {
                replicas: Some(o.replicas),
                selector: label_selector,
                template,
                ..Default::default()
            }),
            ..Default::default()
        }),
        KubeKind::Statefulset => Workload::StatefulSet(StatefulSet {
            metadata: object_meta(o, labels, o.name.clone()),
            spec: Some(StatefulSetSpec {
                replicas: Some(o.replicas),
                selector: label_selector,
                service_name: Some(o.name.clone()),
                // The daemons are independent: start and replace them all at once, not in order.
                pod_management_policy: Some("Parallel".into()),
                template,
                volume_claim_templates: volume_claim_templates(o),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// --storage's claim, one per StatefulSet pod, mounted as the state volume.
fn volume_claim_templates(o: &Options) -> Option<Vec<PersistentVolumeClaim>> {
    o.storage.as_ref().map(|(size, class)| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(STATE_VOLUME.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(size.text.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]
    })
}

const STATE_VOLUME: &str = "buildkit-state";

/// The ConfigMaps' names and contents hashed, for the pod template's annotation.
fn config_digest(maps: &[ConfigMap]) -> String {
    let mut h = Sha256::new();
    for m in maps {
        // Lengths first, so no two different maps hash alike by moving bytes between fields.
        let name = m.metadata.name.as_deref().unwrap_or("");
        h.update((name.len() as u64).to_be_bytes());
        h.update(name);
        for (k, v) in m.data.iter().flatten() {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The daemon's command line after the image's entrypoint (bkrun).
pub fn daemon_args(o: &Options) -> Vec<String> {
    let mut args = Vec::new();
    if o.bkrun_toml.is_some() {
        args.extend(["--config".into(), format!("{BKRUN_CONFIG_DIR}/bkrun.toml")]);
    }
    let mut flags = o.buildkitd_flags.clone();
    if o.buildkitd_toml.is_some() {
        flags.push(format!("--config={BUILDKITD_CONFIG_DIR}/buildkitd.toml"));
    }
    for p in &o.platforms {
        flags.push(format!("--oci-worker-platform={p}"));
    }
    if !flags.is_empty() {
        args.push(format!("--buildkitd-flags={}", shell_words::join(&flags)));
    }
    args.extend([
        "daemon".into(),
        "--listen".into(),
        format!("tcp://0.0.0.0:{}", o.port),
    ]);
    match &o.tls_secret {
        Some(_) => {
            for (flag, file) in [
                ("--tls-server-cert", "tls.crt"),
                ("--tls-server-key", "tls.key"),
                ("--tls-client-ca", "ca.crt"),
            ] {
                args.extend([flag.to_string(), format!("{CERTS_DIR}/{file}")]);
            }
        }
        None => args.push("--insecure-plaintext".into()),
    }
    args
}

/// Ready once the daemon answers a gRPC call (ListWorkers) on its unix socket and has a worker:
/// the same server that serves the TCP listener, so a daemon still starting, or one whose
/// buildkitd died, is not sent builds. --addr connects without starting a daemon, and without
/// retries a failing probe fails within its timeout.
pub fn readiness_command(o: &Options) -> Vec<String> {
    vec![
        "bkrun".into(),
        "--addr".into(),
        format!(
            "unix://{}/buildkitd.sock",
            o.socket_dir.trim_end_matches('/')
        ),
        "--connect-retry".into(),
        "0".into(),
        "debug".into(),
        "workers".into(),
    ]
}

fn pod_spec(o: &Options, selector: &BTreeMap<String, String>) -> PodSpec {
    let (mounts, volumes) = volumes(o);
    // A claim arrives owned by root: let uid 1000's group own it, checked only at its root so a
    // large cache is not walked at every start.
    let pod_security_context =
        (o.mode == PodMode::Rootless && o.storage.is_some()).then(|| PodSecurityContext {
            fs_group: Some(ROOTLESS_UID),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            ..Default::default()
        });
    PodSpec {
        // The daemons never call the Kubernetes API: no token of the ServiceAccount's in their
        // pods, for a build step or a compromised daemon to use against the cluster.
        automount_service_account_token: Some(false),
        init_containers: qemu_init_containers(o),
        containers: vec![daemon_container(o, mounts)],
        volumes: Some(volumes),
        security_context: pod_security_context,
        // The pod's own user namespace: its root, and `privileged`, end there (images/userns.yaml).
        host_users: (o.mode == PodMode::Userns).then_some(false),
        service_account_name: o.service_account.clone(),
        scheduler_name: o.scheduler_name.clone(),
        node_selector: (!o.node_selector.is_empty()).then(|| o.node_selector.clone()),
        tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
        affinity: Some(spread_over_nodes(selector)),
        // bkrun stops the builds' processes and the daemon on SIGTERM; give it the time to.
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    }
}

/// The daemon's mounts and the pod's volumes: state (an emptyDir unless --storage's claim),
/// the TLS Secret, and the shipped files' ConfigMaps.
fn volumes(o: &Options) -> (Vec<VolumeMount>, Vec<Volume>) {
    let mut mounts = vec![mount(STATE_VOLUME, &o.state_dir, false)];
    let mut volumes = Vec::new();
    if o.storage.is_none() {
        // An emptyDir rather than the image's VOLUME, which some nodes mount nosuid (BuildKit's
        // rootless mode then cannot run its setuid helpers).
        volumes.push(Volume {
            name: STATE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    if let Some(secret) = &o.tls_secret {
        mounts.push(mount("certs", CERTS_DIR, true));
        volumes.push(Volume {
            name: "certs".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for (volume, dir, text) in [
        ("bkrun-config", BKRUN_CONFIG_DIR, &o.bkrun_toml),
        ("buildkitd-config", BUILDKITD_CONFIG_DIR, &o.buildkitd_toml),
    ] {
        if text.is_some() {
            mounts.push(mount(volume, dir, true));
            volumes.push(Volume {
                name: volume.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: format!("{}-{volume}", o.name),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    (mounts, volumes)
}

/// The daemon's container: bkrun daemon on the port, ready once it answers on its socket.
fn daemon_container(o: &Options, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(o.image.clone()),
        args: Some(daemon_args(o)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: o.port.into(),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(readiness_command(o)),
            }),
            initial_delay_seconds: Some(2),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        resources: resources(o),
        security_context: Some(security_context(o.mode)),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The --requests-* and --limits-* quantities; None when none is given.
fn resources(o: &Options) -> Option<ResourceRequirements> {
    let quantities = |m: &BTreeMap<&'static str, quantity::Quantity>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, q)| (k.to_string(), Quantity(q.text.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    (!o.resources.requests.is_empty() || !o.resources.limits.is_empty()).then(|| {
        ResourceRequirements {
            requests: quantities(&o.resources.requests),
            limits: quantities(&o.resources.limits),
            ..Default::default()
        }
    })
}

/// The daemon container's privileges for the pod's mode.
fn security_context(mode: PodMode) -> SecurityContext {
    match mode {
        // In a --userns pod, privileged inside the pod's user namespace only: buildkitd runs
        // privileged there and its builds keep their process sandbox.
        PodMode::Privileged | PodMode::Userns => SecurityContext {
            privileged: Some(true),
            ..Default::default()
        },
        // As images/builder.yaml: rootlesskit creates a user namespace and mounts, which the
        // default seccomp and AppArmor profiles refuse; bkrun then runs rootless-strict when
        // /proc is masked (a pod's default), rootless when it is not.
        PodMode::Rootless => SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(ROOTLESS_UID),
            run_as_group: Some(ROOTLESS_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The binfmt installer, when --qemu-install asks for emulators. binfmt_misc is the node
/// kernel's: registering emulators there takes privileges, even for a rootless pool, and lasts
/// until the node reboots.
fn qemu_init_containers(o: &Options) -> Option<Vec<Container>> {
    o.qemu_image.as_ref().map(|image| {
        vec![Container {
            name: "qemu".into(),
            image: Some(image.clone()),
            args: Some(vec!["--install".into(), "all".into()]),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }]
    })
}

/// Spread over nodes when the cluster can: daemons on one node share its disk and CPU.
fn spread_over_nodes(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector.clone()),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The addresses clients use, and the names the server certificate must hold, for the notes
/// printed beside the objects.
pub fn client_addresses(o: &Options) -> Vec<String> {
    let ns = o
        .namespace
        .as_ref()
        .map(|n| format!(".{n}.svc"))
        .unwrap_or_default();
    match o.kind {
        KubeKind::Deployment => vec![format!("tcp://{}{ns}:{}", o.name, o.port)],
        KubeKind::Statefulset => (0..o.replicas)
            .map(|i| format!("tcp://{}-{i}.{}{ns}:{}", o.name, o.name, o.port))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
