//! What users deploy, run as they would: every YAML in images/ parsed strictly, the Pods and Jobs, the Tekton step, the Buildkite and GitLab steps and the shared builder run with podman on the images scripts/images built, pushing to a registry; and the static binary in a root filesystem with no libc.

mod common;
#[path = "images/kube.rs"]
mod kube;
#[path = "images/models.rs"]
mod models;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostPathVolumeSource, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use common::containerd::Containerd;
use common::{run_ok, show, Mode, Sandbox, SpawnOk};
use kube::{Ended, World};
use models::Doc;

/// A build in a pod may take a while on a loaded two-core machine; far longer means it hangs.
const BUILD_LIMIT: Duration = Duration::from_secs(300);

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images")
}

/// Every document of images/FILE, parsed strictly.
fn load(file: &str) -> Vec<Doc> {
    let text = fs::read_to_string(images_dir().join(file)).unwrap();
    models::documents(&text)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .iter()
        .map(|d| models::parse(file, d).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn one<T>(file: &str, pick: impl Fn(Doc) -> Option<T>) -> T {
    load(file)
        .into_iter()
        .find_map(pick)
        .unwrap_or_else(|| panic!("{file}: not the kind expected"))
}

#[test]
fn every_yaml_in_images_parses_strictly_into_its_api_types() {
    let mut files: Vec<String> = fs::read_dir(images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 13, "images/ holds {files:?}");
    for file in &files {
        assert!(
            file.ends_with(".yaml") || file.ends_with(".yml"),
            "{file}: images/ holds only manifests and pipeline steps"
        );
        let text = fs::read_to_string(images_dir().join(file)).unwrap();
        assert!(
            text.starts_with("# "),
            "{file}: the first line is a comment saying its job"
        );
        let docs = load(file);
        assert!(!docs.is_empty(), "{file}: no documents");
    }

    // Strict means a misspelt field is an error, at any depth and in each kind of document.
    let cases = [
        ("privileged.yaml", "privileged: true", "priviliged: true"),
        ("rootless-job.yaml", "backoffLimit:", "backofLimit:"),
        ("builder.yaml", "readinessProbe:", "readynessProbe:"),
        ("builder.yaml", "targetPort:", "targetport:"),
        ("builder-certs.yaml", "dnsNames:", "dnsName:"),
        ("tekton-task.yaml", "workingDir:", "workDir:"),
        ("buildkite-pipeline.yml", "runAsGroup:", "runAsGrup:"),
        ("gitlab-ci.yml", "before_script:", "beforescript:"),
        (
            "restricted-fallback-job.yaml",
            "seccompProfile:",
            "seccompProfle:",
        ),
    ];
    for (file, good, bad) in cases {
        let text = fs::read_to_string(images_dir().join(file)).unwrap();
        assert!(text.contains(good), "{file} has no {good}");
        let broken = text.replacen(good, bad, 1);
        let failed = models::documents(&broken)
            .unwrap()
            .iter()
            .any(|d| models::parse(file, d).is_err());
        assert!(failed, "{file}: {bad} was accepted");
    }

    // The pieces that must agree across files.
    let dep = one("builder.yaml", |d| match d {
        Doc::Deployment(x) => Some(x),
        _ => None,
    });
    let certs = load("builder-certs.yaml");
    let server_secret = certs
        .iter()
        .find_map(|d| match d {
            Doc::Certificate(c) if c.spec.usages.iter().any(|u| u == "server auth") => {
                Some(c.spec.clone())
            }
            _ => None,
        })
        .expect("a server certificate");
    let pod = dep.spec.unwrap().template.spec.unwrap();
    let mounted: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        .collect();
    assert_eq!(mounted, std::slice::from_ref(&server_secret.secret_name));
    assert!(server_secret
        .dns_names
        .contains(&"bkrun-builder".to_string()));
    // The Service sends its port to the container's named port.
    let svc = one("builder.yaml", |d| match d {
        Doc::Service(x) => Some(x),
        _ => None,
    });
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    let named = pod.containers[0].ports.as_ref().unwrap()[0].name.clone();
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(named.unwrap()))
    );
    // The CA Issuer signs with the CA Certificate's Secret.
    let ca_secret = certs.iter().find_map(|d| match d {
        Doc::Certificate(c) if c.spec.is_ca => Some(c.spec.secret_name.clone()),
        _ => None,
    });
    let issuer_secret = certs.iter().find_map(|d| match d {
        Doc::Issuer(i) => i.spec.ca.as_ref().map(|c| c.secret_name.clone()),
        _ => None,
    });
    assert_eq!(ca_secret, issuer_secret);
}

/// The pod a Pod or Job manifest runs.
fn pod_of(file: &str) -> Pod {
    match load(file).into_iter().next().unwrap() {
        Doc::Pod(p) => p,
        // kube play takes no Jobs: run the pod template, named after the Job, as the Job would.
        Doc::Job(j) => Pod {
            metadata: ObjectMeta {
                name: j.metadata.name.clone(),
                ..Default::default()
            },
            spec: j.spec.unwrap().template.spec,
            ..Default::default()
        },
        _ => panic!("{file}: neither a Pod nor a Job"),
    }
}

