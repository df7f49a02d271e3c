//! Registry logins from the workload's cloud identity, end to end against a real buildkitd: ECR through moto's STS and ECR (IRSA's web identity, static keys signed with SigV4 and checked by moto, a key ECR refuses), Google's metadata server and a service-account key, and Azure Workload Identity, each against a small stand-in following the documented requests; the registry is a password-protected docker-registry whose name looks like the cloud's, mapped to 127.0.0.1 in a mount namespace of the test's own.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::registry::Registry;
use common::*;

/// moto's venv, as scripts/setup makes it.
fn venv() -> PathBuf {
    let v = PathBuf::from(
        std::env::var("BKRUN_TEST_DIR").unwrap_or_else(|_| "/var/lib/bkrun-test".into()),
    )
    .join("moto-venv");
    assert!(
        v.join("bin/moto_server").exists(),
        "no moto at {}: run scripts/setup",
        v.display()
    );
    v
}

/// A background server of the test's (moto, a stand-in), killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(mut c: Command, port: u16) -> Server {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let child = c.spawn().unwrap();
        let mut s = Server { child, port };
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let _ = s.child.kill();
            panic!("{c:?} did not listen on {port}");
        }
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server; `free_requests` Some(n): IAM auth is enforced after the first n requests.
fn moto(free_requests: Option<u32>) -> Server {
    let port = common::tls::free_port();
    let mut c = Command::new(venv().join("bin/moto_server"));
    c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(n) = free_requests {
        c.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
    }
    Server::start(c, port)
}

/// A Python script of the venv's (boto3, cryptography) against `endpoint`: its stdout.
fn venv_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `c` run in a mount namespace of its own where /etc/hosts maps `names` to 127.0.0.1 (for
/// bkrun and the daemon it starts), so the machine's /etc/hosts is never touched.
fn with_hosts(sb: &Sandbox, names: &[&str], c: &Command) -> Command {
    let hosts = sb.write(
        "hosts",
        &format!("127.0.0.1 localhost {}\n::1 localhost\n", names.join(" ")),
    );
    let mut w = sb.command("unshare");
    w.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/hosts && exec \"$@\"",
            hosts.display()
        ))
        .arg("sh")
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    w
}

/// bkrun (privileged: the mount namespace needs root) pushing the hello image to `image`, with
/// no Docker config, HTTP for `registry` and `env` set.
fn push(sb: &Sandbox, registry: &str, image: &str, env: &[(&str, String)]) -> Output {
    let name = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let cfg = sb.write(
        "bkrun.toml",
        &format!("[buildkitd.registry.\"{registry}\"]\nhttp = true\n"),
    );
    let mut c = with_config(sb.bkrun(), &cfg);
    c.env("HOME", sb.mkdir("empty-home"));
    for (k, v) in env {
        c.env(k, v);
    }
    let ctx = sb.hello_context();
    c.arg("build").args(sb.build_args(&ctx));
    c.arg(format!("--output=type=image,name={image},push=true"));
    output(&mut with_hosts(sb, &[name], &c))
}

/// The line that says why the build failed (buildctl's `error: failed to solve: …`), with
/// the daemon's wrapping gone: the identity's refusal is all of it.
fn solve_error(out: &Output) -> String {
    stderr(out)
        .lines()
        .find_map(|l| l.strip_prefix("error: failed to solve: "))
        .unwrap_or_default()
        .to_string()
}

const ACCOUNT: &str = "123456789012";
/// What moto's GetAuthorizationToken gives (its password is `ACCOUNT-auth-token`): read once
/// through boto3 in `ecr_token_password`, then used for the registry's htpasswd.
fn ecr_token_password(endpoint: &str) -> (String, String) {
    let text = venv_python(
        "import base64, boto3, sys\n\
         t = boto3.client('ecr', endpoint_url=sys.argv[1]).get_authorization_token(registryIds=[sys.argv[2]])\n\
         print(base64.b64decode(t['authorizationData'][0]['authorizationToken']).decode())",
        &[endpoint, ACCOUNT],
    );
    let (u, p) = text.trim().split_once(':').unwrap();
    (u.to_string(), p.to_string())
}

fn ecr_host(port: u16) -> String {
    format!("{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com:{port}")
}

#[test]
fn ecr_push_with_an_irsa_web_identity_through_sts_and_ecr() {
    let sb = Sandbox::new(Mode::Privileged);
    let aws = moto(None);
    let (user, password) = ecr_token_password(&aws.url());
    assert_eq!(user, "AWS");
    let reg = Registry::start_htpasswd(&sb, &user, &password);
    let host = ecr_host(reg.port);
    let token = sb.write(
        "sa-token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2k6YnVpbGRlciJ9.c2ln",
    );
    let env = [
        (
            "AWS_ROLE_ARN",
            format!("arn:aws:iam::{ACCOUNT}:role/builder"),
        ),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_ENDPOINT_URL", aws.url()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let out = push(&sb, &host, &format!("{host}/app:irsa"), &env);
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg.digest_as("app", "irsa", &user, &password).is_some());
    assert!(!stderr(&out).contains(&password), "{}", show(&out));
    drop(aws);
    drop(reg);
    sb.assert_clean();
}

