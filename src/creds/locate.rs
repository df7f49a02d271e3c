//! Where registry logins are, in the order they answer: DOCKER_AUTH_CONFIG (GitLab), the Docker config (DOCKER_CONFIG as a directory or as the file itself; its config.json, a mounted Secret's `.dockerconfigjson`, a legacy `.dockercfg`), then containers' auth.json (REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR's, then ~/.config's); read by descriptor, as they may sit in directories others can write.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::cloud::CloudEnv;
use super::dockerconfig::DockerConfig;

/// Everything credentials may come from, found before anything starts.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Sources {
    /// In precedence order: the first that knows a registry answers for it.
    pub inputs: Vec<Input>,
    pub cloud: CloudEnv,
}

/// One source: a variable's JSON, or a file.
#[derive(Clone, PartialEq, Eq)]
pub enum Input {
    /// DOCKER_AUTH_CONFIG's content.
    Inline(String),
    /// A file and why it is read (`DOCKER_CONFIG`, `REGISTRY_AUTH_FILE`, …).
    File { path: PathBuf, via: &'static str },
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The variable's value holds passwords.
        f.write_str(&self.label())
    }
}

impl Input {
    /// How `bkrun config` and errors name it.
    pub fn label(&self) -> String {
        match self {
            Input::Inline(_) => "DOCKER_AUTH_CONFIG".into(),
            Input::File { path, via } => format!("{via} {}", path.display()),
        }
    }

    /// The parsed logins; None for a file that is not there.
    pub fn load(&self) -> Result<Option<DockerConfig>> {
        let bytes = match self {
            Input::Inline(text) => text.as_bytes().to_vec(),
            Input::File { path, .. } => match read(path)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        DockerConfig::parse(&bytes)
            .map(Some)
            .map_err(|why| super::not_json(&self.label(), &why))
    }
}

/// The sources `env` names, in precedence order (see docs/registries.md).
pub fn locate(env: &dyn Fn(&str) -> Option<String>) -> Sources {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut inputs = Vec::new();
    if let Some(json) = set("DOCKER_AUTH_CONFIG") {
        inputs.push(Input::Inline(json));
    }
    let home = set("HOME").map(PathBuf::from);
    let file = |path: PathBuf, via| Input::File { path, via };
    match set("DOCKER_CONFIG").map(PathBuf::from) {
        // A Secret's key mounted with subPath, or any login file named directly.
        Some(p) if is_file(&p) => inputs.push(file(p, "DOCKER_CONFIG")),
        Some(dir) => {
            for name in ["config.json", ".dockerconfigjson", ".dockercfg"] {
                inputs.push(file(dir.join(name), "DOCKER_CONFIG"));
            }
        }
        None => {
            if let Some(h) = &home {
                inputs.push(file(h.join(".docker/config.json"), "the Docker config"));
                inputs.push(file(h.join(".dockercfg"), "the legacy Docker config"));
            }
        }
    }
    match (set("REGISTRY_AUTH_FILE"), set("XDG_RUNTIME_DIR")) {
        (Some(f), _) => inputs.push(file(PathBuf::from(f), "REGISTRY_AUTH_FILE")),
        (None, Some(run)) => inputs.push(file(
            Path::new(&run).join("containers/auth.json"),
            "containers' auth.json",
        )),
        (None, None) => {}
    }
    let config_home = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    if let Some(c) = config_home {
        inputs.push(file(
            c.join("containers/auth.json"),
            "containers' auth.json",
        ));
    }
    Sources {
        inputs,
        cloud: CloudEnv::from_env(env),
    }
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// A login file's bytes (None when it does not exist), or one line naming it.
fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    super::read::bytes(path).map_err(|e| {
        anyhow!(
            "cannot read the registry login file {}: fix its permissions or unset the variable that names it: {e}",
            path.display()
        )
    })
}
