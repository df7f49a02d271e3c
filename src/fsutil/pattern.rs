//! `.dockerignore`-style patterns matched the way moby/patternmatcher matches them, with Go's path rules.
//!
//! Paths are byte strings (file names need not be UTF-8) with `/` separators. Where upstream
//! has quirks (no re-cleaning after `!`, exceptions only checked while something is matched,
//! parent results reused per pattern) we keep them: the daemon decides what it asked for with
//! the same rules, so matching "better" than upstream would send a different context.

use std::borrow::Cow;

use super::gore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("syntax error in pattern: {0:?}")]
    BadPattern(String),
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    #[error("wrong number of values in parent match results")]
    WrongParentInfo,
}

/// Go's `path.Clean` on bytes: collapse `//`, drop `.`, resolve `..` lexically, `""` -> `"."`.
pub fn clean_bytes(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return b".".to_vec();
    }
    let rooted = path[0] == b'/';
    let mut parts: Vec<&[u8]> = Vec::new();
    for elem in path.split(|&b| b == b'/') {
        match elem {
            b"" | b"." => {}
            b".." => {
                if parts.last().is_some_and(|l| *l != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(elem);
                }
            }
            _ => parts.push(elem),
        }
    }
    let joined = parts.join(&b'/');
    if rooted {
        let mut out = vec![b'/'];
        out.extend_from_slice(&joined);
        out
    } else if joined.is_empty() {
        b".".to_vec()
    } else {
        joined
    }
}

/// Go's `path.Clean` for text.
pub fn clean(path: &str) -> String {
    // Cleaning only removes whole ASCII-delimited elements, so UTF-8 stays valid.
    String::from_utf8(clean_bytes(path.as_bytes())).unwrap_or_default()
}

/// Go's `path.Dir`: everything before the last `/`, cleaned.
pub fn dir_bytes(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => clean_bytes(&path[..=i]),
        None => b".".to_vec(),
    }
}

const RUNE_ERROR: u32 = 0xFFFD;

/// Decode one char the way Go does: an invalid byte is `U+FFFD` of width one.
fn decode_rune(b: &[u8]) -> (u32, usize) {
    let Some(&b0) = b.first() else {
        return (RUNE_ERROR, 0);
    };
    let n = match b0 {
        0..=0x7f => return (b0 as u32, 1),
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return (RUNE_ERROR, 1),
    };
    match b.get(..n).map(std::str::from_utf8) {
        Some(Ok(s)) => (s.chars().next().map_or(RUNE_ERROR, |c| c as u32), n),
        _ => (RUNE_ERROR, 1),
    }
}

/// Text for the regex engine: Go's regexp sees each invalid byte as one `U+FFFD`.
fn as_go_text(path: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(path) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(path.len() + 8);
    for chunk in path.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push('\u{FFFD}');
        }
    }
    Cow::Owned(out)
}

/// Go's `filepath.Match` (Unix): shell glob over one path, `*` and `?` never crossing `/`.
///
/// Like Go, a syntax error is only reported if matching gets far enough to see it.
pub fn glob_match(pattern: &str, name: &[u8]) -> Result<bool, PatternError> {
    let bad = || PatternError::BadPattern(pattern.to_string());
    let mut pat = pattern.as_bytes();
    let mut name = name;
    'chunks: while !pat.is_empty() {
        let (star, chunk, rest) = scan_chunk(pat);
        pat = rest;
        if star && chunk.is_empty() {
            // A trailing star eats the rest of this path element.
            return Ok(!name.contains(&b'/'));
        }
        match match_chunk(chunk, name) {
            Ok(Some(t)) if t.is_empty() || !pat.is_empty() => {
                name = t;
                continue;
            }
            Err(()) => return Err(bad()),
            _ => {}
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pat.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'chunks;
                    }
                    Err(()) => return Err(bad()),
                    Ok(None) => {}
                }
                i += 1;
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Split off leading stars and the following star-free chunk (stars inside `[]` don't count).
fn scan_chunk(pat: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut pat = pat;
    let mut star = false;
    while let [b'*', rest @ ..] = pat {
        pat = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            b'\\' if i + 1 < pat.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => return (star, &pat[..i], &pat[i..]),
            _ => {}
        }
        i += 1;
    }
    (star, pat, &[])
}

