//! Counters of one pool, read by SHOW POOLS / SHOW STATS and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the wait-time histogram buckets.
pub const WAIT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients of this pool connected now (holding a server, waiting for one, or idle).
    pub clients: AtomicU64,
    /// Clients waiting for a server now.
    pub waiting: AtomicU64,
    /// Clients holding a server now.
    pub active: AtomicU64,
    /// Clients pinned to their server now.
    pub pinned: AtomicU64,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub servers_opened: AtomicU64,
    pub wait_count: AtomicU64,
    pub wait_micros: AtomicU64,
    pub wait_buckets: [AtomicU64; WAIT_BUCKETS.len()],
    pub timeouts: AtomicU64,
}

impl PoolStats {
    pub fn record_wait(&self, d: Duration) {
        self.wait_count.fetch_add(1, Ordering::Relaxed);
        self.wait_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        let secs = d.as_secs_f64();
        if let Some(i) = WAIT_BUCKETS.iter().position(|b| secs <= *b) {
            self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts a client of a pool for as long as it is connected.
pub struct ClientCount(std::sync::Arc<super::Pool>);

impl ClientCount {
    pub fn new(pool: &std::sync::Arc<super::Pool>) -> Self {
        pool.stats.clients.fetch_add(1, Ordering::Relaxed);
        ClientCount(std::sync::Arc::clone(pool))
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.stats.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
