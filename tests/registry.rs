//! End-to-end tests of registry work against a real buildkitd and a docker-registry on 127.0.0.1: push, building FROM what was pushed, --metadata-file, credentials and registry tokens.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::registry::Registry;
use common::*;

#[test]
fn push_then_build_from_the_pushed_image_with_metadata() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let reg = Registry::start(&sb);
        let cfg = reg.http_config(&sb);
        let image = format!("{}/bkrun/hello:1", reg.host());
        let ctx = sb.hello_context();
        let md = sb.path("metadata.json");
        run_ok(sb.build_from(with_config(sb.bkrun(), &cfg), &ctx).args([
            format!("--output=type=image,name={image},push=true"),
            format!("--metadata-file={}", md.display()),
        ]));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&md).unwrap()).unwrap();
        assert_eq!(meta["image.name"], image.as_str());
        assert_eq!(
            meta["containerimage.digest"],
            reg.digest("bkrun/hello", "1").as_str(),
            "{meta}"
        );
        assert_eq!(
            meta["containerimage.descriptor"]["digest"],
            meta["containerimage.digest"]
        );

        // A second build, on a fresh daemon, FROM the pushed image.
        let ctx2 = sb.context(
            "second",
            &format!("FROM {image}\nRUN cat /hello.txt > /again.txt\n"),
        );
        let out = sb.path("out");
        run_ok(
            sb.build_from(with_config(sb.bkrun_root("state2"), &cfg), &ctx2)
                .arg(local_output(&out)),
        );
        assert!(std::fs::read_to_string(out.join("again.txt"))
            .unwrap()
            .starts_with("hello from bkrun"));
        drop(reg);
        sb.assert_clean();
    }
}

#[test]
fn registry_cache_round_trip_between_fresh_daemons() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let reg = Registry::start(&sb);
        let cfg = reg.http_config(&sb);
        let cache = format!("{}/bkrun/cache:1", reg.host());
        let ctx = sb.shell_context("ctx", "RUN echo expensive > /step.txt\n");
        let build = |state: &str| sb.build_from(with_config(sb.bkrun_root(state), &cfg), &ctx);
        let t = std::time::Instant::now();
        run_ok(build("state-a").arg(format!("--export-cache=type=registry,ref={cache},mode=max")));
        let cold = t.elapsed();
        let t = std::time::Instant::now();
        let out = run_ok(build("state-b").arg(format!("--import-cache=type=registry,ref={cache}")));
        let warm = t.elapsed();
        let err = stderr(&out);
        for step in ["RUN [\"/bin/busybox\", \"--install\"", "RUN echo expensive"] {
            let block = err
                .split("\n\n")
                .find(|b| b.contains(step))
                .unwrap_or_else(|| panic!("no {step} in\n{err}"));
            assert!(
                block.contains("CACHED"),
                "{mode:?}: {step} was not taken from the cache:\n{err}"
            );
        }
        eprintln!("{mode:?}: registry cache export {cold:?}, import {warm:?}");
        drop(reg);
        sb.assert_clean();
    }
}

#[test]
fn push_options_choose_media_types_and_compression_under_several_names() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let reg = Registry::start(&sb);
        let cfg = reg.http_config(&sb);
        let repo = format!("{}/bkrun/opts", reg.host());
        let ctx = sb.hello_context();
        let push = |output: String| {
            run_ok(
                sb.build_from(with_config(sb.bkrun(), &cfg), &ctx)
                    .arg(format!("--output={output}")),
            )
        };
        // OCI media types, zstd layers, two names in one output (quoted, as buildctl's CSV wants).
        push(format!(
            "type=image,\"name={repo}:zstd,{repo}:zstd-too\",push=true,oci-mediatypes=true,compression=zstd,force-compression=true"
        ));
        let m = reg.manifest("bkrun/opts", "zstd");
        assert_eq!(
            m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{mode:?}: {m}"
        );
        let layers = m["layers"].as_array().unwrap();
        assert!(!layers.is_empty());
        for l in layers {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
                "{mode:?}: {m}"
            );
        }
        assert_eq!(
            reg.digest("bkrun/opts", "zstd"),
            reg.digest("bkrun/opts", "zstd-too")
        );
        // Docker media types with gzip; force-compression, or the zstd blobs of the first push are reused.
        push(format!(
            "type=image,name={repo}:docker,push=true,oci-mediatypes=false,compression=gzip,force-compression=true"
        ));
        let m = reg.manifest("bkrun/opts", "docker");
        assert_eq!(
            m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
            "{mode:?}: {m}"
        );
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"],
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            );
        }
        drop(reg);
        sb.assert_clean();
    }
}