/// Match one chunk at the start of `s`; `Ok(Some(rest))` on success. The whole chunk is always
/// scanned so that syntax errors surface even after a mismatch.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, ()> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        failed = failed || s.is_empty();
        match c {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (rr, n) = decode_rune(s);
                    r = rr;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        let (h, rest) = class_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    matched = matched || (lo <= r && r <= hi);
                    nrange += 1;
                }
                failed = failed || matched == negated;
            }
            b'?' => {
                if !failed {
                    failed = s[0] == b'/';
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(());
                    }
                }
                if !failed {
                    failed = chunk[0] != s[0];
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// One possibly escaped char of a `[...]` class; something must follow it.
fn class_esc(chunk: &[u8]) -> Result<(u32, &[u8]), ()> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(()),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(());
            }
        }
        _ => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == RUNE_ERROR && n == 1 {
        return Err(());
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(());
    }
    Ok((r, rest))
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(regex::Regex),
    /// Go's regexp would not compile it; matching reports the error.
    Invalid,
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    /// The cleaned pattern without its leading `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    fn compile(text: String, exclusion: bool) -> Pattern {
        let mut re = String::from("^");
        let mut kind = 0u8; // 0 exact, 1 prefix, 2 suffix, 3 regex
        let mut chars = text.chars().peekable();
        // Go's text scanner drops a byte order mark at the very start.
        if chars.peek() == Some(&'\u{feff}') {
            chars.next();
        }
        let mut first = true;
        while let Some(ch) = chars.next() {
            match ch {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        if kind == 0 {
                            kind = 1;
                        } else {
                            re.push_str(".*");
                            kind = 3;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        kind = 3;
                    }
                    if first {
                        kind = 2;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    kind = 3;
                }
                '?' => {
                    re.push_str("[^/]");
                    kind = 3;
                }
                '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => match chars.next() {
                    Some(n) => {
                        re.push('\\');
                        re.push(n);
                        kind = 3;
                    }
                    None => re.push('\\'),
                },
                '[' | ']' => {
                    re.push(ch);
                    kind = 3;
                }
                _ => re.push(ch),
            }
            first = false;
        }
        let kind = match kind {
            0 => Kind::Exact,
            1 => Kind::Prefix,
            2 => Kind::Suffix,
            _ => {
                re.push('$');
                gore::translate(&re)
                    .ok()
                    .and_then(|rs| regex::Regex::new(&rs).ok())
                    .map_or(Kind::Invalid, Kind::Regex)
            }
        };
        Pattern {
            text,
            exclusion,
            kind,
        }
    }

    fn matches(&self, path: &[u8]) -> Result<bool, PatternError> {
        let t = self.text.as_bytes();
        Ok(match &self.kind {
            Kind::Exact => path == t,
            Kind::Prefix => path.starts_with(&t[..t.len() - 2]),
            Kind::Suffix => {
                let suffix = &t[2..];
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(&as_go_text(path)),
            Kind::Invalid => return Err(PatternError::BadPattern(self.text.clone())),
        })
    }
}

/// Per-pattern results for a directory, handed down to its children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered pattern list where later patterns override earlier ones and `!` re-includes.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Each proper parent of `path` ("a", "a/b" for "a/b/c"), or none for a top-level path.
fn parents(path: &[u8]) -> Vec<Vec<u8>> {
    let parent = dir_bytes(path);
    if parent == b"." {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &b) in parent.iter().enumerate() {
        if b == b'/' {
            out.push(parent[..i].to_vec());
        }
    }
    out.push(parent);
    out
}

impl PatternMatcher {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut pm = PatternMatcher::default();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            // Cleaning happens before the `!` is looked at, so `!a/../b` becomes plain `b`.
            let mut p = clean(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(PatternError::IllegalExclusion);
                }
                exclusion = true;
                pm.exclusions = true;
                p = rest.to_string();
            }
            glob_match(&p, b".")?;
            pm.patterns.push(Pattern::compile(p, exclusion));
        }
        Ok(pm)
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern starts with `!`.
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `file`, or one of its parent directories, is matched by the list as a whole.
    pub fn matches_or_parent_matches(&self, file: &[u8]) -> Result<bool, PatternError> {
        let parents = parents(file);
        let mut matched = false;
        for pat in &self.patterns {
            // Inclusions only matter while unmatched, exceptions only while matched.
            if pat.exclusion != matched {
                continue;
            }
            let mut m = pat.matches(file)?;
            if !m {
                m = parents.iter().any(|p| pat.matches(p).unwrap_or(false));
            }
            if m {
                matched = !pat.exclusion;
            }
        }
        Ok(matched)
    }

    /// Like [`Self::matches_or_parent_matches`], but reuses the parent directory's per-pattern
    /// results instead of re-matching every ancestor. Pass `MatchInfo::default()` when the parent
    /// is unknown; the returned info is what this path's children need.
    pub fn matches_using_parent_results(
        &self,
        file: &[u8],
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), PatternError> {
        let pm = &parent.parent_matched;
        if !pm.is_empty() && pm.len() != self.patterns.len() {
            return Err(PatternError::WrongParentInfo);
        }
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        let mut ancestors: Option<Vec<Vec<u8>>> = None;
        for (i, pat) in self.patterns.iter().enumerate() {
            let mut m = !pm.is_empty() && pm[i];
            if !m {
                if pat.exclusion != matched {
                    // Not evaluated, so recorded as unmatched even if it would match.
                    continue;
                }
                m = pat.matches(file)?;
                if !m && pm.is_empty() {
                    let anc = ancestors.get_or_insert_with(|| parents(file));
                    m = anc.iter().any(|p| pat.matches(p).unwrap_or(false));
                }
            }
            info[i] = m;
            if m {
                matched = !pat.exclusion;
            }
        }
        Ok((
            matched,
            MatchInfo {
                parent_matched: info,
            },
        ))
    }
}

