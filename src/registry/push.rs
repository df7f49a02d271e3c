//! `bkrun push`'s registry half: an image checked in an OCI layout (src/ocilayout/archive.rs) pushed byte for byte — the blobs the repository lacks, streamed from the layout, then every child manifest by its digest, then the root by the reference's tag or digest — so the registry's digest is the layout's.

use anyhow::{bail, Result};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use super::errors::Access;
use super::{Blob, Client, Pushed, Target, QUICK};
use crate::ocilayout::archive::{Image, Layout, Manifest};

/// The header a registry names a stored manifest's digest in.
const CONTENT_DIGEST: &str = "Docker-Content-Digest";

impl Client {
    /// Pushes `image` of `layout` to `reference` (a tag, or the root's own digest).
    pub async fn push_image(
        &self,
        reference: &str,
        layout: &Layout,
        image: &Image,
    ) -> Result<Pushed> {
        let t = self.target(reference, Access::Push)?;
        let root = image.root();
        if let Some(d) = t.r.digest.as_deref().filter(|d| *d != root.digest) {
            bail!("cannot push to {reference}: it names the digest {d}, but the image is {}: push it by tag, or by its own digest", root.digest);
        }
        let mut uploaded = Vec::new();
        for b in &image.blobs {
            let open = || {
                layout.open_blob(&b.digest)?.ok_or_else(|| {
                    anyhow::anyhow!("the blob {} went from the layout while pushing", b.digest)
                })
            };
            if self
                .push_blob(&t, &b.digest, Blob::Open(&open, b.size))
                .await?
            {
                uploaded.push(b.digest.clone());
            }
        }
        // Children first: a registry may refuse an index naming manifests it does not have.
        for m in &image.manifests {
            let object = if m.digest == root.digest {
                t.r.object()
            } else {
                m.digest.as_str()
            };
            self.put_manifest(&t, object, m).await?;
        }
        Ok(Pushed {
            digest: root.digest.clone(),
            size: root.bytes.len() as u64,
            uploaded,
        })
    }

    /// PUTs manifest `m` as `object` (a tag or its digest), with its own media type; a
    /// registry that stored it under another digest (it rewrote the bytes) is an error.
    async fn put_manifest(&self, t: &Target<'_>, object: &str, m: &Manifest) -> Result<()> {
        let url = self.url(t, &format!("manifests/{object}"))?;
        let a = self
            .send(t, Method::PUT, &url, |b| {
                Ok(b.header(CONTENT_TYPE, &m.media_type)
                    .body(m.bytes.clone())
                    .timeout(QUICK))
            })
            .await?;
        let resp = self.expect(t, a, StatusCode::CREATED).await?;
        let stored = resp
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok());
        if let Some(d) = stored.filter(|d| *d != m.digest) {
            bail!("registry {} stored the manifest {} as {d}: it changed the bytes, so the pushed digest is not the archive's; push to a registry that keeps manifests as sent", t.r.domain, m.digest);
        }
        Ok(())
    }
}
