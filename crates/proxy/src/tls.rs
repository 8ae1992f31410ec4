//! TLS for the proxy's listeners: rustls with the ring provider, certificates from PEM files
//! or from a local CA that Berth generates once (so `sslmode=verify-full` works against
//! `ca.pem`), ALPN `postgresql` for PostgreSQL 17 direct TLS, and the certificate hash that
//! SCRAM-SHA-256-PLUS binds to. Private keys are written 0600 and never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use wire::scram::ChannelBinding;

pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("invalid PEM in {0}")]
    Pem(PathBuf),
    #[error("the private key is not the one of the certificate in {0}")]
    KeyMismatch(PathBuf),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_owned(), source }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A ready TLS server side: the acceptor and the channel binding of its certificate.
#[derive(Clone)]
pub struct TlsServer {
    /// With secret extraction on: after the handshake, records are handled by `tls_conn`.
    pub config: Arc<ServerConfig>,
    pub channel_binding: ChannelBinding,
}

impl TlsServer {
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let label = PathBuf::from("<memory>");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem(label.clone()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Pem(label.clone()))?;
        Self::from_der(chain, key, &label)
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain_pem = std::fs::read(cert).map_err(io(cert))?;
        let key_pem = std::fs::read(key).map_err(io(key))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem(cert.to_owned()))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem(key.to_owned()))?;
        Self::from_der(chain, key_der, cert)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        label: &Path,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate(label.to_owned()))?;
        let channel_binding = end_point_binding(leaf);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(label.to_owned()),
                e => TlsError::Rustls(e),
            })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        config.enable_secret_extraction = true;
        Ok(TlsServer { config: Arc::new(config), channel_binding })
    }
}

/// `tls-server-end-point` binding data (RFC 5929): the certificate hashed with its signature
/// hash, or SHA-256 when that is MD5 or SHA-1. For signatures without a single hash (Ed25519)
/// the binding is undefined and PLUS is not offered.
fn end_point_binding(cert: &CertificateDer<'_>) -> ChannelBinding {
    use sha2_shim::digest;
    match signature_hash(cert) {
        Some(alg) => ChannelBinding::TlsServerEndPoint(digest(alg, cert)),
        None => ChannelBinding::None,
    }
}

mod sha2_shim {
    //! ring's digests, which rustls already links, so no second hash crate is needed here.
    pub(super) fn digest(alg: &'static ring::digest::Algorithm, data: &[u8]) -> Vec<u8> {
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// Reads the outer `signatureAlgorithm` OID of a certificate and maps it to a hash.
fn signature_hash(cert: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (_, outer) = der_tlv(cert, 0x30)?;
    let (after_tbs, _) = der_skip(outer)?;
    let (_, alg_seq) = der_tlv(after_tbs, 0x30)?;
    let (_, oid) = der_tlv(alg_seq, 0x06)?;
    const OIDS: &[(&[u8], u16)] = &[
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], 256), // sha1WithRSA
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], 256), // sha256WithRSA
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], 384), // sha384WithRSA
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], 512), // sha512WithRSA
        (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], 256),             // ecdsa-with-SHA1
        (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], 256),       // ecdsa-with-SHA256
        (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], 384),       // ecdsa-with-SHA384
        (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], 512),       // ecdsa-with-SHA512
    ];
    let bits = OIDS.iter().find(|(o, _)| *o == oid)?.1;
    Some(match bits {
        384 => &ring::digest::SHA384,
        512 => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    })
}

/// Reads one DER TLV with the expected tag; returns (rest after it, its contents).
fn der_tlv(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *buf.first()? != tag {
        return None;
    }
    let (len, hdr) = der_len(&buf[1..])?;
    let start = 1 + hdr;
    let end = start.checked_add(len)?;
    Some((buf.get(end..)?, buf.get(start..end)?))
}

fn der_skip(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let tag = *buf.first()?;
    der_tlv(buf, tag)
}

