//! `--cache REF`, the registry cache in one flag: REF, the branch (the flag, the CI's variables or the checkout's HEAD) and the default branch → the registry cache imports and the export it stands for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::cache::{CacheExport, CacheImport, RemoteCache, RemoteKind};
use super::{clip, clip_path, reference};

/// The branch when neither a flag nor the CI names a default one.
const DEFAULT_BRANCH: &str = "main";

/// Longest tag a registry takes (distribution/reference's grammar).
const TAG_MAX: usize = 128;

/// What `--cache REF` expanded into, and why: for the Solve request, `bkrun config` and --debug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCache {
    /// REF as given, and where it was given (`--cache`, `BKRUN_CACHE`, bkrun.toml's `cache`).
    pub reference: String,
    pub source: &'static str,
    /// The refs imported from, in the order BuildKit is given them.
    pub imports: Vec<String>,
    /// The ref exported to.
    pub export: String,
    /// The branches the tags were made from; None when REF had its own tag or digest.
    pub branches: Option<Branches>,
}

/// The branch and default branch, each as a tag and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branches {
    /// None when no flag, CI variable or checkout names one: the default branch alone is used.
    pub branch: Option<Found>,
    /// Why there is no branch (a detached HEAD, no checkout), when there is none.
    pub no_branch_why: Option<String>,
    pub default: Found,
}

/// A branch made into a tag, with the name it was made from and where that was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tag: String,
    pub name: String,
    pub from: String,
}

/// What `--cache` is settled from: the flags, bkrun.toml's `cache` and the checkout to read
/// HEAD from (the build context's directory).
#[derive(Debug, Default, Clone, Copy)]
pub struct Given<'a> {
    pub cache: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub default_branch: Option<&'a str>,
    pub from_file: Option<&'a str>,
    pub checkout: Option<&'a Path>,
}

