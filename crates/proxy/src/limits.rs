//! Per-database client connection counts. They live outside the route table so a reload
//! keeps counting the connections that are already open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct ConnectionCounts {
    map: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

impl ConnectionCounts {
    /// Counts one more connection to `db`, unless that would pass `max`.
    pub fn try_acquire(&self, db: &str, max: Option<u32>) -> Option<CountGuard> {
        let counter = {
            let mut map = self.map.lock().expect("connection counts lock poisoned");
            Arc::clone(map.entry(db.to_owned()).or_default())
        };
        let max = max.unwrap_or(u32::MAX);
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(CountGuard { counter })
    }

    pub fn current(&self, db: &str) -> u32 {
        self.map
            .lock()
            .expect("connection counts lock poisoned")
            .get(db)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

#[derive(Debug)]
pub struct CountGuard {
    counter: Arc<AtomicU32>,
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_release() {
        let c = ConnectionCounts::default();
        let a = c.try_acquire("db", Some(2)).unwrap();
        let _b = c.try_acquire("db", Some(2)).unwrap();
        assert!(c.try_acquire("db", Some(2)).is_none());
        assert!(c.try_acquire("other", Some(2)).is_some());
        drop(a);
        assert_eq!(c.current("db"), 1);
        assert!(c.try_acquire("db", Some(2)).is_some());
    }
}
