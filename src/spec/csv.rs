//! The `k=v,k=v` CSV values of flags such as --output, split the way buildctl's CSV reader splits them (quotes group commas; `""` is a literal quote), and Go's boolean spellings.

use anyhow::{bail, Result};

/// Splits one CSV record into fields.
pub fn fields(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' if in_quotes => in_quotes = false,
            '"' if at_field_start => in_quotes = true,
            ',' if !in_quotes => {
                out.push(std::mem::take(&mut cur));
                at_field_start = true;
                continue;
            }
            c => cur.push(c),
        }
        at_field_start = false;
    }
    if in_quotes {
        bail!("unterminated quote in {s:?}");
    }
    out.push(cur);
    Ok(out)
}

/// Splits a CSV record into `key=value` pairs; a field without `=` is an error naming it.
pub fn pairs(s: &str) -> Result<Vec<(String, String)>> {
    fields(s)?
        .into_iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_lowercase(), v.to_string())),
            None => bail!("{f:?} is not of the form key=value"),
        })
        .collect()
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
        assert!(fields(r#""open"#).is_err());
    }

    #[test]
    fn pairs_need_equals() {
        assert_eq!(
            pairs("Type=tar,dest=-").unwrap(),
            [("type".into(), "tar".into()), ("dest".into(), "-".into())]
        );
        assert!(pairs("type=tar,oops")
            .unwrap_err()
            .to_string()
            .contains("oops"));
    }
}
