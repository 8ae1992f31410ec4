//! SHOW DATABASES: the route table as the proxy serves it now (no credentials, and no
//! socket paths: an upstream on a unix socket shows an empty host, as in PgBouncer, so the
//! console says nothing of where Berth keeps its instances).

use std::sync::Arc;

use super::result::ResultSet;
use crate::routes::UpstreamAddr;
use crate::server::Shared;

pub fn run(shared: &Arc<Shared>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "name",
        "host",
        "port",
        "database",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "max_active",
        "max_client_connections",
        "current_connections",
        "paused",
    ]);
    let routes = shared.routes.load_full();
    for db in routes.databases() {
        let (host, port) = match &db.upstream.addr {
            UpstreamAddr::Unix { port, .. } => (String::new(), *port),
            UpstreamAddr::Tcp { host, port } => (host.clone(), *port),
        };
        let paused = shared.pools.for_database(&db.name).iter().any(|p| p.is_paused());
        rs.row(vec![
            db.name.clone(),
            host,
            port.to_string(),
            db.upstream.dbname.clone(),
            db.pool.pool_size.to_string(),
            db.pool.min_pool_size.to_string(),
            format!("{:?}", db.pool.pool_mode).to_lowercase(),
            db.pool.max_active.map(|m| m.to_string()).unwrap_or_default(),
            db.limits.max_client_connections.map(|m| m.to_string()).unwrap_or_default(),
            shared.counts.current(&db.name).to_string(),
            paused.to_string(),
        ]);
    }
    rs
}
