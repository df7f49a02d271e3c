//! bkrun's own client of OCI registries (the distribution API): push an artifact, pull a manifest, fetch a blob to disk, with the logins and TLS trust the build's session uses.

mod authz;
mod challenge;
pub mod errors;
pub mod manifest;
mod push;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::request::reference::Reference;
use crate::request::registry::RegistryAuth;
use crate::session::token::{RegistryTls, TokenClient};

use authz::{Authz, Header};
use errors::{Access, Op};
use manifest::{bytes_digest, empty_descriptor, valid_sha256, EMPTY_BLOB, MANIFEST_MEDIA_TYPE};
pub use manifest::{Artifact, Descriptor, Layer, Manifest};
use transport::FileBody;

/// The deadline of requests without a big body (HEAD, upload start, manifests): a registry that
/// has not answered by then will not.
const QUICK: Duration = Duration::from_secs(60);

/// What a push left in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest and size.
    pub digest: String,
    pub size: u64,
    /// The blobs sent; the others were there already.
    pub uploaded: Vec<String>,
}

/// A registry client with the logins of one Docker config and bkrun.toml's TLS trust per host.
/// Tokens live as long as it does, in memory only.
pub struct Client {
    tls: BTreeMap<String, RegistryTls>,
    http: Mutex<HashMap<String, reqwest::Client>>,
    authz: Authz,
    docker_config: Option<PathBuf>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("docker_config", &self.docker_config)
            .field("tls_hosts", &self.tls.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One repository at one registry, and what is being done there.
struct Target<'a> {
    r: Reference,
    reference: &'a str,
    base: reqwest::Url,
    access: Access,
}

/// How a request ended after authorisation: its answer, and whether a login went with it.
struct Answer {
    resp: Response,
    logged_in: bool,
}

impl Client {
    /// A client over the build's registry settings; a broken Docker config fails here.
    pub fn new(auth: &RegistryAuth) -> Result<Client> {
        let tls = auth.session_tls();
        Ok(Client {
            authz: Authz::new(auth.store()?, TokenClient::for_bkrun(tls.clone())),
            tls,
            http: Mutex::new(HashMap::new()),
            docker_config: auth.docker_config.clone(),
        })
    }

    /// Pushes `artifact` (blobs the registry lacks, then the manifest) to `reference`, a tag or
    /// a digest, used exactly as given.
    pub async fn push_artifact(&self, reference: &str, artifact: &Artifact) -> Result<Pushed> {
        let t = self.target(reference, Access::Push)?;
        let manifest = serde_json::to_vec(&artifact.manifest())?;
        let digest = bytes_digest(&manifest);
        if let Some(d) = t.r.digest.as_deref().filter(|d| *d != digest) {
            bail!("cannot push to {reference}: it names the digest {d}, but the artifact's manifest is {digest}: push it by tag, or by its own digest");
        }
        let mut uploaded = Vec::new();
        let empty = empty_descriptor();
        if self
            .push_blob(&t, &empty.digest, Blob::Bytes(EMPTY_BLOB))
            .await?
        {
            uploaded.push(empty.digest);
        }
        for l in &artifact.layers {
            if !valid_sha256(&l.digest) {
                bail!(
                    "cannot push {} to {reference}: its digest {:?} is not sha256:<64 hex digits>",
                    l.path.display(),
                    l.digest
                );
            }
            if self.push_blob(&t, &l.digest, Blob::File(l)).await? {
                uploaded.push(l.digest.clone());
            }
        }
        let url = self.url(&t, &format!("manifests/{}", t.r.object()))?;
        let a = self
            .send(&t, Method::PUT, &url, |b| {
                Ok(b.header(CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
                    .body(manifest.clone())
                    .timeout(QUICK))
            })
            .await?;
        self.expect(&t, a, StatusCode::CREATED).await?;
        Ok(Pushed {
            digest,
            size: manifest.len() as u64,
            uploaded,
        })
    }

    /// The OCI image manifest behind `reference` and its digest; None when the registry has no
    /// such repository or manifest.
    pub async fn pull_manifest(&self, reference: &str) -> Result<Option<(Manifest, String)>> {
        let t = self.target(reference, Access::Pull)?;
        let url = self.url(&t, &format!("manifests/{}", t.r.object()))?;
        let a = self
            .send(&t, Method::GET, &url, |b| {
                Ok(b.header(ACCEPT, MANIFEST_MEDIA_TYPE).timeout(QUICK))
            })
            .await?;
        let status = a.resp.status();
        if status != StatusCode::OK {
            let body = read_capped(a.resp).await.unwrap_or_default();
            let unknown = errors::codes(&body)
                .iter()
                .any(|c| c == "MANIFEST_UNKNOWN" || c == "NAME_UNKNOWN");
            if status == StatusCode::NOT_FOUND || unknown {
                return Ok(None);
            }
            return Err(self.op(&t).status(status.as_u16(), &body, a.logged_in, &[]));
        }
        let body = read_capped(a.resp)
            .await
            .map_err(|e| self.op(&t).transport(&e))?;
        if body.len() > manifest::MAX_MANIFEST {
            let big = format!(
                "the manifest is larger than {} bytes",
                manifest::MAX_MANIFEST
            );
            return Err(self.op(&t).bad_answer(&big));
        }
        let digest = bytes_digest(&body);
        if let Some(d) = t.r.digest.as_deref().filter(|d| *d != digest) {
            bail!("the manifest registry {} sent for {reference} is corrupt: its digest is {digest}, not {d}: retry; if it persists, the registry's storage is damaged", t.r.domain);
        }
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
            self.op(&t).bad_answer(&format!(
                "the manifest is not OCI image manifest JSON ({e})"
            ))
        })?;
        if m.media_type
            .as_deref()
            .is_some_and(|mt| mt != MANIFEST_MEDIA_TYPE)
        {
            return Err(self.op(&t).bad_answer(&format!(
                "{reference} is a {}, not an OCI image manifest",
                m.media_type.unwrap_or_default()
            )));
        }
        Ok(Some((m, digest)))
    }

