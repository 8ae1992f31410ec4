//! The cap on connections one source address may have logging in at once
//! (`max_unauthenticated_per_source`): over it a new connection is closed at accept, on
//! both ports and for direct TLS alike, while authenticated sessions and other addresses go
//! on; every way a login ends gives its place back.

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::*;
use proxy::{Limits, ProxySettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::StartupPacket;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Whether the proxy closed `sock` without a byte: EOF or a reset, within [`PATIENCE`].
async fn closed_at_once(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    // The SSLRequest a client sends first; the proxy reads nothing of it when it refuses.
    let _ = sock.write_all(&packet(&StartupPacket::SslRequest)).await;
    matches!(within("the refusal", sock.read(&mut buf)).await, Ok(0) | Err(_))
}

async fn unauthenticated(s: &Stack, from: IpAddr, n: usize) {
    eventually(&format!("{n} connections from {from} counted"), || {
        s.proxy.proxy.unauthenticated_connections(Some(from)) == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_over_the_cap_is_closed_while_sessions_and_other_sources_go_on() {
    const CAP: usize = 3;
    let settings = ProxySettings { max_unauthenticated_per_source: CAP, ..ProxySettings::default() };
    let s = stack_with(Limits::default(), settings).await;
    // A second direct listener on ::1, when this machine has IPv6 loopback.
    let v6 = match proxy::listen(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap();
            let serving = s.proxy.proxy.clone();
            tokio::spawn(async move { serving.serve(listener).await });
            Some(addr)
        }
        Err(e) => {
            eprintln!("skipping the ::1 part: cannot listen on ::1: {e}");
            None
        }
    };
    let direct = s.alice().await;
    let pooled = s.pooled_alice().await;

    // CAP half-open connections from 127.0.0.1: TCP only, an SSLRequest, a TLS handshake
    // that stops after the hello is answered.
    let mut half_open = vec![s.tcp().await];
    let mut ssl = s.tcp().await;
    ssl.write_all(&packet(&StartupPacket::SslRequest)).await.unwrap();
    half_open.push(ssl);
    half_open.push(TcpStream::connect(s.proxy.pooled_addr).await.unwrap());
    unauthenticated(&s, LOOPBACK, CAP).await;

    // The next one is closed at once, on either port and for direct TLS.
    assert!(closed_at_once(&mut s.tcp().await).await, "direct port");
    assert!(closed_at_once(&mut TcpStream::connect(s.proxy.pooled_addr).await.unwrap()).await, "pooled port");
    assert!(s.direct_tls(true).await.is_err(), "direct TLS");
    assert!(s.proxy.connect("app", "alice", PASSWORD).await.is_err(), "a full login from the capped source");
    assert!(s.proxy.proxy.metrics_text().contains("berth_unauthenticated_refused_total 4"));

    // Authenticated sessions are not counted and go on.
    let n: i32 = direct.query_one("select 1", &[]).await.unwrap().get(0);
    let m: i32 = pooled.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!((n, m), (1, 2));

    // Another source address has its own count.
    if let Some(addr) = v6 {
        let mut config = tokio_postgres::Config::new();
        config.host("localhost").hostaddr(addr.ip()).port(addr.port()).dbname("app").user("alice");
        config.password(PASSWORD).ssl_mode(tokio_postgres::config::SslMode::Require);
        let (c, _conn) = within("login over ::1", s.proxy.connect_with(config)).await.unwrap();
        let one: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        assert_eq!(s.proxy.proxy.unauthenticated_connections(Some(LOOPBACK)), CAP);
    }

    // Once the half-open ones close, 127.0.0.1 logs in again.
    drop(half_open);
    unauthenticated(&s, LOOPBACK, 0).await;
    s.assert_serving().await;
    let (c, _conn) = s.proxy.connect_pooled("app", "alice", PASSWORD).await.unwrap();
    c.query_one("select 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_login_ends_gives_its_place_back() {
    let settings = ProxySettings { auth_timeout: Duration::from_secs(1), ..ProxySettings::default() };
    let s = stack_with(Limits::default(), settings).await;
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let (direct, pooled) = (s.proxy.addr, s.proxy.pooled_addr);
        let addr = if i % 2 == 0 { direct } else { pooled };
        let tls = s.proxy.client_tls();
        tasks.push(tokio::spawn(async move {
            let Ok(mut sock) = TcpStream::connect(addr).await else { return };
            match i % 5 {
                // Closed at once.
                0 => {}
                // An SSLRequest, then gone.
                1 => {
                    let _ = sock.write_all(&packet(&StartupPacket::SslRequest)).await;
                }
                // Half a startup packet, left to the authentication timeout.
                2 => {
                    let _ = sock.write_all(&alice_startup(wire::ProtocolVersion::V3_0)[..6]).await;
                    let _ = sock.read(&mut [0u8; 64]).await;
                }
                // A TLS handshake dropped halfway.
                3 => {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let _ = sock.write_all(&packet(&StartupPacket::SslRequest)).await;
                    let _ = sock.read(&mut [0u8; 1]).await;
                    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
                    let _ =
                        tokio::time::timeout(Duration::from_millis(5), connector.connect(name, sock)).await;
                }
                // A wrong password.
                _ => {
                    drop(sock);
                    let mut c = tokio_postgres::Config::new();
                    c.host("localhost").hostaddr(addr.ip()).port(addr.port()).dbname("app").user("alice");
                    c.password("wrong").ssl_mode(tokio_postgres::config::SslMode::Require);
                    let _ = c.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await;
                }
            }
        }));
    }
    for t in tasks {
        within("an aborted login", t).await.unwrap();
    }
    unauthenticated(&s, LOOPBACK, 0).await;
    assert!(s.proxy.proxy.metrics_text().contains("berth_unauthenticated_connections 0"));
    s.assert_serving().await;
}
