//! The frame-level relay of an established session. Each direction reads into a reused
//! buffer, walks frame headers, and forwards every complete or partial frame as it arrives
//! (a 1 GB DataRow streams; it is never buffered whole). Only ReadyForQuery and
//! ErrorResponses of bounded size are looked at in full (`server_frames`); a server message
//! that breaks those rules ends the session with 08P01. The server-to-client
//! direction owns the client's write half, so the proxy's own errors are only ever written
//! between frames.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use wire::backend::tag as backend;
use wire::frame::{HEADER_LEN, peek_header};
use wire::frontend::{ends_round_trip, tag as frontend};
use wire::{ErrorResponse, SqlState, WireError};

use crate::activity::{Activity, CancelReason};
use crate::server_frames::{Handling, Invalid, handling, protocol_violation, ready_status};

const READ_CHUNK: usize = 16 * 1024;

/// Why the client-to-server direction stopped.
#[derive(Debug)]
pub enum ClientEnd {
    /// The client sent Terminate.
    Terminated,
    /// The client closed its side or the read failed.
    Closed(String),
    /// The client broke framing: a bad length or an oversized message.
    Protocol(ErrorResponse),
    /// Writing to the server failed.
    ServerWrite(String),
}

/// What the session asks the server-to-client direction to do.
#[derive(Debug)]
pub enum Control {
    /// Stop without writing anything more.
    Close,
    /// Write this error (if between frames) and stop.
    Fatal(ErrorResponse),
}

#[derive(Debug)]
pub enum ServerEnd {
    /// The server closed the connection (after a FATAL, a Terminate, or a crash).
    ServerClosed(String),
    /// Writing to the client failed.
    ClientWrite(String),
    /// The session asked to stop.
    Stopped(Control),
    /// The server broke framing.
    Protocol(String),
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
}

pub async fn client_to_server<R, W>(
    mut rd: R,
    mut wr: W,
    max_message: usize,
    activity: &Activity,
) -> ClientEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Bytes of the current frame's body still to pass through.
    let mut remaining = 0usize;
    // Syncs since the last Execute or Query: the ones a COPY FROM STDIN would swallow.
    let mut syncs_since_execute = 0u32;
    loop {
        reserve(&mut buf);
        match rd.read_buf(&mut buf).await {
            Ok(0) => return ClientEnd::Closed("client closed the connection".into()),
            Ok(_) => {}
            Err(e) => return ClientEnd::Closed(e.to_string()),
        }
        let mut pos = 0;
        let mut end = None;
        while pos < buf.len() {
            if remaining > 0 {
                let take = remaining.min(buf.len() - pos);
                pos += take;
                remaining -= take;
                continue;
            }
            match peek_header(&buf[pos..], max_message) {
                Ok(None) => break,
                Ok(Some((tag, len))) => {
                    if ends_round_trip(tag) {
                        activity.round_trip_sent();
                    }
                    match tag {
                        frontend::EXECUTE => {
                            activity.execute_sent();
                            syncs_since_execute = 0;
                        }
                        frontend::QUERY => syncs_since_execute = 0,
                        frontend::SYNC => syncs_since_execute = syncs_since_execute.saturating_add(1),
                        frontend::COPY_DONE | frontend::COPY_FAIL => {
                            activity.copy_in_ended(std::mem::take(&mut syncs_since_execute))
                        }
                        _ => {}
                    }
                    pos += HEADER_LEN;
                    remaining = len;
                    if tag == frontend::TERMINATE {
                        end = Some(ClientEnd::Terminated);
                        pos += len.min(buf.len() - pos);
                        break;
                    }
                }
                Err(e) => {
                    end = Some(ClientEnd::Protocol(framing_error(e)));
                    break;
                }
            }
        }
        if pos > 0 {
            if let Err(e) = write_flush(&mut wr, &buf[..pos]).await {
                return ClientEnd::ServerWrite(e.to_string());
            }
            buf.advance(pos);
        }
        if let Some(end) = end {
            return end;
        }
    }
}

fn framing_error(e: WireError) -> ErrorResponse {
    match e {
        WireError::TooLarge { len, max } => ErrorResponse::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("message of {len} bytes exceeds the limit of {max} bytes"),
        ),
        other => ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, format!("invalid message: {other}")),
    }
}

/// The server broke the protocol at a frame boundary: what came before it (whole frames)
/// goes to the client, then the 08P01 that ends the session.
async fn server_broke<W: AsyncWrite + Unpin>(
    wr: &mut W,
    before: &[u8],
    what: Invalid,
    errors: &crate::metrics::ErrorCounts,
) -> ServerEnd {
    let e = protocol_violation(&what);
    errors.count(e.get(b'C'));
    if write_flush(wr, before).await.is_ok() {
        let _ = write_flush(wr, &e.to_error_message()).await;
    }
    let _ = wr.shutdown().await;
    ServerEnd::Protocol(what.to_string())
}

