//! All pools, by (database, role). A pool follows route reloads of its database; pools of
//! databases that disappear close their idle servers and go once their clients leave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pool::{Pool, PoolKey};
use crate::routes::Database;

#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    pub fn get(&self, db: &Arc<Database>, role: &str, connect_timeout: Duration) -> Arc<Pool> {
        let key = PoolKey { database: db.name.clone(), role: role.to_owned() };
        let mut map = self.map.lock().expect("pools lock poisoned");
        let pool = map.entry(key.clone()).or_insert_with(|| Pool::new(key, Arc::clone(db), connect_timeout));
        pool.update(db);
        Arc::clone(pool)
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
