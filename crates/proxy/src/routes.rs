//! The route table: what a database name in a startup packet leads to. The proxy serves an
//! immutable snapshot (`Arc<RouteTable>`) swapped whole on reload, so a connection keeps the
//! snapshot it started with while new ones see the new table. The proxy never reads the
//! catalog: snapshots come from a TOML file or from whoever composes the proxy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wire::scram::ScramVerifier;

use crate::config::{ConfigError, ConfigFile};
use crate::secret::Secret;

#[derive(Debug, Default)]
pub struct RouteTable {
    databases: HashMap<String, Arc<Database>>,
    /// Role name → the database a login as that role reaches when it names no database, or
    /// names its own role as one (libpq sends the user name then: Prisma Postgres strings
    /// have no database).
    role_defaults: HashMap<String, String>,
    /// SNI labels (lower-cased) → what `<label>.<public-host>` serves.
    labels: HashMap<String, SniLabel>,
}

/// What one SNI label serves: databases by the names their upstreams give them, and the one
/// a login naming no database (or its own role) reaches.
#[derive(Debug, Default)]
struct SniLabel {
    /// (database name as the upstream has it, route name), in the order they were added.
    names: Vec<(String, String)>,
    default: Option<String>,
}

/// Where a login under an SNI label goes.
#[derive(Debug, Default)]
pub struct SniLogin<'a> {
    /// The route its database name reaches; `None` when the label serves no such database
    /// (`3D000`, once the password is proven) or is no label at all.
    pub route: Option<&'a Arc<Database>>,
    /// Whose verifiers the password is checked against: the route's, or for a database the
    /// label does not serve, a route of the label that knows the role, so a mistyped database
    /// name is told as such only to whoever has the password. `None` (a fake exchange, then
    /// `28P01`) for a label that serves nothing.
    pub checked_by: Option<&'a Arc<Database>>,
}

