//! Keeps the proxy's route table equal to the catalog: a full reload at start, on every
//! `berth_routes` notification, and every 30 seconds as a safety net (a notification lost
//! while the listener reconnects is caught there). The proxy itself never sees the catalog.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Catalog, RouteEntry};
use control::Instances;
use proxy::apikey::KeyAccess;
use proxy::routes::{Database, Limits, PoolConfig, PoolMode, Role, Upstream, UpstreamAddr};
use proxy::{Proxy, RouteTable, SslMode};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use wire::scram::ScramVerifier;

use crate::registered::UpstreamPolicy;

const FULL_RELOAD: Duration = Duration::from_secs(30);

/// Builds the proxy's table from the catalog's snapshot.
pub fn route_table(entries: Vec<RouteEntry>, instances: &Instances) -> RouteTable {
    let mut databases: HashMap<String, Database> = HashMap::new();
    // A project's roles, with no database named, reach its main branch.
    let mut defaults = Vec::new();
    for e in entries {
        if databases.contains_key(&e.database) {
            // Names are unique per organization; the proxy routes by name alone.
            tracing::warn!(database = %e.database, project_id = %e.project_id, "database name served by another project; skipped");
            continue;
        }
        if e.database == e.project_name {
            defaults.extend(e.roles.iter().map(|r| (r.name.clone(), e.database.clone())));
        }
        let mut roles = HashMap::new();
        for r in e.roles {
            // During a rotation both verifiers are valid.
            let texts = std::iter::once(&r.verifier).chain(r.next_verifier.as_ref());
            match texts.map(|t| ScramVerifier::parse(t)).collect::<Result<Vec<_>, _>>() {
                Ok(verifiers) => {
                    roles.insert(r.name.clone(), Role { name: r.name, verifiers, upstream_password: None });
                }
                Err(_) => {
                    tracing::error!(project_id = %e.project_id, role = %r.name, "stored verifier is invalid")
                }
            }
        }
        let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).map(Duration::from_millis);
        let limits = Limits {
            max_client_connections: e.limits.max_direct_connections.and_then(|v| u32::try_from(v).ok()),
            query_timeout: ms(e.limits.query_timeout_ms),
            transaction_timeout: ms(e.limits.transaction_timeout_ms),
            idle_timeout: ms(e.limits.idle_timeout_ms),
            idle_in_transaction_timeout: ms(e.limits.idle_in_transaction_timeout_ms),
        };
        let pool = pool_config(&e.pool_config, e.limits.max_pooled_connections);
        let api_key_access = api_key_access(&e.organization_id, &e.project_id, &e.project_name, &roles);
        let database = Database {
            name: e.database.clone(),
            upstream: Upstream {
                addr: UpstreamAddr::Unix { dir: instances.socket_dir(&e.branch_id), port: instances.port() },
                dbname: e.dbname.clone(),
                ssl_mode: SslMode::Disable,
                ssl_root_cert: None,
                tls: None,
                trust: proxy::routes::UpstreamTrust::Managed,
            },
            roles,
            limits,
            pool,
            api_key_access,
            auth_query: None,
            close_sessions_on_removal: true,
        };
        databases.insert(e.database, database);
    }
    let mut table = RouteTable::new(databases.into_values());
    for (role, database) in defaults {
        table.set_role_default(&role, &database);
    }
    table
}

/// API-key logins (the tunnel) run as the project's owner role, when it is routed.
fn api_key_access(
    organization_id: &str,
    project_id: &str,
    project_name: &str,
    roles: &HashMap<String, Role>,
) -> Option<KeyAccess> {
    let role = control::names::owner_role(project_name);
    roles.contains_key(&role).then(|| KeyAccess {
        organization_id: organization_id.to_owned(),
        project_id: project_id.to_owned(),
        role,
    })
}

