//! Fixtures shared by the proxy's integration tests: one instance with a role `alice`
//! owning database `app`, routed as `app` through a proxy on port 0; clients that reach it
//! through tokio-postgres; and a raw client for what real drivers never send (hand-made
//! startup packets, garbage, half-finished handshakes).

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proxy::{Limits, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wire::{ErrorResponse, Frame, ProtocolVersion, StartupMessage, StartupPacket, parse_frame};

pub const PASSWORD: &str = "correct horse battery staple";

/// How long a test waits for something that should happen promptly. It only keeps a broken
/// proxy from hanging the run; no test asserts how long anything took.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub type ConnTask = JoinHandle<Result<(), tokio_postgres::Error>>;

pub struct Stack {
    pub pg: TestPg,
    pub proxy: TestProxy,
}

pub async fn stack_with(limits: Limits, settings: ProxySettings) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().expect("test instance");
    pg.create_role_and_db("alice").await.expect("role");
    pg.superuser()
        .await
        .expect("superuser")
        .batch_execute("CREATE DATABASE app OWNER alice")
        .await
        .expect("database app");
    let routes = RouteTable::new([route("app", &pg, "app", &[("alice", PASSWORD)], limits)]);
    let proxy = TestProxy::start(routes, settings).await.expect("proxy");
    Stack { pg, proxy }
}

pub async fn stack() -> Stack {
    stack_with(Limits::default(), ProxySettings::default()).await
}

/// Replaces the instance's pg_hba.conf with `lines` and waits until the postmaster uses it.
pub async fn set_hba(pg: &TestPg, lines: &str) {
    let su = pg.superuser().await.expect("superuser");
    let file: String = su.query_one("SHOW hba_file", &[]).await.expect("hba_file").get(0);
    std::fs::write(&file, lines).expect("write pg_hba.conf");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    // pg_hba_file_rules shows what the postmaster will use once reloaded.
    let rules: i64 = su.query_one("SELECT count(*) FROM pg_hba_file_rules", &[]).await.expect("rules").get(0);
    assert_eq!(rules as usize, lines.lines().count());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// Awaits `f`, failing the test if it has not finished within [`PATIENCE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing happened within {PATIENCE:?}"),
    }
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The SQLSTATE of a tokio-postgres error, when the server (or the proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

pub fn message(e: &tokio_postgres::Error) -> &str {
    e.as_db_error().map_or("", |d| d.message())
}

/// The error of a login that must fail.
pub fn refused<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match r {
        Ok(_) => panic!("{what}: the login succeeded"),
        Err(e) => e,
    }
}

/// Waits for a connection task to end and returns the error it ended with.
pub async fn connection_error(conn: ConnTask) -> tokio_postgres::Error {
    match within("connection end", conn).await.expect("connection task panicked") {
        Ok(()) => panic!("the connection ended cleanly; expected the proxy to end it with an error"),
        Err(e) => e,
    }
}

impl Stack {
    pub fn config(&self) -> tokio_postgres::Config {
        self.proxy.config("app", "alice", PASSWORD)
    }

    pub async fn alice(&self) -> Client {
        self.alice_with_conn().await.0
    }

    pub async fn alice_with_conn(&self) -> (Client, ConnTask) {
        self.proxy.connect("app", "alice", PASSWORD).await.expect("connect as alice")
    }

    /// The same through the pooled listener.
    pub async fn pooled_alice(&self) -> Client {
        self.pooled_alice_with_conn().await.0
    }

    pub async fn pooled_alice_with_conn(&self) -> (Client, ConnTask) {
        self.proxy.connect_pooled("app", "alice", PASSWORD).await.expect("connect as alice (pooled)")
    }

    /// A fresh session through the proxy runs a query: the proxy is still serving.
    pub async fn assert_serving(&self) {
        let c = within("fresh session", self.alice()).await;
        let n: i32 = within("select", c.query_one("select 41 + 1", &[])).await.expect("select").get(0);
        assert_eq!(n, 42);
    }

    /// Connects and drives the connection with `poll_message`, handing notices and
    /// notifications to the returned channel.
    pub async fn connect_with_messages(
        &self,
        config: tokio_postgres::Config,
    ) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>, ConnTask) {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.proxy.client_tls());
        let (client, mut conn) = config.connect(tls).await.expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(m)) => {
                        let _ = tx.send(m);
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        });
        (client, rx, task)
    }

    pub async fn tcp(&self) -> TcpStream {
        within("TCP connect", TcpStream::connect(self.proxy.addr)).await.expect("TCP connect")
    }

    pub fn tls_connector(&self, alpn: bool) -> TlsConnector {
        let mut config = self.proxy.client_tls();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        TlsConnector::from(Arc::new(config))
    }

    /// TCP, SSLRequest, `S`, TLS handshake verified against the proxy's CA.
    pub async fn tls_via_ssl_request(&self) -> Raw<TlsStream<TcpStream>> {
        let tls = testkit::raw::tls_connect(self.proxy.addr, self.proxy.client_tls());
        Raw::new(within("TLS connect", tls).await.expect("TLS connect"))
    }

    /// PostgreSQL 17 direct TLS: the ClientHello is the first thing on the connection.
    pub async fn direct_tls(&self, alpn: bool) -> std::io::Result<Raw<TlsStream<TcpStream>>> {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
        let tcp = self.tcp().await;
        let tls = within("TLS handshake", self.tls_connector(alpn).connect(name, tcp)).await?;
        Ok(Raw::new(tls))
    }
}

