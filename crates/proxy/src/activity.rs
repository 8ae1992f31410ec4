//! What a session is doing, as the relay sees it: round trips in flight (a Query, Sync or
//! FunctionCall sent and its ReadyForQuery not yet back), the transaction status, and since
//! when. The two relay directions update it at those messages only; the watchdog reads it
//! to enforce timeouts and graceful shutdown.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use wire::backend::TransactionStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    QueryTimeout,
}

#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub pending: u32,
    /// Executes sent whose portal has not answered yet (CommandComplete, EmptyQueryResponse,
    /// PortalSuspended or an error). An Execute followed by Flush rather than Sync runs with
    /// no round trip pending, and is as busy as one.
    pub executing: u32,
    pub status: TransactionStatus,
    pub busy_since: Option<Instant>,
    pub transaction_since: Option<Instant>,
    pub idle_since: Instant,
    pub cancel: Option<CancelReason>,
    /// The server sent CopyInResponse and the client has not yet sent CopyDone or CopyFail.
    pub copy_in: bool,
}

impl Snapshot {
    /// No round trip in flight and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.is_quiet() && self.status == TransactionStatus::Idle
    }

    /// Nothing the client sent is still being answered.
    pub fn is_quiet(&self) -> bool {
        self.pending == 0 && self.executing == 0
    }
}

#[derive(Debug)]
pub struct Activity {
    state: Mutex<Snapshot>,
    /// One waiter (the watchdog); `notify_one` keeps a permit so no change is missed.
    changed: Notify,
}

impl Activity {
    pub fn new(status: TransactionStatus) -> Self {
        let now = Instant::now();
        Activity {
            state: Mutex::new(Snapshot {
                pending: 0,
                executing: 0,
                status,
                busy_since: None,
                transaction_since: (status != TransactionStatus::Idle).then_some(now),
                idle_since: now,
                cancel: None,
                copy_in: false,
            }),
            changed: Notify::new(),
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        let out = f(&mut self.state.lock().expect("activity lock poisoned"));
        self.changed.notify_one();
        out
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.state.lock().expect("activity lock poisoned")
    }

    /// The client sent a message that the server answers with ReadyForQuery.
    pub fn round_trip_sent(&self) {
        self.update(|s| {
            if s.is_quiet() {
                s.busy_since = Some(Instant::now());
            }
            s.pending += 1;
        })
    }

    /// The client sent Execute: the statement runs now, Sync or not.
    pub fn execute_sent(&self) {
        self.update(|s| {
            if s.is_quiet() {
                s.busy_since = Some(Instant::now());
            }
            s.executing = s.executing.saturating_add(1);
        })
    }

    /// An Execute was answered (`failed`: with an error, after which the server skips the
    /// rest until Sync, so every Execute sent is answered).
    pub fn execute_done(&self, failed: bool) {
        self.update(|s| {
            if s.executing == 0 {
                return;
            }
            s.executing = if failed { 0 } else { s.executing - 1 };
            if s.is_quiet() {
                s.busy_since = None;
                s.cancel = None;
                s.idle_since = Instant::now();
            }
        })
    }

    /// The server sent ReadyForQuery.
    pub fn ready(&self, status: TransactionStatus) {
        self.update(|s| {
            let now = Instant::now();
            s.pending = s.pending.saturating_sub(1);
            s.executing = 0;
            // Each statement of a pipeline gets its own clock.
            s.busy_since = (s.pending > 0).then_some(now);
            if s.pending == 0 {
                s.cancel = None;
            }
            match (s.status, status) {
                (TransactionStatus::Idle, TransactionStatus::InTransaction | TransactionStatus::Failed) => {
                    s.transaction_since = Some(now)
                }
                (_, TransactionStatus::Idle) => s.transaction_since = None,
                _ => {}
            }
            s.status = status;
            s.idle_since = now;
        })
    }

    /// The server sent CopyInResponse: until the client ends the copy, the server ignores
    /// the Syncs it receives.
    pub fn copy_in_started(&self) {
        self.update(|s| s.copy_in = true)
    }

    /// The client sent CopyDone or CopyFail after `syncs` Syncs since the Execute or Query
    /// that started the copy. If the server was in copy-in mode it ignored those Syncs
    /// (tokio-postgres sends one right after the Execute), so no ReadyForQuery will answer
    /// them. Without a CopyInResponse first, the COPY failed to start and every Sync is
    /// answered as usual.
    pub fn copy_in_ended(&self, syncs: u32) {
        self.update(|s| {
            if !std::mem::take(&mut s.copy_in) || syncs == 0 {
                return;
            }
            s.pending = s.pending.saturating_sub(syncs);
            if s.pending == 0 {
                s.busy_since = None;
                s.cancel = None;
                s.idle_since = Instant::now();
            }
        })
    }

    pub fn set_cancel(&self, reason: CancelReason) {
        self.update(|s| s.cancel = Some(reason))
    }

    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.state.lock().expect("activity lock poisoned").cancel
    }

    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_and_transactions() {
        let a = Activity::new(TransactionStatus::Idle);
        assert!(a.snapshot().is_idle());
        a.round_trip_sent();
        a.round_trip_sent();
        assert_eq!(a.snapshot().pending, 2);
        a.ready(TransactionStatus::InTransaction);
        let s = a.snapshot();
        assert_eq!(s.pending, 1);
        assert!(s.busy_since.is_some() && s.transaction_since.is_some());
        a.ready(TransactionStatus::Idle);
        let s = a.snapshot();
        assert!(s.is_idle() && s.transaction_since.is_none() && s.busy_since.is_none());
    }

    #[test]
    fn syncs_sent_during_copy_in_are_not_awaited() {
        // Bind, Execute, Sync; CopyInResponse; CopyData, CopyDone, Sync; one ReadyForQuery.
        let a = Activity::new(TransactionStatus::Idle);
        a.round_trip_sent();
        a.copy_in_started();
        a.copy_in_ended(1);
        a.round_trip_sent();
        a.ready(TransactionStatus::Idle);
        assert!(a.snapshot().is_idle());
        // A COPY that failed to start: both Syncs are answered.
        a.round_trip_sent();
        a.copy_in_ended(1);
        a.round_trip_sent();
        a.ready(TransactionStatus::Idle);
        assert_eq!(a.snapshot().pending, 1);
        a.ready(TransactionStatus::Idle);
        assert!(a.snapshot().is_idle());
    }
}
