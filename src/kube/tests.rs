//! `bkrun kube`'s objects: they read back into the API types unchanged, every flag lands where it should, bad values and reserved keys are refused by name, and the daemon's command line is one bkrun itself accepts.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;
use crate::cli::Command;

fn options(args: &[&str]) -> anyhow::Result<Options> {
    let mut argv = vec!["bkrun"];
    argv.extend(args);
    let (k, g) = crate::cli::parse_kube(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Options::from_args(&k, &g)
}

fn ok(args: &[&str]) -> Options {
    options(args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
}

fn refused(args: &[&str]) -> String {
    match options(args) {
        Ok(_) => panic!("{args:?} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// A file in a fresh temp dir; the dir lives as long as the returned guard.
fn file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::write(&p, text).unwrap();
    (d, p.display().to_string())
}

/// The YAML stream's documents, read by both YAML parsers: the one that wrote them and the
/// one the other tests use; they must agree.
fn documents(text: &str) -> Vec<Value> {
    let norway: Vec<Value> = serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let yaml: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(norway, yaml);
    norway
}

/// Parses `doc` as `T` and requires that writing it out again gives `doc` back: no field the
/// type does not know, none lost or changed.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(&serde_json::to_value(&t).unwrap(), doc, "not a round trip");
    t
}

/// Renders the pool of `args`, reads the YAML back, and checks it is the same objects.
fn round_trip(args: &[&str]) -> (Options, Pool) {
    let o = ok(args);
    let p = pool(&o);
    let text = yaml::render(&p).unwrap();
    assert!(text.starts_with("# A pool of bkrun daemons"), "{text}");
    let docs = documents(&text);
    let policies = usize::from(p.network_policy.is_some());
    assert_eq!(docs.len(), p.config_maps.len() + 2 + policies, "{text}");
    let mut back_maps = Vec::new();
    for d in &docs[..p.config_maps.len()] {
        assert_eq!(
            (d["apiVersion"].as_str(), d["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );
        back_maps.push(typed::<ConfigMap>(d));
    }
    let svc = &docs[p.config_maps.len()];
    assert_eq!(
        (svc["apiVersion"].as_str(), svc["kind"].as_str()),
        (Some("v1"), Some("Service"))
    );
    let network_policy = (policies == 1).then(|| {
        let d = &docs[p.config_maps.len() + 1];
        assert_eq!(
            (d["apiVersion"].as_str(), d["kind"].as_str()),
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy"))
        );
        typed::<NetworkPolicy>(d)
    });
    let w = &docs[p.config_maps.len() + 1 + policies];
    let workload = match (w["apiVersion"].as_str(), w["kind"].as_str()) {
        (Some("apps/v1"), Some("Deployment")) => Workload::Deployment(typed::<Deployment>(w)),
        (Some("apps/v1"), Some("StatefulSet")) => Workload::StatefulSet(typed::<StatefulSet>(w)),
        other => panic!("{other:?}"),
    };
    let back = Pool {
        config_maps: back_maps,
        service: typed::<Service>(svc),
        network_policy,
        workload,
    };
    assert_eq!(back, p);
    (o, p)
}

fn pod(p: &Pool) -> &PodSpec {
    p.workload.pod_template().spec.as_ref().unwrap()
}

fn daemon(p: &Pool) -> &Container {
    &pod(p).containers[0]
}

fn labels_of(p: &Pool) -> Vec<BTreeMap<String, String>> {
    let mut all: Vec<BTreeMap<String, String>> = p
        .config_maps
        .iter()
        .map(|m| m.metadata.labels.clone().unwrap())
        .collect();
    all.push(p.service.metadata.labels.clone().unwrap());
    let (meta, template) = match &p.workload {
        Workload::Deployment(d) => (&d.metadata, &d.spec.as_ref().unwrap().template),
        Workload::StatefulSet(s) => (&s.metadata, &s.spec.as_ref().unwrap().template),
    };
    all.push(meta.labels.clone().unwrap());
    all.push(template.metadata.as_ref().unwrap().labels.clone().unwrap());
    all
}

#[test]
fn defaults_a_privileged_deployment_serving_mutual_tls_from_name_tls() {
    let (o, p) = round_trip(&["kube"]);
    assert_eq!(o.name, "bkrun-builder");
    assert!(p.config_maps.is_empty());
    let Workload::Deployment(d) = &p.workload else {
        panic!()
    };
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(d.metadata.namespace, None);
    let c = daemon(&p);
    assert_eq!(c.image.as_deref(), Some("bkrun:privileged"));
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    assert!(c.resources.is_none());
    assert!(pod(&p).init_containers.is_none());
    let secret = pod(&p)
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref())
        .unwrap();
    // The Secret images/builder-certs.yaml has cert-manager make.
    assert_eq!(secret.secret_name.as_deref(), Some("bkrun-builder-tls"));
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [("buildkit-state", "/var/lib/buildkit"), ("certs", "/certs")]
    );
    // The Service sends its port to the container's port by name.
    let sp = &p.service.spec.as_ref().unwrap();
    assert_eq!(sp.cluster_ip, None);
    let port = &sp.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 1234);
    assert_eq!(
        port.target_port,
        Some(IntOrString::String(PORT_NAME.into()))
    );
    assert_eq!(
        c.ports.as_ref().unwrap()[0].name.as_deref(),
        Some(PORT_NAME)
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 1234);
    // Every object carries the selector's labels, and the selector picks the pods.
    for l in labels_of(&p) {
        assert_eq!(l[meta::NAME_LABEL], "bkrun");
        assert_eq!(l[meta::INSTANCE_LABEL], "bkrun-builder");
    }
    assert_eq!(
        d.spec.as_ref().unwrap().selector.match_labels,
        sp.selector.clone()
    );
    assert_eq!(client_addresses(&o), ["tcp://bkrun-builder:1234"]);
    // No ServiceAccount token in the daemons' pods, and no NetworkPolicy unless asked for.
    assert_eq!(pod(&p).automount_service_account_token, Some(false));
    assert!(p.network_policy.is_none());
}

#[test]
fn allow_from_namespace_fences_the_port_with_a_network_policy() {
    for kind in ["deployment", "statefulset"] {
        let (o, p) = round_trip(&[
            "kube",
            "--kind",
            kind,
            "--namespace",
            "builds",
            "--port",
            "4321",
            "--label",
            "team=ci",
            "--allow-from-namespace",
            "kubernetes.io/metadata.name=ci",
            "--allow-from-namespace",
            "tier=build",
        ]);
        let np = p.network_policy.as_ref().unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("bkrun-builder"));
        assert_eq!(np.metadata.namespace.as_deref(), Some("builds"));
        let spec = np.spec.as_ref().unwrap();
        // The pods the Service sends to, by the same labels.
        let service_selector = p.service.spec.as_ref().unwrap().selector.clone();
        assert_eq!(
            spec.pod_selector.as_ref().unwrap().match_labels,
            service_selector
        );
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        let rules = spec.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        // One peer whose namespace must carry every pair: the pairs are ANDed.
        let from = rules[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert!(from[0].pod_selector.is_none() && from[0].ip_block.is_none());
        assert_eq!(
            from[0].namespace_selector.as_ref().unwrap().match_labels,
            Some(BTreeMap::from([
                ("kubernetes.io/metadata.name".to_string(), "ci".to_string()),
                ("tier".to_string(), "build".to_string()),
            ]))
        );
        let ports = rules[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(4321)));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(o.allow_from_namespace.len(), 2);
        // It comes before the workload in the stream, so no daemon serves before it applies.
        let text = yaml::render(&p).unwrap();
        let policy_at = text.find("kind: NetworkPolicy").unwrap();
        let workload_at = text
            .find("kind: Deployment")
            .or_else(|| text.find("kind: StatefulSet"))
            .unwrap();
        assert!(policy_at < workload_at, "{text}");
    }
}

#[test]
fn allow_from_namespace_takes_label_grammar_only() {
    for bad in [
        "team",
        "=ci",
        "Team Name=ci",
        "team=c i",
        "team=-ci",
        "example.com/=ci",
        "-team=ci",
    ] {
        let e = refused(&["kube", &format!("--allow-from-namespace={bad}")]);
        assert!(e.starts_with("--allow-from-namespace "), "{bad}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let long = format!("team={}", "x".repeat(64));
    assert!(refused(&["kube", "--allow-from-namespace", &long])
        .contains("not a valid namespace label value"));
    let e = refused(&[
        "kube",
        "--allow-from-namespace",
        "team=a",
        "--allow-from-namespace",
        "team=b",
    ]);
    assert_eq!(e, "--allow-from-namespace gives \"team\" two values (\"a\" and \"b\"), which no namespace has at once: keep one");
    // An empty value is a label value too (a namespace labelled `team=`).
    assert!(
        ok(&["kube", "--allow-from-namespace", "team="]).allow_from_namespace["team"].is_empty()
    );
}

#[test]
fn the_daemons_command_line_is_one_bkrun_accepts() {
    let (bk, bk_path) = file("buildkitd.toml", "debug = true\n");
    let (cfg, cfg_path) = file("bkrun.toml", "ready_timeout = 60\n");
    let (o, p) = round_trip(&[
        "kube",
        "--port",
        "4321",
        "--platform",
        "linux/amd64,linux/arm64",
        "--platform=linux/arm64",
        "--buildkitd-flags",
        "--oci-worker-gc-keepstorage 20000 --debug",
        "--buildkitd-config",
        &bk_path,
        "--bkrun-config",
        &cfg_path,
    ]);
    drop((bk, cfg));
    let args = daemon(&p).args.clone().unwrap();
    let mut argv = vec!["bkrun".to_string()];
    argv.extend(args);
    let c = crate::cli::parse(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Daemon(d) = c.command else {
        panic!("{argv:?}")
    };
    assert_eq!(d.listen, ["tcp://0.0.0.0:4321"]);
    assert_eq!(d.tls_server_cert.unwrap(), Path::new("/certs/tls.crt"));
    assert_eq!(d.tls_server_key.unwrap(), Path::new("/certs/tls.key"));
    assert_eq!(d.tls_client_ca.unwrap(), Path::new("/certs/ca.crt"));
    assert_eq!(c.global.config.unwrap(), Path::new("/etc/bkrun/bkrun.toml"));
    assert!(!c.global.insecure_plaintext);
    let flags = shell_words::split(&c.global.buildkitd_flags.unwrap()).unwrap();
    assert_eq!(
        flags,
        [
            "--oci-worker-gc-keepstorage",
            "20000",
            "--debug",
            "--config=/etc/buildkit/buildkitd.toml",
            "--oci-worker-platform=linux/amd64",
            "--oci-worker-platform=linux/arm64",
        ]
    );
    assert_eq!(o.platforms, ["linux/amd64", "linux/arm64"]);
    // The probe is a bkrun command line too, asking the daemon's own socket.
    let probe = readiness_command(&o);
    let c = crate::cli::parse(&probe).unwrap();
    assert_eq!(c.global.addr, ["unix:///run/buildkit/buildkitd.sock"]);
    assert!(matches!(c.command, Command::Debug { .. }));
    assert_eq!(
        daemon(&p)
            .readiness_probe
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref(),
        Some(&probe)
    );
    // Plaintext only when asked, and then bkrun daemon is told so too.
    let (_, p) = round_trip(&["kube", "--insecure-plaintext"]);
    let args = daemon(&p).args.clone().unwrap();
    assert!(
        args.contains(&"--insecure-plaintext".to_string()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--tls")), "{args:?}");
    assert!(pod(&p).volumes.iter().flatten().all(|v| v.secret.is_none()));
    let e = refused(&["kube", "--insecure-plaintext", "--tls-secret", "x"]);
    assert!(e.contains("contradict"), "{e}");
}

#[test]
fn config_files_become_config_maps_mounted_where_the_daemon_reads_them() {
    let (bk, bk_path) = file("buildkitd.toml", "[worker.oci]\ngc = true\n");
    let (cfg, cfg_path) = file(
        "bkrun.toml",
        "root = \"/cache\"\n[buildkitd.registry.\"r.example\"]\nhttp = true\n",
    );
    let e = refused(&[
        "kube",
        "--bkrun-config",
        &cfg_path,
        "--buildkitd-config",
        &bk_path,
    ]);
    assert!(e.contains("keep one of them"), "{e}");
    let (o, p) = round_trip(&["kube", "--bkrun-config", &cfg_path, "--namespace", "ci"]);
    assert_eq!(p.config_maps.len(), 1);
    let m = &p.config_maps[0];
    assert_eq!(
        m.metadata.name.as_deref(),
        Some("bkrun-builder-bkrun-config")
    );
    assert_eq!(m.metadata.namespace.as_deref(), Some("ci"));
    assert_eq!(
        m.data.as_ref().unwrap()["bkrun.toml"],
        std::fs::read_to_string(&cfg_path).unwrap()
    );
    // bkrun.toml's state dir is where the state volume goes.
    assert_eq!(o.state_dir, "/cache");
    let c = daemon(&p);
    let at = |name: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == name)
            .map(|m| (m.mount_path.clone(), m.read_only))
    };
    assert_eq!(at("bkrun-config"), Some(("/etc/bkrun".into(), Some(true))));
    assert_eq!(at("buildkit-state"), Some(("/cache".into(), None)));
    let vol = pod(&p)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "bkrun-config")
        .unwrap();
    assert_eq!(
        vol.config_map.as_ref().unwrap().name,
        "bkrun-builder-bkrun-config"
    );

    let (_, p2) = round_trip(&["kube", "--buildkitd-config", &bk_path]);
    let m = &p2.config_maps[0];
    assert_eq!(
        m.metadata.name.as_deref(),
        Some("bkrun-builder-buildkitd-config")
    );
    assert!(m.data.as_ref().unwrap().contains_key("buildkitd.toml"));
    let c = daemon(&p2);
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "buildkitd-config" && m.mount_path == "/etc/buildkit"));

    // The pod template carries the files' digest: new contents, new pods.
    let digest = |p: &Pool| {
        p.workload
            .pod_template()
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[meta::CONFIG_ANNOTATION]
            .clone()
    };
    let (_, plain) = round_trip(&["kube"]);
    assert!(plain
        .workload
        .pod_template()
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .is_none());
    let (cfg2, cfg2_path) = file("bkrun.toml", "root = \"/cache2\"\n");
    let (_, p3) = round_trip(&["kube", "--bkrun-config", &cfg2_path, "--namespace", "ci"]);
    assert_eq!(digest(&p).len(), 64);
    assert_ne!(digest(&p), digest(&p3));
    assert_eq!(
        digest(&p),
        digest(&round_trip(&["kube", "--bkrun-config", &cfg_path, "--namespace", "ci"]).1)
    );
    drop((bk, cfg, cfg2));

    // A bad file is refused before anything is printed, with the flag and the path.
    let (bad, bad_path) = file("bkrun.toml", "moed = \"rootless\"\n");
    let e = refused(&["kube", "--bkrun-config", &bad_path]);
    assert!(
        e.contains("--bkrun-config") && e.contains("not a valid bkrun.toml"),
        "{e}"
    );
    let (bad2, bad2_path) = file("buildkitd.toml", "[worker.oci\n");
    let e = refused(&["kube", "--buildkitd-config", &bad2_path]);
    assert!(
        e.contains("--buildkitd-config") && e.contains("not valid TOML"),
        "{e}"
    );
    let e = refused(&["kube", "--buildkitd-config", "/nonexistent/buildkitd.toml"]);
    assert!(e.contains("cannot read --buildkitd-config"), "{e}");
    drop((bad, bad2));
    // One configuration for buildkitd, wherever it is named.
    let (bk, bk_path) = file("buildkitd.toml", "debug = true\n");
    let e = refused(&[
        "kube",
        "--buildkitd-config",
        &bk_path,
        "--buildkitd-flags",
        "--config=/x",
    ]);
    assert!(e.contains("keep one of them"), "{e}");
    let (t, t_path) = file("bkrun.toml", "[buildkitd]\ndebug = true\n");
    let e = refused(&[
        "kube",
        "--bkrun-config",
        &t_path,
        "--buildkitd-flags",
        "--config /x",
    ]);
    assert!(e.contains("keep one of them"), "{e}");
    drop((bk, t));
    // bkrun.toml's mode must suit the pod's.
    let (m, m_path) = file("bkrun.toml", "mode = \"rootless-strict\"\n");
    let e = refused(&["kube", "--bkrun-config", &m_path]);
    assert!(e.contains("add --rootless"), "{e}");
    ok(&["kube", "--bkrun-config", &m_path, "--rootless"]);
    drop(m);
    // The global --config is this bkrun's own file, never shipped.
    let e = refused(&["--config", "x.toml", "kube"]);
    assert!(e.contains("--bkrun-config"), "{e}");
}

#[test]
fn rootless_runs_as_the_images_user_as_images_builder_yaml_does() {
    let (o, p) = round_trip(&["kube", "--rootless"]);
    let c = daemon(&p);
    assert_eq!(c.image.as_deref(), Some("bkrun:rootless"));
    // The shared builder in images/ is the same daemon, rootless: same security settings,
    // same probe, same state dir.
    let builder = include_str!("../../images/builder.yaml");
    let docs = documents(builder);
    let dep: Deployment = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let theirs = &dep.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.security_context, theirs.security_context);
    assert_eq!(
        c.readiness_probe.as_ref().unwrap().exec,
        theirs.readiness_probe.as_ref().unwrap().exec
    );
    assert_eq!(o.state_dir, "/home/user/.local/share/buildkit");
    assert!(theirs
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == o.state_dir));
    // No claim, so no fsGroup; with one, uid 1000's group owns it.
    assert!(pod(&p).security_context.is_none());
    let (_, p) = round_trip(&[
        "kube",
        "--rootless",
        "--kind",
        "statefulset",
        "--storage",
        "50Gi",
    ]);
    let psc = pod(&p).security_context.clone().unwrap();
    assert_eq!(psc.fs_group, Some(1000));
    assert_eq!(
        psc.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    // --rootless=false is buildx's spelling of the default.
    assert_eq!(ok(&["kube", "--rootless=false"]).mode, PodMode::Privileged);
}

#[test]
fn userns_runs_root_privileged_in_user_namespaced_pods_as_images_userns_yaml_does() {
    let (o, p) = round_trip(&["kube", "--userns"]);
    assert_eq!(o.mode, PodMode::Userns);
    let c = daemon(&p);
    assert_eq!(c.image.as_deref(), Some("bkrun:privileged"));
    // images/userns.yaml's pod is the same: hostUsers false, the container privileged (within
    // the pod's user namespace), the state dir at root's path.
    let docs = documents(include_str!("../../images/userns.yaml"));
    let theirs: k8s_openapi::api::core::v1::Pod = serde_json::from_value(docs[0].clone()).unwrap();
    let theirs = theirs.spec.unwrap();
    assert_eq!(pod(&p).host_users, Some(false));
    assert_eq!(pod(&p).host_users, theirs.host_users);
    assert_eq!(c.security_context, theirs.containers[0].security_context);
    assert_eq!(o.state_dir, "/var/lib/buildkit");
    assert!(theirs.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == o.state_dir));
    assert!(readiness_command(&o)[2].starts_with("unix:///run/buildkit/"));
    // The other pods share the node's user namespace, as the API's default does.
    for args in [
        &["kube"][..],
        &["kube", "--rootless"],
        &["kube", "--userns=false"],
    ] {
        assert_eq!(pod(&round_trip(args).1).host_users, None, "{args:?}");
    }
    // A StatefulSet of them too.
    let (_, p) = round_trip(&["kube", "--userns", "--kind", "statefulset"]);
    assert_eq!(pod(&p).host_users, Some(false));
    // One way to run the daemons at a time, and a shipped bkrun.toml's mode must suit it.
    assert!(crate::cli::parse(["bkrun", "kube", "--rootless", "--userns"]).is_err());
    let both = KubeFlags {
        name: "bkrun-builder".into(),
        rootless: true,
        userns: true,
        ..Default::default()
    };
    let e = Options::from_args(&both, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("keep one"), "{e}");
    let (m, m_path) = file("bkrun.toml", "mode = \"rootless\"\n");
    let e = refused(&["kube", "--userns", "--bkrun-config", &m_path]);
    assert!(e.contains("drop --userns for --rootless"), "{e}");
    let (pm, pm_path) = file("bkrun.toml", "mode = \"privileged\"\n");
    ok(&["kube", "--userns", "--bkrun-config", &pm_path]);
    drop((m, pm));
}

