//! Image references checked and split as the daemon will parse them (distribution/reference's grammar), so a bad `ref=` fails before a daemon starts instead of after the build, and bkrun's own registry client names the repository the daemon would.

use std::sync::LazyLock;

use regex::Regex;

/// `[host[:port]/]path[:tag][@digest]`, from distribution/reference's published grammar: lower-case
/// path components joined by `.`, `_`, `__` or dashes; a tag of at most 128 word characters; a
/// digest `algorithm:hex` of 32 hex digits or more. The tag's class is spelled out because Go's
/// `\w` is ASCII only and Rust's is Unicode.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
    let name = format!(r"(?:{host}(?::[0-9]+)?/)?{component}(?:/{component})*");
    let tag = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!("^({name})(?::{tag})?(?:@{digest})?$"))
        .expect("the reference grammar is a valid regex")
});

/// Longest repository name the registry API takes.
const NAME_MAX: usize = 255;

/// Why `r` is not an image reference, in distribution/reference's words, or `None` if it is one.
pub fn problem(r: &str) -> Option<&'static str> {
    if r.is_empty() {
        return Some("repository name must have at least one component");
    }
    match REFERENCE.captures(r) {
        Some(c) if c[1].len() > NAME_MAX => {
            Some("repository name must not be more than 255 characters")
        }
        Some(_) => None,
        None if REFERENCE.is_match(&r.to_lowercase()) => Some("repository name must be lowercase"),
        None => Some("invalid reference format"),
    }
}

/// Docker Hub as image names spell it, and the host its registry API answers on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference split as distribution/reference's `ParseNormalizedNamed` splits it: a first path
/// component without `.` or `:` (other than `localhost`) is a Docker Hub repository, and a
/// one-component Hub name lives under `library/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as names and bkrun.toml spell it (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// The repository inside it (`library/alpine`, `team/app`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Splits `r`, or says why it is not an image reference.
    pub fn parse(r: &str) -> Result<Reference, &'static str> {
        if let Some(why) = problem(r) {
            return Err(why);
        }
        let (rest, digest) = match r.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (r, None),
        };
        // A tag follows the last `:` after the last `/`; an earlier `:` is a port.
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(rest[last + i + 1..].to_string())),
            None => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, path.to_string())
            }
            _ => (DOCKER_HUB, name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB
        } else {
            domain
        };
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(Reference {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// The host bkrun sends registry API requests to (Docker Hub's API has a host of its own).
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.domain
        }
    }

    /// What the manifest is asked for by: the digest when there is one, else the tag, else
    /// `latest`, as docker and the daemon default it.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_distribution_reads_them() {
        for ok in [
            "alpine",
            "r/c:1",
            "127.0.0.1:5000/cache:buildcache",
            "localhost:5000/a/b_c__d-e.f:v1.2-x",
            "[::1]:5000/x",
            "docker.io/library/busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "Registry.Example.com/app:Latest",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        assert_eq!(
            problem("foo/Bar"),
            Some("repository name must be lowercase")
        );
        assert_eq!(
            problem(""),
            Some("repository name must have at least one component")
        );
        for bad in [
            "a b",
            "r/c:",
            "r//c",
            "r/c:-x",
            "-r",
            "r/cé",
            "r/c@sha256:12",
            ":tag",
        ] {
            assert_eq!(problem(bad), Some("invalid reference format"), "{bad}");
        }
        assert!(problem(&format!("r/{}", "a".repeat(300))).is_some());
        assert!(problem(&format!("r:{}", "t".repeat(129))).is_some());
    }

    #[test]
    fn references_split_and_normalised_as_docker_names_them() {
        let split = |r: &str| {
            let p = Reference::parse(r).unwrap();
            (
                p.domain.clone(),
                p.path.clone(),
                p.tag.clone(),
                p.digest.clone(),
                p.api_host().to_string(),
                p.object().to_string(),
            )
        };
        let s = |x: &str| x.to_string();
        assert_eq!(
            split("alpine"),
            (
                s("docker.io"),
                s("library/alpine"),
                None,
                None,
                s("registry-1.docker.io"),
                s("latest")
            )
        );
        assert_eq!(split("team/app:1").1, "team/app");
        assert_eq!(split("index.docker.io/alpine:3").0, "docker.io");
        assert_eq!(split("index.docker.io/alpine:3").1, "library/alpine");
        assert_eq!(
            split("127.0.0.1:5000/cache/mounts:main"),
            (
                s("127.0.0.1:5000"),
                s("cache/mounts"),
                Some(s("main")),
                None,
                s("127.0.0.1:5000"),
                s("main")
            )
        );
        assert_eq!(split("localhost/x").0, "localhost");
        assert_eq!(split("[::1]:5000/x:t").0, "[::1]:5000");
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let p = split(&format!("reg.example/a/b:t@{d}"));
        assert_eq!(
            (p.0.as_str(), p.1.as_str(), p.2.as_deref()),
            ("reg.example", "a/b", Some("t"))
        );
        assert_eq!((p.3.as_deref(), p.5.as_str()), (Some(d), d));
        assert_eq!(Reference::parse("a b"), Err("invalid reference format"));
    }
}