/// Sets the value of env var `name` in every container that has it.
fn set_env(spec: &mut PodSpec, name: &str, value: &str) -> usize {
    let mut n = 0;
    for c in &mut spec.containers {
        for e in c.env.iter_mut().flatten() {
            if e.name == name {
                e.value = Some(value.to_string());
                n += 1;
            }
        }
    }
    n
}

/// The start-up line bkrun prints names the mode it chose.
fn mode_of(logs: &str) -> Option<String> {
    let line = logs
        .lines()
        .find(|l| l.starts_with("bkrun: starting buildkitd "))?;
    let after = line.split_once(", ")?.1;
    Some(after.split(" (").next().unwrap_or(after).to_string())
}

fn assert_built(what: &str, ended: &Ended, mode: &str) {
    assert_eq!(ended.code, 0, "{what} failed:\n{}", ended.logs);
    assert_eq!(
        mode_of(&ended.logs).as_deref(),
        Some(mode),
        "{what}: expected bkrun to run {mode}:\n{}",
        ended.logs
    );
}

/// Runs images/FILE (a Pod or a Job) against the test's workspace and registry; it must build,
/// in `mode`, and push.
fn run_manifest(file: &str, mode: &str) {
    let mut world = World::new(file.trim_end_matches(".yaml"));
    let mut pod = pod_of(file);
    let tag = file.trim_end_matches(".yaml");
    let image = world.image("bkrun/app", tag);
    let spec = pod.spec.as_mut().unwrap();
    assert_eq!(set_env(spec, "IMAGE", &image), 1, "{file}: no IMAGE");
    let docs = world.wire(spec, Vec::new());
    let played = world.play(pod, docs);
    let ended = played.wait("build", BUILD_LIMIT);
    assert_built(file, &ended, mode);
    let digest = world.registry.digest("bkrun/app", tag);
    assert!(
        digest.is_some(),
        "{file}: the registry has no bkrun/app:{tag}\n{}",
        ended.logs
    );
    world.down(&played);
    world.finish();
}

#[test]
fn privileged_pod_and_job_build_and_push() {
    run_manifest("privileged.yaml", "privileged");
    run_manifest("privileged-job.yaml", "privileged");
}

#[test]
fn rootless_pod_and_job_build_and_push() {
    run_manifest("rootless.yaml", "rootless-strict");
    run_manifest("rootless-job.yaml", "rootless-strict");
}

#[test]
fn rootless_strict_pod_and_job_build_and_push() {
    run_manifest("rootless-strict.yaml", "rootless-strict");
    run_manifest("rootless-strict-job.yaml", "rootless-strict");
}

#[test]
fn user_namespaced_pod_and_job_build_and_push() {
    run_manifest("userns.yaml", "privileged");
    run_manifest("userns-job.yaml", "privileged");
}

