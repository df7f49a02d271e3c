//! A registry's `WWW-Authenticate` challenges (RFC 7235: a scheme, then `key="quoted value"` pairs; distribution's scopes hold commas), and the one bkrun answers.

use std::collections::BTreeMap;

/// How a registry wants requests authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// A token from `realm` (distribution's token auth); `scope` as the registry named it, if it did.
    Bearer {
        realm: String,
        service: String,
        scope: Option<String>,
    },
    /// The credentials themselves on every request (htpasswd registries).
    Basic,
}

/// The challenge to answer among those in the header values: Bearer over Basic, as containerd
/// prefers it; None when there is neither (a scheme bkrun does not speak).
pub fn pick<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let all: Vec<_> = headers.into_iter().flat_map(parse).collect();
    let bearer = all.iter().find_map(|(scheme, p)| {
        (scheme.eq_ignore_ascii_case("bearer") && p.contains_key("realm")).then(|| {
            Challenge::Bearer {
                realm: p["realm"].clone(),
                service: p.get("service").cloned().unwrap_or_default(),
                scope: p.get("scope").cloned(),
            }
        })
    });
    bearer.or_else(|| {
        all.iter()
            .any(|(s, _)| s.eq_ignore_ascii_case("basic"))
            .then_some(Challenge::Basic)
    })
}

/// One header value → its challenges, each a scheme and its parameters (keys lower-cased).
fn parse(value: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        let (word, after) = token(rest);
        let after = after.trim_start();
        if let Some(v) = after.strip_prefix('=') {
            // A parameter of the current challenge.
            let (val, after) = param_value(v.trim_start());
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), val);
            }
            rest = after;
        } else if word.is_empty() {
            // A stray separator (`,` or junk): skip one character.
            rest = &after[after.chars().next().map_or(0, char::len_utf8)..];
        } else {
            out.push((word.to_string(), BTreeMap::new()));
            rest = after;
        }
        rest = rest.trim_start_matches([' ', '\t', ',']);
    }
    out
}

/// The leading token (scheme or parameter name) and what follows it.
fn token(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_whitespace() || c == '=' || c == ',' || c == '"')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// A quoted string (backslash escapes honoured) or a bare token, and what follows it.
fn param_value(s: &str) -> (String, &str) {
    let Some(q) = s.strip_prefix('"') else {
        let (v, rest) = token(s);
        return (v.to_string(), rest);
    };
    let mut val = String::new();
    let mut chars = q.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    val.push(n);
                }
            }
            '"' => return (val, &q[i + 1..]),
            c => val.push(c),
        }
    }
    (val, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_keep_commas_inside_quotes() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        assert_eq!(
            pick([h]),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: "registry.docker.io".into(),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
    }

    #[test]
    fn schemes_are_case_blind_and_bearer_wins() {
        assert_eq!(
            pick([r#"Basic realm="bkrun-test""#]),
            Some(Challenge::Basic)
        );
        let both = [
            r#"basic realm="x""#,
            r#"BEARER Realm="http://127.0.0.1:1/t?a=\"b\"", service=reg"#,
        ];
        assert_eq!(
            pick(both),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t?a=\"b\"".into(),
                service: "reg".into(),
                scope: None,
            })
        );
        // Two challenges in one value.
        assert_eq!(
            pick([r#"Negotiate, Basic realm="r""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(pick([r#"Bearer service="no realm""#]), None);
        assert_eq!(pick(["Negotiate abc=="]), None);
        assert_eq!(pick([""]), None);
        assert!(pick([r#"Bearer realm="unterminated"#]).is_some());
    }
}
