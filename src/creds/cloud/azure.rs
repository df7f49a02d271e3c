//! ACR logins from Azure Workload Identity: the projected federated token (AZURE_FEDERATED_TOKEN_FILE) as a client assertion for an Entra ID (AAD) access token, traded at the registry's `/oauth2/exchange` for an ACR refresh token, used with the null-GUID user as `az acr login` does.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::gcp::oauth_error;
use super::http::{body, client, default_client};
use super::{CloudEnv, Issued};
use crate::session::credentials::Credentials;
use crate::session::token::{plain_http_registry, RegistryTls};

/// The user name ACR takes a refresh token with.
pub const USER: &str = "00000000-0000-0000-0000-000000000000";
/// Entra ID's audience for container registries.
const SCOPE: &str = "https://containerregistry.azure.net/.default";
const AUTHORITY: &str = "https://login.microsoftonline.com/";
/// ACR refresh tokens last about three hours; it does not say so in the answer.
const REFRESH_LIFETIME: Duration = Duration::from_secs(3 * 3600 - 600);

/// The identity that would be used, in words.
pub fn identity(env: &CloudEnv) -> Option<String> {
    let (client, tenant) = (env.get("AZURE_CLIENT_ID")?, env.get("AZURE_TENANT_ID")?);
    env.get("AZURE_FEDERATED_TOKEN_FILE")?;
    Some(format!(
        "workload identity client {client}, tenant {tenant}"
    ))
}

/// `host`'s login; None when Workload Identity is not set up here.
pub async fn fetch(
    host: &str,
    env: &CloudEnv,
    tls: Option<&RegistryTls>,
) -> Result<Option<Issued>> {
    let (Some(client_id), Some(tenant), Some(file)) = (
        env.get("AZURE_CLIENT_ID"),
        env.get("AZURE_TENANT_ID"),
        env.get("AZURE_FEDERATED_TOKEN_FILE"),
    ) else {
        return Ok(None);
    };
    let who = format!("workload identity client {client_id} (tenant {tenant})");
    let assertion = super::super::read::secret(std::path::Path::new(file)).with_context(|| {
        format!("cannot read the federated token {file} (AZURE_FEDERATED_TOKEN_FILE) for {who}: check the pod has the label azure.workload.identity/use: \"true\"")
    })?;
    let aad = aad_token(env, tenant, client_id, assertion.trim(), &who).await?;
    let refresh = exchange(host, tenant, &aad, &who, tls).await?;
    Ok(Some(Issued {
        credentials: Credentials {
            username: USER.into(),
            secret: refresh,
        },
        lifetime: Some(REFRESH_LIFETIME),
    }))
}

/// Entra ID's client-credentials grant with the federated token as the client assertion.
async fn aad_token(
    env: &CloudEnv,
    tenant: &str,
    client_id: &str,
    assertion: &str,
    who: &str,
) -> Result<String> {
    let authority = env.get("AZURE_AUTHORITY_HOST").unwrap_or(AUTHORITY);
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", SCOPE),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    let resp = default_client()?.post(&url).form(&form).send().await
        .with_context(|| format!("cannot reach Entra ID at {url} for {who}: check the pod's network, or AZURE_AUTHORITY_HOST"))?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        bail!("Entra ID refused a token to {who}: check the identity has a federated credential for this service account (its azure.workload.identity/client-id annotation and the issuer/subject): {}", oauth_error(status, &text));
    }
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
    }
    let a: Answer = serde_json::from_str(&text)
        .map_err(|_| anyhow!("Entra ID's answer for {who} holds no access_token"))?;
    Ok(a.access_token)
}

/// ACR's exchange of an Entra ID token for a registry refresh token, at the registry itself.
async fn exchange(
    host: &str,
    tenant: &str,
    aad: &str,
    who: &str,
    tls: Option<&RegistryTls>,
) -> Result<String> {
    let scheme = if plain_http_registry(host, tls) {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{host}/oauth2/exchange");
    let service = super::strip_port(host);
    let form = [
        ("grant_type", "access_token"),
        ("service", service),
        ("tenant", tenant),
        ("access_token", aad),
    ];
    let resp = client(tls, Duration::from_secs(30))?.post(&url).form(&form).send().await
        .with_context(|| format!("cannot reach {url} to trade {who}'s token for an ACR login: check the registry's name and the pod's network"))?;
    let (status, text) = body(resp).await?;
    if status != 200 {
        bail!("ACR {host} refused {who}'s token: give the identity the AcrPush (or AcrPull) role on the registry: {}", oauth_error(status, &text));
    }
    #[derive(Deserialize)]
    struct Answer {
        refresh_token: String,
    }
    let a: Answer = serde_json::from_str(&text)
        .map_err(|_| anyhow!("ACR {host}'s exchange answer holds no refresh_token"))?;
    Ok(a.refresh_token)
}
