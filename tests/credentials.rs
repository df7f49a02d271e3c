//! Registry logins in every form a pod or CI job has them, end to end against a real buildkitd and a password-protected registry with no config.json anywhere: GitLab's DOCKER_AUTH_CONFIG, containers' auth.json (REGISTRY_AUTH_FILE), a kubernetes.io/dockerconfigjson Secret mounted in a pod (podman kube play), refusals before any daemon starts, and `bkrun config`'s account of which source answers.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::registry::Registry;
use common::*;

const USER: &str = "ci-builder";
const PASSWORD: &str = "file-pw-7d1c";

fn auth_b64(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn auths_json(host: &str) -> String {
    format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        auth_b64(USER, PASSWORD)
    )
}

/// bkrun with no Docker config anywhere: HOME is an empty directory of the sandbox's.
fn bare(sb: &Sandbox, cfg: &Path) -> Command {
    let mut c = with_config(sb.bkrun(), cfg);
    c.env("HOME", sb.mkdir("empty-home"));
    c
}

fn push(sb: &Sandbox, mut c: Command, image: &str) -> std::process::Output {
    let ctx = sb.hello_context();
    c.arg("build").args(sb.build_args(&ctx));
    c.arg(format!("--output=type=image,name={image},push=true"));
    output(&mut c)
}

