//! `bkrun kube` end to end: a generated Deployment of two privileged bkrun daemons, its ConfigMaps and mutual TLS from a TLS Secret's files, and one of `--userns` in a user-namespaced pod, run by `podman kube play` as a kubelet would; each daemon serves a build from bkrun on the host, and `kube down` leaves nothing.

#[allow(dead_code)]
#[path = "images/kube.rs"]
mod cluster;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, HostPathVolumeSource, PodSpec, Service};
use serde::Deserialize;
use serde_json::Value;

use common::podman::{self, podman, podman_out};
use common::{run_ok, sh_in, show, wait_until, Mode, Sandbox};

/// A CA, a server certificate for the Service's name (the name clients verify, whichever pod
/// answers), and a client certificate; the server's as a Kubernetes TLS Secret holds them
/// (ca.crt, tls.crt, tls.key) in `server/`, the client's likewise in `client/` for --tlsdir.
fn make_certs(dir: &Path, service: &str) {
    fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=DNS:{service}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh_in(
        dir,
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=bkrun-kube-ca 2>/dev/null
             for who in server:{service} client:bkrun-client; do
               name=${{who%%:*}}; cn=${{who#*:}}
               mkdir $name
               openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $name/tls.key -out $name.csr -subj /CN=$cn 2>/dev/null
               openssl x509 -req -in $name.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $name/tls.crt -days 2 -extfile $name.ext 2>/dev/null
               cp ca.crt $name/ca.crt
             done"
        ),
    );
    // A Secret volume's files are 0644 unless it says otherwise.
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        fs::set_permissions(
            dir.join("server").join(f),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// What podman still has or runs of the pool named `name`: containers, pods, volumes, secrets,
/// and host processes naming it (conmon names its container on its command line).
fn leftovers(name: &str, volumes: &[String]) -> Vec<String> {
    let mut left: Vec<String> = podman::objects()
        .into_iter()
        .filter(|(kind, l)| l.contains(name) || (*kind == "volume" && volumes.contains(l)))
        .map(|(kind, l)| format!("{kind} {l}"))
        .collect();
    left.extend(podman::processes_naming(name));
    left
}

/// Removes what the test played, however it ended: `kube down`, then what podman 4.3's
/// `kube down` leaves and deleting the objects from a cluster would not (the ConfigMaps' volumes).
struct Played {
    file: std::path::PathBuf,
    config_maps: Vec<String>,
}

impl Played {
    fn down(&self) -> Output {
        let out = podman_out(&["kube", "down", self.file.to_str().unwrap()]);
        for cm in &self.config_maps {
            let _ = podman_out(&["volume", "rm", "--force", cm]);
        }
        out
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        self.down();
    }
}

/// The volumes the containers of pod `pod` mount, by podman's names: the test checks they go.
fn pod_volumes(pod: &str) -> Vec<String> {
    let ids = lines(&podman_out(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("pod={pod}"),
    ]));
    let mut names = Vec::new();
    for id in ids {
        let out = podman_out(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
            &id,
        ]);
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    names
}

/// The pod's address on podman's network (its infra container holds the network namespace).
fn pod_ip(pod: &str) -> String {
    let infra = podman_out(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
    let infra = String::from_utf8_lossy(&infra.stdout).trim().to_string();
    let out = podman_out(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &infra,
    ]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "pod {pod} has no address: {ip:?}\n{}",
        show(&out)
    );
    ip
}

/// Changes a generated pod spec where podman 4.3 is not a kubelet (see the comment above the
/// call), changing nothing else.
fn as_podman_plays(pod: &mut PodSpec, name: &str, certs: &Path) {
    let state_dir = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "buildkit-state")
        .map(|m| m.mount_path.clone())
        .unwrap();
    assert_eq!(state_dir, "/var/lib/buildkit", "the image's VOLUME");
    let volumes = pod.volumes.as_mut().unwrap();
    volumes.retain(|v| v.empty_dir.is_none());
    let mut secrets = 0;
    for v in volumes.iter_mut() {
        if let Some(s) = v.secret.take() {
            assert_eq!(s.secret_name, Some(format!("{name}-tls")));
            v.host_path = Some(HostPathVolumeSource {
                path: certs.join("server").display().to_string(),
                type_: Some("Directory".into()),
            });
            secrets += 1;
        }
    }
    assert_eq!(secrets, 1);
    for c in &mut pod.containers {
        c.ports = None;
        c.volume_mounts
            .as_mut()
            .unwrap()
            .retain(|m| m.name != "buildkit-state");
    }
}

#[test]
fn generated_deployment_of_two_daemons_serves_mutual_tls_builds_under_kube_play() {
    cluster::load_images();
    let sb = Sandbox::new(Mode::Privileged);
    // Unique in podman, so the leftover check sees only this run's objects.
    let name = format!("bkrun-kube-{}", std::process::id());
    let certs = sb.mkdir("certs");
    make_certs(&certs, &name);
    // A bkrun.toml and a buildkitd.toml whose effects the daemons' workers show: the snapshotter
    // bkrun.toml's flags choose, and a worker label from buildkitd.toml.
    let bkrun_toml = sb.write(
        "bkrun.toml",
        "buildkitd_flags = [\"--oci-worker-snapshotter=native\"]\n",
    );
    let buildkitd_toml = sb.write(
        "buildkitd.toml",
        "[worker.oci.labels]\n\"org.example.pool\" = \"kube-test\"\n",
    );

    let generated = run_ok(
        Command::new(env!("CARGO_BIN_EXE_bkrun"))
            .args(["kube", "--name", &name, "--replicas", "2"])
            .args(["--platform", "linux/amd64,linux/s390x"])
            .args(["--label", "team=ci"])
            .args(["--allow-from-namespace", "kubernetes.io/metadata.name=ci"])
            .arg("--bkrun-config")
            .arg(&bkrun_toml)
            .arg("--buildkitd-config")
            .arg(&buildkitd_toml),
    );
    let notes = String::from_utf8_lossy(&generated.stderr);
    assert!(
        notes.contains(&format!("tcp://{name}:1234")) && notes.contains(&format!("{name}-tls")),
        "{notes}"
    );
    let text = String::from_utf8(generated.stdout).unwrap();
    let mut docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "Service",
            "NetworkPolicy",
            "Deployment"
        ],
        "{text}"
    );
    // Played as printed: podman 4.3 skips kinds it does not run ("Kube kind NetworkPolicy not
    // supported", at info level) and plays the rest, so the policy is there but not enforced.
    let policy = &docs[3]["spec"];
    assert_eq!(
        policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "ci",
        "{text}"
    );
    let config_maps: Vec<String> = docs[..2]
        .iter()
        .map(|d| {
            let cm: ConfigMap = serde_json::from_value(d.clone()).unwrap();
            cm.metadata.name.unwrap()
        })
        .collect();
    let svc: Service = serde_json::from_value(docs[2].clone()).unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some(name.as_str()));
    let mut dep: Deployment = serde_json::from_value(docs[4].clone()).unwrap();
    let spec = dep.spec.as_mut().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_mut().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let probe = pod.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec readiness probe");

    // Where podman 4.3 is not a kubelet, the test stands in for one, changing nothing else:
    // - it mounts a Secret's data still base64-encoded (and panics on a Secret volume with no
    //   `optional`), so the TLS Secret's three files come from a host directory, at the same path;
    // - it backs an emptyDir with one named volume that every replica shares, where a kubelet
    //   gives each pod its own: the image's VOLUME at the same path (per container) stands in;
    // - it publishes every containerPort on the host, which a kubelet does only for a hostPort,
    //   and the second replica's could not bind: the ports go, and clients use the pods' addresses.
    as_podman_plays(pod, &name, &certs);
    docs[4] = serde_json::to_value(&dep).unwrap();
    let mut played_text = String::new();
    for d in &docs {
        played_text.push_str("---\n");
        played_text.push_str(&serde_yaml::to_string(d).unwrap());
    }
    let file = sb.path("pool.yaml");
    fs::write(&file, &played_text).unwrap();
    let played = Played {
        file: file.clone(),
        config_maps,
    };
    let out = podman_out(&["kube", "play", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "podman kube play failed\n{}\n--- the YAML played\n{played_text}",
        show(&out)
    );

    // kube play names a Deployment's pods NAME-pod-I, and their containers POD-CONTAINER.
    let pods: Vec<String> = (0..2).map(|i| format!("{name}-pod-{i}")).collect();
    let logs = |pod: &str| {
        let out = podman_out(&["logs", &format!("{pod}-bkrun")]);
        show(&out)
    };
    for pod in &pods {
        // The readiness probe, run as the kubelet runs it, passes once the daemon serves.
        let ready = wait_until(Duration::from_secs(90), || {
            podman()
                .args(["exec", &format!("{pod}-bkrun")])
                .args(&probe)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            ready,
            "{pod}: the readiness probe never passed\n{}",
            logs(pod)
        );
    }
    let volumes: Vec<String> = pods.iter().flat_map(|p| pod_volumes(p)).collect();
    // Each daemon has a state dir of its own (the stand-in for the emptyDir works).
    let mut anonymous: Vec<&String> = volumes.iter().filter(|v| !v.contains(&name)).collect();
    anonymous.sort();
    anonymous.dedup();
    assert_eq!(anonymous.len(), 2, "{volumes:?}");

    // bkrun on the host reaches each daemon at its pod's address over mutual TLS, verifying the
    // Service's name, as a client behind the Service would.
    let client = certs.join("client");
    let bkrun = |ip: &str| {
        let mut c = sb.command(&sb.bin);
        c.args(["--addr", &format!("tcp://{ip}:1234")])
            .arg("--tlsdir")
            .arg(&client)
            .args(["--tlsservername", &name]);
        c
    };
    let ctx = sb.context(
        "ctx",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /built\"]\n",
    );
    fs::copy(sb.busybox_dir().join("busybox"), ctx.join("busybox")).unwrap();
    let mut worker_ids = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let ip = pod_ip(pod);
        let workers = run_ok(bkrun(&ip).args(["debug", "workers", "-v"]));
        let w = String::from_utf8_lossy(&workers.stdout);
        let platforms: Vec<&str> = w
            .lines()
            .filter_map(|l| l.strip_prefix("Platforms:"))
            .flat_map(|l| l.split([',', ' ', '\t']).filter(|s| !s.is_empty()))
            .collect();
        // Exactly the platforms given (BuildKit adds amd64's microarchitecture levels), however
        // many the node could run or emulate.
        assert!(
            platforms.contains(&"linux/s390x")
                && platforms
                    .iter()
                    .all(|p| *p == "linux/s390x" || p.starts_with("linux/amd64")),
            "--platform\n{w}"
        );
        worker_ids.extend(
            w.lines()
                .filter_map(|l| l.strip_prefix("ID:"))
                .map(|s| s.trim().to_string()),
        );
        let label = |key: &str, value: &str| {
            w.lines().any(|l| {
                l.trim_start().starts_with(&format!("{key}:")) && l.trim_end().ends_with(value)
            })
        };
        assert!(
            label("org.mobyproject.buildkit.worker.snapshotter", "native"),
            "bkrun.toml's flags are not the daemon's\n{w}"
        );
        assert!(
            label("org.example.pool", "kube-test"),
            "buildkitd.toml is not the daemon's\n{w}"
        );

        let dest = sb.path(&format!("out-{i}"));
        run_ok(
            bkrun(&ip)
                .arg("build")
                .args(common::dockerfile_args(&ctx))
                .arg(common::local_output(&dest))
                .arg("--progress=plain"),
        );
        assert_eq!(fs::read_to_string(dest.join("built")).unwrap(), "built\n");
    }
    // Two daemons, each with its own worker: the replicas are not one daemon reached twice.
    assert_eq!(worker_ids.len(), 2, "{worker_ids:?}");
    assert_ne!(worker_ids[0], worker_ids[1]);

    // Without a client certificate the daemons refuse.
    let refused = sb
        .command(&sb.bin)
        .args(["--addr", &format!("tcp://{}:1234", pod_ip(&pods[0]))])
        .arg("--tlscacert")
        .arg(client.join("ca.crt"))
        .args(["--tlsservername", &name, "--connect-retry", "0"])
        .args(["debug", "workers"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", show(&refused));

    let down = played.down();
    assert!(
        down.status.success(),
        "podman kube down failed\n{}",
        show(&down)
    );
    let left = leftovers(&name, &volumes);
    assert!(left.is_empty(), "left behind:\n  {}", left.join("\n  "));
    sb.assert_clean();
    drop(played);
}

/// `bkrun kube --userns`: a daemon running root with `privileged: true` in a user-namespaced pod
/// (kube play's `--userns=auto` standing for the kubelet's `hostUsers: false`, with the 65536
/// ids a kubelet gives) runs privileged there, its root not the host's, and serves a mutual-TLS
/// build from bkrun on the host; `kube down` leaves nothing.
#[test]
fn generated_userns_daemon_runs_privileged_inside_its_user_namespace_under_kube_play() {
    cluster::load_images();
    let sb = Sandbox::new(Mode::Privileged);
    let name = format!("bkrun-kube-userns-{}", std::process::id());
    let certs = sb.mkdir("certs");
    make_certs(&certs, &name);
    let generated = run_ok(
        sb.command(&sb.bin)
            .args(["kube", "--userns", "--name", &name]),
    );
    let text = String::from_utf8(generated.stdout).unwrap();
    let mut docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Deployment"], "{text}");
    let mut dep: Deployment = serde_json::from_value(docs[1].clone()).unwrap();
    let pod = dep.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    assert_eq!(pod.host_users, Some(false), "{text}");
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(true), "{text}");
    let probe = pod.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec readiness probe");
    // The same stand-ins for what podman 4.3 does unlike a kubelet as the Deployment above.
    as_podman_plays(pod, &name, &certs);
    docs[1] = serde_json::to_value(&dep).unwrap();
    let mut played_text = String::new();
    for d in &docs {
        played_text.push_str("---\n");
        played_text.push_str(&serde_yaml::to_string(d).unwrap());
    }
    let file = sb.path("pool.yaml");
    fs::write(&file, &played_text).unwrap();
    let played = Played {
        file: file.clone(),
        config_maps: Vec::new(),
    };
    let out = podman_out(&[
        "kube",
        "play",
        "--userns=auto:size=65536",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "podman kube play failed\n{}\n--- the YAML played\n{played_text}",
        show(&out)
    );

    let pod = format!("{name}-pod-0");
    let container = format!("{pod}-bkrun");
    let logs = || show(&podman_out(&["logs", &container]));
    let ready = wait_until(Duration::from_secs(90), || {
        podman()
            .args(["exec", &container])
            .args(&probe)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(ready, "{pod}: the readiness probe never passed\n{}", logs());
    let started = logs();
    assert!(
        started.contains("bkrun: starting buildkitd ")
            && started.contains(", privileged (root with CAP_SYS_ADMIN"),
        "expected the daemon to run privileged\n{started}"
    );
    // Its root is some other uid on the host: the pod's user namespace maps 65536 ids elsewhere.
    let map = run_ok(podman().args(["exec", &container, "cat", "/proc/self/uid_map"]));
    let map = String::from_utf8_lossy(&map.stdout);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert!(
        fields.len() == 3 && fields[0] == "0" && fields[1] != "0" && fields[2] == "65536",
        "uid_map {map:?}"
    );
    let volumes = pod_volumes(&pod);

    let ctx = sb.context(
        "ctx",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /built\"]\n",
    );
    fs::copy(sb.busybox_dir().join("busybox"), ctx.join("busybox")).unwrap();
    let dest = sb.path("out");
    run_ok(
        sb.command(&sb.bin)
            .args(["--addr", &format!("tcp://{}:1234", pod_ip(&pod))])
            .arg("--tlsdir")
            .arg(certs.join("client"))
            .args(["--tlsservername", &name])
            .arg("build")
            .args(common::dockerfile_args(&ctx))
            .arg(common::local_output(&dest))
            .arg("--progress=plain"),
    );
    assert_eq!(fs::read_to_string(dest.join("built")).unwrap(), "built\n");

    // podman 4.3 now and then cannot yet remove a user-namespaced container (its shm mount is
    // still busy) and leaves the pod for another try, as the kubelet's garbage collection would.
    let mut down = played.down();
    let retried = !down.status.success();
    for _ in 0..10 {
        if down.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        down = played.down();
    }
    assert!(
        down.status.success(),
        "podman kube down failed\n{}",
        show(&down)
    );
    if retried {
        // A later attempt leaves the volumes the first would have removed, as the kubelet
        // removes a deleted pod's.
        for v in &volumes {
            let _ = podman_out(&["volume", "rm", "--force", v]);
        }
    }
    let left = leftovers(&name, &volumes);
    assert!(left.is_empty(), "left behind:\n  {}", left.join("\n  "));
    sb.assert_clean();
    drop(played);
}
