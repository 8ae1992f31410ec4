//! What the proxy does with clients that break the startup protocol or its limits: every
//! case ends in a PostgreSQL-shaped FATAL (or a plain close where PostgreSQL also sends
//! nothing), never a hang, and the proxy keeps serving others afterwards.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{Raw, alice_startup, message, packet, sqlstate, stack, stack_with, within};
use proxy::{Limits, ProxySettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wire::backend::{Authentication, BackendMessage};
use wire::{ProtocolVersion, StartupMessage, StartupPacket};

#[tokio::test]
async fn plaintext_startup_when_tls_is_required() {
    let s = stack().await;
    let mut raw = Raw::new(s.tcp().await);
    raw.send(&alice_startup(ProtocolVersion::V3_0)).await;
    let e = raw.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("28000".into()), "{e:?}");
    assert!(e.message().unwrap().contains("TLS is required"), "{e:?}");

    let mut config = s.config();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let err = common::refused(s.proxy.connect_with(config).await, "plaintext login refused");
    assert_eq!(sqlstate(&err), Some("28000"), "{err}");
    assert!(message(&err).contains("TLS is required"));
    s.assert_serving().await;
}

#[tokio::test]
async fn truncated_startup_packet() {
    let s = stack().await;
    let mut raw = Raw::new(s.tcp().await);
    let mut buf = BytesMut::new();
    buf.put_i32(100);
    buf.put_i32(0x0003_0000);
    buf.put_slice(b"user\0alice\0");
    buf.put_u8(0);
    assert_eq!(buf.len(), 20);
    raw.send(&buf).await;
    raw.stream.shutdown().await.unwrap();
    // PostgreSQL logs "incomplete startup packet" and closes without a word; so may we.
    if let Some(f) = raw.frame().await {
        assert_eq!(f.tag, b'E');
        let e = wire::ErrorResponse::decode(&f.body).unwrap();
        assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()));
        raw.closed().await;
    }
    eventually_no_connections(&s).await;
    s.assert_serving().await;
}

async fn eventually_no_connections(s: &common::Stack) {
    common::eventually("the proxy to let go of the connection", || s.proxy.proxy.connections() == 0).await;
}

#[tokio::test]
async fn startup_packet_without_terminator() {
    let s = stack().await;
    let mut raw = Raw::new(s.tcp().await);
    let mut body = BytesMut::new();
    body.put_i32(0x0003_0000);
    body.put_slice(b"user\0alice\0database\0app\0"); // no final NUL
    let mut buf = BytesMut::new();
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(&body);
    raw.send(&buf).await;
    let e = raw.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");
    assert!(e.message().unwrap().starts_with("invalid startup packet"), "{e:?}");
    s.assert_serving().await;
}

#[tokio::test]
async fn startup_length_of_two_gibibytes() {
    let s = stack().await;
    for len in [0x8000_0000u32, 0x7fff_ffff, 3, 10_001] {
        let mut raw = Raw::new(s.tcp().await);
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        buf.put_i32(0x0003_0000);
        raw.send(&buf).await;
        let e = raw.fatal().await;
        assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{len:#x}: {e:?}");
        assert!(e.message().unwrap().starts_with("invalid length of startup packet"), "{len:#x}: {e:?}");
    }
    s.assert_serving().await;
}

fn expect_unsupported(e: &wire::ErrorResponse, version: &str) {
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("0A000".into()), "{e:?}");
    assert_eq!(
        e.message(),
        Some(format!("unsupported frontend protocol {version}: server supports 3.0 to 3.0").as_str())
    );
}

#[tokio::test]
async fn unsupported_protocol_versions() {
    let s = stack().await;
    // Inside TLS (the proxy requires it).
    for (major, minor) in [(2, 0), (4, 0), (1, 2)] {
        let mut tls = s.tls_via_ssl_request().await;
        tls.send(&alice_startup(ProtocolVersion { major, minor })).await;
        expect_unsupported(&tls.fatal().await, &format!("{major}.{minor}"));
    }
    s.assert_serving().await;

    // In plaintext, where TLS is optional.
    let s = stack_with(Limits::default(), ProxySettings { require_tls: false, ..Default::default() }).await;
    for (major, minor) in [(2, 0), (4, 0)] {
        let mut raw = Raw::new(s.tcp().await);
        raw.send(&alice_startup(ProtocolVersion { major, minor })).await;
        expect_unsupported(&raw.fatal().await, &format!("{major}.{minor}"));
    }
    // Plaintext logins work on this proxy.
    let mut config = s.config();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (c, _conn) = s.proxy.connect_with(config).await.unwrap();
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

fn startup_3_2() -> BytesMut {
    packet(&StartupPacket::Startup(StartupMessage {
        version: ProtocolVersion { major: 3, minor: 2 },
        params: vec![
            ("user".into(), "alice".into()),
            ("database".into(), "app".into()),
            ("_pq_.no_such_extension".into(), "on".into()),
        ],
    }))
}

#[tokio::test]
async fn protocol_3_2_is_negotiated_down_as_postgresql_does() {
    let s = stack().await;
    let mut tls = s.tls_via_ssl_request().await;
    tls.send(&startup_3_2()).await;
    let v = tls.frame().await.expect("NegotiateProtocolVersion");
    assert_eq!(v.tag, b'v', "{v:?}");
    let BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized } =
        BackendMessage::decode(&v).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(newest_minor & 0xffff, 0, "minor version 0");
    assert_eq!(unrecognized, vec!["_pq_.no_such_extension".to_owned()]);
    let r = tls.frame().await.expect("AuthenticationSASL");
    assert!(
        matches!(
            BackendMessage::decode(&r).unwrap(),
            BackendMessage::Authentication(Authentication::Sasl { .. })
        ),
        "{r:?}"
    );

    // The same packet straight to the server: the proxy answers with the server's bytes.
    let path = s.pg.socket_dir().join(format!(".s.PGSQL.{}", s.pg.port()));
    let mut direct = Raw::new(UnixStream::connect(path).await.unwrap());
    direct.send(&startup_3_2()).await;
    let server_v = direct.frame().await.expect("the server's NegotiateProtocolVersion");
    assert_eq!(server_v.tag, b'v');
    assert_eq!(v.body, server_v.body, "NegotiateProtocolVersion differs from PostgreSQL's");
}