#[test]
fn gitlab_docker_auth_config_and_registry_auth_file_push_with_no_config_json() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start_htpasswd(&sb, USER, PASSWORD);
    let host = reg.host();
    let cfg = reg.http_config(&sb);

    // Without a login the push is refused, as before.
    let out = push(&sb, bare(&sb, &cfg), &format!("{host}/app:anon"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    // GitLab's form: the JSON itself in a variable.
    let mut c = bare(&sb, &cfg);
    c.env("DOCKER_AUTH_CONFIG", auths_json(&host));
    let out = push(&sb, c, &format!("{host}/app:variable"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg.digest_as("app", "variable", USER, PASSWORD).is_some());
    assert!(!stderr(&out).contains(PASSWORD));

    // containers-auth.json(5), named by REGISTRY_AUTH_FILE; its key names the repository's
    // namespace, as podman login --authfile writes for `podman login HOST/team`.
    let authfile = sb.write(
        "containers/auth.json",
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            auth_b64(USER, PASSWORD)
        ),
    );
    let mut c = bare(&sb, &cfg);
    c.env("REGISTRY_AUTH_FILE", &authfile);
    let out = push(&sb, c, &format!("{host}/team/app:authfile"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg
        .digest_as("team/app", "authfile", USER, PASSWORD)
        .is_some());

    // The variable comes first: a wrong password there is what is used (and refused).
    let wrong = format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        auth_b64(USER, "wrong-pw-0000")
    );
    let mut c = bare(&sb, &cfg);
    c.env("DOCKER_AUTH_CONFIG", wrong)
        .env("REGISTRY_AUTH_FILE", &authfile);
    let out = push(&sb, c, &format!("{host}/app:precedence"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    drop(reg);
    sb.assert_clean();
}

#[test]
fn a_docker_auth_config_that_is_not_json_stops_before_any_daemon() {
    let sb = Sandbox::new(Mode::Privileged);
    let cfg = sb.write("bkrun.toml", "");
    let mut c = bare(&sb, &cfg);
    c.env(
        "DOCKER_AUTH_CONFIG",
        "{\"auths\": {\"r\": {\"auth\": \"c2VjcmV0LXZhbHVl\"}",
    );
    let start = Instant::now();
    let out = push(&sb, c, "127.0.0.1:1/app:x");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("bkrun: DOCKER_AUTH_CONFIG is not a usable registry login file: fix it"),
        "{err}"
    );
    assert!(!err.contains("c2VjcmV0LXZhbHVl"), "{err}");
    sb.assert_no_daemon_started(start);
    sb.assert_clean();
}

#[test]
fn config_names_the_source_that_answers_each_registry_and_no_secret() {
    let sb = Sandbox::new(Mode::Privileged);
    let cfg = sb.write("bkrun.toml", "");
    let docker = sb.write("docker/.dockerconfigjson", &auths_json("secret.example"));
    let authfile = sb.write(
        "auth.json",
        &format!(
            r#"{{"auths":{{"secret.example":{{"auth":"{a}"}},"quay.example/team":{{"auth":"{a}"}}}}}}"#,
            a = auth_b64(USER, PASSWORD)
        ),
    );
    let mut c = bare(&sb, &cfg);
    c.arg("config")
        .env("DOCKER_AUTH_CONFIG", auths_json("gitlab.example:5050"))
        .env("DOCKER_CONFIG", docker.parent().unwrap())
        .env("REGISTRY_AUTH_FILE", &authfile)
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/builder")
        .env(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        );
    let out = run_ok(&mut c);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "credentials:     DOCKER_AUTH_CONFIG: gitlab.example:5050",
        "registry login:  gitlab.example:5050 from DOCKER_AUTH_CONFIG",
        "registry login:  quay.example/team from REGISTRY_AUTH_FILE",
        "cloud identity:  AWS for *.dkr.ecr.*.amazonaws.com: role arn:aws:iam::123456789012:role/builder (web identity, AWS_ROLE_ARN)",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(
        text.contains(&format!(
            "registry login:  secret.example from DOCKER_CONFIG {}",
            docker.display()
        )),
        "{text}"
    );
    assert!(
        !text.contains(PASSWORD) && !text.contains(&auth_b64(USER, PASSWORD)),
        "{text}"
    );
    sb.assert_clean();
}

/// A Secret volume as the kubelet writes it: the key's file is a link into `..data`, itself a
/// link to a timestamped directory (what the atomic writer swaps on update).
fn kubelet_secret_volume(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let stamp = dir.join("..2026_12_05_10_00_00.123456789");
    std::fs::create_dir_all(&stamp).unwrap();
    for (k, v) in files {
        std::fs::write(stamp.join(k), v).unwrap();
        std::os::unix::fs::symlink(format!("..data/{k}"), dir.join(k)).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
    dir.to_path_buf()
}

/// The privileged image scripts/images built, loaded into podman unless it is there already
/// (tests/images.rs loads it too).
fn privileged_image() -> &'static str {
    const NAME: &str = "localhost/bkrun:privileged";
    if !common::podman::podman_out(&["image", "exists", NAME])
        .status
        .success()
    {
        let dir = std::env::var_os("BKRUN_TEST_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/images"));
        let tar = dir.join("bkrun-privileged.tar");
        assert!(
            tar.exists(),
            "no {}: run scripts/images (scripts/test does)",
            tar.display()
        );
        common::podman::podman_ok(&["load", "--input", tar.to_str().unwrap()]);
    }
    NAME
}

/// The Dockerfile the pod builds: busybox from the workspace, so no base image is pulled.
const POD_DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo hello > /hello\"]\n";

/// The pod: bkrun (this build, over the image's) pushing `image`, DOCKER_CONFIG naming the
/// Secret's mount; `host` maps each volume name to its host directory (or file, for bkrun).
fn pod_yaml(name: &str, image: &str, host: &[(&str, &Path)]) -> String {
    let base = privileged_image();
    let dir = |v: &str| {
        host.iter()
            .find(|(n, _)| *n == v)
            .unwrap()
            .1
            .display()
            .to_string()
    };
    let (secret, work, etc, state, bin) = (
        dir("regcred"),
        dir("workspace"),
        dir("config"),
        dir("state"),
        dir("bkrun"),
    );
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  hostNetwork: true
  containers:
  - name: build
    image: {base}
    command: ["/usr/bin/bkrun", "--config", "/etc/bkrun/bkrun.toml", "--root", "/state",
      "build", "--frontend", "dockerfile.v0", "--local", "context=/workspace",
      "--local", "dockerfile=/workspace", "--progress", "plain",
      "--output", "type=image,name={image},push=true"]
    env:
    - name: DOCKER_CONFIG
      value: /var/run/secrets/regcred
    securityContext:
      privileged: true
    volumeMounts:
    - {{name: regcred, mountPath: /var/run/secrets/regcred, readOnly: true}}
    - {{name: workspace, mountPath: /workspace}}
    - {{name: config, mountPath: /etc/bkrun, readOnly: true}}
    - {{name: state, mountPath: /state}}
    - {{name: bkrun, mountPath: /usr/bin/bkrun, readOnly: true}}
  volumes:
  - {{name: regcred, hostPath: {{path: {secret}, type: Directory}}}}
  - {{name: workspace, hostPath: {{path: {work}, type: Directory}}}}
  - {{name: config, hostPath: {{path: {etc}, type: Directory}}}}
  - {{name: state, hostPath: {{path: {state}, type: Directory}}}}
  - {{name: bkrun, hostPath: {{path: {bin}, type: File}}}}
"#,
    )
}