impl RouteTable {
    pub fn new(databases: impl IntoIterator<Item = Database>) -> Self {
        RouteTable {
            databases: databases.into_iter().map(|d| (d.name.clone(), Arc::new(d))).collect(),
            role_defaults: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    /// Under SNI label `label` (any case), database name `database` reaches route `route`.
    /// The first route given a name keeps it: returns false (and changes nothing) when the
    /// label already serves `database`.
    pub fn add_sni_name(&mut self, label: &str, database: &str, route: &str) -> bool {
        let entry = self.labels.entry(label.to_ascii_lowercase()).or_default();
        if entry.names.iter().any(|(name, _)| name == database) {
            return false;
        }
        entry.names.push((database.to_owned(), route.to_owned()));
        true
    }

    /// Under SNI label `label`, a login naming no database or its own role reaches `route`.
    pub fn set_sni_default(&mut self, label: &str, route: &str) {
        self.labels.entry(label.to_ascii_lowercase()).or_default().default = Some(route.to_owned());
    }

    /// Whether `label` (lower-cased) is an SNI label of this table.
    pub fn has_sni_label(&self, label: &str) -> bool {
        self.labels.contains_key(label)
    }

    /// A login as `user` naming `database` under SNI label `label` (lower-cased, as
    /// [`crate::sni::label`] gives it): the database the upstream calls `database`, or with
    /// an empty database or the user's own name, the label's default.
    pub fn for_sni_login(&self, label: &str, database: &str, user: &str) -> SniLogin<'_> {
        let Some(l) = self.labels.get(label) else { return SniLogin::default() };
        let named = l.names.iter().find(|(name, _)| name == database).map(|(_, route)| route);
        let name = named.or(if database.is_empty() || database == user { l.default.as_ref() } else { None });
        if let Some(route) = name.and_then(|r| self.databases.get(r)) {
            return SniLogin { route: Some(route), checked_by: Some(route) };
        }
        // No such database: the default route, then the others, where the role is listed;
        // else the first that looks roles up on its upstream.
        let routes: Vec<&Arc<Database>> = l
            .default
            .iter()
            .chain(l.names.iter().map(|(_, route)| route))
            .filter_map(|r| self.databases.get(r))
            .collect();
        let checked_by = routes
            .iter()
            .find(|d| d.roles.contains_key(user))
            .or_else(|| routes.iter().find(|d| d.auth_query.is_some()))
            .copied();
        SniLogin { route: None, checked_by }
    }

    /// Logins as `role` that name no database (or the role itself) reach `database`.
    pub fn set_role_default(&mut self, role: &str, database: &str) {
        self.role_defaults.insert(role.to_owned(), database.to_owned());
    }

    /// The database a login as `user` naming `database` reaches: that name's, or (when it
    /// is empty or the user's own name and no database has that name) the user's default.
    pub fn for_login(&self, database: &str, user: &str) -> Option<&Arc<Database>> {
        let name = if database.is_empty() { user } else { database };
        self.databases.get(name).or_else(|| {
            (name == user).then(|| self.role_defaults.get(user)).flatten().and_then(|d| self.databases.get(d))
        })
    }

    /// Adds databases; one whose name is already routed is skipped (and returned).
    pub fn extend(&mut self, more: impl IntoIterator<Item = Database>) -> Vec<String> {
        let mut skipped = Vec::new();
        for d in more {
            if self.databases.contains_key(&d.name) {
                skipped.push(d.name);
            } else {
                self.databases.insert(d.name.clone(), Arc::new(d));
            }
        }
        skipped
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.get(name)
    }

    pub fn len(&self) -> usize {
        self.databases.len()
    }

    /// Every database, sorted by name.
    pub fn databases(&self) -> Vec<Arc<Database>> {
        let mut v: Vec<_> = self.databases.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.databases.is_empty()
    }

    pub fn from_config(file: &ConfigFile) -> Result<Self, ConfigError> {
        let mut dbs = Vec::new();
        for (name, section) in &file.databases {
            let err =
                |message: &str| ConfigError::Database { database: name.clone(), message: message.into() };
            let addr = match (&section.socket_dir, &section.host) {
                (Some(dir), None) => {
                    UpstreamAddr::Unix { dir: dir.clone(), port: section.port.unwrap_or(5432) }
                }
                (None, Some(host)) => {
                    UpstreamAddr::Tcp { host: host.clone(), port: section.port.unwrap_or(5432) }
                }
                _ => return Err(err("set exactly one of socket_dir and host")),
            };
            if matches!(addr, UpstreamAddr::Unix { .. }) && section.ssl_mode.uses_tls() {
                return Err(err("ssl_mode applies to TCP upstreams only"));
            }
            if section.ssl_mode.verifies() && section.ssl_root_cert.is_none() {
                return Err(err("ssl_mode verify-ca and verify-full need ssl_root_cert"));
            }
            let mut roles = HashMap::new();
            for (role_name, r) in &section.roles {
                let verifier = match (&r.verifier, &r.password) {
                    (Some(v), _) => ScramVerifier::parse(v)
                        .map_err(|_| err(&format!("role {role_name:?}: invalid SCRAM verifier")))?,
                    (None, Some(p)) => ScramVerifier::generate(p),
                    (None, None) => {
                        return Err(err(&format!("role {role_name:?}: set password or verifier")));
                    }
                };
                let upstream_password =
                    r.upstream_password.clone().or_else(|| r.password.clone()).map(Secret::new);
                roles.insert(
                    role_name.clone(),
                    Role { name: role_name.clone(), verifiers: vec![verifier], upstream_password },
                );
            }
            dbs.push(Database {
                name: name.clone(),
                upstream: Upstream {
                    addr,
                    dbname: section.dbname.clone().unwrap_or_else(|| name.clone()),
                    ssl_mode: section.ssl_mode,
                    ssl_root_cert: section.ssl_root_cert.clone(),
                    tls: crate::upstream_tls::client_config(
                        section.ssl_mode,
                        section.ssl_root_cert.as_deref(),
                    )
                    .map_err(|e| err(&format!("upstream TLS: {e}")))?,
                    trust: UpstreamTrust::Operator,
                },
                roles,
                pool: section.pool.clone(),
                api_key_access: None,
                auth_query: None,
                close_sessions_on_removal: false,
                limits: Limits {
                    max_client_connections: section.max_client_connections,
                    query_timeout: section.query_timeout.map(|s| s.0),
                    transaction_timeout: section.transaction_timeout.map(|s| s.0),
                    idle_timeout: section.idle_timeout.map(|s| s.0),
                    idle_in_transaction_timeout: section.idle_in_transaction_timeout.map(|s| s.0),
                },
            });
        }
        Ok(RouteTable::new(dbs))
    }
}

#[derive(Debug)]
pub struct Database {
    /// The name clients use in the startup packet.
    pub name: String,
    pub upstream: Upstream,
    pub roles: HashMap<String, Role>,
    pub limits: Limits,
    /// How the pooled listener shares server connections for this database.
    pub pool: PoolConfig,
    /// Which API keys may log in (as which role); `None` for databases of the TOML file.
    pub api_key_access: Option<crate::apikey::KeyAccess>,
    /// For registered upstreams: roles not listed in `roles` are looked up on the upstream.
    pub auth_query: Option<crate::auth_query::AuthQuery>,
    /// When a reload drops this database, end its open sessions (with an error saying it no
    /// longer exists) instead of letting them run on: true for the catalog's databases, which
    /// leave only when deleted; false for the TOML file's, as PgBouncer does on RELOAD.
    pub close_sessions_on_removal: bool,
}

impl Database {
    /// The role a session logs in upstream as: a listed one, or (with an auth query) any
    /// role, which then logs in with the keys of the client's own SCRAM exchange.
    pub fn role(&self, name: &str) -> Option<std::borrow::Cow<'_, Role>> {
        match self.roles.get(name) {
            Some(r) => Some(std::borrow::Cow::Borrowed(r)),
            None if self.auth_query.is_some() => Some(std::borrow::Cow::Owned(Role {
                name: name.to_owned(),
                verifiers: Vec::new(),
                upstream_password: None,
            })),
            None => None,
        }
    }
}

