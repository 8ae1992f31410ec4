//! Borrowing and giving back servers: checkout under `pool_timeout` and `max_active`,
//! attaching (settings replayed, cancels redirected), release at ReadyForQuery(`I`), the
//! end-of-session return (after DISCARD ALL when the server was kept), and the resend of a
//! transaction whose server died before anything of it reached the client. A server in the
//! middle of anything is never returned to the pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use wire::backend::TransactionStatus;
use wire::{ErrorResponse, SqlState};

use crate::cancel::CancelTarget;
use crate::clients::ClientState;
use crate::pool::classify::Effects;
use crate::pool::expect::{Expect, ExpectQueue, Kind};
use crate::pool::pool::{CheckoutError, Pool};
use crate::pool::server::ServerConn;
use crate::routes::PoolMode;

use super::simple_query::discard_all;
use super::{Attached, Session};

/// A transaction whose messages exceed this is not kept for a resend.
const REPLAY_LIMIT: usize = 1 << 20;

/// A free function rather than a method: a `&Session` held across the wait would make the
/// session future need `Sync`.
pub(super) async fn checkout(
    pool: &Arc<Pool>,
) -> Result<(ServerConn, Option<OwnedSemaphorePermit>), ErrorResponse> {
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
    /// Makes `server` this client's: its settings become the client's (replayed as one
    /// injected query whose answers are dropped), and cancels go to it.
    pub(super) fn attach_server(&mut self, (mut server, permit): (ServerConn, Option<OwnedSemaphorePermit>)) {
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
        self.attached = Some(Box::new(Attached {
            server,
            queue,
            busy_since: None,
            silent: true,
            replay: Some(BytesMut::new()),
            timed_out: false,
            attached_in_transaction: self.status != TransactionStatus::Idle,
            _permit: permit,
        }));
    }

    /// Gives the server back: to the pool when it is clean and idle, otherwise closes it.
    pub(super) fn release(&mut self) {
        let Some(a) = self.attached.take() else { return };
        self.resent = false;
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

    /// The session is over: a clean server goes back (after DISCARD ALL in session mode);
    /// one in the middle of anything is closed, which rolls its transaction back.
    pub(super) async fn finish(&mut self) {
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

    /// Whether what the client sent may go to another server: nothing of the answer reached
    /// the client, it cannot have committed (the server was gone before reading it, it was
    /// aborted by the server's shutdown, or it ran no statement), and it was not resent
    /// already (a statement that ends its own backend would otherwise open backends forever).
    pub(super) fn resend_possible(&self, how: super::Gone) -> bool {
        let Some(a) = &self.attached else { return false };
        let Some(replay) = a.replay.as_ref() else { return false };
        let uncommitted = match how {
            super::Gone::ShuttingDown | super::Gone::Unwritable => true,
            super::Gone::Lost => !runs_a_statement(replay),
        };
        a.silent && uncommitted && !self.resent && !a.attached_in_transaction && self.c_remaining == 0
    }

    /// Replaces a server that died before answering and resends what the client sent.
    pub(super) async fn resend(&mut self) -> Result<(), ErrorResponse> {
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
        self.resent = true;
        Ok(())
    }

    pub(super) fn should_release(&self) -> bool {
        let Some(a) = &self.attached else { return false };
        self.mode == PoolMode::Transaction
            && !self.pins.is_pinned()
            && a.queue.is_empty()
            && !a.queue.unsynced()
            && self.status == TransactionStatus::Idle
            && a.server.rbuf.is_empty()
            && a.server.wbuf.is_empty()
            && self.client.rbuf.is_empty()
            && self.c_remaining == 0
            && self.s_remaining == 0
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    /// A wait for a server that timed out between transactions ends that request only, as
    /// PostgreSQL ends a statement: an ERROR, and the session goes on (inside a transaction,
    /// or holding session state on a server, it must end).
    pub(super) fn may_refuse_request(&self, e: &ErrorResponse) -> bool {
        e.code() == Some(SqlState::CONFIGURATION_LIMIT_EXCEEDED)
            && self.attached.is_none()
            && self.status == TransactionStatus::Idle
            && self.c_remaining == 0
            && !self.pins.is_pinned()
    }

    /// Answers the first request waiting in the client's buffer with `e` as an ERROR: a
    /// Query or FunctionCall is dropped and followed by ReadyForQuery; an extended-protocol
    /// request is skipped up to its Sync, which is answered as PostgreSQL would after an
    /// error.
    pub(super) fn refuse_request(&mut self, mut e: ErrorResponse) {
        e.set(b'S', "ERROR".into());
        e.set(b'V', "ERROR".into());
        self.shared.errors.count(e.get(b'C'));
        self.client.wbuf.extend_from_slice(&e.to_error_message());
        let max = self.shared.settings.max_message_size;
        match wire::frame::peek_header(&self.client.rbuf, max) {
            Ok(Some((b'Q' | b'F', len))) => {
                let whole = self.client.rbuf.len() >= wire::frame::HEADER_LEN + len;
                self.discard_client_frame(len, whole);
                wire::backend::BackendMessage::ReadyForQuery(self.status).encode(&mut self.client.wbuf);
            }
            _ => self.skip_client_until_sync = true,
        }
    }
}

/// Whether client bytes hold a message that runs something: Query, Execute, FunctionCall.
fn runs_a_statement(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 5 {
        if matches!(bytes[0], b'Q' | b'E' | b'F') {
            return true;
        }
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        match bytes.get(1 + len..) {
            Some(rest) if len >= 4 => bytes = rest,
            // A partial or malformed frame: assume the worst.
            _ => return true,
        }
    }
    false
}

pub(super) fn keep_for_replay(a: &mut Attached, bytes: &[u8]) {
    if let Some(r) = a.replay.as_mut() {
        if r.len() + bytes.len() > REPLAY_LIMIT {
            a.replay = None;
        } else {
            r.extend_from_slice(bytes);
        }
    }
}