/// A kubernetes.io/dockerconfigjson Secret mounted into a pod as a volume, DOCKER_CONFIG naming
/// the mount: bkrun in the pod (this build, in the privileged image) pushes with the Secret's
/// login. podman 4.3's kube play cannot give the pod the Secret itself (it panics on a secret
/// volume without `optional`, and with it writes the data still base64-encoded), so the volume
/// is a host directory laid out as the kubelet lays a Secret volume out.
#[test]
fn a_dockerconfigjson_secret_mounted_in_a_pod_pushes() {
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start_htpasswd(&sb, USER, PASSWORD);
    let host = reg.host();
    let name = format!("bkrun-creds-{}", std::process::id());
    let secret = kubelet_secret_volume(
        &sb.mkdir("regcred"),
        &[(".dockerconfigjson", &auths_json(&host))],
    );
    let work = sb.mkdir("workspace");
    sb.write("workspace/Dockerfile", POD_DOCKERFILE);
    std::fs::copy(sb.busybox_dir().join("busybox"), work.join("busybox")).unwrap();
    let etc = sb.mkdir("etc-bkrun");
    sb.write(
        "etc-bkrun/bkrun.toml",
        &format!("[buildkitd.registry.\"{host}\"]\nhttp = true\n"),
    );
    let state = sb.mkdir("pod-state");
    let image = format!("{host}/pod/app:secret");
    let bin = sb.path("bin/bkrun");
    let yaml = pod_yaml(
        &name,
        &image,
        &[
            ("regcred", &secret),
            ("workspace", &work),
            ("config", &etc),
            ("state", &state),
            ("bkrun", &bin),
        ],
    );
    let file = sb.write("pod.yaml", &yaml);
    common::podman::podman_ok(&["kube", "play", file.to_str().unwrap()]);
    let container = format!("{name}-build");
    let waited = common::podman::podman_out(&["wait", &container]);
    let logs = common::podman::podman_out(&["logs", &container]);
    let logs = format!("{}{}", show(&logs), show(&waited));
    common::podman::podman_ok(&["kube", "down", file.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "0",
        "the pod's build failed:\n{logs}"
    );
    assert!(
        reg.digest_as("pod/app", "secret", USER, PASSWORD).is_some(),
        "{logs}"
    );
    assert!(!logs.contains(PASSWORD), "{logs}");
    let left: Vec<_> = common::podman::objects()
        .into_iter()
        .filter(|(_, n)| n.contains(&name))
        .collect();
    assert!(left.is_empty(), "podman objects left: {left:?}");
    assert!(common::podman::processes_naming(&name).is_empty());
    // The daemon's state (root's files) goes with the sandbox.
    std::fs::remove_dir_all(&state).unwrap();
    drop(reg);
    sb.assert_clean();
}

/// A login file in a directory others can write (as /tmp is) is read by descriptor, following
/// links only as the kernel's protected_symlinks would: nobody's link there to root's own
/// Docker config is refused in one line before any daemon starts, and nothing is read through it.
#[test]
fn a_login_file_nobody_linked_into_a_shared_dir_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new(Mode::Privileged);
    let cfg = sb.write("bkrun.toml", "");
    let private = sb.write("private/config.json", &auths_json("victim.example"));
    let shared = sb.mkdir("shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Command::new("sh")
        .arg("-ec")
        .arg(format!("ln -s {} auth.json", private.display()))
        .current_dir(&shared)
        .uid(65534)
        .gid(65534)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "as nobody: {}", show(&out));
    let mut c = bare(&sb, &cfg);
    c.env("REGISTRY_AUTH_FILE", shared.join("auth.json"));
    let start = Instant::now();
    let out = push(&sb, c, "127.0.0.1:1/app:x");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    let want = format!(
        "bkrun: cannot read the registry login file {}/auth.json: fix its permissions or unset the variable that names it",
        shared.display()
    );
    assert!(
        err.lines().next().unwrap_or_default().starts_with(&want),
        "{err}"
    );
    assert!(!err.contains(&auth_b64(USER, PASSWORD)), "{err}");
    sb.assert_no_daemon_started(start);
    sb.assert_clean();
}
