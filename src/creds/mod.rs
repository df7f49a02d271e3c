//! Registry credentials, the one place bkrun finds them: every file and variable form (DOCKER_AUTH_CONFIG, the Docker config and Kubernetes' `.dockerconfigjson`/`.dockercfg`, containers' auth.json) merged by precedence, then the workload's cloud identity (ECR, GCR/Artifact Registry, ACR); served to the session's Auth service and to bkrun's own registry client alike.

pub mod cloud;
pub mod dockerconfig;
mod locate;
pub mod read;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::session::credentials::{CredentialSource, Credentials};
use crate::session::token::RegistryTls;
use cloud::{Cloud, CloudEnv};
use dockerconfig::DockerConfig;
pub use locate::{locate, Input, Sources};

/// How long a cloud answer is kept when its issuer gave no expiry (or one already past, as
/// emulators do): long enough for one build's pulls and pushes, short enough to be renewed.
const CLOUD_DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// A cloud token is renewed this long before it expires, so none is sent in its last moments.
const CLOUD_MARGIN: Duration = Duration::from_secs(60);

/// Checks every source before anything starts: a DOCKER_AUTH_CONFIG or a login file that is
/// not what it should be fails the command in one line.
pub fn check(sources: &Sources) -> Result<()> {
    Store::open(sources, BTreeMap::new()).map(|_| ())
}

/// The sources, read once, and what the cloud identities gave during this run (memory only).
pub struct Store {
    files: Vec<(String, DockerConfig)>,
    cloud: CloudEnv,
    tls: BTreeMap<String, RegistryTls>,
    issued: Mutex<HashMap<String, (Instant, Option<Credentials>)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&String> = self.files.iter().map(|(l, _)| l).collect();
        f.debug_struct("Store")
            .field("files", &labels)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Reads and parses every source; `tls` is bkrun.toml's trust per registry host (ACR's token
    /// exchange goes to the registry itself).
    pub fn open(sources: &Sources, tls: BTreeMap<String, RegistryTls>) -> Result<Store> {
        let mut files = Vec::new();
        for input in &sources.inputs {
            if let Some(c) = input.load()? {
                files.push((input.label(), c));
            }
        }
        Ok(Store {
            files,
            cloud: sources.cloud.clone(),
            tls,
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// A store with no sources (tests, and callers with nothing configured).
    pub fn empty() -> Store {
        Store {
            files: Vec::new(),
            cloud: CloudEnv::default(),
            tls: BTreeMap::new(),
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// Which source answers for `host`: the first file with an entry or helper for it, else the
    /// cloud identity its name calls for (when one is set up), else none.
    pub fn answering(&self, host: &str, repo: Option<&str>) -> Option<String> {
        if let Some((label, _)) = self.files.iter().find(|(_, c)| c.knows(host, repo)) {
            return Some(label.clone());
        }
        let cloud = Cloud::for_host(host)?;
        cloud::identity(&cloud, &self.cloud).map(|who| format!("{} ({who})", cloud.name()))
    }

    /// `host`'s credentials (for repository `repo` when known). Blocking: a credential helper
    /// may run, a cloud identity may be asked over HTTP.
    pub fn lookup(&self, host: &str, repo: Option<&str>) -> Result<Option<Credentials>> {
        // A default store (credsStore) that knows nothing of the host lets the next source
        // answer; a file that names the host answers, even with nothing.
        for (_, c) in self.files.iter().filter(|(_, c)| c.answers(host, repo)) {
            let found = c.credentials_for(host, repo)?.map(|l| Credentials {
                username: l.username,
                secret: l.secret,
            });
            if found.is_some() || c.knows(host, repo) {
                mask(found.as_ref());
                return Ok(found);
            }
        }
        let Some(cloud) = Cloud::for_host(host) else {
            return Ok(None);
        };
        self.ask_cloud(&cloud, host)
    }

    /// The cloud's answer for `host`, kept in memory for its lifetime.
    fn ask_cloud(&self, cloud: &Cloud, host: &str) -> Result<Option<Credentials>> {
        if let Some((until, c)) = lock(&self.issued).get(host) {
            if Instant::now() < *until {
                return Ok(c.clone());
            }
        }
        let issued = cloud::fetch(cloud, host, &self.cloud, self.tls.get(host))?;
        let (until, creds) = match issued {
            Some(i) => {
                let ttl = match i.lifetime {
                    None => CLOUD_DEFAULT_TTL,
                    Some(d) if d > CLOUD_MARGIN * 2 => d - CLOUD_MARGIN,
                    // Nearly spent already: used, and asked for again soon.
                    Some(d) => d / 2,
                };
                (Instant::now() + ttl, Some(i.credentials))
            }
            None => (Instant::now() + CLOUD_DEFAULT_TTL, None),
        };
        mask(creds.as_ref());
        lock(&self.issued).insert(host.to_string(), (until, creds.clone()));
        Ok(creds)
    }

    /// `bkrun config`'s lines: each source with the registries it knows, then the cloud
    /// identities set up here; never a secret.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (label, c) in &self.files {
            let known = c.known();
            let list = if known.is_empty() {
                "no registries".to_string()
            } else {
                known.join(", ")
            };
            s.push_str(&format!("credentials:     {label}: {list}\n"));
        }
        for c in Cloud::all() {
            let who = cloud::identity(&c, &self.cloud)
                .unwrap_or_else(|| format!("no identity set up ({})", c.how()));
            s.push_str(&format!(
                "cloud identity:  {} for {}: {who}\n",
                c.name(),
                c.hosts()
            ));
        }
        if self.files.is_empty() {
            s.insert_str(0, "credentials:     no login files or DOCKER_AUTH_CONFIG\n");
        }
        s
    }

    /// The registries named in any file, each with the source that answers for it.
    pub fn registries(&self) -> Vec<(String, String)> {
        let mut hosts: Vec<String> = self
            .files
            .iter()
            .flat_map(|(_, c)| c.known())
            .filter(|h| !h.starts_with('*'))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
            .into_iter()
            .map(|h| {
                let (host, repo) = h
                    .split_once('/')
                    .map_or((h.as_str(), None), |(a, b)| (a, Some(b)));
                let from = self.answering(host, repo).unwrap_or_default();
                (h.clone(), from)
            })
            .collect()
    }
}

impl CredentialSource for Store {
    fn credentials(&self, host: &str) -> Result<Option<Credentials>> {
        self.lookup(host, None)
    }

    fn credentials_for(&self, host: &str, repo: &str) -> Result<Option<Credentials>> {
        self.lookup(host, Some(repo))
    }

    fn has_repository_logins(&self, host: &str) -> bool {
        self.files
            .iter()
            .any(|(_, c)| c.has_repository_logins(host))
    }
}

/// Secrets found here stay out of bkrun's error lines for the rest of the run.
fn mask(c: Option<&Credentials>) {
    if let Some(c) = c.filter(|c| c.secret.len() >= 4) {
        crate::progress::mask::mask_in_errors(&[c.secret.as_bytes().to_vec()]);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line for a value that should have been JSON, naming where it came from.
fn not_json(label: &str, why: &str) -> anyhow::Error {
    anyhow!("{label} is not a usable registry login file: fix it (it must be JSON as `docker login` writes config.json): {why}")
}

#[cfg(test)]
mod tests;
