//! A registered upstream is the tenant's to run, and anything may answer on its port. These
//! tests route to an impostor (a TCP listener speaking just enough of the protocol: startup,
//! SCRAM for the route's password, simple queries) and make it misbehave. What it sends ends
//! only the sessions on it, with 08P01 where the proxy can still say so; its connection is
//! closed, never pooled; the proxy neither panics nor stops serving other routes.

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::ThreadId;

use bytes::{BufMut, BytesMut};
use common::{PASSWORD, Stack, message, sqlstate, stack, within};
use proxy::routes::UpstreamTrust;
use proxy::{Limits, RouteTable, UpstreamAddr};
use testkit::raw::RawConn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use wire::backend::{Authentication, BackendMessage, TransactionStatus};
use wire::frontend::{FrontendMessage, SaslInitialResponse};
use wire::scram::{ChannelBinding, ScramServer, ScramVerifier};
use wire::{Frame, StartupPacket, parse_frame, parse_startup};

const SALT: &[u8] = b"impostor's salt!";

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// Threads on which the proxy logged an upstream SCRAM key derivation.
static DERIVATIONS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

/// Counts panics anywhere in the process (a session task's panic is otherwise only a line
/// on stderr and a closed socket) and records where upstream SCRAM keys were derived. Runs
/// before the stack so that its subscriber, not testkit's, is the global one.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        use tracing_subscriber::prelude::*;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(filter))
            .with(Derivations)
            .try_init();
    });
}

struct Derivations;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Derivations {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target().starts_with("proxy") && meta.fields().field("scram_iterations").is_some() {
            DERIVATIONS.lock().unwrap().push(std::thread::current().id());
        }
    }
}

fn assert_no_panic() {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked (see the output above)");
}

/// What the impostor does in answer to a query containing a marker.
#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    /// Waits until the test says go on.
    Wait(Arc<Notify>),
    /// Hangs up.
    Close,
}

#[derive(Debug, PartialEq)]
enum Seen {
    /// The proxy sent its SCRAM client-final message.
    ClientFinal,
    /// The proxy closed the connection.
    ProxyClosed,
}

struct Impostor {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

type Scripts = Arc<Vec<(&'static str, Vec<Step>)>>;

impl Impostor {
    /// Listens on 127.0.0.1:0. Logins run SCRAM against `verifier` (the server-first message
    /// names its salt and iteration count); a query containing a marker of `scripts` gets
    /// that script, any other query `SET` and ReadyForQuery.
    async fn start(verifier: ScramVerifier, scripts: Vec<(&'static str, Vec<Step>)>) -> Impostor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let scripts: Scripts = Arc::new(scripts);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, verifier.clone(), Arc::clone(&scripts), tx.clone()));
            }
        });
        Impostor { addr, seen }
    }

    async fn next(&mut self) -> Seen {
        within("the impostor to see something", self.seen.recv()).await.expect("impostor running")
    }

    /// Waits until the proxy has closed one of the impostor's connections.
    async fn proxy_closed(&mut self) {
        while self.next().await != Seen::ProxyClosed {}
    }
}

async fn read_frame(tcp: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = parse_frame(buf, 64 << 20).ok()? {
            return Some(f);
        }
        if tcp.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

async fn serve(
    mut tcp: TcpStream,
    verifier: ScramVerifier,
    scripts: Scripts,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let closed = || {
        let _ = seen.send(Seen::ProxyClosed);
    };
    let mut buf = BytesMut::new();
    loop {
        match parse_startup(&mut buf) {
            Ok(Some(StartupPacket::Startup(_))) => break,
            Ok(Some(_)) => {
                let _ = tcp.write_all(b"N").await;
            }
            Ok(None) => {
                if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return closed();
                }
            }
            Err(_) => return,
        }
    }
    let mut server = ScramServer::new(verifier, ChannelBinding::None);
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Sasl { mechanisms: server.mechanisms() }).encode(&mut out);
    let _ = tcp.write_all(&out).await;
    let Some(f) = read_frame(&mut tcp, &mut buf).await else { return closed() };
    let initial = SaslInitialResponse::decode(&f.body).unwrap();
    let first = server.handle_client_first(&initial.mechanism, &initial.data.unwrap_or_default()).unwrap();
    out.clear();
    BackendMessage::Authentication(Authentication::SaslContinue(first.into_bytes().into())).encode(&mut out);
    let _ = tcp.write_all(&out).await;
    let Some(f) = read_frame(&mut tcp, &mut buf).await else { return closed() };
    let _ = seen.send(Seen::ClientFinal);
    out.clear();
    let Ok(last) = server.handle_client_final(&f.body) else {
        let refusal =
            wire::ErrorResponse::fatal(wire::SqlState::INVALID_PASSWORD, "password authentication failed");
        let _ = tcp.write_all(&refusal.to_error_message()).await;
        return;
    };
    for m in [
        BackendMessage::Authentication(Authentication::SaslFinal(last.into_bytes().into())),
        BackendMessage::Authentication(Authentication::Ok),
        BackendMessage::ParameterStatus { name: "server_version".into(), value: "17.0".into() },
        BackendMessage::ParameterStatus { name: "is_superuser".into(), value: "off".into() },
        BackendMessage::BackendKeyData { pid: 4242, secret: 7 },
        BackendMessage::ReadyForQuery(TransactionStatus::Idle),
    ] {
        m.encode(&mut out);
    }
    let _ = tcp.write_all(&out).await;
    loop {
        let Some(f) = read_frame(&mut tcp, &mut buf).await else { return closed() };
        match f.tag {
            b'Q' => {
                let Ok(FrontendMessage::Query { query }) = FrontendMessage::decode(&f) else { return };
                match scripts.iter().find(|(marker, _)| query.contains(marker)) {
                    Some((_, steps)) => {
                        for step in steps {
                            match step {
                                Step::Send(bytes) => {
                                    let _ = tcp.write_all(bytes).await;
                                }
                                Step::Wait(go) => within("the test's go-ahead", go.notified()).await,
                                Step::Close => return,
                            }
                        }
                    }
                    None => {
                        out.clear();
                        BackendMessage::CommandComplete { tag: "SET".into() }.encode(&mut out);
                        BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
                        let _ = tcp.write_all(&out).await;
                    }
                }
            }
            b'X' => return closed(),
            _ => {}
        }
    }
}

