//! Connections that have not finished logging in, counted per source address, so one
//! address cannot fill the proxy with half-open handshakes (a slow TLS hello, a startup
//! packet that never ends) and keep everyone else out. A connection is counted from accept
//! until its login ends (authenticated, refused, timed out or closed: the guard is dropped
//! on every path). Over the cap a new connection from that address is closed at once,
//! before a byte is read: any answer would need the very handshake the cap bounds.
//! Authenticated sessions are never counted. An IPv6 source is its /64: one host is
//! routinely given a whole /64, so counting single addresses would give it no cap at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default cap per source: above the bursts the repository's own crowd test sends from one
/// address (1,000 logins at once, a serverless fleet behind one NAT), a tenth of the
/// default `max_client_connections`.
pub const DEFAULT_MAX_PER_SOURCE: usize = 1024;

#[derive(Debug, Default)]
pub struct SourceCounts {
    by_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed because their source was at the cap.
    pub refused: AtomicU64,
}

/// One counted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct SourceGuard {
    counts: Arc<SourceCounts>,
    source: IpAddr,
}

impl SourceCounts {
    /// Counts a connection from `source`, or `None` when `cap` (non-zero) are already
    /// counted there. IPv4 addresses seen through an IPv6 socket count as themselves.
    pub fn admit(self: &Arc<Self>, source: IpAddr, cap: usize) -> Option<SourceGuard> {
        let source = source_key(source);
        let mut map = self.by_source.lock().expect("source counts poisoned");
        let n = map.entry(source).or_default();
        if cap != 0 && *n >= cap {
            drop(map);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(SourceGuard { counts: Arc::clone(self), source })
    }

    /// Connections counted now, from every source.
    pub fn total(&self) -> usize {
        self.by_source.lock().expect("source counts poisoned").values().sum()
    }

    /// Connections counted now from `source`.
    pub fn from(&self, source: IpAddr) -> usize {
        self.by_source.lock().expect("source counts poisoned").get(&source_key(source)).copied().unwrap_or(0)
    }
}

/// What `source` is counted as: an IPv4 address itself (also when seen through an IPv6
/// socket), an IPv6 address its /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut map = self.counts.by_source.lock().expect("source counts poisoned");
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_cap_and_places_come_back() {
        let counts = Arc::new(SourceCounts::default());
        let (v4, v6): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let held: Vec<_> = (0..2).map(|_| counts.admit(v4, 2).unwrap()).collect();
        assert!(counts.admit(v4, 2).is_none());
        // The same address through an IPv6 socket is the same source; ::1 is another.
        assert!(counts.admit("::ffff:127.0.0.1".parse().unwrap(), 2).is_none());
        let other = counts.admit(v6, 2).unwrap();
        assert_eq!((counts.from(v4), counts.from(v6), counts.total()), (2, 1, 3));
        drop(held);
        drop(other);
        assert_eq!(counts.total(), 0);
        assert!(counts.by_source.lock().unwrap().is_empty(), "no entry left behind");
        assert_eq!(counts.refused.load(Ordering::Relaxed), 2);
        // Zero is no cap.
        let many: Vec<_> = (0..10).map(|_| counts.admit(v4, 0).unwrap()).collect();
        assert_eq!(many.len(), 10);
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let counts = Arc::new(SourceCounts::default());
        let addr = |s: &str| -> IpAddr { s.parse().unwrap() };
        let held: Vec<_> = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"]
            .into_iter()
            .map(|a| counts.admit(addr(a), 2).unwrap())
            .collect();
        assert!(
            counts.admit(addr("2001:db8:1:2:abcd:ef01:2345:6789"), 2).is_none(),
            "another address of the /64"
        );
        let next_net = counts.admit(addr("2001:db8:1:3::1"), 2).expect("the next /64 is another source");
        assert_eq!(counts.from(addr("2001:db8:1:2::42")), 2);
        drop((held, next_net));
        assert_eq!(counts.total(), 0);
    }
}
