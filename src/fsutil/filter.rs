//! How a filtered walk applies include/exclude patterns and follow paths to each entry, as fsutil's filter FS does.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::pattern::{clean, glob_match, MatchInfo, Pattern, PatternMatcher};
use super::{Error, Result};

/// What the walk does with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it (and any ancestors not sent yet); descend if it is a directory.
    Emit,
    /// Don't send it, but descend if it is a directory: something inside may still be wanted.
    Pass,
    /// Don't send it and don't descend.
    Skip,
}

/// Per-directory match state handed to the directory's children.
#[derive(Debug, Clone, Default)]
pub struct DirMatch {
    include: MatchInfo,
    exclude: MatchInfo,
}

/// The include/exclude decision for a walk.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    /// No include pattern has glob characters, so a directory can be skipped unless a pattern
    /// lies inside it.
    only_prefix_includes: bool,
    /// Likewise for the `!` exceptions of the exclude list.
    only_prefix_exclude_exceptions: bool,
}

/// Characters that make a pattern more than a plain path prefix (backslash escapes on Unix).
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

/// The pattern with one trailing `/**` and then one trailing `/*` removed.
fn without_trailing_glob(p: &Pattern) -> &str {
    let s = p.text();
    let s = s.strip_suffix("/**").unwrap_or(s);
    s.strip_suffix("/*").unwrap_or(s)
}

/// Whether a pattern (after trimming a trailing glob) names something inside `dir`.
fn lies_inside(p: &Pattern, dir: &[u8]) -> bool {
    let pat = without_trailing_glob(p).as_bytes();
    // "pat/" starts with "dir/"
    pat.len() >= dir.len()
        && pat.starts_with(dir)
        && (pat.len() == dir.len() || pat[dir.len()] == b'/')
}

impl Filter {
    /// Build the filter. `follow_targets` are the resolved follow paths ([`follow_links`]); they
    /// join the include patterns, and the combined list is deduplicated as upstream does.
    pub fn new(
        include_patterns: &[String],
        exclude_patterns: &[String],
        follow_targets: Option<Vec<String>>,
    ) -> Result<Filter> {
        let mut includes = include_patterns.to_vec();
        if let Some(targets) = follow_targets {
            includes.extend(targets);
            includes = dedupe_paths(includes).unwrap_or_default();
        }
        let mut f = Filter {
            only_prefix_includes: true,
            only_prefix_exclude_exceptions: true,
            ..Filter::default()
        };
        if !includes.is_empty() {
            let m = PatternMatcher::new(&includes)?;
            f.only_prefix_includes = !m
                .patterns()
                .iter()
                .any(|p| !p.is_exclusion() && without_trailing_glob(p).contains(PATTERN_CHARS));
            f.include = Some(m);
        }
        if !exclude_patterns.is_empty() {
            let m = PatternMatcher::new(exclude_patterns)?;
            f.only_prefix_exclude_exceptions = !m
                .patterns()
                .iter()
                .any(|p| p.is_exclusion() && without_trailing_glob(p).contains(PATTERN_CHARS));
            f.exclude = Some(m);
        }
        Ok(f)
    }

