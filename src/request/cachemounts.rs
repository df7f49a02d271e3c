//! `--cache-mounts DEST` (BKRUN_CACHE_MOUNTS, bkrun.toml's `cache_mounts`) and its size cap,
//! checked before a daemon starts: where RUN cache mounts are kept between runs.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{clip, reference};
use crate::config::BuildDefaults;

/// The cap when none is set: large enough for a Go or cargo build cache, small enough that a
/// runaway cache does not fill a PVC or a registry quota unnoticed.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// Where cache mounts are kept, and the largest one saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMountsSpec {
    pub store: MountStore,
    /// Bytes of file data; a mount over it is not saved (its last save stays).
    pub max_size: u64,
    /// Which setting named the store, for messages.
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountStore {
    /// An OCI image layout directory (a PVC, a CI cache dir, a path in the checkout).
    Dir(PathBuf),
    /// An OCI artifact at this reference, exactly as given.
    Registry(String),
}

impl std::fmt::Display for MountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountStore::Dir(d) => write!(f, "{}", d.display()),
            MountStore::Registry(r) => write!(f, "registry://{r}"),
        }
    }
}

/// The flag, else the environment variable, else bkrun.toml; None when none is set (or set
/// empty, which turns a bkrun.toml setting off for one run).
pub fn resolve(
    flag: Option<&str>,
    max_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    defaults: &BuildDefaults,
) -> Result<Option<CacheMountsSpec>> {
    let (value, source) = if let Some(f) = flag {
        (f.to_string(), "--cache-mounts")
    } else if let Some(e) = env("BKRUN_CACHE_MOUNTS") {
        (e, "BKRUN_CACHE_MOUNTS")
    } else if let Some(t) = &defaults.cache_mounts {
        (t.clone(), "cache_mounts in bkrun.toml")
    } else {
        return Ok(None);
    };
    let max_size = match max_flag
        .map(|m| (m.to_string(), "--cache-mounts-max-size"))
        .or_else(|| env("BKRUN_CACHE_MOUNTS_MAX_SIZE").map(|m| (m, "BKRUN_CACHE_MOUNTS_MAX_SIZE")))
        .or_else(|| {
            defaults
                .cache_mounts_max_size
                .clone()
                .map(|m| (m, "cache_mounts_max_size in bkrun.toml"))
        }) {
        Some((m, from)) => parse_size(&m).ok_or_else(|| {
            anyhow::anyhow!(
                "{from} {} is not a size: give bytes or a number with k, m, g or t (e.g. 512m, 4g)",
                clip(&m)
            )
        })?,
        None => DEFAULT_MAX_SIZE,
    };
    if value.is_empty() {
        return Ok(None);
    }
    let store = match value.strip_prefix("registry://") {
        Some(r) => {
            if let Some(why) = reference::problem(r) {
                bail!(
                    "{source} registry://{}: {why}: give an image reference such as registry.example.com/team/app-cache:main",
                    clip(r)
                );
            }
            MountStore::Registry(r.to_string())
        }
        None if value.contains("://") => bail!(
            "{source} {} is neither a directory nor registry://REF: give a path (e.g. /cache/bkrun) or registry://registry.example.com/team/app-cache:main",
            clip(&value)
        ),
        None => MountStore::Dir(PathBuf::from(value)),
    };
    Ok(Some(CacheMountsSpec {
        store,
        max_size,
        source,
    }))
}

/// `512m`, `4g`, `1.5g`, `100000` (bytes), powers of 1024, case-insensitive, an optional `b`/`ib`.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let v = n * (1u64 << shift) as f64;
    (v < u64::MAX as f64).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vals: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vals.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_bkrun_toml() {
        let toml = BuildDefaults {
            cache_mounts: Some("/from/toml".into()),
            ..Default::default()
        };
        let e = env(&[("BKRUN_CACHE_MOUNTS", "registry://127.0.0.1:5000/c:main")]);
        let s = resolve(Some("/flag"), None, &e, &toml).unwrap().unwrap();
        assert_eq!(s.store, MountStore::Dir("/flag".into()));
        let s = resolve(None, None, &e, &toml).unwrap().unwrap();
        assert_eq!(
            s.store,
            MountStore::Registry("127.0.0.1:5000/c:main".into())
        );
        assert_eq!(s.source, "BKRUN_CACHE_MOUNTS");
        let s = resolve(None, None, &env(&[]), &toml).unwrap().unwrap();
        assert_eq!(s.store, MountStore::Dir("/from/toml".into()));
        assert_eq!(s.max_size, DEFAULT_MAX_SIZE);
        // Set empty: off for this run.
        let off = env(&[("BKRUN_CACHE_MOUNTS", "")]);
        assert!(resolve(None, None, &off, &toml).unwrap().is_none());
    }

    #[test]
    fn sizes_and_refusals() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("100000"), Some(100_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("lots"), None);
        let none = env(&[]);
        let d = BuildDefaults::default();
        let e = resolve(Some("/c"), Some("huge"), &none, &d).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--cache-mounts-max-size huge is not a size"),
            "{e}"
        );
        let e = resolve(Some("s3://bucket/x"), None, &none, &d).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither a directory nor registry://REF"),
            "{e}"
        );
        let e = resolve(Some("registry://r/Bad"), None, &none, &d).unwrap_err();
        assert!(
            e.to_string().starts_with("--cache-mounts registry://r/Bad"),
            "{e}"
        );
    }
}