#[test]
fn registry_insecure_pushes_to_a_registry_with_an_untrusted_certificate() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let certs = sb.mkdir("certs");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .current_dir(&certs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        sb.own(&certs);
        let reg = Registry::start_with(
            &sb,
            &format!(
                "  tls:\n    certificate: {c}/cert.pem\n    key: {c}/key.pem\n",
                c = certs.display()
            ),
        );
        let host = reg.host();
        // TLS on 127.0.0.1 (BuildKit would assume plain HTTP there), and no CA configured.
        let cfg = sb.write(
            "bkrun.toml",
            &format!("[buildkitd.registry.\"{host}\"]\nhttp = false\n"),
        );
        let ctx = sb.hello_context();
        let push = |extra: &str| {
            sb.build_from(with_config(sb.bkrun(), &cfg), &ctx)
                .arg(format!(
                    "--output=type=image,name={host}/bkrun/insecure:1,push=true{extra}"
                ))
                .output()
                .unwrap()
        };
        let refused = push("");
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{mode:?}: {}",
            show(&refused)
        );
        assert!(
            stderr(&refused).contains(&format!(
                "does not trust {host}'s TLS certificate: give its CA in bkrun.toml"
            )),
            "{mode:?}: {}",
            show(&refused)
        );
        let out = push(",registry.insecure=true");
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        drop(reg);
        sb.assert_clean();
    }
}

#[test]
fn pushing_to_a_registry_with_credentials_from_the_docker_config() {
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let (reg, certs) = Registry::start_auth(&sb);
        let host = reg.host();
        // The daemon trusts the registry's CA through bkrun.toml; http = false because BuildKit
        // assumes plain HTTP for registries on 127.0.0.1 otherwise.
        let cfg = sb.write(
            "bkrun.toml",
            &format!(
                "[buildkitd.registry.\"{host}\"]\nhttp = false\nca = [\"{}/ca.pem\"]\n",
                certs.display()
            ),
        );
        let ctx = sb.hello_context();
        let push = |docker_config: &std::path::Path, tag: &str| {
            let mut c = sb.build_from(with_config(sb.bkrun(), &cfg), &ctx);
            let path = format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                sb.path("helpers").display()
            );
            c.env("DOCKER_CONFIG", docker_config).env("PATH", path);
            c.arg(format!(
                "--output=type=image,name={host}/bkrun/private:{tag},push=true"
            ));
            c.output().unwrap()
        };

        // No credentials: refused, with the registry named and the way to log in.
        let out = push(&sb.mkdir("docker-empty"), "anon");
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("docker login {host}")), "{err}");

        // An auths entry, as `docker login` writes it.
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode("builder:s3cr3t-pw");
        sb.write(
            "docker-auths/config.json",
            &format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        );
        let out = push(&sb.path("docker-auths"), "auths");
        assert!(out.status.success(), "{}", show(&out));

        // A credential helper on PATH, named by credHelpers.
        sb.write(
            "docker-helper/config.json",
            &format!(r#"{{"credHelpers":{{"{host}":"bkrtest"}}}}"#),
        );
        let helper = sb.write(
            "helpers/docker-credential-bkrtest",
            "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"builder\",\"Secret\":\"s3cr3t-pw\"}' \"$server\"\n",
        );
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = push(&sb.path("docker-helper"), "helper");
        assert!(out.status.success(), "{}", show(&out));
        drop(reg);
        sb.assert_clean();
    }
}

