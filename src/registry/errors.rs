//! What a failed registry exchange tells the user: one line saying what failed and what to do, then the detail (distribution's `errors[].code/message`, shortened), with bkrun's secrets blotted out.

use std::path::Path;

use anyhow::{anyhow, Error};
use serde::Deserialize;

use crate::session::token::{ErrorKind, TokenError};

/// Which access an operation needs: a token's scope and what a refusal says is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Push,
    Pull,
}

impl Access {
    /// distribution's token scope actions.
    pub fn actions(self) -> &'static str {
        match self {
            Access::Push => "pull,push",
            Access::Pull => "pull",
        }
    }
}

/// The operation a message is about.
pub struct Op<'a> {
    /// The registry as the reference names it (`127.0.0.1:5000`, `docker.io`).
    pub host: &'a str,
    pub repository: &'a str,
    /// The reference exactly as the caller gave it.
    pub reference: &'a str,
    pub access: Access,
    /// Where the logins come from, for the advice.
    pub docker_config: Option<&'a Path>,
}

impl Op<'_> {
    /// "push to REF" / "pull of REF".
    pub fn action(&self) -> String {
        match self.access {
            Access::Push => format!("push to {}", self.reference),
            Access::Pull => format!("pull of {}", self.reference),
        }
    }

    fn config(&self) -> String {
        match self.docker_config {
            Some(p) => format!("the Docker config ({})", p.display()),
            None => "the Docker config (none: neither DOCKER_CONFIG nor HOME is set)".into(),
        }
    }

    /// A refusal or failure by HTTP status; `logged_in` says whether credentials were sent.
    pub fn status(&self, code: u16, body: &[u8], logged_in: bool, secrets: &[&str]) -> Error {
        let (host, action, config) = (self.host, self.action(), self.config());
        let said = said(body, secrets);
        let head = match (code, logged_in) {
            (401, true) => format!("registry {host} refused bkrun's login for {action} (401): check the credentials for {host} in {config}, or run `docker login {host}` again"),
            (401, false) => format!("registry {host} wants a login for {action} (401): run `docker login {host}` (bkrun reads {config})"),
            (403, _) => format!("registry {host} denied {action} (403): the login for {host} in {config} needs {} access to {}", self.access.actions(), self.repository),
            (404, _) => format!("registry {host} has no {action} (404): check the repository name {} and that it exists", self.repository),
            (429, _) => format!("registry {host} is rate-limiting bkrun's {action} (429): retry later, or log in to raise the limit"),
            _ => format!("registry {host} failed bkrun's {action} (HTTP {code}): check that the registry works, then retry"),
        };
        with_detail(head, &said)
    }

    /// No answer at all: connection, TLS or timeout.
    pub fn transport(&self, e: &reqwest::Error) -> Error {
        let (host, action) = (self.host, self.action());
        let detail = if e.is_timeout() {
            "no answer in time".to_string()
        } else {
            crate::session::token::causes(e)
        };
        let hint = if detail.to_lowercase().contains("certificate") {
            format!("trust its CA (the system's CA store, or `ca` in bkrun.toml's [buildkitd.registry.\"{host}\"])")
        } else {
            "check the address, the network and the proxy settings (HTTPS_PROXY, NO_PROXY)".into()
        };
        anyhow!("cannot reach registry {host} for {action}: {hint}: {detail}")
    }

    /// No token: the token server refused the login, or could not be asked.
    pub fn token(&self, e: TokenError, logged_in: bool) -> Error {
        let (host, action, config) = (self.host, self.action(), self.config());
        match (e.kind, logged_in) {
            (ErrorKind::Refused, true) => anyhow!("registry {host} refused bkrun's login for {action}: check the credentials for {host} in {config}: {e}"),
            (ErrorKind::Refused, false) => anyhow!("registry {host} wants a login for {action}: run `docker login {host}` (bkrun reads {config}): {e}"),
            _ => anyhow!("cannot authorise bkrun's {action} at registry {host}: {e}"),
        }
    }

    /// An answer that makes no sense for the request (a missing Location, a foreign manifest).
    pub fn bad_answer(&self, what: &str) -> Error {
        anyhow!(
            "registry {} gave an unusable answer to bkrun's {}: check that it is an OCI distribution registry: {what}",
            self.host,
            self.action()
        )
    }
}

fn with_detail(head: String, said: &str) -> Error {
    if said.is_empty() {
        anyhow!("{head}")
    } else {
        anyhow!("{head}: {said}")
    }
}

/// distribution's error body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
#[derive(Deserialize)]
struct Errors {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The registry's codes (MANIFEST_UNKNOWN, NAME_UNKNOWN…), when its body is distribution's JSON.
pub fn codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.into_iter().map(|e| e.code).collect())
        .unwrap_or_default()
}

/// What the registry said, on one short line: `CODE: message` per distribution error (their
/// `detail` is left out: it repeats the request), else the body's text; secrets blotted out.
pub fn said(body: &[u8], secrets: &[&str]) -> String {
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    crate::session::token::one_line(&text, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(access: Access) -> Op<'static> {
        Op {
            host: "127.0.0.1:5000",
            repository: "cache/mounts",
            reference: "127.0.0.1:5000/cache/mounts:main",
            access,
            docker_config: Some(Path::new("/home/ci/.docker/config.json")),
        }
    }

    #[test]
    fn refusals_say_what_failed_and_what_to_do_on_one_line() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"cache/mounts","Action":"push"}]}]}"#;
        let e = op(Access::Push).status(401, body, true, &[]).to_string();
        assert_eq!(e, "registry 127.0.0.1:5000 refused bkrun's login for push to 127.0.0.1:5000/cache/mounts:main (401): check the credentials for 127.0.0.1:5000 in the Docker config (/home/ci/.docker/config.json), or run `docker login 127.0.0.1:5000` again: UNAUTHORIZED: authentication required");
        let e = op(Access::Pull).status(401, b"", false, &[]).to_string();
        assert_eq!(e, "registry 127.0.0.1:5000 wants a login for pull of 127.0.0.1:5000/cache/mounts:main (401): run `docker login 127.0.0.1:5000` (bkrun reads the Docker config (/home/ci/.docker/config.json))");
        let e = op(Access::Push).status(403, b"{\"errors\":[{\"code\":\"DENIED\"}]}", true, &[]);
        assert!(
            e.to_string()
                .contains("needs pull,push access to cache/mounts: DENIED"),
            "{e}"
        );
        let e = op(Access::Push).status(500, b"<html>\n  oops\n</html>", true, &[]);
        assert!(
            e.to_string().ends_with(
                "(HTTP 500): check that the registry works, then retry: <html> oops </html>"
            ),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_blotted_out_and_long_answers_cut() {
        let e = op(Access::Push).status(
            400,
            b"bad password s3cr3t-pw and token tok-abcdef",
            true,
            &["s3cr3t-pw", "tok-abcdef", "ab"],
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(
            e.to_string().ends_with("bad password **** and token ****"),
            "{e}"
        );
        let long = said("é".repeat(400).as_bytes(), &[]);
        assert!(
            long.ends_with('…') && long.len() <= crate::session::token::MAX_DETAIL + '…'.len_utf8()
        );
    }

    #[test]
    fn error_codes_are_read_from_distribution_bodies() {
        assert_eq!(
            codes(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"},{"code":"NAME_UNKNOWN"}]}"#),
            ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]
        );
        assert!(codes(b"404 page not found").is_empty());
    }
}