/// What the restricted Pod Security Standard (Kubernetes' pod-security-standards, 1.25 on)
/// refuses in `spec`, as `field: what is wrong`: the baseline's host namespaces, privileged and
/// hostPath, then restricted's own controls (volume types, privilege escalation, non-root,
/// seccomp, capabilities).
fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    for (field, on) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            v.push(format!("{field}: must be unset or false"));
        }
    }
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!(
                "volumes.{}: not a type restricted allows",
                vol.name
            ));
        }
    }
    let pod = spec.security_context.clone().unwrap_or_default();
    let seccomp_ok = |p: &Option<k8s_openapi::api::core::v1::SeccompProfile>| {
        p.as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        let at = format!("containers.{}", c.name);
        if sc.privileged == Some(true) {
            v.push(format!("{at}.privileged: must not be true"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{at}.allowPrivilegeEscalation: must be false"));
        }
        if sc.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
            v.push(format!("{at}.runAsNonRoot: must be true"));
        }
        if sc.run_as_user.or(pod.run_as_user) == Some(0) {
            v.push(format!("{at}.runAsUser: must not be 0"));
        }
        let profile = if sc.seccomp_profile.is_some() {
            &sc.seccomp_profile
        } else {
            &pod.seccomp_profile
        };
        if !seccomp_ok(profile) {
            v.push(format!(
                "{at}.seccompProfile: must be RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{at}.capabilities.drop: must hold ALL"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            v.push(format!("{at}.capabilities.add: only NET_BIND_SERVICE"));
        }
    }
    v
}

/// images/restricted-fallback-job.yaml passes the restricted standard, and names the pool
/// `bkrun kube` prints and the client certificate images/builder-certs.yaml makes for it.
#[test]
fn restricted_fallback_job_is_restricted_and_names_the_pool_bkrun_kube_prints() {
    let file = "restricted-fallback-job.yaml";
    let spec = pod_of(file).spec.unwrap();
    assert_eq!(restricted_violations(&spec), Vec::<String>::new(), "{file}");
    // The check bites: the rootless Job is no restricted pod.
    let rootless = restricted_violations(&pod_of("rootless-job.yaml").spec.unwrap());
    assert!(
        rootless.contains(&"containers.build.allowPrivilegeEscalation: must be false".into()),
        "{rootless:?}"
    );

    let build = &spec.containers[0];
    let env_of = |name: &str| {
        build
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    let fallback = env_of("BKRUN_FALLBACK_ADDR").expect("BKRUN_FALLBACK_ADDR");
    // `bkrun kube`'s defaults print the Service clients connect to and its TLS Secret.
    let kube = run_ok(Command::new(env!("CARGO_BIN_EXE_bkrun")).arg("kube"));
    let notes = String::from_utf8_lossy(&kube.stderr);
    assert!(
        notes.contains(&format!("clients connect to {fallback} with --tlsdir"))
            && notes.contains("Secret bkrun-builder-tls,"),
        "{notes}"
    );
    // The client Secret mounted where --tlsdir looks is the client certificate of
    // builder-certs.yaml, signed by the CA the server's Secret trusts.
    let client_secret = load("builder-certs.yaml")
        .into_iter()
        .find_map(|d| match d {
            Doc::Certificate(c) if c.spec.usages.iter().any(|u| u == "client auth") => {
                Some(c.spec.secret_name)
            }
            _ => None,
        })
        .expect("a client certificate");
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(client_secret.as_str())
        })
        .unwrap_or_else(|| panic!("{file} does not mount {client_secret}"));
    let at = build
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .map(|m| m.mount_path.clone())
        .unwrap();
    let script = build.args.as_ref().unwrap().join(" ");
    assert!(script.contains(&format!("--tlsdir {at} ")), "{script}");
    // No --mode, or bkrun would refuse rather than fall back.
    assert!(
        !script.contains("--mode") && env_of("BKRUN_MODE").is_none(),
        "{script}"
    );
}

/// images/containerd-worker-job.yaml against a containerd the test runs as the node's: the
/// test's paths stand for the node's (its containerd's socket and root, and a shared directory
/// made a shared mount, as a node's /var/lib is under systemd), each mounted at the same path as
/// the manifest asks. The image lands in containerd's k8s.io namespace with the digest bkrun
/// names, and no task, container, mount or process of the build is left.
#[test]
fn containerd_worker_job_builds_into_the_nodes_containerd() {
    let file = "containerd-worker-job.yaml";
    let mut world = World::new("containerd-worker-job");
    let node = world.path("node");
    fs::create_dir_all(node.join("containerd")).unwrap();
    let ctr = Containerd::start(&node.join("containerd"));
    let shared = SharedMount::new(&node.join("shared"));
    let mut pod = pod_of(file);
    let spec = pod.spec.as_mut().unwrap();
    let image = "example.test/bkrun/app:containerd";
    assert_eq!(set_env(spec, "IMAGE", image), 1, "{file}: no IMAGE");
    let containerd_dir = ctr.socket.parent().unwrap().display().to_string();
    let shared_dir = shared.0.display().to_string();
    // The node's paths in the manifest become the test's, on both sides of each mount.
    let moved = [
        ("/var/lib/containerd", containerd_dir.as_str()),
        ("/var/lib/bkrun-containerd", shared_dir.as_str()),
    ];
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(h) = &mut v.host_path {
            if let Some((_, to)) = moved.iter().find(|(from, _)| h.path == *from) {
                h.path = to.to_string();
            }
        }
    }
    let c = &mut spec.containers[0];
    for m in c.volume_mounts.iter_mut().flatten() {
        if let Some((_, to)) = moved.iter().find(|(from, _)| m.mount_path == *from) {
            m.mount_path = to.to_string();
        }
    }
    let script = &mut c.args.as_mut().unwrap()[0];
    assert!(script.contains("--worker containerd"), "{script}");
    *script = script
        .replace("/var/lib/bkrun-containerd", &shared_dir)
        .replace(
            "--worker containerd",
            &format!(
                "--worker containerd --containerd-address {}",
                ctr.socket.display()
            ),
        );
    let docs = world.wire(spec, Vec::new());
    let played = world.play(pod, docs);
    let ended = played.wait("build", BUILD_LIMIT);
    assert_built(file, &ended, "privileged");
    let said = ended
        .logs
        .lines()
        .find(|l| l.starts_with(&format!("bkrun: image {image} (sha256:")))
        .unwrap_or_else(|| panic!("bkrun did not say where the image went:\n{}", ended.logs));
    assert!(said.contains("namespace k8s.io, unpacked"), "{said}");
    let digest = said.split(['(', ')']).nth(1).unwrap();
    let images = ctr.ctr(&["-n", "k8s.io", "images", "ls"]);
    let listing = String::from_utf8_lossy(&images.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("{image} ")) && l.contains(digest)),
        "{image} {digest} is not in containerd:\n{listing}"
    );
    world.down(&played);
    ctr.assert_no_build_left("k8s.io");
    ctr.stop();
    shared.assert_nothing_mounted_below();
    drop(shared);
    world.finish();
}

