//! Opening a session on an upstream as the client's role: transport (private unix socket,
//! TCP, TLS per `ssl_mode`), StartupMessage with the client's parameters, authentication
//! (trust, SCRAM with the configured password or with the client's own keys, MD5,
//! cleartext), and the server's ParameterStatus/BackendKeyData up to ReadyForQuery. An
//! error the upstream reports during startup reaches the client unchanged. What an
//! upstream's [`UpstreamTrust`] demands is checked here, at every login: a registered
//! upstream must ask for the password (and, with SCRAM, prove it knows it), only public
//! addresses when the operator says so, and no superuser session on a tenant's behalf. The
//! upstream's messages are bounded (each, and all of startup together), its ReadyForQuery
//! must be one known status byte, and the PBKDF2 cost it asks for is capped and paid off
//! the runtime's threads. A registered upstream asking for a weaker password exchange than
//! it was registered with, or for the cleartext password over unencrypted TCP, gets no
//! answer (`upstream_auth`). The whole login, not only the connect, is bounded by its
//! timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wire::backend::{Authentication, BackendMessage, TransactionStatus, tag};
use wire::frontend::{SaslInitialResponse, encode_password_message};
use wire::scram::{ChannelBinding, DerivedKeys, KeyDerivation, ScramClient};
use wire::{ErrorResponse, Frame, ProtocolVersion, SqlState, StartupMessage, StartupPacket, parse_frame};

use crate::auth::Authenticated;
use crate::error::{ErrorKind, SessionError};
use crate::routes::{Database, Role, SslMode, Upstream, UpstreamAddr, UpstreamTrust};
use crate::stream::UpstreamStream;
use crate::upstream_auth::{self, AuthMethod};

/// Startup-phase messages from a server are small; this bounds a confused upstream.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// The ParameterStatus and NoticeResponse frames of one login together, kept to be replayed
/// to the client: PostgreSQL sends about a kilobyte of them.
const MAX_STARTUP_FRAMES: usize = 1 << 20;

pub struct UpstreamSession {
    pub stream: UpstreamStream,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus and NoticeResponse frames in the order the server sent them, ready to
    /// be written to the client.
    pub startup_frames: BytesMut,
    pub status: TransactionStatus,
    /// The password exchange the upstream asked for (`None`: it let the login in unasked).
    pub auth_method: Option<AuthMethod>,
}

/// Which step of opening an upstream session failed. With the upstream's SQLSTATE this is
/// all a registration check tells the tenant: none of the upstream's own bytes, so a probe
/// cannot be used to read what some other service on a port says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Tls,
    Authentication,
    Startup,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Tls => "tls",
            Step::Authentication => "authentication",
            Step::Startup => "startup",
        }
    }
}

/// A failed upstream login: the session error, and what may be said of it to a tenant.
#[derive(Debug)]
pub struct LoginFailure {
    pub step: Step,
    /// In Berth's words only (an I/O error kind, a SQLSTATE, a refusal of ours).
    pub public: String,
    pub error: SessionError,
}

impl LoginFailure {
    fn new(step: Step, public: impl Into<String>, error: SessionError) -> Self {
        LoginFailure { step, public: public.into(), error }
    }

    /// `step: what`, for a registration check's answer.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.step.as_str(), self.public)
    }
}

/// A transport failure: its step, Berth's words for it, and the whole story for the log.
pub struct TransportError {
    pub step: Step,
    pub public: String,
    pub detail: String,
}

impl From<TransportError> for String {
    fn from(e: TransportError) -> String {
        e.detail
    }
}

fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::NotFound => "no such host or socket".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        std::io::ErrorKind::UnexpectedEof => "the upstream closed the connection".into(),
        _ if e.raw_os_error().is_some() => format!("{}", e.kind()),
        _ => "I/O error".into(),
    }
}