fn der_len(buf: &[u8]) -> Option<(usize, usize)> {
    let first = *buf.first()?;
    if first < 0x80 {
        return Some((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for b in buf.get(1..1 + n)? {
        len = (len << 8) | *b as usize;
    }
    Some((len, 1 + n))
}

/// A local certificate authority and a server certificate it signed, as PEM.
pub struct LocalCa {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl LocalCa {
    /// Generates a CA and a server certificate for `hostnames` (DNS names or IP addresses).
    pub fn generate(hostnames: &[String]) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "Berth local CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hostnames.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, hostnames.first().map_or("localhost", |h| h));
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key)?;
        Ok(LocalCa {
            ca_cert_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// Loads `dir/{ca.pem,server.pem,server.key}` or creates them on first use. A server
    /// certificate that does not name every one of `hostnames` (a `--public-host` given
    /// since it was made) is replaced, and so is the CA: its key was never kept, so it
    /// cannot sign again. Clients that trusted the old `ca.pem` must fetch the new one.
    pub fn load_or_create(dir: &Path, hostnames: &[String]) -> Result<Self, TlsError> {
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
        if ca.exists() && cert.exists() && key.exists() {
            let loaded = LocalCa {
                ca_cert_pem: std::fs::read_to_string(&ca).map_err(io(&ca))?,
                server_cert_pem: std::fs::read_to_string(&cert).map_err(io(&cert))?,
                server_key_pem: std::fs::read_to_string(&key).map_err(io(&key))?,
            };
            let missing = loaded.missing_names(hostnames);
            if missing.is_empty() {
                return Ok(loaded);
            }
            tracing::warn!(
                missing = ?missing,
                ca = %ca.display(),
                "the local CA's server certificate does not name every host; making a new CA and \
                 certificate (clients that trusted the old ca.pem must fetch it again)"
            );
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let generated = Self::generate(hostnames)?;
        write_private(&key, generated.server_key_pem.as_bytes())?;
        std::fs::write(&cert, &generated.server_cert_pem).map_err(io(&cert))?;
        std::fs::write(&ca, &generated.ca_cert_pem).map_err(io(&ca))?;
        tracing::info!(ca = %ca.display(), "generated a local certificate authority");
        Ok(generated)
    }

    pub fn server(&self) -> Result<TlsServer, TlsError> {
        TlsServer::from_pem(self.server_cert_pem.as_bytes(), self.server_key_pem.as_bytes())
    }

    /// Which of `hostnames` the server certificate's subject alternative names lack (all of
    /// them when it cannot be read). DNS names compare case-insensitively, IPs as addresses.
    fn missing_names(&self, hostnames: &[String]) -> Vec<String> {
        let names = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .and_then(|der| certificate_names(&der))
            .unwrap_or_default();
        hostnames.iter().filter(|h| !names.contains(&normalize_name(h))).cloned().collect()
    }
}

/// A host name as certificates are compared here: DNS names lower-cased, IPs in their
/// canonical text.
fn normalize_name(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The DNS names and IP addresses of a certificate's subjectAltName extension (RFC 5280
/// §4.2.1.6), normalized; `None` when the certificate cannot be read.
fn certificate_names(cert: &[u8]) -> Option<Vec<String>> {
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    let (_, outer) = der_tlv(cert, 0x30)?;
    let (_, mut tbs) = der_tlv(outer, 0x30)?;
    while let Some(&tag) = tbs.first() {
        let (rest, body) = der_skip(tbs)?;
        tbs = rest;
        // extensions [3] EXPLICIT SEQUENCE OF Extension
        if tag != 0xa3 {
            continue;
        }
        let (_, mut extensions) = der_tlv(body, 0x30)?;
        while !extensions.is_empty() {
            let (rest, extension) = der_tlv(extensions, 0x30)?;
            extensions = rest;
            let (mut after, oid) = der_tlv(extension, 0x06)?;
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            if after.first() == Some(&0x01) {
                after = der_skip(after)?.0; // critical
            }
            let (_, value) = der_tlv(after, 0x04)?;
            let (_, mut general_names) = der_tlv(value, 0x30)?;
            let mut names = Vec::new();
            while let Some(&tag) = general_names.first() {
                let (rest, body) = der_skip(general_names)?;
                general_names = rest;
                match (tag, body.len()) {
                    // dNSName [2] IA5String
                    (0x82, _) => names.push(std::str::from_utf8(body).ok()?.to_ascii_lowercase()),
                    // iPAddress [7] OCTET STRING
                    (0x87, 4) => {
                        names.push(std::net::IpAddr::from(<[u8; 4]>::try_from(body).ok()?).to_string())
                    }
                    (0x87, 16) => {
                        names.push(std::net::IpAddr::from(<[u8; 16]>::try_from(body).ok()?).to_string())
                    }
                    _ => {}
                }
            }
            return Some(names);
        }
    }
    Some(Vec::new())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_bind_with_sha256() {
        let ca = LocalCa::generate(&["localhost".into()]).unwrap();
        let server = ca.server().unwrap();
        let ChannelBinding::TlsServerEndPoint(hash) = server.channel_binding else {
            panic!("rcgen certificates are ECDSA P-256 with SHA-256")
        };
        assert_eq!(hash.len(), 32);
    }

    #[test]
    fn a_key_of_another_certificate_is_named_as_such() {
        let (a, b) = (
            LocalCa::generate(&["localhost".into()]).unwrap(),
            LocalCa::generate(&["localhost".into()]).unwrap(),
        );
        let e = TlsServer::from_pem(a.server_cert_pem.as_bytes(), b.server_key_pem.as_bytes()).err().unwrap();
        assert!(matches!(e, TlsError::KeyMismatch(_)), "{e}");
    }

    #[test]
    fn a_certificate_names_its_hosts_and_a_missing_one_is_remade() {
        let dir = tempfile::tempdir().unwrap();
        let local: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        let first = LocalCa::load_or_create(dir.path(), &local).unwrap();
        let der = CertificateDer::pem_slice_iter(first.server_cert_pem.as_bytes()).next().unwrap().unwrap();
        assert_eq!(certificate_names(&der).unwrap(), local);
        assert!(first.missing_names(&["LOCALHOST".into(), "127.0.0.1".into()]).is_empty());
        // A public host and its wildcard, given later: both certificates are new.
        let public: Vec<String> =
            [&local[..], &["db.example.com".into(), "*.db.example.com".into(), "::1".into()]].concat();
        assert_eq!(first.missing_names(&public), ["db.example.com", "*.db.example.com", "::1"]);
        let second = LocalCa::load_or_create(dir.path(), &public).unwrap();
        assert_ne!(second.ca_cert_pem, first.ca_cert_pem);
        assert!(second.missing_names(&public).is_empty());
        assert_eq!(std::fs::read_to_string(dir.path().join("server.pem")).unwrap(), second.server_cert_pem);
        // Going back to fewer names keeps what covers them.
        let third = LocalCa::load_or_create(dir.path(), &local).unwrap();
        assert_eq!(third.ca_cert_pem, second.ca_cert_pem);
    }

    #[test]
    fn load_or_create_is_stable_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCa::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let b = LocalCa::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        let mode = std::fs::metadata(dir.path().join("server.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