#[test]
fn each_option_lands_where_it_should() {
    let (o, p) = round_trip(&[
        "kube",
        "--name",
        "pool",
        "--namespace",
        "builds",
        "--image",
        "registry.example/bkrun:1",
        "--replicas",
        "3",
        "--serviceaccount",
        "builder",
        "--schedulername",
        "batch",
        "--label",
        "team=ci,tier=build",
        "--labels",
        "cost=shared",
        "--annotation",
        "example.com/owner=ci team",
        "--nodeselector",
        "kubernetes.io/arch=amd64",
        "--tolerations",
        "key=builds,operator=Equal,value=yes,effect=NoSchedule",
        "--requests-cpu",
        "500m",
        "--requests-memory",
        "1Gi",
        "--requests-ephemeral-storage",
        "10Gi",
        "--limits-cpu",
        "2",
        "--limits-memory",
        "4Gi",
        "--limits-ephemeral-storage",
        "50Gi",
        "--qemu-install",
        "--qemu-image",
        "registry.example/binfmt:1",
        "--tls-secret",
        "pool-certs",
    ]);
    let Workload::Deployment(d) = &p.workload else {
        panic!()
    };
    assert_eq!(d.metadata.name.as_deref(), Some("pool"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("builds"));
    assert_eq!(p.service.metadata.namespace.as_deref(), Some("builds"));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    let spec = pod(&p);
    assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
    assert_eq!(spec.scheduler_name.as_deref(), Some("batch"));
    assert_eq!(
        spec.node_selector.clone().unwrap(),
        BTreeMap::from([("kubernetes.io/arch".into(), "amd64".into())])
    );
    let t = &spec.tolerations.as_ref().unwrap()[0];
    assert_eq!(
        (
            t.key.as_deref(),
            t.operator.as_deref(),
            t.value.as_deref(),
            t.effect.as_deref()
        ),
        (
            Some("builds"),
            Some("Equal"),
            Some("yes"),
            Some("NoSchedule")
        )
    );
    for l in labels_of(&p) {
        assert_eq!(l["team"], "ci");
        assert_eq!(l["tier"], "build");
        assert_eq!(l["cost"], "shared");
        assert_eq!(l[meta::INSTANCE_LABEL], "pool");
    }
    // Custom labels never join the selector: changing them must not orphan the pods.
    assert_eq!(
        d.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .len(),
        2
    );
    for a in [
        d.metadata.annotations.as_ref(),
        p.service.metadata.annotations.as_ref(),
        p.workload
            .pod_template()
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref(),
    ] {
        assert_eq!(a.unwrap()["example.com/owner"], "ci team");
    }
    let c = daemon(&p);
    assert_eq!(c.image.as_deref(), Some("registry.example/bkrun:1"));
    let r = c.resources.as_ref().unwrap();
    let q = |m: &Option<BTreeMap<String, Quantity>>, k: &str| m.as_ref().unwrap()[k].0.clone();
    assert_eq!(q(&r.requests, "cpu"), "500m");
    assert_eq!(q(&r.requests, "memory"), "1Gi");
    assert_eq!(q(&r.requests, "ephemeral-storage"), "10Gi");
    assert_eq!(q(&r.limits, "cpu"), "2");
    assert_eq!(q(&r.limits, "memory"), "4Gi");
    assert_eq!(q(&r.limits, "ephemeral-storage"), "50Gi");
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("registry.example/binfmt:1"));
    assert_eq!(
        init.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    assert!(spec.volumes.iter().flatten().any(|v| v
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
        == Some("pool-certs")));
    assert_eq!(client_addresses(&o), ["tcp://pool.builds.svc:1234"]);
    // The pods spread over nodes, by the selector's labels.
    let term = &spec
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap()
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term.pod_affinity_term
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels,
        d.spec.as_ref().unwrap().selector.match_labels
    );
}

