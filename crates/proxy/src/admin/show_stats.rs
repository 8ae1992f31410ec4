//! SHOW STATS: totals per pool since the proxy started.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::result::ResultSet;
use crate::server::Shared;

pub fn run(shared: &Arc<Shared>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "user",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_wait_count",
        "total_wait_time_us",
        "total_server_opens",
        "total_pool_timeouts",
    ]);
    for pool in shared.pools.all() {
        let s = &pool.stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
        rs.row(vec![
            pool.key.database.clone(),
            pool.key.role.clone(),
            n(&s.transactions),
            n(&s.queries),
            n(&s.bytes_received),
            n(&s.bytes_sent),
            n(&s.wait_count),
            n(&s.wait_micros),
            n(&s.servers_opened),
            n(&s.timeouts),
        ]);
    }
    rs
}