    /// Streams the blob `d` of `reference`'s repository into `dest` (from its current offset),
    /// checking its sha256 digest and size; a mismatch is an error naming both.
    pub async fn fetch_blob(
        &self,
        reference: &str,
        d: &Descriptor,
        dest: &std::fs::File,
    ) -> Result<()> {
        let t = self.target(reference, Access::Pull)?;
        if !valid_sha256(&d.digest) {
            bail!(
                "cannot fetch {:?} from {reference}: bkrun checks sha256 digests only",
                d.digest
            );
        }
        let url = self.url(&t, &format!("blobs/{}", d.digest))?;
        let a = self.send(&t, Method::GET, &url, Ok).await?;
        let mut resp = self.expect(&t, a, StatusCode::OK).await?;
        let mut out = tokio::fs::File::from_std(dest.try_clone()?);
        let (mut h, mut got) = (Sha256::new(), 0u64);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.op(&t).transport(&e))? {
            got += chunk.len() as u64;
            if got > d.size {
                break;
            }
            h.update(&chunk);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        let sum = format!("sha256:{}", manifest::hex(&h.finalize()));
        if got != d.size || sum != d.digest {
            let got_text = if got > d.size {
                format!("more than {} bytes", d.size)
            } else {
                format!("{sum} ({got} bytes)")
            };
            bail!("the blob registry {} sent for {reference} is not the one asked for: expected {} ({} bytes), got {got_text}: retry; if it persists, the registry's storage is damaged", t.r.domain, d.digest, d.size);
        }
        Ok(())
    }