/// Through moto's free requests: IAM users `pusher` (allowed ecr:GetAuthorizationToken) and
/// `nobody` with an access key each, as (id, secret), and the role `no-ecr` with no policy.
fn iam_users_and_role(aws: &Server) -> Vec<(String, String)> {
    let keys = venv_python(
        "import boto3, json, sys\n\
         iam = boto3.client('iam', endpoint_url=sys.argv[1])\n\
         out = []\n\
         for name in ['pusher', 'nobody']:\n\
         \x20   iam.create_user(UserName=name)\n\
         \x20   k = iam.create_access_key(UserName=name)['AccessKey']\n\
         \x20   out.append((k['AccessKeyId'], k['SecretAccessKey']))\n\
         iam.put_user_policy(UserName='pusher', PolicyName='ecr', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'ecr:GetAuthorizationToken', 'Resource': '*'}]}))\n\
         iam.create_role(RoleName='no-ecr', AssumeRolePolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'Federated': 'oidc'}, 'Action': 'sts:AssumeRoleWithWebIdentity'}]}))\n\
         print(json.dumps(out))",
        &[&aws.url()],
    );
    serde_json::from_str(keys.trim()).unwrap()
}

#[test]
fn ecr_keys_are_signed_as_moto_checks_and_each_refusal_names_the_role_or_key() {
    let sb = Sandbox::new(Mode::Privileged);
    // Six requests set up two IAM users and a role, a seventh is the role's STS call (moto
    // cannot answer an unsigned one once it checks); then every request must be signed and
    // allowed.
    let aws = moto(Some(7));
    let keys = iam_users_and_role(&aws);
    let password = format!("{ACCOUNT}-auth-token");
    let reg = Registry::start_htpasswd(&sb, "AWS", &password);
    let host = ecr_host(reg.port);
    let env = |(id, secret): &(String, String)| {
        vec![
            ("AWS_ACCESS_KEY_ID", id.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ("AWS_ENDPOINT_URL_ECR", aws.url()),
        ]
    };
    // IRSA with a role whose policy lacks the call: the role is named, and what to attach.
    let token = sb.write("sa-token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    let role = format!("arn:aws:iam::{ACCOUNT}:role/no-ecr");
    let irsa = [
        ("AWS_ROLE_ARN", role.clone()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_ENDPOINT_URL", aws.url()),
    ];
    let out = push(&sb, &host, &format!("{host}/app:role"), &irsa);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let want = format!("ECR refused the token for {host} to role {role}: the role's policy lacks ecr:GetAuthorizationToken (or push/pull on the repository): attach e.g. AmazonEC2ContainerRegistryPowerUser to it: AccessDenied");
    let line = solve_error(&out);
    assert!(line.starts_with(&want), "{line}\n{}", show(&out));

    let out = push(&sb, &host, &format!("{host}/app:keys"), &env(&keys[0]));
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg.digest_as("app", "keys", "AWS", &password).is_some());

    // EKS Pod Identity: the same keys from the agent's endpoint, asked with the pod's token.
    let agent_port = common::tls::free_port();
    let authorization = "pod-identity-token-5a1e";
    let agent = standin_on(
        agent_port,
        "eks",
        serde_json::json!({"authorization": authorization, "key_id": keys[0].0, "secret": keys[0].1}),
    );
    let pod_token = sb.write("eks-pod-identity-token", authorization);
    let eks = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v1/credentials", agent.url()),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            pod_token.display().to_string(),
        ),
        ("AWS_ENDPOINT_URL_ECR", aws.url()),
    ];
    let out = push(&sb, &host, &format!("{host}/app:pod-identity"), &eks);
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg
        .digest_as("app", "pod-identity", "AWS", &password)
        .is_some());
    drop(agent);

    let out = push(&sb, &host, &format!("{host}/app:refused"), &env(&keys[1]));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = solve_error(&out);
    let want = format!(
        "ECR refused the token for {host} to access key {}: give that key's user or role ecr:GetAuthorizationToken",
        keys[1].0
    );
    assert!(line.starts_with(&want), "{line}\n{}", show(&out));
    assert!(!stderr(&out).contains(&keys[1].1));

    drop(aws);
    drop(reg);
    sb.assert_clean();
}

/// tests/fixtures/cloudstandin.py in `mode` with `conf`, on `port`.
fn standin_on(port: u16, mode: &str, conf: serde_json::Value) -> Server {
    let mut c = Command::new(venv().join("bin/python"));
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cloudstandin.py"
    ))
    .args([mode, &port.to_string(), &conf.to_string()]);
    Server::start(c, port)
}

