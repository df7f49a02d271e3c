//! Where the daemon keeps its state and its socket, chosen from the UID and overridable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::host::{Host, PathKind};

/// Paths of one run. The state dir is the cache and survives; the socket does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state_dir: PathBuf,
    /// None: a private 0700 directory under the temp dir, made for this run (pods set no XDG_RUNTIME_DIR).
    pub socket_dir: Option<PathBuf>,
    /// Where the run dir goes: $TMPDIR when it is a usable directory, else /tmp.
    pub temp_dir: PathBuf,
    /// $XDG_RUNTIME_DIR when it is a usable directory; a missing or unwritable one (an image
    /// run under another uid, a read-only root) is as good as unset.
    pub runtime_dir: Option<PathBuf>,
    /// Why the state dir is in the temp dir rather than under HOME, said once at start-up.
    pub state_fallback: Option<String>,
}

/// Where a non-root user's private socket dir goes when XDG_RUNTIME_DIR is unset.
pub const PRIVATE_SOCKET_DIR: &str = "a private 0700 directory under $TMPDIR";

pub fn choose(host: &dyn Host, root: Option<&Path>, socket_dir: Option<&Path>) -> Result<Paths> {
    let euid = host.euid();
    let state_dir = match root {
        Some(r) => r.to_path_buf(),
        None if euid == 0 => PathBuf::from("/var/lib/buildkit"),
        None => match (host.env("XDG_DATA_HOME"), host.env("HOME")) {
            (Some(d), _) => Path::new(&d).join("buildkit"),
            (None, Some(h)) => Path::new(&h).join(".local/share/buildkit"),
            (None, None) => bail!(
                "cannot choose a state dir for uid {euid}: neither XDG_DATA_HOME nor HOME is set; pass --root DIR"
            ),
        },
    };
    let runtime_dir = host
        .env("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| host.dir_usable(d));
    let socket_dir = match socket_dir {
        Some(d) => Some(d.to_path_buf()),
        None if euid == 0 => Some(PathBuf::from("/run/buildkit")),
        None => runtime_dir.as_ref().map(|d| d.join("buildkit")),
    };
    let temp_dir = host
        .env("TMPDIR")
        .map(PathBuf::from)
        .filter(|d| host.dir_usable(d))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    // An arbitrary uid (OpenShift's) runs with the image's HOME, or `/`, which it cannot write:
    // the cache then lives in the temp dir, as long as the pod does.
    let (state_dir, state_fallback) = if root.is_none() && euid != 0 && !creatable(host, &state_dir)
    {
        let dir = temp_dir.join(format!("buildkit-{euid}"));
        let why = format!(
            "uid {euid} cannot create the state dir {}; using {} (the cache lasts as long as it does: set XDG_DATA_HOME or --root to a writable volume to keep it)",
            state_dir.display(),
            dir.display()
        );
        (dir, Some(why))
    } else {
        (state_dir, None)
    };
    Ok(Paths {
        state_dir,
        socket_dir,
        temp_dir,
        runtime_dir,
        state_fallback,
    })
}

/// `dir` is a usable directory, or its nearest existing ancestor is one (so it can be made).
/// An ancestor that is a file, or a directory this user cannot write, makes it fail.
fn creatable(host: &dyn Host, dir: &Path) -> bool {
    let mut d = Some(dir);
    while let Some(p) = d {
        match host.path_kind(p) {
            PathKind::Dir => return host.dir_usable(p),
            PathKind::Missing => d = p.parent(),
            PathKind::File | PathKind::Special => return false,
        }
    }
    // Nothing on the way exists (only a test double says so): let creating it tell.
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn root_uses_system_paths() {
        let p = choose(&FakeHost::root(), None, None).unwrap();
        assert_eq!(p.state_dir, Path::new("/var/lib/buildkit"));
        assert_eq!(p.socket_dir.as_deref(), Some(Path::new("/run/buildkit")));
    }

    #[test]
    fn user_uses_xdg_dirs() {
        let h = FakeHost {
            env: vec![
                ("HOME", "/home/u"),
                ("XDG_DATA_HOME", "/data"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ],
            usable_dirs: vec!["/run/user/1000"],
            ..FakeHost::user()
        };
        let p = choose(&h, None, None).unwrap();
        assert_eq!(p.state_dir, Path::new("/data/buildkit"));
        assert_eq!(
            p.socket_dir.as_deref(),
            Some(Path::new("/run/user/1000/buildkit"))
        );
    }

    #[test]
    fn an_unusable_runtime_dir_or_tmpdir_is_not_used() {
        let h = FakeHost {
            env: vec![
                ("HOME", "/home/u"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("TMPDIR", "/home/user/.local/tmp"),
            ],
            ..FakeHost::user()
        };
        let p = choose(&h, None, None).unwrap();
        assert_eq!(p.socket_dir, None);
        assert_eq!(p.runtime_dir, None);
        assert_eq!(p.temp_dir, Path::new("/tmp"));
    }

    #[test]
    fn user_in_a_pod_falls_back_to_home_and_a_private_dir() {
        let p = choose(&FakeHost::user(), None, None).unwrap();
        assert_eq!(p.state_dir, Path::new("/home/u/.local/share/buildkit"));
        assert_eq!(p.socket_dir, None);
    }

    #[test]
    fn overrides_win() {
        let p = choose(
            &FakeHost::user(),
            Some(Path::new("/cache")),
            Some(Path::new("/sock")),
        )
        .unwrap();
        assert_eq!(p.state_dir, Path::new("/cache"));
        assert_eq!(p.socket_dir.as_deref(), Some(Path::new("/sock")));
    }

    #[test]
    fn an_arbitrary_uid_that_cannot_write_home_keeps_its_state_in_the_temp_dir() {
        // OpenShift's restricted SCC: uid 1000680000, no passwd entry, the image's HOME (owned
        // by uid 1000) and its XDG_RUNTIME_DIR and TMPDIR, none of them writable.
        let h = FakeHost {
            euid: 1000680000,
            passwd: false,
            env: vec![
                ("HOME", "/home/user"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("TMPDIR", "/home/user/.local/tmp"),
            ],
            paths: vec![
                ("/home/user", PathKind::Dir),
                ("/home/user/.local/tmp", PathKind::Dir),
                ("/run/user/1000", PathKind::Dir),
            ],
            ..FakeHost::user()
        };
        let p = choose(&h, None, None).unwrap();
        assert_eq!(p.state_dir, Path::new("/tmp/buildkit-1000680000"));
        assert_eq!(p.socket_dir, None, "a private dir under the temp dir");
        assert_eq!(p.temp_dir, Path::new("/tmp"));
        let why = p.state_fallback.unwrap();
        assert!(
            why.contains("cannot create the state dir /home/user/.local/share/buildkit"),
            "{why}"
        );
        // HOME=/ (no passwd entry and no HOME in the image) alike.
        let h = FakeHost {
            env: vec![("HOME", "/")],
            paths: vec![("/", PathKind::Dir)],
            ..h
        };
        assert_eq!(
            choose(&h, None, None).unwrap().state_dir,
            Path::new("/tmp/buildkit-1000680000")
        );
        // A writable HOME is used as before; a --root is never replaced.
        let h = FakeHost {
            usable_dirs: vec!["/"],
            ..h
        };
        assert_eq!(
            choose(&h, None, None).unwrap().state_dir,
            Path::new("/.local/share/buildkit")
        );
        let h = FakeHost {
            usable_dirs: vec![],
            ..h
        };
        let p = choose(&h, Some(Path::new("/cache")), None).unwrap();
        assert_eq!(
            (p.state_dir.as_path(), p.state_fallback),
            (Path::new("/cache"), None)
        );
    }

    #[test]
    fn user_without_home_must_pass_root() {
        let h = FakeHost {
            env: vec![],
            ..FakeHost::user()
        };
        assert!(choose(&h, None, None)
            .unwrap_err()
            .to_string()
            .contains("--root"));
    }
}
