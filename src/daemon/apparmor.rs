//! The AppArmor profile `bkrun doctor --apparmor-profile` prints: under Ubuntu's kernel.apparmor_restrict_unprivileged_userns=1 it lets rootlesskit, buildkitd and bkrun (at the paths this user's PATH finds) create user namespaces, and leaves the restriction on for every other program.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::host::Host;

/// Where the printed profile is meant to go; apparmor.service loads /etc/apparmor.d at boot.
pub const PROFILE_FILE: &str = "/etc/apparmor.d/bkrun";

/// Paths the apparmor package's own profiles already attach to with `userns` (Ubuntu 24.04's
/// /etc/apparmor.d/rootlesskit). A second profile for the same path would make the kernel
/// refuse to choose ("conflicting profile attachments") and leave the program unconfined, so
/// restricted: these are named, not profiled again.
const SHIPPED: &[(&str, &str)] = &[("/usr/bin/rootlesskit", "rootlesskit")];

/// One program the profile covers: the name of its profile, and the file the kernel sees
/// executed (symlinks followed, as AppArmor matches the executable's real path).
pub struct Program {
    pub profile: &'static str,
    pub what: &'static str,
    pub path: Option<PathBuf>,
}

/// rootlesskit (makes the daemon's user namespace), buildkitd (runs under it and makes the
/// build containers' namespaces) and bkrun (its pre-flight probe and namespace init make user
/// namespaces too), as PATH and BUILDKITD/ROOTLESSKIT find them.
pub fn programs(host: &dyn Host, buildkitd: &str, rootlesskit: &str) -> Vec<Program> {
    let found = |p: Option<PathBuf>| p.map(|p| resolve(host, &p));
    vec![
        Program {
            profile: "bkrun-rootlesskit",
            what: "rootlesskit",
            path: found(host.which(rootlesskit)),
        },
        Program {
            profile: "bkrun-buildkitd",
            what: "buildkitd",
            path: found(host.which(buildkitd)),
        },
        Program {
            profile: "bkrun",
            what: "bkrun",
            path: found(host.current_exe()),
        },
    ]
}

/// `path` with every symlink followed (at most 40, the kernel's own limit).
fn resolve(host: &dyn Host, path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match host.read_link(&p) {
            Some(t) => p = p.parent().unwrap_or(Path::new("/")).join(t),
            None => break,
        }
    }
    p
}

/// The profile file, with the commands that load it in its opening comments.
pub fn profile(programs: &[Program]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# bkrun: lets rootlesskit, buildkitd and bkrun create user namespaces where kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10 and later); every other program stays restricted.");
    let _ = writeln!(s, "# Each profile is unconfined but for its name and the userns rule, as the apparmor package's own profiles for such programs are.");
    let _ = writeln!(s, "# The paths are those this user's PATH finds; print it again after moving a program. Load it as root on the host:");
    let _ = writeln!(
        s,
        "#   bkrun doctor --apparmor-profile | sudo tee {PROFILE_FILE} >/dev/null"
    );
    let _ = writeln!(s, "#   sudo apparmor_parser -r {PROFILE_FILE}");
    let _ = writeln!(s, "abi <abi/4.0>,");
    let _ = writeln!(s, "include <tunables/global>");
    for p in programs {
        let Some(path) = &p.path else {
            let _ = writeln!(s, "\n# {}: not found on PATH, so not covered; install it (or set BUILDKITD / ROOTLESSKIT) and print this again", p.what);
            continue;
        };
        let shown = path.display().to_string();
        if let Some((_, name)) = SHIPPED.iter().find(|(p, _)| *p == shown) {
            let _ = writeln!(s, "\n# {shown}: the apparmor package's own profile {name:?} (/etc/apparmor.d/{name}) already allows it userns; a second profile for the path would conflict with it");
            continue;
        }
        let _ = writeln!(
            s,
            "\nprofile {} {} flags=(unconfined) {{\n  userns,\n}}",
            p.profile,
            attachment(&shown)
        );
    }
    s
}