/// A directory bind-mounted on itself and made shared, so mounts made below it in a pod with
/// Bidirectional propagation reach this (the node's) mount namespace; unmounted when dropped.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        fs::create_dir_all(dir).unwrap();
        for args in [&["--bind", "X", "X"][..], &["--make-shared", "X"]] {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "X" { dir.to_str().unwrap() } else { a })
                .collect();
            run_ok(Command::new("mount").args(&args));
        }
        SharedMount(dir.to_path_buf())
    }

    fn assert_nothing_mounted_below(&self) {
        let below: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&self.0) && Path::new(m) != self.0)
            .collect();
        assert!(
            below.is_empty(),
            "mounts left below {}: {below:?}",
            self.0.display()
        );
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--recursive")
            .arg(&self.0)
            .status();
    }
}

fn host_path(name: &str, path: &Path) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some("Directory".into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: at.to_string(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// Tekton's variable substitution for one step: `$(params.N)`, `$(params.N[*])` as a whole
/// argument, `$(workspaces.W.path|bound)` and `$(results.R.path)`.
struct Tekton {
    params: BTreeMap<String, Vec<String>>,
    workspaces: BTreeMap<String, bool>,
    results: Vec<String>,
}

impl Tekton {
    fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.params {
            out = out.replace(&format!("$(params.{k})"), &v.join(" "));
        }
        for (w, bound) in &self.workspaces {
            let path = if *bound {
                format!("/workspace/{w}")
            } else {
                String::new()
            };
            out = out.replace(&format!("$(workspaces.{w}.path)"), &path);
            out = out.replace(&format!("$(workspaces.{w}.bound)"), &bound.to_string());
        }
        for r in &self.results {
            out = out.replace(
                &format!("$(results.{r}.path)"),
                &format!("/tekton/results/{r}"),
            );
        }
        for kind in ["params.", "workspaces.", "results.", "context."] {
            assert!(
                !out.contains(&format!("$({kind}")),
                "a Tekton variable left unsubstituted in:\n{out}"
            );
        }
        out
    }

    fn args(&self, args: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for a in args {
            match a
                .strip_prefix("$(params.")
                .and_then(|r| r.strip_suffix("[*])"))
            {
                Some(name) => out.extend(self.params[name].iter().cloned()),
                None => out.push(self.text(a)),
            }
        }
        out
    }
}

#[test]
fn tekton_task_step_pushes_and_writes_its_results() {
    let mut world = World::new("tekton");
    run_tekton_step(&mut world, "1", None);
    world.finish();
}

/// Runs the Tekton Task's step as a TaskRun would (params, workspaces, results substituted; the
/// script run with the step's args), pushing bkrun/tekton:TAG; daemonless, or on the shared
/// builder at `builder` (its port here and the client's TLS Secret directory), named by the
/// Service's name as a pipeline in the cluster would.
fn run_tekton_step(world: &mut World, tag: &str, builder: Option<(u16, &Path)>) {
    let task = one("tekton-task.yaml", |d| match d {
        Doc::Task(t) => Some(t),
        _ => None,
    });
    let image = world.image("bkrun/tekton", tag);

    // The TaskRun's params: IMAGE given, EXTRA_ARGS one flag, the rest their defaults.
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &task.spec.params {
        let v = match p.default.clone() {
            Some(serde_json::Value::String(s)) => vec![s],
            Some(serde_json::Value::Array(a)) => a
                .into_iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
            Some(other) => panic!("param {}: default {other}", p.name),
            None => Vec::new(),
        };
        params.insert(p.name.clone(), v);
    }
    for want in [
        "IMAGE",
        "DOCKERFILE",
        "CONTEXT",
        "EXTRA_ARGS",
        "BUILDKIT_ADDRESS",
    ] {
        assert!(params.contains_key(want), "the Task has no param {want}");
    }
    params.insert("IMAGE".into(), vec![image.clone()]);
    params.insert(
        "EXTRA_ARGS".into(),
        vec!["--opt".into(), "label:org.example.pipeline=tekton".into()],
    );
    if let Some((port, _)) = builder {
        params.insert(
            "BUILDKIT_ADDRESS".into(),
            vec![format!("tcp://bkrun-builder:{port}")],
        );
    }
    // source and dockerconfig bound; buildkit-tls only with a builder.
    let workspaces: BTreeMap<String, bool> = task
        .spec
        .workspaces
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                w.name != "buildkit-tls" || builder.is_some(),
            )
        })
        .collect();
    assert!(workspaces.contains_key("source") && workspaces.contains_key("dockerconfig"));
    let results: Vec<String> = task.spec.results.iter().map(|r| r.name.clone()).collect();
    assert_eq!(results, ["IMAGE_DIGEST", "IMAGE_URL"]);
    let tk = Tekton {
        params,
        workspaces,
        results,
    };

    let step = &task.spec.steps[0];
    let scripts = world.path(&format!("scripts-{tag}"));
    let results_dir = world.path(&format!("results-{tag}"));
    fs::create_dir(&scripts).unwrap();
    fs::create_dir(&results_dir).unwrap();
    // The step's user writes the result files, as Tekton's shared /tekton/results allows.
    fs::set_permissions(&results_dir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(
        scripts.join("script-0"),
        tk.text(step.script.as_ref().unwrap()),
    )
    .unwrap();
    fs::set_permissions(scripts.join("script-0"), fs::Permissions::from_mode(0o755)).unwrap();

    let mut mounts: Vec<VolumeMount> = step.volume_mounts.clone();
    mounts.push(mount("ws-source", "/workspace/source", true));
    mounts.push(mount("ws-dockerconfig", "/workspace/dockerconfig", true));
    mounts.push(mount("tekton-scripts", "/tekton/scripts", true));
    mounts.push(mount("tekton-results", "/tekton/results", false));
    let mut volumes = task.spec.volumes.clone();
    volumes.push(Volume {
        name: "ws-source".into(),
        persistent_volume_claim: Some(
            k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name: "bkrun-workspace".into(),
                read_only: Some(true),
            },
        ),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "ws-dockerconfig".into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some("bkrun-docker-config".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some((_, tls)) = builder {
        mounts.push(mount("ws-buildkit-tls", "/workspace/buildkit-tls", true));
        volumes.push(host_path("ws-buildkit-tls", tls));
        // The Service's name, as the cluster's DNS would answer it. kube play ignores
        // hostAliases, so the test mounts the hosts file they would make.
        let hosts = world.path(&format!("hosts-{tag}"));
        fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 bkrun-builder\n").unwrap();
        mounts.push(mount("hosts", "/etc/hosts", true));
        volumes.push(Volume {
            name: "hosts".into(),
            host_path: Some(HostPathVolumeSource {
                path: hosts.display().to_string(),
                type_: Some("File".into()),
            }),
            ..Default::default()
        });
    }
    volumes.push(host_path("tekton-scripts", &scripts));
    volumes.push(host_path("tekton-results", &results_dir));
    // As Tekton runs a step with a script: the script file, then the step's args.
    let mut command = vec!["/tekton/scripts/script-0".to_string()];
    command.extend(tk.args(&step.args));
    let mut env_vars: Vec<EnvVar> = step.env.clone();
    env_vars.iter_mut().for_each(|e| {
        e.value = e.value.as_deref().map(|v| tk.text(v));
    });
    let mut spec = PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![Container {
            name: step.name.clone(),
            image: Some(step.image.clone()),
            command: Some(command),
            working_dir: step.working_dir.as_deref().map(|w| tk.text(w)),
            env: Some(env_vars),
            security_context: step.security_context.clone(),
            volume_mounts: Some(mounts),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    };
    let docs = world.wire(&mut spec, Vec::new());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("bkrun-build-run-{tag}")),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let played = world.play(pod, docs);
    let ended = played.wait(&step.name, BUILD_LIMIT);
    match builder {
        None => assert_built("the Tekton step", &ended, "rootless-strict"),
        Some(_) => {
            assert_eq!(ended.code, 0, "the Tekton step failed:\n{}", ended.logs);
            assert!(
                mode_of(&ended.logs).is_none(),
                "the step started a daemon of its own:\n{}",
                ended.logs
            );
        }
    }
    let digest = fs::read_to_string(results_dir.join("IMAGE_DIGEST")).unwrap_or_default();
    let url = fs::read_to_string(results_dir.join("IMAGE_URL")).unwrap_or_default();
    assert_eq!(
        Some(digest.clone()),
        world.registry.digest("bkrun/tekton", tag),
        "IMAGE_DIGEST is not the pushed digest\n{}",
        ended.logs
    );
    assert!(digest.starts_with("sha256:"));
    assert_eq!(url, image);
    world.down(&played);
}

#[test]
fn buildkite_steps_build_and_push_in_each_of_the_guides_modes() {
    let pipeline = one("buildkite-pipeline.yml", |d| match d {
        Doc::Buildkite(p) => Some(p),
        _ => None,
    });
    assert_eq!(pipeline.steps.len(), 3);
    let modes = ["privileged", "rootless-strict", "rootless-strict"];
    let tags = ["privileged-7", "rootless-7", "strict-7"];
    let mut world = World::new("buildkite");
    for ((step, mode), tag) in pipeline.steps.iter().zip(modes).zip(tags) {
        let mut spec = step.plugins[0].kubernetes.pod_spec.clone();
        // What the agent stack adds: the checkout as the working directory, the step's env and
        // command, and (as a cluster operator's pod patch) the registry's credentials and the
        // bkrun.toml that says it is plain HTTP.
        let c = &mut spec.containers[0];
        c.working_dir = Some("/workspace".into());
        // Buildkite interpolates at upload time and leaves `$$` as `$` for the shell.
        c.command = Some(vec![
            "sh".into(),
            "-c".into(),
            step.command.replace("$$", "$"),
        ]);
        let e = c.env.get_or_insert_with(Vec::new);
        e.push(env("BUILDKITE_BUILD_NUMBER", "7"));
        e.push(env("DOCKER_CONFIG", "/docker-config"));
        for k in step.env.keys() {
            assert_eq!(k, "IMAGE");
            e.push(env(
                k,
                &format!("{}/bkrun/buildkite", world.registry.host()),
            ));
        }
        let m = c.volume_mounts.get_or_insert_with(Vec::new);
        m.push(mount("workspace", "/workspace", true));
        m.push(mount("docker-config", "/docker-config", true));
        m.push(mount("bkrun-config", "/etc/bkrun", true));
        let vols = spec.volumes.get_or_insert_with(Vec::new);
        let pod_ref = pod_of("privileged.yaml").spec.unwrap().volumes.unwrap();
        for name in ["workspace", "docker-config", "bkrun-config"] {
            vols.push(pod_ref.iter().find(|v| v.name == name).unwrap().clone());
        }
        spec.restart_policy = Some("Never".into());
        let docs = world.wire(&mut spec, Vec::new());
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("buildkite-{tag}")),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        };
        let played = world.play(pod, docs);
        let ended = played.wait("main", BUILD_LIMIT);
        assert_built(&step.label, &ended, mode);
        assert!(
            world.registry.digest("bkrun/buildkite", tag).is_some(),
            "{}: nothing pushed as {tag}\n{}",
            step.label,
            ended.logs
        );
        world.down(&played);
    }
    world.finish();
}

