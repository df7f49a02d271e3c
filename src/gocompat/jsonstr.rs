//! JSON strings as Go's encoding/json writes them: control characters and the JavaScript line separators escaped, and `<`, `>`, `&` too unless HTML escaping is off (`SetEscapeHTML(false)`, as buildctl's `--format` templates use).

/// Whether `<`, `>` and `&` are escaped, as Go's encoder does by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Html {
    Escaped,
    Kept,
}

/// Appends `s` to `out` as a JSON string. Invalid UTF-8 cannot occur in a `str`.
pub fn quote_into(out: &mut String, s: &str, html: Html) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' if html == Html::Escaped => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string.
pub fn quote(s: &str, html: Html) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote_into(&mut out, s, html);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_is_the_only_difference() {
        let s = "a<b>&\"\\\n\r\t\u{8}\u{c}\u{1}\u{2028}é";
        assert_eq!(
            quote(s, Html::Escaped),
            "\"a\\u003cb\\u003e\\u0026\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u2028é\""
        );
        assert_eq!(
            quote(s, Html::Kept),
            "\"a<b>&\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u2028é\""
        );
    }
}