/// Routes `hostile` to the impostor as a registered upstream, next to the stack's `app`.
fn route_to(s: &Stack, impostor: &Impostor) {
    let mut hostile = testkit::route("hostile", &s.pg, "hostile", &[("alice", PASSWORD)], Limits::default());
    hostile.upstream.addr = UpstreamAddr::Tcp { host: "127.0.0.1".into(), port: impostor.addr.port() };
    hostile.upstream.trust = UpstreamTrust::Registered { private_denied: false, auth_method: None };
    let app = testkit::route("app", &s.pg, "app", &[("alice", PASSWORD)], Limits::default());
    s.proxy.proxy.set_routes(RouteTable::new([app, hostile]));
}

/// A CommandComplete for `SELECT 1`, then `tail`.
fn select_then(tail: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    BackendMessage::CommandComplete { tag: "SELECT 1".into() }.encode(&mut out);
    out.extend_from_slice(tail);
    out.to_vec()
}

async fn connect(
    s: &Stack,
    pooled: bool,
) -> Result<(tokio_postgres::Client, common::ConnTask), tokio_postgres::Error> {
    let login = async {
        if pooled {
            s.proxy.connect_pooled("hostile", "alice", PASSWORD).await
        } else {
            s.proxy.connect("hostile", "alice", PASSWORD).await
        }
    };
    within("login", login).await
}

/// A query whose answer breaks the protocol ends the session with 08P01.
async fn assert_protocol_violation(s: &Stack, pooled: bool, query: &str) {
    let (c, conn) = connect(s, pooled).await.unwrap();
    let e = within(query, c.simple_query(query)).await.expect_err("the proxy must end the session");
    assert_eq!(sqlstate(&e), Some("08P01"), "{query} (pooled: {pooled}): {e}");
    assert!(message(&e).contains("server sent an invalid message"), "{query}: {}", message(&e));
    let _ = within("the session's end", conn).await;
}

/// Sessions through both ports on the healthy route still run queries.
async fn assert_serving(s: &Stack) {
    s.assert_serving().await;
    let c = within("pooled session", s.pooled_alice()).await;
    let n: i32 = within("select", c.query_one("select 41 + 1", &[])).await.unwrap().get(0);
    assert_eq!(n, 42);
}

#[tokio::test]
async fn a_malformed_ready_for_query_ends_only_its_session_with_08p01() {
    init();
    let s = stack().await;
    let mut imp = Impostor::start(
        ScramVerifier::derive(PASSWORD, SALT, 4096),
        vec![
            // Length 4: no status byte at all (the proxy once read past the frame and panicked).
            ("no status", vec![Step::Send(select_then(b"Z\0\0\0\x04"))]),
            ("unknown status", vec![Step::Send(select_then(b"Z\0\0\0\x05X"))]),
            ("two statuses", vec![Step::Send(select_then(b"Z\0\0\0\x06II"))]),
        ],
    )
    .await;
    route_to(&s, &imp);
    for pooled in [false, true] {
        for query in ["select 'no status'", "select 'unknown status'", "select 'two statuses'"] {
            assert_protocol_violation(&s, pooled, query).await;
            // Its connection is closed: on the pooled port, not handed to the next client.
            imp.proxy_closed().await;
        }
    }
    assert_serving(&s).await;
    assert_no_panic();
}