/// Whether `ip` is a public address: not loopback, private (RFC 1918), shared (RFC 6598),
/// link-local, unique-local, unspecified, multicast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// Resolves `host` and connects to its first address the trust allows.
async fn connect_tcp(host: &str, port: u16, trust: UpstreamTrust) -> Result<TcpStream, TransportError> {
    let fail = |public: String, detail: String| TransportError { step: Step::Connect, public, detail };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail("the host name does not resolve".into(), format!("{host}:{port}: {e}")))?
        .collect();
    let allowed: Vec<SocketAddr> = match trust {
        UpstreamTrust::Registered { private_denied: true, .. } => {
            addrs.iter().copied().filter(|a| is_public(a.ip())).collect()
        }
        _ => addrs.clone(),
    };
    if allowed.is_empty() {
        let why = if addrs.is_empty() {
            "the host name has no address"
        } else {
            "the address is in a private or reserved range, which this Berth does not connect to"
        };
        return Err(fail(why.into(), format!("{host}:{port}: {why}")));
    }
    let mut last = None;
    for addr in allowed {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one address was tried");
    Err(fail(io_words(&e), format!("{host}:{port}: {e}")))
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

/// [`unavailable`], telling the client which step failed in Berth's words (never the
/// upstream's bytes), so a tenant whose upstream's certificate does not verify can see why.
fn unavailable_at(db: &Database, step: Step, public: &str, detail: String) -> SessionError {
    let mut e = unavailable(db, detail);
    e.response = e.response.map(|r| r.with_detail(format!("{}: {public}", step.as_str())));
    e
}

/// Berth's words for a failed TLS handshake with an upstream: what about its certificate
/// did not verify, when that was it.
fn tls_words(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) =
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "the TLS handshake failed".into();
    };
    match cert {
        C::UnknownIssuer | C::BadSignature => {
            "the upstream's certificate is not signed by a CA this registration trusts".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "the upstream's certificate is not valid for its host name".into()
        }
        C::Expired | C::ExpiredContext { .. } => "the upstream's certificate has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "the upstream's certificate is not valid yet".into(),
        C::Revoked => "the upstream's certificate is revoked".into(),
        _ => "the upstream's certificate did not verify".into(),
    }
}

/// Opens the byte stream to the upstream, negotiating TLS as its `ssl_mode` says.
pub async fn open_transport(
    upstream: &Upstream,
    timeout: Duration,
) -> Result<UpstreamStream, TransportError> {
    let tls_fail =
        |public: &str, detail: String| TransportError { step: Step::Tls, public: public.into(), detail };
    let fut = async {
        match &upstream.addr {
            UpstreamAddr::Unix { dir, port } => {
                let path = UpstreamAddr::socket_path(dir, *port);
                UnixStream::connect(&path).await.map(UpstreamStream::Unix).map_err(|e| TransportError {
                    step: Step::Connect,
                    public: io_words(&e),
                    detail: format!("{}: {e}", path.display()),
                })
            }
            UpstreamAddr::Tcp { host, port } => {
                let mut tcp = connect_tcp(host, *port, upstream.trust).await?;
                let _ = tcp.set_nodelay(true);
                let Some(config) = upstream.tls.clone() else {
                    return Ok(UpstreamStream::Tcp(tcp));
                };
                let mut req = BytesMut::new();
                StartupPacket::SslRequest.encode(&mut req);
                let io_fail = |e: std::io::Error| TransportError {
                    step: Step::Tls,
                    public: io_words(&e),
                    detail: format!("{host}:{port}: {e}"),
                };
                tcp.write_all(&req).await.map_err(io_fail)?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await.map_err(io_fail)?;
                match answer[0] {
                    b'S' => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                            tls_fail("the host is not a valid TLS server name", format!("{host}: {e}"))
                        })?;
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await
                            .map_err(|e| tls_fail(&tls_words(&e), format!("TLS to {host}:{port}: {e}")))?;
                        Ok(UpstreamStream::Tls(Box::new(tls)))
                    }
                    b'N' if upstream.ssl_mode == SslMode::Prefer => Ok(UpstreamStream::Tcp(tcp)),
                    b'N' => Err(tls_fail(
                        "the upstream does not accept TLS, which its ssl_mode requires",
                        format!("{host}:{port} does not accept TLS (ssl_mode {:?})", upstream.ssl_mode),
                    )),
                    // Not the upstream's byte: a probe must not read other services' answers.
                    _ => Err(tls_fail(
                        "the upstream did not answer as PostgreSQL",
                        format!("{host}:{port} answered SSLRequest with neither S nor N"),
                    )),
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| TransportError {
        step: Step::Connect,
        public: "timed out".into(),
        detail: "connect timed out".into(),
    })?
}

pub async fn connect(
    db: &Database,
    role: &Role,
    client_params: &[(String, String)],
    keys: Option<&Authenticated>,
    timeout: Duration,
) -> Result<UpstreamSession, SessionError> {
    login(db, role, client_params, keys, timeout).await.map_err(|f| f.error)
}

