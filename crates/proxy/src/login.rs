//! Everything before a session is relayed, shared by the direct and the pooled listener:
//! encryption and startup negotiation, SCRAM authentication, routing, and the per-database
//! connection limit. Cancel requests and refused connections end here too.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wire::scram::ChannelBinding;
use wire::{SqlState, StartupMessage};

use crate::apikey::{ApiKeys, KeyLogin};
use crate::auth::{Authenticated, authenticate};
use crate::cancel;
use crate::error::{ErrorKind, SessionError};
use crate::handshake::{Negotiated, check_version, negotiate, send_error};
use crate::limits::CountGuard;
use crate::routes::Database;
use crate::server::Shared;
use crate::stream::ClientStream;

/// What a login leads to.
pub(crate) enum Login<S: AsyncRead + AsyncWrite + Unpin> {
    Session(LoggedIn<S>),
    /// The admin console (database `berth`).
    Admin {
        client: ClientStream<S>,
        user: String,
    },
}

/// An authenticated client with its route, counted against the database's limit.
pub(crate) struct LoggedIn<S: AsyncRead + AsyncWrite + Unpin> {
    pub client: ClientStream<S>,
    pub startup: StartupMessage,
    pub db: Arc<Database>,
    /// The role: the user name from the startup packet.
    pub user: String,
    /// SCRAM keys from the client's exchange; `None` after an API-key login.
    pub keys: Option<Authenticated>,
    pub count: CountGuard,
}

/// Answers a connection over the proxy-wide limit: TLS and startup as usual, then
/// `53300`. Cancel requests are still honoured, as PostgreSQL does.
pub(crate) async fn refuse<S>(shared: Arc<Shared>, raw: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = shared.tls.load_full();
    let negotiated = tokio::time::timeout(
        shared.settings.auth_timeout,
        negotiate(raw, tls.as_deref(), shared.settings.require_tls),
    )
    .await;
    match negotiated {
        Ok(Ok(Negotiated::Startup { mut stream, .. })) => {
            let e = SessionError::fatal(
                ErrorKind::Limit,
                SqlState::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            );
            let e = send_error(&mut stream, e).await;
            log_end(&peer, &e);
        }
        Ok(Ok(Negotiated::Cancel(req, stream))) => handle_cancel(&shared, req, stream).await,
        Ok(Err(e)) => log_end(&peer, &e),
        Err(_) => tracing::info!(%peer, "closing refused connection: authentication timeout"),
    }
}

pub(crate) fn log_end(peer: &str, e: &SessionError) {
    match e.kind {
        ErrorKind::Disconnect => {
            tracing::debug!(%peer, detail = %e.detail, "connection closed during startup")
        }
        kind => tracing::info!(%peer, kind = kind.as_str(), detail = %e.detail, "connection refused"),
    }
}