#[test]
fn gitlab_job_builds_and_pushes_with_the_job_tokens_credentials() {
    let jobs = one("gitlab-ci.yml", |d| match d {
        Doc::Gitlab(j) => Some(j),
        _ => None,
    });
    let (job_name, job) = jobs.iter().next().unwrap();
    let mut world = World::new("gitlab");
    // The job writes into its checkout, which the runner owns and the job's user can write.
    fs::set_permissions(&world.workspace, fs::Permissions::from_mode(0o777)).unwrap();
    let project_dir = "/builds/team/app";
    let predefined: BTreeMap<&str, String> = BTreeMap::from([
        ("CI_REGISTRY", world.registry.host()),
        (
            "CI_REGISTRY_IMAGE",
            format!("{}/team/app", world.registry.host()),
        ),
        ("CI_REGISTRY_USER", kube::REGISTRY_USER.to_string()),
        ("CI_REGISTRY_PASSWORD", kube::REGISTRY_PASSWORD.to_string()),
        ("CI_COMMIT_SHORT_SHA", "0123abcd".to_string()),
        ("CI_PROJECT_DIR", project_dir.to_string()),
    ]);
    let mut vars: Vec<EnvVar> = predefined.iter().map(|(k, v)| env(k, v)).collect();
    // GitLab expands variables in `variables:` before the job starts.
    // Longest names first, so $CI_REGISTRY_IMAGE is not taken for $CI_REGISTRY + "_IMAGE".
    let mut by_length: Vec<(&&str, &String)> = predefined.iter().collect();
    by_length.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in &job.variables {
        let mut value = v.clone();
        for (pk, pv) in &by_length {
            value = value.replace(&format!("${pk}"), pv);
        }
        vars.push(env(k, &value));
    }
    // Each line as the runner runs it: in one shell, stopping at the first that fails.
    let script = job
        .before_script
        .iter()
        .chain(&job.script)
        .map(|l| format!("{l} || exit $?\n"))
        .collect::<String>();
    assert_eq!(job.image.entrypoint.as_deref(), Some(&[String::new()][..]));
    let image = job.image.name.clone();
    let mut spec = PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![Container {
            name: "build".into(),
            image: Some(image),
            command: Some(vec!["sh".into(), "-c".into(), script]),
            working_dir: Some(project_dir.into()),
            env: Some(vars),
            // The runner's pod settings this job asks for in its comment.
            security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                run_as_non_root: Some(true),
                seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                    type_: "Unconfined".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![
                mount("checkout", project_dir, false),
                mount("bkrun-config", "/etc/bkrun", true),
            ]),
            ..Default::default()
        }],
        volumes: Some(vec![
            host_path("checkout", &world.workspace),
            pod_of("privileged.yaml")
                .spec
                .unwrap()
                .volumes
                .unwrap()
                .into_iter()
                .find(|v| v.name == "bkrun-config")
                .unwrap(),
        ]),
        ..Default::default()
    };
    let docs = world.wire(&mut spec, Vec::new());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let played = world.play(pod, docs);
    let ended = played.wait("build", BUILD_LIMIT);
    assert_built("the GitLab job", &ended, "rootless-strict");
    let pushed = world.registry.digest("team/app", "0123abcd");
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(world.workspace.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        meta["containerimage.digest"].as_str(),
        pushed.as_deref(),
        "{}",
        ended.logs
    );
    world.down(&played);
    world.finish();
}