/// [`connect`], saying which step failed. `timeout` bounds the whole login: an upstream
/// that accepts the connection and then says nothing is a failed login, not a hang.
pub async fn login(
    db: &Database,
    role: &Role,
    client_params: &[(String, String)],
    keys: Option<&Authenticated>,
    timeout: Duration,
) -> Result<UpstreamSession, LoginFailure> {
    let mut reached = Step::Connect;
    let result =
        tokio::time::timeout(timeout, login_steps(db, role, client_params, keys, timeout, &mut reached))
            .await;
    result.unwrap_or_else(|_| {
        let detail = format!(
            "upstream login to {} timed out at its {} step after {}",
            db.upstream.addr,
            reached.as_str(),
            humantime::format_duration(timeout)
        );
        Err(LoginFailure::new(reached, "timed out", unavailable_at(db, reached, "timed out", detail)))
    })
}

async fn login_steps(
    db: &Database,
    role: &Role,
    client_params: &[(String, String)],
    keys: Option<&Authenticated>,
    timeout: Duration,
    reached: &mut Step,
) -> Result<UpstreamSession, LoginFailure> {
    let trust = db.upstream.trust;
    let mut stream = open_transport(&db.upstream, timeout).await.map_err(|e| {
        let error = unavailable_at(db, e.step, &e.public, e.detail);
        LoginFailure::new(e.step, e.public, error)
    })?;
    *reached = Step::Startup;
    let broken = |step: Step, detail: String| {
        LoginFailure::new(step, "the upstream did not answer as PostgreSQL", unavailable(db, detail))
    };
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
    stream
        .write_all(&out)
        .await
        .map_err(|e| LoginFailure::new(Step::Startup, io_words(&e), unavailable(db, e.to_string())))?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramClient> = None;
    let mut startup_frames = BytesMut::new();
    let mut key: Option<(i32, i32)> = None;
    let mut authenticated = false;
    // The upstream asked for the password, or (SCRAM) proved it holds its verifier.
    let mut proved = false;
    let mut method: Option<AuthMethod> = None;
    // Cleartext may travel inside TLS or a local socket only.
    let encrypted = !matches!(stream, UpstreamStream::Tcp(_));
    let login_failed = |public: &str, detail: String| {
        LoginFailure::new(
            Step::Authentication,
            public,
            SessionError::new(
                ErrorKind::Upstream,
                format!("upstream authentication for role {}: {detail}", role.name),
                Some(ErrorResponse::fatal(
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    format!("the proxy could not authenticate to database \"{}\"", db.name),
                )),
            ),
        )
    };
    loop {
        let step = if authenticated { Step::Startup } else { Step::Authentication };
        *reached = step;
        if startup_frames.len() > MAX_STARTUP_FRAMES {
            return Err(broken(
                step,
                format!("upstream sent more than {MAX_STARTUP_FRAMES} bytes of startup messages"),
            ));
        }
        let frame = read_frame(&mut stream, &mut buf).await.map_err(|e| broken(step, e))?;
        match frame.tag {
            tag::AUTHENTICATION => {
                let BackendMessage::Authentication(auth) =
                    BackendMessage::decode(&frame).map_err(|e| broken(step, e.to_string()))?
                else {
                    unreachable!("tag R decodes to Authentication")
                };
                out.clear();
                authenticated = matches!(auth, Authentication::Ok);
                if authenticated && trust.must_authenticate() && !proved {
                    return Err(login_failed(
                        "the upstream let Berth in without checking its password; registered \
                         upstreams must ask for one (password, md5 or scram-sha-256 in pg_hba.conf)",
                        "the upstream accepted the login without checking the password".into(),
                    ));
                }
                if let Some(asked) = AuthMethod::requested(&auth) {
                    if let UpstreamTrust::Registered { auth_method: registered, .. } = trust
                        && let Some(why) = upstream_auth::refusal(asked, registered, encrypted)
                    {
                        // Returned before `answer_auth`: not one byte derived from the
                        // password goes to an upstream that asked for it this way.
                        return Err(LoginFailure::new(
                            Step::Authentication,
                            why.clone(),
                            SessionError::new(
                                ErrorKind::Upstream,
                                format!("upstream authentication for role {} refused: {why}", role.name),
                                Some(ErrorResponse::fatal(
                                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                                    format!(
                                        "the proxy refused to authenticate to database \"{}\": {why}",
                                        db.name
                                    ),
                                )),
                            ),
                        ));
                    }
                    method.get_or_insert(asked);
                }
                proved |= matches!(
                    auth,
                    Authentication::CleartextPassword
                        | Authentication::Md5Password { .. }
                        | Authentication::SaslFinal(_)
                );
                answer_auth(auth, role, keys, &mut scram, &mut out)
                    .await
                    .map_err(|e| login_failed("the SCRAM exchange failed", e))?;
                if !out.is_empty() {
                    stream.write_all(&out).await.map_err(|e| {
                        LoginFailure::new(Step::Authentication, io_words(&e), unavailable(db, e.to_string()))
                    })?;
                }
            }
            tag::PARAMETER_STATUS if trust.refuses_superuser() => {
                if let Ok(BackendMessage::ParameterStatus { name, value }) = BackendMessage::decode(&frame)
                    && name == "is_superuser"
                    && value == "on"
                {
                    return Err(LoginFailure::new(
                        Step::Startup,
                        "the role is a superuser there; Berth does not route superuser sessions",
                        SessionError::new(
                            ErrorKind::Upstream,
                            format!("role {} is a superuser on the upstream; refused", role.name),
                            Some(ErrorResponse::fatal(
                                SqlState::INSUFFICIENT_PRIVILEGE,
                                format!(
                                    "role \"{}\" is a superuser upstream, and superuser sessions are not served here",
                                    role.name
                                ),
                            )),
                        ),
                    ));
                }
                frame.encode(&mut startup_frames);
            }
            tag::BACKEND_KEY_DATA => {
                if let Ok(BackendMessage::BackendKeyData { pid, secret }) = BackendMessage::decode(&frame) {
                    key = Some((pid, secret));
                }
            }
            tag::READY_FOR_QUERY => {
                let status = crate::server_frames::ready_status(&frame.body)
                    .map_err(|e| broken(Step::Startup, e.to_string()))?;
                let (pid, secret) =
                    key.ok_or_else(|| broken(Step::Startup, "upstream sent no BackendKeyData".into()))?;
                return Ok(UpstreamSession {
                    stream,
                    pid,
                    secret,
                    startup_frames,
                    status,
                    auth_method: method,
                });
            }
            tag::ERROR_RESPONSE => {
                let err = ErrorResponse::decode(&frame.body).map_err(|e| broken(step, e.to_string()))?;
                let public = match err.code() {
                    Some(code) => format!("the upstream refused with SQLSTATE {}", code.code()),
                    None => "the upstream refused".into(),
                };
                // A refusal of the proxy's own credentials means nothing to the client, who
                // authenticated fine: say what failed. Anything after authentication (a bad
                // `options` setting, a missing database) is the server's word for the client.
                if !authenticated && err.code().is_some_and(|c| c.class() == "28") {
                    let detail = err.to_string();
                    let mut f = login_failed("", detail);
                    f.public = public;
                    return Err(f);
                }
                let step = if authenticated || err.code().is_some_and(|c| c == SqlState::INVALID_CATALOG_NAME)
                {
                    Step::Startup
                } else {
                    Step::Authentication
                };
                return Err(LoginFailure::new(
                    step,
                    public,
                    SessionError::new(ErrorKind::Upstream, format!("upstream refused: {err}"), Some(err)),
                ));
            }
            _ => frame.encode(&mut startup_frames),
        }
    }
}

