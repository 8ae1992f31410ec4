//! Registered upstreams in the proxy: their routes (database `db_…`, the registered role
//! with its unsealed password, every other role of the upstream through the auth query) and
//! the check a registration runs before it is stored.

use std::path::Path;
use std::time::Duration;

use catalog::{MasterKey, RegisteredRoute};
use control::api::{Upstream as UpstreamSpec, UpstreamProbe};
use proxy::SslMode;
use proxy::auth_query::AuthQuery;
use proxy::routes::{Database, Limits, PoolConfig, PoolMode, Role, Upstream, UpstreamAddr};
use proxy::secret::Secret;

/// Where `verify-ca` and `verify-full` find trusted roots (Debian's bundle, as libpq's
/// `sslrootcert=system`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn ssl_mode(s: &str) -> Option<SslMode> {
    Some(match s {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

/// The proxy's view of an upstream; a host that is an absolute path is a socket directory.
fn upstream(host: &str, port: u16, name: &str, mode: &str) -> Result<Upstream, String> {
    let mode = ssl_mode(mode).ok_or_else(|| format!("unknown ssl_mode {mode:?}"))?;
    let addr = if host.starts_with('/') {
        if mode.uses_tls() && mode != SslMode::Prefer {
            return Err("ssl_mode applies to TCP hosts only; use disable for a socket directory".into());
        }
        UpstreamAddr::Unix { dir: host.into(), port }
    } else {
        UpstreamAddr::Tcp { host: host.to_owned(), port }
    };
    let (mode, roots) = match (&addr, mode) {
        (UpstreamAddr::Unix { .. }, _) => (SslMode::Disable, None),
        (_, m) if m.verifies() => (m, Some(Path::new(SYSTEM_ROOTS).to_owned())),
        (_, m) => (m, None),
    };
    let tls = proxy::upstream_tls_config(mode, roots.as_deref())?;
    Ok(Upstream { addr, dbname: name.to_owned(), ssl_mode: mode, ssl_root_cert: roots, tls })
}

/// The proxy's databases for the registered upstreams (those that cannot be read are
/// skipped and logged).
pub fn databases(rows: Vec<RegisteredRoute>, key: &MasterKey) -> Vec<Database> {
    let mut out = Vec::new();
    for r in rows {
        let d = r.database;
        let password = match key.open_secret(&d.password_ciphertext, &d.id) {
            Ok(p) => Secret::new(p.expose()),
            Err(e) => {
                tracing::error!(database_id = %d.id, error = %e, "cannot unseal a registered password; not routed");
                continue;
            }
        };
        let port = u16::try_from(d.port).unwrap_or(5432);
        let up = match upstream(&d.host, port, &d.name, &d.ssl_mode) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(database_id = %d.id, error = %e, "registered upstream not routed");
                continue;
            }
        };
        // PgBeam's pool_config (with max_active), not the projects' view of it.
        let api: control::api::DatabasePoolConfig =
            serde_json::from_value(d.pool_config.clone()).unwrap_or_default();
        let defaults = PoolConfig::default();
        let pool = PoolConfig {
            pool_size: api.pool_size.unwrap_or(defaults.pool_size),
            min_pool_size: api.min_pool_size.unwrap_or(defaults.min_pool_size),
            pool_mode: match api.pool_mode {
                Some(control::views::PoolMode::Session) => PoolMode::Session,
                _ => PoolMode::Transaction,
            },
            max_active: api.max_active,
            ..defaults
        };
        // The registered role: checked against a verifier of its stored password (whatever
        // the upstream stores), logged in upstream with the password. Every other role goes
        // through the auth query, with its verifier from the upstream.
        let registered = Role {
            name: d.username.clone(),
            verifiers: vec![wire::scram::ScramVerifier::generate(password.expose())],
            upstream_password: Some(password.clone()),
        };
        let roles = std::collections::HashMap::from([(d.username.clone(), registered)]);
        out.push(Database {
            name: d.id.clone(),
            upstream: up,
            roles,
            limits: Limits::default(),
            pool,
            api_key_access: None,
            auth_query: Some(AuthQuery { user: d.username, password }),
            close_sessions_on_removal: true,
        });
    }
    out
}

/// Checks registrations through the proxy's own upstream login.
pub struct Probe;

impl UpstreamProbe for Probe {
    fn probe<'a>(
        &'a self,
        spec: &'a UpstreamSpec,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let up = upstream(&spec.host, spec.port, &spec.name, &spec.ssl_mode)?;
            let password = Secret::new(spec.password.expose());
            proxy::auth_query::probe(&up, &spec.username, &password, PROBE_TIMEOUT).await
        })
    }
}