/// One request the token server answered.
#[derive(Debug, Clone)]
struct TokenCall {
    method: String,
    user_agent: String,
    grant: String,
    /// Whom a token was issued to; None when the request was refused.
    issued_to: Option<String>,
}

/// A registry token server on 127.0.0.1 (plain HTTP), the kind distribution's `auth: token` sends
/// clients to: it checks credentials (basic auth on GET; a password or refresh-token grant on
/// POST), issues RS256 JWTs signed (by the openssl CLI) with a key whose certificate chains to the
/// registry's rootcertbundle, and records who asked. It stops when dropped.
struct TokenServer {
    port: u16,
    calls: Arc<Mutex<Vec<TokenCall>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TOKEN_SERVICE: &str = "bkrun-registry";
const TOKEN_ISSUER: &str = "bkrun-test-issuer";
const REFRESH_TOKEN: &str = "bkrun-refresh-token-value";

impl TokenServer {
    fn start(certs: &Path) -> TokenServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let x5c = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(certs.join("signer.der")).unwrap())
        };
        let key = certs.join("signer-key.pem");
        let (c, s) = (calls.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(call) = serve_token(conn, &x5c, &key) {
                            c.lock().unwrap().push(call);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            port,
            calls,
            stop,
            thread: Some(thread),
        }
    }

    fn calls(&self) -> Vec<TokenCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one HTTP/1.1 request on `conn` (then closes it). A connection closed before it sent a
/// request (a fetch cut short when its build failed) is no call.
fn serve_token(mut conn: TcpStream, x5c: &str, key: &Path) -> Option<TokenCall> {
    use base64::Engine as _;
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().filter(|m| !m.is_empty())?.to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let user_agent = header("user-agent").unwrap_or_default();
    let mut body = vec![0u8; header("content-length").map_or(0, |v| v.parse().unwrap_or(0))];
    conn.read_exact(&mut body).ok()?;
    let params: Vec<(String, String)> = if method == "POST" {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();

    // Who is asking: basic auth on GET; the grant's fields on POST.
    let (grant, user) = if method == "POST" {
        match param("grant_type").as_deref() {
            Some("password") => (
                "password".to_string(),
                (param("username").as_deref() == Some("builder")
                    && param("password").as_deref() == Some("s3cr3t-pw"))
                .then(|| "builder".to_string()),
            ),
            Some("refresh_token") => (
                "refresh_token".to_string(),
                (param("refresh_token").as_deref() == Some(REFRESH_TOKEN))
                    .then(|| "builder".to_string()),
            ),
            other => (format!("{other:?}"), None),
        }
    } else {
        let basic = header("authorization")
            .and_then(|v| v.strip_prefix("Basic ").map(str::to_string))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        match basic {
            Some(b) => (
                "basic".to_string(),
                (b == b"builder:s3cr3t-pw").then(|| "builder".to_string()),
            ),
            None => ("anonymous".to_string(), None),
        }
    };
    let ok = user.is_some() && param("service").as_deref() == Some(TOKEN_SERVICE);
    let (status, answer) = if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let signing_input = format!(
            "{}.{}",
            b64(serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]})),
            b64(serde_json::json!({
                "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
                "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", scopes.len()),
                "access": access,
            }))
        );
        let mut sign = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn_ok();
        sign.stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let sig = sign.wait_with_output().unwrap();
        assert!(sig.status.success());
        let jwt = format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.stdout)
        );
        let issued_at = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        let issued_at = String::from_utf8_lossy(&issued_at.stdout)
            .trim()
            .to_string();
        let field = if method == "POST" {
            "access_token"
        } else {
            "token"
        };
        (
            "200 OK",
            serde_json::json!({field: jwt, "expires_in": 600, "issued_at": issued_at}).to_string(),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"authentication required"}"#.to_string(),
        )
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    Some(TokenCall {
        method,
        user_agent,
        grant,
        issued_to: user.filter(|_| ok),
    })
}

