//! SCRAM-SHA-256 with the client, terminated at the proxy. An unknown database, an unknown
//! role and a wrong password run the same exchange (a fake verifier for the first two) and
//! fail with the same `28P01`, so names cannot be probed: the fake verifier's salt is as
//! stable per user and database as a real one, and says nothing across databases or
//! restarts (`fake_scram_key`). No PBKDF2 runs here: verifiers are stored, and the client
//! pays for the iteration count. Channel binding (PLUS) is offered
//! on TLS connections whose certificate has a defined `tls-server-end-point` hash.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::{SaslInitialResponse, tag};
use wire::scram::{ChannelBinding, ScramError, ScramServer, ScramVerifier};
use wire::{Frame, SqlState, parse_frame};

use crate::error::{ErrorKind, SessionError};

/// SASL messages are small; anything bigger is not a SASL message.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// What a successful exchange leaves behind: the keys that let the proxy log in upstream as
/// the client (SCRAM pass-through) when the upstream shares the verifier.
#[derive(Clone)]
pub struct Authenticated {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticated(***)")
    }
}

/// Runs the exchange for `user` on `database`. `verifiers` is `None` when the database does
/// not route the user (or does not exist): the fake verifier's salt is then keyed by `fake_key`
/// and derived from both names, so it is stable for the pair and unrelated across databases.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    database: &str,
    verifiers: Option<Vec<ScramVerifier>>,
    channel_binding: ChannelBinding,
    fake_key: &crate::FakeScramKey,
) -> Result<Authenticated, SessionError> {
    let known = verifiers.is_some();
    let mut server = verifiers
        .and_then(|v| ScramServer::with_verifiers(v, channel_binding.clone()))
        .unwrap_or_else(|| ScramServer::fake(user, database, fake_key.expose(), channel_binding));
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Sasl { mechanisms: server.mechanisms() }).encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(512);
    let frame = read_password_frame(stream, &mut buf).await?;
    let initial = SaslInitialResponse::decode(&frame.body)
        .map_err(|_| SessionError::protocol("malformed SASLInitialResponse message"))?;
    let data = initial.data.unwrap_or_default();
    let server_first =
        server.handle_client_first(&initial.mechanism, &data).map_err(|e| scram_error(e, user, known))?;
    out.clear();
    BackendMessage::Authentication(Authentication::SaslContinue(server_first.into_bytes().into()))
        .encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let frame = read_password_frame(stream, &mut buf).await?;
    let server_final = server.handle_client_final(&frame.body).map_err(|e| scram_error(e, user, known))?;
    out.clear();
    BackendMessage::Authentication(Authentication::SaslFinal(server_final.into_bytes().into()))
        .encode(&mut out);
    BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
    stream.write_all(&out).await?;
    // Not flushed: the upstream's ParameterStatus messages follow in the same write.
    let (Some(client_key), Some(server_key)) = (server.client_key(), server.server_key()) else {
        return Err(SessionError::auth_failed(user, "exchange finished without keys"));
    };
    Ok(Authenticated { client_key, server_key })
}

fn scram_error(e: ScramError, user: &str, known: bool) -> SessionError {
    match e {
        ScramError::InvalidProof | ScramError::NonceMismatch => {
            SessionError::auth_failed(user, if known { "wrong password" } else { "unknown database or role" })
        }
        ScramError::ChannelBindingMismatch
        | ScramError::ChannelBindingDowngrade
        | ScramError::ChannelBindingUnsupported => SessionError::fatal(
            ErrorKind::Auth,
            SqlState::PROTOCOL_VIOLATION,
            format!("SCRAM channel binding check failed: {e}"),
        ),
        ScramError::UnsupportedMechanism => SessionError::fatal(
            ErrorKind::Auth,
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ),
        other => SessionError::protocol(format!("malformed SCRAM message: {other}")),
    }
}

pub(crate) async fn read_password_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Frame, SessionError> {
    loop {
        match parse_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) if f.tag == tag::PASSWORD => return Ok(f),
            Ok(Some(f)) if f.tag == tag::TERMINATE => {
                return Err(SessionError::disconnect("client terminated during authentication"));
            }
            Ok(Some(f)) => {
                return Err(SessionError::protocol(format!(
                    "expected SASL response, got message type {}",
                    f.tag as char
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(SessionError::protocol(format!("invalid authentication message: {e}"))),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::disconnect("client closed during authentication"));
        }
    }
}
