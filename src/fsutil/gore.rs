//! Rewrites the Go RE2 regular expressions that pattern compilation builds into Rust `regex` syntax.
//!
//! Patterns are turned into Go regexps by plain string surgery, so a user's `[`, `]`, `^` and
//! `\x` escapes reach Go's regexp parser raw. Rust's dialect differs in places that matter here
//! (nested classes and `&&`/`--`/`~~` inside brackets, Unicode `\d`/`\s`/`\w`/`\b`, no `\Q..\E`), so
//! rather than feed the string to Rust as is, we parse it with Go's rules and re-emit every piece
//! in an unambiguous Rust form. Errors stand for "Go would refuse to compile this".

/// Translate a Go regexp (Perl flags, as `regexp.Compile` uses) into an equivalent Rust regex.
pub(crate) fn translate(go: &str) -> Result<String, String> {
    let mut p = Parser {
        s: go.chars().collect(),
        i: 0,
        out: String::with_capacity(go.len() * 2),
    };
    p.seq(0)?;
    Ok(p.out)
}

struct Parser {
    s: Vec<char>,
    i: usize,
    out: String,
}

/// A literal char in a form Rust reads the same inside or outside brackets.
fn lit(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:X}}}", c as u32)
    }
}

/// Go's Perl classes are ASCII-only, and Go's `\s` leaves out `\v`.
fn perl_class(c: char) -> Option<(&'static str, bool)> {
    Some(match c {
        'd' => ("0-9", false),
        'D' => ("0-9", true),
        's' => ("\\x{9}\\x{A}\\x{C}\\x{D}\\x{20}", false),
        'S' => ("\\x{9}\\x{A}\\x{C}\\x{D}\\x{20}", true),
        'w' => ("0-9A-Za-z_", false),
        'W' => ("0-9A-Za-z_", true),
        _ => return None,
    })
}

/// ASCII ranges of the POSIX classes Go knows.
fn posix_class(name: &str) -> Option<&'static str> {
    Some(match name {
        "alnum" => "0-9A-Za-z",
        "alpha" => "A-Za-z",
        "ascii" => "\\x{0}-\\x{7F}",
        "blank" => "\\x{9}\\x{20}",
        "cntrl" => "\\x{0}-\\x{1F}\\x{7F}",
        "digit" => "0-9",
        "graph" => "\\x{21}-\\x{7E}",
        "lower" => "a-z",
        "print" => "\\x{20}-\\x{7E}",
        "punct" => "\\x{21}-\\x{2F}\\x{3A}-\\x{40}\\x{5B}-\\x{60}\\x{7B}-\\x{7E}",
        "space" => "\\x{9}-\\x{D}\\x{20}",
        "upper" => "A-Z",
        "word" => "0-9A-Za-z_",
        "xdigit" => "0-9A-Fa-f",
        _ => return None,
    })
}

