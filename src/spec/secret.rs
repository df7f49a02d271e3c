//! `--secret` values → secrets read up front: a missing file or variable fails before a daemon starts, and the values are known for masking.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::csv;

/// BuildKit's limit on one secret.
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// One secret, already read.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret's value, even in debug output.
        write!(
            f,
            "Secret {{ id: {:?}, {} bytes }}",
            self.id,
            self.data.len()
        )
    }
}

enum Source {
    File(PathBuf),
    Env(String),
}

/// Parses one `--secret` value (buildctl's grammar: id=, src=/source=, env=, type=file|env) and
/// reads the secret. `env` looks variables up (injected so tests need no process environment).
pub fn parse(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret> {
    let mut id = None;
    let mut src = None;
    let mut var = None;
    let mut typ = None;
    for (k, v) in csv::pairs(value).with_context(|| {
        format!("--secret {value:?} is malformed: write it as id=ID,src=FILE or id=ID,env=VAR")
    })? {
        match k.as_str() {
            "type" if v == "file" || v == "env" => typ = Some(v),
            "type" => bail!("--secret type={v} is not a secret type: use type=file or type=env"),
            "id" => id = Some(v),
            "src" | "source" => src = Some(v),
            "env" => var = Some(v),
            other => {
                bail!("--secret {value:?} has an unknown key {other:?}: use id, src, env or type")
            }
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        bail!("--secret {value:?} has no id: add id=NAME (the name RUN --mount=type=secret,id=NAME uses)");
    };
    // type=env,src=VAR means the variable VAR; with neither src nor env, ID names a variable if
    // one is set, else a file.
    if typ.as_deref() == Some("env") && var.is_none() {
        var = src.take();
    }
    let source = match (src, var) {
        (Some(_), Some(_)) => bail!("--secret {value:?} gives both src and env: keep one"),
        (Some(f), None) => Source::File(PathBuf::from(f)),
        (None, Some(v)) => Source::Env(v),
        (None, None) if env(&id).is_some() => Source::Env(id.clone()),
        (None, None) => Source::File(PathBuf::from(&id)),
    };
    let data = match source {
        Source::File(path) => {
            let meta = std::fs::metadata(&path).with_context(|| {
                format!(
                    "--secret id={id}: cannot read {}: create the file or fix src=",
                    path.display()
                )
            })?;
            if meta.len() > MAX_SECRET_SIZE {
                bail!("--secret id={id}: {} is {} bytes, over BuildKit's {MAX_SECRET_SIZE}-byte limit for a secret", path.display(), meta.len());
            }
            std::fs::read(&path)
                .with_context(|| format!("--secret id={id}: cannot read {}", path.display()))?
        }
        Source::Env(v) => match env(&v) {
            Some(val) => val.into_bytes(),
            None => bail!("--secret id={id}: the variable {v} is not set: export it, or fix env="),
        },
    };
    Ok(Secret { id, data })
}

/// The strings to hide in output for these secrets: each value, and each value without its
/// trailing newline (files usually end with one, and a RUN step rarely prints it).
pub fn mask_values(secrets: &[Secret]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in secrets {
        let trimmed = s.data.trim_ascii_end().to_vec();
        for v in [s.data.clone(), trimmed] {
            if !v.is_empty() && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn file_and_env_secrets() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        let s = parse(&format!("id=tok,src={}", f.display()), &no_env).unwrap();
        assert_eq!(
            (s.id.as_str(), s.data.as_slice()),
            ("tok", &b"s3cret\n"[..])
        );
        let env = |k: &str| (k == "API_KEY").then(|| "k3y".to_string());
        assert_eq!(parse("id=api,env=API_KEY", &env).unwrap().data, b"k3y");
        assert_eq!(
            parse("type=env,id=api,src=API_KEY", &env).unwrap().data,
            b"k3y"
        );
        assert_eq!(parse("id=API_KEY", &env).unwrap().data, b"k3y");
        assert_eq!(format!("{s:?}"), "Secret { id: \"tok\", 7 bytes }");
    }

    #[test]
    fn problems_are_named_before_the_build() {
        let e = parse("id=tok,src=/no/such/file", &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read /no/such/file"), "{e}");
        assert!(parse("src=x", &no_env)
            .unwrap_err()
            .to_string()
            .contains("has no id"));
        assert!(parse("id=x,env=NOPE", &no_env)
            .unwrap_err()
            .to_string()
            .contains("NOPE is not set"));
        assert!(parse("id=x,type=ssh", &no_env)
            .unwrap_err()
            .to_string()
            .contains("type=file or type=env"));
        assert!(parse("id=x,color=red", &no_env)
            .unwrap_err()
            .to_string()
            .contains("\"color\""));
    }

    #[test]
    fn masks_cover_the_value_with_and_without_its_newline() {
        let s = Secret {
            id: "a".into(),
            data: b"pw\n".to_vec(),
        };
        assert_eq!(mask_values(&[s]), vec![b"pw\n".to_vec(), b"pw".to_vec()]);
    }
}
