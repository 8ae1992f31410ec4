//! One client connection from accept to close: log in, then serve it on the direct or the
//! pooled path. Errors end only this connection.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::login::{Login, log_end, login};
use crate::server::Shared;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// One upstream session per client.
    Direct,
    /// Server connections shared through the database's pool.
    Pooled,
}

/// `unauthenticated` counts the connection against its source's cap until the login ends,
/// whichever way it ends.
pub(crate) async fn handle<S>(
    shared: Arc<Shared>,
    raw: S,
    peer: String,
    kind: ListenerKind,
    unauthenticated: Option<crate::unauthenticated::SourceGuard>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + shared.settings.auth_timeout;
    // Each phase's future is boxed: the task keeps only the live phase's state, so an idle
    // session does not carry the space of the TLS handshake and login it went through.
    let login = Box::pin(tokio::time::timeout_at(deadline, login(&shared, raw))).await;
    drop(unauthenticated);
    let logged_in = match login {
        Err(_) => {
            tracing::info!(%peer, "closing connection: authentication timeout");
            return;
        }
        Ok(Err(e)) => {
            shared.count_refusal(&e);
            log_end(&peer, &e);
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(Login::Admin { client, user }))) => {
            let end = Box::pin(crate::admin::run(&shared, client, &user)).await;
            tracing::info!(%peer, %user, reason = %end, "admin session ended");
            return;
        }
        Ok(Ok(Some(Login::Session(li)))) => li,
    };
    let (db, user) = (logged_in.db.name.clone(), logged_in.user.clone());
    let app = logged_in.startup.param("application_name").unwrap_or_default().to_owned();
    let client_entry = shared.clients.register(&peer, &db, &user, &app, kind);
    match kind {
        ListenerKind::Direct => {
            let session = match Box::pin(tokio::time::timeout_at(
                deadline,
                crate::direct::establish(&shared, logged_in),
            ))
            .await
            {
                Err(_) => {
                    tracing::info!(%peer, "closing connection: authentication timeout");
                    return;
                }
                Ok(Err(e)) => {
                    log_end(&peer, &e);
                    return;
                }
                Ok(Ok(s)) => s,
            };
            tracing::info!(%peer, %db, %user, setup_ms = started.elapsed().as_millis() as u64, "session started");
            let end = Box::pin(crate::direct::run(&shared, session, &client_entry.info.gone)).await;
            drop(client_entry);
            tracing::info!(%peer, %db, %user, reason = %end, "session ended");
        }
        ListenerKind::Pooled => {
            let end =
                Box::pin(crate::pool::session::run(&shared, logged_in, &peer, &client_entry.info)).await;
            tracing::info!(%peer, %db, %user, reason = %end, "pooled session ended");
        }
    }
}
