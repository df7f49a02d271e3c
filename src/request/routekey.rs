//! The route key a pool of daemons is ordered by: which project this is (its git origin and the context's place in it, else the context's canonical path) and the target platforms; `--route-key` overrides.
//!
//! The key decides which daemon's cache a build meets, so it names the project the same way
//! wherever the build runs: CI agents check a repository out under different paths
//! (`/buildkite/builds/agent-3/org/app`), and every Tekton task calls its workspace
//! `/workspace/source`, so a path alone would split one project over all daemons or put every
//! project on one. A checkout with an `origin` remote is therefore named by that remote (without
//! scheme, credentials, port or `.git`) and the context's path inside it. The Dockerfile does not
//! enter: builds of one context share its transferred files and its base stages, which is the
//! cache worth keeping together (`--route-key` splits them when load matters more).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::request::build::BuildSpec;

/// The default key of a build: its main local context (else a URL context, else its Dockerfile
/// dir, else `cwd`) and its `platform` option, sorted.
pub fn for_build(spec: &BuildSpec, cwd: &Path) -> String {
    let project = if let Some(dir) = spec.locals.get("context") {
        project(&cwd.join(dir))
    } else if let Some(url) = spec.opts.get("context") {
        url_project(url)
    } else if let Some(dir) = spec.locals.get("dockerfile") {
        project(&cwd.join(dir))
    } else {
        project(cwd)
    };
    let mut platforms: Vec<&str> = spec
        .opts
        .get("platform")
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    platforms.sort_unstable();
    platforms.dedup();
    if platforms.is_empty() {
        project
    } else {
        format!("{project} {}", platforms.join(","))
    }
}

/// The default key of work that is not a build (`exec`, `du`, `bkrun config`): the directory it
/// runs in, named as a build context there would be.
pub fn for_dir(dir: &Path) -> String {
    project(dir)
}

/// `for_dir` of each of `dirs`, reading each checkout's git config once: a build's contexts
/// (context, dockerfile, named ones) are mostly dirs of one checkout.
pub fn for_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Vec<String> {
    let mut origins = HashMap::new();
    dirs.into_iter()
        .map(|d| project_in(d, &mut origins))
        .collect()
}

/// `origin`'s URL and the path inside the checkout, or the canonical path.
fn project(dir: &Path) -> String {
    project_in(dir, &mut HashMap::new())
}

/// `project`, with the origins of checkouts already read (by their top dir).
fn project_in(dir: &Path, origins: &mut HashMap<PathBuf, Option<String>>) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match git_origin(&dir, origins) {
        Some((url, inside)) if inside.as_os_str().is_empty() => url,
        Some((url, inside)) => format!("{url}:{}", inside.display()),
        None => dir.display().to_string(),
    }
}

/// A URL context (`https://host/org/repo.git#ref:subdir`): the repository, and the subdir; the
/// ref does not enter, as branches of one repository share most of their cache.
fn url_project(url: &str) -> String {
    let (repo, fragment) = url.split_once('#').unwrap_or((url, ""));
    let sub = fragment
        .split_once(':')
        .map_or("", |(_, s)| s)
        .trim_matches('/');
    if sub.is_empty() {
        normalize_remote(repo)
    } else {
        format!("{}:{sub}", normalize_remote(repo))
    }
}

/// The checkout holding `dir` (the nearest ancestor with a `.git`), its `origin` URL normalized,
/// and `dir`'s path inside it. None outside a checkout, or with no `origin`.
fn git_origin(
    dir: &Path,
    origins: &mut HashMap<PathBuf, Option<String>>,
) -> Option<(String, PathBuf)> {
    let top = dir.ancestors().find(|a| a.join(".git").exists())?;
    let url = origins
        .entry(top.to_path_buf())
        .or_insert_with(|| checkout_origin(top))
        .clone()?;
    let inside = dir.strip_prefix(top).ok()?.to_path_buf();
    Some((url, inside))
}

/// The normalized `origin` URL of the checkout at `top`.
fn checkout_origin(top: &Path) -> Option<String> {
    let dot_git = top.join(".git");
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        // A worktree or submodule: `.git` is a file saying where the git dir is.
        let text = fs::read_to_string(&dot_git).ok()?;
        let to = text.strip_prefix("gitdir:")?.trim();
        top.join(to)
    };
    // A linked worktree keeps its config in the main repository's git dir.
    let common = match fs::read_to_string(git_dir.join("commondir")) {
        Ok(c) => git_dir.join(c.trim()),
        Err(_) => git_dir,
    };
    let config = fs::read_to_string(common.join("config")).ok()?;
    Some(normalize_remote(&origin_url(&config)?))
}

