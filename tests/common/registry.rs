//! A docker-registry (Debian's package) on a free loopback port for tests: plain HTTP or with extra YAML (TLS, auth), its digests and manifests, and the bkrun.toml that lets the daemon use it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{sh_in, wait_until, Sandbox};

/// A plain-HTTP docker-registry on a free loopback port, stopped when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Registry {
    pub fn start(sb: &Sandbox) -> Registry {
        Registry::start_with(sb, "")
    }

    /// `extra` is appended to the registry's YAML config (TLS, auth).
    pub fn start_with(sb: &Sandbox, extra: &str) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = sb.mkdir("registry-data");
        let cfg = sb.write(
            "registry.yml",
            &format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                data.display()
            ),
        );
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(cfg)
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

    /// A TLS registry (certificate for IP 127.0.0.1 from a test CA) that wants htpasswd credentials.
    /// The user is `builder`, the password `s3cr3t-pw`; the CA is `ca.pem` in the returned dir.
    pub fn start_auth(sb: &Sandbox) -> (Registry, std::path::PathBuf) {
        let certs = sb.mkdir("certs");
        std::fs::write(
            certs.join("reg.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        sh_in(&certs, "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=bkrun-registry-ca 2>/dev/null
            openssl req -newkey rsa:2048 -nodes -keyout reg-key.pem -out reg.csr -subj /CN=127.0.0.1 2>/dev/null
            openssl x509 -req -in reg.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out reg.pem -days 2 -extfile reg.ext 2>/dev/null
            htpasswd -Bbc htpasswd builder s3cr3t-pw 2>/dev/null");
        sb.own(&certs);
        let extra = format!(
            "  tls:\n    certificate: {c}/reg.pem\n    key: {c}/reg-key.pem\nauth:\n  htpasswd:\n    realm: bkrun-test\n    path: {c}/htpasswd\n",
            c = certs.display()
        );
        (Registry::start_with(sb, &extra), certs)
    }

    /// `host:port`, as image names and bkrun.toml name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The whole HTTP answer to `METHOD /v2/REPO/manifests/TAG`, asking for any manifest type.
    pub fn manifest_request(&self, method: &str, repo: &str, tag: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    }

    /// The digest the registry reports for a manifest (the Docker-Content-Digest header).
    pub fn digest(&self, repo: &str, tag: &str) -> String {
        let resp = self.manifest_request("HEAD", repo, tag);
        resp.lines()
            .find_map(|l| l.strip_prefix("Docker-Content-Digest: "))
            .unwrap_or_else(|| panic!("no digest in {resp}"))
            .trim()
            .to_string()
    }

    /// A bkrun.toml whose [buildkitd] table tells the daemon this registry is plain HTTP.
    pub fn http_config(&self, sb: &Sandbox) -> std::path::PathBuf {
        sb.write(
            "bkrun.toml",
            &format!("[buildkitd.registry.\"{}\"]\nhttp = true\n", self.host()),
        )
    }

    /// A blob's bytes (a layer, a config), by digest.
    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no end of headers");
        let head = String::from_utf8_lossy(&resp[..end]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        resp.split_off(end + 4)
    }

    /// The manifest behind a tag, as JSON.
    pub fn manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let resp = self.manifest_request("GET", repo, tag);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Docker config directory holding `user:password` for `host`, as `docker login` writes it.
pub fn docker_login(
    sb: &Sandbox,
    dir: &str,
    host: &str,
    user_password: &str,
) -> std::path::PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
    sb.write(
        &format!("{dir}/config.json"),
        &format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    );
    sb.path(dir)
}
