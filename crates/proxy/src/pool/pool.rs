//! A pool of server connections for one (database, role): opened lazily up to `pool_size`,
//! `min_pool_size` kept warm, idle ones closed after `server_idle_timeout` and old ones
//! after `server_lifetime`, broken ones dropped. Clients that find no idle server wait in
//! FIFO order and are handed a server directly when one comes back; a wait is bounded by
//! `pool_timeout`. PAUSE holds new checkouts, waits for servers in use, and closes the rest.
//! A pool whose database left the route table is closed: it keeps nothing idle and stops its
//! maintenance. The count of servers is the ledger's (`slots`): slots are guards, so no path
//! here adjusts a count by hand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::sync::oneshot;
use wire::SqlState;
use wire::backend::BackendMessage;

use super::server::{ServerConn, Slot};
pub use super::slots::SlotCounts;
use super::slots::{Ledger, Next, Reservation};
use super::stats::PoolStats;
use crate::auth::Authenticated;
use crate::error::{ErrorKind, SessionError};
use crate::routes::{Database, PoolConfig};

/// ParameterStatus names and values, in the order a server reported them.
pub type ParamList = Arc<Vec<(String, String)>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub role: String,
}

#[derive(Debug)]
pub enum CheckoutError {
    Timeout(Duration),
    Connect(SessionError),
}

/// A server as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct ServerEntry {
    pub id: u64,
    pub pid: i32,
    pub connected_at: std::time::SystemTime,
    pub active: bool,
}

pub struct Pool {
    pub key: PoolKey,
    db: ArcSwap<Database>,
    slots: Arc<Ledger<ServerConn>>,
    /// The first client's SCRAM keys, for upstreams the proxy logs in to with them.
    keys: Mutex<Option<Authenticated>>,
    /// ParameterStatus values a fresh server reports: what a client sees at login.
    base_params: Mutex<Vec<(String, String)>>,
    /// What clients with given startup settings see at login, learned from a server once so
    /// later logins with the same settings need none.
    login_params: Mutex<HashMap<String, ParamList>>,
    /// Statement texts (by base name) whose statement PostgreSQL invalidated for good, with
    /// the generation new Parses of them get (`statements::Prepared`).
    statement_generations: Mutex<HashMap<Arc<str>, u64>>,
    generation: AtomicU64,
    next_id: AtomicU64,
    servers: Mutex<std::collections::BTreeMap<u64, ServerEntry>>,
    connect_timeout: Duration,
    /// `max_active`: clients that may hold or wait for a server at once.
    active_limit: ArcSwap<Option<(u32, Arc<tokio::sync::Semaphore>)>>,
    pub stats: PoolStats,
}