/// Settles `--cache` (else BKRUN_CACHE, else bkrun.toml's `cache`) into its refs; None when no
/// registry cache is asked for. `env` reads the CI's variables. Every mistake fails here, before a
/// daemon starts.
pub fn settle(
    given: Given<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<RegistryCache>> {
    for (flag, value) in [
        ("--cache-branch", given.branch),
        ("--cache-default-branch", given.default_branch),
    ] {
        if value.is_some_and(|v| tag(v).is_none()) {
            bail!("{flag} is empty: give a branch name, or drop the flag");
        }
    }
    let env_cache = env("BKRUN_CACHE");
    let (reference, source) = match (given.cache, env_cache.as_deref(), given.from_file) {
        (Some(r), _, _) => (r, "--cache"),
        (None, Some(r), _) => (r, "BKRUN_CACHE"),
        (None, None, Some(r)) => (r, "cache in bkrun.toml"),
        (None, None, None) => {
            if let Some(flag) = branch_flag(&given) {
                bail!("{flag} names the branch of --cache REF, which is not given: add --cache REGISTRY/REPO (or set BKRUN_CACHE), or drop {flag}");
            }
            return Ok(None);
        }
    };
    check_reference(reference, source)?;
    if has_own_tag(reference) {
        if let Some(flag) = branch_flag(&given) {
            bail!("{flag} has nothing to name: the registry cache {} (from {source}) has its own tag or digest; drop the tag to have bkrun add :BRANCH, or drop {flag}", clip(reference));
        }
        return Ok(Some(RegistryCache {
            reference: reference.to_string(),
            source,
            imports: vec![reference.to_string()],
            export: reference.to_string(),
            branches: None,
        }));
    }
    let branches = branches(&given, env);
    let default = format!("{reference}:{}", branches.default.tag);
    let (imports, export) = match &branches.branch {
        Some(b) if b.tag != branches.default.tag => {
            let own = format!("{reference}:{}", b.tag);
            (vec![own.clone(), default], own)
        }
        _ => (vec![default.clone()], default),
    };
    Ok(Some(RegistryCache {
        reference: reference.to_string(),
        source,
        imports,
        export,
        branches: Some(branches),
    }))
}

/// The branch flag given, if any, for a refusal that names it.
fn branch_flag(given: &Given<'_>) -> Option<&'static str> {
    if given.branch.is_some() {
        Some("--cache-branch")
    } else if given.default_branch.is_some() {
        Some("--cache-default-branch")
    } else {
        None
    }
}

/// REF, checked as the daemon will parse it, saying where it was given.
fn check_reference(reference: &str, source: &str) -> Result<()> {
    if let Some(why) = reference::problem(reference) {
        let shown = match source {
            "--cache" => format!("--cache {}", clip(reference)),
            "BKRUN_CACHE" => format!("BKRUN_CACHE={}", clip(reference)),
            _ => format!("cache = {:?} in bkrun.toml", clip(reference)),
        };
        bail!("{shown} is not an image reference ({why}): give a repository in lower case, e.g. 127.0.0.1:5000/app/cache (bkrun adds :BRANCH)");
    }
    Ok(())
}

/// Whether REF names its own tag or digest (a colon after the last slash, or an `@`), rather
/// than a repository bkrun tags by branch.
fn has_own_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    reference.contains('@') || last.contains(':')
}

/// The branch (the flag, the CI's variables, the checkout's HEAD) and the default branch (the
/// flag, the CI's variable, `main`).
fn branches(given: &Given<'_>, env: &dyn Fn(&str) -> Option<String>) -> Branches {
    let found = |name: String, from: String| tag(&name).map(|tag| Found { tag, name, from });
    let mut no_branch_why = None;
    let branch = match given.branch {
        Some(b) => found(b.to_string(), "--cache-branch".into()),
        None => match ci_branch(env) {
            Some((name, var)) => found(name, var.into()),
            None => match given.checkout.map(checkout_branch) {
                Some(Ok((name, dir))) => {
                    found(name, format!("the git checkout at {}", clip_path(&dir)))
                }
                Some(Err(why)) => {
                    no_branch_why = Some(why);
                    None
                }
                None => None,
            },
        },
    };
    if branch.is_none() && no_branch_why.is_none() {
        no_branch_why = Some("no CI branch variable and no git checkout".into());
    }
    let default = given
        .default_branch
        .map(|b| (b.to_string(), "--cache-default-branch"))
        .or_else(|| env("CI_DEFAULT_BRANCH").map(|b| (b, "CI_DEFAULT_BRANCH")))
        .or_else(|| {
            env("BUILDKITE_PIPELINE_DEFAULT_BRANCH")
                .map(|b| (b, "BUILDKITE_PIPELINE_DEFAULT_BRANCH"))
        })
        .and_then(|(name, from)| found(name, from.into()))
        .unwrap_or_else(|| Found {
            tag: DEFAULT_BRANCH.into(),
            name: DEFAULT_BRANCH.into(),
            from: "bkrun's default".into(),
        });
    Branches {
        branch,
        no_branch_why,
        default,
    }
}

/// The branch the CI builds, and the variable it came from. A merge request's or pull
/// request's source branch comes first: there the other variables name a merge ref
/// (GitHub's `123/merge`) or the target. Tekton has none: its tasks pass --cache-branch.
fn ci_branch(env: &dyn Fn(&str) -> Option<String>) -> Option<(String, &'static str)> {
    [
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
        "CI_COMMIT_REF_NAME",
        "BUILDKITE_BRANCH",
        "GITHUB_HEAD_REF",
        "GITHUB_REF_NAME",
    ]
    .into_iter()
    .find_map(|var| env(var).map(|v| (v, var)))
}

/// The branch checked out in the git repository holding `dir` (found as git finds it, from
/// `dir` upwards), and the directory holding its `.git`; or why there is none.
fn checkout_branch(dir: &Path) -> std::result::Result<(String, PathBuf), String> {
    let start = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Some((top, git_dir)) = start.ancestors().find_map(git_dir) else {
        return Err(format!("{} is not in a git checkout", clip_path(&start)));
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD"))
        .map_err(|e| format!("cannot read {}: {e}", clip_path(&git_dir.join("HEAD"))))?;
    match head.trim_end().strip_prefix("ref: refs/heads/") {
        Some(branch) if !branch.is_empty() => Ok((branch.to_string(), top)),
        _ => Err(format!(
            "the git checkout at {} has a detached HEAD",
            clip_path(&top)
        )),
    }
}

/// `dir` and its git directory, when `dir` holds `.git`: a directory, or (a worktree, a
/// submodule) a file whose `gitdir:` line names it, relative to `dir` unless absolute.
fn git_dir(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let dot_git = dir.join(".git");
    if dot_git.is_dir() {
        return Some((dir.to_path_buf(), dot_git));
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    Some((dir.to_path_buf(), dir.join(target)))
}

/// A branch name made into a tag: characters a tag cannot hold become `-`, a leading `.` or
/// `-` becomes `_`, and it is cut to 128 characters; None for an empty name.
pub fn tag(branch: &str) -> Option<String> {
    let mut tag: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(TAG_MAX)
        .collect();
    if tag.starts_with(['.', '-']) {
        tag.replace_range(..1, "_");
    }
    (!tag.is_empty()).then_some(tag)
}

impl RegistryCache {
    /// The imports, as the daemon takes them.
    pub fn cache_imports(&self) -> Vec<CacheImport> {
        self.imports
            .iter()
            .map(|r| {
                CacheImport::Remote(RemoteCache {
                    kind: RemoteKind::Registry,
                    attrs: BTreeMap::from([("ref".to_string(), r.clone())]),
                })
            })
            .collect()
    }

    /// The export, as the daemon takes it: every intermediate step (mode=max), as an OCI image
    /// manifest (which registries that refuse an index take), and a failed export (a registry
    /// that refuses the push) does not fail the build.
    pub fn cache_export(&self) -> CacheExport {
        let attrs = [
            ("ref", self.export.as_str()),
            ("mode", "max"),
            ("image-manifest", "true"),
            ("oci-mediatypes", "true"),
            ("ignore-error", "true"),
        ];
        CacheExport::Remote(RemoteCache {
            kind: RemoteKind::Registry,
            attrs: attrs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// One line: what is imported and exported, and where REF and the branches came from.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "import {}; export {} (mode=max); {} from {}",
            self.imports.join(" then "),
            self.export,
            self.reference,
            self.source
        );
        let Some(b) = &self.branches else {
            s.push_str(", which has its own tag");
            return s;
        };
        match &b.branch {
            Some(f) => s.push_str(&format!("; branch {}", shown(f))),
            None => s.push_str(&format!(
                "; no branch ({})",
                b.no_branch_why.as_deref().unwrap_or("none found")
            )),
        }
        s.push_str(&format!("; default branch {}", shown(&b.default)));
        s
    }
}

/// A branch as `describe` shows it: its tag, the name it was made from when that differs, and
/// where it was read.
fn shown(f: &Found) -> String {
    if f.tag == f.name {
        format!("{} from {}", f.tag, f.from)
    } else {
        format!("{} ({:?}) from {}", f.tag, f.name, f.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "127.0.0.1:5000/app/cache";

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn with(given: Given<'_>, vars: &'static [(&'static str, &'static str)]) -> RegistryCache {
        settle(given, &env_of(vars)).unwrap().unwrap()
    }

    fn flag(r: &str) -> Given<'_> {
        Given {
            cache: Some(r),
            ..Given::default()
        }
    }

    fn branch_of(c: &RegistryCache) -> (String, String) {
        let b = c.branches.as_ref().unwrap().branch.as_ref().unwrap();
        (b.tag.clone(), b.from.clone())
    }

    /// A CI's variables, and the tag and variable the branch should come from.
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    #[test]
    fn each_ci_names_its_branch() {
        let cases: [Case; 7] = [
            (
                &[("CI_COMMIT_REF_NAME", "feat/a")],
                "feat-a",
                "CI_COMMIT_REF_NAME",
            ),
            (
                &[
                    ("CI_COMMIT_REF_NAME", "refs/merge-requests/4/head"),
                    ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "fix-1"),
                ],
                "fix-1",
                "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
            ),
            (&[("BUILDKITE_BRANCH", "dev")], "dev", "BUILDKITE_BRANCH"),
            (
                &[("GITHUB_REF_NAME", "12/merge"), ("GITHUB_HEAD_REF", "pr/x")],
                "pr-x",
                "GITHUB_HEAD_REF",
            ),
            // On a push, GitHub sets GITHUB_HEAD_REF empty, which counts as unset.
            (
                &[("GITHUB_REF_NAME", "release")],
                "release",
                "GITHUB_REF_NAME",
            ),
            (&[("GITHUB_REF_NAME", "main")], "main", "GITHUB_REF_NAME"),
            (&[], "", ""),
        ];
        for (vars, tag, from) in cases {
            let c = with(flag(R), vars);
            if tag.is_empty() {
                // No CI, no checkout: the default branch alone.
                assert_eq!(c.imports, [format!("{R}:main")]);
                assert_eq!(c.export, format!("{R}:main"));
                continue;
            }
            assert_eq!(
                branch_of(&c),
                (tag.to_string(), from.to_string()),
                "{vars:?}"
            );
            assert_eq!(c.export, format!("{R}:{tag}"));
            if tag == "main" {
                assert_eq!(c.imports, [format!("{R}:main")]);
            } else {
                assert_eq!(c.imports, [format!("{R}:{tag}"), format!("{R}:main")]);
            }
        }
    }

    #[test]
    fn the_default_branch_comes_from_the_flag_the_ci_or_main() {
        let c = with(
            flag(R),
            &[("CI_COMMIT_REF_NAME", "x"), ("CI_DEFAULT_BRANCH", "master")],
        );
        assert_eq!(c.imports, [format!("{R}:x"), format!("{R}:master")]);
        let d = &c.branches.as_ref().unwrap().default;
        assert_eq!(d.from, "CI_DEFAULT_BRANCH");
        let c = with(flag(R), &[("BUILDKITE_PIPELINE_DEFAULT_BRANCH", "trunk")]);
        assert_eq!(c.imports, [format!("{R}:trunk")]);
        let given = Given {
            branch: Some("feature/x"),
            default_branch: Some("release/1.x"),
            ..flag(R)
        };
        let c = with(given, &[("CI_DEFAULT_BRANCH", "master")]);
        assert_eq!(
            c.imports,
            [format!("{R}:feature-x"), format!("{R}:release-1.x")]
        );
        assert_eq!(
            c.describe(),
            format!("import {R}:feature-x then {R}:release-1.x; export {R}:feature-x (mode=max); {R} from --cache; branch feature-x (\"feature/x\") from --cache-branch; default branch release-1.x (\"release/1.x\") from --cache-default-branch")
        );
    }

    #[test]
    fn ref_comes_from_the_flag_then_the_environment_then_bkrun_toml() {
        let file = Given {
            from_file: Some("r/file"),
            ..Given::default()
        };
        assert_eq!(with(file, &[]).source, "cache in bkrun.toml");
        let c = with(file, &[("BKRUN_CACHE", "r/env")]);
        assert_eq!((c.reference.as_str(), c.source), ("r/env", "BKRUN_CACHE"));
        let c = with(
            Given {
                cache: Some("r/flag"),
                ..file
            },
            &[("BKRUN_CACHE", "r/env")],
        );
        assert_eq!((c.reference.as_str(), c.source), ("r/flag", "--cache"));
        assert_eq!(settle(Given::default(), &env_of(&[])).unwrap(), None);
    }

    #[test]
    fn a_ref_with_a_tag_or_digest_is_used_as_it_is() {
        let digest = "r/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for r in ["r/c:v1", "127.0.0.1:5000/c:latest", digest] {
            let c = with(flag(r), &[("CI_COMMIT_REF_NAME", "x")]);
            assert_eq!(c.imports, [r]);
            assert_eq!(c.export, r);
            assert_eq!(c.branches, None);
            assert!(
                c.describe().ends_with("which has its own tag"),
                "{}",
                c.describe()
            );
        }
        // A port is not a tag.
        assert_eq!(
            with(flag("127.0.0.1:5000/c"), &[]).export,
            "127.0.0.1:5000/c:main"
        );
    }

    #[test]
    fn the_export_is_mode_max_as_an_image_manifest_and_never_fails_the_build() {
        let c = with(flag(R), &[("BUILDKITE_BRANCH", "b")]);
        let e = c.cache_export();
        assert_eq!(e.kind(), "registry");
        assert_eq!(
            e.attrs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            format!("ignore-error=true,image-manifest=true,mode=max,oci-mediatypes=true,ref={R}:b")
        );
        let i = c.cache_imports();
        assert_eq!(i.len(), 2);
        assert_eq!(i[1].attrs()["ref"], format!("{R}:main"));
        assert_eq!(i[1].attrs().len(), 1);
    }

    #[test]
    fn bad_refs_and_flags_are_refused_in_one_line() {
        let e = |g: Given<'_>, vars: &'static [(&'static str, &'static str)]| {
            let e = settle(g, &env_of(vars)).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert_eq!(
            e(flag("127.0.0.1:5000/App"), &[]),
            "--cache 127.0.0.1:5000/App is not an image reference (repository name must be lowercase): give a repository in lower case, e.g. 127.0.0.1:5000/app/cache (bkrun adds :BRANCH)"
        );
        assert!(e(flag("r/c:"), &[])
            .starts_with("--cache r/c: is not an image reference (invalid reference format)"));
        assert!(
            e(Given::default(), &[("BKRUN_CACHE", "a b")]).starts_with("BKRUN_CACHE=a b is not")
        );
        let g = Given {
            from_file: Some("a\nb"),
            ..Given::default()
        };
        assert!(
            e(g, &[]).starts_with(r#"cache = "\"a\\nb\"" in bkrun.toml is not"#),
            "{}",
            e(g, &[])
        );
        let g = Given {
            branch: Some("x"),
            ..Given::default()
        };
        assert!(e(g, &[])
            .starts_with("--cache-branch names the branch of --cache REF, which is not given"));
        let g = Given {
            default_branch: Some("x"),
            ..flag("r/c:1")
        };
        assert!(e(g, &[]).starts_with("--cache-default-branch has nothing to name"));
        let g = Given {
            branch: Some(""),
            ..flag(R)
        };
        assert_eq!(
            e(g, &[]),
            "--cache-branch is empty: give a branch name, or drop the flag"
        );
    }

    #[test]
    fn branch_names_become_tags() {
        assert_eq!(tag("feature/x").as_deref(), Some("feature-x"));
        assert_eq!(tag("Fix_1.2-rc").as_deref(), Some("Fix_1.2-rc"));
        assert_eq!(tag("-x").as_deref(), Some("_x"));
        assert_eq!(tag(".hidden").as_deref(), Some("_hidden"));
        assert_eq!(tag("café au lait").as_deref(), Some("caf--au-lait"));
        assert_eq!(tag(""), None);
        let long = tag(&"b/".repeat(200)).unwrap();
        assert_eq!(long.len(), 128);
        let grammar = regex::Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap();
        for b in [
            "feature/x",
            "-",
            ".",
            "ü",
            "a b",
            "release/2.x",
            &"x".repeat(300),
        ] {
            let t = tag(b).unwrap();
            assert!(grammar.is_match(&t), "{b} -> {t}");
            assert_eq!(reference::problem(&format!("{R}:{t}")), None, "{t}");
        }
    }

    #[test]
    fn the_checkout_names_the_branch() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let sub = repo.join("services/api");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/feature/git\n").unwrap();
        let given = Given {
            checkout: Some(&sub),
            ..flag(R)
        };
        let c = with(given, &[]);
        assert_eq!(
            branch_of(&c),
            (
                "feature-git".into(),
                format!("the git checkout at {}", repo.display())
            )
        );
        // The CI's variables come first: CI checkouts are usually detached.
        assert_eq!(
            branch_of(&with(given, &[("BUILDKITE_BRANCH", "ci")])).0,
            "ci"
        );
        // A detached HEAD has no branch: the default branch alone, and why.
        std::fs::write(
            repo.join(".git/HEAD"),
            "0123456789abcdef0123456789abcdef01234567\n",
        )
        .unwrap();
        let c = with(given, &[]);
        assert_eq!(c.imports, [format!("{R}:main")]);
        assert!(
            c.describe().contains(&format!(
                "no branch (the git checkout at {} has a detached HEAD)",
                repo.display()
            )),
            "{}",
            c.describe()
        );
        // Not in any checkout.
        let c = with(
            Given {
                checkout: Some(d.path()),
                ..flag(R)
            },
            &[],
        );
        assert!(
            c.describe().contains("is not in a git checkout"),
            "{}",
            c.describe()
        );
    }

    #[test]
    fn a_worktree_is_followed_through_its_gitdir_file() {
        let d = tempfile::tempdir().unwrap();
        let main_git = d.path().join("main/.git/worktrees/wt");
        std::fs::create_dir_all(&main_git).unwrap();
        std::fs::write(main_git.join("HEAD"), "ref: refs/heads/wt-branch\n").unwrap();
        let wt = d.path().join("wt");
        std::fs::create_dir_all(&wt).unwrap();
        // Absolute, as `git worktree add` writes it, and relative, as submodules write it.
        for target in [
            main_git.display().to_string(),
            "../main/.git/worktrees/wt".into(),
        ] {
            std::fs::write(wt.join(".git"), format!("gitdir: {target}\n")).unwrap();
            let given = Given {
                checkout: Some(&wt),
                ..flag(R)
            };
            assert_eq!(branch_of(&with(given, &[])).0, "wt-branch");
        }
    }
}