/// `url` of `[remote "origin"]` in a git config (section and key names are case-insensitive,
/// the subsection is not).
fn origin_url(config: &str) -> Option<String> {
    let mut in_origin = false;
    for line in config.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']');
            let (section, sub) = header
                .split_once(char::is_whitespace)
                .unwrap_or((header, ""));
            in_origin = section.eq_ignore_ascii_case("remote") && sub.trim() == "\"origin\"";
            continue;
        }
        if !in_origin {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("url") {
                let v = v.trim().trim_matches('"');
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// One name for one repository however it is cloned: `https://user:token@GitHub.com/org/app.git`,
/// `git@github.com:org/app` and `ssh://git@github.com:22/org/app` are all `github.com/org/app`.
fn normalize_remote(url: &str) -> String {
    let (rest, scp) = match url.split_once("://") {
        Some((_, rest)) => (rest, false),
        // scp-like `user@host:path`: a colon before any slash.
        None => (url, url.find(':').is_some_and(|c| !url[..c].contains('/'))),
    };
    let (authority, path) = if scp {
        rest.split_once(':').unwrap_or((rest, ""))
    } else {
        rest.split_once('/').unwrap_or((rest, ""))
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if !scp && !host.ends_with(']') {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    } else {
        host
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    if host.is_empty() {
        // A local path as the remote: keep it as it is.
        return url.trim_end_matches('/').to_string();
    }
    format!("{}/{path}", host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(locals: &[(&str, &Path)], opts: &[(&str, &str)]) -> BuildSpec {
        let args = crate::request::flags::BuildFlags {
            frontend: Some("dockerfile.v0".into()),
            ..Default::default()
        };
        let settings = crate::config::Settings::load(
            &Default::default(),
            &crate::host::fake::FakeHost::user(),
        )
        .unwrap();
        let mut s =
            crate::request::build::resolve(&args, &settings, &crate::host::fake::FakeHost::user())
                .unwrap();
        s.locals = locals
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect::<BTreeMap<_, _>>();
        s.opts = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    #[test]
    fn remotes_are_named_one_way() {
        for url in [
            "https://github.com/org/app.git",
            "https://user:token@GitHub.com/org/app",
            "git@github.com:org/app.git",
            "ssh://git@github.com:22/org/app/",
            "git://github.com/org/app",
        ] {
            assert_eq!(normalize_remote(url), "github.com/org/app", "{url}");
        }
        assert_eq!(normalize_remote("/srv/git/app.git"), "/srv/git/app.git");
        assert_eq!(
            url_project("https://github.com/org/app.git#main:services/api"),
            "github.com/org/app:services/api"
        );
        assert_eq!(
            url_project("https://github.com/org/app.git#v1"),
            "github.com/org/app"
        );
    }

    #[test]
    fn the_origin_url_is_read_from_a_git_config() {
        let c = "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://x/y\n[Remote \"origin\"]\n\tURL = git@github.com:org/app.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n";
        assert_eq!(origin_url(c).as_deref(), Some("git@github.com:org/app.git"));
        assert_eq!(origin_url("[remote \"upstream\"]\nurl = a\n"), None);
    }

    #[test]
    fn a_checkout_is_named_by_its_origin_wherever_it_lives() {
        let t = tempfile::tempdir().unwrap();
        for agent in ["agent-1", "agent-2"] {
            let top = t.path().join(agent).join("app");
            fs::create_dir_all(top.join(".git")).unwrap();
            fs::create_dir_all(top.join("services/api")).unwrap();
            fs::write(
                top.join(".git/config"),
                "[remote \"origin\"]\n\turl = https://github.com/org/app.git\n",
            )
            .unwrap();
            assert_eq!(for_dir(&top), "github.com/org/app");
            assert_eq!(
                for_dir(&top.join("services/api")),
                "github.com/org/app:services/api"
            );
            // Several dirs at once (a build's locals), the config read once: the same names.
            let (api, elsewhere) = (top.join("services/api"), t.path().to_path_buf());
            assert_eq!(
                for_dirs([top.as_path(), &api, &elsewhere]),
                [for_dir(&top), for_dir(&api), for_dir(&elsewhere)]
            );
        }
        // A linked worktree: `.git` is a file, the config is in the main git dir.
        let wt = t.path().join("wt");
        fs::create_dir_all(t.path().join("agent-1/app/.git/worktrees/wt")).unwrap();
        fs::write(
            t.path().join("agent-1/app/.git/worktrees/wt/commondir"),
            "../..\n",
        )
        .unwrap();
        fs::create_dir_all(&wt).unwrap();
        fs::write(
            wt.join(".git"),
            format!(
                "gitdir: {}\n",
                t.path().join("agent-1/app/.git/worktrees/wt").display()
            ),
        )
        .unwrap();
        assert_eq!(for_dir(&wt), "github.com/org/app");
        // No checkout: the canonical path.
        let plain = t.path().join("plain");
        fs::create_dir_all(&plain).unwrap();
        let canon = fs::canonicalize(&plain).unwrap().display().to_string();
        assert_eq!(for_dir(&plain), canon);
        assert_eq!(for_dir(&plain.join("../plain")), canon);
    }

    #[test]
    fn a_build_routes_by_its_context_and_platforms() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        let df = t.path().join("df");
        fs::create_dir_all(&ctx).unwrap();
        fs::create_dir_all(&df).unwrap();
        let canon = fs::canonicalize(&ctx).unwrap().display().to_string();
        let s = spec(&[("context", &ctx), ("dockerfile", &df)], &[]);
        assert_eq!(for_build(&s, Path::new("/")), canon);
        // Relative to the directory bkrun runs in.
        let s = spec(&[("context", Path::new("ctx"))], &[]);
        assert_eq!(for_build(&s, t.path()), canon);
        let s = spec(
            &[("context", &ctx)],
            &[("platform", "linux/arm64, linux/amd64,linux/arm64")],
        );
        assert_eq!(
            for_build(&s, Path::new("/")),
            format!("{canon} linux/amd64,linux/arm64")
        );
        let s = spec(&[], &[("context", "https://github.com/org/app.git#main")]);
        assert_eq!(for_build(&s, Path::new("/")), "github.com/org/app");
        let s = spec(&[("dockerfile", &df)], &[]);
        assert!(for_build(&s, Path::new("/")).ends_with("/df"));
    }
}
