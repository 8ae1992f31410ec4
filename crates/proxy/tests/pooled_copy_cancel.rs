//! COPY and query cancellation through the pooled port: COPY in both directions with a real
//! client, a client that vanishes in the middle of COPY FROM STDIN, and CancelRequests that
//! must reach the server a client holds at that moment and nothing else.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pooled_kit::{pool_of, q, sqlstate, stack, within};
use tokio_postgres_rustls::MakeRustlsConnect;
use wire::frontend::FrontendMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_with_a_real_client() {
    let s = stack(pool_of(2)).await;
    let c = s.client().await;
    let other = s.client().await;
    c.batch_execute("CREATE TABLE t(i int, label text)").await.unwrap();
    let sink = c.copy_in::<_, Bytes>("COPY t FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in 0..10 {
        let mut data = String::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            data.push_str(&format!("{i}\trow {i}\n"));
        }
        sink.send(Bytes::from(data)).await.unwrap();
        // Others keep using the pool meanwhile.
        other.query_one("select 1", &[]).await.unwrap();
    }
    let n = sink.as_mut().finish().await.unwrap();
    assert_eq!(n, 10_000);
    let row = c.query_one("select count(*), sum(i) from t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!(row.get::<_, i64>(1), (0..10_000i64).sum::<i64>());

    let stream = c.copy_out("COPY (SELECT i, label FROM t ORDER BY i) TO STDOUT").await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut text = Vec::new();
    while let Some(chunk) = within("copy out", stream.next()).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10_000);
    assert_eq!(lines[0], "0\trow 0");
    assert_eq!(lines[9_999], "9999\trow 9999");
    // The session goes on with the extended protocol and in a transaction.
    let mut c = c;
    let t = c.transaction().await.unwrap();
    let sink = t.copy_in::<_, Bytes>("COPY t FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    sink.send(Bytes::from_static(b"-1\tinside\n")).await.unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 1);
    t.commit().await.unwrap();
    let n: i64 = other.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_during_copy_in_leaves_no_rows_and_a_clean_pool() {
    let s = stack(pool_of(1)).await;
    let setup = s.client().await;
    setup.batch_execute("CREATE TABLE t(i int)").await.unwrap();
    for round in 0..3 {
        let mut raw = s.raw().await;
        raw.send(&[q("COPY t FROM STDIN")]).await.unwrap();
        let frame = within("CopyInResponse", raw.reader.next()).await.unwrap().unwrap();
        assert_eq!(frame.tag, b'G');
        raw.send(&[FrontendMessage::CopyData(Bytes::from(format!("{round}\n{round}\n")))]).await.unwrap();
        drop(raw);
        // The pool's only server is rolled back or replaced: the next client works, sees no
        // row and holds no transaction left over.
        let next = s.client().await;
        let n: i64 =
            within("next client", next.query_one("select count(*) from t", &[])).await.unwrap().get(0);
        assert_eq!(n, 0);
        // In a transaction of its own, now() is this statement's start; in one left over,
        // it is earlier.
        let fresh = next.simple_query("select now() = statement_timestamp()").await.unwrap();
        let in_tx = !fresh
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")));
        assert!(!in_tx, "the next client ran inside someone else's transaction");
        let su = s.pg.superuser().await.unwrap();
        let stuck: i64 = su
            .query_one(
                "select count(*) from pg_stat_activity where usename = 'app' and state <> 'idle' \
                 and pid <> all(select pid from pg_stat_activity where query like 'select count(*) from pg_stat%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stuck, 0, "a server is still in COPY or a transaction");
    }
    assert!(s.server_sessions().await <= 1);
}

const SLEEP_30: &str = "select pg_sleep(30)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_cancels_the_running_query() {
    let s = stack(pool_of(2)).await;
    let c = s.client().await;
    let token = c.cancel_token();
    let tls = MakeRustlsConnect::new(s.proxy.client_tls());
    let (result, ()) = tokio::join!(within("cancelled query", c.query(SLEEP_30, &[])), async {
        s.wait_until_running(SLEEP_30).await;
        within("cancel", token.cancel_query(tls)).await.unwrap();
    });
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // Inside a transaction too, and the session goes on.
    c.batch_execute("BEGIN").await.unwrap();
    let tls = MakeRustlsConnect::new(s.proxy.client_tls());
    let (result, ()) = tokio::join!(within("cancelled query", c.query(SLEEP_30, &[])), async {
        s.wait_until_running(SLEEP_30).await;
        within("cancel", token.cancel_query(tls)).await.unwrap();
    });
    assert_eq!(sqlstate(&result.unwrap_err()), Some("57014"));
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_a_client_without_a_server_touches_no_one_else() {
    const QUERY: &str = "select pg_sleep(3)::text || 'done'";
    let s = stack(pool_of(1)).await;
    let a = s.client().await;
    let b = s.client().await;
    // A used the only server before, and gave it back: B now runs on it.
    let a_pid: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let (result, ()) = tokio::join!(within("B's query", b.query_one(QUERY, &[])), async {
        s.wait_until_running(QUERY).await;
        let su = s.pg.superuser().await.unwrap();
        let running: i32 = su
            .query_one("select pid from pg_stat_activity where query = $1", &[&QUERY])
            .await
            .unwrap()
            .get(0);
        assert_eq!(running, a_pid, "B was meant to run on the server A used");
        let tls = MakeRustlsConnect::new(s.proxy.client_tls());
        within("cancel", a.cancel_token().cancel_query(tls)).await.unwrap();
    });
    let row = result.expect("B's query is not cancelled by A's key");
    assert_eq!(row.get::<_, String>(0), "done");
    let v: i32 = a.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
}
