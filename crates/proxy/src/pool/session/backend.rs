//! The server's messages to the client: checking the ones read whole (`server_frames`: a
//! server breaking the protocol ends the session with 08P01 and is closed), walking the
//! expectation queue to forward or drop each one, the replies the proxy owes, the
//! query-timeout rewording of a cancel, ReadyForQuery (transaction status and counts), and
//! the effects of what succeeded on settings, their undo on rollback, prepared statements
//! and pins.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};
use wire::backend::TransactionStatus;
use wire::frame::{HEADER_LEN, peek_header};
use wire::{ErrorResponse, Severity, SqlState};

use crate::pool::classify::Effect;
use crate::pool::expect::{Finished, Verdict};
use crate::server_frames::{Handling, Invalid, handling, protocol_violation, ready_status};

use super::{Attached, Event, Gone, Session};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    pub(super) fn emit_replies(&mut self) {
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

    pub(super) fn process_server(&mut self) -> Option<Event> {
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
            let header = peek_header(&a.server.rbuf, usize::MAX)
                .map_err(Invalid::from)
                .and_then(|h| h.map(|(tag, len)| Ok((tag, len, handling(tag, len)?))).transpose());
            let (tag, len, handling) = match header {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(what) => return Some(server_broke(self.pool.key.database.as_str(), a, what)),
            };
            let whole = a.server.rbuf.len() >= HEADER_LEN + len;
            if handling == Handling::Whole && !whole {
                return None;
            }
            // Checked before anything of the message is acted on.
            let status = match tag {
                b'Z' => match ready_status(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len]) {
                    Ok(status) => Some(status),
                    Err(what) => return Some(server_broke(self.pool.key.database.as_str(), a, what)),
                },
                _ => None,
            };
            // An ErrorResponse too large to look at is passed on like any other message.
            let inspect_error = tag == b'E' && handling == Handling::Whole;
            // A server shutting down says FATAL first: before anything reached the client,
            // that is the same as a server that died, and the transaction can go elsewhere.
            if inspect_error
                && a.silent
                && let Ok(e) = ErrorResponse::decode(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len])
                && e.severity() == Some(Severity::Fatal.as_str())
                && e.code().is_some_and(|c| c.class() == "57")
            {
                return Some(Event::ServerGone(Gone::ShuttingDown, format!("server is going away: {e}")));
            }
            if tag == b'E' && std::mem::take(&mut self.copy_in) {
                // The COPY failed (a cancel, a bad row): the server has left copy-in, and
                // the Syncs it received meanwhile were ignored, so none of them gets a
                // ReadyForQuery; the client's CopyDone or CopyFail that follows is skipped
                // with the rest until its next Sync, which is answered.
                a.queue.drop_syncs_after_front();
            }
            let (verdict, finished) = a.queue.on_server_message(tag);
            tracing::trace!(tag = %(tag as char), ?verdict, queue = a.queue.len(), "server message");
            match finished {
                Finished::Succeeded(effects) => self.apply_effects(&effects),
                Finished::ParseFailed(name) => {
                    self.attached.as_mut().expect("attached").server.prepared.remove(&name);
                }
                Finished::BindFailed(p) => {
                    let a = self.attached.as_ref().expect("attached");
                    if let Some(body) = a.server.rbuf.get(HEADER_LEN..HEADER_LEN + len)
                        && let Ok(e) = ErrorResponse::decode(body)
                        && e.code() == Some(SqlState::FEATURE_NOT_SUPPORTED)
                        && e.message()
                            .is_some_and(|m| m.starts_with("cached plan must not change result type"))
                    {
                        self.pool.invalidate_statement(&p);
                    }
                }
                Finished::Nothing => {}
            }
            let a = self.attached.as_mut().expect("attached");
            if tag == b'G' && a.queue.front_runs_statement() {
                self.copy_in = true;
            }
            if inspect_error
                && verdict == Verdict::Drop
                && let Ok(e) = ErrorResponse::decode(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len])
            {
                tracing::warn!(database = %self.pool.key.database, error = %e, "replaying session settings failed");
            }
            if verdict == Verdict::Forward {
                a.silent = false;
                a.replay = None;
                if inspect_error {
                    self.shared.errors.count_body(&a.server.rbuf[HEADER_LEN..HEADER_LEN + len]);
                } else if tag == b'E' {
                    self.shared.errors.count(None);
                }
            }
            if let Some(status) = status {
                a.busy_since = (!a.queue.is_empty()).then(Instant::now);
                a.timed_out = false;
                if verdict == Verdict::Forward {
                    self.on_ready(status);
                }
            }
            // Only after a query timeout: the route lookup stays off the per-message path.
            let timed_out = inspect_error
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

/// The server broke the protocol: the session ends with 08P01 (the message is still unread,
/// at a frame boundary, so the error goes out whole) and the server is closed when the
/// session gives it back, never pooled.
fn server_broke(database: &str, a: &mut Attached, what: Invalid) -> Event {
    a.server.broken = true;
    tracing::warn!(%database, server_pid = a.server.pid, error = %what, "the server broke the protocol; closing it");
    Event::Fatal(protocol_violation(&what))
}
