//! Registered upstreams in the proxy: their routes (database `db_…`, the registered role
//! with its unsealed password, every other role of the upstream through the auth query) and
//! the check a registration runs before it is stored. A registered upstream is the tenant's
//! word alone: it is TCP unless the operator allows a socket directory (never one inside
//! Berth's data directory), it must check the password Berth holds at every login, it never
//! serves a superuser session, and with `--upstream-deny-private` only public addresses.
//! Its certificate is verified against the roots the registration supplied (or, for
//! `verify-full` alone, the system's), and every login is held to the password exchange
//! the registration check saw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use catalog::{MasterKey, RegisteredRoute};
use control::api::{ProbeError, Probed, Upstream as UpstreamSpec, UpstreamProbe};
use proxy::SslMode;
use proxy::auth_query::AuthQuery;
use proxy::routes::{Database, Limits, PoolConfig, PoolMode, Role, Upstream, UpstreamAddr, UpstreamTrust};
use proxy::secret::Secret;
use proxy::upstream_auth::AuthMethod;

/// Where `verify-full` finds trusted roots when the registration supplied none (Debian's
/// bundle, as libpq's `sslrootcert=system`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Registration checks one API key may run per `PROBE_WINDOW`: enough for a person fixing a
/// typo, too few to scan a network's ports through Berth.
const PROBES_PER_WINDOW: u32 = 10;
const PROBE_WINDOW: Duration = Duration::from_secs(60);

/// What the operator allows registered upstreams to be (`berth up` flags).
#[derive(Debug, Clone, Default)]
pub struct UpstreamPolicy {
    /// Berth's own data directory: no socket inside it is ever an upstream.
    pub data_dir: PathBuf,
    /// Socket directories registrations may name (`--upstream-socket-dir`); none by default.
    pub socket_dirs: Vec<PathBuf>,
    /// Only public addresses (`--upstream-deny-private`).
    pub deny_private: bool,
}

impl UpstreamPolicy {
    fn trust(&self, auth_method: Option<AuthMethod>) -> UpstreamTrust {
        UpstreamTrust::Registered { private_denied: self.deny_private, auth_method }
    }

    /// Whether a registration may name socket directory `dir`: one the operator listed,
    /// compared after resolving links, and not inside the data directory.
    fn socket_dir_allowed(&self, dir: &Path) -> Result<(), String> {
        const HOW: &str = "registered upstreams are reached over TCP; an operator allows a socket \
                           directory with `berth up --upstream-socket-dir DIR`";
        let real = dir.canonicalize().map_err(|_| format!("socket directories are not allowed: {HOW}"))?;
        let data = self.data_dir.canonicalize().unwrap_or_else(|_| self.data_dir.clone());
        if real.starts_with(&data) {
            return Err("a socket directory inside Berth's data directory is never an upstream".into());
        }
        let listed = self.socket_dirs.iter().any(|d| d.canonicalize().is_ok_and(|d| d == real));
        if listed { Ok(()) } else { Err(format!("socket directories are not allowed: {HOW}")) }
    }
}

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

/// How a registration reaches its upstream and what it holds the upstream to.
struct Reach<'a> {
    host: &'a str,
    port: u16,
    name: &'a str,
    ssl_mode: &'a str,
    /// PEM roots the registration supplied.
    ssl_root_cert: Option<&'a str>,
    /// What the registration check saw; `None` while checking, or for old rows.
    auth_method: Option<AuthMethod>,
}

