//! The platform's CA certificates, for the two TLS clients bkrun has: the daemon connection (client/) and registry token requests (session/).

use anyhow::{bail, Result};
use rustls_pki_types::CertificateDer;

/// The platform's CA certificates, found as Go's crypto/x509 finds them on Linux: the
/// distribution's bundle, or only what `SSL_CERT_FILE` and `SSL_CERT_DIR` name when either is
/// set (how CI jobs inject a corporate CA). Unreadable locations are an error only when they
/// leave no certificate at all, so one stale path does not break a build that has the others.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() && !found.errors.is_empty() {
        let why = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        bail!("cannot read the system's CA certificates (check SSL_CERT_FILE and SSL_CERT_DIR): {why}");
    }
    Ok(found.certs)
}
