//! SHOW POOLS: one row per (database, user) pool with clients and servers by state.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::result::ResultSet;
use crate::server::Shared;

pub fn run(shared: &Arc<Shared>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_pinned",
        "sv_active",
        "sv_idle",
        "sv_total",
        "pool_size",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "paused",
    ]);
    for pool in shared.pools.all() {
        let (open, idle) = pool.counts();
        let cfg = pool.config();
        let wait = pool.max_wait();
        let waiting = pool.stats.waiting.load(Ordering::Relaxed);
        rs.row(vec![
            pool.key.database.clone(),
            pool.key.role.clone(),
            // As PgBouncer counts them: connected clients not waiting for a server are active.
            pool.stats.clients.load(Ordering::Relaxed).saturating_sub(waiting).to_string(),
            waiting.to_string(),
            pool.stats.pinned.load(Ordering::Relaxed).to_string(),
            (open as usize).saturating_sub(idle).to_string(),
            idle.to_string(),
            open.to_string(),
            cfg.pool_size.to_string(),
            wait.as_secs().to_string(),
            wait.subsec_micros().to_string(),
            format!("{:?}", cfg.pool_mode).to_lowercase(),
            pool.is_paused().to_string(),
        ]);
    }
    rs
}