/// The proxy's view of an upstream; a host that is an absolute path is a socket directory,
/// allowed only as `policy` says.
fn upstream(reach: &Reach<'_>, policy: &UpstreamPolicy) -> Result<Upstream, String> {
    let Reach { host, port, name, ssl_mode: mode, ssl_root_cert, auth_method } = *reach;
    let mode = ssl_mode(mode).ok_or_else(|| format!("unknown ssl_mode {mode:?}"))?;
    let addr = if host.starts_with('/') {
        policy.socket_dir_allowed(Path::new(host))?;
        if mode.uses_tls() && mode != SslMode::Prefer {
            return Err("ssl_mode applies to TCP hosts only; use disable for a socket directory".into());
        }
        UpstreamAddr::Unix { dir: host.into(), port }
    } else {
        UpstreamAddr::Tcp { host: host.to_owned(), port }
    };
    let (mode, roots, tls) = match (&addr, mode) {
        (UpstreamAddr::Unix { .. }, _) => (SslMode::Disable, None, None),
        (_, m) if m.verifies() => match ssl_root_cert {
            Some(pem) => (m, None, proxy::upstream_tls_config_pem(m, Some(pem.as_bytes()))?),
            // The system's roots vouch for every publicly issued certificate: only the
            // name check makes them mean anything (libpq's sslrootcert=system rule).
            None if m == SslMode::VerifyCa => {
                return Err("ssl_mode verify-ca needs ssl_root_cert".into());
            }
            None => {
                let system = Path::new(SYSTEM_ROOTS);
                (m, Some(system.to_owned()), proxy::upstream_tls_config(m, Some(system))?)
            }
        },
        (_, m) => (m, None, proxy::upstream_tls_config(m, None)?),
    };
    Ok(Upstream {
        addr,
        dbname: name.to_owned(),
        ssl_mode: mode,
        ssl_root_cert: roots,
        tls,
        trust: policy.trust(auth_method),
    })
}

/// The proxy's databases for the registered upstreams (those that cannot be read are
/// skipped and logged).
pub fn databases(rows: Vec<RegisteredRoute>, key: &MasterKey, policy: &UpstreamPolicy) -> Vec<Database> {
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
        let auth_method = d.auth_method.as_deref().and_then(AuthMethod::parse);
        let reach = Reach {
            host: &d.host,
            port,
            name: &d.name,
            ssl_mode: &d.ssl_mode,
            ssl_root_cert: d.ssl_root_cert.as_deref(),
            auth_method,
        };
        let up = match upstream(&reach, policy) {
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

/// Checks registrations through the proxy's own upstream login, a few per key a minute.
pub struct Probe {
    policy: std::sync::Arc<UpstreamPolicy>,
    /// Per API key: when its window started and the checks run in it.
    recent: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Probe {
    pub fn new(policy: std::sync::Arc<UpstreamPolicy>) -> Self {
        Probe { policy, recent: Mutex::new(HashMap::new()) }
    }

    /// Counts a check for `caller`; how long to wait when it has run its share.
    fn admit(&self, caller: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut recent = self.recent.lock().expect("probe limiter poisoned");
        recent.retain(|_, (start, _)| now.duration_since(*start) < PROBE_WINDOW);
        let (start, n) = recent.entry(caller.to_owned()).or_insert((now, 0));
        if *n >= PROBES_PER_WINDOW {
            return Err(PROBE_WINDOW.saturating_sub(now.duration_since(*start)));
        }
        *n += 1;
        Ok(())
    }
}

impl UpstreamProbe for Probe {
    fn probe<'a>(
        &'a self,
        caller: &'a str,
        spec: &'a UpstreamSpec,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Probed, ProbeError>> + Send + 'a>> {
        Box::pin(async move {
            self.admit(caller).map_err(ProbeError::RateLimited)?;
            let reach = Reach {
                host: &spec.host,
                port: spec.port,
                name: &spec.name,
                ssl_mode: &spec.ssl_mode,
                ssl_root_cert: spec.ssl_root_cert.as_deref(),
                auth_method: None,
            };
            let up = upstream(&reach, &self.policy).map_err(ProbeError::Rejected)?;
            let password = Secret::new(spec.password.expose());
            let method = proxy::auth_query::probe(&up, &spec.username, &password, PROBE_TIMEOUT)
                .await
                .map_err(ProbeError::Rejected)?;
            Ok(Probed { auth_method: method.as_str().to_owned() })
        })
    }
}

#[cfg(test)]
mod tests {
    /// The API shows the pool a registration runs with: its defaults are the proxy's.
    #[test]
    fn the_apis_pool_defaults_are_the_proxys() {
        let proxy = proxy::PoolConfig::default();
        assert_eq!(control::api::DEFAULT_POOL_SIZE, proxy.pool_size);
        assert_eq!(control::api::DEFAULT_MIN_POOL_SIZE, proxy.min_pool_size);
        assert_eq!(proxy.pool_mode, proxy::PoolMode::Transaction);
    }
}
