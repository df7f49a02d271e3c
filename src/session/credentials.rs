//! Registry credentials as the session serves them, and the source they come from: the caller injects it (bkrun's Docker config), so the session reads no config files and runs no programs.

/// A user name and secret (an identity token has no user name).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, secret: {} bytes }}",
            self.username,
            self.secret.len()
        )
    }
}

/// Finds a registry host's credentials. Called off the async threads: a look-up may run a
/// credential helper.
pub trait CredentialSource: Send + Sync {
    /// The credentials for `host`, None when there are none; an error says what to fix.
    fn credentials(&self, host: &str) -> anyhow::Result<Option<Credentials>>;

    /// The credentials for repository `repo` at `host`: a source may hold a login for one
    /// namespace or repository (containers' auth.json); by default the host's.
    fn credentials_for(&self, host: &str, repo: &str) -> anyhow::Result<Option<Credentials>> {
        let _ = repo;
        self.credentials(host)
    }

    /// Whether some repository of `host` has a login of its own (beyond the host's): then the
    /// session is not anonymous for `host` even when the host itself has no login.
    fn has_repository_logins(&self, host: &str) -> bool {
        let _ = host;
        false
    }
}