/// A plain-HTTP registry with `auth: token` whose tokens come from a TokenServer.
fn token_registry(sb: &Sandbox) -> (Registry, TokenServer) {
    let certs = sb.mkdir("token-certs");
    sh_in(
        &certs,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=bkrun-token-ca 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -keyout signer-key.pem -out signer.csr -subj /CN=bkrun-token-signer 2>/dev/null
         openssl x509 -req -in signer.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out signer.pem -days 2 2>/dev/null
         openssl x509 -in signer.pem -outform DER -out signer.der",
    );
    let tokens = TokenServer::start(&certs);
    let extra = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}/ca.pem\n",
        tokens.port,
        certs.display()
    );
    (Registry::start_with(sb, &extra), tokens)
}

#[test]
fn registry_tokens_are_fetched_by_bkrun_with_the_credentials_it_keeps() {
    use base64::Engine as _;
    for mode in [Mode::Privileged, Mode::Rootless] {
        let sb = Sandbox::new(mode);
        let (reg, tokens) = token_registry(&sb);
        let host = reg.host();
        let cfg = reg.http_config(&sb);
        let ctx = sb.hello_context();
        let push = |docker_config: &Path, tag: &str, env: &[(&str, &str)]| {
            let mut c = sb.build_from(with_config(sb.bkrun(), &cfg), &ctx);
            c.env("DOCKER_CONFIG", docker_config)
                .envs(env.iter().copied())
                .arg(format!(
                    "--output=type=image,name={host}/bkrun/private:{tag},push=true"
                ));
            c.output().unwrap()
        };
        let new_calls = |seen: &mut usize| {
            let all = tokens.calls();
            let fresh = all[*seen..].to_vec();
            *seen = all.len();
            fresh
        };
        let mut seen = 0;

        // No credentials: bkrun asks anonymously, is refused, and says which registry wants a login.
        let out = push(&sb.mkdir("docker-empty"), "anon", &[]);
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("docker login {host}")), "{err}");
        assert!(
            err.contains(&format!(
                "cannot get a registry token for {host} from http://127.0.0.1:{}/token: HTTP 401 Unauthorized",
                tokens.port
            )),
            "{err}"
        );
        let calls = new_calls(&mut seen);
        assert!(!calls.is_empty(), "{mode:?}: no token request");
        for c in &calls {
            assert!(c.user_agent.starts_with("bkrun/"), "{calls:?}\n{err}");
            assert_eq!((c.method.as_str(), c.grant.as_str()), ("GET", "anonymous"));
            assert!(c.issued_to.is_none());
        }

        // An auths entry: bkrun fetches the token (OAuth POST with the password); no token request
        // comes from the daemon.
        let auth = base64::engine::general_purpose::STANDARD.encode("builder:s3cr3t-pw");
        sb.write(
            "docker-auths/config.json",
            &format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        );
        let out = push(&sb.path("docker-auths"), "auths", &[]);
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        let calls = new_calls(&mut seen);
        assert!(
            calls.iter().any(|c| c.issued_to.is_some()),
            "{mode:?}: {calls:?}"
        );
        for c in &calls {
            assert!(c.user_agent.starts_with("bkrun/"), "{c:?}");
            assert_eq!((c.method.as_str(), c.grant.as_str()), ("POST", "password"));
        }

        // An identity token: a refresh-token grant, also from bkrun.
        sb.write(
            "docker-identity/config.json",
            &format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{REFRESH_TOKEN}"}}}}}}"#),
        );
        let out = push(&sb.path("docker-identity"), "identity", &[]);
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        let calls = new_calls(&mut seen);
        assert!(!calls.is_empty());
        for c in &calls {
            assert!(c.user_agent.starts_with("bkrun/"), "{c:?}");
            assert_eq!(
                (c.method.as_str(), c.grant.as_str()),
                ("POST", "refresh_token")
            );
            assert!(c.issued_to.is_some(), "{c:?}");
        }

        // BUILDKIT_NO_CLIENT_TOKEN=1, buildctl's opt-out: the daemon takes the credentials and
        // fetches tokens itself, which also shows the user-agent checks above can tell them apart.
        let out = push(
            &sb.path("docker-auths"),
            "daemon",
            &[("BUILDKIT_NO_CLIENT_TOKEN", "1")],
        );
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        let calls = new_calls(&mut seen);
        assert!(
            calls.iter().any(|c| c.issued_to.is_some()),
            "{mode:?}: {calls:?}"
        );
        for c in &calls {
            assert!(!c.user_agent.starts_with("bkrun/"), "{c:?}");
        }
        drop(reg);
        drop(tokens);
        sb.assert_clean();
    }
}

