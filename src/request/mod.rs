//! The grammars people type (buildctl's flags) → typed specs: [`build::resolve`] is the one step that brings in bkrun.toml, the environment and the Docker config's location, and checks everything before a daemon starts.

pub mod attest;
pub mod build;
pub mod cache;
pub mod cachemounts;
pub mod csv;
pub mod dests;
pub mod docker;
pub mod entitlement;
pub mod flags;
pub mod kaniko;
pub mod output;
pub mod policy;
pub mod progress;
pub mod push;
pub mod reference;
pub mod regcache;
pub mod registry;
pub mod routekey;
pub mod secret;
pub mod ssh;
pub mod summary;

/// How much of a value an error message echoes: a 100 KB `--opt` or `--secret` value pasted
/// into a terminal or a CI log helps no one.
pub const CLIP_CHARS: usize = 200;

/// `value` for an error message, cut after [`CLIP_CHARS`] characters with `… (N bytes)` so the
/// reader still knows how long it was; shown as typed unless it holds control characters (a
/// newline would break the one-line error), which are escaped as Rust's `{:?}` escapes them.
pub fn clip(value: &str) -> String {
    let (head, rest) = cut(value);
    if head.chars().any(char::is_control) {
        format!("{head:?}{rest}")
    } else {
        format!("{head}{rest}")
    }
}

/// [`clip`], always quoted: for a whole flag value, whose spaces and commas matter.
pub fn clip_quoted(value: &str) -> String {
    let (head, rest) = cut(value);
    format!("{head:?}{rest}")
}

fn cut(value: &str) -> (&str, String) {
    match value.char_indices().nth(CLIP_CHARS) {
        None => (value, String::new()),
        Some((end, _)) => (&value[..end], format!("… ({} bytes)", value.len())),
    }
}

/// [`clip`] for a path.
pub fn clip_path(path: &std::path::Path) -> String {
    clip(&path.to_string_lossy())
}

/// Checks that `value` can travel as a gRPC header (metadata) value unencoded: the daemon's
/// grpc-go refuses any byte outside printable ASCII (0x20–0x7E) when it calls back into the
/// session, so a cache directory or an id that BuildKit puts in a header as it is (and does not
/// URL-encode, as it does for `--local` names) must be refused here, naming `flag`.
pub fn header_safe(flag: &str, what: &str, value: &str) -> anyhow::Result<()> {
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
        anyhow::bail!(
            "{flag}: the {what} {} holds {c:?}, which BuildKit cannot carry in the gRPC header it sends it in: use only printable ASCII (e.g. rename the directory or use a symlink with an ASCII name)",
            clip_quoted(value)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut() {
        assert_eq!(clip("a\"b c"), "a\"b c");
        assert_eq!(clip("a\nb"), r#""a\nb""#);
        assert_eq!(clip_quoted("a b"), r#""a b""#);
        let long = "é".repeat(100_000);
        let c = clip(&long);
        assert!(c.ends_with("… (200000 bytes)"), "{c}");
        assert_eq!(c.chars().filter(|&ch| ch == 'é').count(), CLIP_CHARS);
    }

    #[test]
    fn header_values_are_printable_ascii() {
        assert!(header_safe("--x", "dir", "/tmp/cache-1 a~").is_ok());
        let e = header_safe("--export-cache", "directory", "/tmp/café")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--export-cache: the directory \"/tmp/café\" holds 'é'"),
            "{e}"
        );
        assert!(header_safe("--x", "id", "a\tb").is_err());
    }
}

#[cfg(test)]
mod props;
