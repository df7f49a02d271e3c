//! Registry credentials from the workload's cloud identity, picked by the registry's host name when no login file answers: ECR (`*.dkr.ecr.REGION.amazonaws.com`) from an IAM role or keys, Google's registries from a service account, ACR from Azure Workload Identity. Natively, not through credential helpers: BuildKit's own image ships none, and bkrun must work there as buildctl-daemonless.sh.

pub mod aws;
pub mod azure;
pub mod gcp;
mod http;
pub mod sigv4;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use crate::session::credentials::Credentials;
use crate::session::token::RegistryTls;

/// The variables the identities are read from, captured once (the values of secret ones are
/// never shown).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CloudEnv(BTreeMap<String, String>);

/// The variables read here; AWS_ENDPOINT_URL_* are matched by prefix.
const VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_ECR",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
];

impl std::fmt::Debug for CloudEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl CloudEnv {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> CloudEnv {
        CloudEnv(
            VARS.iter()
                .filter_map(|k| env(k).filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
                .collect(),
        )
    }

    /// For tests: exactly these variables.
    pub fn of(vars: &[(&str, &str)]) -> CloudEnv {
        CloudEnv(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

/// Which cloud's registry a host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cloud {
    /// ECR: the account and region from the host name.
    Aws {
        account: String,
        region: String,
    },
    Gcp,
    Azure,
}

/// What an identity gave: the registry login and how long it lasts (None: not said).
pub struct Issued {
    pub credentials: Credentials,
    pub lifetime: Option<Duration>,
}

impl Cloud {
    /// The cloud whose registry `host` (with or without a port) is, as the credential helpers
    /// recognise them.
    pub fn for_host(host: &str) -> Option<Cloud> {
        let name = strip_port(host).to_ascii_lowercase();
        if let Some((account, region)) = aws::registry(&name) {
            return Some(Cloud::Aws { account, region });
        }
        if name == "gcr.io" || name.ends_with(".gcr.io") || name.ends_with("-docker.pkg.dev") {
            return Some(Cloud::Gcp);
        }
        if [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
            .iter()
            .any(|s| name.ends_with(s) && name.len() > s.len())
        {
            return Some(Cloud::Azure);
        }
        None
    }

    /// One of each, for `bkrun config`.
    pub fn all() -> [Cloud; 3] {
        [
            Cloud::Aws {
                account: String::new(),
                region: String::new(),
            },
            Cloud::Gcp,
            Cloud::Azure,
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => "AWS",
            Cloud::Gcp => "Google Cloud",
            Cloud::Azure => "Azure",
        }
    }

    pub fn hosts(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => "*.dkr.ecr.*.amazonaws.com",
            Cloud::Gcp => "gcr.io, *.gcr.io, *-docker.pkg.dev",
            Cloud::Azure => "*.azurecr.io",
        }
    }

    /// What sets an identity up, for `bkrun config` when none is.
    pub fn how(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => "IRSA's AWS_ROLE_ARN, EKS Pod Identity, or AWS_ACCESS_KEY_ID",
            Cloud::Gcp => {
                "GKE Workload Identity's metadata server, or GOOGLE_APPLICATION_CREDENTIALS"
            }
            Cloud::Azure => "Azure Workload Identity's AZURE_FEDERATED_TOKEN_FILE",
        }
    }
}

/// The identity a cloud's registries would be answered with here, in words; None when none
/// is set up.
pub fn identity(cloud: &Cloud, env: &CloudEnv) -> Option<String> {
    match cloud {
        Cloud::Aws { .. } => aws::identity(env),
        Cloud::Gcp => gcp::identity(env),
        Cloud::Azure => azure::identity(env),
    }
}

/// Asks the cloud for `host`'s login (blocking). Ok(None): no identity is set up here, so the
/// registry is asked anonymously as before.
pub fn fetch(
    cloud: &Cloud,
    host: &str,
    env: &CloudEnv,
    tls: Option<&RegistryTls>,
) -> Result<Option<Issued>> {
    match cloud {
        Cloud::Aws { account, region } => http::block(aws::fetch(host, account, region, env)),
        Cloud::Gcp => http::block(gcp::fetch(host, env)),
        Cloud::Azure => http::block(azure::fetch(host, env, tls)),
    }
}

/// `host` without its `:port`.
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Seconds since the epoch, for the clouds' signed requests and assertions (0 before 1970).
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
