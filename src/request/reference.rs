//! Image references checked as the daemon will parse them (distribution/reference's grammar), so a bad `ref=` fails before a daemon starts instead of after the build.

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
}