/// Encodes a startup-phase packet.
pub fn packet(p: &StartupPacket) -> BytesMut {
    let mut buf = BytesMut::new();
    p.encode(&mut buf);
    buf
}

/// A StartupMessage for alice on `app` with the given protocol version.
pub fn alice_startup(version: ProtocolVersion) -> BytesMut {
    packet(&StartupPacket::Startup(StartupMessage {
        version,
        params: vec![("user".into(), "alice".into()), ("database".into(), "app".into())],
    }))
}

/// A byte stream spoken to by hand, with a buffer for the frames read from it.
pub struct Raw<S> {
    pub stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(stream: S) -> Self {
        Raw { stream, buf: BytesMut::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", async {
            self.stream.write_all(bytes).await.expect("write");
            self.stream.flush().await.expect("flush");
        })
        .await
    }

    /// The next frame, or `None` once the peer has closed (EOF or reset).
    pub async fn frame(&mut self) -> Option<Frame> {
        within("a frame or the end of the connection", async {
            loop {
                if let Some(f) = parse_frame(&mut self.buf, 64 << 20).expect("well-framed reply") {
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => {
                        assert!(self.buf.is_empty(), "connection closed mid-frame: {:?}", self.buf);
                        return None;
                    }
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Expects an ErrorResponse and then the end of the connection.
    pub async fn fatal(&mut self) -> ErrorResponse {
        let f = self.frame().await.expect("an ErrorResponse before the connection closes");
        assert_eq!(f.tag, b'E', "expected ErrorResponse, got {:?}", f);
        let e = ErrorResponse::decode(&f.body).expect("decodable ErrorResponse");
        assert_eq!(e.severity(), Some("FATAL"), "{e:?}");
        self.closed().await;
        e
    }

    /// Expects the peer to close without sending anything more.
    pub async fn closed(&mut self) {
        if let Some(f) = self.frame().await {
            panic!("expected the connection to close, got {f:?}");
        }
    }
}

/// Lower-case hex, as PostgreSQL's `md5()` prints it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until a server session is running `query` (as `pg_stat_activity` shows it), so a
/// cancel or a timeout that follows has something to act on.
pub async fn wait_until_running(pg: &TestPg, query: &str) -> i32 {
    let su = pg.superuser().await.expect("superuser");
    within("the query to start", async {
        loop {
            let row = su
                .query_opt(
                    "select pid from pg_stat_activity where query = $1 and state = 'active' limit 1",
                    &[&query],
                )
                .await
                .expect("pg_stat_activity");
            if let Some(row) = row {
                return row.get(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A route `name` to a stand-in upstream on 127.0.0.1:`port` (a test's own fake server),
/// for alice with [`PASSWORD`], the upstream logging in without a password.
pub fn route_to_port(name: &str, port: u16) -> proxy::Database {
    use proxy::routes::{Role, Upstream, UpstreamAddr};
    proxy::Database {
        name: name.into(),
        upstream: Upstream {
            addr: UpstreamAddr::Tcp { host: "127.0.0.1".into(), port },
            dbname: name.into(),
            ssl_mode: proxy::SslMode::Disable,
            ssl_root_cert: None,
            tls: None,
            trust: Default::default(),
        },
        roles: std::collections::HashMap::from([(
            "alice".to_owned(),
            Role {
                name: "alice".into(),
                verifiers: vec![wire::scram::ScramVerifier::generate(PASSWORD)],
                upstream_password: Some(proxy::secret::Secret::new(PASSWORD)),
            },
        )]),
        limits: Limits::default(),
        pool: proxy::PoolConfig::default(),
        api_key_access: None,
        auth_query: None,
        close_sessions_on_removal: false,
    }
}

/// A stand-in upstream on 127.0.0.1 that logs anyone in without a password and then hands
/// each connection to `serve` (which sees what the proxy sends after the login). Its port.
pub async fn fake_upstream<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use wire::backend::{Authentication, BackendMessage, TransactionStatus};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        for pid in 1..200 {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let serve = Arc::clone(&serve);
            tokio::spawn(async move {
                // The StartupMessage.
                let mut buf = [0u8; 4096];
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut out = BytesMut::new();
                BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
                BackendMessage::ParameterStatus { name: "server_version".into(), value: "15.0".into() }
                    .encode(&mut out);
                BackendMessage::BackendKeyData { pid, secret: 7 }.encode(&mut out);
                BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
                if sock.write_all(&out).await.is_ok() {
                    serve(sock).await;
                }
            });
        }
    });
    port
}

/// Answers a setting the proxy applies (a small Query) as a fake upstream would.
pub async fn answer_setting(sock: &mut TcpStream) -> std::io::Result<()> {
    use wire::backend::{BackendMessage, TransactionStatus};
    let mut out = BytesMut::new();
    BackendMessage::CommandComplete { tag: "SET".into() }.encode(&mut out);
    BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
    sock.write_all(&out).await
}
