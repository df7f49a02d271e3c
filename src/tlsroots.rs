//! The system's CA certificates, for the two TLS clients bkrun has: the daemon connection (client/) and registry token requests (session/).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The system's CA certificates (Debian's and Red Hat's bundle files); none when neither exists.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(path) {
            out.extend(CertificateDer::pem_slice_iter(&pem).flatten());
        }
    }
    out
}
