//! A small cluster for the manifests: podman kube play in place of the kubelet, the images scripts/images built, a workspace, a registry wanting credentials, and the check that a pod left nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HostPathVolumeSource, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::common::podman::podman;
pub use crate::common::podman::podman_ok;
use crate::common::{show, wait_until};

/// The Dockerfile every manifest builds: the RUN step proves the daemon can run a process, which
/// is what the modes differ in; busybox comes in the workspace, so no base image is pulled.
pub const DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo hello > /hello\"]\n";

pub const REGISTRY_USER: &str = "builder";
pub const REGISTRY_PASSWORD: &str = "pod-s3cr3t";

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Where scripts/images wrote the archives (scripts/test passes it).
pub fn images_dir() -> PathBuf {
    let dir = std::env::var_os("BKRUN_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/images"));
    for v in ["privileged", "rootless"] {
        assert!(
            dir.join(format!("bkrun-{v}.tar")).exists(),
            "no bkrun-{v}.tar in {}: run scripts/images (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// Loads both images into podman once per test process, as `podman load` from the archives
/// users get; the image a previous run loaded under the same name is removed when replaced.
pub fn load_images() {
    static LOADED: OnceLock<()> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = images_dir();
        for v in ["privileged", "rootless"] {
            let name = format!("localhost/bkrun:{v}");
            let id = |n: &str| {
                let out = podman()
                    .args(["image", "inspect", "--format", "{{.Id}}", n])
                    .output()
                    .unwrap();
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            };
            let old = id(&name);
            let tar = dir.join(format!("bkrun-{v}.tar"));
            let out = podman_ok(&["load", "--input", tar.to_str().unwrap()]);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&name),
                "podman load did not name the image {name}\n{}",
                show(&out)
            );
            if let Some(old) = old.filter(|o| Some(o) != id(&name).as_ref()) {
                let _ = podman().args(["rmi", &old]).output();
            }
        }
    });
}

pub use super::common::tls::free_port;

