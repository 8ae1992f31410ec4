//! Time limits of a session: the next deadline to sleep until (query, idle, idle in
//! transaction, transaction, shutdown) and what happens when one passes: a cancel of the
//! running statement for `query_timeout`, a FATAL that ends the session for the others.
//! Limits are read from the current routes each time, so a reload applies at once.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use wire::backend::TransactionStatus;
use wire::{ErrorResponse, SqlState};

use crate::cancel::CancelTarget;
use crate::routes::Limits;

use super::Session;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    pub(super) fn limits(&self) -> Limits {
        self.shared.routes.load().get(&self.pool.key.database).map(|d| d.limits.clone()).unwrap_or_default()
    }

    pub(super) fn next_deadline(&self) -> Instant {
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
        if self.attached.is_none() && self.client.shrinkable() {
            at(self.idle_since + super::io::SHRINK_AFTER);
        }
        next
    }

    /// A timer went off: cancel the running statement, or end the session.
    pub(super) fn on_timer(&mut self) -> Option<ErrorResponse> {
        let limits = self.limits();
        let now = Instant::now();
        if self.attached.is_none() && self.idle_since + super::io::SHRINK_AFTER <= now {
            self.client.shrink();
        }
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
}

pub(super) fn far_future() -> Instant {
    // Far enough to never fire, near enough not to overflow tokio's clock.
    static FAR: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *FAR.get_or_init(|| Instant::now() + Duration::from_secs(86400 * 365))
}