pub(crate) async fn login<S>(shared: &Arc<Shared>, raw: S) -> Result<Option<Login<S>>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = shared.tls.load_full();
    let (mut client, startup, server_name) =
        match negotiate(raw, tls.as_deref(), shared.settings.require_tls).await? {
            Negotiated::Cancel(req, stream) => {
                handle_cancel(shared, req, stream).await;
                return Ok(None);
            }
            Negotiated::Startup { stream, startup, server_name } => (stream, startup, server_name),
        };
    match check_version(&startup) {
        Err(e) => return Err(send_error(&mut client, e).await),
        Ok(Some(negotiate_msg)) => {
            let mut out = BytesMut::new();
            negotiate_msg.encode(&mut out);
            client.write_all(&out).await?;
        }
        Ok(None) => {}
    }
    let Some(user) = startup.user().map(str::to_owned) else {
        let e = SessionError::fatal(
            ErrorKind::Protocol,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        );
        return Err(send_error(&mut client, e).await);
    };
    let db_name = startup.database().unwrap_or_default().to_owned();
    // `<label>.<public-host>`: the label picks the project, the database name one of its
    // databases by the upstream's own name. Any other server name: database names alone.
    let label = crate::sni::label(server_name.as_deref(), shared.settings.public_host.as_deref());
    let binding = match (&tls, client.is_tls()) {
        (Some(tls), true) => tls.channel_binding.clone(),
        _ => ChannelBinding::None,
    };
    if user == crate::apikey::API_KEY_USER
        && let Some(checker) = shared.api_keys.get()
    {
        let routes = shared.routes.load_full();
        let db = match &label {
            Some(l) => routes.for_sni_login(l, &db_name, &user).route,
            None => routes.get(&db_name),
        };
        return match api_key_login(&mut client, checker.as_ref(), &db_name, db.map(|d| &**d)).await {
            Ok(KeyLogin::Admin) => Ok(Some(Login::Admin { client, user })),
            Ok(KeyLogin::Session(role)) => match db.cloned().ok_or_else(crate::apikey::refused) {
                Ok(db) => session_login(client, startup, db, role, None, shared).await,
                Err(e) => Err(send_error(&mut client, e).await),
            },
            Err(e) => Err(send_error(&mut client, e).await),
        };
    }
    if db_name == crate::admin::ADMIN_DATABASE {
        let verifiers = shared.settings.admin_users.get(&user).cloned();
        if let Err(e) =
            authenticate(&mut client, &user, &db_name, verifiers, binding, &shared.settings.fake_scram_key)
                .await
        {
            return Err(send_error(&mut client, e).await);
        }
        return Ok(Some(Login::Admin { client, user }));
    }
    let routes = shared.routes.load_full();
    // The route reached, whose verifiers the password is checked against (the same route,
    // unless an SNI label serves no such database), and what keys a fake exchange's salt:
    // under a label, the label alone, so an unknown one shows one salt per user whatever
    // database is asked for, as a known one does to a role it knows.
    let (db, checker, fake_name) = match &label {
        Some(l) => {
            let found = routes.for_sni_login(l, &db_name, &user);
            (found.route.cloned(), found.checked_by.cloned(), l.clone())
        }
        None => {
            let db = routes.for_login(&db_name, &user).cloned();
            (db.clone(), db, db_name.clone())
        }
    };
    let listed = checker.as_ref().and_then(|d| d.roles.get(&user)).map(|r| r.verifiers.clone());
    let looked_up = listed.is_none() && checker.as_ref().is_some_and(|d| d.auth_query.is_some());
    let verifiers = match (&checker, looked_up) {
        (Some(d), true) => {
            let aq = d.auth_query.as_ref().expect("checked above");
            match shared.verifiers.verifier(d, aq, &user, shared.settings.connect_timeout).await {
                Ok(v) => v.map(|v| vec![v]),
                Err(detail) => {
                    tracing::warn!(database = %d.name, %detail, "auth query failed");
                    let shown = if label.is_some() { shown_database(&db_name, &user) } else { &d.name };
                    let e = SessionError::fatal(
                        ErrorKind::Upstream,
                        SqlState::CANNOT_CONNECT_NOW,
                        format!("database \"{shown}\" is not available right now"),
                    );
                    return Err(send_error(&mut client, e).await);
                }
            }
        }
        _ => listed,
    };
    let keys = match authenticate(
        &mut client,
        &user,
        &fake_name,
        verifiers,
        binding,
        &shared.settings.fake_scram_key,
    )
    .await
    {
        Ok(k) => k,
        Err(e) => {
            if let (true, Some(d)) = (looked_up, &checker) {
                // The password may have changed upstream: fetch the verifier again next time.
                shared.verifiers.forget(&d.name, &user);
            }
            return Err(send_error(&mut client, e).await);
        }
    };
    let Some(db) = db else {
        // Only under an SNI label, and only to whoever proved the password: PostgreSQL too
        // authenticates before it looks the database up.
        let e = SessionError::fatal(
            ErrorKind::Routing,
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", shown_database(&db_name, &user)),
        );
        return Err(send_error(&mut client, e).await);
    };
    session_login(client, startup, db, user, Some(keys), shared).await
}

/// The database a login names, as PostgreSQL reports it: the user's name when it names none.
fn shown_database<'a>(db_name: &'a str, user: &'a str) -> &'a str {
    if db_name.is_empty() { user } else { db_name }
}

async fn api_key_login<S>(
    client: &mut ClientStream<S>,
    checker: &dyn ApiKeys,
    db_name: &str,
    db: Option<&Database>,
) -> Result<KeyLogin, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let is_tls = client.is_tls();
    let grant = crate::apikey::read_and_check(client, is_tls, checker).await?;
    let admin = db_name == crate::admin::ADMIN_DATABASE;
    let login = crate::apikey::authorize(grant, db, admin)?;
    crate::apikey::accept(client).await?;
    Ok(login)
}

/// Counts an authenticated client against its database's limit.
async fn session_login<S>(
    mut client: ClientStream<S>,
    startup: StartupMessage,
    db: Arc<Database>,
    user: String,
    keys: Option<Authenticated>,
    shared: &Arc<Shared>,
) -> Result<Option<Login<S>>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(count) = shared.counts.try_acquire(&db.name, db.limits.max_client_connections) else {
        let e = SessionError::fatal(
            ErrorKind::Limit,
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "too many connections for database \"{}\" (max_client_connections = {})",
                db.name,
                db.limits.max_client_connections.unwrap_or_default()
            ),
        );
        return Err(send_error(&mut client, e).await);
    };
    Ok(Some(Login::Session(LoggedIn { client, startup, db, user, keys, count })))
}

pub(crate) async fn handle_cancel<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    req: wire::CancelRequest,
    mut stream: crate::stream::ClientStream<S>,
) {
    // PostgreSQL answers a CancelRequest with nothing, whether or not the key matched, and
    // then closes the connection (TLS with a close_notify).
    match shared.cancels.lookup(&req) {
        None => tracing::info!(pid = req.pid, "cancel request with an unknown key ignored"),
        Some(target) => match cancel::forward(&target, shared.settings.connect_timeout).await {
            Ok(()) => tracing::info!(pid = req.pid, "cancel request forwarded"),
            Err(e) => tracing::warn!(pid = req.pid, error = %e, "cancel request could not be forwarded"),
        },
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.shutdown()).await;
}