#[cfg(test)]
impl Database {
    /// A database routed to nowhere in particular, for unit tests.
    pub(crate) fn for_tests(name: &str) -> Self {
        Database {
            name: name.into(),
            upstream: Upstream {
                addr: UpstreamAddr::Tcp { host: "127.0.0.1".into(), port: 5432 },
                dbname: name.into(),
                ssl_mode: SslMode::Disable,
                ssl_root_cert: None,
                tls: None,
                trust: UpstreamTrust::Operator,
            },
            roles: HashMap::new(),
            limits: Limits::default(),
            pool: PoolConfig::default(),
            api_key_access: None,
            auth_query: None,
            close_sessions_on_removal: false,
        }
    }
}

/// Pooling settings per database, in PgBeam's shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most server connections per (database, role).
    pub pool_size: u32,
    /// Server connections kept open even when idle.
    pub min_pool_size: u32,
    pub pool_mode: PoolMode,
    /// Most clients that may hold or wait for a server at once; `None` is unbounded.
    pub max_active: Option<u32>,
    /// How long a client waits for a server before it gets an error.
    #[serde(with = "humantime_serde_compat")]
    pub pool_timeout: Duration,
    /// Idle server connections above `min_pool_size` are closed after this long.
    #[serde(with = "humantime_serde_compat")]
    pub server_idle_timeout: Duration,
    /// Server connections are replaced once they are this old (when idle).
    #[serde(with = "humantime_serde_compat")]
    pub server_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: 20,
            min_pool_size: 0,
            pool_mode: PoolMode::Transaction,
            max_active: None,
            pool_timeout: Duration::from_secs(30),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    /// The database name sent to the upstream.
    pub dbname: String,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<PathBuf>,
    /// Built once at load from `ssl_mode` and `ssl_root_cert`; `None` for plaintext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Who answers for the upstream, and so what every login to it is checked for.
    pub trust: UpstreamTrust,
}

/// Who answers for an upstream. The operator's own (the TOML file) are routed as configured,
/// as PgBouncer routes them. Berth's managed instances and tenant-registered upstreams are
/// reached on a tenant's behalf, so a session there is never a superuser's; a registered one
/// is the tenant's word alone, so it must also prove it checked the password Berth holds
/// (an upstream that lets Berth in unasked could be any server, Berth's own included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamTrust {
    #[default]
    Operator,
    Managed,
    Registered {
        /// Only public addresses may be connected to (loopback, private, link-local and
        /// unique-local ranges refused), checked on every connect after name resolution.
        private_denied: bool,
        /// The password exchange the registration check saw: a login asked for a weaker one
        /// is refused (`upstream_auth::refusal`). `None` for registrations made before it
        /// was recorded.
        auth_method: Option<crate::upstream_auth::AuthMethod>,
    },
}

impl UpstreamTrust {
    /// Superuser sessions are refused.
    pub fn refuses_superuser(self) -> bool {
        self != UpstreamTrust::Operator
    }

