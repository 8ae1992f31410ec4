//! A client of the pooled listener. In transaction mode it borrows a server at the first
//! message after ReadyForQuery(`I`) and gives it back at the next one; in session mode it
//! keeps one server for its lifetime. The session is one task that owns both streams and
//! polls reads and writes of both sides together, so neither side's backpressure can stall
//! the other and nothing is locked per message.
//!
//! Per message it: renames named prepared statements to server-wide names and prepares them
//! on whichever server it holds (`statements`), answers for the proxy what the server was
//! not asked (`expect`), records session settings and pins from statements that succeed
//! (`classify`, `settings`, `pins`), and replays the client's settings on every server it
//! attaches. A server that dies before answering anything of a transaction is replaced and
//! the transaction resent, so an upstream restart is invisible outside transactions.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::io::poll_read_buf;
use wire::backend::{BackendMessage, TransactionStatus};
use wire::frame::{HEADER_LEN, peek_header};
use wire::{ErrorResponse, Severity, SqlState, WireError};

use super::classify::{Effect, Effects};
use super::expect::{Expect, ExpectQueue, Finished, Kind, Verdict};
use super::pins::Pins;
use super::pool::{CheckoutError, Pool};
use super::server::ServerConn;
use super::settings::{Settings, Undo};
use super::statements::{ClientStatements, Prepared};
use crate::cancel::{CancelGuard, CancelTarget};
use crate::clients::{ClientInfo, ClientState};
use crate::error::SessionError;
use crate::handshake::send_error;
use crate::login::LoggedIn;
use crate::routes::{Limits, PoolMode};
use crate::server::Shared;
use crate::stream::ClientStream;

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// A transaction whose messages exceed this is not kept for a resend.
const REPLAY_LIMIT: usize = 1 << 20;
const READ_RESERVE: usize = 8 * 1024;

const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];

pub(crate) async fn run<S>(
    shared: &Arc<Shared>,
    li: LoggedIn<S>,
    login_deadline: tokio::time::Instant,
    peer: &str,
    info: &Arc<ClientInfo>,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let LoggedIn { mut client, startup, db, user, keys, count } = li;
    let settings = match Settings::from_startup(&startup.params) {
        Ok(s) => s,
        Err(msg) => {
            let e =
                SessionError::fatal(crate::error::ErrorKind::Protocol, SqlState::FEATURE_NOT_SUPPORTED, msg);
            let e = send_error(&mut client, e).await;
            return e.detail;
        }
    };
    let pool = shared.pools.get(&db, &user, shared.settings.connect_timeout);
    let _counted = super::stats::ClientCount::new(&pool);
    if let Some(keys) = &keys {
        pool.remember_keys(keys);
    }
    // A synthetic process id: the client's server changes from one transaction to the next.
    let pid = (rand::random::<u32>() >> 1) as i32;
    let cancel = shared.cancels.register(pid, None);
    let mode = pool.config().pool_mode;
    let mut s = Session {
        shared: Arc::clone(shared),
        pool,
        mode,
        client: Side::new(client),
        attached: None,
        settings,
        undo: Undo::default(),
        statements: ClientStatements::default(),
        unnamed_statement: Effects::default(),
        unnamed_portal: Effects::default(),
        portals: HashMap::new(),
        pins: Pins::default(),
        status: TransactionStatus::Idle,
        transaction_since: None,
        idle_since: Instant::now(),
        c_remaining: 0,
        c_discard: false,
        s_remaining: 0,
        s_forward: false,
        skip_client_until_sync: false,
        copy_in: false,
        cancel,
        shutting_down: false,
        info: Arc::clone(info),
        _count: count,
    };
    // The authentication deadline is behind us: what remains of login may wait for a server,
    // and that wait is bounded by pool_timeout with a clear error, not by a silent close.
    let _ = login_deadline;
    let bound = s.pool.config().pool_timeout + shared.settings.connect_timeout + Duration::from_secs(5);
    match tokio::time::timeout(bound, s.login(pid)).await {
        Err(_) => return "login did not finish".into(),
        Ok(Err(e)) => {
            s.client.wbuf.extend_from_slice(&e.to_error_message());
            let _ = s.write_out().await;
            return e.to_string();
        }
        Ok(Ok(())) => {}
    }
    tracing::info!(%peer, db = %db.name, %user, mode = ?mode, "pooled session started");
    let span = tracing::trace_span!("pooled", %peer);
    let reason = tracing::Instrument::instrument(s.run(), span).await;
    s.finish().await;
    reason
}

/// One side's stream with its buffers.
struct Side<T> {
    stream: T,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Side<T> {
    fn new(stream: T) -> Self {
        Side { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new(), needs_flush: false }
    }

    /// Writes what is buffered. Ready(Ok(true)) when something was written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending },
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending }
    }

    /// Reads once. Ready(Ok(0)) is end of stream.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 2 {
            self.rbuf.reserve(READ_RESERVE);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }
}

/// A server held by the session.
struct Attached {
    server: ServerConn,
    queue: ExpectQueue,
    /// Since when the current round trip has waited for its answer.
    busy_since: Option<Instant>,
    /// Nothing of this attachment has reached the client yet.
    silent: bool,
    /// The client's bytes consumed since attaching, kept while a resend is possible.
    replay: Option<BytesMut>,
    /// The proxy sent a cancel for the query timeout.
    timed_out: bool,
    /// Whether the client was inside a transaction when this server was attached.
    attached_in_transaction: bool,
    /// Room under `max_active`, held while the server is.
    _permit: Option<OwnedSemaphorePermit>,
}

enum Event {
    NeedServer,
    Release,
    ClientGone(String),
    ServerGone(String),
    Fatal(ErrorResponse),
    Timer,
    Shutdown,
}

