//! Large client messages on the pooled port are streamed to the server as they arrive, as on
//! the direct port: a client cannot make the proxy hold a whole message of up to 256 MiB per
//! connection. A Query, a Bind and an unnamed Parse of tens of MiB work end to end; the head
//! of a 100 MiB Query reaches the server before its tail is sent.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use common::{PASSWORD, eventually, stack, within};
use proxy::{ProxySettings, RouteTable};
use testkit::TestProxy;
use testkit::raw::RawConn;
use tokio::io::AsyncReadExt;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_tens_of_mib_work_on_the_pooled_port() {
    let s = stack().await;
    let c = s.pooled_alice().await;
    let big = "x".repeat(24 * MIB);
    // A Bind of a prepared statement and of the unnamed one.
    let st = c.prepare("select length($1::text)").await.unwrap();
    let n: i32 = within("prepared bind", c.query_one(&st, &[&big])).await.unwrap().get(0);
    assert_eq!(n as usize, big.len());
    let n: i32 =
        within("unnamed bind", c.query_one("select length($1::text)", &[&big])).await.unwrap().get(0);
    assert_eq!(n as usize, big.len());
    // A simple Query and an unnamed Parse of the same size.
    let rows = within("simple query", c.simple_query(&format!("select length('{big}')"))).await.unwrap();
    let got = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some(big.len().to_string().as_str()));
    let sql = format!("select length('{big}')");
    let n: i32 = within("unnamed parse", c.query_typed_one(&sql, &[])).await.unwrap().get(0);
    assert_eq!(n as usize, big.len());
    // The session goes on, on a small statement.
    let n: i32 = c.query_one("select 4", &[]).await.unwrap().get(0);
    assert_eq!(n, 4);
    // A named statement is kept whole to be prepared on any server: up to 16 MiB. A larger
    // one is an error for that statement, and the session goes on.
    let e = within("named parse", c.prepare(&sql)).await.unwrap_err();
    assert_eq!(common::sqlstate(&e), Some("54000"), "{e}");
    assert!(common::message(&e).contains("use the direct port"), "{e}");
    let n: i32 = within("after", c.query_one("select 5", &[])).await.unwrap().get(0);
    assert_eq!(n, 5);
}

/// An upstream that answers settings, then counts the bytes of the next request without
/// answering it.
async fn counting_upstream() -> (u16, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    let port = common::fake_upstream(move |mut sock| {
        let counted = Arc::clone(&counted);
        async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                if buf[0] == b'Q' && n < 1024 && !buf[..n].windows(6).any(|w| w == b"select") {
                    if common::answer_setting(&mut sock).await.is_err() {
                        return;
                    }
                    continue;
                }
                counted.fetch_add(n, Ordering::SeqCst);
            }
        }
    })
    .await;
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_of_a_huge_query_reaches_the_server_before_its_tail_is_sent() {
    testkit::init_tracing();
    let (port, received) = counting_upstream().await;
    let db = common::route_to_port("app", port);
    let proxy = TestProxy::start(RouteTable::new([db]), ProxySettings::default()).await.unwrap();
    let mut c =
        within("login", RawConn::login(proxy.pooled_addr, proxy.client_tls(), "app", "alice", PASSWORD))
            .await
            .unwrap();
    // A Query declared at 100 MiB, of which 8 MiB are sent; the rest never comes.
    let declared = 100 * MIB;
    let mut head = BytesMut::with_capacity(8 * MIB + 16);
    head.put_u8(b'Q');
    head.put_i32((declared + 4) as i32);
    head.put_slice(b"select '");
    head.put_bytes(b'z', 8 * MIB - 8);
    c.send_raw(&head).await.unwrap();
    eventually("the server to receive the head of the query", || received.load(Ordering::SeqCst) >= 7 * MIB)
        .await;
}
