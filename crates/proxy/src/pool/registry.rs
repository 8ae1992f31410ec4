//! All pools, by (database, role). A pool follows route reloads of its database; pools of
//! databases that leave the route table are closed and forgotten (their servers close, idle
//! ones at once and the others as they come back), and go once their clients leave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pool::{Pool, PoolKey};
use crate::routes::{Database, RouteTable};

#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Databases paused by the admin console (`None` in the set means all); pools created
    /// while paused start paused.
    paused: Mutex<std::collections::HashSet<Option<String>>>,
}

impl Pools {
    pub fn get(&self, db: &Arc<Database>, role: &str, connect_timeout: Duration) -> Arc<Pool> {
        let key = PoolKey { database: db.name.clone(), role: role.to_owned() };
        let mut map = self.map.lock().expect("pools lock poisoned");
        let paused = {
            let p = self.paused.lock().expect("pools lock poisoned");
            p.contains(&None) || p.contains(&Some(db.name.clone()))
        };
        let pool =
            map.entry(key.clone()).or_insert_with(|| Pool::new(key, Arc::clone(db), connect_timeout, paused));
        pool.update(db);
        Arc::clone(pool)
    }

    /// PAUSE: holds new transactions of `db` (or of every database), waits for the running
    /// ones, and closes the servers.
    pub async fn pause(&self, db: Option<&str>) {
        self.paused.lock().expect("pools lock poisoned").insert(db.map(str::to_owned));
        let pools: Vec<_> =
            self.all().into_iter().filter(|p| db.is_none_or(|d| p.key.database == d)).collect();
        for p in &pools {
            p.set_paused();
        }
        futures_util::future::join_all(pools.iter().map(|p| p.pause())).await;
    }

    pub fn resume(&self, db: Option<&str>) {
        let mut paused = self.paused.lock().expect("pools lock poisoned");
        match db {
            Some(d) => {
                paused.remove(&Some(d.to_owned()));
            }
            None => paused.clear(),
        }
        let still_all = paused.contains(&None);
        let still: std::collections::HashSet<Option<String>> = paused.clone();
        drop(paused);
        for p in self.all() {
            if !still_all && !still.contains(&Some(p.key.database.clone())) {
                p.resume();
            }
        }
    }

    /// Follows a route reload: pools of routed databases take their new settings, the others
    /// are closed and removed (a database routed again later gets a fresh pool).
    pub fn follow(&self, routes: &RouteTable) {
        let mut gone = Vec::new();
        self.map.lock().expect("pools lock poisoned").retain(|key, pool| match routes.get(&key.database) {
            Some(db) => {
                pool.update(db);
                true
            }
            None => {
                gone.push(Arc::clone(pool));
                false
            }
        });
        // Closed once the registry is let go: logins wait on it, and closing needs it not.
        for pool in gone {
            pool.close();
        }
    }

    /// A snapshot, sorted by key, for the admin console and metrics.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<Arc<Pool>> = self.map.lock().expect("pools lock poisoned").values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn for_database(&self, db: &str) -> Vec<Arc<Pool>> {
        self.all().into_iter().filter(|p| p.key.database == db).collect()
    }
}
