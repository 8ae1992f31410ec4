//! After the handshake the proxy seals and opens TLS records itself (`tls_conn`): every
//! protocol version and cipher suite a client may choose carries data both ways in records
//! of every size, a client's TLS 1.3 key update is followed and answered, and a forged or
//! oversized record ends only its own connection, with an alert.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{alice_startup, stack, within};
use rustls::crypto::ring::cipher_suite::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::version::{TLS12, TLS13};
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::ProtocolVersion;

fn client_config(
    ca_pem: &str,
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_and_suite_carries_rows_of_every_size_both_ways() {
    let s = stack().await;
    let cases = [
        (&TLS13, TLS13_AES_128_GCM_SHA256),
        (&TLS13, TLS13_AES_256_GCM_SHA384),
        (&TLS13, TLS13_CHACHA20_POLY1305_SHA256),
        (&TLS12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (&TLS12, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (&TLS12, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ];
    // Around the 16 KiB record limit, and far beyond it.
    let sizes = [0usize, 1, 16_383, 16_384, 16_385, 16_400, 100_000, 1_000_000];
    for (version, suite) in cases {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(
            &s.proxy.ca.ca_cert_pem,
            version,
            suite,
        ));
        for pooled in [false, true] {
            let config =
                if pooled { s.proxy.pooled_config("app", "alice", common::PASSWORD) } else { s.config() };
            let what = format!("{:?} {:?} pooled={pooled}", version.version, suite.suite());
            let (c, conn) = within("connect", config.connect(tls.clone()))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let conn = tokio::spawn(conn);
            for n in sizes {
                let text: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
                let row = within("echo", c.query_one("select $1::text, length($1::text)", &[&text]))
                    .await
                    .unwrap_or_else(|e| panic!("{what}, {n} bytes: {e}"));
                assert_eq!(row.get::<_, &str>(0), text, "{what}, {n} bytes");
                assert_eq!(row.get::<_, i32>(1) as usize, n, "{what}");
            }
            // Many small messages in flight at once: records carry several, and reads end
            // inside records.
            let client = &c;
            let queries =
                (0..300i32).map(|i| async move { client.query_one("select $1::int + 1", &[&i]).await });
            let rows = within("pipelined", futures_util::future::try_join_all(queries)).await.unwrap();
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(r.get::<_, i32>(0), i as i32 + 1, "{what}");
            }
            drop(c);
            within("clean end", conn).await.unwrap().unwrap();
        }
    }
}

/// A SASLInitialResponse naming a mechanism the proxy does not offer.
fn unknown_mechanism() -> Vec<u8> {
    let mut body = b"NOT-A-MECHANISM\0".to_vec();
    body.extend_from_slice(&(-1i32).to_be_bytes());
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

#[tokio::test]
async fn a_client_key_update_is_followed_and_answered() {
    let s = stack().await;
    let mut tls = s.tls_via_ssl_request().await;
    assert_eq!(tls.stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // rustls asks for the server's update too: the reply below is readable only if the
    // proxy took the client's new key and answered with its own.
    tls.stream.get_mut().1.refresh_traffic_keys().unwrap();
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    let f = tls.frame().await.expect("AuthenticationSASL under the new keys");
    assert_eq!(f.tag, b'R');
    tls.stream.get_mut().1.refresh_traffic_keys().unwrap();
    tls.send(&unknown_mechanism()).await;
    let e = tls.fatal().await;
    assert!(e.code().is_some(), "{e:?}");
    s.assert_serving().await;
}

#[tokio::test]
async fn a_forged_record_ends_its_connection_with_an_alert() {
    let s = stack().await;
    let mut tls = s.tls_via_ssl_request().await;
    // An application-data record of junk, written under the TLS layer.
    let mut forged = vec![23u8, 3, 3, 0, 64];
    forged.extend((0..64).map(|_| rand::random::<u8>()));
    tls.stream.get_mut().0.write_all(&forged).await.unwrap();
    let mut buf = [0u8; 64];
    let err = within("the alert", tls.stream.read(&mut buf)).await.expect_err("an alert, not data");
    assert!(err.to_string().contains("BadRecordMac"), "{err}");
    s.assert_serving().await;

    // A record longer than TLS allows.
    let mut tls = s.tls_via_ssl_request().await;
    tls.stream.get_mut().0.write_all(&[23u8, 3, 3, 0xff, 0xff]).await.unwrap();
    let err = within("the alert", tls.stream.read(&mut buf)).await.expect_err("an alert, not data");
    assert!(err.to_string().contains("RecordOverflow"), "{err}");

    // A record cut off by the end of the connection.
    let mut tls = s.tls_via_ssl_request().await;
    tls.stream.get_mut().0.write_all(&[23u8, 3, 3, 0, 100, 1, 2, 3]).await.unwrap();
    tls.stream.get_mut().0.shutdown().await.unwrap();
    let end = within("the end", tls.stream.read(&mut buf)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    s.assert_serving().await;
}

#[tokio::test]
async fn a_flood_of_key_updates_without_data_ends_the_connection() {
    let s = stack().await;
    let mut tls = s.tls_via_ssl_request().await;
    for _ in 0..40 {
        tls.stream.get_mut().1.refresh_traffic_keys().unwrap();
    }
    // rustls sends its updates with the next write.
    tls.stream.write_all(&alice_startup(ProtocolVersion::V3_0)).await.unwrap();
    tls.stream.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let end = within("the end", tls.stream.read(&mut buf)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "the proxy should close, got {end:?}");
    s.assert_serving().await;

    // A few updates between messages are fine.
    let mut tls = s.tls_via_ssl_request().await;
    for _ in 0..3 {
        tls.stream.get_mut().1.refresh_traffic_keys().unwrap();
    }
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    assert_eq!(tls.frame().await.expect("AuthenticationSASL").tag, b'R');
}
