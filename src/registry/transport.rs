//! How bkrun reaches a registry: http or https and the TLS trust per host (the daemon's rules, from bkrun.toml), the API's URLs, upload Locations, and layer files streamed as request bodies.

use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::session::token::{client_builder, plain_http_registry, RegistryTls};

/// How many redirects a registry request follows (reqwest's own default).
const MAX_REDIRECTS: usize = 10;
/// How much of a layer file is read per body frame.
const CHUNK: usize = 1 << 16;

/// `http` or `https` for registry `host`: `http` in its bkrun.toml table, else plain http only
/// for localhost and loopback addresses, as BuildKit decides it for the daemon.
pub fn scheme(host: &str, tls: Option<&RegistryTls>) -> &'static str {
    if plain_http_registry(host, tls) {
        "http"
    } else {
        "https"
    }
}

/// `SCHEME://API_HOST/v2/REPOSITORY/`, which every request of a repository extends.
pub fn repository_url(
    scheme: &str,
    api_host: &str,
    repository: &str,
) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(&format!("{scheme}://{api_host}/v2/{repository}/"))
        .map_err(|e| format!("{scheme}://{api_host}/v2/{repository}/ is not a URL: {e}"))
}

/// An upload's next URL: the Location header, which registries give relative (distribution)
/// or absolute (a CDN, another host), resolved against the URL that answered.
pub fn resolve_location(answered: &reqwest::Url, location: &str) -> Result<reqwest::Url, String> {
    let u = answered
        .join(location)
        .map_err(|e| format!("the upload Location {location:?} is not a URL: {e}"))?;
    match u.scheme() {
        "http" | "https" => Ok(u),
        other => Err(format!(
            "the upload Location {location:?} is {other}:, not http(s)"
        )),
    }
}

/// The monolithic upload's URL: the Location with `digest=` added to whatever query it carries
/// (distribution's `_state`, a CDN's signature).
pub fn with_digest(mut location: reqwest::Url, digest: &str) -> reqwest::Url {
    location.query_pairs_mut().append_pair("digest", digest);
    location
}

/// The HTTP client for one registry host: the shared TLS settings, no deadline for the whole
/// request (a layer may take an hour to upload; requests that should be quick set their own), and
/// redirects followed except from https down to http, where reqwest would keep the
/// Authorization header (it drops it only when the host or port changes).
pub fn http_client(tls: Option<&RegistryTls>) -> Result<reqwest::Client, String> {
    client_builder(tls)?
        .redirect(reqwest::redirect::Policy::custom(|a| {
            let downgrade =
                a.url().scheme() == "http" && a.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                a.stop()
            } else if a.previous().len() > MAX_REDIRECTS {
                a.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                a.follow()
            }
        }))
        .build()
        .map_err(|e| e.to_string())
}

/// A file as a request body, read in chunks as the connection takes them, so a multi-GB layer
/// never sits in memory. Its exact size is known, so the request carries a Content-Length.
pub struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    /// The body for `path`, which must hold `size` bytes (the registry checks the digest).
    pub fn open(path: &Path, size: u64) -> std::io::Result<reqwest::Body> {
        Ok(FileBody::from_file(std::fs::File::open(path)?, size))
    }

    /// The body for the next `size` bytes of `file` (a blob inside an archive: its descriptor
    /// is already at the blob's first byte).
    pub fn from_file(file: std::fs::File, size: u64) -> reqwest::Body {
        reqwest::Body::wrap(FileBody {
            file: tokio::fs::File::from_std(file),
            left: size,
            buf: vec![0u8; CHUNK].into_boxed_slice(),
        })
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.left).unwrap_or(usize::MAX));
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            // Shorter than promised: the Content-Length would be a lie, so fail the upload.
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended {} bytes early", this.left),
            ))));
        }
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_relative_and_absolute() {
        let answered =
            reqwest::Url::parse("http://127.0.0.1:5000/v2/cache/mounts/blobs/uploads/").unwrap();
        let rel =
            resolve_location(&answered, "/v2/cache/mounts/blobs/uploads/u1?_state=abc").unwrap();
        assert_eq!(
            rel.as_str(),
            "http://127.0.0.1:5000/v2/cache/mounts/blobs/uploads/u1?_state=abc"
        );
        let abs = resolve_location(&answered, "https://cdn.example/up/u2?sig=x%2By").unwrap();
        assert_eq!(
            with_digest(abs, "sha256:00").as_str(),
            "https://cdn.example/up/u2?sig=x%2By&digest=sha256%3A00"
        );
        let bare = resolve_location(&answered, "u3").unwrap();
        assert_eq!(
            with_digest(bare, "sha256:ab").as_str(),
            "http://127.0.0.1:5000/v2/cache/mounts/blobs/uploads/u3?digest=sha256%3Aab"
        );
        assert!(resolve_location(&answered, "file:///etc/passwd").is_err());
    }

    #[test]
    fn schemes_follow_the_daemons_rules() {
        let http = RegistryTls {
            http: Some(true),
            ..Default::default()
        };
        let https = RegistryTls {
            http: Some(false),
            ..Default::default()
        };
        assert_eq!(scheme("127.0.0.1:5000", None), "http");
        assert_eq!(scheme("localhost", None), "http");
        assert_eq!(scheme("127.0.0.1:5000", Some(&https)), "https");
        assert_eq!(scheme("reg.example", Some(&http)), "http");
        assert_eq!(scheme("reg.example", None), "https");
        assert_eq!(
            repository_url("https", "registry-1.docker.io", "library/alpine")
                .unwrap()
                .join("manifests/3")
                .unwrap()
                .as_str(),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3"
        );
    }

    #[tokio::test]
    async fn a_file_body_streams_exactly_its_size() {
        use http_body::Body as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let file = tokio::fs::File::open(&p).await.unwrap();
        let mut body = FileBody {
            file,
            left: data.len() as u64,
            buf: vec![0u8; CHUNK].into_boxed_slice(),
        };
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut got = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            got.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        assert_eq!(got, data);

        // A file shorter than promised is an error, not a short body.
        let mut short = FileBody {
            file: tokio::fs::File::open(&p).await.unwrap(),
            left: data.len() as u64 + 1,
            buf: vec![0u8; CHUNK].into_boxed_slice(),
        };
        let mut last = None;
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut short).poll_frame(cx)).await {
            if let Err(e) = f {
                last = Some(e);
                break;
            }
        }
        assert!(last.unwrap().to_string().contains("1 bytes early"));
    }
}
