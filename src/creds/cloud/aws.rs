//! ECR logins from the pod's AWS identity, as the SDKs' default chain finds it (static keys, IRSA's web identity through STS AssumeRoleWithWebIdentity, EKS Pod Identity's or ECS's container endpoint), then ECR's GetAuthorizationToken (JSON 1.1, SigV4-signed); endpoints overridable as the SDKs allow (AWS_ENDPOINT_URL, _STS, _ECR).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

use super::http::{body, clip, default_client, node_client};
use super::sigv4::{amz_date, Request, Signer};
use super::{now_secs, CloudEnv, Issued};
use crate::session::credentials::Credentials;

/// ECR's JSON 1.1 target for the call.
const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// ECS's container credentials endpoint, for a relative URI.
const ECS_ENDPOINT: &str = "http://169.254.170.2";

/// `(account, region)` when `host` (no port) is an ECR registry, as amazon-ecr-credential-helper
/// recognises them (dkr.ecr or dkr-ecr, FIPS too, AWS and AWS China partitions).
pub fn registry(host: &str) -> Option<(String, String)> {
    let re = regex::Regex::new(
        r"^(\d{12})\.dkr[.-]ecr(?:-fips)?\.([a-z0-9][a-z0-9-]*)\.amazonaws\.com(?:\.cn)?$",
    )
    .expect("the ECR host pattern");
    let c = re.captures(host)?;
    Some((c[1].to_string(), c[2].to_string()))
}

/// A key pair (and session token) and who it is, for messages.
#[derive(Clone)]
struct Keys {
    id: String,
    secret: String,
    token: Option<String>,
    who: String,
    /// What to change when ECR refuses this identity.
    fix: &'static str,
}

/// The identity the chain would use, in words, without asking anyone.
pub fn identity(env: &CloudEnv) -> Option<String> {
    if let Some(id) = env.get("AWS_ACCESS_KEY_ID") {
        return Some(format!("access key {id} (AWS_ACCESS_KEY_ID)"));
    }
    if let (Some(role), Some(_)) = (
        env.get("AWS_ROLE_ARN"),
        env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
    ) {
        return Some(format!("role {role} (web identity, AWS_ROLE_ARN)"));
    }
    if let Some(uri) = container_uri(env) {
        return Some(format!("the container credentials endpoint {uri}"));
    }
    None
}

fn container_uri(env: &CloudEnv) -> Option<String> {
    env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .map(str::to_string)
        .or_else(|| {
            env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .map(|r| format!("{ECS_ENDPOINT}{r}"))
        })
}

/// `host`'s ECR login; None when no AWS identity is set up here.
pub async fn fetch(
    host: &str,
    account: &str,
    region: &str,
    env: &CloudEnv,
) -> Result<Option<Issued>> {
    let Some(keys) = keys(env, region).await? else {
        return Ok(None);
    };
    ecr_token(host, account, region, env, &keys).await.map(Some)
}

/// The first identity of the default chain that is set up.
async fn keys(env: &CloudEnv, region: &str) -> Result<Option<Keys>> {
    if let Some(id) = env.get("AWS_ACCESS_KEY_ID") {
        let secret = env.get("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
            anyhow!("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY: set both, or neither to use the pod's role")
        })?;
        return Ok(Some(Keys {
            id: id.into(),
            secret: secret.into(),
            token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
            who: format!("access key {id}"),
            fix: "give that key's user or role ecr:GetAuthorizationToken (and push/pull on the repository), or unset AWS_ACCESS_KEY_ID to use the pod's role",
        }));
    }
    let cache_key = format!(
        "{} at {}",
        identity(env).unwrap_or_default(),
        endpoint(env, "sts", region)
    );
    if let Some(k) = cached(&cache_key) {
        return Ok(Some(k));
    }
    let (keys, lifetime) = if let (Some(role), Some(file)) = (
        env.get("AWS_ROLE_ARN"),
        env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
    ) {
        web_identity(env, region, role, file).await?
    } else if let Some(uri) = container_uri(env) {
        container(env, &uri).await?
    } else {
        return Ok(None);
    };
    remember(cache_key, &keys, lifetime);
    Ok(Some(keys))
}

