//! The `k=v,k=v` CSV values of flags such as --output, split exactly as buildctl splits them (BuildKit's go-csvvalue, which reads one record as Go's encoding/csv does), and Go's boolean spellings.

use anyhow::{bail, Result};

/// Go's `csv.ErrBareQuote` text: a quote inside a field that did not start with one.
const BARE_QUOTE: &str = "bare \" in non-quoted-field";
/// Go's `csv.ErrQuote` text: a quoted field not closed, or closed and followed by more than a comma.
const QUOTE: &str = "extraneous or missing \" in quoted-field";

/// Go's `csv.ParseError` for a one-line record; `col` is 1-based and counts bytes, as Go's does.
fn parse_error(col: usize, what: &str) -> anyhow::Error {
    anyhow::anyhow!("parse error on line 1, column {col}: {what}")
}

/// Splits one CSV record into fields as buildctl does: a field is quoted only when its first
/// byte is `"` (then `""` is one quote and the quotes are stripped); a quote anywhere else is an
/// error, as is text after a closing quote; one trailing newline is dropped; an empty record is
/// an error (Go's io.EOF).
pub fn fields(s: &str) -> Result<Vec<String>> {
    let line = s
        .strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s);
    if line.is_empty() {
        bail!("the value is empty (EOF)");
    }
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        if b.get(pos) != Some(&b'"') {
            let end = b[pos..]
                .iter()
                .position(|&c| c == b',')
                .map_or(b.len(), |i| pos + i);
            if let Some(q) = b[pos..end].iter().position(|&c| c == b'"') {
                return Err(parse_error(pos + q + 1, BARE_QUOTE));
            }
            out.push(line[pos..end].to_string());
            if end == b.len() {
                return Ok(out);
            }
            pos = end + 1;
            continue;
        }
        // A quoted field: runs up to a quote that is followed by a comma or the end.
        pos += 1;
        let mut field = String::new();
        loop {
            let Some(i) = b[pos..].iter().position(|&c| c == b'"') else {
                // go-csvvalue reports where the unclosed part began, not the end of the line.
                return Err(parse_error(pos + 1, QUOTE));
            };
            field.push_str(&line[pos..pos + i]);
            pos += i + 1;
            match b.get(pos) {
                Some(b'"') => {
                    field.push('"');
                    pos += 1;
                }
                Some(b',') => {
                    out.push(field);
                    pos += 1;
                    break;
                }
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(_) => return Err(parse_error(pos, QUOTE)),
            }
        }
    }
}

/// Splits a CSV record into `key=value` pairs, keys lowercased as buildctl does. A field without
/// `=`, an empty key, or a key given twice (buildctl would silently keep the last one, which
/// hides a typo such as a second `dest=`) is an error naming it.
pub fn pairs(s: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for f in fields(s)? {
        let Some((k, v)) = f.split_once('=') else {
            bail!("{} is not of the form key=value", super::clip_quoted(&f));
        };
        let k = k.trim().to_lowercase();
        if k.is_empty() {
            bail!(
                "{} has an empty key: write key=value",
                super::clip_quoted(&f)
            );
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            bail!("the key {} is given twice: give it once", super::clip(&k));
        }
        out.push((k, v.to_string()));
    }
    Ok(out)
}

/// Go's strconv.ParseBool spellings, which buildctl accepts for boolean values (tar=, reset=, raw=).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        fields(s).unwrap_err().to_string()
    }

    #[test]
    fn splits_plain_and_quoted_fields() {
        assert_eq!(
            fields("type=local,dest=out").unwrap(),
            ["type=local", "dest=out"]
        );
        assert_eq!(
            fields(r#"type=image,"name=a,b","x=""q""""#).unwrap(),
            ["type=image", "name=a,b", "x=\"q\""]
        );
        assert_eq!(fields("a,,b,").unwrap(), ["a", "", "b", ""]);
        assert_eq!(fields(r#""""#).unwrap(), [""]);
        assert_eq!(fields("a,b\n").unwrap(), ["a", "b"]);
        assert_eq!(fields("a,b\r\n").unwrap(), ["a", "b"]);
        // Spaces are kept, and a field not starting with a quote is not a quoted one.
        assert_eq!(fields(" a, b").unwrap(), [" a", " b"]);
    }

    // The cases of go-csvvalue's own table that apply with buildctl's settings, with Go's
    // ParseError text and columns.
    #[test]
    fn quotes_fail_as_gos_reader_fails() {
        assert_eq!(
            err(r#"type=local,dest="a"b""#),
            "parse error on line 1, column 17: bare \" in non-quoted-field"
        );
        assert_eq!(
            err(r#"foo,aa"bb,cc"#),
            "parse error on line 1, column 7: bare \" in non-quoted-field"
        );
        assert_eq!(
            err(r#"a""b,c"#),
            "parse error on line 1, column 2: bare \" in non-quoted-field"
        );
        assert_eq!(
            err(r#""a word",b""#),
            "parse error on line 1, column 11: bare \" in non-quoted-field"
        );
        assert_eq!(
            err(r#""a "word","b""#),
            "parse error on line 1, column 4: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            err(r#"""""#),
            "parse error on line 1, column 4: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            err(r#"""#),
            "parse error on line 1, column 2: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            err(r#""open"#),
            "parse error on line 1, column 2: extraneous or missing \" in quoted-field"
        );
        assert!(err("").contains("empty"));
        assert!(err("\n").contains("empty"));
    }

    #[test]
    fn pairs_need_equals_and_distinct_keys() {
        assert_eq!(
            pairs("Type=tar,dest=-").unwrap(),
            [("type".into(), "tar".into()), ("dest".into(), "-".into())]
        );
        assert!(pairs("type=tar,oops")
            .unwrap_err()
            .to_string()
            .contains("oops"));
        assert!(pairs("type=tar,=x")
            .unwrap_err()
            .to_string()
            .contains("empty key"));
        let e = pairs("type=local,dest=a,DEST=b").unwrap_err().to_string();
        assert!(e.contains("dest") && e.contains("twice"), "{e}");
    }
}
