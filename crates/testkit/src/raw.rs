//! A minimal protocol-level client for tests that must control exactly which bytes reach
//! the proxy and when: pipelining, streaming while reading, malformed messages. It logs in
//! over TLS with the wire crate's SCRAM client, then sends and receives raw frames.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::SaslInitialResponse;
use wire::scram::{ChannelBinding, ScramClient};
use wire::{ErrorResponse, Frame, ProtocolVersion, StartupMessage, StartupPacket, parse_frame};

pub type TlsConn = TlsStream<TcpStream>;

/// TCP to `addr`, SSLRequest, and a TLS handshake verified against `tls` for `localhost`.
pub async fn tls_connect(addr: SocketAddr, tls: rustls::ClientConfig) -> anyhow::Result<TlsConn> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut buf = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        bail!("proxy declined TLS: {:?}", answer[0] as char);
    }
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await?)
}

/// A logged-in session, split so a test can read and write concurrently.
pub struct RawConn {
    pub reader: FrameReader,
    pub writer: WriteHalf<TlsConn>,
    /// What the proxy reported in BackendKeyData.
    pub pid: i32,
    pub secret: i32,
}

pub struct FrameReader {
    rd: ReadHalf<TlsConn>,
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame, or `None` at end of stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, usize::MAX)? {
                return Ok(Some(f));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads once more into the buffer, whatever arrives (part of a frame, say); 0 at end
    /// of stream. With [`buffered`](Self::buffered), for tests that must see bytes of a
    /// frame before the rest of it was sent.
    pub async fn read_more(&mut self) -> anyhow::Result<usize> {
        Ok(self.rd.read_buf(&mut self.buf).await?)
    }

    /// What has been read and not yet returned as a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Frames up to and including the next ReadyForQuery; the error if one arrives. A FATAL
    /// error followed by the end of the connection is returned as that error.
    pub async fn until_ready(&mut self) -> anyhow::Result<(Vec<Frame>, Option<ErrorResponse>)> {
        let mut frames = Vec::new();
        let mut error: Option<ErrorResponse> = None;
        loop {
            let next = self.next().await;
            let fatal = error.as_ref().is_some_and(|e| e.severity() == Some("FATAL"));
            let f = match next {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) if fatal => return Ok((frames, error)),
                Ok(None) => break,
                Err(e) => return Err(e),
            };
            if f.tag == b'E' && error.is_none() {
                error = Some(ErrorResponse::decode(&f.body)?);
            }
            let done = f.tag == b'Z';
            frames.push(f);
            if done {
                return Ok((frames, error));
            }
        }
        bail!("connection closed before ReadyForQuery")
    }
}

impl RawConn {
    pub async fn login(
        addr: SocketAddr,
        tls: rustls::ClientConfig,
        db: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<RawConn> {
        Ok(Self::login_with(addr, tls, db, user, password, &[]).await?.0)
    }

    /// Logs in with extra startup parameters; also returns the ParameterStatus values.
    pub async fn login_with(
        addr: SocketAddr,
        tls: rustls::ClientConfig,
        db: &str,
        user: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(RawConn, Vec<(String, String)>)> {
        let mut statuses = Vec::new();
        let stream = tls_connect(addr, tls).await?;
        let (rd, mut writer) = tokio::io::split(stream);
        let mut reader = FrameReader { rd, buf: BytesMut::new() };
        let mut out = BytesMut::new();
        StartupPacket::Startup(StartupMessage {
            version: ProtocolVersion::V3_0,
            params: [("user", user), ("database", db)]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .encode(&mut out);
        writer.write_all(&out).await?;
        let mut scram: Option<ScramClient> = None;
        let (mut pid, mut secret) = (0, 0);
        loop {
            let frame = reader.next().await?.context("closed during login")?;
            out.clear();
            match BackendMessage::decode(&frame)? {
                BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                    let client = ScramClient::new(password, ChannelBinding::None, &mechanisms)?;
                    SaslInitialResponse {
                        mechanism: client.mechanism().into(),
                        data: Some(client.client_first().into_bytes().into()),
                    }
                    .encode(&mut out);
                    scram = Some(client);
                }
                BackendMessage::Authentication(Authentication::SaslContinue(data)) => {
                    let reply = scram.as_mut().context("no SCRAM")?.handle_server_first(&data)?;
                    wire::frontend::FrontendMessage::Password(reply.into_bytes().into()).encode(&mut out);
                }
                BackendMessage::Authentication(Authentication::SaslFinal(data)) => {
                    scram.as_mut().context("no SCRAM")?.handle_server_final(&data)?;
                }
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::BackendKeyData { pid: p, secret: s } => (pid, secret) = (p, s),
                BackendMessage::ErrorResponse(e) => bail!("login failed: {e}"),
                BackendMessage::ParameterStatus { name, value } => statuses.push((name, value)),
                BackendMessage::ReadyForQuery(_) => {
                    return Ok((RawConn { reader, writer, pid, secret }, statuses));
                }
                _ => {}
            }
            if !out.is_empty() {
                writer.write_all(&out).await?;
            }
        }
    }

    pub async fn send(&mut self, msgs: &[wire::frontend::FrontendMessage]) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.writer.write_all(&out).await?;
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }
}