/// A role's temporary keys serve every ECR registry of the run until shortly before they
/// expire (memory only); STS is not asked again for each registry or retry.
static KEYS: Mutex<Option<HashMap<String, (Instant, Keys)>>> = Mutex::new(None);
const KEYS_MARGIN: Duration = Duration::from_secs(5 * 60);
/// When the issuer gives no expiry: STS's and the container endpoints' shortest lifetime.
const KEYS_DEFAULT: Duration = Duration::from_secs(15 * 60);

fn remember(key: String, keys: &Keys, lifetime: Option<Duration>) {
    let until = Instant::now() + lifetime.unwrap_or(KEYS_DEFAULT).saturating_sub(KEYS_MARGIN);
    let mut g = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashMap::new)
        .insert(key, (until, keys.clone()));
}

fn cached(key: &str) -> Option<Keys> {
    let g = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref()?
        .get(key)
        .filter(|(until, _)| Instant::now() < *until)
        .map(|(_, k)| k.clone())
}

/// The endpoint for `service` (sts, ecr): AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL, else AWS's.
fn endpoint(env: &CloudEnv, service: &str, region: &str) -> String {
    let var = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
    if let Some(u) = env.get(&var).or_else(|| env.get("AWS_ENDPOINT_URL")) {
        return u.trim_end_matches('/').to_string();
    }
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let host = if service == "ecr" {
        format!("api.ecr.{region}")
    } else {
        format!("{service}.{region}")
    };
    format!("https://{host}.{suffix}")
}

/// IRSA: the projected service-account token traded for the role's keys (STS's query API,
/// unsigned: the token is the proof).
async fn web_identity(
    env: &CloudEnv,
    region: &str,
    role: &str,
    file: &str,
) -> Result<(Keys, Option<Duration>)> {
    let token = super::super::read::secret(std::path::Path::new(file)).with_context(|| {
        format!("cannot read the web identity token {file} (AWS_WEB_IDENTITY_TOKEN_FILE) for role {role}: check the pod mounts its service account token (the eks.amazonaws.com/role-arn annotation sets this up)")
    })?;
    let region = env
        .get("AWS_REGION")
        .or(env.get("AWS_DEFAULT_REGION"))
        .unwrap_or(region);
    let url = format!("{}/", endpoint(env, "sts", region));
    let session = env
        .get("AWS_ROLE_SESSION_NAME")
        .map_or_else(|| format!("bkrun-{}", now_secs()), str::to_string);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role)
        .append_pair("RoleSessionName", &session)
        .append_pair("WebIdentityToken", token.trim())
        .finish();
    let resp = default_client()?
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .with_context(|| format!("cannot reach AWS STS at {url} to assume role {role}: check the pod's network, or AWS_ENDPOINT_URL_STS"))?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        let (code, msg) = (
            xml_tag(&text, "Code").unwrap_or_default(),
            xml_tag(&text, "Message").unwrap_or_else(|| clip(&text)),
        );
        if status >= 500 {
            bail!("AWS STS failed to answer for role {role} (HTTP {status}): try again, or check AWS_ENDPOINT_URL_STS: {msg}");
        }
        bail!("AWS STS refused to let this pod assume role {role} (HTTP {status} {code}): check the role's trust policy names this cluster's OIDC provider and service account (the eks.amazonaws.com/role-arn annotation): {msg}");
    }
    let get = |t| {
        xml_tag(&text, t).ok_or_else(|| anyhow!("AWS STS's answer for role {role} has no {t}: check AWS_ENDPOINT_URL_STS points at STS"))
    };
    let keys = Keys {
        id: get("AccessKeyId")?,
        secret: get("SecretAccessKey")?,
        token: Some(get("SessionToken")?),
        who: format!("role {role}"),
        fix: "the role's policy lacks ecr:GetAuthorizationToken (or push/pull on the repository): attach e.g. AmazonEC2ContainerRegistryPowerUser to it",
    };
    Ok((keys, expiry(xml_tag(&text, "Expiration").as_deref())))
}

/// The time left until an RFC 3339 expiry, if it is one and in the future.
fn expiry(at: Option<&str>) -> Option<Duration> {
    let t = crate::gocompat::times::parse_rfc3339(at?)?;
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).ok()?);
    at.duration_since(SystemTime::now()).ok()
}

