//! Prometheus metrics in the text exposition format: clients and servers by state, pool
//! wait-time histogram, transactions, queries, bytes, errors sent to clients by SQLSTATE
//! class, pinned clients. Rendering reads counters the data path keeps anyway; a scrape
//! never blocks a session. `serve_http` is a minimal endpoint for the standalone proxy; the
//! API port serves the same text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Proxy;
use crate::pool::stats::WAIT_BUCKETS;
use crate::session::ListenerKind;

/// Errors sent to clients, by SQLSTATE class (`28`, `57`, …). Errors are rare next to
/// messages, so a mutex here costs nothing on the hot path.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    by_class: Mutex<BTreeMap<String, u64>>,
}

impl ErrorCounts {
    /// Counts one error by its SQLSTATE's class. Servers choose their codes, so anything
    /// that is not a SQLSTATE counts as `??`: an upstream cannot grow the label set.
    pub fn count(&self, code: Option<&str>) {
        let class = code
            .and_then(wire::SqlState::from_code)
            .map_or_else(|| "??".to_owned(), |c| c.class().to_owned());
        *self.by_class.lock().expect("error counts poisoned").entry(class).or_default() += 1;
    }

    /// Counts the ErrorResponse body `body` (its `C` field).
    pub fn count_body(&self, body: &[u8]) {
        let code = wire::ErrorResponse::decode(body).ok().and_then(|e| e.get(b'C').map(str::to_owned));
        self.count(code.as_deref());
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_class.lock().expect("error counts poisoned").clone()
    }
}

