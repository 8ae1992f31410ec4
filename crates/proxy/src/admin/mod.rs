//! The admin console: the virtual database `berth`, reached with an admin login on either
//! listener (`psql -d berth`). It speaks the simple query protocol and answers SHOW POOLS,
//! CLIENTS, SERVERS, STATS, DATABASES and VERSION, PAUSE [db], RESUME [db] and RELOAD, in the
//! spirit of PgBouncer's console. It never touches a server itself.

mod pause;
mod reload;
mod result;
mod show_clients;
mod show_databases;
mod show_pools;
mod show_servers;
mod show_stats;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::backend::{BackendMessage, TransactionStatus};
use wire::{ErrorResponse, SqlState, parse_frame};

use crate::server::Shared;
use crate::stream::ClientStream;
use result::ResultSet;

/// The database name that reaches the console.
pub const ADMIN_DATABASE: &str = "berth";

/// Commands are short; anything longer is not one.
const MAX_COMMAND: usize = 64 * 1024;

pub(crate) async fn run<S>(shared: &Arc<Shared>, mut client: ClientStream<S>, user: &str) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut out = BytesMut::new();
    for (name, value) in [
        ("server_version", concat!("15.0 (berth ", env!("CARGO_PKG_VERSION"), ")")),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        BackendMessage::ParameterStatus { name: name.into(), value: value.into() }.encode(&mut out);
    }
    BackendMessage::BackendKeyData { pid: 0, secret: 0 }.encode(&mut out);
    BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
    if client.write_all(&out).await.is_err() {
        return "client went away".into();
    }
    tracing::info!(%user, "admin console session");
    let mut buf = BytesMut::with_capacity(1024);
    // After an extended-protocol message, skip to Sync as PostgreSQL does after an error.
    let mut skipping = false;
    loop {
        let frame = match parse_frame(&mut buf, MAX_COMMAND) {
            Ok(Some(f)) => f,
            Ok(None) => match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return "client closed the connection".into(),
                Ok(_) => continue,
            },
            Err(e) => {
                let e = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, format!("invalid message: {e}"));
                let _ = client.write_all(&e.to_error_message()).await;
                return e.to_string();
            }
        };
        out.clear();
        match frame.tag {
            b'X' => return "client terminated".into(),
            b'Q' => {
                let sql = String::from_utf8_lossy(frame.body.strip_suffix(b"\0").unwrap_or(&frame.body))
                    .into_owned();
                match execute(shared, &sql).await {
                    Ok(reply) => reply.encode(&mut out),
                    Err(e) => BackendMessage::ErrorResponse(e).encode(&mut out),
                }
                BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
            }
            b'S' => {
                skipping = false;
                BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
            }
            _ if skipping => {}
            _ => {
                skipping = true;
                BackendMessage::ErrorResponse(ErrorResponse::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "the admin console speaks the simple query protocol only",
                ))
                .encode(&mut out);
            }
        }
        if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
            return "client went away".into();
        }
    }
}

/// What a command answers.
enum Reply {
    Rows(ResultSet),
    Done(&'static str),
    Empty,
}

impl Reply {
    fn encode(self, out: &mut BytesMut) {
        match self {
            Reply::Rows(rs) => rs.encode(out),
            Reply::Done(tag) => BackendMessage::CommandComplete { tag: tag.into() }.encode(out),
            Reply::Empty => BackendMessage::EmptyQueryResponse.encode(out),
        }
    }
}

async fn execute(shared: &Arc<Shared>, sql: &str) -> Result<Reply, ErrorResponse> {
    let cmd = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let arg = |i: usize| words.get(i).map(|w| w.trim_matches('"'));
    match upper.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Ok(Reply::Empty),
        ["SHOW", "POOLS"] => Ok(Reply::Rows(show_pools::run(shared))),
        ["SHOW", "CLIENTS"] => Ok(Reply::Rows(show_clients::run(shared))),
        ["SHOW", "SERVERS"] => Ok(Reply::Rows(show_servers::run(shared))),
        ["SHOW", "STATS"] => Ok(Reply::Rows(show_stats::run(shared))),
        ["SHOW", "DATABASES"] => Ok(Reply::Rows(show_databases::run(shared))),
        ["SHOW", "VERSION"] => {
            let mut rs = ResultSet::new(&["version"]);
            rs.row(vec![concat!("Berth ", env!("CARGO_PKG_VERSION")).to_string()]);
            Ok(Reply::Rows(rs))
        }
        ["PAUSE"] | ["PAUSE", _] => pause::pause(shared, arg(1)).await.map(|()| Reply::Done("PAUSE")),
        ["RESUME"] | ["RESUME", _] => pause::resume(shared, arg(1)).map(|()| Reply::Done("RESUME")),
        ["RELOAD"] => reload::run(shared).map(|()| Reply::Done("RELOAD")),
        _ => Err(ErrorResponse::error(
            SqlState::from_code("42601").expect("valid code"),
            format!("unknown admin command: {cmd}"),
        )
        .with_hint(
            "commands: SHOW POOLS | CLIENTS | SERVERS | STATS | DATABASES | VERSION, PAUSE [db], RESUME [db], RELOAD",
        )),
    }
}
