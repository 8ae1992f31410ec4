//! Awaited simple queries on a server that no client is using at that moment, outside the
//! poll loop: applying a client's settings at login (reporting the ParameterStatus values
//! they changed) and DISCARD ALL before a kept server serves anyone else.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use wire::backend::BackendMessage;
use wire::{ErrorResponse, SqlState};

use crate::pool::server::ServerConn;
use crate::pool::settings::Settings;
use crate::server_frames::{Invalid, MAX_INSPECTED_ERROR, ready_status};

/// Applies `settings` to a server as one query and returns the ParameterStatus values the
/// server reported, or its error.
pub(super) async fn sync_settings(
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
pub(super) async fn discard_all(server: &mut ServerConn) -> Result<(), String> {
    let (_, error) = simple_query(server, "DISCARD ALL").await?;
    if let Some(e) = error {
        return Err(e.to_string());
    }
    server.settings.clear();
    server.prepared.clear();
    Ok(())
}

/// Runs one simple query on an otherwise idle server and reads up to ReadyForQuery. A server
/// that fails here (lost, or breaking the protocol) is marked broken: it is closed, not
/// pooled, whoever gives it back.
async fn simple_query(
    server: &mut ServerConn,
    sql: &str,
) -> Result<(Vec<(String, String)>, Option<ErrorResponse>), String> {
    let answer = read_answer(server, sql).await;
    if answer.is_err() {
        server.broken = true;
    }
    answer
}

async fn read_answer(
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
        // Everything is read whole here, so nothing may be larger than an error the proxy
        // reads whole elsewhere (the answers to SET and DISCARD ALL are a few bytes).
        let invalid = |what: Invalid| what.to_string();
        while let Some(frame) =
            wire::parse_frame(&mut server.rbuf, MAX_INSPECTED_ERROR).map_err(|e| invalid(e.into()))?
        {
            match frame.tag {
                b'S' => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                        BackendMessage::decode(&frame)
                    {
                        reported.push((name, value));
                    }
                }
                b'E' => error = ErrorResponse::decode(&frame.body).ok(),
                b'Z' => {
                    ready_status(&frame.body).map_err(invalid)?;
                    return Ok((reported, error));
                }
                _ => {}
            }
        }
        if server.stream.read_buf(&mut server.rbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("server closed the connection".into());
        }
    }
}