/// `len` bytes no compressor shrinks (xorshift), different per `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An artifact of two ~1 MiB layers written into the sandbox.
fn two_layer_artifact(sb: &Sandbox) -> (bkrun::registry::Artifact, Vec<Vec<u8>>) {
    use bkrun::registry::{Artifact, Layer};
    let datas = vec![noise(1 << 20, 1), noise((1 << 20) + 4321, 2)];
    let mut layers = Vec::new();
    for (i, d) in datas.iter().enumerate() {
        let p = sb.path(&format!("layer-{i}"));
        std::fs::write(&p, d).unwrap();
        let mut l = Layer::from_file(&p, "application/vnd.oci.image.layer.v1.tar+zstd").unwrap();
        l.annotations.insert(
            "org.opencontainers.image.title".into(),
            format!("mount-{i}"),
        );
        layers.push(l);
    }
    let artifact = Artifact {
        artifact_type: "application/vnd.bkrun.cache-mounts.v1".into(),
        annotations: [("org.example.branch".to_string(), "main".to_string())].into(),
        layers,
    };
    (artifact, datas)
}

/// bkrun's own registry settings: this Docker config, and `tls` for the one registry.
fn client_for(
    docker_config: &Path,
    host: &str,
    tls: bkrun::request::registry::RegistryTls,
) -> bkrun::registry::Client {
    let auth = bkrun::request::registry::RegistryAuth {
        docker_config: Some(docker_config.join("config.json")),
        client_tokens: true,
        tls: [(host.to_string(), tls)].into(),
    };
    bkrun::registry::Client::new(&auth).unwrap()
}

#[test]
fn registry_client_pushes_and_pulls_an_artifact_with_an_htpasswd_login() {
    let sb = Sandbox::new(Mode::Privileged);
    let (reg, certs) = Registry::start_auth(&sb);
    let host = reg.host();
    // http = false: bkrun, like the daemon, assumes plain http for 127.0.0.1 otherwise.
    let tls = bkrun::request::registry::RegistryTls {
        ca: vec![certs.join("ca.pem")],
        insecure: false,
        http: Some(false),
    };
    let good = common::registry::docker_login(&sb, "docker-good", &host, "builder:s3cr3t-pw");
    let (artifact, datas) = two_layer_artifact(&sb);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reference = format!("{host}/bkrun/mounts:main");

    let client = client_for(&good, &host, tls.clone());
    let t = std::time::Instant::now();
    let pushed = rt
        .block_on(client.push_artifact(&reference, &artifact))
        .unwrap();
    eprintln!("first push (2 MiB) took {:?}", t.elapsed());
    assert_eq!(pushed.uploaded.len(), 3, "{pushed:?}");
    assert!(pushed.digest.starts_with("sha256:"));

    // Pulled back by tag and by digest: the same manifest, each layer byte for byte.
    let (m, digest) = rt
        .block_on(client.pull_manifest(&reference))
        .unwrap()
        .expect("the pushed tag is there");
    assert_eq!(digest, pushed.digest);
    assert_eq!(m, artifact.manifest());
    let by_digest = format!("{host}/bkrun/mounts@{digest}");
    let (again, _) = rt
        .block_on(client.pull_manifest(&by_digest))
        .unwrap()
        .unwrap();
    assert_eq!(again, m);
    for (i, (layer, data)) in m.layers.iter().zip(&datas).enumerate() {
        let dest = sb.path(&format!("pulled-{i}"));
        let f = std::fs::File::create(&dest).unwrap();
        rt.block_on(client.fetch_blob(&reference, layer, &f))
            .unwrap();
        assert!(std::fs::read(&dest).unwrap() == *data, "layer {i} differs");
    }

    // A blob that is not what the descriptor says: an error naming both.
    let mut wrong = m.layers[0].clone();
    wrong.size += 1;
    let f = std::fs::File::create(sb.path("wrong")).unwrap();
    let e = rt
        .block_on(client.fetch_blob(&reference, &wrong, &f))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "expected {} ({} bytes), got",
            wrong.digest, wrong.size
        )) && e.contains(&format!("({} bytes)", wrong.size - 1)),
        "{e}"
    );

    // A second push, from a fresh client to another tag: every blob is there already.
    let fresh = client_for(&good, &host, tls.clone());
    let t = std::time::Instant::now();
    let second = rt
        .block_on(fresh.push_artifact(&format!("{host}/bkrun/mounts:other"), &artifact))
        .unwrap();
    eprintln!("second push (nothing to upload) took {:?}", t.elapsed());
    assert!(second.uploaded.is_empty(), "{second:?}");
    assert_eq!(second.digest, pushed.digest);

    // Missing tags and repositories are None, not errors.
    for missing in ["bkrun/mounts:nope", "bkrun/never:main"] {
        let r = rt
            .block_on(client.pull_manifest(&format!("{host}/{missing}")))
            .unwrap();
        assert!(r.is_none(), "{missing}");
    }

    // A wrong password: one line saying who refused what, and where the login comes from.
    let bad = common::registry::docker_login(&sb, "docker-bad", &host, "builder:wrong-pw-123");
    let e = rt
        .block_on(client_for(&bad, &host, tls.clone()).push_artifact(&reference, &artifact))
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.starts_with(&format!(
            "registry {host} refused bkrun's login for push to {reference} (401): check the credentials for {host} in the Docker config ({}/config.json)",
            bad.display()
        )),
        "{e}"
    );
    assert!(!e.contains("wrong-pw-123") && !e.contains('\n'), "{e}");

    // No login at all.
    let none = sb.mkdir("docker-none");
    let e = rt
        .block_on(client_for(&none, &host, tls).pull_manifest(&reference))
        .unwrap_err();
    assert!(
        format!("{e:#}").starts_with(&format!(
            "registry {host} wants a login for pull of {reference} (401): run `docker login {host}`"
        )),
        "{e:#}"
    );
    drop(rt);
    drop(reg);
    sb.assert_clean();
}