/// Counters of the proxy as a whole.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub accepted: AtomicU64,
    pub auth_failures: AtomicU64,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(proxy: &Proxy) -> String {
    let shared = proxy.shared();
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    family(
        &mut out,
        "berth_client_connections",
        "gauge",
        "Client connections by database, listener and state.",
    );
    let mut clients: BTreeMap<(String, &str, &str), u64> = BTreeMap::new();
    let mut pinned: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in shared.clients.all() {
        let listener = match c.kind {
            ListenerKind::Direct => "direct",
            ListenerKind::Pooled => "pooled",
        };
        *clients.entry((c.database.clone(), listener, c.state().as_str())).or_default() += 1;
        if c.pinned() {
            *pinned.entry((c.database.clone(), c.user.clone())).or_default() += 1;
        }
    }
    for ((db, listener, state), n) in &clients {
        let _ = writeln!(
            out,
            "berth_client_connections{{database=\"{}\",listener=\"{listener}\",state=\"{state}\"}} {n}",
            label(db)
        );
    }

    family(&mut out, "berth_pinned_clients", "gauge", "Pooled clients pinned to their server.");
    for ((db, user), n) in &pinned {
        let _ =
            writeln!(out, "berth_pinned_clients{{database=\"{}\",user=\"{}\"}} {n}", label(db), label(user));
    }

    let pools = shared.pools.all();
    family(&mut out, "berth_server_connections", "gauge", "Pooled server connections by state.");
    for p in &pools {
        let (open, idle) = p.counts();
        let (db, user) = (label(&p.key.database), label(&p.key.role));
        let _ = writeln!(
            out,
            "berth_server_connections{{database=\"{db}\",user=\"{user}\",state=\"active\"}} {}",
            (open as usize).saturating_sub(idle)
        );
        let _ = writeln!(
            out,
            "berth_server_connections{{database=\"{db}\",user=\"{user}\",state=\"idle\"}} {idle}"
        );
    }
    family(&mut out, "berth_pool_waiting_clients", "gauge", "Clients waiting for a server now.");
    for p in &pools {
        let _ = writeln!(
            out,
            "berth_pool_waiting_clients{{database=\"{}\",user=\"{}\"}} {}",
            label(&p.key.database),
            label(&p.key.role),
            p.stats.waiting.load(Ordering::Relaxed)
        );
    }

    family(&mut out, "berth_pool_wait_seconds", "histogram", "Time clients waited for a server.");
    for p in &pools {
        let (db, user) = (label(&p.key.database), label(&p.key.role));
        let mut cumulative = 0u64;
        for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
            cumulative += p.stats.wait_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "berth_pool_wait_seconds_bucket{{database=\"{db}\",user=\"{user}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = p.stats.wait_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "berth_pool_wait_seconds_bucket{{database=\"{db}\",user=\"{user}\",le=\"+Inf\"}} {count}"
        );
        let sum = p.stats.wait_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "berth_pool_wait_seconds_sum{{database=\"{db}\",user=\"{user}\"}} {sum}");
        let _ = writeln!(out, "berth_pool_wait_seconds_count{{database=\"{db}\",user=\"{user}\"}} {count}");
    }

    type Read = fn(&crate::pool::stats::PoolStats) -> u64;
    let counters: [(&str, &str, Read); 6] = [
        ("berth_transactions_total", "Transactions completed through the pooled listener.", |s| {
            s.transactions.load(Ordering::Relaxed)
        }),
        ("berth_queries_total", "Queries and Executes sent through the pooled listener.", |s| {
            s.queries.load(Ordering::Relaxed)
        }),
        ("berth_server_bytes_received_total", "Bytes received from pooled servers.", |s| {
            s.bytes_received.load(Ordering::Relaxed)
        }),
        ("berth_client_bytes_sent_total", "Bytes of server messages sent to pooled clients.", |s| {
            s.bytes_sent.load(Ordering::Relaxed)
        }),
        ("berth_server_connections_opened_total", "Pooled server connections opened.", |s| {
            s.servers_opened.load(Ordering::Relaxed)
        }),
        ("berth_pool_timeouts_total", "Clients that gave up waiting for a server (pool_timeout).", |s| {
            s.timeouts.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, read) in counters {
        family(&mut out, name, "counter", help);
        for p in &pools {
            let _ = writeln!(
                out,
                "{name}{{database=\"{}\",user=\"{}\"}} {}",
                label(&p.key.database),
                label(&p.key.role),
                read(&p.stats)
            );
        }
    }

    family(&mut out, "berth_errors_total", "counter", "Errors sent to clients, by SQLSTATE class.");
    for (class, n) in shared.errors.snapshot() {
        let _ = writeln!(out, "berth_errors_total{{class=\"{}\"}} {n}", label(&class));
    }
    family(&mut out, "berth_connections_accepted_total", "counter", "Client connections accepted.");
    let _ = writeln!(
        out,
        "berth_connections_accepted_total {}",
        shared.counters.accepted.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "berth_auth_failures_total",
        "counter",
        "Failed logins (wrong password, unknown role or database).",
    );
    let _ =
        writeln!(out, "berth_auth_failures_total {}", shared.counters.auth_failures.load(Ordering::Relaxed));
    family(
        &mut out,
        "berth_unauthenticated_connections",
        "gauge",
        "Client connections accepted that have not finished logging in.",
    );
    let _ = writeln!(out, "berth_unauthenticated_connections {}", shared.unauthenticated.total());
    family(
        &mut out,
        "berth_unauthenticated_refused_total",
        "counter",
        "Connections closed at accept because their source address had max_unauthenticated_per_source logging in.",
    );
    let _ = writeln!(
        out,
        "berth_unauthenticated_refused_total {}",
        shared.unauthenticated.refused.load(Ordering::Relaxed)
    );
    out
}

/// Serves `GET /metrics` over plain HTTP/1.1 until the proxy shuts down.
pub async fn serve_http(listener: TcpListener, proxy: Proxy) {
    let shutdown = proxy.shared().shutdown.clone();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let line = req.split(|b| *b == b'\n').next().unwrap_or_default();
            let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
                ("200 OK", render(&proxy))
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_sqlstates_make_error_classes() {
        let counts = super::ErrorCounts::default();
        for code in [Some("57P01"), Some("57014"), Some("\u{e9}!"), Some("x"), Some("08P01x"), None] {
            counts.count(code);
        }
        let expected = [("57".to_owned(), 2), ("??".to_owned(), 4)].into_iter().collect();
        assert_eq!(counts.snapshot(), expected);
    }
}