/// openssl makes what cert-manager would from builder-certs.yaml's Certificates: the CA, then
/// each certificate it issues with the names and usages its spec gives; each as the TLS Secret's
/// three files in DIR/SECRET/.
fn issue_certificates(dir: &Path) -> BTreeMap<String, PathBuf> {
    let certs: Vec<models::CertificateSpec> = load("builder-certs.yaml")
        .into_iter()
        .filter_map(|d| match d {
            Doc::Certificate(c) => Some(c.spec),
            _ => None,
        })
        .collect();
    let ca = certs.iter().find(|c| c.is_ca).expect("a CA certificate");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}\n{}", show(&out));
    };
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN={} 2>/dev/null",
        ca.common_name.as_deref().unwrap()
    ));
    let mut out = BTreeMap::new();
    for c in certs.iter().filter(|c| !c.is_ca) {
        assert_eq!(c.issuer_ref.name, "bkrun-ca");
        let d = dir.join(&c.secret_name);
        fs::create_dir(&d).unwrap();
        let mut ext = String::new();
        let eku: Vec<&str> = c
            .usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "server auth" => Some("serverAuth"),
                "client auth" => Some("clientAuth"),
                _ => None,
            })
            .collect();
        ext.push_str(&format!("extendedKeyUsage={}\n", eku.join(",")));
        if !c.dns_names.is_empty() {
            let sans: Vec<String> = c.dns_names.iter().map(|n| format!("DNS:{n}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        fs::write(d.join("ext"), ext).unwrap();
        let s = &c.secret_name;
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {s}/tls.key -out {s}/csr -subj /CN={cn} 2>/dev/null
             openssl x509 -req -in {s}/csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {s}/tls.crt -days 2 -extfile {s}/ext 2>/dev/null
             cp ca.crt {s}/ca.crt; rm {s}/csr {s}/ext",
            cn = c.common_name.as_deref().unwrap()
        ));
        // A Secret volume's files are 0644 unless it says otherwise.
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        out.insert(c.secret_name.clone(), d);
    }
    out
}

