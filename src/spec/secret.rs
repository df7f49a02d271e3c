//! `--secret` values → secrets read up front: a missing file or variable fails before a daemon starts, and the values are known for masking.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{clip, clip_path, clip_quoted, csv};

/// BuildKit's limit on one secret (`MaxSecretSize` in session/secrets/secretsprovider: 500 KiB);
/// its client refuses a bigger file, and its daemon a bigger value from any client.
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
    let shown = clip_quoted(value);
    for (k, v) in csv::pairs(value).with_context(|| {
        format!("--secret {shown} is malformed: write it as id=ID,src=FILE or id=ID,env=VAR")
    })? {
        match k.as_str() {
            "type" if v == "file" || v == "env" => typ = Some(v),
            "type" => bail!(
                "--secret type={} is not a secret type: use type=file or type=env",
                clip(&v)
            ),
            "id" => id = Some(v),
            // Two spellings of one key: both given would leave one silently unused.
            "src" | "source" if src.is_some() => {
                bail!("--secret {shown} gives both src= and source=: keep one")
            }
            "src" | "source" => src = Some(v),
            "env" => var = Some(v),
            other => {
                bail!(
                    "--secret {shown} has an unknown key {}: use id, src, env or type",
                    clip_quoted(other)
                )
            }
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        bail!("--secret {shown} has no id: add id=NAME (the name RUN --mount=type=secret,id=NAME uses)");
    };
    // type=env,src=VAR means the variable VAR; with neither src nor env, ID names a variable if
    // one is set, else a file.
    if typ.as_deref() == Some("env") && var.is_none() {
        var = src.take();
    }
    let source = match (src, var) {
        (Some(_), Some(_)) => bail!("--secret {shown} gives both src and env: keep one"),
        (Some(f), None) => Source::File(PathBuf::from(f)),
        (None, Some(v)) => Source::Env(v),
        (None, None) if env(&id).is_some() => Source::Env(id.clone()),
        (None, None) => Source::File(PathBuf::from(&id)),
    };
    let data = match source {
        Source::File(path) => read_limited(&id, &path)?,
        Source::Env(v) => match env(&v) {
            Some(val) if val.len() as u64 > MAX_SECRET_SIZE => bail!(
                "--secret id={}: the variable {} holds {} bytes, over BuildKit's {MAX_SECRET_SIZE}-byte (500 KiB) limit for a secret: pass a smaller value",
                clip(&id),
                clip(&v),
                val.len()
            ),
            Some(val) => val.into_bytes(),
            None => bail!(
                "--secret id={}: the variable {} is not set: export it, or fix env=",
                clip(&id),
                clip(&v)
            ),
        },
    };
    Ok(Secret { id, data })
}

/// Reads a secret file of at most [`MAX_SECRET_SIZE`] bytes. A regular file is judged by its
/// size; anything else (a device such as /dev/zero, a FIFO, a /proc file whose size says 0) is
/// read up to one byte past the limit and refused there, so it can never grow bkrun's memory.
fn read_limited(id: &str, path: &Path) -> Result<Vec<u8>> {
    let too_big = |n: String| {
        anyhow::anyhow!(
            "--secret id={}: {} is {n}, over BuildKit's {MAX_SECRET_SIZE}-byte (500 KiB) limit for a secret: give a smaller file",
            clip(id),
            clip_path(path)
        )
    };
    let cannot_read = || {
        format!(
            "--secret id={}: cannot read {}: create the file or fix src=",
            clip(id),
            clip_path(path)
        )
    };
    let meta = std::fs::metadata(path).with_context(cannot_read)?;
    if meta.is_dir() {
        bail!(
            "--secret id={}: {} is a directory: give a file",
            clip(id),
            clip_path(path)
        );
    }
    if meta.is_file() && meta.len() > MAX_SECRET_SIZE {
        return Err(too_big(format!("{} bytes", meta.len())));
    }
    let file = std::fs::File::open(path).with_context(cannot_read)?;
    let mut data = Vec::new();
    file.take(MAX_SECRET_SIZE + 1)
        .read_to_end(&mut data)
        .with_context(cannot_read)?;
    if data.len() as u64 > MAX_SECRET_SIZE {
        return Err(too_big(format!("more than {MAX_SECRET_SIZE} bytes")));
    }
    Ok(data)
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
    fn secrets_over_buildkits_limit_are_refused_without_reading_them_whole() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big");
        std::fs::write(&f, vec![b'x'; MAX_SECRET_SIZE as usize + 1]).unwrap();
        let e = parse(&format!("id=big,src={}", f.display()), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--secret id=big: ")
                && e.contains("512001 bytes, over BuildKit's 512000-byte"),
            "{e}"
        );
        std::fs::write(&f, vec![b'x'; MAX_SECRET_SIZE as usize]).unwrap();
        assert!(parse(&format!("id=big,src={}", f.display()), &no_env).is_ok());
        // A device reports no size: it is read up to the limit and refused there.
        let started = std::time::Instant::now();
        let e = parse("id=z,src=/dev/zero", &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 512000 bytes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let big = "v".repeat(MAX_SECRET_SIZE as usize + 1);
        let env = |k: &str| (k == "BIG").then(|| big.clone());
        let e = parse("id=b,env=BIG", &env).unwrap_err().to_string();
        assert!(e.contains("variable BIG holds 512001 bytes"), "{e}");
        let e = parse("id=x,src=a,source=b", &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both src= and source="), "{e}");
        let e = parse(&format!("id=x,src={}", d.path().display()), &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
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