    /// The upstream must ask for (and, with SCRAM, prove it holds) the password.
    pub fn must_authenticate(self) -> bool {
        matches!(self, UpstreamTrust::Registered { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Unix { dir: PathBuf, port: u16 },
    Tcp { host: String, port: u16 },
}

impl UpstreamAddr {
    pub fn socket_path(dir: &std::path::Path, port: u16) -> PathBuf {
        dir.join(format!(".s.PGSQL.{port}"))
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Unix { dir, port } => write!(f, "{}", Self::socket_path(dir, *port).display()),
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn uses_tls(self) -> bool {
        self != SslMode::Disable
    }

    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// Every verifier that is valid now. During a rotation there are two, sharing salt and
    /// iteration count so one SCRAM exchange can be checked against both.
    pub verifiers: Vec<ScramVerifier>,
    /// What the proxy logs in upstream with when the upstream asks for a password.
    pub upstream_password: Option<Secret>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_client_connections: Option<u32>,
    pub query_timeout: Option<Duration>,
    pub transaction_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub idle_in_transaction_timeout: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_role(name: &str, role: &str) -> Database {
        let mut d = Database::for_tests(name);
        let verifiers = vec![ScramVerifier::generate("pw")];
        d.roles.insert(role.into(), Role { name: role.into(), verifiers, upstream_password: None });
        d
    }

    /// Project `shop`: its main branch (database `shop`, role `shop_owner`) and a registered
    /// upstream `db_1` whose own database is `mydb` (role `registrar`, others by auth query).
    fn table() -> RouteTable {
        let mut registered = with_role("db_1", "registrar");
        registered.upstream.dbname = "mydb".into();
        registered.auth_query =
            Some(crate::auth_query::AuthQuery { user: "registrar".into(), password: Secret::new("pw") });
        let mut t =
            RouteTable::new([with_role("shop", "shop_owner"), registered, with_role("blog", "blog_owner")]);
        assert!(t.add_sni_name("Shop", "shop", "shop"));
        t.set_sni_default("shop", "shop");
        assert!(t.add_sni_name("shop", "mydb", "db_1"));
        assert!(!t.add_sni_name("SHOP", "mydb", "blog"), "the first route named keeps the name");
        t
    }

    fn names<'a>(l: &SniLogin<'a>) -> (Option<&'a str>, Option<&'a str>) {
        (l.route.map(|d| d.name.as_str()), l.checked_by.map(|d| d.name.as_str()))
    }

    #[test]
    fn a_label_serves_its_databases_by_their_upstream_names() {
        let t = table();
        assert!(t.has_sni_label("shop") && !t.has_sni_label("Shop"), "labels are kept lower-cased");
        assert_eq!(names(&t.for_sni_login("shop", "shop", "shop_owner")), (Some("shop"), Some("shop")));
        assert_eq!(names(&t.for_sni_login("shop", "mydb", "alice")), (Some("db_1"), Some("db_1")));
        // No database, or the role's own name: the default.
        assert_eq!(names(&t.for_sni_login("shop", "", "shop_owner")), (Some("shop"), Some("shop")));
        assert_eq!(names(&t.for_sni_login("shop", "alice", "alice")), (Some("shop"), Some("shop")));
        // Route names are not names under a label; database names are case-sensitive.
        assert_eq!(names(&t.for_sni_login("shop", "db_1", "registrar")).0, None);
        assert_eq!(names(&t.for_sni_login("shop", "MYDB", "registrar")).0, None);
        assert_eq!(names(&t.for_sni_login("shop", "blog", "blog_owner")).0, None);
    }

    #[test]
    fn an_unknown_database_is_checked_by_a_route_that_knows_the_role() {
        let t = table();
        // Listed roles first, the default route before the others.
        assert_eq!(names(&t.for_sni_login("shop", "nosuch", "shop_owner")), (None, Some("shop")));
        assert_eq!(names(&t.for_sni_login("shop", "nosuch", "registrar")), (None, Some("db_1")));
        // Anyone else: looked up where roles are looked up.
        assert_eq!(names(&t.for_sni_login("shop", "nosuch", "alice")), (None, Some("db_1")));
        // An unknown label serves nothing and checks nothing.
        assert_eq!(names(&t.for_sni_login("nosuch", "shop", "shop_owner")), (None, None));
        assert_eq!(names(&t.for_sni_login("blog", "blog", "blog_owner")), (None, None));
    }
}
