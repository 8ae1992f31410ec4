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
//!
//! The engine is spread over files by concern: this one holds the session's state and its
//! event loop; `login` the ParameterStatus phase; `io` the polled reads and writes;
//! `detached` what is answered without a server; `frontend` the client's messages to an
//! attached server; `backend` the server's answers, ReadyForQuery and the effects of what
//! succeeded; `attach` borrowing, giving back and replacing servers; `timers` the limits;
//! `simple_query` awaited queries on a server no client is using; `frame` field parsing
//! and canned messages.

mod attach;
mod backend;
mod detached;
mod frame;
mod frontend;
mod io;
mod login;
mod simple_query;
mod timers;

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use wire::backend::TransactionStatus;
use wire::{ErrorResponse, SqlState};

use super::classify::Effects;
use super::expect::ExpectQueue;
use super::pins::Pins;
use super::pool::Pool;
use super::server::ServerConn;
use super::settings::{Settings, Undo};
use super::statements::ClientStatements;
use crate::cancel::CancelGuard;
use crate::clients::{ClientInfo, ClientState};
use crate::error::SessionError;
use crate::handshake::send_error;
use crate::login::LoggedIn;
use crate::routes::PoolMode;
use crate::server::Shared;
use crate::stream::ClientStream;

use attach::checkout;
use io::Side;
use timers::far_future;

pub(crate) async fn run<S>(
    shared: &Arc<Shared>,
    li: LoggedIn<S>,
    peer: &str,
    info: &Arc<ClientInfo>,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Each phase is boxed and the session lives on the heap: what stays while a client sits
    // idle is the session and its event loop, not the room its login needed.
    let (mut s, _counted) = match Box::pin(open(shared, li, peer, info)).await {
        Ok(opened) => opened,
        Err(reason) => return reason,
    };
    let reason = Box::pin(s.run()).await;
    Box::pin(s.finish()).await;
    reason
}

/// Builds the session and finishes the client's login on a server of the pool.
async fn open<S>(
    shared: &Arc<Shared>,
    li: LoggedIn<S>,
    peer: &str,
    info: &Arc<ClientInfo>,
) -> Result<(Box<Session<S>>, super::stats::ClientCount), String>
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
            return Err(e.detail);
        }
    };
    drop(startup);
    let pool = shared.pools.get(&db, &user, shared.settings.connect_timeout);
    let counted = super::stats::ClientCount::new(&pool);
    if let Some(keys) = &keys {
        pool.remember_keys(keys);
    }
    // A synthetic process id: the client's server changes from one transaction to the next.
    let pid = (rand::random::<u32>() >> 1) as i32;
    let cancel = shared.cancels.register(pid, None);
    let mode = pool.config().pool_mode;
    let mut s = Box::new(Session {
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
        resent: false,
        cancel,
        shutting_down: false,
        info: Arc::clone(info),
        _count: count,
    });
    // The authentication deadline is behind us: what remains of login may wait for a server,
    // and that wait is bounded by pool_timeout with a clear error, not by a silent close.
    let bound = s.pool.config().pool_timeout + shared.settings.connect_timeout + Duration::from_secs(5);
    match tokio::time::timeout(bound, s.login(pid)).await {
        Err(_) => return Err("login did not finish".into()),
        Ok(Err(e)) => {
            s.client.wbuf.extend_from_slice(&e.to_error_message());
            let _ = s.write_out().await;
            return Err(e.to_string());
        }
        Ok(Ok(())) => {}
    }
    tracing::info!(%peer, db = %db.name, %user, mode = ?mode, "pooled session started");
    Ok((s, counted))
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

/// How a server went away, which decides whether what it was sent may go to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// It said FATAL 57xxx (shutting down, terminated) before answering: the statement it
    /// was running, if any, was aborted with its transaction.
    ShuttingDown,
    /// Writing to it failed: it was gone before it could read what it was sent.
    Unwritable,
    /// It closed or broke off after being sent a request: the request may have run, and
    /// an autocommit statement may have committed.
    Lost,
}

enum Event {
    NeedServer,
    Release,
    ClientGone(String),
    ServerGone(Gone, String),
    Fatal(ErrorResponse),
    Timer,
    Shutdown,
}

struct Session<S: AsyncRead + AsyncWrite + Unpin> {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    mode: PoolMode,
    client: Side<ClientStream<S>>,
    /// Boxed: most sessions, most of the time, hold no server.
    attached: Option<Box<Attached>>,
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
    /// What the client sent since its server was attached went to a second server once.
    resent: bool,
    shutting_down: bool,
    /// This client's SHOW CLIENTS entry.
    info: Arc<ClientInfo>,
    _count: crate::limits::CountGuard,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    async fn run(&mut self) -> String {
        // One wait for shutdown for the whole session: registering and dropping a waiter on
        // the proxy-wide token at every event would take its lock twice per event.
        let shutdown = self.shared.shutdown.clone();
        let mut shutdown_wait = std::pin::pin!(shutdown.cancelled());
        let info = Arc::clone(&self.info);
        let mut unrouted = std::pin::pin!(info.gone.notified());
        // One timer for the session, re-armed inside the poll: what a poll of the sockets
        // starts (a query, a transaction, an Execute with no Sync after it) moves the next
        // deadline without any event, and a deadline taken only between events would never
        // see it (the query, transaction and idle-in-transaction limits then never fired).
        let mut timer = std::pin::pin!(tokio::time::sleep_until(far_future().into()));
        let mut armed = far_future();
        loop {
            let event = tokio::select! {
                biased;
                ev = poll_fn(|cx| {
                    if let Poll::Ready(ev) = self.poll_io(cx) {
                        return Poll::Ready(ev);
                    }
                    let deadline = self.next_deadline();
                    if deadline != armed {
                        armed = deadline;
                        timer.as_mut().reset(deadline.into());
                    }
                    if deadline != far_future() && timer.as_mut().poll(cx).is_ready() {
                        armed = far_future();
                        return Poll::Ready(Event::Timer);
                    }
                    Poll::Pending
                }) => ev,
                () = &mut shutdown_wait, if !self.shutting_down => Event::Shutdown,
                () = &mut unrouted => Event::Fatal(crate::clients::database_gone(&self.pool.key.database)),
            };
            match &event {
                Event::NeedServer => tracing::trace!("need server"),
                Event::Release => tracing::trace!("release"),
                _ => {}
            }
            match event {
                Event::NeedServer => {
                    self.info.set_state(ClientState::Waiting);
                    // Boxed: waiting for a server takes more room than the rest of an idle
                    // session, and idle sessions are the many.
                    match Box::pin(checkout(&self.pool)).await {
                        Ok(server) => self.attach_server(server),
                        Err(e) if self.may_refuse_request(&e) => self.refuse_request(e),
                        Err(e) => return self.fatal(e).await,
                    }
                }
                Event::Release => self.release(),
                Event::ClientGone(reason) => return reason,
                Event::ServerGone(how, reason) => {
                    if self.resend_possible(how) {
                        tracing::info!(database = %self.pool.key.database, %reason, "server lost before answering; resending the transaction on another server");
                        if let Err(e) = Box::pin(self.resend()).await {
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

    /// Sends an error to the client (between frames only) and ends the session. Boxed: it
    /// runs once, at the end, and its space should not sit in every idle session.
    fn fatal(&mut self, e: ErrorResponse) -> std::pin::Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(self.fatal_inner(e))
    }

    async fn fatal_inner(&mut self, e: ErrorResponse) -> String {
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
}