/// The API's pool settings over the proxy's defaults; the pooled connection limit caps
/// the clients that may hold or wait for a server connection.
fn pool_config(json: &serde_json::Value, max_pooled: Option<i32>) -> PoolConfig {
    let api: control::views::PoolConfig = serde_json::from_value(json.clone()).unwrap_or_default();
    let defaults = PoolConfig::default();
    PoolConfig {
        pool_size: api.pool_size.unwrap_or(defaults.pool_size),
        min_pool_size: api.min_pool_size.unwrap_or(defaults.min_pool_size),
        pool_mode: match api.pool_mode {
            Some(control::views::PoolMode::Session) => PoolMode::Session,
            Some(control::views::PoolMode::Transaction) => PoolMode::Transaction,
            None => defaults.pool_mode,
        },
        max_active: max_pooled.and_then(|v| u32::try_from(v).ok()),
        pool_timeout: api.pool_timeout_ms.map_or(defaults.pool_timeout, Duration::from_millis),
        server_idle_timeout: api
            .server_idle_timeout_ms
            .map_or(defaults.server_idle_timeout, Duration::from_millis),
        server_lifetime: api.server_lifetime_ms.map_or(defaults.server_lifetime, Duration::from_millis),
    }
}

/// The whole table: every branch's route and every registered upstream's, and what each
/// project's SNI label serves.
pub async fn snapshot(
    catalog: &Catalog,
    instances: &Instances,
    key: &catalog::MasterKey,
    policy: &UpstreamPolicy,
) -> Result<RouteTable, catalog::CatalogError> {
    let entries = catalog.route_snapshot().await?;
    // A project's own database first (its main branch), then its registered ones.
    let mut names: Vec<SniName> = entries
        .iter()
        .filter(|e| e.database == e.project_name)
        .map(|e| SniName {
            project_id: e.project_id.clone(),
            project: e.project_name.clone(),
            database: e.dbname.clone(),
            route: e.database.clone(),
            default: true,
        })
        .collect();
    let mut table = route_table(entries, instances);
    let rows = catalog.registered_routes().await?;
    names.extend(rows.iter().map(|r| SniName {
        project_id: r.database.project_id.clone(),
        project: r.project_name.clone(),
        database: r.database.name.clone(),
        route: r.database.id.clone(),
        default: false,
    }));
    let registered = crate::registered::databases(rows, key, policy);
    for name in table.extend(registered) {
        tracing::warn!(database = %name, "registered database id already routed; skipped");
    }
    add_sni_names(&mut table, names);
    Ok(table)
}

/// A database's name under its project's SNI label (`<project>.<public-host>`).
struct SniName {
    project_id: String,
    project: String,
    /// The upstream's own name for it: what `current_database()` says there.
    database: String,
    route: String,
    /// The project's main branch: logins naming no database (or their role) reach it.
    default: bool,
}

/// Labels are case-insensitive: the first project (by id, as the catalog lists them) whose
/// name is a label keeps it, as the first of a database name does. Within a label the first
/// database of a name keeps it: the project's own, then registered primaries, oldest first
/// (`catalog::Catalog::sni_owners` prints strings by the same rule).
fn add_sni_names(table: &mut RouteTable, names: Vec<SniName>) {
    let mut owners: HashMap<String, String> = HashMap::new();
    for n in names {
        let owner = owners.entry(n.project.to_ascii_lowercase()).or_insert_with(|| n.project_id.clone());
        if *owner != n.project_id {
            tracing::warn!(project_id = %n.project_id, label = %n.project, "SNI label served by another project; skipped");
            continue;
        }
        if table.get(&n.route).is_none() {
            continue;
        }
        if !table.add_sni_name(&n.project, &n.database, &n.route) {
            tracing::debug!(project_id = %n.project_id, database = %n.route, name = %n.database, "name already served under the project's SNI label; reached by its id only");
            continue;
        }
        if n.default {
            table.set_sni_default(&n.project, &n.route);
        }
    }
}

async fn reload(
    catalog: &Catalog,
    instances: &Instances,
    key: &catalog::MasterKey,
    policy: &UpstreamPolicy,
    proxy: &Proxy,
    why: &str,
) {
    match snapshot(catalog, instances, key, policy).await {
        Ok(table) => {
            let before = proxy.routes().len();
            let after = table.len();
            proxy.set_routes(table);
            if why == "periodic" && before == after {
                tracing::debug!(why, databases = after, "routes reloaded");
            } else {
                tracing::info!(why, databases = after, "routes reloaded");
            }
        }
        Err(e) => tracing::error!(why, error = %e, "route reload failed; keeping the previous routes"),
    }
}