impl Pool {
    /// A pool created `paused` (under a PAUSE of all databases, or of its own) opens nothing
    /// until resumed.
    pub fn new(key: PoolKey, db: Arc<Database>, connect_timeout: Duration, paused: bool) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            key,
            db: ArcSwap::new(db),
            slots: Ledger::new(paused),
            keys: Mutex::new(None),
            base_params: Mutex::new(Vec::new()),
            login_params: Mutex::new(HashMap::new()),
            statement_generations: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            servers: Mutex::new(Default::default()),
            connect_timeout,
            active_limit: ArcSwap::from_pointee(None),
            stats: PoolStats::default(),
        });
        pool.follow_max_active(pool.db.load().pool.max_active);
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    pub fn database(&self) -> Arc<Database> {
        self.db.load_full()
    }

    pub fn config(&self) -> PoolConfig {
        self.db.load().pool.clone()
    }

    /// Follows a route reload. A different upstream retires every server of the old one.
    pub fn update(&self, db: &Arc<Database>) {
        let old = self.db.load();
        if Arc::ptr_eq(&old, db) {
            return;
        }
        if old.upstream.addr != db.upstream.addr || old.upstream.dbname != db.upstream.dbname {
            // Servers of the old upstream are closed now if idle, when they come back if not.
            self.generation.fetch_add(1, Ordering::AcqRel);
            drop(self.slots.take_idle());
        }
        let resized = old.pool.pool_size != db.pool.pool_size;
        self.follow_max_active(db.pool.max_active);
        self.db.store(Arc::clone(db));
        if resized {
            self.slots.resized();
        }
    }

    /// The pool's database left the route table: idle servers close now, servers in use
    /// when they come back, and maintenance stops. Sessions still on it (databases removed
    /// without closing their sessions) open a server per checkout and close it after.
    pub fn close(&self) {
        drop(self.slots.close());
        tracing::info!(database = %self.key.database, role = %self.key.role, "pool closed: its database is no longer routed");
    }

    pub fn is_closed(&self) -> bool {
        self.slots.is_closed()
    }

    /// A changed `max_active` takes a new semaphore; clients holding permits of the old one
    /// keep them until they let go.
    fn follow_max_active(&self, max: Option<u32>) {
        let current = self.active_limit.load();
        if current.as_ref().as_ref().map(|(n, _)| *n) == max {
            return;
        }
        self.active_limit
            .store(Arc::new(max.map(|n| (n, Arc::new(tokio::sync::Semaphore::new(n as usize))))));
    }

    /// Waits (until `deadline`) for room under `max_active`; `None` when unbounded.
    pub async fn active_permit(
        &self,
        timeout: Duration,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, CheckoutError> {
        let limit = self.active_limit.load_full();
        let Some((_, sem)) = limit.as_ref() else { return Ok(None) };
        match tokio::time::timeout(timeout, Arc::clone(sem).acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(CheckoutError::Timeout(timeout)),
        }
    }

    pub fn base_params(&self) -> Vec<(String, String)> {
        self.base_params.lock().expect("pool params poisoned").clone()
    }

    pub fn login_params(&self, settings_key: &str) -> Option<ParamList> {
        self.login_params.lock().expect("pool params poisoned").get(settings_key).cloned()
    }

    pub fn remember_login_params(&self, settings_key: String, params: ParamList) {
        let mut map = self.login_params.lock().expect("pool params poisoned");
        if map.len() >= 1024 {
            map.clear();
        }
        map.insert(settings_key, params);
    }

    pub fn remember_keys(&self, keys: &Authenticated) {
        let mut k = self.keys.lock().expect("pool keys poisoned");
        if k.is_none() {
            *k = Some(keys.clone());
        }
    }

    /// Servers (open or being opened, idle) right now.
    pub fn counts(&self) -> (u32, usize) {
        let c = self.slots.counts();
        (c.open(), c.idle as usize)
    }

    /// Servers idle, in use and being opened right now.
    pub fn slot_counts(&self) -> SlotCounts {
        self.slots.counts()
    }

    pub fn is_paused(&self) -> bool {
        self.slots.is_paused()
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        self.slots.max_wait()
    }

    pub fn servers(&self) -> Vec<ServerEntry> {
        self.servers.lock().expect("pool servers poisoned").values().cloned().collect()
    }

    fn mark(&self, id: u64, active: bool) {
        if let Some(e) = self.servers.lock().expect("pool servers poisoned").get_mut(&id) {
            e.active = active;
        }
    }

    /// Takes a server: an idle one, a new one, or the next one returned, within `timeout`.
    pub async fn checkout(self: &Arc<Self>, timeout: Duration) -> Result<ServerConn, CheckoutError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.checkout_inner(deadline, timeout).await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.stats.record_wait(started.elapsed());
        result
    }

    /// Every wait in here ends at `deadline`: for a server to come back, for RESUME, and for
    /// a connect of the client's own. When connects fail while clients wait, each failure
    /// gives its slot back and wakes the longest-waiting client, which then opens a server
    /// itself; so against a database that is down every client gets the error of its own
    /// attempt (57P03 and the like: PgBouncer too hands a server's login error to the clients
    /// waiting on its pool) rather than sitting out `pool_timeout`. The timeout error (53300)
    /// is for clients that found no server and no free slot before their deadline.
    async fn checkout_inner(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<ServerConn, CheckoutError> {
        loop {
            // Listening before looking, so a RESUME in between is not missed.
            let resumed = self.slots.changed.notified();
            let mut resumed = std::pin::pin!(resumed);
            resumed.as_mut().enable();
            let size = self.db.load().pool.pool_size.max(1);
            let mut server = match self.slots.checkout(size) {
                Next::Take(s) => s,
                Next::Open(reservation) => match self.open_for_client(reservation, deadline).await {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => return Err(CheckoutError::Connect(e)),
                    None => return Err(CheckoutError::Timeout(timeout)),
                },
                Next::Wait(mut rx) => match tokio::time::timeout_at(deadline, &mut rx).await {
                    Ok(Ok(s)) => s,
                    // The sender was dropped: a slot came free, go round again to open a server.
                    Ok(Err(_)) => continue,
                    Err(_) => {
                        // A server handed over just now goes to the next client, not to waste.
                        rx.close();
                        if let Ok(s) = rx.try_recv() {
                            self.checkin(s);
                        }
                        return Err(CheckoutError::Timeout(timeout));
                    }
                },
                Next::Paused => {
                    if tokio::time::timeout_at(deadline, resumed).await.is_err() {
                        return Err(CheckoutError::Timeout(timeout));
                    }
                    continue;
                }
            };
            if self.usable(&mut server) {
                self.mark(server.id, true);
                return Ok(server);
            }
            // Dropping it gives its slot back; go round to find or open another.
        }
    }

    fn usable(&self, s: &mut ServerConn) -> bool {
        s.generation == self.generation.load(Ordering::Acquire) && s.is_healthy()
    }

    /// Opens a server in `reservation` for a client that waits until `deadline` (`None` once
    /// it has passed). The connect runs on a task of its own so that a client giving up does
    /// not waste it: a server opened after its client left goes to the next one, or idles.
    async fn open_for_client(
        self: &Arc<Self>,
        reservation: Reservation<ServerConn>,
        deadline: tokio::time::Instant,
    ) -> Option<Result<ServerConn, SessionError>> {
        let (tx, mut rx) = oneshot::channel();
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(Ok(server)) = tx.send(pool.connect(reservation).await) {
                pool.checkin(server);
            }
        });
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(result)) => Some(result),
            // The task ended without an answer: it panicked, and its reservation went with it.
            Ok(Err(_)) => Some(Err(self.unavailable("the connect task ended without an answer".into()))),
            Err(_) => {
                rx.close();
                if let Ok(Ok(s)) = rx.try_recv() {
                    self.checkin(s);
                }
                None
            }
        }
    }

    fn unavailable(&self, detail: String) -> SessionError {
        SessionError::new(
            ErrorKind::Upstream,
            detail,
            Some(wire::ErrorResponse::fatal(
                SqlState::CANNOT_CONNECT_NOW,
                format!("database \"{}\" is not available right now", self.key.database),
            )),
        )
    }

    /// Opens a server in `reservation`; on any error the reservation is dropped, which gives
    /// its slot back.
    async fn connect(
        self: &Arc<Self>,
        reservation: Reservation<ServerConn>,
    ) -> Result<ServerConn, SessionError> {
        let db = self.database();
        let role = db
            .role(&self.key.role)
            .ok_or_else(|| SessionError::protocol(format!("role {} is no longer routed", self.key.role)))?;
        let keys = self.keys.lock().expect("pool keys poisoned").clone();
        let generation = self.generation.load(Ordering::Acquire);
        // `connect_timeout` bounds reaching the server inside; this bounds the login after it
        // too, so a server that accepts and then says nothing holds no slot (and no client)
        // for longer.
        let login = crate::upstream::connect(&db, &role, &[], keys.as_ref(), self.connect_timeout);
        let up = match tokio::time::timeout(self.connect_timeout, login).await {
            Ok(up) => up?,
            Err(_) => {
                return Err(self.unavailable(format!(
                    "upstream login took longer than connect_timeout ({})",
                    humantime::format_duration(self.connect_timeout)
                )));
            }
        };
        let params = parameter_statuses(&up.startup_frames);
        if !params.is_empty() {
            *self.base_params.lock().expect("pool params poisoned") = params;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.stats.servers_opened.fetch_add(1, Ordering::Relaxed);
        self.servers.lock().expect("pool servers poisoned").insert(
            id,
            ServerEntry { id, pid: up.pid, connected_at: std::time::SystemTime::now(), active: true },
        );
        let slot = reservation.opened();
        let pool = Arc::downgrade(self);
        let now = Instant::now();
        Ok(ServerConn {
            id,
            stream: up.stream,
            pid: up.pid,
            secret: up.secret,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            prepared: Default::default(),
            settings: Default::default(),
            created: now,
            last_used: now,
            generation,
            broken: false,
            _slot: Slot {
                release: Some(Box::new(move || {
                    // Out of SHOW SERVERS before the slot is free for another.
                    if let Some(pool) = pool.upgrade() {
                        pool.servers.lock().expect("pool servers poisoned").remove(&id);
                    }
                    drop(slot);
                })),
            },
        })
    }

    /// Returns a clean, idle server: to the longest waiting client, or to the idle list;
    /// closes it when it broke the protocol, the pool is paused or closed, it belongs to a
    /// retired upstream, or the pool shrank.
    /// The generation a new Parse of the statement with this base name gets.
    pub fn statement_generation(&self, base: &str) -> u64 {
        self.statement_generations
            .lock()
            .expect("statement generations poisoned")
            .get(base)
            .copied()
            .unwrap_or(0)
    }

    /// PostgreSQL refused `p` for good ("cached plan must not change result type", after a
    /// schema change): statements prepared from now on under its text get a new name, so
    /// each server prepares them afresh; the old one stays broken, as it would on
    /// PostgreSQL, for the clients still holding it. Bounded: a text moves on only from its
    /// current generation, and the map holds one entry per text a schema change invalidated.
    pub fn invalidate_statement(&self, p: &super::statements::Prepared) {
        let mut gens = self.statement_generations.lock().expect("statement generations poisoned");
        let current = gens.get(&p.base).copied().unwrap_or(0);
        let current_name = if current == 0 { p.base.to_string() } else { format!("{}_{current}", p.base) };
        if *p.server_name == *current_name {
            gens.insert(Arc::clone(&p.base), current + 1);
            tracing::info!(database = %self.key.database, statement = %p.base, generation = current + 1, "statement invalidated by the server; prepared afresh from now on");
        }
    }

    pub fn checkin(&self, mut server: ServerConn) {
        server.last_used = Instant::now();
        server.shrink();
        if server.broken || server.generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        // A waiter handed it marks it active again.
        self.mark(server.id, false);
        let size = self.db.load().pool.pool_size.max(1);
        if let Some(closing) = self.slots.checkin(server, size) {
            drop(closing);
        }
    }

    pub fn set_paused(&self) {
        self.slots.set_paused(true);
    }

    /// PAUSE: hold new checkouts, wait until no server is in use, close idle servers.
    pub async fn pause(&self) {
        self.slots.set_paused(true);
        loop {
            // Every slot given back notifies, and none is added to the idle list while paused.
            let changed = self.slots.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            drop(self.slots.take_idle());
            if self.slots.open() == 0 {
                return;
            }
            changed.await;
        }
    }

    pub fn resume(&self) {
        self.slots.set_paused(false);
    }

    /// Closes idle servers past their idle timeout or lifetime, and opens servers up to
    /// `min_pool_size`.
    async fn maintain_once(self: &Arc<Self>) {
        let cfg = self.config();
        let now = Instant::now();
        let keep = cfg.min_pool_size as usize;
        let retired = self.slots.sweep_idle(|idle| {
            let mut kept = Vec::with_capacity(idle.len());
            let mut retired = Vec::new();
            // Newest first, so the warm ones stay.
            for mut s in idle.into_iter().rev() {
                let too_old = now.duration_since(s.created) >= cfg.server_lifetime;
                let too_idle =
                    now.duration_since(s.last_used) >= cfg.server_idle_timeout && kept.len() >= keep;
                // A server that died while idle would otherwise count against the pool (and keep
                // min_pool_size from being refilled) until someone checked it out.
                if too_old || too_idle || !s.is_healthy() {
                    retired.push(s);
                } else {
                    kept.push(s);
                }
            }
            kept.reverse();
            (kept, retired)
        });
        drop(retired);
        // One slot at a time, taken just before its connect: warming up never holds slots it
        // is not using, and a failed connect gives back the one it had.
        let want = cfg.min_pool_size.min(cfg.pool_size);
        for _ in 0..want {
            let Some(reservation) = self.slots.reserve(want) else { break };
            match self.connect(reservation).await {
                Ok(s) => self.checkin(s),
                Err(e) => {
                    tracing::warn!(database = %self.key.database, role = %self.key.role, error = %e.detail, "could not open a warm server");
                    break;
                }
            }
        }
    }
}

async fn maintain(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        pool.maintain_once().await;
    }
}

fn parameter_statuses(frames: &[u8]) -> Vec<(String, String)> {
    let mut buf = BytesMut::from(frames);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = wire::parse_frame(&mut buf, usize::MAX) {
        if let Ok(BackendMessage::ParameterStatus { name, value }) = BackendMessage::decode(&frame) {
            out.push((name, value));
        }
    }
    out
}