/// EKS Pod Identity (or ECS): keys from the container credentials endpoint.
async fn container(env: &CloudEnv, uri: &str) -> Result<(Keys, Option<Duration>)> {
    let auth = match (env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")) {
        (Some(f), _) => Some(super::super::read::secret(std::path::Path::new(f)).with_context(|| format!("cannot read {f} (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): check the pod's EKS Pod Identity association"))?.trim().to_string()),
        (None, t) => t.map(str::to_string),
    };
    let mut req = node_client(Duration::from_secs(30))?.get(uri);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the container credentials endpoint {uri}: check the EKS Pod Identity agent runs on this node")
    })?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        bail!("the container credentials endpoint {uri} refused (HTTP {status}): check the pod's EKS Pod Identity association: {}", clip(&text));
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| anyhow!("the container credentials endpoint {uri} did not answer JSON"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let role = s("RoleArn").unwrap_or_else(|| "the pod's role".into());
    let keys = Keys {
        id: s("AccessKeyId").ok_or_else(|| anyhow!("the container credentials endpoint {uri} gave no AccessKeyId"))?,
        secret: s("SecretAccessKey").ok_or_else(|| anyhow!("the container credentials endpoint {uri} gave no SecretAccessKey"))?,
        token: s("Token").filter(|t| !t.is_empty()),
        who: format!("{role} (EKS Pod Identity)"),
        fix: "the pod identity's role lacks ecr:GetAuthorizationToken: attach e.g. AmazonEC2ContainerRegistryPowerUser to it",
    };
    Ok((keys, expiry(s("Expiration").as_deref())))
}

/// ECR's GetAuthorizationToken for the registry's account, signed with `keys`.
async fn ecr_token(
    host: &str,
    account: &str,
    region: &str,
    env: &CloudEnv,
    keys: &Keys,
) -> Result<Issued> {
    let url = reqwest::Url::parse(&format!("{}/", endpoint(env, "ecr", region)))
        .map_err(|e| anyhow!("the ECR endpoint is not a URL: fix AWS_ENDPOINT_URL_ECR: {e}"))?;
    let payload = serde_json::json!({ "registryIds": [account] }).to_string();
    let date = amz_date(now_secs());
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let mut headers = vec![
        ("content-type", "application/x-amz-json-1.1"),
        ("host", authority.as_str()),
        ("x-amz-date", date.as_str()),
        ("x-amz-target", TARGET),
    ];
    if let Some(t) = &keys.token {
        headers.push(("x-amz-security-token", t.as_str()));
    }
    let signer = Signer {
        access_key_id: &keys.id,
        secret_access_key: &keys.secret,
        region,
        service: "ecr",
    };
    let path = if url.path().is_empty() {
        "/"
    } else {
        url.path()
    };
    let authorization = signer.authorization(
        &Request {
            method: "POST",
            path,
            query: &[],
            headers: &headers,
            body: payload.as_bytes(),
        },
        &date,
    );
    let mut req = default_client()?.post(url.clone()).body(payload);
    for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
        req = req.header(*k, *v);
    }
    let resp = req.header("Authorization", authorization).send().await.with_context(|| {
        format!("cannot reach ECR's API at {url} for {host}: check the pod's network, or AWS_ENDPOINT_URL_ECR")
    })?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        return Err(refusal(host, keys, status, &text));
    }
    login(host, &text)
}