/// An RSA key as a Google service-account key file names it (PKCS#8 PEM), and its public half.
fn rsa_key(sb: &Sandbox, name: &str) -> (String, PathBuf) {
    let dir = sb.mkdir("keys");
    sh_in(
        &dir,
        &format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {name}.pem 2>/dev/null\nopenssl pkey -in {name}.pem -pubout -out {name}.pub 2>/dev/null"),
    );
    (
        std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap(),
        dir.join(format!("{name}.pub")),
    )
}

#[test]
fn google_registries_push_with_the_metadata_servers_token_or_a_key_and_a_refused_key_is_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let token = "ya29.standin-access-token-51f0";
    let reg = Registry::start_htpasswd(&sb, "oauth2accesstoken", token);
    let host = format!("gcr.io:{}", reg.port);
    let email = "builder@bkrun-test.iam.gserviceaccount.com";
    let (good, public) = rsa_key(&sb, "good");
    let (other, _) = rsa_key(&sb, "other");
    let port = common::tls::free_port();
    let token_uri = format!("http://127.0.0.1:{port}/token");
    let google = standin_on(
        port,
        "gcp",
        serde_json::json!({"token": token, "public_key": public, "client_email": email, "token_uri": token_uri}),
    );
    // GKE Workload Identity (and GCE): the metadata server's token.
    let metadata = [("GCE_METADATA_HOST", format!("127.0.0.1:{}", google.port))];
    let out = push(&sb, &host, &format!("{host}/proj/app:metadata"), &metadata);
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg
        .digest_as("proj/app", "metadata", "oauth2accesstoken", token)
        .is_some());
    assert!(!stderr(&out).contains(token));

    // A service-account key: the RS256 assertion the stand-in checks with the public key.
    let key_file = |name: &str, pem: &str| {
        let key = serde_json::json!({"type": "service_account", "client_email": email, "private_key": pem, "private_key_id": "k1", "token_uri": token_uri});
        sb.write(name, &key.to_string())
    };
    let key = key_file("sa.json", &good);
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", key.display().to_string())];
    let out = push(&sb, &host, &format!("{host}/proj/app:key"), &env);
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg
        .digest_as("proj/app", "key", "oauth2accesstoken", token)
        .is_some());

    // A key Google does not know: one line naming the account and what to check.
    let wrong = key_file("wrong.json", &other);
    let env = [(
        "GOOGLE_APPLICATION_CREDENTIALS",
        wrong.display().to_string(),
    )];
    let out = push(&sb, &host, &format!("{host}/proj/app:refused"), &env);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = solve_error(&out);
    let want = format!("Google refused a token to service account {email} (key {}) for {host}: check the key is not deleted or disabled", wrong.display());
    assert!(line.starts_with(&want), "{line}\n{}", show(&out));
    assert!(
        line.ends_with("HTTP 400: invalid_grant: Invalid JWT Signature."),
        "{line}"
    );
    drop(google);
    drop(reg);
    sb.assert_clean();
}

#[test]
fn acr_push_with_azure_workload_identity_and_a_refused_federated_token_is_named() {
    let sb = Sandbox::new(Mode::Privileged);
    let refresh = "acr-refresh-token-9e2b";
    let reg = Registry::start_htpasswd(&sb, "00000000-0000-0000-0000-000000000000", refresh);
    let (tenant, client) = (
        "72f988bf-0000-4000-8000-000000000001",
        "0d1e2f3a-0000-4000-8000-000000000002",
    );
    let federated =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2k6YnVpbGRlciJ9.c2ln";
    let port = common::tls::free_port();
    let host = format!("bkrunreg.azurecr.io:{port}");
    let azure = standin_on(
        port,
        "azure",
        serde_json::json!({"tenant": tenant, "client_id": client, "federated": federated, "aad_token": "aad-access-token-3c4d", "refresh": refresh, "service": "bkrunreg.azurecr.io", "registry_port": reg.port}),
    );
    let token = sb.write("azure-identity-token", federated);
    let env = |file: &Path| {
        vec![
            ("AZURE_CLIENT_ID", client.to_string()),
            ("AZURE_TENANT_ID", tenant.to_string()),
            ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
            ("AZURE_AUTHORITY_HOST", format!("{}/", azure.url())),
        ]
    };
    let out = push(&sb, &host, &format!("{host}/app:wi"), &env(&token));
    assert!(out.status.success(), "{}", show(&out));
    assert!(reg
        .digest_as("app", "wi", "00000000-0000-0000-0000-000000000000", refresh)
        .is_some());
    assert!(!stderr(&out).contains(refresh));

    // A service account whose token Entra ID has no federated credential for.
    let stranger = sb.write("stranger-token", "eyJhbGciOiJSUzI1NiJ9.c3RyYW5nZXI.c2ln");
    let out = push(&sb, &host, &format!("{host}/app:refused"), &env(&stranger));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = solve_error(&out);
    let want = format!("Entra ID refused a token to workload identity client {client} (tenant {tenant}): check the identity has a federated credential for this service account");
    assert!(line.starts_with(&want), "{line}\n{}", show(&out));
    assert!(line.contains("AADSTS700213"), "{line}");
    drop(azure);
    drop(reg);
    sb.assert_clean();
}
