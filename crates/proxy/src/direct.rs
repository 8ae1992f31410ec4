//! Direct (session) connections: one upstream session per client, opened as the client's
//! role with the client's startup parameters, relayed frame by frame until either side ends,
//! while a watchdog enforces the database's timeouts and the proxy's graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use wire::backend::{BackendMessage, TransactionStatus};
use wire::{ErrorResponse, SqlState};

use crate::activity::{Activity, CancelReason};
use crate::cancel::{self, CancelGuard, CancelTarget};
use crate::error::SessionError;
use crate::handshake::send_error;
use crate::limits::CountGuard;
use crate::login::LoggedIn;
use crate::relay::{ClientEnd, Control, ServerEnd, client_to_server, server_to_client};
use crate::routes::{Database, Limits};
use crate::server::Shared;
use crate::stream::{ClientStream, UpstreamStream};

pub(crate) struct Established<S: AsyncRead + AsyncWrite + Unpin> {
    client: ClientStream<S>,
    upstream: UpstreamStream,
    db: Arc<Database>,
    status: TransactionStatus,
    cancel: CancelGuard,
    target: CancelTarget,
    _count: CountGuard,
}

/// Opens the upstream session for a logged-in client and tells the client it is ready.
pub(crate) async fn establish<S>(
    shared: &Arc<Shared>,
    li: LoggedIn<S>,
) -> Result<Established<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let LoggedIn { mut client, startup, db, user, keys, count } = li;
    let role = db.role(&user).expect("authentication succeeds only for a known role");
    let up = match crate::upstream::connect(
        &db,
        &role,
        &startup.params,
        keys.as_ref(),
        shared.settings.connect_timeout,
    )
    .await
    {
        Ok(up) => up,
        Err(e) => return Err(send_error(&mut client, e).await),
    };
    let target = CancelTarget { db: Arc::clone(&db), pid: up.pid, secret: up.secret };
    let cancel = shared.cancels.register(up.pid, Some(target.clone()));
    let mut out = up.startup_frames;
    BackendMessage::BackendKeyData { pid: up.pid, secret: cancel.key().secret }.encode(&mut out);
    BackendMessage::ReadyForQuery(up.status).encode(&mut out);
    client.write_all(&out).await?;
    client.flush().await?;
    Ok(Established { client, upstream: up.stream, db, status: up.status, cancel, target, _count: count })
}

#[derive(Debug)]
pub(crate) enum End {
    Client(ClientEnd),
    Server(ServerEnd),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Client(ClientEnd::Terminated) => f.write_str("client terminated"),
            End::Client(ClientEnd::Closed(e)) => write!(f, "client closed: {e}"),
            End::Client(ClientEnd::Protocol(e)) => write!(f, "client protocol error: {e}"),
            End::Client(ClientEnd::ServerWrite(e)) => write!(f, "server write failed: {e}"),
            End::Server(ServerEnd::ServerClosed(e)) => write!(f, "server closed: {e}"),
            End::Server(ServerEnd::ClientWrite(e)) => write!(f, "client write failed: {e}"),
            End::Server(ServerEnd::Stopped(Control::Fatal(e))) => write!(f, "{e}"),
            End::Server(ServerEnd::Stopped(Control::Close)) => f.write_str("client closed"),
            End::Server(ServerEnd::Protocol(e)) => write!(f, "server protocol error: {e}"),
        }
    }
}

pub(crate) async fn run<S>(shared: &Arc<Shared>, session: Established<S>, gone: &tokio::sync::Notify) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Established { client, upstream, db, status, cancel, target, .. } = session;
    let (mut client_rd, client_wr) = tokio::io::split(client);
    let (server_rd, server_wr) = tokio::io::split(upstream);
    let activity = Activity::new(status);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(2);
    let db_name = db.name.clone();
    let reword = move |reason: CancelReason, mut err: ErrorResponse| {
        let CancelReason::QueryTimeout = reason;
        let limit = shared_limit_text(&db);
        err.set(b'M', format!("canceling statement due to query timeout{limit}"));
        err
    };

    // The relay borrows the client's read half so that it is still here to drain when the
    // relay has stopped (see `linger`).
    let (end, client_end) = {
        let c2s = {
            let ctl = ctl_tx.clone();
            let activity = &activity;
            let max = shared.settings.max_message_size;
            let client_rd = &mut client_rd;
            async move {
                let end = client_to_server(client_rd, server_wr, max, activity).await;
                let control = match &end {
                    ClientEnd::Protocol(e) => Control::Fatal(e.clone()),
                    _ => Control::Close,
                };
                let _ = ctl.send(control).await;
                end
            }
        };
        let s2c = server_to_client(server_rd, client_wr, &activity, &mut ctl_rx, &reword, &shared.errors);
        let dog = watchdog(shared, &db_name, &activity, ctl_tx, &target, gone);
        tokio::pin!(c2s, s2c, dog);
        let mut client_end = None;
        let mut dog_done = false;
        let end = loop {
            tokio::select! {
                e = &mut s2c => break End::Server(e),
                e = &mut c2s, if client_end.is_none() => client_end = Some(e),
                () = &mut dog, if !dog_done => dog_done = true,
            }
        };
        (end, client_end)
    };
    drop(cancel);
    if matches!(client_end, Some(ClientEnd::Protocol(_))) {
        linger(&mut client_rd).await;
    }
    match (end, client_end) {
        (End::Server(ServerEnd::Stopped(Control::Close)), Some(c)) => End::Client(c),
        (end, _) => end,
    }
}