#[test]
fn shared_builder_serves_a_mutual_tls_build_from_bkrun_on_the_host() {
    let docs = load("builder.yaml");
    let dep = docs
        .iter()
        .find_map(|d| match d {
            Doc::Deployment(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    let mut world = World::new("builder");
    let secrets = issue_certificates(&world.path(""));
    let port = kube::free_port();

    // kube play takes the Deployment itself; on the host network (the test's stand-in for the
    // Service) the listener moves to a free port.
    let mut dep = dep;
    let spec = dep.spec.as_mut().unwrap();
    let pod_spec = spec.template.spec.as_mut().unwrap();
    let c = &mut pod_spec.containers[0];
    for a in c.args.iter_mut().flatten() {
        if a == "tcp://0.0.0.0:1234" {
            *a = format!("tcp://127.0.0.1:{port}");
        }
    }
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec readiness probe");
    // The server's TLS Secret, as cert-manager leaves it: ca.crt, tls.crt, tls.key.
    for v in pod_spec.volumes.iter_mut().flatten() {
        if let Some(s) = &v.secret {
            let dir = secrets[s.secret_name.as_deref().unwrap()].clone();
            World::mount_secret(v, &dir);
        }
    }
    let secret_docs = Vec::new();
    let mut template_spec = pod_spec.clone();
    let docs = world.wire(&mut template_spec, secret_docs);
    *spec.template.spec.as_mut().unwrap() = template_spec;
    // Deployments are played as their pod: kube play names it NAME-pod.
    let name = dep.metadata.name.clone().unwrap();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-pod")),
            labels: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: spec.template.spec.clone(),
        ..Default::default()
    };
    let played = world.play(pod, docs);

    // The readiness probe, run as the kubelet runs it, passes once the daemon serves.
    let ready = common::wait_until(Duration::from_secs(120), || {
        played.exec("bkrun", &probe).status.success()
    });
    assert!(
        ready,
        "the readiness probe never passed\n{}",
        played.logs("bkrun")
    );

    // A pipeline's bkrun on the host, with the client Secret mounted as --tlsdir.
    let client = &secrets["bkrun-builder-client-tls"];
    let sb = Sandbox::new(Mode::Privileged);
    let image = world.image("bkrun/shared", "1");
    let ctx = &world.workspace;
    let md = sb.path("metadata.json");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_bkrun"))
            .args(["--addr", &format!("tcp://127.0.0.1:{port}")])
            .arg("--tlsdir")
            .arg(client)
            .args(["--tlsservername", "bkrun-builder", "build"])
            .args(common::dockerfile_args(ctx))
            .arg(format!("--output=type=image,name={image},push=true"))
            .arg(format!("--metadata-file={}", md.display()))
            .env("DOCKER_CONFIG", {
                let d = sb.mkdir("docker");
                fs::write(d.join("config.json"), world.registry.docker_config()).unwrap();
                d
            }),
    );
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(&md).unwrap()).unwrap();
    assert_eq!(
        meta["containerimage.digest"].as_str(),
        world.registry.digest("bkrun/shared", "1").as_deref(),
        "{}",
        show(&out)
    );
    // Without a client certificate the builder refuses.
    let refused = Command::new(env!("CARGO_BIN_EXE_bkrun"))
        .args(["--addr", &format!("tcp://127.0.0.1:{port}")])
        .arg("--tlscacert")
        .arg(client.join("ca.crt"))
        .args([
            "--tlsservername",
            "bkrun-builder",
            "--connect-retry",
            "0",
            "debug",
            "workers",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", show(&refused));

    // The Tekton step with BUILDKIT_ADDRESS set builds there too, with the client Secret as its
    // buildkit-tls workspace.
    run_tekton_step(&mut world, "shared", Some((port, client)));

    world.down(&played);
    sb.assert_clean();
    world.finish();
}

#[test]
fn static_binary_runs_with_no_libc_and_resolves_names_itself() {
    let bin = std::env::var_os("BKRUN_STATIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/static/x86_64-unknown-linux-musl/release/bkrun")
        });
    assert!(
        bin.exists(),
        "no static bkrun at {}: run scripts/static (scripts/test does)",
        bin.display()
    );
    // A root filesystem holding bkrun and the two files a resolver reads: no libc, no NSS.
    let sb = Sandbox::new(Mode::Privileged);
    let root = sb.mkdir("nolibc");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::copy(&bin, root.join("bkrun")).unwrap();
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.0.1 builder.bkrun.test\n",
    )
    .unwrap();
    fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let files: Vec<String> = walk(&root)
        .iter()
        .map(|f| {
            f.strip_prefix(&root.display().to_string())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        files,
        ["/bkrun", "/etc", "/etc/hosts", "/etc/resolv.conf", "/tmp"],
        "the root filesystem holds more than bkrun"
    );

    // A daemon on the host; bkrun in the chroot reaches it by a name only its /etc/hosts knows.
    let port = kube::free_port();
    let mut daemon = sb
        .bkrun()
        .args(["daemon", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .spawn_ok();
    let addr = format!("tcp://builder.bkrun.test:{port}");
    let ok = common::wait_until(Duration::from_secs(60), || {
        Command::new("chroot")
            .arg(&root)
            // The name is not a loopback literal, so bkrun wants plaintext acknowledged.
            .args(["/bkrun", "--addr", &addr, "--insecure-plaintext"])
            .args(["--connect-retry", "0", "debug", "workers"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    let version = Command::new("chroot")
        .arg(&root)
        .args(["/bkrun", "--version"])
        .output()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = daemon.wait();
    assert!(version.status.success(), "{}", show(&version));
    assert!(
        ok,
        "bkrun in a root filesystem without libc never reached {addr}"
    );
    sb.assert_clean();
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(root).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn images_keep_the_bases_user_and_volume_and_carry_their_labels() {
    kube::load_images();
    for (variant, user, volume) in [
        ("privileged", "", "/var/lib/buildkit"),
        ("rootless", "1000:1000", "/home/user/.local/share/buildkit"),
    ] {
        let name = format!("localhost/bkrun:{variant}");
        let out = kube::podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &name]);
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["User"].as_str().unwrap_or(""), user, "{variant}");
        assert!(
            config["Volumes"].get(volume).is_some(),
            "{variant}: {config}"
        );
        assert_eq!(config["Entrypoint"][0], "/usr/bin/bkrun", "{variant}");
        let labels = &config["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION"),
            "{variant}"
        );
        // The images may come from a commit before a local change: a revision, not "unknown".
        let label_rev = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or("");
        assert!(
            label_rev.len() >= 40 && label_rev[..40].chars().all(|c| c.is_ascii_hexdigit()),
            "{variant}: revision label {label_rev:?}"
        );
        assert!(labels.get("org.opencontainers.image.source").is_some());

        // bkrun answers to the wrapper's name, and is the static one.
        let container = format!("bkrun-images-inspect-{variant}-{}", std::process::id());
        let out = kube::podman_ok(&[
            "run",
            "--rm",
            "--name",
            &container,
            "--entrypoint",
            "sh",
            &name,
            "-c",
            "readlink /usr/bin/buildctl-daemonless.sh; buildctl-daemonless.sh --version",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("bkrun"), "{text}");
        assert!(lines.next().unwrap_or("").starts_with("bkrun "), "{text}");
        let all = kube::podman_ok(&["ps", "--all", "--format", "{{.Names}}"]);
        assert!(!String::from_utf8_lossy(&all.stdout).contains(&container));
    }
}

#[test]
fn dockerignore_lets_only_what_cargo_reads_into_the_context() {
    // The Dockerfiles' build stage copies the whole context; this build does only that.
    let sb = Sandbox::new(Mode::Privileged);
    let df = sb.context("df", "FROM scratch\nCOPY . /ctx/\n");
    let out = sb.path("out");
    run_ok(
        sb.bkrun()
            .arg("build")
            .args(["--frontend", "dockerfile.v0"])
            .arg(format!("--local=context={}", env!("CARGO_MANIFEST_DIR")))
            .arg(format!("--local=dockerfile={}", df.display()))
            .arg(format!("--output=type=local,dest={}", out.display())),
    );
    let mut sent: Vec<String> = fs::read_dir(out.join("ctx"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            "Cargo.lock",
            "Cargo.toml",
            "benches",
            "build.rs",
            "proto",
            "src"
        ]
    );
    sb.assert_clean();
}
