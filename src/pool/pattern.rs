//! The address-list grammar: addresses separated by commas, each with optional `{A..B}` integer ranges (a StatefulSet's ordinals), expanded into a checked, duplicate-free list.
//!
//! `tcp://bkrun-{0..2}.bkrun.ci.svc:1234` is three addresses; `tcp://a:1234,tcp://b:1234` two.
//! Several ranges in one address multiply (the first varies slowest); a bound written with a
//! leading zero pads every number to the wider bound's width, as a shell's brace expansion does.

use anyhow::{bail, Result};

/// More than anyone runs, and few enough that a typo like `{0..100000}` fails fast.
pub const MAX_ADDRESSES: usize = 256;

/// Every address that `values` (each a comma list with patterns) names, in order, each once.
pub fn expand<S: AsRef<str>>(values: &[S]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        let value = value.as_ref();
        for item in split_top(value)? {
            let item = item.trim();
            if item.is_empty() {
                bail!("the address list {value:?} has an empty entry: separate addresses with single commas, e.g. tcp://a:1234,tcp://b:1234");
            }
            for addr in expand_one(item)? {
                if !out.contains(&addr) {
                    out.push(addr);
                }
                if out.len() > MAX_ADDRESSES {
                    bail!("the address list {value:?} names more than {MAX_ADDRESSES} daemons: check the {{A..B}} ranges");
                }
            }
        }
    }
    Ok(out)
}

/// Splits at the commas outside braces, so `{0,1}` reaches `expand_one` whole and is explained.
fn split_top(value: &str) -> Result<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in value.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            bail!("the address {value:?} has unbalanced or nested braces: write one {{A..B}} range per pair, e.g. tcp://bkrun-{{0..2}}.bkrun:1234");
        }
    }
    if depth != 0 {
        bail!("the address {value:?} has an unclosed brace: write {{A..B}}, e.g. tcp://bkrun-{{0..2}}.bkrun:1234");
    }
    parts.push(&value[start..]);
    Ok(parts)
}

/// One address with its ranges, expanded.
fn expand_one(item: &str) -> Result<Vec<String>> {
    let Some(open) = item.find('{') else {
        return Ok(vec![item.to_string()]);
    };
    let close = open
        + item[open..]
            .find('}')
            .expect("split_top checked the braces");
    let (prefix, inner, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    let bad = || {
        anyhow::anyhow!(
            "the address {item:?} has {{{inner}}}, which is not a range: write {{A..B}} with whole numbers A ≤ B, e.g. tcp://bkrun-{{0..2}}.bkrun:1234 (separate whole addresses with commas)"
        )
    };
    let (a, b) = inner.split_once("..").ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return Err(bad());
    }
    let (lo, hi): (u32, u32) = (a.parse()?, b.parse()?);
    if lo > hi {
        return Err(bad());
    }
    if (hi - lo) as usize >= MAX_ADDRESSES {
        bail!(
            "the address {item:?} names {} daemons: more than {MAX_ADDRESSES}; check the range",
            hi - lo + 1
        );
    }
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(a) || padded(b) {
        a.len().max(b.len())
    } else {
        0
    };
    let tails = expand_one(rest)?;
    // Checked before the product is built: ranges in a row multiply.
    let total = (hi - lo + 1) as usize * tails.len();
    if total > MAX_ADDRESSES {
        bail!("the address {item:?} names {total} daemons: more than {MAX_ADDRESSES}; check the ranges");
    }
    let mut out = Vec::new();
    for n in lo..=hi {
        for tail in &tails {
            out.push(format!("{prefix}{n:0width$}{tail}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(values: &[&str]) -> Vec<String> {
        expand(values).unwrap()
    }

    fn err(values: &[&str]) -> String {
        format!("{:#}", expand(values).unwrap_err())
    }

    #[test]
    fn ranges_in_a_row_are_bounded_before_they_are_built() {
        let e = err(&["tcp://h{0..255}{0..255}{0..255}{0..255}:1"]);
        assert!(e.contains("more than 256"), "{e}");
    }

    #[test]
    fn one_address_is_itself() {
        assert_eq!(ok(&["tcp://b:1234"]), ["tcp://b:1234"]);
        assert_eq!(
            ok(&["unix:///run/buildkit/buildkitd.sock"]),
            ["unix:///run/buildkit/buildkitd.sock"]
        );
        assert_eq!(ok(&["tcp://[::1]:1234"]), ["tcp://[::1]:1234"]);
    }

    #[test]
    fn lists_and_repeats_join_in_order_each_once() {
        assert_eq!(
            ok(&["tcp://a:1, tcp://b:1", "tcp://c:1", "tcp://a:1"]),
            ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
        );
    }

    #[test]
    fn statefulset_patterns_expand() {
        assert_eq!(
            ok(&["tcp://bkrun-{0..2}.bkrun.ci.svc:1234"]),
            [
                "tcp://bkrun-0.bkrun.ci.svc:1234",
                "tcp://bkrun-1.bkrun.ci.svc:1234",
                "tcp://bkrun-2.bkrun.ci.svc:1234"
            ]
        );
        assert_eq!(ok(&["tcp://b{1..1}:1"]), ["tcp://b1:1"]);
        assert_eq!(
            ok(&["tcp://b{08..10}:1"]),
            ["tcp://b08:1", "tcp://b09:1", "tcp://b10:1"]
        );
        assert_eq!(
            ok(&["tcp://{0..1}-{0..1}:1,tcp://z:1"]),
            [
                "tcp://0-0:1",
                "tcp://0-1:1",
                "tcp://1-0:1",
                "tcp://1-1:1",
                "tcp://z:1"
            ]
        );
    }

    #[test]
    fn bad_lists_and_patterns_are_explained() {
        assert!(err(&["tcp://a:1,,tcp://b:1"]).contains("empty entry"));
        assert!(err(&["tcp://a:1,"]).contains("empty entry"));
        assert!(err(&["tcp://b-{0,1}:1"]).contains("not a range"));
        assert!(err(&["tcp://b-{2..0}:1"]).contains("A ≤ B"));
        assert!(err(&["tcp://b-{a..c}:1"]).contains("not a range"));
        assert!(err(&["tcp://b-{-1..2}:1"]).contains("not a range"));
        assert!(err(&["tcp://b-{0..2:1"]).contains("unclosed brace"));
        assert!(err(&["tcp://b-0..2}:1"]).contains("unbalanced"));
        assert!(err(&["tcp://b-{{0..2}}:1"]).contains("nested"));
        assert!(err(&["tcp://b-{0..100000}:1"]).contains("more than 256"));
        assert!(err(&["tcp://{0..20}-{0..20}:1"]).contains("more than 256"));
    }
}