async fn answer_auth(
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
            let derivation = client.key_derivation(&data).map_err(|e| e.to_string())?;
            // A proof made with a cheap derivation lets whoever asked for it guess the password
            // offline about as fast as from an MD5 exchange, so an impostor at the upstream's
            // address could ask for i=1. Keys already known (iterations 0) derive nothing.
            let iterations = derivation.iterations();
            if iterations != 0 && iterations < MIN_UPSTREAM_ITERATIONS {
                return Err(format!(
                    "the upstream asks for {iterations} SCRAM iterations, fewer than the {MIN_UPSTREAM_ITERATIONS} \
                     a password proof is made with"
                ));
            }
            let keys = derive_keys(derivation).await?;
            let reply = client.client_final(keys).map_err(|e| e.to_string())?;
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

/// The fewest PBKDF2 iterations the proxy proves a stored password with: PostgreSQL's
/// default `scram_iterations`.
pub const MIN_UPSTREAM_ITERATIONS: u32 = 4096;

/// PBKDF2 at the cost the upstream chose (capped by `wire::scram::MAX_ITERATIONS`) runs on
/// the blocking pool: on a runtime thread, every session sharing that thread would wait for
/// each login to a slow-hashing upstream.
async fn derive_keys(derivation: KeyDerivation) -> Result<DerivedKeys, String> {
    let iterations = derivation.iterations();
    if iterations == 0 {
        return Ok(derivation.run());
    }
    tokio::task::spawn_blocking(move || {
        tracing::debug!(scram_iterations = iterations, "deriving the SCRAM keys of an upstream login");
        derivation.run()
    })
    .await
    .map_err(|e| format!("the SCRAM key derivation did not finish: {e}"))
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