/// Follows the catalog until `shutdown`.
pub async fn run(
    catalog: Catalog,
    instances: Arc<Instances>,
    control: Arc<control::Control>,
    policy: Arc<UpstreamPolicy>,
    proxy: Proxy,
    shutdown: CancellationToken,
) {
    let key = &control.master_key;
    let mut tick = tokio::time::interval(FULL_RELOAD);
    tick.tick().await;
    loop {
        let mut listener = match PgListener::connect_with(catalog.pool()).await {
            Ok(mut l) => match l.listen(catalog::ROUTES_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for route changes; polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for route changes; polling");
                None
            }
        };
        reload(&catalog, &instances, key, &policy, &proxy, "listening").await;
        loop {
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    reload(&catalog, &instances, key, &policy, &proxy, "periodic").await;
                    if listener.is_none() { break; }
                }
                n = notified => match n {
                    Ok(Some(_)) => reload(&catalog, &instances, key, &policy, &proxy, "catalog changed").await,
                    // Connection lost (notifications may be lost with it) or an error:
                    // reconnect, and reload once listening again.
                    Ok(None) | Err(_) => {
                        tracing::warn!("route notifications interrupted; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                },
            }
        }
    }
}

/// The control plane's way to bring the proxy's routes up to date at once.
pub struct Refresh {
    pub catalog: Catalog,
    pub instances: Arc<Instances>,
    /// Weak: the control plane holds this.
    pub control: std::sync::Weak<control::Control>,
    pub proxy: Proxy,
    pub policy: Arc<UpstreamPolicy>,
}

impl control::RouteRefresh for Refresh {
    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(control) = self.control.upgrade() {
                reload(
                    &self.catalog,
                    &self.instances,
                    &control.master_key,
                    &self.policy,
                    &self.proxy,
                    "database removal",
                )
                .await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use catalog::{ProjectLimits, RouteRole};
    use node::{InitOptions, PgBinaries};

    use super::*;

    fn entry(project: &str, database: &str, limits: ProjectLimits, pool: serde_json::Value) -> RouteEntry {
        let verifier = |pw: &str| ScramVerifier::generate(pw).to_pg_authid();
        RouteEntry {
            project_id: project.into(),
            organization_id: "org_1".into(),
            project_name: database.into(),
            database: database.into(),
            dbname: database.into(),
            branch_id: format!("br_{project}"),
            limits,
            pool_config: pool,
            roles: vec![RouteRole {
                name: format!("{database}_owner"),
                verifier: verifier("old"),
                next_verifier: Some(verifier("new")),
            }],
        }
    }

    #[test]
    fn catalog_entries_become_routes_with_limits_pools_and_both_verifiers() {
        // Nothing runs here: a directory that looks like a bindir is enough.
        let bindir = tempfile::tempdir().expect("tempdir");
        for program in ["initdb", "postgres"] {
            std::fs::write(bindir.path().join(program), "").expect("write");
        }
        let bins = PgBinaries::from_dir(bindir.path()).expect("bindir");
        let instances = Instances::new(bins, std::path::Path::new("/data"), InitOptions::default());
        let limits = ProjectLimits {
            max_direct_connections: Some(5),
            max_pooled_connections: Some(9),
            query_timeout_ms: Some(1500),
            idle_in_transaction_timeout_ms: Some(60_000),
            ..ProjectLimits::default()
        };
        let pool = serde_json::json!({"pool_size": 4, "pool_mode": "session"});
        let table = route_table(
            vec![
                entry("p1", "shop", limits, pool),
                entry("p2", "shop", ProjectLimits::default(), serde_json::json!({})),
                entry("p3", "blog", ProjectLimits::default(), serde_json::json!({})),
            ],
            &instances,
        );
        assert_eq!(table.len(), 2, "a second project of the same name is not routed");
        let shop = table.get("shop").expect("shop");
        assert_eq!(shop.upstream.addr, UpstreamAddr::Unix { dir: instances.socket_dir("br_p1"), port: 5432 });
        assert_eq!(shop.upstream.dbname, "shop");
        assert_eq!(shop.limits.max_client_connections, Some(5));
        assert_eq!(shop.limits.query_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(shop.limits.idle_in_transaction_timeout, Some(Duration::from_secs(60)));
        assert_eq!(shop.limits.transaction_timeout, None);
        assert_eq!(
            (shop.pool.pool_size, shop.pool.pool_mode, shop.pool.max_active),
            (4, PoolMode::Session, Some(9))
        );
        assert_eq!(shop.pool.pool_timeout, PoolConfig::default().pool_timeout);
        assert_eq!(shop.roles["shop_owner"].verifiers.len(), 2, "a rotation publishes both verifiers");
        assert_eq!(
            shop.api_key_access,
            Some(KeyAccess {
                organization_id: "org_1".into(),
                project_id: "p1".into(),
                role: "shop_owner".into()
            }),
            "API-key logins to the project run as its owner"
        );
        let blog = table.get("blog").expect("blog");
        assert_eq!(blog.pool, PoolConfig { max_active: None, ..PoolConfig::default() });
    }

    #[test]
    fn a_label_goes_to_the_first_project_of_its_name_and_a_name_to_its_first_database() {
        let name = |project_id: &str, project: &str, database: &str, route: &str, default: bool| SniName {
            project_id: project_id.into(),
            project: project.into(),
            database: database.into(),
            route: route.into(),
            default,
        };
        let db = |name: &str| Database {
            name: name.into(),
            upstream: Upstream {
                addr: UpstreamAddr::Tcp { host: "127.0.0.1".into(), port: 5432 },
                dbname: name.into(),
                ssl_mode: SslMode::Disable,
                ssl_root_cert: None,
                tls: None,
                trust: proxy::routes::UpstreamTrust::Managed,
            },
            roles: HashMap::new(),
            limits: Limits::default(),
            pool: PoolConfig::default(),
            api_key_access: None,
            auth_query: None,
            close_sessions_on_removal: true,
        };
        let routes = ["shop", "Shop", "db_1", "db_2", "db_3"].map(db);
        let mut table = RouteTable::new(routes);
        add_sni_names(
            &mut table,
            vec![
                name("p1", "shop", "shop", "shop", true),
                // Another project whose name is the same label: not served under it.
                name("p2", "Shop", "Shop", "Shop", true),
                name("p1", "shop", "mydb", "db_1", false),
                name("p2", "Shop", "mydb", "db_2", false),
                // The project's own database keeps its name; a route not in the table is none.
                name("p1", "shop", "shop", "db_3", false),
                name("p1", "shop", "gone", "db_9", false),
            ],
        );
        let route = |db: &str| table.for_sni_login("shop", db, "u").route.map(|d| d.name.clone());
        assert_eq!(route("shop").as_deref(), Some("shop"));
        assert_eq!(route("").as_deref(), Some("shop"));
        assert_eq!(route("mydb").as_deref(), Some("db_1"));
        assert_eq!(route("Shop"), None);
        assert_eq!(route("gone"), None);
    }

    #[test]
    fn a_branch_is_routed_as_project_dot_branch_to_its_own_instance() {
        let bindir = tempfile::tempdir().expect("tempdir");
        for program in ["initdb", "postgres"] {
            std::fs::write(bindir.path().join(program), "").expect("write");
        }
        let bins = PgBinaries::from_dir(bindir.path()).expect("bindir");
        let instances = Instances::new(bins, std::path::Path::new("/data"), InitOptions::default());
        let main = entry("p1", "shop", ProjectLimits::default(), serde_json::json!({}));
        let mut dev = main.clone();
        dev.database = "shop.dev".into();
        dev.branch_id = "br_dev".into();
        let table = route_table(vec![main, dev], &instances);
        assert_eq!(table.len(), 2);
        let dev = table.get("shop.dev").expect("shop.dev is routed");
        assert_eq!(dev.upstream.addr, UpstreamAddr::Unix { dir: instances.socket_dir("br_dev"), port: 5432 });
        assert_eq!(dev.upstream.dbname, "shop", "the branch's instance holds the project's database");
        assert!(dev.roles.contains_key("shop_owner"), "a branch has its project's roles");
        let main = table.get("shop").expect("shop");
        assert_eq!(main.upstream.addr, UpstreamAddr::Unix { dir: instances.socket_dir("br_p1"), port: 5432 });
    }
}
