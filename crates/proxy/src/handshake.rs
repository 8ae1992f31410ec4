//! The startup phase of a client connection, before authentication: SSLRequest and direct
//! TLS, GSSENCRequest (always declined), CancelRequest, and the StartupMessage with protocol
//! version negotiation. Packets are read with exact-length reads so no plaintext byte that a
//! client pipelines after SSLRequest is ever taken as part of the TLS session.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::backend::BackendMessage;
use wire::startup::{MAX_STARTUP_LEN, decode_startup_body};
use wire::{CancelRequest, ProtocolVersion, SqlState, StartupMessage, StartupPacket};

use crate::error::{ErrorKind, SessionError};
use crate::stream::ClientStream;
use crate::tls::{ALPN_POSTGRESQL, TlsServer};

/// The first byte of a TLS record carrying a handshake: a startup packet's length never
/// starts with it (that would be a length above 350 MB).
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

pub enum Negotiated<S: AsyncRead + AsyncWrite + Unpin> {
    Startup {
        stream: ClientStream<S>,
        startup: StartupMessage,
        /// The TLS server name (SNI) the client asked for, lower-cased; `None` without TLS,
        /// without SNI, or for an IP literal host.
        server_name: Option<String>,
    },
    /// With the stream it came on, to be closed once the cancel is handled: over TLS with a
    /// close_notify, as PostgreSQL does (libpq's encrypted cancel reports an unexpected EOF
    /// without one).
    Cancel(CancelRequest, ClientStream<S>),
}

pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut raw: S,
    tls: Option<&TlsServer>,
    require_tls: bool,
) -> Result<Negotiated<S>, SessionError> {
    let (mut ssl_asked, mut gss_asked) = (false, false);
    loop {
        let mut len_buf = [0u8; 4];
        read_exact_or_disconnect(&mut raw, &mut len_buf).await?;
        if len_buf[0] == TLS_HANDSHAKE_BYTE && !ssl_asked {
            let Some(tls) = tls else {
                return Err(SessionError::new(ErrorKind::Tls, "direct TLS without a certificate", None));
            };
            let accepted = crate::tls_conn::accept(tls.config.clone(), raw, &len_buf)
                .await
                .map_err(|e| SessionError::new(ErrorKind::Tls, format!("direct TLS handshake: {e}"), None))?;
            // PostgreSQL 17 insists on ALPN for direct TLS so that a TLS connection meant for
            // another service is never taken for one to PostgreSQL.
            if accepted.alpn.as_deref() != Some(ALPN_POSTGRESQL) {
                return Err(SessionError::new(ErrorKind::Tls, "direct TLS without ALPN postgresql", None));
            }
            let mut stream = ClientStream::Tls(Box::new(accepted.conn));
            let packet = after_tls(&mut stream).await?;
            return into_negotiated(stream, packet, accepted.server_name);
        }
        let packet = match read_packet_body(&mut raw, len_buf).await {
            Ok(p) => p,
            Err(e) => return Err(send_error(&mut raw, e).await),
        };
        match packet {
            StartupPacket::SslRequest if !ssl_asked => {
                ssl_asked = true;
                let Some(tls) = tls else {
                    raw.write_all(b"N").await?;
                    continue;
                };
                raw.write_all(b"S").await?;
                let accepted = crate::tls_conn::accept(tls.config.clone(), raw, &[])
                    .await
                    .map_err(|e| SessionError::new(ErrorKind::Tls, format!("TLS handshake: {e}"), None))?;
                let mut stream = ClientStream::Tls(Box::new(accepted.conn));
                let packet = after_tls(&mut stream).await?;
                return into_negotiated(stream, packet, accepted.server_name);
            }
            StartupPacket::GssEncRequest if !gss_asked => {
                // libpq may try GSSAPI first and then TLS on the same connection.
                gss_asked = true;
                raw.write_all(b"N").await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err(
                    send_error(&mut raw, SessionError::protocol("duplicate encryption request")).await
                );
            }
            StartupPacket::Cancel(c) => return Ok(Negotiated::Cancel(c, ClientStream::Plain(raw))),
            StartupPacket::Startup(startup) => {
                if require_tls {
                    let e = SessionError::fatal(
                        ErrorKind::Tls,
                        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                        "TLS is required: connect with sslmode=require",
                    );
                    return Err(send_error(&mut raw, e).await);
                }
                return Ok(Negotiated::Startup {
                    stream: ClientStream::Plain(raw),
                    startup,
                    server_name: None,
                });
            }
        }
    }
}

