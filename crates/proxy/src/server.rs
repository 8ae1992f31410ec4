//! The proxy as a service: shared state (route table snapshot, TLS, cancel registry,
//! connection counts), the accept loop over a listener it is handed (tests pass a port-0
//! listener), and graceful shutdown: stop accepting, let sessions finish their transactions
//! until a deadline, then close them.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::config::ProxySection;
use crate::limits::ConnectionCounts;
use crate::routes::RouteTable;
use crate::session::ListenerKind;
use crate::tls::TlsServer;

/// How many connections over the limit may be in their TLS handshake at once to be told
/// why they are refused; beyond that they are dropped.
const MAX_CONCURRENT_REFUSALS: usize = 64;

/// Listen backlog for proxy listeners. Connection storms (serverless functions, a fleet
/// restarting) arrive faster than one accept loop takes them; a short queue overflows and the
/// kernel leaves clients half-connected for many seconds.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for the proxy with a deep accept queue.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Called by the admin console's RELOAD.
pub type ReloadHook = dyn Fn() -> Result<(), String> + Send + Sync;

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub require_tls: bool,
    pub auth_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message_size: usize,
    pub max_client_connections: usize,
    /// Logins to the admin console (database `berth`): user name → valid verifiers.
    pub admin_users: std::collections::HashMap<String, Vec<wire::scram::ScramVerifier>>,
    /// Keys the fake SCRAM salts shown for users a database does not route. The default is
    /// random per process; whoever runs the proxy for good keeps one across restarts
    /// (`FakeScramKey::load_or_create`), or a restart tells fake salts from real ones.
    pub fake_scram_key: crate::FakeScramKey,
    /// The DNS name whose subdomains route by SNI: `<label>.<public_host>` selects what the
    /// route table serves under `<label>` (`RouteTable::add_sni_name`). `None`: database
    /// names only.
    pub public_host: Option<String>,
    /// Connections from one source address that may be logging in at once (0: no cap);
    /// more are closed at accept (`unauthenticated`).
    pub max_unauthenticated_per_source: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self::from(&ProxySection::default())
    }
}

impl From<&ProxySection> for ProxySettings {
    fn from(s: &ProxySection) -> Self {
        ProxySettings {
            require_tls: s.require_tls,
            auth_timeout: s.auth_timeout.0,
            shutdown_timeout: s.shutdown_timeout.0,
            connect_timeout: s.connect_timeout.0,
            max_message_size: s.max_message_size.0,
            max_client_connections: s.max_client_connections,
            admin_users: Default::default(),
            fake_scram_key: crate::FakeScramKey::random(),
            public_host: None,
            max_unauthenticated_per_source: s.max_unauthenticated_per_source,
        }
    }
}

