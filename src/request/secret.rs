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

/// Shorter values are not masked. A secret of one to three bytes ("a", "1", "yes") occurs by
/// chance all over a build log: masking it would garble unrelated text, and the pattern of
/// `****` left behind would tell a reader the value anyway. Four bytes is the shortest value
/// (a PIN, say) that still rarely occurs by chance.
pub const MIN_MASKED_LEN: usize = 4;

/// A value without its line ending: files usually end with one that a RUN step rarely prints.
fn without_newline(v: &[u8]) -> &[u8] {
    let v = v.strip_suffix(b"\n").unwrap_or(v);
    v.strip_suffix(b"\r").unwrap_or(v)
}

/// The strings to hide in output for these secrets: each value without its trailing newline (so
/// the newline after it stays in the log), and each line of a multi-line value on its own (a
/// step may print one line of a key file alone). Values and lines shorter than
/// [`MIN_MASKED_LEN`] are left out (see [`short_secret_warnings`]).
pub fn mask_values(secrets: &[Secret]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut add = |v: &[u8]| {
        if v.len() >= MIN_MASKED_LEN && !out.iter().any(|o| o == v) {
            out.push(v.to_vec());
        }
    };
    for s in secrets {
        let value = without_newline(&s.data);
        add(value);
        if value.contains(&b'\n') {
            for line in value.split(|&b| b == b'\n') {
                add(without_newline(line));
            }
        }
    }
    out
}

/// One warning per secret too short to mask, naming its id: its value will show in clear if a
/// step prints it.
pub fn short_secret_warnings(secrets: &[Secret]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| {
            let v = without_newline(&s.data);
            !v.is_empty() && v.len() < MIN_MASKED_LEN
        })
        .map(|s| {
            format!(
                "warning: --secret id={} is shorter than {MIN_MASKED_LEN} bytes and is not masked in the build output (it would match everywhere): a step that prints it shows it in clear",
                clip(&s.id)
            )
        })
        .collect()
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

    fn secret(id: &str, data: &[u8]) -> Secret {
        Secret {
            id: id.into(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn masks_cover_the_value_without_its_newline_and_each_line() {
        assert_eq!(
            mask_values(&[secret("a", b"pass\n")]),
            vec![b"pass".to_vec()]
        );
        assert_eq!(
            mask_values(&[secret("k", b"line-one\r\nline-two\nok\n")]),
            vec![
                b"line-one\r\nline-two\nok".to_vec(),
                b"line-one".to_vec(),
                b"line-two".to_vec()
            ]
        );
        // Too short to mask: no mask, one warning naming the id.
        let short = [
            secret("pin", b"x\n"),
            secret("empty", b""),
            secret("ok", b"long"),
        ];
        assert_eq!(mask_values(&short), vec![b"long".to_vec()]);
        let w = short_secret_warnings(&short);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("warning: --secret id=pin is shorter than 4 bytes"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn masked_output_keeps_its_newlines_and_hides_lines_printed_alone() {
        let secrets = [
            secret("key", b"AAAA-line1\nBBBB-line2\n"),
            secret("c", b"c"),
        ];
        let m = crate::progress::Masker::new(mask_values(&secrets));
        assert_eq!(m.mask(b"AAAA-line1\nBBBB-line2\nnext\n"), b"****\nnext\n");
        assert_eq!(m.mask(b"x BBBB-line2\n"), b"x ****\n");
        assert_eq!(m.mask(b"cat c\n"), b"cat c\n");
    }
}