fn into_negotiated<S: AsyncRead + AsyncWrite + Unpin>(
    stream: ClientStream<S>,
    packet: StartupPacket,
    server_name: Option<String>,
) -> Result<Negotiated<S>, SessionError> {
    match packet {
        StartupPacket::Startup(startup) => Ok(Negotiated::Startup { stream, startup, server_name }),
        StartupPacket::Cancel(c) => Ok(Negotiated::Cancel(c, stream)),
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
            Err(SessionError::protocol("unexpected encryption request inside TLS"))
        }
    }
}

/// Inside TLS the only acceptable packets are a StartupMessage or a CancelRequest.
async fn after_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut ClientStream<S>,
) -> Result<StartupPacket, SessionError> {
    let mut len_buf = [0u8; 4];
    read_exact_or_disconnect(stream, &mut len_buf).await?;
    let packet = read_packet_body(stream, len_buf).await;
    match packet {
        Ok(p @ (StartupPacket::Startup(_) | StartupPacket::Cancel(_))) => Ok(p),
        Ok(_) => {
            Err(send_error(stream, SessionError::protocol("unexpected encryption request inside TLS")).await)
        }
        Err(e) => Err(send_error(stream, e).await),
    }
}

async fn read_exact_or_disconnect<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), SessionError> {
    r.read_exact(buf).await.map(|_| ()).map_err(|e| SessionError::disconnect(format!("during startup: {e}")))
}

async fn read_packet_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len_buf: [u8; 4],
) -> Result<StartupPacket, SessionError> {
    let len = i32::from_be_bytes(len_buf);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(SessionError::protocol(format!("invalid length of startup packet: {len}")));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    read_exact_or_disconnect(r, &mut body).await?;
    decode_startup_body(&body).map_err(|e| SessionError::protocol(format!("invalid startup packet: {e}")))
}

/// Writes the error's response (if any) to the client and gives the error back.
pub async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, e: SessionError) -> SessionError {
    if let Some(resp) = &e.response {
        let _ = w.write_all(&resp.to_error_message()).await;
        let _ = w.flush().await;
    }
    // A TLS close_notify, then FIN: clients can tell this end from a lost connection.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), w.shutdown()).await;
    e
}

/// Checks the requested protocol version. Returns the NegotiateProtocolVersion message to
/// send when the client asked for a newer minor version or for `_pq_.` options, which this
/// proxy does not implement.
pub fn check_version(startup: &StartupMessage) -> Result<Option<BackendMessage>, SessionError> {
    let v = startup.version;
    if v.major != 3 {
        return Err(SessionError::fatal(
            ErrorKind::Protocol,
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {v}: server supports 3.0 to 3.0"),
        ));
    }
    let unrecognized: Vec<String> =
        startup.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect();
    if v > ProtocolVersion::V3_0 || !unrecognized.is_empty() {
        // Despite the field's name in the protocol docs, PostgreSQL sends its whole newest
        // version word here (PG_PROTOCOL_LATEST, 3.0 = 0x00030000), and clients compare it
        // with the version they asked for: a bare 0 reads as protocol 0.0.
        let newest = (i32::from(ProtocolVersion::V3_0.major) << 16) | i32::from(ProtocolVersion::V3_0.minor);
        return Ok(Some(BackendMessage::NegotiateProtocolVersion { newest_minor: newest, unrecognized }));
    }
    Ok(None)
}