fn set(body: &str, negated: bool) -> String {
    format!("[{}{}]", if negated { "^" } else { "" }, body)
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.i + n).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.i += 1;
        }
        c
    }

    fn starts_with(&self, pat: &str) -> bool {
        let mut rest = self.s[self.i..].iter();
        pat.chars().all(|c| rest.next() == Some(&c))
    }

    /// A sequence up to `)` (when nested) or the end.
    fn seq(&mut self, depth: usize) -> Result<(), String> {
        // Go refuses a repetition with nothing before it and a repetition of a repetition.
        let mut operand = false;
        let mut repeated = false;
        loop {
            let Some(c) = self.next() else {
                return if depth > 0 {
                    Err("missing closing )".into())
                } else {
                    Ok(())
                };
            };
            match c {
                ')' if depth > 0 => return Ok(()),
                ')' => return Err("unexpected )".into()),
                '(' => {
                    if self.peek() == Some('?') {
                        return Err("unsupported group syntax".into());
                    }
                    self.out.push_str("(?:");
                    self.seq(depth + 1)?;
                    self.out.push(')');
                    operand = true;
                    repeated = false;
                    continue;
                }
                '|' => {
                    self.out.push('|');
                    operand = false;
                    repeated = false;
                    continue;
                }
                '*' | '+' | '?' => {
                    if repeated {
                        return Err("invalid nested repetition operator".into());
                    }
                    if !operand {
                        return Err("missing argument to repetition operator".into());
                    }
                    self.out.push(c);
                    if self.peek() == Some('?') {
                        self.next();
                        self.out.push('?');
                    }
                    repeated = true;
                    continue;
                }
                '^' => self.out.push('^'),
                '$' => self.out.push('$'),
                '.' => self.out.push('.'),
                '[' => self.class()?,
                '\\' => self.escape()?,
                c => self.out.push_str(&lit(c)),
            }
            operand = true;
            repeated = false;
        }
    }

    /// After a `\` outside brackets.
    fn escape(&mut self) -> Result<(), String> {
        let Some(c) = self.peek() else {
            return Err("trailing backslash".into());
        };
        match c {
            'A' => self.out.push_str("\\A"),
            'z' => self.out.push_str("\\z"),
            'b' => self.out.push_str("(?-u:\\b)"),
            'B' => self.out.push_str("(?-u:\\B)"),
            'C' => return Err("invalid escape \\C".into()),
            'Q' => {
                self.next();
                while self.peek().is_some() {
                    if self.starts_with("\\E") {
                        self.i += 2;
                        break;
                    }
                    let c = self.next().unwrap_or_default();
                    self.out.push_str(&lit(c));
                }
                return Ok(());
            }
            'p' | 'P' => {
                let frag = self.unicode_class()?;
                self.out.push_str(&frag);
                return Ok(());
            }
            _ => {
                if let Some((body, neg)) = perl_class(c) {
                    self.next();
                    self.out.push_str(&set(body, neg));
                    return Ok(());
                }
                let r = self.escaped_char()?;
                self.out.push_str(&r);
                return Ok(());
            }
        }
        self.next();
        Ok(())
    }

    /// `\p{Name}`, `\pL`, `\P..`, `\p{^Name}`; the cursor is on the `p`/`P`.
    fn unicode_class(&mut self) -> Result<String, String> {
        let mut negated = self.next() == Some('P');
        let name: String = match self.next() {
            Some('{') => {
                let mut name = String::new();
                loop {
                    match self.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err("invalid character class range".into()),
                    }
                }
                name
            }
            Some(c) => c.to_string(),
            None => return Err("invalid character class range".into()),
        };
        let name = match name.strip_prefix('^') {
            Some(rest) => {
                negated = !negated;
                rest.to_string()
            }
            None => name,
        };
        // Go and Rust both match these names loosely; anything odd is left for Rust to reject.
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '-' | '&'))
        {
            return Err(format!("invalid character class range \\p{{{name}}}"));
        }
        Ok(format!("\\{}{{{}}}", if negated { 'P' } else { 'p' }, name))
    }

    /// A single escaped char (the cursor is just after the `\`), emitted as a literal.
    fn escaped_char(&mut self) -> Result<String, String> {
        let r = self.escape_value()?;
        Ok(match char::from_u32(r) {
            Some(c) => lit(c),
            // A surrogate can never occur in decoded text, so it matches nothing.
            None => "[^\\x{0}-\\x{10FFFF}]".into(),
        })
    }

    fn escape_value(&mut self) -> Result<u32, String> {
        let bad = || Err::<u32, String>("invalid escape sequence".into());
        let Some(c) = self.next() else {
            return Err("trailing backslash".into());
        };
        let octal = |c: Option<char>| c.filter(|c| ('0'..='7').contains(c));
        match c {
            '1'..='7' | '0' => {
                if c != '0' && octal(self.peek()).is_none() {
                    // A lone \1..\7 would be a backreference, which RE2 lacks.
                    return bad();
                }
                let mut r = c as u32 - '0' as u32;
                for _ in 1..3 {
                    match octal(self.peek()) {
                        Some(d) => {
                            r = r * 8 + (d as u32 - '0' as u32);
                            self.next();
                        }
                        None => break,
                    }
                }
                Ok(r)
            }
            'x' => {
                let Some(c) = self.next() else {
                    return bad();
                };
                if c == '{' {
                    let mut r: u32 = 0;
                    let mut n = 0;
                    loop {
                        let Some(c) = self.next() else {
                            return bad();
                        };
                        if c == '}' {
                            break;
                        }
                        let Some(v) = c.to_digit(16) else {
                            return bad();
                        };
                        r = r * 16 + v;
                        if r > 0x10FFFF {
                            return bad();
                        }
                        n += 1;
                    }
                    if n == 0 {
                        return bad();
                    }
                    return Ok(r);
                }
                let x = c.to_digit(16);
                let y = self.next().and_then(|c| c.to_digit(16));
                match (x, y) {
                    (Some(x), Some(y)) => Ok(x * 16 + y),
                    _ => bad(),
                }
            }
            'a' => Ok(7),
            'f' => Ok(12),
            'n' => Ok(10),
            'r' => Ok(13),
            't' => Ok(9),
            'v' => Ok(11),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
            _ => bad(),
        }
    }

    /// A bracket expression; the cursor is just after `[`.
    fn class(&mut self) -> Result<(), String> {
        let missing = || Err::<(), String>("missing closing ]".into());
        let negated = self.peek() == Some('^');
        if negated {
            self.next();
        }
        let mut body = String::new();
        let mut first = true;
        loop {
            match self.peek() {
                None => return missing(),
                Some(']') if !first => {
                    self.next();
                    break;
                }
                _ => {}
            }
            first = false;
            if self.starts_with("[:") {
                // Go looks for the closing `:]` anywhere further on, even past this class.
                let rest: String = self.s[self.i + 2..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    let name = &rest[..end];
                    let (neg, bare) = match name.strip_prefix('^') {
                        Some(b) => (true, b),
                        None => (false, name),
                    };
                    let Some(ranges) = posix_class(bare) else {
                        return Err(format!("invalid character class range [:{name}:]"));
                    };
                    body.push_str(&set(ranges, neg));
                    self.i += 2 + name.chars().count() + 2;
                    continue;
                }
            }
            if self.starts_with("\\p") || self.starts_with("\\P") {
                self.next();
                let frag = self.unicode_class()?;
                body.push_str(&frag);
                continue;
            }
            if self.peek() == Some('\\') {
                if let Some((ranges, neg)) = self.peek_at(1).and_then(perl_class) {
                    self.i += 2;
                    body.push_str(&set(ranges, neg));
                    continue;
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.next();
                hi = self.class_char()?;
                if hi < lo {
                    return Err("invalid character class range".into());
                }
            }
            match (char::from_u32(lo), char::from_u32(hi)) {
                (Some(l), Some(h)) => body.push_str(&format!("{}-{}", lit(l), lit(h))),
                // Ranges touching the surrogate block: keep the representable parts.
                _ => {
                    for (a, b) in [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)] {
                        if let (Some(a), Some(b)) = (char::from_u32(a), char::from_u32(b)) {
                            if a <= b {
                                body.push_str(&format!("{}-{}", lit(a), lit(b)));
                            }
                        }
                    }
                }
            }
        }
        if body.is_empty() {
            // Only a class made purely of surrogates gets here: it matches nothing.
            body.push_str("[^\\x{0}-\\x{10FFFF}]");
        }
        self.out.push_str(&set(&body, negated));
        Ok(())
    }

    fn class_char(&mut self) -> Result<u32, String> {
        match self.peek() {
            None => Err("missing closing ]".into()),
            Some('\\') => {
                self.next();
                self.escape_value()
            }
            Some(c) => {
                self.next();
                Ok(c as u32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn m(go: &str, text: &str) -> bool {
        let rs = translate(go).unwrap_or_else(|e| panic!("{go}: {e}"));
        regex::Regex::new(&rs)
            .unwrap_or_else(|e| panic!("{go} -> {rs}: {e}"))
            .is_match(text)
    }

    #[test]
    fn classes_follow_go_rules() {
        assert!(m("^[[^/]*]$", "[^/]"));
        assert!(m("^[[^/]*]$", "]"));
        assert!(!m("^[[^/]*]$", "a]"));
        assert!(m("^[]a]$", "]"));
        assert!(m("^[a-]$", "-"));
        assert!(m("^[a&&b]$", "&"));
        assert!(translate("^[a--]$").is_err());
        assert!(m("^[[:digit:]x]$", "7"));
        assert!(m("^[[:^digit:]]$", "x"));
        assert!(!m("^[[:^digit:]]$", "7"));
        assert!(m("^[\\d]$", "5"));
        assert!(!m("^\\d$", "٣"));
        assert!(!m("^\\s$", "\u{b}"));
        assert!(m("^[^/]$", "\n"));
        assert!(translate("^[[:foo:]]$").is_err());
        assert!(translate("^[z-a]$").is_err());
        assert!(translate("^[a$").is_err());
    }

    #[test]
    fn escapes_follow_go_rules() {
        assert!(m("^\\x41$", "A"));
        assert!(m("^\\x{263a}$", "☺"));
        assert!(m("^\\101$", "A"));
        assert!(m("^\\0$", "\0"));
        assert!(translate("^\\1$").is_err());
        assert!(translate("^\\y$").is_err());
        assert!(translate("^\\C$").is_err());
        assert!(translate("^\\é$").is_err());
        assert!(m("^\\Qa[^/]*b$", "a[^/]*b$"));
        assert!(m("^\\Qa.b\\E.$", "a.bc"));
        assert!(m("^\\pL$", "é"));
        assert!(m("^\\p{^L}$", "1"));
        assert!(!m("^a\\bb$", "ab"));
        assert!(m("^a\\b\\.$", "a."));
        assert!(m("^a.b$", "a\u{263a}b"));
        assert!(!m("^a.b$", "a\nb"));
    }
}