struct Session<S: AsyncRead + AsyncWrite + Unpin> {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    mode: PoolMode,
    client: Side<ClientStream<S>>,
    attached: Option<Attached>,
    settings: Settings,
    /// What a rollback restores of `settings` and the server's record.
    undo: Undo,
    statements: ClientStatements,
    unnamed_statement: Effects,
    unnamed_portal: Effects,
    portals: HashMap<String, Effects>,
    pins: Pins,
    /// The transaction status the client was last told.
    status: TransactionStatus,
    transaction_since: Option<Instant>,
    idle_since: Instant,
    /// Bytes left of a client frame being passed through (or dropped, with `c_discard`).
    c_remaining: usize,
    c_discard: bool,
    /// Bytes left of a server frame being passed through (`s_forward`) or dropped.
    s_remaining: usize,
    s_forward: bool,
    /// The proxy answered a client message with an error itself: like PostgreSQL, ignore
    /// what follows until Sync.
    skip_client_until_sync: bool,
    copy_in: bool,
    cancel: CancelGuard,
    shutting_down: bool,
    /// This client's SHOW CLIENTS entry.
    info: Arc<ClientInfo>,
    _count: crate::limits::CountGuard,
}

/// A free function rather than a method: a `&Session` held across the wait would make the
/// session future need `Sync`.
async fn checkout(pool: &Arc<Pool>) -> Result<(ServerConn, Option<OwnedSemaphorePermit>), ErrorResponse> {
    let timeout = pool.config().pool_timeout;
    let started = Instant::now();
    let permit = pool.active_permit(timeout).await.map_err(|e| pool_error(pool, e))?;
    let left = timeout.saturating_sub(started.elapsed());
    let server = pool.checkout(left).await.map_err(|e| match e {
        // Name the configured limit, not what was left of it.
        CheckoutError::Timeout(_) => pool_error(pool, CheckoutError::Timeout(timeout)),
        other => pool_error(pool, other),
    })?;
    Ok((server, permit))
}