    /// Whether this filter lets everything through.
    pub fn is_noop(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Decide on `path` given its parent directory's state; also returns the state for its children.
    pub fn check(
        &self,
        path: &[u8],
        is_dir: bool,
        parent: &DirMatch,
    ) -> Result<(Verdict, DirMatch)> {
        let mut pass = false;
        let mut state = DirMatch::default();
        if let Some(inc) = &self.include {
            let (m, info) = inc.matches_using_parent_results(path, &parent.include)?;
            state.include = info;
            if !m {
                if is_dir
                    && self.only_prefix_includes
                    && !inc
                        .patterns()
                        .iter()
                        .any(|p| !p.is_exclusion() && lies_inside(p, path))
                {
                    return Ok((Verdict::Skip, state));
                }
                pass = true;
            }
        }
        if let Some(exc) = &self.exclude {
            let (m, info) = exc.matches_using_parent_results(path, &parent.exclude)?;
            state.exclude = info;
            if m {
                if is_dir
                    && self.only_prefix_exclude_exceptions
                    && !exc
                        .patterns()
                        .iter()
                        .any(|p| p.is_exclusion() && lies_inside(p, path))
                {
                    return Ok((Verdict::Skip, state));
                }
                pass = true;
            }
        }
        Ok((if pass { Verdict::Pass } else { Verdict::Emit }, state))
    }

    /// Whether a file may be opened for its content: the check upstream repeats on open, with
    /// full parent matching rather than the walk's inherited results.
    pub fn allows_open(&self, path: &[u8]) -> Result<bool> {
        if let Some(inc) = &self.include {
            if !inc.matches_or_parent_matches(path)? {
                return Ok(false);
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.matches_or_parent_matches(path)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Drop paths lying under the path kept just before them; `None` when one of them is `.` (the
/// whole tree, so no filtering at all). Meant for sorted input, but applied as is otherwise.
pub fn dedupe_paths(paths: Vec<String>) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(paths.len());
    for p in paths {
        if p == "." {
            return None;
        }
        if let Some(last) = out.last() {
            if p.len() > last.len()
                && p.starts_with(last.as_str())
                && p.as_bytes()[last.len()] == b'/'
            {
                continue;
            }
        } else if p.starts_with('/') {
            // The first comparison is against an empty "last": every absolute path goes.
            continue;
        }
        out.push(p);
    }
    Some(out)
}

/// Go's `path.Join` of two elements.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => clean(b),
        (false, true) => clean(a),
        (false, false) => clean(&format!("{a}/{b}")),
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn parent(p: &str) -> String {
    String::from_utf8_lossy(&super::pattern::dir_bytes(p.as_bytes())).into_owned()
}

/// Whether a name has glob characters; a backslash shields the next char.
fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Resolve follow paths into extra include patterns: every symlink met along each path (with
/// wildcards in a path element matched against the directory listing) is kept together with
/// the paths its targets lead to, relative to `root`. `None` means "everything".
pub fn follow_links(root: &Path, paths: &[String]) -> Result<Option<Vec<String>>> {
    let mut r = Resolver {
        root,
        resolved: BTreeSet::new(),
    };
    for p in paths {
        r.append(p)?;
    }
    Ok(dedupe_paths(r.resolved.into_iter().collect()))
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: BTreeSet<String>,
}

impl Resolver<'_> {
    fn append(&mut self, p: &str) -> Result<()> {
        let mut p = join(".", p);
        let mut current = ".".to_string();
        loop {
            let (first, rest) = match p.split_once('/') {
                Some((f, r)) => (f.to_string(), r.to_string()),
                None => (p.clone(), String::new()),
            };
            current = join(&current, &first);
            let targets = self.read_symlink(&current, true)?;
            p = rest;
            if (p.is_empty() || targets.is_some()) && self.resolved.contains(&current) {
                return Ok(());
            }
            if let Some(targets) = targets {
                self.resolved.insert(current);
                for t in targets {
                    self.append(&join(&t, &p))?;
                }
                return Ok(());
            }
            if p.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
        }
    }

    /// Targets of `p` if it is a symlink (each made absolute against the root), or of every
    /// symlink its wildcard base name matches; `None` if there are none.
    fn read_symlink(&self, p: &str, wildcard: bool) -> Result<Option<Vec<String>>> {
        if p == "." || p == "/" || p == ".." || p.starts_with("../") {
            // The root itself is never a link, and nothing outside it is looked at.
            return Ok(None);
        }
        let name = base(p);
        if wildcard && contains_wildcards(name) {
            let dir = parent(p);
            let full = self.root.join(&dir);
            let rd = match std::fs::read_dir(&full) {
                Ok(rd) => rd,
                Err(e) if gone(&e) => return Ok(None),
                Err(e) => return Err(Error::io("readdir", full, e)),
            };
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(|e| Error::io("readdir", &full, e))?;
                names.push(e.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut out: Option<Vec<String>> = None;
            for n in names {
                if glob_match(name, n.as_bytes()).unwrap_or(false) {
                    let child = join(&dir, &n.to_string_lossy());
                    if let Some(t) = self.read_symlink(&child, false)? {
                        out.get_or_insert_with(Vec::new).extend(t);
                    }
                }
            }
            return Ok(out);
        }
        let full = self.root.join(p);
        let md = match std::fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(Error::io("lstat", full, e)),
        };
        if !md.file_type().is_symlink() {
            return Ok(None);
        }
        let link = std::fs::read_link(&full).map_err(|e| Error::io("readlink", &full, e))?;
        let link = clean(&link.to_string_lossy());
        if link.starts_with('/') {
            return Ok(Some(vec![link]));
        }
        Ok(Some(vec![join("/", &join(&parent(p), &link))]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn verdict(f: &Filter, path: &str, is_dir: bool) -> Verdict {
        // Feed the ancestors first so inherited results are what a walk would have.
        let mut st = DirMatch::default();
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            st = f
                .check(parts[..i].join("/").as_bytes(), true, &st)
                .unwrap()
                .1;
        }
        f.check(path.as_bytes(), is_dir, &st).unwrap().0
    }

    #[test]
    fn exclude_dirs_are_skipped_unless_an_exception_lies_inside() {
        let f = Filter::new(&[], &s(&["node_modules", "build", "!build/keep"]), None).unwrap();
        assert_eq!(verdict(&f, "node_modules", true), Verdict::Skip);
        assert_eq!(verdict(&f, "build", true), Verdict::Pass);
        assert_eq!(verdict(&f, "build/x", false), Verdict::Pass);
        assert_eq!(verdict(&f, "build/keep", false), Verdict::Emit);
        assert_eq!(verdict(&f, "build/keep/y", false), Verdict::Emit);
        assert_eq!(verdict(&f, "src", true), Verdict::Emit);
        // With a glob in an exception every excluded dir must be walked.
        let f = Filter::new(&[], &s(&["vendor", "!vendor/**/*.go"]), None).unwrap();
        assert_eq!(verdict(&f, "vendor", true), Verdict::Pass);
        assert_eq!(verdict(&f, "vendor/a", true), Verdict::Pass);
        assert_eq!(verdict(&f, "vendor/a/b.go", false), Verdict::Emit);
        // An exception "vendor/**" only trims to "vendor", which lies inside vendor.
        let f = Filter::new(&[], &s(&["*", "!vendor/**"]), None).unwrap();
        assert_eq!(verdict(&f, "other", true), Verdict::Skip);
        assert_eq!(verdict(&f, "vendor", true), Verdict::Pass);
        assert_eq!(verdict(&f, "vendor/x", false), Verdict::Emit);
    }

    #[test]
    fn includes_descend_only_towards_their_targets() {
        let f = Filter::new(&s(&["a/b/c", "d"]), &[], None).unwrap();
        assert_eq!(verdict(&f, "a", true), Verdict::Pass);
        assert_eq!(verdict(&f, "a/b", true), Verdict::Pass);
        assert_eq!(verdict(&f, "a/x", true), Verdict::Skip);
        assert_eq!(verdict(&f, "a/b/c", false), Verdict::Emit);
        assert_eq!(verdict(&f, "ab", true), Verdict::Skip);
        assert_eq!(verdict(&f, "d", true), Verdict::Emit);
        assert_eq!(verdict(&f, "d/e", false), Verdict::Emit);
        assert_eq!(verdict(&f, "e", false), Verdict::Pass);
        // A glob include makes every dir worth a look.
        let f = Filter::new(&s(&["*.go"]), &[], None).unwrap();
        assert_eq!(verdict(&f, "x", true), Verdict::Pass);
        assert_eq!(verdict(&f, "x.go", false), Verdict::Emit);
        // Include and exclude together.
        let f = Filter::new(&s(&["src"]), &s(&["src/gen"]), None).unwrap();
        assert_eq!(verdict(&f, "src/gen", true), Verdict::Skip);
        assert_eq!(verdict(&f, "src/main.rs", false), Verdict::Emit);
        // A list of only blanks still is an include list: nothing gets in.
        let f = Filter::new(&s(&[""]), &[], None).unwrap();
        assert_eq!(verdict(&f, "x", true), Verdict::Skip);
    }

    #[test]
    fn open_check_uses_full_parent_matching() {
        let f = Filter::new(&s(&["a"]), &s(&["a/b"]), None).unwrap();
        assert!(f.allows_open(b"a/x").unwrap());
        assert!(!f.allows_open(b"a/b/c").unwrap());
        assert!(!f.allows_open(b"z").unwrap());
    }

    #[test]
    fn dedupe() {
        assert_eq!(
            dedupe_paths(s(&["a", "a/b", "ab", "b/c"])),
            Some(s(&["a", "ab", "b/c"]))
        );
        assert_eq!(dedupe_paths(s(&["a", ".", "b"])), None);
        // Only the immediately preceding kept path counts.
        assert_eq!(
            dedupe_paths(s(&["a", "b", "a/c"])),
            Some(s(&["a", "b", "a/c"]))
        );
        assert_eq!(dedupe_paths(s(&["/x", "y"])), Some(s(&["y"])));
    }

    #[test]
    fn follow_links_resolves_chains_and_wildcards() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("dir/sub")).unwrap();
        std::fs::write(r.join("dir/sub/f"), "x").unwrap();
        std::fs::write(r.join("plain"), "x").unwrap();
        symlink("dir/sub", r.join("l1")).unwrap();
        symlink("../l1/f", r.join("dir/l2")).unwrap();
        symlink("/dir", r.join("abs")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        symlink("plain", r.join("w1.txt")).unwrap();
        std::fs::write(r.join("w2.txt"), "x").unwrap();
        let got = |p: &[&str]| follow_links(r, &s(p)).unwrap();
        assert_eq!(got(&["plain"]), Some(s(&["plain"])));
        assert_eq!(got(&["missing/x"]), Some(s(&["missing/x"])));
        assert_eq!(got(&["l1/f"]), Some(s(&["dir/sub/f", "l1"])));
        assert_eq!(got(&["dir/l2"]), Some(s(&["dir/l2", "dir/sub/f", "l1"])));
        assert_eq!(got(&["/abs/sub"]), Some(s(&["abs", "dir/sub"])));
        assert_eq!(got(&["loop"]), Some(s(&["loop"])));
        assert_eq!(got(&["*.txt"]), Some(s(&["*.txt", "plain"])));
        assert_eq!(got(&["*.none"]), Some(s(&["*.none"])));
        assert_eq!(got(&["."]), None);
        assert_eq!(got(&["dir", "dir/sub"]), Some(s(&["dir"])));
    }
}