#[test]
fn a_statefulset_gets_a_headless_service_and_stable_names() {
    let (o, p) = round_trip(&[
        "kube",
        "--kind",
        "statefulset",
        "--replicas",
        "3",
        "--namespace",
        "ci",
        "--storage",
        "50Gi",
        "--storage-class",
        "fast",
    ]);
    let Workload::StatefulSet(s) = &p.workload else {
        panic!()
    };
    let spec = s.spec.as_ref().unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("bkrun-builder"));
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        p.service.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(p.service.metadata.name, s.metadata.name);
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("buildkit-state"));
    let cs = claim.spec.as_ref().unwrap();
    assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "50Gi"
    );
    // The claim replaces the emptyDir; the mount stays.
    assert!(pod(&p)
        .volumes
        .iter()
        .flatten()
        .all(|v| v.name != "buildkit-state"));
    assert!(daemon(&p)
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "buildkit-state"));
    assert_eq!(
        client_addresses(&o),
        [
            "tcp://bkrun-builder-0.bkrun-builder.ci.svc:1234",
            "tcp://bkrun-builder-1.bkrun-builder.ci.svc:1234",
            "tcp://bkrun-builder-2.bkrun-builder.ci.svc:1234",
        ]
    );
    // Without --storage, an emptyDir as in a Deployment.
    let (_, p) = round_trip(&["kube", "--kind", "statefulset"]);
    assert!(pod(&p)
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == "buildkit-state" && v.empty_dir.is_some()));
    let e = refused(&["kube", "--storage", "50Gi"]);
    assert!(e.contains("add --kind statefulset"), "{e}");
    let e = refused(&["kube", "--kind", "statefulset", "--storage", "0"]);
    assert!(e.contains("--storage \"0\" is empty"), "{e}");
    let e = refused(&["kube", "--kind", "statefulset", "--storage", "50GB"]);
    assert!(
        e.contains("--storage \"50GB\" is not a Kubernetes quantity"),
        "{e}"
    );
    let e = refused(&["kube", "--kind", "statefulset", "--name", &"a".repeat(53)]);
    assert!(e.contains("at most 52"), "{e}");
    ok(&["kube", "--name", &"a".repeat(63)]);
}

