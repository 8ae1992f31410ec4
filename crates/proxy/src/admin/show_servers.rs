//! SHOW SERVERS: one row per pooled server connection.

use std::sync::Arc;

use super::result::ResultSet;
use crate::server::Shared;

pub fn run(shared: &Arc<Shared>) -> ResultSet {
    let mut rs = ResultSet::new(&["id", "database", "user", "state", "pid", "connect_time"]);
    for pool in shared.pools.all() {
        for s in pool.servers() {
            rs.row(vec![
                s.id.to_string(),
                pool.key.database.clone(),
                pool.key.role.clone(),
                if s.active { "active" } else { "idle" }.to_owned(),
                s.pid.to_string(),
                humantime::format_rfc3339_seconds(s.connected_at).to_string(),
            ]);
        }
    }
    rs
}
