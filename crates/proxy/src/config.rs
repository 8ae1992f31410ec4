//! The proxy's TOML configuration file (`berth proxy --config FILE`): listeners, TLS,
//! timeouts, and the databases it routes to with their roles and limits. Loading turns
//! passwords into SCRAM verifiers; the parsed file is never logged because it holds secrets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::units::{ByteSize, Seconds};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("database {database:?}: {message}")]
    Database { database: String, message: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseSection>,
    #[serde(default)]
    pub admin: AdminSection,
}

/// Who may log in to the admin console (`psql -d berth`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default)]
    pub users: BTreeMap<String, RoleSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Direct (session) listener.
    pub listen: SocketAddr,
    /// Pooled listener (transaction or session pooling per database); off when absent.
    pub pooled_listen: Option<SocketAddr>,
    /// Prometheus metrics at `http://<addr>/metrics`; off when absent.
    pub metrics_listen: Option<SocketAddr>,
    pub require_tls: bool,
    /// PEM certificate chain and key. When absent, a local CA and a server certificate are
    /// generated in `tls_dir`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_dir: Option<PathBuf>,
    /// Host names (and IPs) the generated server certificate is valid for.
    pub tls_hostnames: Vec<String>,
    pub auth_timeout: Seconds,
    pub shutdown_timeout: Seconds,
    pub connect_timeout: Seconds,
    pub max_message_size: ByteSize,
    pub max_client_connections: usize,
    /// Connections from one source address still logging in (TLS, startup, SCRAM) that
    /// may be open at once; more are closed at accept. 0 turns the cap off.
    pub max_unauthenticated_per_source: usize,
    /// A file holding the key of the fake SCRAM salts shown for unknown users, created
    /// (0600) when missing. Without it each start picks a random key, and an unknown user's
    /// salt then changes at a restart while a real user's does not: set it in production.
    pub fake_scram_key_file: Option<PathBuf>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: SocketAddr::from(([127, 0, 0, 1], 6433)),
            pooled_listen: None,
            metrics_listen: None,
            require_tls: true,
            tls_cert: None,
            tls_key: None,
            tls_dir: None,
            tls_hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            auth_timeout: Seconds(Duration::from_secs(10)),
            shutdown_timeout: Seconds(Duration::from_secs(30)),
            connect_timeout: Seconds(Duration::from_secs(5)),
            max_message_size: ByteSize(256 << 20),
            max_client_connections: 10_000,
            max_unauthenticated_per_source: crate::unauthenticated::DEFAULT_MAX_PER_SOURCE,
            fake_scram_key_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Name of the database on the upstream; defaults to the routed name.
    pub dbname: Option<String>,
    /// A directory holding the upstream's unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub ssl_mode: crate::routes::SslMode,
    /// CA bundle for `verify-ca` / `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSection>,
    pub max_client_connections: Option<u32>,
    pub query_timeout: Option<Seconds>,
    pub transaction_timeout: Option<Seconds>,
    pub idle_timeout: Option<Seconds>,
    pub idle_in_transaction_timeout: Option<Seconds>,
    #[serde(default)]
    pub pool: crate::routes::PoolConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// Plaintext password; turned into a verifier at load. Also used to log in upstream.
    pub password: Option<String>,
    /// `SCRAM-SHA-256$...` as stored in `pg_authid`.
    pub verifier: Option<String>,
    /// Password for the upstream when it differs from the client's (registered upstreams).
    pub upstream_password: Option<String>,
}

impl ConfigFile {
    /// The proxy's settings, admin logins included (passwords become verifiers here).
    pub fn settings(&self) -> Result<crate::ProxySettings, ConfigError> {
        let mut settings = crate::ProxySettings::from(&self.proxy);
        if let Some(path) = &self.proxy.fake_scram_key_file {
            settings.fake_scram_key = crate::FakeScramKey::load_or_create(path)
                .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        }
        for (name, user) in &self.admin.users {
            let err = |m: &str| ConfigError::Database {
                database: crate::admin::ADMIN_DATABASE.into(),
                message: format!("admin user {name:?}: {m}"),
            };
            let verifier = match (&user.verifier, &user.password) {
                (Some(v), _) => {
                    wire::scram::ScramVerifier::parse(v).map_err(|_| err("invalid SCRAM verifier"))?
                }
                (None, Some(p)) => wire::scram::ScramVerifier::generate(p),
                (None, None) => return Err(err("set password or verifier")),
            };
            settings.admin_users.insert(name.clone(), vec![verifier]);
        }
        Ok(settings)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's messages quote the offending line, which may hold a password: keep only
        // the position and the reason.
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            format!("{}{at}", e.message())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_scram_key_file_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scram-fake.key");
        let text = format!("[proxy]\nfake_scram_key_file = {:?}\n", path.display().to_string());
        let first = ConfigFile::parse(&text).unwrap().settings().unwrap();
        assert!(path.exists());
        let again = ConfigFile::parse(&text).unwrap().settings().unwrap();
        assert_eq!(first.fake_scram_key, again.fake_scram_key);
        // Without the option, a key of the process's own.
        let plain = ConfigFile::parse("").unwrap().settings().unwrap();
        assert_ne!(plain.fake_scram_key, first.fake_scram_key);
    }
}