fn pool_error(pool: &Pool, e: CheckoutError) -> ErrorResponse {
    match e {
        CheckoutError::Timeout(t) => {
            pool.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            ErrorResponse::fatal(
                SqlState::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "no server connection became free within {} (pool_timeout) for database \"{}\"",
                    humantime::format_duration(t),
                    pool.key.database
                ),
            )
            .with_hint("raise pool_size, or shorten the transactions that hold servers")
        }
        CheckoutError::Connect(e) => e.response.unwrap_or_else(|| {
            ErrorResponse::fatal(SqlState::CANNOT_CONNECT_NOW, "the database is not available right now")
        }),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    fn limits(&self) -> Limits {
        self.shared.routes.load().get(&self.pool.key.database).map(|d| d.limits.clone()).unwrap_or_default()
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        self.client.stream.write_all(&self.client.wbuf).await?;
        self.client.wbuf.clear();
        self.client.stream.flush().await
    }

    /// Learns the ParameterStatus values this client must see (its own settings applied on
    /// a server, which validates them too) and tells the client it is ready.
    async fn login(&mut self, pid: i32) -> Result<(), ErrorResponse> {
        let key = self.settings.sync_sql(&Settings::default()).unwrap_or_default();
        let cached = self.pool.login_params(&key);
        let params = match cached {
            Some(p) if self.mode == PoolMode::Transaction => p,
            _ => {
                let (mut server, permit) = checkout(&self.pool).await?;
                let reported = match sync_settings(&mut server, &self.settings).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The server is fine; the client's settings are not.
                        self.pool.checkin(server);
                        let mut e = e;
                        e.set(b'S', "FATAL".into());
                        e.set(b'V', "FATAL".into());
                        return Err(e);
                    }
                };
                let params = Arc::new(merge_params(&self.pool.base_params(), &reported));
                self.pool.remember_login_params(key, Arc::clone(&params));
                self.attach_server((server, permit));
                if self.mode == PoolMode::Transaction {
                    self.release();
                }
                params
            }
        };
        let mut out = BytesMut::new();
        for (name, value) in params.iter() {
            BackendMessage::ParameterStatus { name: name.clone(), value: value.clone() }.encode(&mut out);
        }
        BackendMessage::BackendKeyData { pid, secret: self.cancel.key().secret }.encode(&mut out);
        BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
        self.client.wbuf.extend_from_slice(&out);
        self.write_out().await.map_err(|e| ErrorResponse::fatal(SqlState::CONNECTION_FAILURE, e.to_string()))
    }

    /// Makes `server` this client's: its settings become the client's (replayed as one
    /// injected query whose answers are dropped), and cancels go to it.
    fn attach_server(&mut self, (mut server, permit): (ServerConn, Option<OwnedSemaphorePermit>)) {
        let mut queue = ExpectQueue::default();
        if let Some(sql) = self.settings.sync_sql(&server.settings) {
            wire::frontend::FrontendMessage::Query { query: sql }.encode(&mut server.wbuf);
            queue.push(Expect::Injected(Kind::Query { effects: Effects::default(), failed: false }));
            server.settings = self.settings.clone();
        }
        self.cancel.set(Some(CancelTarget {
            db: self.pool.database(),
            pid: server.pid,
            secret: server.secret,
        }));
        self.pool.stats.active.fetch_add(1, Ordering::Relaxed);
        self.info.set_state(ClientState::Active);
        self.attached = Some(Attached {
            server,
            queue,
            busy_since: None,
            silent: true,
            replay: Some(BytesMut::new()),
            timed_out: false,
            attached_in_transaction: self.status != TransactionStatus::Idle,
            _permit: permit,
        });
    }

    /// Gives the server back: to the pool when it is clean and idle, otherwise closes it.
    fn release(&mut self) {
        let Some(a) = self.attached.take() else { return };
        self.cancel.set(None);
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.info.set_state(ClientState::Idle);
        let clean = a.queue.is_empty()
            && a.server.rbuf.is_empty()
            && a.server.wbuf.is_empty()
            && self.status == TransactionStatus::Idle
            && self.s_remaining == 0;
        if clean {
            self.pool.checkin(a.server);
        }
    }

    async fn run(&mut self) -> String {
        loop {
            let deadline = self.next_deadline();
            let shutdown = self.shared.shutdown.clone();
            let event = tokio::select! {
                biased;
                ev = poll_fn(|cx| self.poll_io(cx)) => ev,
                () = tokio::time::sleep_until(deadline.into()), if deadline != far_future() => Event::Timer,
                () = shutdown.cancelled(), if !self.shutting_down => Event::Shutdown,
            };
            match &event {
                Event::NeedServer => tracing::trace!("need server"),
                Event::Release => tracing::trace!("release"),
                _ => {}
            }
            match event {
                Event::NeedServer => {
                    self.info.set_state(ClientState::Waiting);
                    match checkout(&self.pool).await {
                        Ok(server) => self.attach_server(server),
                        Err(e) => return self.fatal(e).await,
                    }
                }
                Event::Release => self.release(),
                Event::ClientGone(reason) => return reason,
                Event::ServerGone(reason) => {
                    if self.resend_possible() {
                        tracing::info!(database = %self.pool.key.database, %reason, "server lost before answering; resending the transaction on another server");
                        if let Err(e) = self.resend().await {
                            return self.fatal(e).await;
                        }
                        continue;
                    }
                    let e = ErrorResponse::fatal(
                        SqlState::CONNECTION_FAILURE,
                        "the server connection was lost in the middle of a transaction",
                    );
                    let _ = reason;
                    return self.fatal(e).await;
                }
                Event::Fatal(e) => return self.fatal(e).await,
                Event::Timer => {
                    if let Some(e) = self.on_timer() {
                        return self.fatal(e).await;
                    }
                }
                Event::Shutdown => self.shutting_down = true,
            }
            if self.shutting_down && self.attached.is_none() && self.status == TransactionStatus::Idle {
                return self
                    .fatal(ErrorResponse::fatal(
                        SqlState::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    ))
                    .await;
            }
        }
    }

    /// Sends an error to the client (between frames only) and ends the session.
    async fn fatal(&mut self, e: ErrorResponse) -> String {
        self.shared.errors.count(e.get(b'C'));
        if self.s_remaining == 0 {
            self.client.wbuf.extend_from_slice(&e.to_error_message());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.write_out().await?;
            // A TLS close_notify, then FIN: clients can tell this end from a lost connection.
            self.client.stream.shutdown().await
        })
        .await;
        e.to_string()
    }

    /// The session is over: a clean server goes back (after DISCARD ALL in session mode);
    /// one in the middle of anything is closed, which rolls its transaction back.
    async fn finish(&mut self) {
        let Some(mut a) = self.attached.take() else { return };
        self.cancel.set(None);
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.pins.is_pinned() {
            self.pool.stats.pinned.fetch_sub(1, Ordering::Relaxed);
        }
        let clean = a.queue.is_empty()
            && a.server.rbuf.is_empty()
            && a.server.wbuf.is_empty()
            && self.status == TransactionStatus::Idle
            && self.s_remaining == 0;
        if !clean {
            return;
        }
        if self.mode == PoolMode::Session || self.pins.is_pinned() {
            let reset = tokio::time::timeout(Duration::from_secs(5), discard_all(&mut a.server)).await;
            if !matches!(reset, Ok(Ok(()))) {
                return;
            }
        }
        self.pool.checkin(a.server);
    }

    fn resend_possible(&self) -> bool {
        let Some(a) = &self.attached else { return false };
        a.silent && a.replay.is_some() && !a.attached_in_transaction && self.c_remaining == 0
    }

    /// Replaces a server that died before answering and resends what the client sent.
    async fn resend(&mut self) -> Result<(), ErrorResponse> {
        let a = self.attached.take().expect("resend_possible checked it");
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        let replay = a.replay.expect("resend_possible checked it");
        drop(a.server);
        let mut rbuf = replay;
        rbuf.extend_from_slice(&self.client.rbuf);
        self.client.rbuf = rbuf;
        self.s_remaining = 0;
        self.skip_client_until_sync = false;
        self.copy_in = false;
        let server = checkout(&self.pool).await?;
        self.attach_server(server);
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let limits = self.limits();
        let mut next = far_future();
        let mut at = |d: Instant| next = next.min(d);
        match &self.attached {
            Some(a) if !a.queue.is_empty() => {
                if let (Some(t), Some(since), false) = (limits.query_timeout, a.busy_since, a.timed_out) {
                    at(since + t);
                }
            }
            _ => {
                let t = if self.status == TransactionStatus::Idle {
                    limits.idle_timeout
                } else {
                    limits.idle_in_transaction_timeout
                };
                if let Some(t) = t {
                    at(self.idle_since + t);
                }
            }
        }
        if let (Some(t), Some(since)) = (limits.transaction_timeout, self.transaction_since) {
            at(since + t);
        }
        if self.shutting_down {
            at(self.shared.shutdown_deadline());
        }
        next
    }

    /// A timer went off: cancel the running statement, or end the session.
    fn on_timer(&mut self) -> Option<ErrorResponse> {
        let limits = self.limits();
        let now = Instant::now();
        if self.shutting_down && self.shared.shutdown_deadline() <= now {
            return Some(ErrorResponse::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ));
        }
        if let (Some(t), Some(since)) = (limits.transaction_timeout, self.transaction_since)
            && since + t <= now
        {
            return Some(ErrorResponse::fatal(
                SqlState::TRANSACTION_TIMEOUT,
                format!(
                    "terminating connection due to transaction timeout (transaction_timeout = {})",
                    humantime::format_duration(t)
                ),
            ));
        }
        let busy = self.attached.as_ref().is_some_and(|a| !a.queue.is_empty());
        if busy {
            let a = self.attached.as_mut().expect("busy implies attached");
            if let (Some(t), Some(since)) = (limits.query_timeout, a.busy_since)
                && since + t <= now
                && !a.timed_out
            {
                a.timed_out = true;
                let target =
                    CancelTarget { db: self.pool.database(), pid: a.server.pid, secret: a.server.secret };
                let timeout = self.shared.settings.connect_timeout;
                tokio::spawn(async move {
                    if let Err(e) = crate::cancel::forward(&target, timeout).await {
                        tracing::warn!(error = %e, "query timeout: cancel could not be sent");
                    }
                });
            }
            return None;
        }
        let (limit, code, what) = if self.status == TransactionStatus::Idle {
            (limits.idle_timeout, SqlState::IDLE_SESSION_TIMEOUT, "idle-session timeout (idle_timeout")
        } else {
            (
                limits.idle_in_transaction_timeout,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                "idle-in-transaction timeout (idle_in_transaction_timeout",
            )
        };
        match limit {
            Some(t) if self.idle_since + t <= now => Some(ErrorResponse::fatal(
                code,
                format!("terminating connection due to {what} = {})", humantime::format_duration(t)),
            )),
            _ => None,
        }
    }

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            let mut progress = false;
            // Work on what is already buffered.
            if let Some(ev) = self.process() {
                return Poll::Ready(ev);
            }
            match self.client.poll_write_out(cx) {
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) | Poll::Pending => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Event::ClientGone(format!("client write failed: {e}")));
                }
            }
            if let Some(a) = self.attached.as_mut() {
                match poll_server_write(&mut a.server, cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) | Poll::Pending => {}
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Event::ServerGone(format!("server write failed: {e}")));
                    }
                }
                if self.client.wbuf.len() < HIGH_WATER {
                    match poll_server_read(&mut a.server, cx) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Event::ServerGone("server closed the connection".into()));
                        }
                        Poll::Ready(Ok(n)) => {
                            self.pool.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Event::ServerGone(format!("server read failed: {e}")));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            let server_backlog = self.attached.as_ref().map_or(0, |a| a.server.wbuf.len());
            if server_backlog < HIGH_WATER {
                match self.client.poll_read_in(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Event::ClientGone("client closed the connection".into()));
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Event::ClientGone(format!("client read failed: {e}")));
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Handles buffered input on both sides; an event when the session must act.
    fn process(&mut self) -> Option<Event> {
        if self.attached.is_some() {
            if let Some(ev) = self.process_server() {
                return Some(ev);
            }
            if let Some(ev) = self.process_client() {
                return Some(ev);
            }
            if self.should_release() {
                return Some(Event::Release);
            }
            return None;
        }
        self.process_detached()
    }

    /// Between transactions some messages need no server: a named Parse (checked with the
    /// PostgreSQL grammar; the server prepares it when it is first used), a Close of a
    /// statement, Sync and Flush. Answering them here matters beyond saving a round trip:
    /// clients such as pgbench prepare with a blocking call while their other connections
    /// hold every server inside transactions, and would otherwise wait on themselves.
    fn process_detached(&mut self) -> Option<Event> {
        let max = self.shared.settings.max_message_size;
        loop {
            if self.c_remaining > 0 {
                // Only while discarding after an error the proxy reported itself.
                let n = self.c_remaining.min(self.client.rbuf.len());
                if n == 0 {
                    return None;
                }
                self.client.rbuf.advance(n);
                self.c_remaining -= n;
                continue;
            }
            let (tag, len) = match peek_header(&self.client.rbuf, max) {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(e) => return Some(Event::Fatal(framing_error(e))),
            };
            let whole = self.client.rbuf.len() >= HEADER_LEN + len;
            if tag == b'X' {
                return Some(Event::ClientGone("client terminated".into()));
            }
            if self.skip_client_until_sync && tag != b'S' {
                self.discard_client_frame(len, whole);
                continue;
            }
            if !matches!(tag, b'P' | b'C' | b'S' | b'H') {
                return Some(Event::NeedServer);
            }
            if !whole {
                self.client.rbuf.reserve(HEADER_LEN + len - self.client.rbuf.len());
                return None;
            }
            let body = &self.client.rbuf[HEADER_LEN..HEADER_LEN + len];
            match tag {
                b'S' => {
                    self.skip_client_until_sync = false;
                    BackendMessage::ReadyForQuery(self.status).encode(&mut self.client.wbuf);
                }
                b'H' => {}
                b'C' => {
                    let (kind, name) = (body.first().copied(), cstr(body, 1).map(|(n, _)| n));
                    match (kind, name.and_then(|n| std::str::from_utf8(n).ok())) {
                        (Some(b'S'), Some(n)) if !n.is_empty() => {
                            self.statements.remove(n);
                            self.client.wbuf.extend_from_slice(CLOSE_COMPLETE);
                        }
                        _ => return Some(Event::NeedServer),
                    }
                }
                _ => match parse_fields(body) {
                    Some((name, query, types))
                        if !name.is_empty()
                            && pg_query::parse(query, pg_query::ParserOptions::DEFAULT).is_ok() =>
                    {
                        let name = String::from_utf8_lossy(name).into_owned();
                        if self.statements.contains(&name) {
                            let e = duplicate_statement(&name);
                            self.client.wbuf.extend_from_slice(&e.to_error_message());
                            self.skip_client_until_sync = true;
                        } else {
                            let effects = self.shared.classify.get(query);
                            self.statements.insert(name, Arc::new(Prepared::new(query, &types, effects)));
                            self.client.wbuf.extend_from_slice(PARSE_COMPLETE);
                        }
                    }
                    // The unnamed statement, or text the grammar rejects: the server
                    // answers (with its own words for the error).
                    _ => return Some(Event::NeedServer),
                },
            }
            self.client.rbuf.advance(HEADER_LEN + len);
        }
    }

    /// Drops a client frame (after an error the proxy reported itself), streaming away a
    /// body that has not fully arrived.
    fn discard_client_frame(&mut self, len: usize, whole: bool) {
        if whole {
            self.client.rbuf.advance(HEADER_LEN + len);
        } else {
            self.client.rbuf.advance(HEADER_LEN);
            self.c_remaining = len;
            self.c_discard = true;
        }
    }

    fn should_release(&self) -> bool {
        let Some(a) = &self.attached else { return false };
        self.mode == PoolMode::Transaction
            && !self.pins.is_pinned()
            && a.queue.is_empty()
            && self.status == TransactionStatus::Idle
            && a.server.rbuf.is_empty()
            && a.server.wbuf.is_empty()
            && self.client.rbuf.is_empty()
            && self.c_remaining == 0
            && self.s_remaining == 0
    }

    fn process_client(&mut self) -> Option<Event> {
        let max = self.shared.settings.max_message_size;
        loop {
            let a = self.attached.as_mut().expect("attached");
            if self.c_remaining > 0 {
                let n = self.c_remaining.min(self.client.rbuf.len());
                if n == 0 {
                    return None;
                }
                if !self.c_discard {
                    a.server.wbuf.extend_from_slice(&self.client.rbuf[..n]);
                }
                keep_for_replay(a, &self.client.rbuf[..n]);
                self.client.rbuf.advance(n);
                self.c_remaining -= n;
                continue;
            }
            let (tag, len) = match peek_header(&self.client.rbuf, max) {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(e) => return Some(Event::Fatal(framing_error(e))),
            };
            let whole = self.client.rbuf.len() >= HEADER_LEN + len;
            let needs_whole =
                matches!(tag, b'P' | b'B' | b'D' | b'C' | b'Q' | b'E' | b'S' | b'H' | b'X' | b'c' | b'f');
            if needs_whole && !whole {
                self.client.rbuf.reserve(HEADER_LEN + len - self.client.rbuf.len());
                return None;
            }
            if tag == b'X' {
                return Some(Event::ClientGone("client terminated".into()));
            }
            if self.skip_client_until_sync && tag != b'S' {
                self.discard_client_frame(len, whole);
                continue;
            }
            let was_idle = a.queue.is_empty();
            if needs_whole {
                let frame = self.client.rbuf.split_to(HEADER_LEN + len);
                keep_for_replay(a, &frame);
                self.on_client_message(tag, &frame);
            } else {
                // Streamed through: CopyData, FunctionCall and anything PostgreSQL will judge.
                if tag == b'F' {
                    a.queue.push(Expect::Client(Kind::FunctionCall));
                }
                a.server.wbuf.extend_from_slice(&self.client.rbuf[..HEADER_LEN]);
                keep_for_replay(a, &self.client.rbuf[..HEADER_LEN]);
                self.client.rbuf.advance(HEADER_LEN);
                self.c_remaining = len;
                self.c_discard = false;
            }
            let a = self.attached.as_mut().expect("attached");
            if was_idle && !a.queue.is_empty() {
                a.busy_since = Some(Instant::now());
            }
            self.emit_replies();
        }
    }

    /// A whole client message that the proxy must look into.
    fn on_client_message(&mut self, tag: u8, frame: &[u8]) {
        let body = &frame[HEADER_LEN..];
        tracing::trace!(tag = %(tag as char), len = body.len(), "client message");
        let a = self.attached.as_mut().expect("attached");
        match tag {
            b'Q' => {
                let effects = cstr(body, 0)
                    .and_then(|(q, _)| std::str::from_utf8(q).ok())
                    .map(|q| self.shared.classify.get(q));
                a.queue.push(Expect::Client(Kind::Query {
                    effects: effects.unwrap_or_default(),
                    failed: false,
                }));
                a.server.wbuf.extend_from_slice(frame);
                self.pool.stats.queries.fetch_add(1, Ordering::Relaxed);
            }
            b'P' => self.on_parse(frame),
            b'B' => self.on_bind(frame),
            b'D' => {
                let kind = body.first().copied().unwrap_or(0);
                let name = cstr(body, 1).map(|(n, _)| n).unwrap_or_default();
                let prepared = (kind == b'S' && !name.is_empty())
                    .then(|| std::str::from_utf8(name).ok().and_then(|n| self.statements.get(n).cloned()))
                    .flatten();
                let a = self.attached.as_mut().expect("attached");
                match prepared {
                    Some(p) => {
                        ensure_prepared(a, &p);
                        let mut msg = BytesMut::with_capacity(p.server_name.len() + 7);
                        msg.put_u8(b'D');
                        msg.put_i32((p.server_name.len() + 6) as i32);
                        msg.put_u8(b'S');
                        msg.put_slice(p.server_name.as_bytes());
                        msg.put_u8(0);
                        a.server.wbuf.extend_from_slice(&msg);
                    }
                    None => a.server.wbuf.extend_from_slice(frame),
                }
                let k = if kind == b'S' { Kind::DescribeStatement } else { Kind::DescribePortal };
                a.queue.push(Expect::Client(k));
            }
            b'C' => {
                let kind = body.first().copied().unwrap_or(0);
                let name = cstr(body, 1).map(|(n, _)| n).unwrap_or_default();
                if kind == b'S' && !name.is_empty() {
                    // The client's name goes; the server's statement stays for others.
                    if let Ok(n) = std::str::from_utf8(name) {
                        self.statements.remove(n);
                    }
                    let a = self.attached.as_mut().expect("attached");
                    a.replay = None;
                    a.queue.push(Expect::Reply(Bytes::from_static(CLOSE_COMPLETE)));
                } else {
                    if kind == b'P'
                        && let Ok(n) = std::str::from_utf8(name)
                    {
                        self.portals.remove(n);
                    }
                    let a = self.attached.as_mut().expect("attached");
                    a.server.wbuf.extend_from_slice(frame);
                    a.queue.push(Expect::Client(Kind::Close));
                }
            }
            b'E' => {
                let portal = cstr(body, 0).map(|(p, _)| p).unwrap_or_default();
                let effects = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    std::str::from_utf8(portal)
                        .ok()
                        .and_then(|p| self.portals.get(p).cloned())
                        .unwrap_or_default()
                };
                let a = self.attached.as_mut().expect("attached");
                a.queue.push(Expect::Client(Kind::Execute { effects }));
                a.server.wbuf.extend_from_slice(frame);
                self.pool.stats.queries.fetch_add(1, Ordering::Relaxed);
            }
            b'S' => {
                self.skip_client_until_sync = false;
                a.queue.push(Expect::Client(Kind::Sync));
                a.server.wbuf.extend_from_slice(frame);
            }
            b'c' | b'f' => {
                if std::mem::take(&mut self.copy_in) {
                    a.queue.drop_syncs_after_front();
                }
                a.server.wbuf.extend_from_slice(frame);
            }
            // Flush, and anything else whole.
            _ => a.server.wbuf.extend_from_slice(frame),
        }
    }

    fn on_parse(&mut self, frame: &[u8]) {
        let parsed = parse_fields(&frame[HEADER_LEN..]);
        let a = self.attached.as_mut().expect("attached");
        let Some((name, query, types)) = parsed else {
            // Malformed: let PostgreSQL say so.
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Parse { name: None }));
            return;
        };
        let effects = self.shared.classify.get(query);
        if name.is_empty() {
            self.unnamed_statement = effects;
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Parse { name: None }));
            return;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        a.replay = None;
        if self.statements.contains(&name) {
            if !raise_on_server(a, &duplicate_statement(&name)) {
                let e = duplicate_statement(&name);
                a.queue.push(Expect::Reply(e.to_error_message().freeze()));
            }
            self.skip_client_until_sync = true;
            return;
        }
        let p = Arc::new(Prepared::new(query, &types, effects));
        self.statements.insert(name, Arc::clone(&p));
        if a.server.prepared.contains(&p.server_name) {
            a.queue.push(Expect::Reply(Bytes::from_static(PARSE_COMPLETE)));
        } else {
            a.server.wbuf.extend_from_slice(&p.parse);
            a.server.prepared.insert(Arc::clone(&p.server_name));
            if !a.queue.push(Expect::Client(Kind::Parse { name: Some(Arc::clone(&p.server_name)) })) {
                a.server.prepared.remove(&p.server_name);
            }
        }
    }

    fn on_bind(&mut self, frame: &[u8]) {
        let body = &frame[HEADER_LEN..];
        let names =
            cstr(body, 0).and_then(|(portal, at)| cstr(body, at).map(|(stmt, rest)| (portal, stmt, rest)));
        let a = self.attached.as_mut().expect("attached");
        let Some((portal, stmt, rest)) = names else {
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Bind));
            return;
        };
        let prepared = if stmt.is_empty() {
            None
        } else {
            std::str::from_utf8(stmt).ok().and_then(|s| self.statements.get(s).cloned())
        };
        let effects = match &prepared {
            Some(p) => {
                ensure_prepared(a, p);
                let new_len = 4 + portal.len() + 1 + p.server_name.len() + 1 + (body.len() - rest);
                a.server.wbuf.reserve(new_len + 1);
                a.server.wbuf.put_u8(b'B');
                a.server.wbuf.put_i32(new_len as i32);
                a.server.wbuf.put_slice(portal);
                a.server.wbuf.put_u8(0);
                a.server.wbuf.put_slice(p.server_name.as_bytes());
                a.server.wbuf.put_u8(0);
                a.server.wbuf.put_slice(&body[rest..]);
                p.effects.clone()
            }
            None => {
                // The unnamed statement, or a name the client never prepared (PostgreSQL
                // answers that with its own error).
                a.server.wbuf.extend_from_slice(frame);
                if stmt.is_empty() { self.unnamed_statement.clone() } else { Effects::default() }
            }
        };
        a.queue.push(Expect::Client(Kind::Bind));
        if portal.is_empty() {
            self.unnamed_portal = effects;
        } else if let Ok(p) = std::str::from_utf8(portal) {
            if effects.is_empty() {
                self.portals.remove(p);
            } else {
                self.portals.insert(p.to_owned(), effects);
            }
        }
    }

    fn emit_replies(&mut self) {
        let Some(a) = self.attached.as_mut() else { return };
        let out = &mut self.client.wbuf;
        let mut any = false;
        a.queue.take_replies(|b| {
            out.extend_from_slice(&b);
            any = true;
        });
        if any {
            a.silent = false;
            a.replay = None;
        }
    }

    fn process_server(&mut self) -> Option<Event> {
        loop {
            self.emit_replies();
            let a = self.attached.as_mut().expect("attached");
            if self.s_remaining > 0 {
                let n = self.s_remaining.min(a.server.rbuf.len());
                if n == 0 {
                    return None;
                }
                if self.s_forward {
                    self.client.wbuf.extend_from_slice(&a.server.rbuf[..n]);
                    self.pool.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                a.server.rbuf.advance(n);
                self.s_remaining -= n;
                continue;
            }
            let (tag, len) = match peek_header(&a.server.rbuf, usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(e) => return Some(Event::ServerGone(format!("server broke the protocol: {e}"))),
            };
            let whole = a.server.rbuf.len() >= HEADER_LEN + len;
            if matches!(tag, b'Z' | b'E') && !whole {
                return None;
            }
            // A server shutting down says FATAL first: before anything reached the client,
            // that is the same as a server that died, and the transaction can go elsewhere.
            if tag == b'E'
                && a.silent
                && let Ok(e) = ErrorResponse::decode(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len])
                && e.severity() == Some(Severity::Fatal.as_str())
                && e.code().is_some_and(|c| c.class() == "57")
            {
                return Some(Event::ServerGone(format!("server is going away: {e}")));
            }
            let (verdict, finished) = a.queue.on_server_message(tag);
            tracing::trace!(tag = %(tag as char), ?verdict, queue = a.queue.len(), "server message");
            match finished {
                Finished::Succeeded(effects) => self.apply_effects(&effects),
                Finished::ParseFailed(name) => {
                    self.attached.as_mut().expect("attached").server.prepared.remove(&name);
                }
                Finished::Nothing => {}
            }
            let a = self.attached.as_mut().expect("attached");
            if tag == b'G' && a.queue.front_runs_statement() {
                self.copy_in = true;
            }
            if tag == b'E'
                && verdict == Verdict::Drop
                && let Ok(e) = ErrorResponse::decode(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len])
            {
                tracing::warn!(database = %self.pool.key.database, error = %e, "replaying session settings failed");
            }
            if verdict == Verdict::Forward {
                a.silent = false;
                a.replay = None;
                if tag == b'E' {
                    self.shared.errors.count_body(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len]);
                }
            }
            if tag == b'Z' {
                let status = TransactionStatus::from_byte(a.server.rbuf[HEADER_LEN])
                    .unwrap_or(TransactionStatus::Idle);
                a.busy_since = (!a.queue.is_empty()).then(Instant::now);
                a.timed_out = false;
                if verdict == Verdict::Forward {
                    self.on_ready(status);
                }
            }
            // Only after a query timeout: the route lookup stays off the per-message path.
            let timed_out = tag == b'E'
                && verdict == Verdict::Forward
                && self.attached.as_ref().is_some_and(|a| a.timed_out);
            let query_timeout = if timed_out { self.limits().query_timeout } else { None };
            let a = self.attached.as_mut().expect("attached");
            if timed_out {
                let body = &a.server.rbuf[HEADER_LEN..HEADER_LEN + len];
                if let Ok(mut e) = ErrorResponse::decode(body)
                    && e.code() == Some(SqlState::QUERY_CANCELED)
                {
                    let limit = query_timeout.map(humantime::format_duration);
                    e.set(
                        b'M',
                        match limit {
                            Some(l) => {
                                format!("canceling statement due to query timeout (query_timeout = {l})")
                            }
                            None => "canceling statement due to query timeout".into(),
                        },
                    );
                    self.client.wbuf.extend_from_slice(&e.to_error_message());
                    a.server.rbuf.advance(HEADER_LEN + len);
                    continue;
                }
            }
            // Pass the frame on (or drop it), streaming its body as it arrives.
            let a = self.attached.as_mut().expect("attached");
            let take = (HEADER_LEN + len).min(a.server.rbuf.len());
            if verdict == Verdict::Forward {
                self.client.wbuf.extend_from_slice(&a.server.rbuf[..take]);
            }
            a.server.rbuf.advance(take);
            self.s_remaining = HEADER_LEN + len - take;
            self.s_forward = verdict == Verdict::Forward;
            if tag == b'Z' && self.should_release() {
                return Some(Event::Release);
            }
        }
    }

    fn on_ready(&mut self, status: TransactionStatus) {
        let now = Instant::now();
        match (self.status, status) {
            (TransactionStatus::Idle, TransactionStatus::InTransaction | TransactionStatus::Failed) => {
                self.transaction_since = Some(now)
            }
            (TransactionStatus::InTransaction | TransactionStatus::Failed, TransactionStatus::Idle) => {
                self.transaction_since = None;
                self.pool.stats.transactions.fetch_add(1, Ordering::Relaxed);
            }
            (TransactionStatus::Idle, TransactionStatus::Idle) => {
                self.pool.stats.transactions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.status = status;
        self.idle_since = now;
    }

    fn apply_effects(&mut self, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        let was_pinned = self.pins.is_pinned();
        let in_transaction = self.status != TransactionStatus::Idle;
        let a = self.attached.as_mut().expect("effects come from the attached server");
        let failed = self.status == TransactionStatus::Failed;
        for e in effects {
            let (client, server) = (&mut self.settings, &mut a.server.settings);
            match e {
                Effect::Begin => self.undo.begin(client, server),
                // COMMIT of a failed transaction rolls it back.
                Effect::Commit { chain } | Effect::Rollback { chain } => {
                    if failed || matches!(e, Effect::Rollback { .. }) {
                        self.undo.rollback(client, server);
                    } else {
                        self.undo.commit();
                    }
                    if *chain {
                        self.undo.begin(client, server);
                    }
                }
                Effect::Savepoint(name) => self.undo.savepoint(name, client, server),
                Effect::Release(name) => self.undo.release(name),
                Effect::RollbackTo(name) => self.undo.rollback_to(name, client, server),
                _ => {}
            }
            self.settings.apply(e);
            a.server.settings.apply(e);
            // Inside a transaction a ROLLBACK may undo it: the server's record cannot be
            // trusted until a RESET ALL.
            if in_transaction && matches!(e, Effect::Set { .. } | Effect::Reset { .. } | Effect::ResetAll) {
                a.server.settings.mark_unknown();
            }
            self.pins.apply(e);
            if *e == Effect::DiscardAll {
                a.server.prepared.clear();
                self.statements.clear();
            }
        }
        self.info.set_pinned(self.pins.is_pinned());
        match (was_pinned, self.pins.is_pinned()) {
            (false, true) => {
                self.pool.stats.pinned.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.pool.stats.pinned.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

fn far_future() -> Instant {
    // Far enough to never fire, near enough not to overflow tokio's clock.
    static FAR: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *FAR.get_or_init(|| Instant::now() + Duration::from_secs(86400 * 365))
}

fn keep_for_replay(a: &mut Attached, bytes: &[u8]) {
    if let Some(r) = a.replay.as_mut() {
        if r.len() + bytes.len() > REPLAY_LIMIT {
            a.replay = None;
        } else {
            r.extend_from_slice(bytes);
        }
    }
}

/// Prepares `p` on the attached server first if it does not have it.
fn ensure_prepared(a: &mut Attached, p: &Prepared) {
    if a.server.prepared.contains(&p.server_name) {
        return;
    }
    a.server.wbuf.extend_from_slice(&p.parse);
    a.server.prepared.insert(Arc::clone(&p.server_name));
    if !a.queue.push(Expect::Injected(Kind::Parse { name: Some(Arc::clone(&p.server_name)) })) {
        a.server.prepared.remove(&p.server_name);
    }
}

/// A Parse body: statement name, query text, parameter types.
fn parse_fields(body: &[u8]) -> Option<(&[u8], &str, Vec<u32>)> {
    let (name, at) = cstr(body, 0)?;
    let (query, at) = cstr(body, at)?;
    let n = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
    let types: Option<Vec<u32>> = (0..n)
        .map(|i| {
            body.get(at + 2 + 4 * i..at + 6 + 4 * i).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect();
    Some((name, std::str::from_utf8(query).ok()?, types?))
}

/// Makes the server raise `e` where the client's message would have failed, so the failure
/// aborts the server's transaction (explicit, or the implicit one of a pipeline) exactly as
/// PostgreSQL's own error would have; the client sees the error in place of that message's
/// answer. False when `e` cannot be raised this way (then the proxy answers it alone).
fn raise_on_server(a: &mut Attached, e: &ErrorResponse) -> bool {
    const QUOTE: &str = "$berth_raise$";
    let (Some(code), Some(message)) = (e.code(), e.message()) else { return false };
    if message.contains(QUOTE) {
        return false;
    }
    let sql = format!(
        "DO {QUOTE}BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}; END{QUOTE}",
        code.code(),
        super::settings::quote_literal(message)
    );
    let messages = [
        wire::frontend::FrontendMessage::Parse { name: String::new(), query: sql, param_types: Vec::new() },
        wire::frontend::FrontendMessage::Bind(wire::frontend::Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: Vec::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
        }),
        wire::frontend::FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
    ];
    for m in &messages {
        m.encode(&mut a.server.wbuf);
    }
    a.queue.push(Expect::Injected(Kind::Parse { name: None }));
    a.queue.push(Expect::Injected(Kind::Bind));
    a.queue.push(Expect::Injected(Kind::Execute { effects: Effects::default() }));
    true
}

fn duplicate_statement(name: &str) -> ErrorResponse {
    ErrorResponse::error(
        SqlState::from_code("42P05").expect("valid code"),
        format!("prepared statement \"{name}\" already exists"),
    )
}

/// The C string starting at `at`: its bytes and the offset just after its terminator.
fn cstr(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some((&rest[..end], at + end + 1))
}

fn framing_error(e: WireError) -> ErrorResponse {
    match e {
        WireError::TooLarge { len, max } => ErrorResponse::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("message of {len} bytes exceeds the limit of {max} bytes"),
        ),
        other => ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, format!("invalid message: {other}")),
    }
}

fn poll_server_write(s: &mut ServerConn, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
    let mut wrote = false;
    while !s.wbuf.is_empty() {
        match Pin::new(&mut s.stream).poll_write(cx, &s.wbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                s.wbuf.advance(n);
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if wrote {
        // TLS buffers records; unix sockets and TCP flush as a no-op.
        if let Poll::Ready(Err(e)) = Pin::new(&mut s.stream).poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        return Poll::Ready(Ok(true));
    }
    Poll::Pending
}

fn poll_server_read(s: &mut ServerConn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if s.rbuf.capacity() - s.rbuf.len() < READ_RESERVE / 2 {
        s.rbuf.reserve(READ_RESERVE);
    }
    poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf)
}

/// Applies `settings` to a server as one query and returns the ParameterStatus values the
/// server reported, or its error.
async fn sync_settings(
    server: &mut ServerConn,
    settings: &Settings,
) -> Result<Vec<(String, String)>, ErrorResponse> {
    let Some(sql) = settings.sync_sql(&server.settings) else { return Ok(Vec::new()) };
    let (reported, error) = simple_query(server, &sql).await.map_err(|e| {
        ErrorResponse::fatal(
            SqlState::CONNECTION_FAILURE,
            format!("lost the server while applying settings: {e}"),
        )
    })?;
    match error {
        Some(e) => Err(e),
        None => {
            server.settings = settings.clone();
            Ok(reported)
        }
    }
}

/// Resets a server that a session kept to itself before it serves anyone else.
async fn discard_all(server: &mut ServerConn) -> Result<(), String> {
    let (_, error) = simple_query(server, "DISCARD ALL").await?;
    if let Some(e) = error {
        return Err(e.to_string());
    }
    server.settings.clear();
    server.prepared.clear();
    Ok(())
}

/// Runs one simple query on an otherwise idle server and reads up to ReadyForQuery.
async fn simple_query(
    server: &mut ServerConn,
    sql: &str,
) -> Result<(Vec<(String, String)>, Option<ErrorResponse>), String> {
    use tokio::io::AsyncReadExt;
    let mut out = BytesMut::new();
    wire::frontend::FrontendMessage::Query { query: sql.to_owned() }.encode(&mut out);
    server.stream.write_all(&out).await.map_err(|e| e.to_string())?;
    server.stream.flush().await.map_err(|e| e.to_string())?;
    let mut reported = Vec::new();
    let mut error = None;
    loop {
        while let Some(frame) = wire::parse_frame(&mut server.rbuf, usize::MAX).map_err(|e| e.to_string())? {
            match frame.tag {
                b'S' => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                        BackendMessage::decode(&frame)
                    {
                        reported.push((name, value));
                    }
                }
                b'E' => error = ErrorResponse::decode(&frame.body).ok(),
                b'Z' => return Ok((reported, error)),
                _ => {}
            }
        }
        if server.stream.read_buf(&mut server.rbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("server closed the connection".into());
        }
    }
}

/// The parameters a client sees at login: a fresh server's, with what its own settings
/// changed.
fn merge_params(base: &[(String, String)], reported: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base.to_vec();
    for (name, value) in reported {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.clone(),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}