/// How long a client that broke the protocol may go on sending after its FATAL.
const LINGER: Duration = Duration::from_secs(5);

/// Reads and discards what the client still sends after a protocol violation (the rest of
/// an oversized message, typically) until it closes, for at most `LINGER`. Closing a socket
/// with unread input makes the kernel send a reset, and a client still writing then fails
/// on the write and never reads the FATAL that explains why.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let drain = async {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn shared_limit_text(db: &Database) -> String {
    db.limits
        .query_timeout
        .map(|t| format!(" (query_timeout = {})", humantime::format_duration(t)))
        .unwrap_or_default()
}

/// Enforces timeouts and graceful shutdown. Limits are read from the current route table
/// at every wake-up, so a reload applies to open sessions too.
async fn watchdog(
    shared: &Arc<Shared>,
    db_name: &str,
    activity: &Activity,
    ctl: mpsc::Sender<Control>,
    target: &CancelTarget,
    gone: &tokio::sync::Notify,
) {
    let mut cancel_sent_for: Option<Instant> = None;
    loop {
        let limits: Limits = shared.routes.load().get(db_name).map(|d| d.limits.clone()).unwrap_or_default();
        let now = Instant::now();
        let s = activity.snapshot();
        let mut next: Option<Instant> = None;
        let mut soonest = |d: Instant| next = Some(next.map_or(d, |n: Instant| n.min(d)));
        let fatal = |code: SqlState, msg: String| Control::Fatal(ErrorResponse::fatal(code, msg));

        if let (Some(limit), Some(since)) = (limits.query_timeout, s.busy_since) {
            let due = since + limit;
            if due <= now {
                if cancel_sent_for != Some(since) {
                    cancel_sent_for = Some(since);
                    activity.set_cancel(CancelReason::QueryTimeout);
                    let target = target.clone();
                    let timeout = shared.settings.connect_timeout;
                    tokio::spawn(async move {
                        if let Err(e) = cancel::forward(&target, timeout).await {
                            tracing::warn!(error = %e, "query timeout: cancel could not be sent");
                        }
                    });
                }
            } else {
                soonest(due);
            }
        }
        if let (Some(limit), Some(since)) = (limits.transaction_timeout, s.transaction_since) {
            let due = since + limit;
            if due <= now {
                let msg = format!(
                    "terminating connection due to transaction timeout (transaction_timeout = {})",
                    humantime::format_duration(limit)
                );
                let _ = ctl.send(fatal(SqlState::TRANSACTION_TIMEOUT, msg)).await;
                return;
            }
            soonest(due);
        }
        if s.is_quiet() {
            let (limit, code, what) = if s.status == TransactionStatus::Idle {
                (limits.idle_timeout, SqlState::IDLE_SESSION_TIMEOUT, "idle-session timeout (idle_timeout")
            } else {
                (
                    limits.idle_in_transaction_timeout,
                    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    "idle-in-transaction timeout (idle_in_transaction_timeout",
                )
            };
            if let Some(limit) = limit {
                let due = s.idle_since + limit;
                if due <= now {
                    let msg = format!(
                        "terminating connection due to {what} = {})",
                        humantime::format_duration(limit)
                    );
                    let _ = ctl.send(fatal(code, msg)).await;
                    return;
                }
                soonest(due);
            }
        }
        if shared.shutdown.is_cancelled() {
            let deadline = shared.shutdown_deadline();
            if s.is_idle() || deadline <= now {
                let msg = "terminating connection due to administrator command".to_string();
                let _ = ctl.send(fatal(SqlState::ADMIN_SHUTDOWN, msg)).await;
                return;
            }
            soonest(deadline);
        }
        let sleep = next.map_or(Duration::from_secs(3600), |n| n.saturating_duration_since(now));
        tokio::select! {
            () = activity.changed() => {}
            () = tokio::time::sleep(sleep) => {}
            () = shared.shutdown.cancelled(), if !shared.shutdown.is_cancelled() => {}
            () = gone.notified() => {
                let _ = ctl.send(Control::Fatal(crate::clients::database_gone(db_name))).await;
                return;
            }
        }
    }
}