#[test]
fn registry_client_fetches_one_token_per_repository_and_keeps_it() {
    let sb = Sandbox::new(Mode::Privileged);
    let (reg, tokens) = token_registry(&sb);
    let host = reg.host();
    let good = common::registry::docker_login(&sb, "docker-good", &host, "builder:s3cr3t-pw");
    let (artifact, datas) = two_layer_artifact(&sb);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reference = format!("{host}/bkrun/mounts:main");
    let client = client_for(&good, &host, Default::default());
    let pushed = rt
        .block_on(client.push_artifact(&reference, &artifact))
        .unwrap();
    let (m, digest) = rt
        .block_on(client.pull_manifest(&reference))
        .unwrap()
        .unwrap();
    assert_eq!(digest, pushed.digest);
    let f = std::fs::File::create(sb.path("pulled")).unwrap();
    rt.block_on(client.fetch_blob(&reference, &m.layers[1], &f))
        .unwrap();
    assert!(std::fs::read(sb.path("pulled")).unwrap() == datas[1]);
    // One token (push and pull) served the push's dozen requests and the pulls after it.
    let calls = tokens.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].method.as_str(), calls[0].grant.as_str()),
        ("POST", "password")
    );
    assert!(calls[0].user_agent.starts_with("bkrun/"), "{calls:?}");
    assert!(calls[0].issued_to.is_some());

    // Anonymous: the token server refuses, and the error says to log in.
    let none = sb.mkdir("docker-none");
    let e = rt
        .block_on(client_for(&none, &host, Default::default()).pull_manifest(&reference))
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.starts_with(&format!(
            "registry {host} wants a login for pull of {reference}: run `docker login {host}`"
        )),
        "{e}"
    );
    assert!(!e.contains("BUILDKIT_NO_CLIENT_TOKEN"), "{e}");
    drop(rt);
    drop(reg);
    drop(tokens);
    sb.assert_clean();
}