    /// Uploads one blob unless the repository has it; true when it was sent.
    async fn push_blob(&self, t: &Target<'_>, digest: &str, blob: Blob<'_>) -> Result<bool> {
        let url = self.url(t, &format!("blobs/{digest}"))?;
        let a = self
            .send(t, Method::HEAD, &url, |b| Ok(b.timeout(QUICK)))
            .await?;
        match a.resp.status() {
            StatusCode::OK => return Ok(false),
            StatusCode::NOT_FOUND => {}
            _ => return Err(self.fail(t, a).await),
        }
        let start = self.url(t, "blobs/uploads/")?;
        let a = self
            .send(t, Method::POST, &start, |b| {
                Ok(b.header(CONTENT_LENGTH, 0).timeout(QUICK))
            })
            .await?;
        let resp = self.expect(t, a, StatusCode::ACCEPTED).await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| self.op(t).bad_answer("the upload start has no Location"))?;
        let put = transport::resolve_location(resp.url(), location)
            .map_err(|e| self.op(t).bad_answer(&e))?;
        let put = transport::with_digest(put, digest);
        let size = blob.size();
        let a = self
            .send(t, Method::PUT, &put, |b| {
                Ok(b.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(blob.body()?))
            })
            .await?;
        self.expect(t, a, StatusCode::CREATED).await?;
        Ok(true)
    }

    /// Sends a request built by `build` with the repository's Authorization; on a 401 answers
    /// the registry's challenge once and sends it again (`build` makes a fresh body each time).
    async fn send(
        &self,
        t: &Target<'_>,
        method: Method,
        url: &reqwest::Url,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<Answer> {
        let http = self.http(&t.r.domain)?;
        let (host, repo) = (t.r.domain.as_str(), t.r.path.as_str());
        let go = |h: Option<&Header>| {
            let mut b = http.request(method.clone(), url.clone());
            if let Some(h) = h {
                b = b.header(AUTHORIZATION, &h.0);
            }
            build(b)
        };
        let cached = self.authz.cached(host, repo, t.access);
        let first = go(cached.as_ref())?
            .send()
            .await
            .map_err(|e| self.op(t).transport(&e))?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(Answer {
                resp: first,
                logged_in: cached.is_some(),
            });
        }
        self.authz.forget(host, repo);
        let creds = self.authz.login_for(host, Some(repo)).await.map_err(|e| {
            anyhow!(
                "cannot read the login for {host} for bkrun's {}: {e:#}",
                self.op(t).action()
            )
        })?;
        let values = first.headers().get_all(reqwest::header::WWW_AUTHENTICATE);
        let Some(ch) = challenge::pick(values.iter().filter_map(|v| v.to_str().ok())) else {
            return Ok(Answer {
                resp: first,
                logged_in: false,
            });
        };
        let header = self
            .authz
            .answer(&ch, host, repo, t.access, creds.as_ref())
            .await
            .map_err(|e| self.op(t).token(e, creds.is_some()))?;
        let Some(header) = header else {
            return Ok(Answer {
                resp: first,
                logged_in: false,
            });
        };
        let resp = go(Some(&header))?
            .send()
            .await
            .map_err(|e| self.op(t).transport(&e))?;
        Ok(Answer {
            resp,
            logged_in: creds.is_some(),
        })
    }

    /// The answer when it has the `want` status, else the error it amounts to.
    async fn expect(&self, t: &Target<'_>, a: Answer, want: StatusCode) -> Result<Response> {
        if a.resp.status() == want {
            return Ok(a.resp);
        }
        Err(self.fail(t, a).await)
    }

    async fn fail(&self, t: &Target<'_>, a: Answer) -> anyhow::Error {
        let code = a.resp.status().as_u16();
        let body = read_capped(a.resp).await.unwrap_or_default();
        let creds = self
            .authz
            .login_for(&t.r.domain, Some(&t.r.path))
            .await
            .ok()
            .flatten();
        let secrets: Vec<&str> = creds.iter().map(|c| c.secret.as_str()).collect();
        self.op(t).status(code, &body, a.logged_in, &secrets)
    }

    fn target<'a>(&self, reference: &'a str, access: Access) -> Result<Target<'a>> {
        let r = Reference::parse(reference)
            .map_err(|why| anyhow!("{reference:?} is not an image reference: {why}"))?;
        let scheme = transport::scheme(&r.domain, self.tls.get(&r.domain));
        let base =
            transport::repository_url(scheme, r.api_host(), &r.path).map_err(|e| anyhow!(e))?;
        Ok(Target {
            r,
            reference,
            base,
            access,
        })
    }

    fn url(&self, t: &Target<'_>, rest: &str) -> Result<reqwest::Url> {
        t.base.join(rest).map_err(|e| anyhow!("{rest}: {e}"))
    }

    fn op<'a>(&'a self, t: &'a Target<'_>) -> Op<'a> {
        Op {
            host: &t.r.domain,
            repository: &t.r.path,
            reference: t.reference,
            access: t.access,
            docker_config: self.docker_config.as_deref(),
        }
    }

    /// The HTTP client for registry `host`, built once.
    fn http(&self, host: &str) -> Result<reqwest::Client> {
        let mut clients = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let c = transport::http_client(self.tls.get(host))
            .map_err(|e| anyhow!("cannot set up TLS for registry {host}: check `ca` in bkrun.toml's [buildkitd.registry.\"{host}\"]: {e}"))?;
        clients.insert(host.to_string(), c.clone());
        Ok(c)
    }
}

/// Opens a blob's bytes: a descriptor at its first byte, and its size.
type OpenBlob<'a> = &'a (dyn Fn() -> Result<(std::fs::File, u64)> + Sync);

/// A blob's bytes: small ones in memory, layers from their files, or blobs read in place from
/// an image layout (an archive's member).
#[derive(Clone, Copy)]
enum Blob<'a> {
    Bytes(&'static [u8]),
    File(&'a Layer),
    Open(OpenBlob<'a>, u64),
}

impl Blob<'_> {
    fn size(&self) -> u64 {
        match self {
            Blob::Bytes(b) => b.len() as u64,
            Blob::File(l) => l.size,
            Blob::Open(_, size) => *size,
        }
    }

    fn body(&self) -> Result<reqwest::Body> {
        match self {
            Blob::Bytes(b) => Ok(reqwest::Body::from(*b)),
            Blob::File(l) => FileBody::open(&l.path, l.size)
                .map_err(|e| anyhow!("cannot read the layer {}: {e}", l.path.display())),
            Blob::Open(open, size) => {
                let (file, _) = open()?;
                Ok(FileBody::from_file(file, *size))
            }
        }
    }
}

/// A manifest or an error body, read up to one byte past MAX_MANIFEST (so a caller can tell a
/// body that is too big from one that just fits).
async fn read_capped(mut resp: Response) -> Result<Vec<u8>, reqwest::Error> {
    let cap = manifest::MAX_MANIFEST + 1;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == cap {
            break;
        }
    }
    Ok(body)
}