#[test]
fn bad_quantities_are_refused_naming_flag_and_value() {
    for flag in [
        "--requests-cpu",
        "--requests-memory",
        "--requests-ephemeral-storage",
        "--limits-cpu",
        "--limits-memory",
        "--limits-ephemeral-storage",
    ] {
        for bad in ["2GB", "1.5 Gi", "lots", "1e", "-1"] {
            let e = refused(&["kube", &format!("{flag}={bad}")]);
            assert!(e.starts_with(&format!("{flag} {bad:?} is ")), "{e}");
        }
    }
    let e = refused(&["kube", "--requests-memory", "2Gi", "--limits-memory", "1Gi"]);
    assert!(
        e.contains("--requests-memory \"2Gi\" is more than --limits-memory \"1Gi\""),
        "{e}"
    );
    // Equal, in other units, is fine.
    ok(&["kube", "--requests-cpu", "1", "--limits-cpu", "1000m"]);
    ok(&[
        "kube",
        "--requests-memory",
        "1024Mi",
        "--limits-memory",
        "1Gi",
    ]);
}

#[test]
fn reserved_and_malformed_keys_are_refused_by_name() {
    let e = refused(&["kube", "--label", "app.kubernetes.io/name=mine"]);
    assert!(
        e.contains(
            "--label: the label \"app.kubernetes.io/name\" is reserved and cannot be customized"
        ),
        "{e}"
    );
    let e = refused(&["kube", "--labels", "team=a,app.kubernetes.io/instance=x"]);
    assert!(
        e.contains("\"app.kubernetes.io/instance\" is reserved"),
        "{e}"
    );
    let e = refused(&["kube", "--annotation", "bkrun/config-sha256=0"]);
    assert!(
        e.contains("--annotation: the annotation \"bkrun/config-sha256\" is reserved"),
        "{e}"
    );
    let e = refused(&["kube", "--label", "team"]);
    assert!(e.contains("is not KEY=VALUE"), "{e}");
    let e = refused(&["kube", "--nodeselector", "arch=x86 64"]);
    assert!(e.contains("--nodeselector"), "{e}");
    let e = refused(&["kube", "--tolerations", "key=a,operator=Sometimes"]);
    assert!(
        e.contains("--tolerations") && e.contains("Sometimes"),
        "{e}"
    );
    for (flag, bad) in [
        ("--name", "Builder"),
        ("--namespace", "ci_builds"),
        ("--serviceaccount", "Builder"),
        ("--tls-secret", "a secret"),
        ("--image", "bk run"),
        ("--platform", "amd64"),
        ("--platform", "linux//arm64"),
    ] {
        let e = refused(&["kube", flag, bad]);
        assert!(e.starts_with(&format!("{flag} {bad:?}")), "{e}");
    }
    let e = refused(&["kube", "--buildkitd-flags", "--addr tcp://0.0.0.0:1"]);
    assert!(e.contains("--addr is set by bkrun kube"), "{e}");
    let e = refused(&[
        "kube",
        "--buildkitd-flags",
        "--debugaddr=tcp://0.0.0.0:6060",
    ]);
    assert!(
        e.starts_with("--buildkitd-flags --debugaddr tcp://0.0.0.0:6060 serves buildkitd's debug handlers without TLS"),
        "{e}"
    );
    round_trip(&[
        "kube",
        "--buildkitd-flags",
        "--debugaddr tcp://127.0.0.1:6060",
    ]);
    let e = refused(&["kube", "--buildkitd-flags", "--debug 'x"]);
    assert!(e.contains("cannot be split"), "{e}");
    assert!(crate::cli::parse(["bkrun", "kube", "--replicas", "-1"]).is_err());
    assert!(crate::cli::parse(["bkrun", "kube", "--port", "0"]).is_err());
    assert!(crate::cli::parse(["bkrun", "kube", "--kind", "daemonset"]).is_err());
    assert!(crate::cli::parse(["bkrun", "kube", "--storage-class", "x"]).is_err());
}

#[test]
fn flags_about_this_machines_daemon_are_refused_by_name() {
    for (argv, flag) in [
        (
            &["bkrun", "--root", "/x", "kube"][..],
            "--root is about this machine's daemon",
        ),
        (&["bkrun", "kube", "--addr", "tcp://b:1"], "--addr is about"),
        (&["bkrun", "kube", "--mode", "rootless"], "use --rootless"),
    ] {
        let (k, g) = crate::cli::parse_kube(argv).unwrap();
        let e = Options::from_args(&k, &g).unwrap_err().to_string();
        assert!(e.contains(flag), "{argv:?}: {e}");
    }
}
