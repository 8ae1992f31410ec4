//! A pool of server connections for one (database, role): opened lazily up to `pool_size`,
//! `min_pool_size` kept warm, idle ones closed after `server_idle_timeout` and old ones
//! after `server_lifetime`, broken ones dropped. Clients that find no idle server wait in
//! FIFO order and are handed a server directly when one comes back; a wait is bounded by
//! `pool_timeout`. PAUSE holds new checkouts, waits for servers in use, and closes the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::sync::{Notify, oneshot};
use wire::backend::BackendMessage;

use super::server::{ServerConn, Slot};
use super::stats::PoolStats;
use crate::auth::Authenticated;
use crate::error::SessionError;
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

struct State {
    idle: Vec<ServerConn>,
    /// Servers open or being opened, idle or not.
    open: u32,
    waiters: VecDeque<Waiter>,
    paused: bool,
}

struct Waiter {
    since: Instant,
    tx: oneshot::Sender<ServerConn>,
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
    state: Mutex<State>,
    /// Wakes checkouts held by PAUSE, and PAUSE itself when servers come back.
    changed: Notify,
    /// The first client's SCRAM keys, for upstreams the proxy logs in to with them.
    keys: Mutex<Option<Authenticated>>,
    /// ParameterStatus values a fresh server reports: what a client sees at login.
    base_params: Mutex<Vec<(String, String)>>,
    /// What clients with given startup settings see at login, learned from a server once so
    /// later logins with the same settings need none.
    login_params: Mutex<HashMap<String, ParamList>>,
    generation: AtomicU64,
    next_id: AtomicU64,
    servers: Mutex<std::collections::BTreeMap<u64, ServerEntry>>,
    connect_timeout: Duration,
    /// `max_active`: clients that may hold or wait for a server at once.
    active_limit: ArcSwap<Option<(u32, Arc<tokio::sync::Semaphore>)>>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(key: PoolKey, db: Arc<Database>, connect_timeout: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            key,
            db: ArcSwap::new(db),
            state: Mutex::new(State { idle: Vec::new(), open: 0, waiters: VecDeque::new(), paused: false }),
            changed: Notify::new(),
            keys: Mutex::new(None),
            base_params: Mutex::new(Vec::new()),
            login_params: Mutex::new(HashMap::new()),
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
            self.generation.fetch_add(1, Ordering::AcqRel);
            // Dropped outside the lock: a server's slot takes it when it goes.
            let retired = std::mem::take(&mut self.lock().idle);
            drop(retired);
        }
        self.follow_max_active(db.pool.max_active);
        self.db.store(Arc::clone(db));
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("pool state poisoned")
    }

    /// Servers (open, idle) right now.
    pub fn counts(&self) -> (u32, usize) {
        let s = self.lock();
        (s.open, s.idle.len())
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        self.lock().waiters.front().map_or(Duration::ZERO, |w| w.since.elapsed())
    }

    pub fn servers(&self) -> Vec<ServerEntry> {
        self.servers.lock().expect("pool servers poisoned").values().cloned().collect()
    }

    fn mark(&self, id: u64, active: bool) {
        if let Some(e) = self.servers.lock().expect("pool servers poisoned").get_mut(&id) {
            e.active = active;
        }
    }

    /// Takes a server: an idle one, a new one, or the next one returned, until `deadline`.
    pub async fn checkout(self: &Arc<Self>, timeout: Duration) -> Result<ServerConn, CheckoutError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.checkout_inner(deadline, timeout).await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.stats.record_wait(started.elapsed());
        result
    }

    async fn checkout_inner(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<ServerConn, CheckoutError> {
        enum Next {
            Take(Box<ServerConn>),
            Connect,
            Wait(oneshot::Receiver<ServerConn>),
            Paused,
        }
        loop {
            let next = {
                let mut st = self.lock();
                let size = self.db.load().pool.pool_size.max(1);
                if st.paused {
                    Next::Paused
                } else if let Some(s) = st.idle.pop() {
                    Next::Take(Box::new(s))
                } else if st.open < size {
                    st.open += 1;
                    Next::Connect
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(Waiter { since: Instant::now(), tx });
                    Next::Wait(rx)
                }
            };
            let server = match next {
                Next::Take(s) => *s,
                Next::Connect => match self.connect().await {
                    Ok(s) => return Ok(s),
                    Err(e) => return Err(CheckoutError::Connect(e)),
                },
                Next::Wait(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(s)) => s,
                    // The sender was dropped: a slot opened up, go round again.
                    Ok(Err(_)) => continue,
                    Err(_) => return Err(CheckoutError::Timeout(timeout)),
                },
                Next::Paused => {
                    if tokio::time::timeout_at(deadline, self.changed.notified()).await.is_err() {
                        return Err(CheckoutError::Timeout(timeout));
                    }
                    continue;
                }
            };
            let mut server = server;
            if self.usable(&mut server) {
                self.mark(server.id, true);
                return Ok(server);
            }
            // Dropping it frees its slot; loop to find or open another.
        }
    }

    fn usable(&self, s: &mut ServerConn) -> bool {
        s.generation == self.generation.load(Ordering::Acquire) && s.is_healthy()
    }

    async fn connect(self: &Arc<Self>) -> Result<ServerConn, SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(id);
        let db = self.database();
        let role = db
            .role(&self.key.role)
            .ok_or_else(|| SessionError::protocol(format!("role {} is no longer routed", self.key.role)))?;
        let keys = self.keys.lock().expect("pool keys poisoned").clone();
        let generation = self.generation.load(Ordering::Acquire);
        let up = crate::upstream::connect(&db, &role, &[], keys.as_ref(), self.connect_timeout).await?;
        let params = parameter_statuses(&up.startup_frames);
        if !params.is_empty() {
            *self.base_params.lock().expect("pool params poisoned") = params;
        }
        self.stats.servers_opened.fetch_add(1, Ordering::Relaxed);
        self.servers.lock().expect("pool servers poisoned").insert(
            id,
            ServerEntry { id, pid: up.pid, connected_at: std::time::SystemTime::now(), active: true },
        );
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
            _slot: slot,
        })
    }

    /// A slot that, when its server is dropped, lowers the open count and lets a waiter
    /// open a new server in its place.
    fn slot(self: &Arc<Self>, id: u64) -> Slot {
        let weak = Arc::downgrade(self);
        Slot {
            release: Some(Box::new(move || {
                if let Some(pool) = weak.upgrade() {
                    pool.servers.lock().expect("pool servers poisoned").remove(&id);
                    let mut st = pool.lock();
                    st.open = st.open.saturating_sub(1);
                    // Dropping a waiter's sender wakes it to try again.
                    st.waiters.pop_front();
                    drop(st);
                    pool.changed.notify_waiters();
                }
            })),
        }
    }

    /// Returns a clean, idle server: to the longest waiting client, or to the idle list.
    pub fn checkin(&self, mut server: ServerConn) {
        server.last_used = Instant::now();
        server.shrink();
        if server.generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        if !st.paused {
            while let Some(w) = st.waiters.pop_front() {
                match w.tx.send(server) {
                    Ok(()) => return,
                    Err(back) => server = back,
                }
            }
        }
        self.mark(server.id, false);
        if st.paused {
            // PAUSE closes servers as they come back.
            drop(st);
            drop(server);
            self.changed.notify_waiters();
            return;
        }
        st.idle.push(server);
    }

    pub fn set_paused(&self) {
        self.lock().paused = true;
    }

    /// PAUSE: hold new checkouts, wait until no server is in use, close idle servers.
    pub async fn pause(&self) {
        self.lock().paused = true;
        loop {
            let notified = self.changed.notified();
            let closing = std::mem::take(&mut self.lock().idle);
            drop(closing);
            if self.lock().open == 0 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_waiters();
    }

    /// Closes idle servers past their idle timeout or lifetime, and opens servers up to
    /// `min_pool_size`.
    async fn maintain_once(self: &Arc<Self>) {
        let cfg = self.config();
        let now = Instant::now();
        let mut retired = Vec::new();
        let missing = {
            let mut st = self.lock();
            if st.paused {
                return;
            }
            let keep = cfg.min_pool_size as usize;
            let mut kept = Vec::with_capacity(st.idle.len());
            // Newest first, so the warm ones stay.
            let idle = std::mem::take(&mut st.idle);
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
            st.idle = kept;
            let want = cfg.min_pool_size.min(cfg.pool_size);
            if st.open < want {
                let n = want - st.open;
                st.open += n;
                n
            } else {
                0
            }
        };
        drop(retired);
        for _ in 0..missing {
            match self.connect().await {
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