/// Patterns from a `.dockerignore` file, as the ignorefile reader produces them: comments and
/// blank lines dropped, each pattern cleaned, one leading `/` removed, `!` kept in front.
pub fn parse_ignore_file(content: &[u8]) -> Vec<String> {
    let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
    let mut out = Vec::new();
    for line in content.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = String::from_utf8_lossy(line);
        if line.starts_with('#') {
            continue;
        }
        let mut p = line.trim();
        if p.is_empty() {
            continue;
        }
        let invert = p.starts_with('!');
        if invert {
            p = p[1..].trim();
        }
        let mut p = p.to_string();
        if !p.is_empty() {
            p = clean(&p);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
        }
        out.push(if invert { format!("!{p}") } else { p });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        for (i, o) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("a/", "a"),
            ("//a//b/./c/", "/a/b/c"),
            ("a/../..", ".."),
            ("../a/..", ".."),
            ("/../a", "/a"),
            ("a/b/../../c", "c"),
            ("!a/../b", "b"),
            ("!./a", "!./a"),
            ("./", "."),
            ("**/", "**"),
        ] {
            assert_eq!(clean(i), o, "clean({i:?})");
        }
    }

    #[test]
    fn glob_like_go() {
        let ok = |p: &str, n: &str| glob_match(p, n.as_bytes()).unwrap();
        assert!(ok("abc", "abc"));
        assert!(ok("*", "abc"));
        assert!(ok("*c", "abc"));
        assert!(!ok("a*", "ab/c"));
        assert!(ok("a*/b", "abc/b"));
        assert!(!ok("a*/b", "a/c/b"));
        assert!(ok("a*b*c*d*e*/f", "axbxcxdxe/f"));
        assert!(ok("a*b*c*d*e*/f", "axbxcxdxexxx/f"));
        assert!(!ok("a*b*c*d*e*/f", "axbxcxdxe/xxx/f"));
        assert!(!ok("a*b?c*x", "abxbbxdbxebxczzy"));
        assert!(ok("ab[c]", "abc"));
        assert!(ok("ab[b-d]", "abc"));
        assert!(!ok("ab[e-g]", "abc"));
        assert!(!ok("ab[^c]", "abc"));
        assert!(ok("ab[^e-g]", "abc"));
        assert!(ok("a\\*b", "a*b"));
        assert!(!ok("a\\*b", "ab"));
        assert!(ok("a?b", "a☺b"));
        assert!(ok("a[^a]b", "a☺b"));
        assert!(!ok("a???b", "a☺b"));
        assert!(ok("[\\-]", "-"));
        assert!(ok("[x\\-]", "x"));
        assert!(!ok("[x\\-]", "z"));
        assert!(ok("*x", "xxx"));
        let bad = |p: &str, n: &str| glob_match(p, n.as_bytes()).is_err();
        assert!(bad("[]a]", "]"));
        assert!(bad("[-]", "-"));
        assert!(bad("[x-]", "x"));
        assert!(bad("[-x]", "a"));
        assert!(bad("\\", "a"));
        assert!(bad("[a-b-c]", "a"));
        assert!(bad("[", "a"));
        assert!(bad("[^", "a"));
        assert!(bad("[^bc", "a"));
        assert!(bad("a[", "ab"));
        assert!(bad("*x[", "xxx"));
        // Errors after a mismatch go unseen, as in Go.
        assert!(!bad("a*[", "."));
        // But a chunk is always read to its end.
        assert!(bad("a[", "x"));
    }

    fn pm(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).unwrap()
    }

    /// Cases recorded from moby/patternmatcher v0.6.1 `MatchesOrParentMatches`.
    #[test]
    fn matches_or_parent_matches_recorded() {
        #[rustfmt::skip]
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**"], "file", true),
            (&["**"], "file/", true),
            (&["**/"], "file", true),
            (&["**/"], "file/", true),
            (&["**"], "/", true),
            (&["**/"], "/", true),
            (&["**"], "dir/file", true),
            (&["**/"], "dir/file", true),
            (&["**"], "dir/file/", true),
            (&["**/"], "dir/file/", true),
            (&["**/**"], "dir/file", true),
            (&["**/**"], "dir/file/", true),
            (&["dir/**"], "dir/file", true),
            (&["dir/**"], "dir/file/", true),
            (&["dir/**"], "dir/dir2/file", true),
            (&["dir/**"], "dir/dir2/file/", true),
            (&["**/dir"], "dir", true),
            (&["**/dir"], "dir/file", true),
            (&["**/dir2/*"], "dir/dir2/file", true),
            (&["**/dir2/*"], "dir/dir2/file/", true),
            (&["**/dir2/**"], "dir/dir2/dir3/file", true),
            (&["**/dir2/**"], "dir/dir2/dir3/file/", true),
            (&["**file"], "file", true),
            (&["**file"], "dir/file", true),
            (&["**/file"], "dir/file", true),
            (&["**file"], "dir/dir/file", true),
            (&["**/file"], "dir/dir/file", true),
            (&["**/file*"], "dir/dir/file", true),
            (&["**/file*"], "dir/dir/file.txt", true),
            (&["**/file*txt"], "dir/dir/file.txt", true),
            (&["**/file*.txt"], "dir/dir/file.txt", true),
            (&["**/file*.txt*"], "dir/dir/file.txt", true),
            (&["**/**/*.txt"], "dir/dir/file.txt", true),
            (&["**/**/*.txt2"], "dir/dir/file.txt", false),
            (&["**/*.txt"], "file.txt", true),
            (&["**/**/*.txt"], "file.txt", true),
            (&["a**/*.txt"], "a/file.txt", true),
            (&["a**/*.txt"], "a/dir/file.txt", true),
            (&["a**/*.txt"], "a/dir/dir/file.txt", true),
            (&["a/*.txt"], "a/dir/file.txt", false),
            (&["a/*.txt"], "a/file.txt", true),
            (&["a/*.txt**"], "a/file.txt", true),
            (&["a[b-d]e"], "ae", false),
            (&["a[b-d]e"], "ace", true),
            (&["a[b-d]e"], "aae", false),
            (&["a[^b-d]e"], "aze", true),
            (&[".*"], ".foo", true),
            (&[".*"], "foo", false),
            (&["abc.def"], "abcdef", false),
            (&["abc.def"], "abc.def", true),
            (&["abc.def"], "abcZdef", false),
            (&["abc?def"], "abcZdef", true),
            (&["abc?def"], "abcdef", false),
            (&["a\\\\"], "a\\", true),
            (&["**/foo/bar"], "foo/bar", true),
            (&["**/foo/bar"], "dir/foo/bar", true),
            (&["**/foo/bar"], "dir/dir2/foo/bar", true),
            (&["abc/**"], "abc", false),
            (&["abc/**"], "abc/def", true),
            (&["abc/**"], "abc/def/ghi", true),
            (&["**/.foo"], ".foo", true),
            (&["**/.foo"], "bar.foo", false),
            (&["a(b)c/def"], "a(b)c/def", true),
            (&["a(b)c/def"], "a(b)c/xyz", false),
            (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
            (&["dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
            (&["dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
            // Exceptions and parents.
            (&["docs", "!docs/README.md"], "docs/README.md", false),
            (&["docs", "!docs/README.md"], "docs/other.md", true),
            (&["docs", "!docs/README.md"], "docs", true),
            (&["docs/*", "!docs/README.md"], "docs/README.md", false),
            (&["*.md", "!README*.md", "README-secret.md"], "README-secret.md", true),
            (&["*.md", "!README*.md", "README-secret.md"], "README.md", false),
            (&["*.md", "!README*.md", "README-secret.md"], "x.md", true),
            (&["a", "!a/b"], "a/b/c", false),
            (&["a", "!a/b", "a/b/c"], "a/b/c/d", true),
            (&["!a"], "a", false),
            (&["/a"], "a", false),
            (&["/a"], "/a", true),
            (&["!a/../b"], "b", true),
            (&["!./a", "a"], "a", true),
            (&["a/b"], "a", false),
            (&["a"], "a/b/c", true),
            (&["a/*"], "a/b/c", true),
            (&["*/b"], "a/b/c", true),
            (&["*"], "a/b", true),
            (&["[*]"], "[^/]", true),
            (&["[*]"], "*", false),
            (&["\u{feff}a*"], "ab", true),
            (&["\u{feff}a"], "a", false),
        ];
        for (pats, path, want) in cases {
            let got = pm(pats).matches_or_parent_matches(path.as_bytes()).unwrap();
            assert_eq!(got, *want, "{pats:?} vs {path:?}");
        }
    }

    /// Walk-style matching must agree with full parent matching on these trees.
    #[test]
    fn using_parent_results_agrees() {
        let pats: &[&[&str]] = &[
            &["a", "!a/b"],
            &["**/*.go", "!vendor/**"],
            &["docs", "!docs/README.md", "docs/README.md/x"],
            &["*", "!a/b/*"],
            &["a/*/c"],
        ];
        let paths = [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/d",
            "a/x",
            "docs",
            "docs/README.md",
            "docs/README.md/x",
            "vendor",
            "vendor/x.go",
            "x.go",
        ];
        for p in pats {
            let m = pm(p);
            for path in paths {
                let mut info = MatchInfo::default();
                let mut got = false;
                let bytes = path.as_bytes();
                for (i, &b) in bytes
                    .iter()
                    .enumerate()
                    .chain(std::iter::once((bytes.len(), &b'/')))
                {
                    if b == b'/' {
                        let (g, ni) = m.matches_using_parent_results(&bytes[..i], &info).unwrap();
                        got = g;
                        info = ni;
                    }
                }
                assert_eq!(
                    got,
                    m.matches_or_parent_matches(bytes).unwrap(),
                    "{p:?} {path}"
                );
            }
        }
    }

    #[test]
    fn using_parent_results_keeps_upstream_quirk() {
        // "!a" is skipped for dir "a" (nothing matched yet), so its child inherits `false` for
        // it and the later "a" pattern, inherited as matched, wins.
        let m = pm(&["!a", "a"]);
        let (top, info) = m
            .matches_using_parent_results(b"a", &MatchInfo::default())
            .unwrap();
        assert!(top);
        let (child, _) = m.matches_using_parent_results(b"a/x", &info).unwrap();
        assert!(child);
        assert_eq!(
            m.matches_using_parent_results(
                b"a/x",
                &MatchInfo {
                    parent_matched: vec![true]
                }
            ),
            Err(PatternError::WrongParentInfo)
        );
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(
            PatternMatcher::new(&["!"]).unwrap_err(),
            PatternError::IllegalExclusion
        );
        assert!(PatternMatcher::new(&["!/"]).is_err());
        assert!(PatternMatcher::new(&["[]a]"]).is_err());
        assert!(PatternMatcher::new(&["a\\"]).is_err());
        assert!(PatternMatcher::new(&["[-]"]).is_err());
        // Passes Go's syntax check (it stops at the first mismatch) but not its regexp compiler:
        // the error surfaces on the first match attempt.
        let m = pm(&["a*["]);
        assert!(matches!(
            m.matches_or_parent_matches(b"abc"),
            Err(PatternError::BadPattern(_))
        ));
        // Empty and blank patterns are ignored.
        assert!(pm(&["", "  "]).is_empty());
    }

    #[test]
    fn regex_escapes_from_patterns() {
        let yes =
            |p: &str, path: &str| pm(&[p]).matches_or_parent_matches(path.as_bytes()).unwrap();
        assert!(yes("a\\*b", "a*b"));
        assert!(!yes("a\\*b", "axb"));
        assert!(yes("\\x41*", "Ab"));
        assert!(yes("*\\d", "a7"));
        assert!(!yes("*\\d", "a٣"));
        assert!(yes("[[:upper:]]*", "Xy"));
        assert!(!yes("a^b*", "a^bc"));
        assert!(yes("a^b", "a^b"));
        // Invalid UTF-8 bytes count as one char each for `?`.
        assert!(pm(&["a??b"])
            .matches_or_parent_matches(b"a\xff\xfeb")
            .unwrap());
        assert!(!pm(&["a?b"])
            .matches_or_parent_matches(b"a\xff\xfeb")
            .unwrap());
        assert!(pm(&["a?b"])
            .matches_or_parent_matches("aéb".as_bytes())
            .unwrap());
    }

    #[test]
    fn ignore_file_reader() {
        let content = b"\xEF\xBB\xBFtest1\n/test2\r\n/a/file/here\n\nlastfile\n# comment\n! /inverted/abs/path\n!\n! \n  #notcomment\n./x/../y/\n/\n";
        assert_eq!(
            parse_ignore_file(content),
            vec![
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!",
                "#notcomment",
                "y",
                "/"
            ]
        );
    }
}