/// ECR's refusal in one line: which identity, what to change, then ECR's words.
fn refusal(host: &str, keys: &Keys, status: u16, text: &str) -> anyhow::Error {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let kind = v
        .get("__type")
        .and_then(|t| t.as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .or_else(|| xml_tag(text, "Code"))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let msg = v
        .get("message")
        .or(v.get("Message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .or_else(|| xml_tag(text, "Message"))
        .unwrap_or_else(|| clip(text));
    let fix = match kind.as_str() {
        "AccessDeniedException" | "AccessDenied" => keys.fix,
        "ExpiredTokenException" | "ExpiredToken" => "the credentials have expired: renew them (or let the pod's role provide them)",
        _ => "the credentials are not valid for ECR: check the key, the region and AWS_ENDPOINT_URL_ECR",
    };
    anyhow!(
        "ECR refused the token for {host} to {}: {fix}: {kind}: {}",
        keys.who,
        clip(&msg)
    )
}

/// The login in GetAuthorizationToken's answer: base64 `AWS:password`, and its expiry.
fn login(host: &str, text: &str) -> Result<Issued> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| anyhow!("ECR's answer for {host} is not JSON: check AWS_ENDPOINT_URL_ECR"))?;
    let data = v
        .pointer("/authorizationData/0")
        .ok_or_else(|| anyhow!("ECR's answer for {host} holds no authorizationData"))?;
    let token = data
        .get("authorizationToken")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| anyhow!("ECR's token for {host} is not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| anyhow!("ECR's token for {host} is not text"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("ECR's token for {host} is not user:password"))?;
    let expires = data.get("expiresAt").and_then(|e| {
        e.as_f64().or_else(|| {
            e.as_str()
                .and_then(|s| crate::gocompat::times::parse_rfc3339(s).map(|t| t.seconds as f64))
        })
    });
    let lifetime = expires.and_then(|at| {
        let at = UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0));
        at.duration_since(SystemTime::now()).ok()
    });
    Ok(Issued {
        credentials: Credentials {
            username: user.to_string(),
            secret: password.to_string(),
        },
        lifetime,
    })
}

/// The text of the first `<tag>…</tag>` (STS answers in XML; nothing else of it is needed).
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts() {
        assert_eq!(
            registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("123456789012".into(), "eu-west-1".into()))
        );
        assert_eq!(
            registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some(("123456789012".into(), "cn-north-1".into()))
        );
        assert_eq!(
            registry("123456789012.dkr-ecr-fips.us-east-1.amazonaws.com").map(|r| r.1),
            Some("us-east-1".into())
        );
        assert_eq!(registry("12345.dkr.ecr.eu-west-1.amazonaws.com"), None);
        assert_eq!(
            registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example"),
            None
        );
        assert_eq!(registry("public.ecr.aws"), None);
    }

    #[test]
    fn endpoints_follow_the_sdks_overrides() {
        let none = CloudEnv::default();
        assert_eq!(
            endpoint(&none, "ecr", "eu-west-1"),
            "https://api.ecr.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint(&none, "sts", "cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        let all = CloudEnv::of(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/")]);
        assert_eq!(endpoint(&all, "sts", "eu-west-1"), "http://127.0.0.1:5000");
        let one = CloudEnv::of(&[
            ("AWS_ENDPOINT_URL", "http://a"),
            ("AWS_ENDPOINT_URL_ECR", "http://b"),
        ]);
        assert_eq!(endpoint(&one, "ecr", "x"), "http://b");
        assert_eq!(endpoint(&one, "sts", "x"), "http://a");
    }

    #[test]
    fn refusals_name_the_identity_and_the_fix() {
        let keys = Keys {
            id: "A".into(),
            secret: "S".into(),
            token: None,
            who: "role arn:aws:iam::1:role/x".into(),
            fix: "the role's policy lacks ecr:GetAuthorizationToken",
        };
        let e = refusal(
            "h",
            &keys,
            400,
            r#"{"__type":"com.amazonaws#AccessDeniedException","message":"not authorized"}"#,
        )
        .to_string();
        assert_eq!(e, "ECR refused the token for h to role arn:aws:iam::1:role/x: the role's policy lacks ecr:GetAuthorizationToken: AccessDeniedException: not authorized");
        assert!(!e.contains('S'.to_string().repeat(2).as_str()));
    }

    #[test]
    fn the_login_in_ecrs_answer() {
        let i = login(
            "h",
            r#"{"authorizationData":[{"authorizationToken":"QVdTOnB3","expiresAt":1.0}]}"#,
        )
        .unwrap();
        assert_eq!(i.credentials.username, "AWS");
        assert_eq!(i.credentials.secret, "pw");
        assert!(i.lifetime.is_none());
        assert_eq!(
            xml_tag("<a><Code> X </Code></a>", "Code").as_deref(),
            Some("X")
        );
    }
}
