//! A minimal PostgreSQL client for load generation: TCP, SSLRequest, TLS (rustls, no session
//! resumption, as libpq), StartupMessage, SCRAM-SHA-256 (with channel binding when offered,
//! as libpq's `channel_binding=prefer`), simple queries, Terminate. The SCRAM keys are derived
//! from the password once per run instead of once per connection, so the load generator
//! spends its share of the two cores on the proxy's work rather than on PBKDF2; the servers
//! under test do exactly what they do for libpq.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::SaslInitialResponse;
use wire::scram::{ChannelBinding, ScramClient, ScramVerifier};
use wire::{Frame, ProtocolVersion, StartupMessage, StartupPacket};

/// Larger than any message these scenarios receive.
const MAX_MESSAGE: usize = 1 << 20;

/// ClientKey and ServerKey: what SCRAM needs from the password. Debug never prints them.
#[derive(Clone, Copy)]
pub struct Keys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(***)")
    }
}

impl Keys {
    /// Derives the keys for the salt and iteration count of `verifier` (the role's
    /// `pg_authid` entry, which every server in the run uses), and checks the password
    /// matches it so a typo fails here rather than as a thousand login errors.
    pub fn derive(password: &str, verifier: &ScramVerifier) -> anyhow::Result<Self> {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &verifier.salt, verifier.iterations, &mut salted);
        let hmac = |label: &[u8]| -> [u8; 32] {
            let mut mac = Hmac::<Sha256>::new_from_slice(&salted).expect("HMAC takes keys of any length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let keys = Keys { client_key: hmac(b"Client Key"), server_key: hmac(b"Server Key") };
        let stored: [u8; 32] = Sha256::digest(keys.client_key).into();
        if stored != verifier.stored_key || keys.server_key != verifier.server_key {
            bail!("the password does not match the verifier");
        }
        Ok(keys)
    }
}

/// Where and as whom to connect.
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub keys: Keys,
    pub tls: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl Target {
    /// TLS that verifies the server against `ca_pem`, without session resumption.
    pub fn tls_connector(ca_pem: &[u8]) -> anyhow::Result<TlsConnector> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("invalid CA certificate")?)?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

pub struct Conn {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// Connects, negotiates TLS, authenticates, and waits for the first ReadyForQuery.
    pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
        let mut tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let mut out = BytesMut::with_capacity(256);
        StartupPacket::SslRequest.encode(&mut out);
        tcp.write_all(&out).await?;
        out.clear();
        if tcp.read_u8().await? != b'S' {
            bail!("the server refused TLS");
        }
        let stream = target.tls.connect(target.server_name.clone(), tcp).await?;
        let binding = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(cert),
            None => ChannelBinding::None,
        };
        let mut conn = Conn { stream, buf: BytesMut::with_capacity(8192), out };
        let startup = StartupMessage {
            version: ProtocolVersion::V3_0,
            params: vec![("user".into(), target.user.clone()), ("database".into(), target.database.clone())],
        };
        StartupPacket::Startup(startup).encode(&mut conn.out);
        conn.flush().await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            match conn.read_message().await? {
                BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                    let client = ScramClient::with_keys(
                        target.keys.client_key,
                        target.keys.server_key,
                        binding.clone(),
                        &mechanisms,
                    )?;
                    SaslInitialResponse {
                        mechanism: client.mechanism().into(),
                        data: Some(client.client_first().into_bytes().into()),
                    }
                    .encode(&mut conn.out);
                    conn.flush().await?;
                    scram = Some(client);
                }
                BackendMessage::Authentication(Authentication::SaslContinue(data)) => {
                    let client = scram.as_mut().context("SASLContinue before SASL")?;
                    let reply = client.handle_server_first(&data)?;
                    Frame::new(b'p', reply.into_bytes()).encode(&mut conn.out);
                    conn.flush().await?;
                }
                BackendMessage::Authentication(Authentication::SaslFinal(data)) => {
                    scram.as_mut().context("SASLFinal before SASL")?.handle_server_final(&data)?;
                }
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::Authentication(other) => bail!("unsupported authentication {other:?}"),
                BackendMessage::ReadyForQuery(_) => return Ok(conn),
                BackendMessage::ErrorResponse(e) => bail!("login failed: {}", describe(&e)),
                _ => {}
            }
        }
    }

    /// Sends one simple query and reads until ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> anyhow::Result<()> {
        let mut body = BytesMut::with_capacity(sql.len() + 1);
        body.put_slice(sql.as_bytes());
        body.put_u8(0);
        Frame::new(b'Q', body.freeze()).encode(&mut self.out);
        self.flush().await?;
        let mut error = None;
        loop {
            let message = match self.read_message().await {
                Ok(m) => m,
                // A FATAL error ends the connection after it.
                Err(_) if error.is_some() => break,
                Err(e) => return Err(e),
            };
            match message {
                BackendMessage::ErrorResponse(e) => error = Some(describe(&e)),
                BackendMessage::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => bail!("query failed: {e}"),
            None => Ok(()),
        }
    }

    /// Sends Terminate and closes TLS and the socket, as libpq's `PQfinish` does.
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        Frame::new(b'X', bytes::Bytes::new()).encode(&mut self.out);
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn read_message(&mut self) -> anyhow::Result<BackendMessage> {
        loop {
            if let Some(frame) = wire::parse_frame(&mut self.buf, MAX_MESSAGE)? {
                return Ok(BackendMessage::decode(&frame)?);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

fn describe(e: &wire::ErrorResponse) -> String {
    let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
    format!("{code} {}", e.message().unwrap_or(""))
}
