//! Opening a session on an upstream as the client's role: transport (private unix socket,
//! TCP, TLS per `ssl_mode`), StartupMessage with the client's parameters, authentication
//! (trust, SCRAM with the configured password or with the client's own keys, MD5,
//! cleartext), and the server's ParameterStatus/BackendKeyData up to ReadyForQuery. An
//! error the upstream reports during startup reaches the client unchanged.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wire::backend::{Authentication, BackendMessage, TransactionStatus, tag};
use wire::frontend::{SaslInitialResponse, encode_password_message};
use wire::scram::{ChannelBinding, ScramClient};
use wire::{ErrorResponse, Frame, ProtocolVersion, SqlState, StartupMessage, StartupPacket, parse_frame};

use crate::auth::Authenticated;
use crate::error::{ErrorKind, SessionError};
use crate::routes::{Database, Role, SslMode, Upstream, UpstreamAddr};
use crate::stream::UpstreamStream;

/// Startup-phase messages from a server are small; this bounds a confused upstream.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

pub struct UpstreamSession {
    pub stream: UpstreamStream,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus and NoticeResponse frames in the order the server sent them, ready to
    /// be written to the client.
    pub startup_frames: BytesMut,
    pub status: TransactionStatus,
}

fn unavailable(db: &Database, detail: String) -> SessionError {
    SessionError::new(
        ErrorKind::Upstream,
        detail,
        Some(ErrorResponse::fatal(
            SqlState::CANNOT_CONNECT_NOW,
            format!("database \"{}\" is not available right now", db.name),
        )),
    )
}

