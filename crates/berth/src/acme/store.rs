//! Where ACME state lives in the data directory: `acme/<directory id>/account.json` (the
//! account's credentials, its private key included) and `<host>.pem` / `<host>.key` (the
//! certificate chain and its key), one folder per ACME directory so a staging account or
//! certificate is never taken for a production one. Folders are 0700, files 0600, written
//! to a temporary name and renamed into place. Nothing here logs or returns a key's bytes.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sha2::{Digest, Sha256};

pub struct Store {
    dir: PathBuf,
    host: String,
}

/// A certificate chain with its key, as PEM, and what its leaf says about time.
pub struct Certificate {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number in hex, for the logs.
    pub serial: String,
}

impl Certificate {
    /// Reads the leaf's validity; fails on anything that is not a PEM certificate chain.
    pub fn new(chain_pem: String, key_pem: String) -> anyhow::Result<Self> {
        let leaf = crate::local_ca::certificates(chain_pem.as_bytes())
            .into_iter()
            .next()
            .context("no certificate in the chain")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let validity = cert.validity();
        let (not_before, not_after) =
            (time(validity.not_before.timestamp()), time(validity.not_after.timestamp()));
        let serial = cert.raw_serial_as_string().replace(':', "");
        Ok(Certificate { chain_pem, key_pem, not_before, not_after, serial })
    }

    /// When to renew: two thirds into its lifetime, as Let's Encrypt advises for 90-day
    /// certificates (30 days before expiry), and in proportion for shorter ones.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }
}

impl Store {
    /// The folder for `directory_url` under `data/acme`, made (0700) if missing.
    pub fn open(data: &Path, directory_url: &str, host: &str) -> anyhow::Result<Self> {
        let digest = Sha256::digest(directory_url.as_bytes());
        let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let acme = data.join("acme");
        let dir = acme.join(id);
        for d in [&acme, &dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", d.display()))?;
        }
        Ok(Store { dir, host: host.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.host))
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.host))
    }

    /// The stored account credentials (JSON), if any.
    pub fn account(&self) -> anyhow::Result<Option<String>> {
        read_if_present(&self.account_path())
    }

    pub fn save_account(&self, json: &str) -> anyhow::Result<()> {
        crate::bootstrap::write_private_bytes(&self.account_path(), json.as_bytes())
    }

    /// The stored certificate, if both files are there and read as one; a broken pair is
    /// reported so the caller can order a new one.
    pub fn certificate(&self) -> anyhow::Result<Option<Certificate>> {
        let (Some(chain), Some(key)) =
            (read_if_present(&self.cert_path())?, read_if_present(&self.key_path())?)
        else {
            return Ok(None);
        };
        Certificate::new(chain, key).map(Some)
    }

    /// The key first, then the chain: a pair cut in half by a crash reads as a mismatch at
    /// the next start, which orders a new certificate.
    pub fn save_certificate(&self, cert: &Certificate) -> anyhow::Result<()> {
        crate::bootstrap::write_private_bytes(&self.key_path(), cert.key_pem.as_bytes())?;
        crate::bootstrap::write_private_bytes(&self.cert_path(), cert.chain_pem.as_bytes())
    }
}

fn read_if_present(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid for the 90 days from 1 January to 1 April 2030.
    fn self_signed() -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["db.example.com".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 4, 1);
        let cert = params.self_signed(&key).unwrap();
        Certificate::new(cert.pem(), key.serialize_pem()).unwrap()
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let cert = self_signed();
        assert_eq!(cert.renew_at(), cert.not_before + Duration::from_secs(60 * 86400));
        assert!(Certificate::new("no pem here".into(), String::new()).is_err());
    }

    #[test]
    fn files_are_private_and_per_directory() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path(), "https://acme.example/dir", "db.example.com").unwrap();
        assert!(store.certificate().unwrap().is_none());
        let cert = self_signed();
        store.save_certificate(&cert).unwrap();
        store.save_account("{\"id\":\"x\"}").unwrap();
        let again = store.certificate().unwrap().unwrap();
        assert_eq!(again.serial, cert.serial);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.path().join("acme")), 0o700);
        assert_eq!(mode(store.dir()), 0o700);
        for f in ["account.json", "db.example.com.pem", "db.example.com.key"] {
            assert_eq!(mode(&store.dir().join(f)), 0o600, "{f}");
        }
        let other = Store::open(data.path(), "https://other.example/dir", "db.example.com").unwrap();
        assert_ne!(other.dir(), store.dir());
        assert!(other.certificate().unwrap().is_none() && other.account().unwrap().is_none());
    }
}
