//! Logins for Google's registries (gcr.io, Artifact Registry's `*-docker.pkg.dev`): an OAuth2 access token, user `oauth2accesstoken`, from GOOGLE_APPLICATION_CREDENTIALS' service-account key (an RS256 JWT assertion, signed with ring) or the metadata server (GKE Workload Identity, GCE).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use super::http::{body, clip, default_client, node_client};
use super::{now_secs, CloudEnv, Issued};
use crate::session::credentials::Credentials;

/// The user name Google's registries take an access token with.
const USER: &str = "oauth2accesstoken";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const METADATA_HOST: &str = "metadata.google.internal";
/// Where a key without `token_uri` trades its assertion.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Off Google Cloud the metadata server's name does not resolve; where it might, a short wait.
const METADATA_PROBE: Duration = Duration::from_secs(3);

/// The parts of a service-account key file used here.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    token_uri: String,
}

/// The identity that would be used, in words.
pub fn identity(env: &CloudEnv) -> Option<String> {
    if let Some(f) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
        return Some(format!(
            "the service-account key {f} (GOOGLE_APPLICATION_CREDENTIALS)"
        ));
    }
    env.get("GCE_METADATA_HOST")
        .map(|h| format!("the metadata server at {h} (GCE_METADATA_HOST)"))
        .or_else(|| {
            Some(format!(
                "the metadata server {METADATA_HOST}, if there is one"
            ))
        })
}

/// `host`'s login; None when neither a key nor a metadata server is there.
pub async fn fetch(host: &str, env: &CloudEnv) -> Result<Option<Issued>> {
    if let Some(file) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
        return from_key(host, file).await.map(Some);
    }
    from_metadata(host, env).await
}

/// A service-account key: a signed assertion traded at the key's token_uri.
async fn from_key(host: &str, file: &str) -> Result<Issued> {
    let text = super::super::read::secret(std::path::Path::new(file)).with_context(|| {
        format!("cannot read the Google credentials {file} (GOOGLE_APPLICATION_CREDENTIALS) for {host}: mount the key there, or unset it to use Workload Identity")
    })?;
    let mut key: KeyFile = serde_json::from_str(&text)
        .map_err(|_| anyhow!("the Google credentials {file} (GOOGLE_APPLICATION_CREDENTIALS) are not a JSON key file: download the service account's key again"))?;
    if key.kind != "service_account" {
        bail!("the Google credentials {file} are of type {:?}, which bkrun cannot use for {host}: use a service-account key, or GKE Workload Identity (the metadata server)", key.kind);
    }
    if key.token_uri.is_empty() {
        key.token_uri = DEFAULT_TOKEN_URI.into();
    }
    let who = format!("service account {} (key {file})", key.client_email);
    let assertion = assertion(&key, now_secs()).map_err(|e| {
        anyhow!("cannot sign with {who}: its private_key is not a PKCS#8 RSA key: {e}")
    })?;
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", assertion.as_str()),
    ];
    let resp = default_client()?
        .post(&key.token_uri)
        .form(&form)
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach Google's token endpoint {} for {who}: check the pod's network",
                key.token_uri
            )
        })?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        bail!("Google refused a token to {who} for {host}: check the key is not deleted or disabled and the account has Artifact Registry Writer (or Storage Admin for gcr.io): {}", oauth_error(status, &text));
    }
    token(&text, &who)
}

/// The metadata server's token for the node's or Workload Identity's service account.
async fn from_metadata(host: &str, env: &CloudEnv) -> Result<Option<Issued>> {
    let (server, explicit) = match env.get("GCE_METADATA_HOST") {
        Some(h) => (h.to_string(), true),
        None => (METADATA_HOST.to_string(), false),
    };
    let url = format!("http://{server}{TOKEN_PATH}");
    let wait = if explicit {
        Duration::from_secs(30)
    } else {
        METADATA_PROBE
    };
    let sent = node_client(wait)?
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        // Not on Google Cloud: no identity, the registry is asked anonymously.
        Err(_) if !explicit => return Ok(None),
        Err(e) => bail!("cannot reach the metadata server {server} (GCE_METADATA_HOST) for {host}: check the variable or the pod's network: {e}"),
    };
    // Google's metadata server says so in every answer; whatever else answers to the name
    // (a DNS wildcard) is not one, and the registry is asked anonymously.
    let google = resp
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v == "Google");
    if !explicit && !google {
        return Ok(None);
    }
    let (status, text) = body(resp).await?;
    let who = format!("the metadata server {server}'s default service account");
    if status != 200 {
        bail!("the metadata server {server} refused a token for {host}: check the Kubernetes service account's iam.gke.io/gcp-service-account annotation and its roles/iam.workloadIdentityUser binding: HTTP {status}: {}", clip(&text));
    }
    token(&text, &who).map(Some)
}

/// The access token answer: `access_token`, `expires_in`.
fn token(text: &str, who: &str) -> Result<Issued> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_str(text)
        .map_err(|_| anyhow!("the token answer for {who} holds no access_token"))?;
    Ok(Issued {
        credentials: Credentials {
            username: USER.into(),
            secret: a.access_token,
        },
        lifetime: a.expires_in.map(Duration::from_secs),
    })
}

/// OAuth2's `error` and `error_description`, or the clipped answer.
pub(super) fn oauth_error(status: u16, text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    match (
        v.get("error").and_then(|e| e.as_str()),
        v.get("error_description").and_then(|e| e.as_str()),
    ) {
        (Some(e), Some(d)) => format!("HTTP {status}: {e}: {}", clip(d)),
        (Some(e), None) => format!("HTTP {status}: {e}"),
        _ => format!("HTTP {status}: {}", clip(text)),
    }
}

/// The JWT (RS256) that asks for a cloud-platform token, valid for an hour from `now`.
fn assertion(key: &KeyFile, now: u64) -> Result<String, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key.private_key_id});
    let claims = serde_json::json!({
        "iss": key.client_email, "scope": SCOPE, "aud": key.token_uri,
        "iat": now, "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let der = pem_body(&key.private_key)?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| e.to_string())?;
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "RSA signing failed".to_string())?;
    Ok(format!("{signing_input}.{}", b64(&sig)))
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` block.
fn pem_body(pem: &str) -> Result<Vec<u8>, String> {
    let inner: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(inner.trim())
        .map_err(|_| "not PEM".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_and_oauth_errors() {
        let i = token(
            r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            "sa",
        )
        .unwrap();
        assert_eq!(i.credentials.username, "oauth2accesstoken");
        assert_eq!(i.lifetime, Some(Duration::from_secs(3599)));
        assert_eq!(
            oauth_error(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            "HTTP 400: invalid_grant: Invalid JWT Signature."
        );
    }

    #[test]
    fn a_key_that_is_not_rsa_pkcs8_is_named() {
        let key = KeyFile {
            kind: "service_account".into(),
            client_email: "a@b".into(),
            private_key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            private_key_id: "k".into(),
            token_uri: "http://x/token".into(),
        };
        assert!(assertion(&key, 0).is_err());
    }
}