/// An ErrorResponse's first `head` bytes, declaring a body of `body` bytes.
fn error_head(body: usize, head: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(b'E');
    out.put_i32(body as i32 + 4);
    out.extend_from_slice(b"SERROR\0C22000\0M");
    out.resize(head, b'x');
    out.to_vec()
}

#[tokio::test]
async fn server_messages_are_never_buffered_without_bound() {
    init();
    let s = stack().await;
    let go = Arc::new(Notify::new());
    // A ReadyForQuery declaring a gigabyte, of which nothing follows: the proxy used to wait
    // for all of it.
    let huge_ready = select_then(&[b'Z', 0x40, 0, 0, 4]);
    // An ErrorResponse of 64 MiB: passed on as it arrives, as any large message is, rather
    // than held until it is whole.
    let head = error_head(64 << 20, 64 << 10);
    let mut imp = Impostor::start(
        ScramVerifier::derive(PASSWORD, SALT, 4096),
        vec![
            ("huge ready", vec![Step::Send(huge_ready)]),
            ("huge error", vec![Step::Send(head.clone()), Step::Wait(Arc::clone(&go)), Step::Close]),
        ],
    )
    .await;
    route_to(&s, &imp);
    for pooled in [false, true] {
        assert_protocol_violation(&s, pooled, "select 'huge ready'").await;
        imp.proxy_closed().await;

        let addr = if pooled { s.proxy.pooled_addr } else { s.proxy.addr };
        let login = RawConn::login(addr, s.proxy.client_tls(), "hostile", "alice", PASSWORD);
        let mut raw = within("raw login", login).await.unwrap();
        raw.send(&[FrontendMessage::Query { query: "select 'huge error'".into() }]).await.unwrap();
        within("the head of the error, before the rest was sent", async {
            while raw.reader.buffered().len() < head.len() {
                assert!(raw.reader.read_more().await.unwrap() > 0, "closed before the error's head arrived");
            }
        })
        .await;
        assert_eq!(&raw.reader.buffered()[..head.len()], &head[..], "pooled: {pooled}");
        go.notify_one();
        // The impostor hangs up in the middle of it: the client's session ends too.
        within("the session's end", async { while raw.reader.read_more().await.is_ok_and(|n| n > 0) {} })
            .await;
    }
    assert_serving(&s).await;
    assert_no_panic();
}

#[tokio::test]
async fn upstream_scram_iterations_are_bounded_both_ways_and_derived_off_the_runtime() {
    init();
    let s = stack().await;
    // A million iterations, which the proxy used to accept: a second of a core per login.
    let greedy = ScramVerifier {
        iterations: 1_000_000,
        salt: SALT.to_vec(),
        stored_key: [0; 32],
        server_key: [0; 32],
    };
    let mut imp = Impostor::start(greedy, vec![]).await;
    route_to(&s, &imp);
    let e = common::refused(connect(&s, false).await, "a million iterations");
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert!(message(&e).contains("could not authenticate"), "{}", message(&e));
    assert_eq!(imp.next().await, Seen::ProxyClosed, "the proxy derived keys for a million iterations");

    // Too few is refused as well, before any proof is sent: a proof made with one iteration
    // is as cheap to guess the password from as an MD5 exchange.
    for cheap in [1, 4095] {
        let mut imp = Impostor::start(ScramVerifier::derive(PASSWORD, SALT, cheap), vec![]).await;
        route_to(&s, &imp);
        let e = common::refused(connect(&s, false).await, "too few iterations");
        assert_eq!(sqlstate(&e), Some("28000"), "{e}");
        assert_eq!(
            imp.next().await,
            Seen::ProxyClosed,
            "the proxy sent a proof made with {cheap} iterations"
        );
    }

    // At the cap the login goes through, and PBKDF2 ran on a blocking thread: this test's
    // runtime has one thread, and everything else of the proxy runs on it.
    let verifier = ScramVerifier::derive(PASSWORD, SALT, wire::scram::MAX_ITERATIONS);
    let mut imp = Impostor::start(verifier, vec![]).await;
    route_to(&s, &imp);
    DERIVATIONS.lock().unwrap().clear();
    let (c, _conn) = connect(&s, false).await.unwrap();
    assert_eq!(imp.next().await, Seen::ClientFinal);
    let threads = DERIVATIONS.lock().unwrap().clone();
    assert!(!threads.is_empty(), "no upstream SCRAM key derivation was logged");
    let runtime = std::thread::current().id();
    assert!(threads.iter().all(|t| *t != runtime), "PBKDF2 ran on the runtime's thread");
    drop(c);
    assert_serving(&s).await;
    assert_no_panic();
}