#[tokio::test]
async fn gssenc_request_is_declined_then_tls_works() {
    let s = stack().await;
    let mut raw = Raw::new(s.tcp().await);
    raw.send(&packet(&StartupPacket::GssEncRequest)).await;
    let mut answer = [0u8; 1];
    within("GSSENCRequest answer", raw.stream.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer[0], b'N');
    raw.send(&packet(&StartupPacket::SslRequest)).await;
    within("SSLRequest answer", raw.stream.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer[0], b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within("TLS", s.tls_connector(false).connect(name, raw.stream)).await.unwrap();
    let mut tls = Raw::new(tls);
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    let r = tls.frame().await.expect("AuthenticationSASL");
    assert_eq!((r.tag, &r.body[..4]), (b'R', &10i32.to_be_bytes()[..]));
}

#[tokio::test]
async fn garbage_after_the_tls_handshake() {
    let s = stack().await;
    let mut tls = s.tls_via_ssl_request().await;
    let mut garbage = vec![0xffu8];
    garbage.extend((0..512).map(|_| rand::random::<u8>()));
    tls.send(&garbage).await;
    let e = tls.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");

    // An HTTP request where a StartupMessage should be.
    let mut tls = s.tls_via_ssl_request().await;
    tls.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let e = tls.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");

    // A second SSLRequest inside TLS.
    let mut tls = s.tls_via_ssl_request().await;
    tls.send(&packet(&StartupPacket::SslRequest)).await;
    let e = tls.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");

    // Garbage in the middle of the SCRAM exchange.
    let mut tls = s.tls_via_ssl_request().await;
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    assert_eq!(tls.frame().await.expect("AuthenticationSASL").tag, b'R');
    tls.send(b"p\x7f\xff\xff\xffgarbage").await;
    let e = tls.fatal().await;
    assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");
    s.assert_serving().await;
}

#[tokio::test]
async fn silent_clients_are_dropped_at_the_auth_timeout() {
    let settings = ProxySettings { auth_timeout: Duration::from_millis(500), ..Default::default() };
    let s = stack_with(Limits::default(), settings).await;
    // Says nothing at all.
    let mut raw = Raw::new(s.tcp().await);
    raw.closed().await;
    // Stops after the TLS handshake.
    let mut tls = s.tls_via_ssl_request().await;
    tls.closed().await;
    // Stops in the middle of SCRAM.
    let mut tls = s.tls_via_ssl_request().await;
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    assert_eq!(tls.frame().await.expect("AuthenticationSASL").tag, b'R');
    tls.closed().await;
    common::eventually("connections released", || s.proxy.proxy.connections() == 0).await;
    // A client that does its part in time is unaffected.
    s.assert_serving().await;
}

#[tokio::test]
async fn oversized_message_after_login() {
    const LIMIT: usize = 1 << 20;
    let settings = ProxySettings { max_message_size: LIMIT, ..Default::default() };
    let s = stack_with(Limits::default(), settings).await;
    let c = s.alice().await;
    // Under the limit: fine.
    let small = "x".repeat(LIMIT - 1024);
    let rows = c.simple_query(&format!("select length('{small}')")).await.unwrap();
    assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1047552")));
    // Over it: the session ends with a protocol violation that names the limit.
    let big = "x".repeat(2 * LIMIT);
    let err =
        within("oversized query", c.simple_query(&format!("select length('{big}')"))).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08P01"), "{err}");
    assert!(message(&err).contains(&format!("exceeds the limit of {LIMIT} bytes")), "{err}");
    assert!(
        within("closed", async {
            while !c.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        })
        .await
    );
    s.assert_serving().await;
}

#[tokio::test]
async fn oversized_startup_packet_sent_whole() {
    let s = stack().await;
    // A realistic client: the whole 64 kB packet is written before the answer is read.
    let big = "x".repeat(64 * 1024);
    let startup = packet(&StartupPacket::Startup(StartupMessage {
        version: ProtocolVersion::V3_0,
        params: vec![("user".into(), "alice".into()), ("application_name".into(), big)],
    }));
    for tls in [false, true] {
        let e = if tls {
            let mut raw = s.tls_via_ssl_request().await;
            raw.send(&startup).await;
            raw.fatal().await
        } else {
            let mut raw = Raw::new(s.tcp().await);
            raw.send(&startup).await;
            raw.fatal().await
        };
        assert_eq!(e.code().map(|c| c.code().to_owned()), Some("08P01".into()), "{e:?}");
        assert!(e.message().unwrap().starts_with("invalid length of startup packet"), "{e:?}");
    }
    s.assert_serving().await;
}