async fn write_flush<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> std::io::Result<()> {
    wr.write_all(data).await?;
    wr.flush().await
}

/// Rewords the server's "canceling statement due to user request" when the proxy sent
/// the cancel, so the client learns which limit it hit.
pub type Reword = dyn Fn(CancelReason, ErrorResponse) -> ErrorResponse + Send + Sync;

pub async fn server_to_client<R, W>(
    mut rd: R,
    mut wr: W,
    activity: &Activity,
    ctl: &mut mpsc::Receiver<Control>,
    reword: &Reword,
    errors: &crate::metrics::ErrorCounts,
) -> ServerEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut remaining = 0usize;
    loop {
        reserve(&mut buf);
        tokio::select! {
            biased;
            c = ctl.recv() => {
                let c = c.unwrap_or(Control::Close);
                if let Control::Fatal(e) = &c {
                    // Mid-frame, an error would corrupt the stream: close without it.
                    if remaining == 0 {
                        let _ = write_flush(&mut wr, &e.to_error_message()).await;
                    }
                }
                let _ = wr.shutdown().await;
                return ServerEnd::Stopped(c);
            }
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => {
                    let _ = wr.shutdown().await;
                    return ServerEnd::ServerClosed("server closed the connection".into());
                }
                Ok(_) => {}
                Err(e) => return ServerEnd::ServerClosed(e.to_string()),
            }
        }
        let mut pos = 0;
        while pos < buf.len() {
            if remaining > 0 {
                let take = remaining.min(buf.len() - pos);
                pos += take;
                remaining -= take;
                continue;
            }
            let header = peek_header(&buf[pos..], usize::MAX)
                .map_err(Invalid::from)
                .and_then(|h| h.map(|(tag, len)| Ok((tag, len, handling(tag, len)?))).transpose());
            let (tag, len, handling) = match header {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(what) => return server_broke(&mut wr, &buf[..pos], what, errors).await,
            };
            let whole = buf.len() - pos >= HEADER_LEN + len;
            match tag {
                backend::READY_FOR_QUERY => {
                    if !whole {
                        break;
                    }
                    let status = match ready_status(&buf[pos + HEADER_LEN..pos + HEADER_LEN + len]) {
                        Ok(status) => status,
                        Err(what) => return server_broke(&mut wr, &buf[..pos], what, errors).await,
                    };
                    activity.ready(status);
                    pos += HEADER_LEN + len;
                }
                backend::ERROR_RESPONSE if handling == Handling::Whole => {
                    // Errors are small: look at each whole, to count it by class and, after
                    // a cancel the proxy sent, to say which limit fired.
                    if !whole {
                        break;
                    }
                    let body = &buf[pos + HEADER_LEN..pos + HEADER_LEN + len];
                    errors.count_body(body);
                    let reason = activity.cancel_reason();
                    match (ErrorResponse::decode(body), reason) {
                        (Ok(err), Some(reason)) if err.code() == Some(SqlState::QUERY_CANCELED) => {
                            if let Err(e) = write_flush(&mut wr, &buf[..pos]).await {
                                return ServerEnd::ClientWrite(e.to_string());
                            }
                            buf.advance(pos + HEADER_LEN + len);
                            pos = 0;
                            if let Err(e) =
                                write_flush(&mut wr, &reword(reason, err).to_error_message()).await
                            {
                                return ServerEnd::ClientWrite(e.to_string());
                            }
                        }
                        _ => pos += HEADER_LEN + len,
                    }
                    activity.execute_done(true);
                }
                tag => {
                    match tag {
                        // Too large to look at: counted, and ends the statement, all the same.
                        backend::ERROR_RESPONSE => {
                            errors.count(None);
                            activity.execute_done(true);
                        }
                        backend::COPY_IN_RESPONSE => activity.copy_in_started(),
                        backend::COMMAND_COMPLETE
                        | backend::EMPTY_QUERY_RESPONSE
                        | backend::PORTAL_SUSPENDED => activity.execute_done(false),
                        _ => {}
                    }
                    pos += HEADER_LEN;
                    remaining = len;
                }
            }
        }
        if pos > 0 {
            if let Err(e) = write_flush(&mut wr, &buf[..pos]).await {
                return ServerEnd::ClientWrite(e.to_string());
            }
            buf.advance(pos);
        }
    }
}
