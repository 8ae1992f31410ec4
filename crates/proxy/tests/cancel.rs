//! Query cancellation through the proxy: a client's own CancelRequest reaches its server
//! session, a request with a key the proxy never handed out does nothing, and cancels racing
//! disconnects leave no registration behind.

mod common;

use common::{PASSWORD, eventually, message, sqlstate, stack, wait_until_running, within};
use testkit::raw::RawConn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use wire::frontend::FrontendMessage;
use wire::{CancelRequest, StartupPacket};

const SLEEP_30: &str = "select pg_sleep(30)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_cancels_the_running_query() {
    let s = stack().await;
    let c = s.alice().await;
    let token = c.cancel_token();
    let tls = MakeRustlsConnect::new(s.proxy.client_tls());
    let (result, ()) = tokio::join!(within("cancelled query", c.query(SLEEP_30, &[])), async {
        wait_until_running(&s.pg, SLEEP_30).await;
        within("cancel", token.cancel_query(tls)).await.expect("cancel request sent");
    });
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert_eq!(message(&err), "canceling statement due to user request");
    // The session goes on.
    let n: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
    assert_eq!(s.proxy.proxy.cancel_registrations(), 1);
}

/// Sends a CancelRequest over plain TCP, as libpq does when the connection had no TLS, and
/// waits for the proxy to close the connection (it answers nothing, as PostgreSQL does).
async fn raw_cancel(s: &common::Stack, key: CancelRequest) {
    let mut tcp = s.tcp().await;
    let mut buf = bytes::BytesMut::new();
    StartupPacket::Cancel(key).encode(&mut buf);
    assert_eq!(buf.len(), 16);
    tcp.write_all(&buf).await.expect("send CancelRequest");
    let mut rest = Vec::new();
    let n = within("cancel connection close", tcp.read_to_end(&mut rest)).await.unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent back to a CancelRequest: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_an_unknown_key_does_nothing() {
    const QUERY: &str = "select pg_sleep(3)::text || 'done'";
    let s = stack().await;
    let c = s.alice().await;
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    // Another (idle) session, whose exact key must reach only that session.
    let other = RawConn::login(s.proxy.addr, s.proxy.client_tls(), "app", "alice", PASSWORD).await.unwrap();
    let (result, ()) = tokio::join!(within("query", c.query_one(QUERY, &[])), async {
        wait_until_running(&s.pg, QUERY).await;
        // The right pid with a guessed secret, a made-up pid, another session's secret, and
        // that other session's exact key. The proxy handles a cancel before closing its
        // connection, so when these return any forward has happened.
        raw_cancel(&s, CancelRequest { pid, secret: rand::random() }).await;
        raw_cancel(&s, CancelRequest { pid: rand::random(), secret: rand::random() }).await;
        raw_cancel(&s, CancelRequest { pid, secret: other.secret }).await;
        raw_cancel(&s, CancelRequest { pid: other.pid, secret: other.secret }).await;
    });
    let row = result.expect("the query is not cancelled by a wrong key");
    assert_eq!(row.get::<_, String>(0), "done");
    s.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_a_disconnect() {
    let s = stack().await;
    for round in 0..5 {
        let (c, conn) = s.alice_with_conn().await;
        let token = c.cancel_token();
        let query = tokio::spawn(async move { c.query(SLEEP_30, &[]).await.map(|_| ()) });
        wait_until_running(&s.pg, SLEEP_30).await;
        let mut make = MakeRustlsConnect::new(s.proxy.client_tls());
        let tls = MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(&mut make, "localhost").unwrap();
        let tcp = s.tcp().await;
        // The canceller hangs up right after its request (cancel_query_raw shuts the stream
        // down and drops it) while the target's connection vanishes without a Terminate.
        let (sent, ()) = tokio::join!(token.cancel_query_raw(tcp, tls), async {
            conn.abort();
            query.abort();
        });
        // Whether the cancel got through the TLS handshake before the race is not the point.
        let _ = sent;
        eventually(&format!("round {round}: the session to end"), || s.proxy.proxy.connections() == 0).await;
        end_orphans(&s).await;
    }
    // The same with the raw client: a plaintext CancelRequest with the exact key, the
    // canceller closing without waiting for anything.
    for round in 0..5 {
        let mut target =
            RawConn::login(s.proxy.addr, s.proxy.client_tls(), "app", "alice", PASSWORD).await.unwrap();
        let key = CancelRequest { pid: target.pid, secret: target.secret };
        target.send(&[FrontendMessage::Query { query: SLEEP_30.into() }]).await.unwrap();
        wait_until_running(&s.pg, SLEEP_30).await;
        let mut tcp = s.tcp().await;
        let mut buf = bytes::BytesMut::new();
        StartupPacket::Cancel(key).encode(&mut buf);
        let (_, ()) = tokio::join!(async { tcp.write_all(&buf).await.and(tcp.shutdown().await) }, async {
            drop(target);
        });
        drop(tcp);
        eventually(&format!("raw round {round}: sessions to end"), || s.proxy.proxy.connections() == 0).await;
        end_orphans(&s).await;
    }
    s.assert_serving().await;
    eventually("cancel registrations released", || s.proxy.proxy.cancel_registrations() == 0).await;
    eventually("connections released", || s.proxy.proxy.connections() == 0).await;
    assert_eq!(s.proxy.proxy.client_connections("app"), 0);
}

/// Ends a pg_sleep whose client vanished (if the cancel missed it), so the next round waits
/// for its own.
async fn end_orphans(s: &common::Stack) {
    let su = s.pg.superuser().await.expect("superuser");
    within("orphaned query gone", async {
        loop {
            let left: i64 = su
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                     where query = $1 and pid <> pg_backend_pid()",
                    &[&SLEEP_30],
                )
                .await
                .expect("pg_terminate_backend")
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// libpq's encrypted cancel (PostgreSQL 17's PQcancelBlocking, psycopg's `cancel_safe()`)
/// sends its CancelRequest inside TLS and waits for the server to close: the proxy ends the
/// TLS session with a close_notify, as PostgreSQL does, on both ports, so the client reads a
/// clean end instead of "unexpected eof".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_over_tls_is_answered_with_a_clean_tls_close_on_both_ports() {
    let s = stack().await;
    for addr in [s.proxy.addr, s.proxy.pooled_addr] {
        let target = RawConn::login(addr, s.proxy.client_tls(), "app", "alice", PASSWORD).await.unwrap();
        let key = CancelRequest { pid: target.pid, secret: target.secret };
        let mut tls = within("TLS", testkit::raw::tls_connect(addr, s.proxy.client_tls())).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        StartupPacket::Cancel(key).encode(&mut buf);
        tls.write_all(&buf).await.unwrap();
        tls.flush().await.unwrap();
        let mut rest = Vec::new();
        let read = within("the proxy to close", tls.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{addr}: the TLS session ended without close_notify: {read:?}");
        assert!(rest.is_empty(), "{addr}: a CancelRequest is answered with nothing");
        drop(target);
    }
}