/// Opens the byte stream to the upstream, negotiating TLS as its `ssl_mode` says.
pub async fn open_transport(upstream: &Upstream, timeout: Duration) -> Result<UpstreamStream, String> {
    let fut = async {
        match &upstream.addr {
            UpstreamAddr::Unix { dir, port } => {
                let path = UpstreamAddr::socket_path(dir, *port);
                UnixStream::connect(&path)
                    .await
                    .map(UpstreamStream::Unix)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            UpstreamAddr::Tcp { host, port } => {
                let mut tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("{host}:{port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let Some(config) = upstream.tls.clone() else {
                    return Ok(UpstreamStream::Tcp(tcp));
                };
                let mut req = BytesMut::new();
                StartupPacket::SslRequest.encode(&mut req);
                tcp.write_all(&req).await.map_err(|e| e.to_string())?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
                match answer[0] {
                    b'S' => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(|e| format!("invalid server name {host}: {e}"))?;
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await
                            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
                        Ok(UpstreamStream::Tls(Box::new(tls)))
                    }
                    b'N' if upstream.ssl_mode == SslMode::Prefer => Ok(UpstreamStream::Tcp(tcp)),
                    b'N' => {
                        Err(format!("{host}:{port} does not accept TLS (ssl_mode {:?})", upstream.ssl_mode))
                    }
                    other => Err(format!("{host}:{port} answered SSLRequest with {other:#x}")),
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| "connect timed out".to_string())?
}

pub async fn connect(
    db: &Database,
    role: &Role,
    client_params: &[(String, String)],
    keys: Option<&Authenticated>,
    timeout: Duration,
) -> Result<UpstreamSession, SessionError> {
    let mut stream = open_transport(&db.upstream, timeout).await.map_err(|e| unavailable(db, e))?;
    let mut params =
        vec![("user".to_owned(), role.name.clone()), ("database".to_owned(), db.upstream.dbname.clone())];
    params.extend(
        client_params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_."))
            .cloned(),
    );
    let mut out = BytesMut::new();
    StartupPacket::Startup(StartupMessage { version: ProtocolVersion::V3_0, params }).encode(&mut out);
    stream.write_all(&out).await.map_err(|e| unavailable(db, e.to_string()))?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramClient> = None;
    let mut startup_frames = BytesMut::new();
    let mut key: Option<(i32, i32)> = None;
    let mut authenticated = false;
    let login_failed = |detail: String| {
        SessionError::new(
            ErrorKind::Upstream,
            format!("upstream authentication for role {}: {detail}", role.name),
            Some(ErrorResponse::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("the proxy could not authenticate to database \"{}\"", db.name),
            )),
        )
    };
    loop {
        let frame = read_frame(&mut stream, &mut buf).await.map_err(|e| unavailable(db, e))?;
        match frame.tag {
            tag::AUTHENTICATION => {
                let BackendMessage::Authentication(auth) =
                    BackendMessage::decode(&frame).map_err(|e| unavailable(db, e.to_string()))?
                else {
                    unreachable!("tag R decodes to Authentication")
                };
                out.clear();
                authenticated = matches!(auth, Authentication::Ok);
                answer_auth(auth, role, keys, &mut scram, &mut out).map_err(login_failed)?;
                if !out.is_empty() {
                    stream.write_all(&out).await.map_err(|e| unavailable(db, e.to_string()))?;
                }
            }
            tag::BACKEND_KEY_DATA => {
                if let Ok(BackendMessage::BackendKeyData { pid, secret }) = BackendMessage::decode(&frame) {
                    key = Some((pid, secret));
                }
            }
            tag::READY_FOR_QUERY => {
                let status = frame
                    .body
                    .first()
                    .copied()
                    .and_then(TransactionStatus::from_byte)
                    .unwrap_or(TransactionStatus::Idle);
                let (pid, secret) =
                    key.ok_or_else(|| unavailable(db, "upstream sent no BackendKeyData".into()))?;
                return Ok(UpstreamSession { stream, pid, secret, startup_frames, status });
            }
            tag::ERROR_RESPONSE => {
                let err = ErrorResponse::decode(&frame.body).map_err(|e| unavailable(db, e.to_string()))?;
                // A refusal of the proxy's own credentials means nothing to the client, who
                // authenticated fine: say what failed. Anything after authentication (a bad
                // `options` setting, a missing database) is the server's word for the client.
                if !authenticated && err.code().is_some_and(|c| c.class() == "28") {
                    return Err(login_failed(err.to_string()));
                }
                return Err(SessionError::new(
                    ErrorKind::Upstream,
                    format!("upstream refused: {err}"),
                    Some(err),
                ));
            }
            _ => frame.encode(&mut startup_frames),
        }
    }
}

fn answer_auth(
    auth: Authentication,
    role: &Role,
    keys: Option<&Authenticated>,
    scram: &mut Option<ScramClient>,
    out: &mut BytesMut,
) -> Result<(), String> {
    let password = || {
        role.upstream_password
            .as_ref()
            .map(|p| p.expose())
            .ok_or("the upstream asks for a password and none is configured")
    };
    match auth {
        Authentication::Ok => {}
        Authentication::CleartextPassword => encode_password_message(out, password()?),
        Authentication::Md5Password { salt } => {
            use md5::{Digest, Md5};
            let inner = hex(&Md5::digest(format!("{}{}", password()?, role.name)));
            let mut h = Md5::new();
            h.update(inner.as_bytes());
            h.update(salt);
            encode_password_message(out, &format!("md5{}", hex(&h.finalize())));
        }
        Authentication::Sasl { mechanisms } => {
            let client = match role.upstream_password.as_ref() {
                Some(p) => ScramClient::new(p.expose(), ChannelBinding::None, &mechanisms),
                None => {
                    let keys = keys.ok_or(
                        "the upstream asks for a SCRAM password; this login has neither a configured \
                         password nor the client's SCRAM keys",
                    )?;
                    ScramClient::with_keys(
                        keys.client_key,
                        keys.server_key,
                        ChannelBinding::None,
                        &mechanisms,
                    )
                }
            }
            .map_err(|e| e.to_string())?;
            SaslInitialResponse {
                mechanism: client.mechanism().to_owned(),
                data: Some(client.client_first().into_bytes().into()),
            }
            .encode(out);
            *scram = Some(client);
        }
        Authentication::SaslContinue(data) => {
            let client = scram.as_mut().ok_or("SASLContinue before SASL")?;
            let reply = client.handle_server_first(&data).map_err(|e| e.to_string())?;
            out.put_u8(b'p');
            out.put_i32(reply.len() as i32 + 4);
            out.put_slice(reply.as_bytes());
        }
        Authentication::SaslFinal(data) => {
            let client = scram.as_mut().ok_or("SASLFinal before SASL")?;
            client.handle_server_final(&data).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_frame(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<Frame, String> {
    loop {
        if let Some(f) = parse_frame(buf, MAX_STARTUP_MESSAGE).map_err(|e| e.to_string())? {
            return Ok(f);
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("upstream closed the connection during startup".into());
        }
    }
}