pub(crate) struct Shared {
    pub settings: ProxySettings,
    pub routes: ArcSwap<RouteTable>,
    /// Swapped when the operator's certificate files change: each connection loads it once,
    /// so its handshake and its SCRAM channel binding are of one certificate.
    pub tls: arc_swap::ArcSwapOption<TlsServer>,
    pub cancels: Arc<CancelRegistry>,
    pub counts: ConnectionCounts,
    pub shutdown: CancellationToken,
    pub pools: crate::pool::Pools,
    pub clients: Arc<crate::clients::ClientRegistry>,
    pub errors: crate::metrics::ErrorCounts,
    pub counters: crate::metrics::ProxyCounters,
    pub reload_hook: arc_swap::ArcSwapOption<Box<ReloadHook>>,
    pub classify: crate::pool::classify::ClassifyCache,
    /// Checks API-key logins; without it `apikey` is an ordinary user name.
    pub api_keys: OnceLock<Arc<dyn crate::apikey::ApiKeys>>,
    /// Verifiers of registered upstreams' roles, fetched by auth query.
    pub verifiers: crate::auth_query::VerifierCache,
    /// Connections still logging in, per source address.
    pub unauthenticated: Arc<crate::unauthenticated::SourceCounts>,
    deadline: OnceLock<Instant>,
    connections: Arc<Semaphore>,
    /// Connections being refused (TLS and startup only, then 53300).
    refusals: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Shared {
    /// Counts a connection refused with an error (and a failed login as such).
    pub fn count_refusal(&self, e: &crate::error::SessionError) {
        if let Some(r) = &e.response {
            self.errors.count(r.get(b'C'));
        }
        if e.kind == crate::error::ErrorKind::Auth {
            self.counters.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn shutdown_deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + self.settings.shutdown_timeout)
    }
}

#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(settings: ProxySettings, routes: RouteTable, tls: Option<TlsServer>) -> Self {
        let connections = Arc::new(Semaphore::new(settings.max_client_connections));
        Proxy {
            shared: Arc::new(Shared {
                settings,
                routes: ArcSwap::from_pointee(routes),
                tls: arc_swap::ArcSwapOption::from(tls.map(Arc::new)),
                cancels: Arc::default(),
                counts: ConnectionCounts::default(),
                shutdown: CancellationToken::new(),
                pools: crate::pool::Pools::default(),
                clients: Arc::default(),
                errors: Default::default(),
                counters: Default::default(),
                reload_hook: arc_swap::ArcSwapOption::empty(),
                classify: crate::pool::classify::ClassifyCache::new(16 << 20),
                api_keys: OnceLock::new(),
                verifiers: Default::default(),
                unauthenticated: Arc::default(),
                deadline: OnceLock::new(),
                connections,
                refusals: Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS)),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Replaces the route table. Open sessions keep the databases they started with; limits
    /// are looked up afresh by name, so changed limits apply to them too.
    pub fn set_routes(&self, routes: RouteTable) {
        // Pools follow at once (pool size, mode, max_active, a moved upstream), not only
        // when their next client logs in; pools of databases no longer routed close, or their
        // servers would stay open and their warm-up retry forever.
        self.shared.pools.follow(&routes);
        let old = self.shared.routes.load();
        self.shared.clients.unrouted(|db| {
            routes.get(db).is_some() || !old.get(db).is_some_and(|d| d.close_sessions_on_removal)
        });
        self.shared.routes.store(Arc::new(routes));
    }

    /// Serves `tls` to connections from now on; open sessions keep the certificate they
    /// were accepted with.
    pub fn set_tls(&self, tls: TlsServer) {
        self.shared.tls.store(Some(Arc::new(tls)));
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.shared.routes.load_full()
    }

    /// Client connections being served now (including ones still authenticating).
    pub fn connections(&self) -> usize {
        self.shared.settings.max_client_connections - self.shared.connections.available_permits()
    }

    /// Connections that have not finished logging in, from every source, or from `source`.
    pub fn unauthenticated_connections(&self, source: Option<std::net::IpAddr>) -> usize {
        match source {
            Some(ip) => self.shared.unauthenticated.from(ip),
            None => self.shared.unauthenticated.total(),
        }
    }

    /// Authenticated client connections to `db` counted against its limit.
    pub fn client_connections(&self, db: &str) -> u32 {
        self.shared.counts.current(db)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Prometheus text exposition of the proxy's metrics.
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(self)
    }

    /// What the admin console's RELOAD runs.
    pub fn set_reload_hook(&self, hook: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.shared.reload_hook.store(Some(Arc::new(Box::new(hook))));
    }

    /// Enables API-key logins (the tunnel, the admin console). Set once, before serving.
    pub fn set_api_keys(&self, keys: Arc<dyn crate::apikey::ApiKeys>) {
        if self.shared.api_keys.set(keys).is_err() {
            tracing::warn!("API-key checker already set; keeping the first");
        }
    }

    /// The pools, for the admin console and metrics.
    pub fn pools(&self) -> Vec<Arc<crate::pool::Pool>> {
        self.shared.pools.all()
    }

    pub fn cancel_registrations(&self) -> usize {
        self.shared.cancels.len()
    }

    /// Accepts direct (session) connections until shutdown begins.
    pub async fn serve(&self, listener: TcpListener) {
        self.serve_kind(listener, ListenerKind::Direct).await
    }

    /// Accepts pooled connections until shutdown begins.
    pub async fn serve_pooled(&self, listener: TcpListener) {
        self.serve_kind(listener, ListenerKind::Pooled).await
    }

    async fn serve_kind(&self, listener: TcpListener, kind: ListenerKind) {
        loop {
            tokio::select! {
                () = self.shared.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.shared.counters.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let cap = self.shared.settings.max_unauthenticated_per_source;
                        let Some(guard) = self.shared.unauthenticated.admit(peer.ip(), cap) else {
                            // Closed before a byte is read: the cap bounds exactly that work.
                            tracing::debug!(%peer, "closing connection: too many from this address still logging in");
                            drop(stream);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        self.spawn_counted(stream, peer.to_string(), kind, Some(guard));
                    }
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// Serves one already-accepted connection (any byte stream: tests use in-memory pipes).
    pub fn spawn_connection<S>(&self, stream: S, peer: String, kind: ListenerKind)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.spawn_counted(stream, peer, kind, None)
    }

    /// [`Proxy::spawn_connection`], holding `unauthenticated` until the login ends.
    fn spawn_counted<S>(
        &self,
        stream: S,
        peer: String,
        kind: ListenerKind,
        unauthenticated: Option<crate::unauthenticated::SourceGuard>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let permit = match Arc::clone(&shared.connections).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Refuse as PostgreSQL does, after TLS and the startup packet, so TLS clients
                // can show the error (and cancel requests still get through). Refusals are
                // capped separately so a flood cannot make them the new bottleneck.
                let Ok(refusal) = Arc::clone(&shared.refusals).try_acquire_owned() else {
                    tracing::warn!(%peer, "dropping connection: max_client_connections reached");
                    return;
                };
                tracing::warn!(%peer, "refusing connection: max_client_connections reached");
                self.shared.tracker.spawn(async move {
                    crate::login::refuse(shared, stream, peer).await;
                    drop(refusal);
                    drop(unauthenticated);
                });
                return;
            }
        };
        self.shared.tracker.spawn(async move {
            crate::session::handle(shared, stream, peer, kind, unauthenticated).await;
            drop(permit);
        });
    }

    /// Begins graceful shutdown: listeners stop, idle sessions close now, sessions inside a
    /// transaction close when it ends or at `shutdown_timeout`.
    pub fn shutdown(&self) {
        self.shared.shutdown_deadline();
        self.shared.shutdown.cancel();
    }

    /// Waits until every session has ended (at most the shutdown timeout plus a grace).
    pub async fn drained(&self) {
        self.shared.tracker.close();
        let limit = self.shared.settings.shutdown_timeout + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.shared.tracker.wait()).await.is_err() {
            tracing::warn!("sessions still open after the shutdown deadline");
        }
    }
}
