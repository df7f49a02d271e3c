//! What the receiver checks of every entry's path before touching anything: clean, relative, inside the destination, and in the walker's order (each entry's parent directory came before it, names within a directory strictly increasing bytewise).

use super::protocol;
use crate::fsutil::pattern::clean;
use crate::fsutil::walk::compare_paths;
use crate::fsutil::Result;

/// Paths must be clean, relative and stay inside the destination.
pub(super) fn check_path(p: &str) -> Result<()> {
    if p.is_empty() || p == "." || p.contains('\0') {
        return protocol(format!("invalid path {p:?}"));
    }
    if clean(p) != p {
        return protocol(format!("unclean path {p:?}"));
    }
    if p.starts_with('/') {
        return protocol(format!("absolute path {p:?}"));
    }
    if p == ".." || p.starts_with("../") {
        return protocol(format!("path escapes destination {p:?}"));
    }
    Ok(())
}

/// The receiver's order check: every entry's parent directory came before it, and names within
/// a directory strictly increase bytewise.
#[derive(Debug)]
pub(super) struct OrderCheck {
    /// (directory, last name seen in it), from the root down to the current directory.
    stack: Vec<(String, String)>,
}

impl Default for OrderCheck {
    fn default() -> Self {
        OrderCheck {
            stack: vec![(String::new(), String::new())],
        }
    }
}

impl OrderCheck {
    pub fn check(&mut self, path: &str, is_dir: bool) -> Result<()> {
        let (dir, base) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        // Leave directories that sort after this entry's parent: their subtrees are done.
        while self.stack.len() > 1
            && self
                .stack
                .last()
                .is_some_and(|(d, _)| compare_paths(d, dir) == std::cmp::Ordering::Greater)
        {
            self.stack.pop();
        }
        let Some((top, last)) = self.stack.last_mut() else {
            return protocol("order check lost its root".into());
        };
        if top != dir || last.as_str() >= base {
            return protocol(format!(
                "changes out of order: {path:?} after {:?}",
                if top.is_empty() {
                    last.clone()
                } else {
                    format!("{top}/{last}")
                }
            ));
        }
        *last = base.to_string();
        if is_dir {
            self.stack.push((path.to_string(), String::new()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_check() {
        let mut c = OrderCheck::default();
        for (p, d) in [
            ("a", true),
            ("a/b", true),
            ("a/b/c", false),
            ("a/d", false),
            ("a-b", false),
            ("a.txt", false),
            ("b", true),
            ("b/x", false),
            ("c", false),
        ] {
            c.check(p, d).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let fails = |seq: &[(&str, bool)]| {
            let mut c = OrderCheck::default();
            seq.iter().any(|(p, d)| c.check(p, *d).is_err())
        };
        assert!(fails(&[("b", false), ("a", false)]));
        assert!(fails(&[("a", false), ("a", false)]));
        assert!(fails(&[("a/b", false)]));
        assert!(
            fails(&[("a", false), ("a/b", false)]),
            "parent must be a dir"
        );
        assert!(fails(&[("a-b", false), ("a", true), ("a/x", false)]));
        assert!(fails(&[("a", true), ("b", true), ("a/x", false)]));
        assert!(!fails(&[
            ("a", true),
            ("a/x", true),
            ("a/x/y", false),
            ("a/z", false)
        ]));
    }

    #[test]
    fn paths_are_checked() {
        for bad in [
            "", ".", "/a", "a/", "a//b", "./a", "a/./b", "..", "../a", "a/../b", "a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "..a", "a..", "a/..b", "é ☺"] {
            check_path(good).unwrap();
        }
    }
}