/// A path as an attachment: AppArmor reads it as a pattern, so its pattern characters are
/// escaped, and a path with blanks or quotes is quoted.
fn attachment(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if matches!(
            c,
            '*' | '?' | '[' | ']' | '{' | '}' | '^' | '\\' | '"' | ','
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    if path.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("\"{out}\"")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    /// A checker for the part of AppArmor 4's policy grammar (apparmor.d(5): PROFILE FILE,
    /// PREAMBLE, ABI, INCLUDE, PROFILE, PROFILE FLAG CONDS, USERNS RULE) the profile uses.
    /// Debian 12's parser (AppArmor 3.0) predates the `userns` rule, so it cannot check this.
    fn check_grammar(text: &str) -> Result<usize, String> {
        let mut profiles = 0;
        let mut in_profile = false;
        let mut rules = 0;
        let mut preamble = true;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = |why: &str| format!("line {}: {why}: {raw:?}", n + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if in_profile {
                match line {
                    "}" if rules > 0 => in_profile = false,
                    "}" => return Err(at("a profile with no rule")),
                    // USERNS RULE = [ QUALIFIERS ] 'userns' [ 'create' ], then the comma.
                    "userns," | "userns create," => rules += 1,
                    _ => return Err(at("not a userns rule")),
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("abi ") {
                // ABI = 'abi' ( ABS PATH | MAGIC PATH ) ',', in the preamble only.
                if !preamble || rest != "<abi/4.0>," {
                    return Err(at("the abi must be <abi/4.0>, first, with its comma"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("include ") {
                // INCLUDE takes no comma.
                if !(rest.starts_with('<') && rest.ends_with('>')) {
                    return Err(at("an include names a magic path <…> with no comma"));
                }
                continue;
            }
            let Some(head) = line.strip_prefix("profile ") else {
                return Err(at("neither preamble nor profile"));
            };
            check_head(head).map_err(at)?;
            preamble = false;
            in_profile = true;
            rules = 0;
            profiles += 1;
        }
        if in_profile {
            return Err("the last profile is not closed".into());
        }
        Ok(profiles)
    }

    /// PROFILE = 'profile' PROFILE NAME ATTACHMENT PROFILE FLAG CONDS '{', as printed: after
    /// `profile `, up to the brace.
    fn check_head(head: &str) -> Result<(), &'static str> {
        let head = head
            .strip_suffix(" {")
            .ok_or("a profile head ends with ' {'")?;
        let head = head
            .strip_suffix(" flags=(unconfined)")
            .ok_or("flags=(unconfined) expected")?;
        let (name, attach) = head
            .split_once(' ')
            .ok_or("a profile name then an attachment")?;
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err("an unquoted profile name starts alphanumeric");
        }
        let bare = attach
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .unwrap_or(attach);
        if !bare.starts_with('/') {
            return Err("an attachment is an absolute path");
        }
        if bare == attach && bare.contains(char::is_whitespace) {
            return Err("an attachment with blanks must be quoted");
        }
        // Pattern characters must come escaped, or the attachment is a glob.
        let mut chars = bare.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '*' | '?' | '[' | ']' | '{' | '}' | '^' | ',' => {
                    return Err("an unescaped pattern character")
                }
                _ => {}
            }
        }
        Ok(())
    }

    #[test]
    fn the_profile_follows_apparmor_4_s_grammar() {
        let h = FakeHost {
            programs: vec!["buildkitd", "rootlesskit"],
            ..FakeHost::user()
        };
        // The fake's PATH puts rootlesskit at /usr/bin, where Ubuntu's own profile attaches.
        let text = profile(&programs(&h, "buildkitd", "rootlesskit"));
        assert_eq!(check_grammar(&text), Ok(2), "{text}");
        assert!(
            text.contains(
                "profile bkrun-buildkitd /usr/bin/buildkitd flags=(unconfined) {\n  userns,\n}"
            ),
            "{text}"
        );
        assert!(
            text.contains("profile bkrun /usr/local/bin/bkrun"),
            "{text}"
        );
        assert!(
            text.contains(
                "# /usr/bin/rootlesskit: the apparmor package's own profile \"rootlesskit\""
            ),
            "{text}"
        );
        assert!(text.contains("sudo apparmor_parser -r /etc/apparmor.d/bkrun"));
    }

    #[test]
    fn links_are_followed_and_odd_paths_escaped() {
        let h = FakeHost {
            programs: vec!["buildkitd", "rootlesskit"],
            // rootlesskit installed elsewhere and linked onto PATH.
            links: vec![("/usr/bin/rootlesskit", "/opt/rk v2/rootless*kit")],
            ..FakeHost::user()
        };
        let text = profile(&programs(&h, "buildkitd", "rootlesskit"));
        assert_eq!(check_grammar(&text), Ok(3), "{text}");
        assert!(
            text.contains(r#"profile bkrun-rootlesskit "/opt/rk v2/rootless\*kit" flags"#),
            "{text}"
        );
        let missing = FakeHost {
            programs: vec!["buildkitd"],
            ..FakeHost::user()
        };
        let text = profile(&programs(&missing, "buildkitd", "rootlesskit"));
        assert_eq!(check_grammar(&text), Ok(2), "{text}");
        assert!(text.contains("# rootlesskit: not found on PATH"), "{text}");
    }

    #[test]
    fn the_checker_refuses_what_the_parser_would() {
        for bad in [
            "abi <abi/4.0>,\nprofile x /a {\n  userns,\n}\n",
            "abi <abi/4.0>\nprofile x /a flags=(unconfined) {\n  userns,\n}\n",
            "profile x /a flags=(unconfined) {\n  userns\n}\n",
            "profile x /a b flags=(unconfined) {\n  userns,\n}\n",
            "profile x /a* flags=(unconfined) {\n  userns,\n}\n",
            "include <tunables/global>,\n",
        ] {
            assert!(check_grammar(bad).is_err(), "{bad}");
        }
    }
}