/// A plain-HTTP docker-registry on 127.0.0.1 that wants htpasswd credentials; stopped when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = free_port();
        let htpasswd = dir.join("htpasswd");
        let out = std::process::Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("htpasswd missing: run scripts/setup");
        fs::write(&htpasswd, &out.stdout).unwrap();
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: bkrun-images\n    path: {}\n",
                dir.join("registry-data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry missing: run scripts/setup");
        assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(
            ("127.0.0.1", port)
        )
        .is_ok()));
        Registry { child, port }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The digest the registry holds for repo:tag (its Docker-Content-Digest header).
    pub fn digest(&self, repo: &str, tag: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
        write!(
            s,
            "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
             Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json\r\nConnection: close\r\n\r\n",
            self.host()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        if !resp.starts_with("HTTP/1.1 200") {
            return None;
        }
        resp.lines()
            .find_map(|l| l.strip_prefix("Docker-Content-Digest: "))
            .map(|d| d.trim().to_string())
    }

    /// A Docker config.json with this registry's credentials, as a Secret would hold it.
    pub fn docker_config(&self) -> String {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
            self.host()
        )
    }

    /// bkrun.toml telling the daemon the registry speaks plain HTTP, as a cluster's ConfigMap would.
    pub fn bkrun_toml(&self) -> String {
        format!("[buildkitd.registry.\"{}\"]\nhttp = true\n", self.host())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's cluster: a unique suffix for every name it creates in podman, a workspace, a
/// registry, and the Secret, ConfigMap and volume the manifests name, under the test's names.
pub struct World {
    pub dir: tempfile::TempDir,
    pub suffix: String,
    pub registry: Registry,
    pub workspace: PathBuf,
    /// Names podman knows it by: pods, secrets, volumes; checked gone at the end.
    created: Vec<(&'static str, String)>,
    volume: String,
}

impl World {
    pub fn new(test: &str) -> World {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the image tests run podman as root (scripts/test runs as root)"
        );
        load_images();
        static N: AtomicU32 = AtomicU32::new(0);
        let suffix = format!(
            "{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("bkrun-images-{test}-"))
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let registry = Registry::start(dir.path());
        let workspace = dir.path().join("workspace");
        fs::create_dir(&workspace).unwrap();
        fs::write(workspace.join("Dockerfile"), DOCKERFILE).unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("static busybox missing: run scripts/setup");
        fs::copy(busybox, workspace.join("busybox")).unwrap();
        // The PersistentVolumeClaim the manifests mount: a podman volume bound to the workspace.
        let volume = format!("bkrun-workspace-{suffix}");
        podman_ok(&[
            "volume",
            "create",
            "--opt",
            "type=none",
            "--opt",
            "o=bind",
            "--opt",
            &format!("device={}", workspace.display()),
            &volume,
        ]);
        World {
            dir,
            suffix,
            registry,
            workspace,
            created: vec![("volume", volume.clone())],
            volume,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// An image reference in the test registry.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry.host())
    }

    fn unique(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// The files of Secret `name` in a directory of the test's. podman 4.3's kube play writes a
    /// Secret's `data` into the volume still base64-encoded, so the tests mount a Secret's files
    /// from a host directory instead (`mount_secret`): the same files at the same path.
    pub fn secret_dir(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.path(&format!("secrets/{name}"));
        fs::create_dir_all(&dir).unwrap();
        for (k, v) in files {
            fs::write(dir.join(k), v).unwrap();
        }
        dir
    }

    /// Turns the Secret volume `v` into the host directory holding its files.
    pub fn mount_secret(v: &mut Volume, dir: &Path) {
        v.secret = None;
        v.host_path = Some(HostPathVolumeSource {
            path: dir.display().to_string(),
            type_: Some("Directory".into()),
        });
    }

    /// Renames what `spec` refers to (the workspace claim, Secrets, ConfigMaps) to this test's
    /// names, and returns the documents that make those Secrets and ConfigMaps: the registry's
    /// credentials in bkrun-docker-config and its plain-HTTP setting in bkrun-config.
    pub fn wire(
        &mut self,
        spec: &mut PodSpec,
        extra: Vec<serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        let mut docs = extra;
        for v in spec.volumes.iter_mut().flatten() {
            if let Some(pvc) = &mut v.persistent_volume_claim {
                assert_eq!(pvc.claim_name, "bkrun-workspace", "an unknown claim");
                pvc.claim_name = self.volume.clone();
            }
            if let Some(secret) = &v.secret {
                let name = secret.secret_name.clone().unwrap();
                assert_eq!(name, "bkrun-docker-config", "an unknown Secret");
                let dir = self.secret_dir(
                    &name,
                    &[("config.json", self.registry.docker_config().as_bytes())],
                );
                World::mount_secret(v, &dir);
            }
            if let Some(cm) = &mut v.config_map {
                assert_eq!(cm.name, "bkrun-config", "an unknown ConfigMap");
                cm.name = self.unique("bkrun-config");
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(cm.name.clone()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "bkrun.toml".to_string(),
                        self.registry.bkrun_toml(),
                    )])),
                    ..Default::default()
                };
                docs.push(serde_json::to_value(map).unwrap());
                // kube play keeps a ConfigMap as a volume of that name, which `kube down` leaves.
                self.created.push(("volume", cm.name.clone()));
            }
        }
        docs
    }

    /// Plays `pod` as the kubelet would run it here, with what the test changes said:
    /// - its name gets the test's suffix, and what it refers to the test's names (`wire`);
    /// - hostNetwork: true stands for the cluster's network, so the daemon reaches the test
    ///   registry on 127.0.0.1 (the manifests themselves set no host network). A user-namespaced
    ///   pod may not share the host's network (Kubernetes refuses it, and runc cannot mount
    ///   /sys there), so it gets the same registry as a sidecar on its own loopback instead:
    ///   the host's docker-registry binary, config and storage;
    /// - the seccompProfile each container asks for is applied through the annotation podman
    ///   reads, since kube play ignores the field: Unconfined as `unconfined`, RuntimeDefault as
    ///   tests/pod's profile with containerd's refusals, and none as the kubelet's default,
    ///   Unconfined;
    /// - hostUsers: false gets 65536 ids, as the kubelet gives a pod (podman's default is fewer);
    /// - emptyDirs get the pod's name in theirs: podman 4.3 backs an emptyDir with a named
    ///   volume of the volume's name, which pods using the same name would share.
    ///
    /// Returns the running pod; `finish` waits for a container to end.
    pub fn play(&mut self, mut pod: Pod, docs: Vec<serde_json::Value>) -> Played {
        let name = self.unique(pod.metadata.name.as_deref().unwrap());
        pod.metadata.name = Some(name.clone());
        let spec = pod.spec.as_mut().unwrap();
        let userns = spec.host_users == Some(false);
        if userns {
            self.registry_sidecar(spec);
        } else {
            spec.host_network = Some(true);
            // podman turns declared ports into mappings, which a host-network pod cannot have;
            // on the host network the ports are the host's anyway.
            for c in &mut spec.containers {
                c.ports = None;
            }
        }
        for v in spec.volumes.iter_mut().flatten() {
            if v.empty_dir.is_some() {
                let unique = format!("{}-{name}", v.name);
                for c in &mut spec.containers {
                    for m in c.volume_mounts.iter_mut().flatten() {
                        if m.name == v.name {
                            m.name = unique.clone();
                        }
                    }
                }
                v.name = unique;
            }
        }
        let mut annotations = pod.metadata.annotations.take().unwrap_or_default();
        let pod_profile = spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.clone());
        for c in &spec.containers {
            let profile = c
                .security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| p.type_.clone())
                .or_else(|| pod_profile.clone());
            let value = match profile.as_deref() {
                None | Some("Unconfined") => "unconfined".to_string(),
                Some("RuntimeDefault") => format!(
                    "localhost/{}",
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/pod/seccomp-runtime-default.json")
                        .display()
                ),
                Some(other) => panic!("no stand-in for seccompProfile {other}"),
            };
            annotations.insert(
                format!("container.seccomp.security.alpha.kubernetes.io/{}", c.name),
                value,
            );
        }
        pod.metadata.annotations = Some(annotations);

        let mut text = String::new();
        for d in docs
            .iter()
            .chain(std::iter::once(&serde_json::to_value(&pod).unwrap()))
        {
            if d["kind"] == "Secret" {
                self.created
                    .push(("secret", d["metadata"]["name"].as_str().unwrap().into()));
            }
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d).unwrap());
        }
        let file = self.path(&format!("{name}.yaml"));
        fs::write(&file, &text).unwrap();
        self.created.push(("pod", file.display().to_string()));
        let mut args = vec!["kube", "play"];
        if userns {
            args.push("--userns=auto:size=65536");
        }
        let file_s = file.to_str().unwrap().to_string();
        args.push(&file_s);
        let out = podman().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "podman kube play {name} failed\n{}\n--- the YAML played\n{text}",
            show(&out)
        );
        Played { name, file }
    }

    /// The test registry as a container of the pod (see `play`), serving the same storage.
    fn registry_sidecar(&self, spec: &mut PodSpec) {
        let dir = self.dir.path().display().to_string();
        // Root in the pod is another uid on the host: let it write the storage.
        let data = self.dir.path().join("registry-data");
        fs::create_dir_all(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
        // First, so podman starts it before the build that pushes to it.
        spec.containers.insert(
            0,
            Container {
                name: "registry".into(),
                image: Some("bkrun:privileged".into()),
                command: Some(vec![
                    "/usr/local/bin/docker-registry".into(),
                    "serve".into(),
                    format!("{dir}/registry.yml"),
                ]),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "test-registry-bin".into(),
                        mount_path: "/usr/local/bin/docker-registry".into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "test-registry-dir".into(),
                        mount_path: dir.clone(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            },
        );
        let vols = spec.volumes.get_or_insert_with(Vec::new);
        vols.push(Volume {
            name: "test-registry-scratch".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        for (name, path, kind) in [
            (
                "test-registry-bin",
                "/usr/bin/docker-registry".to_string(),
                "File",
            ),
            ("test-registry-dir", dir, "Directory"),
        ] {
            vols.push(Volume {
                name: name.into(),
                host_path: Some(HostPathVolumeSource {
                    path,
                    type_: Some(kind.into()),
                }),
                ..Default::default()
            });
        }
    }

    /// Stops a played pod the way `kubectl delete` would. podman 4.3 sometimes cannot yet remove
    /// a user-namespaced container (its shm mount is still busy: EBUSY) and leaves the pod for
    /// another try, which the kubelet's garbage collection would make too.
    pub fn down(&self, played: &Played) {
        let file = played.file.to_str().unwrap();
        let mut last = None;
        // Taken first: a failed attempt has already removed some of the pod's containers.
        let volumes = played.volumes();
        for attempt in 0..10 {
            let out = podman().args(["kube", "down", file]).output().unwrap();
            if out.status.success() && attempt == 0 {
                return;
            }
            if out.status.success() {
                // A later attempt removes the pod but not the volumes the first one would have
                // (its emptyDirs, and the anonymous ones of the image's VOLUMEs); remove them
                // as the kubelet removes a deleted pod's emptyDirs.
                for v in &volumes {
                    let _ = podman().args(["volume", "rm", "--force", v]).output();
                }
                return;
            }
            last = Some(out);
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!(
            "podman kube down {file} kept failing\n{}",
            show(&last.unwrap())
        );
    }

    /// What this test made in podman that is still there, and host processes that name it
    /// (conmon names its container on its command line). Secrets kube play made from the YAML
    /// outlive `kube down`, so they are removed here first, as deleting them from the cluster would.
    pub fn leftovers(&self) -> Vec<String> {
        for (kind, name) in &self.created {
            match *kind {
                "secret" => {
                    let _ = podman().args(["secret", "rm", name]).output();
                }
                "volume" => {
                    let _ = podman().args(["volume", "rm", name]).output();
                }
                _ => {}
            }
        }
        let mut left: Vec<String> = super::common::podman::objects()
            .into_iter()
            .filter(|(_, l)| l.contains(&self.suffix))
            .map(|(kind, l)| format!("{kind} {l}"))
            .collect();
        left.extend(super::common::podman::processes_naming(&self.suffix));
        left
    }

    /// Ends the test: nothing it started may be left, and its temp dir goes.
    pub fn finish(self) {
        let left = self.leftovers();
        let dir = self.dir.path().to_path_buf();
        drop(self);
        assert!(left.is_empty(), "left behind:\n  {}", left.join("\n  "));
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failed test still cleans up what it made, pods first (they use the rest); `kube
        // down` also removes the pod's volumes, which `pod rm` would leave.
        for (kind, name) in self.created.iter().rev() {
            let args: Vec<&str> = match *kind {
                "pod" => vec!["kube", "down", name],
                "secret" => vec!["secret", "rm", name],
                _ => vec!["volume", "rm", "--force", name],
            };
            let _ = podman().args(&args).output();
        }
    }
}

/// A pod kube play started.
pub struct Played {
    pub name: String,
    file: PathBuf,
}

/// How a container ended.
pub struct Ended {
    pub code: i32,
    pub logs: String,
}

impl Played {
    /// The volumes the pod's containers mount, by podman's names for them.
    fn volumes(&self) -> Vec<String> {
        let ids = podman_ok(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("pod={}", self.name),
        ]);
        let mut names = Vec::new();
        for id in lines(&ids) {
            let out = podman()
                .args([
                    "inspect",
                    "--format",
                    "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
                    &id,
                ])
                .output()
                .unwrap();
            names.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
        names
    }

    pub fn container(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    pub fn logs(&self, container: &str) -> String {
        let out = podman()
            .args(["logs", &self.container(container)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits for `container` to exit (at most `limit`) and returns its exit code and logs.
    pub fn wait(&self, container: &str, limit: Duration) -> Ended {
        let name = self.container(container);
        let start = Instant::now();
        loop {
            let out = podman_ok(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &name,
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(code) = state.strip_prefix("exited ") {
                return Ended {
                    code: code.parse().unwrap(),
                    logs: self.logs(container),
                };
            }
            assert!(
                start.elapsed() < limit,
                "{name} still {state} after {limit:?}\n{}",
                self.logs(container)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs `command` in the running `container`, as a probe does.
    pub fn exec(&self, container: &str, command: &[String]) -> Output {
        podman()
            .args(["exec", &self.container(container)])
            .args(command)
            .output()
            .unwrap()
    }
}
