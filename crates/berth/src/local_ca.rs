//! What the client commands need to know about Berth's local CA certificate: a short id
//! that names one CA (for file names that stay apart across machines) and its certificates as
//! DER. Only the public certificate is ever handled here, never a key.

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// The certificates in a PEM document.
pub fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

/// The first 12 hex digits of the SHA-256 of the first certificate in `pem`.
pub fn short_id(pem: &[u8]) -> anyhow::Result<String> {
    let cert = certificates(pem).into_iter().next().context("no certificate in the CA file")?;
    let digest = Sha256::digest(cert.as_ref());
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_names_the_certificate_not_its_text() {
        let ca = proxy::LocalCa::generate(&["localhost".into()]).expect("a CA");
        let id = short_id(ca.ca_cert_pem.as_bytes()).expect("an id");
        assert_eq!(id.len(), 12);
        let crlf = ca.ca_cert_pem.replace('\n', "\r\n");
        assert_eq!(short_id(crlf.as_bytes()).expect("an id"), id);
        let other = proxy::LocalCa::generate(&["localhost".into()]).expect("a CA");
        assert_ne!(short_id(other.ca_cert_pem.as_bytes()).expect("an id"), id);
        assert!(short_id(b"not a certificate").is_err());
    }
}
