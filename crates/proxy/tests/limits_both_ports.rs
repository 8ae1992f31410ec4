//! Every per-database time limit holds on the pooled port as on the direct one, whichever
//! way the statement was sent: a simple Query, Parse/Bind/Execute/Sync, an Execute followed
//! by Flush with no Sync (drivers that pipeline do this), and a COPY. Each breach ends with
//! PostgreSQL's SQLSTATE for it; a query timeout cancels the statement and the session goes
//! on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{PASSWORD, Stack, connection_error, message, sqlstate, stack_with, within};
use proxy::{Limits, ProxySettings};
use testkit::raw::RawConn;
use wire::frontend::{Bind, FrontendMessage};
use wire::{ErrorResponse, SqlState};

const SLEEP: &str = "select pg_sleep(60)";

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

async fn raw(s: &Stack, pooled: bool) -> RawConn {
    let addr = if pooled { s.proxy.pooled_addr } else { s.proxy.addr };
    within("raw login", RawConn::login(addr, s.proxy.client_tls(), "app", "alice", PASSWORD)).await.unwrap()
}

/// The frames up to the first ErrorResponse, which is returned.
async fn until_error(c: &mut RawConn) -> ErrorResponse {
    within("an ErrorResponse", async {
        loop {
            let f = c.reader.next().await.unwrap().expect("a frame before the connection ends");
            if f.tag == b'E' {
                return ErrorResponse::decode(&f.body).unwrap();
            }
        }
    })
    .await
}

fn extended(query: &str, sync: bool) -> Vec<FrontendMessage> {
    let mut v = vec![
        FrontendMessage::Parse { name: String::new(), query: query.into(), param_types: vec![] },
        FrontendMessage::Bind(Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }),
        FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
    ];
    v.push(if sync { FrontendMessage::Sync } else { FrontendMessage::Flush });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_every_kind_of_statement_on_both_ports() {
    let s = stack_with(limits(|l| l.query_timeout = Some(Duration::from_secs(1))), ProxySettings::default())
        .await;
    for pooled in [false, true] {
        let mut c = raw(&s, pooled).await;
        let ways: [(&str, Vec<FrontendMessage>); 4] = [
            ("simple", vec![FrontendMessage::Query { query: SLEEP.into() }]),
            ("extended with Sync", extended(SLEEP, true)),
            ("Execute then Flush", extended(SLEEP, false)),
            ("COPY out", vec![FrontendMessage::Query { query: format!("copy ({SLEEP}) to stdout") }]),
        ];
        for (way, msgs) in ways {
            let what = format!("pooled={pooled}, {way}");
            c.send(&msgs).await.unwrap();
            let e = until_error(&mut c).await;
            assert_eq!(e.code(), Some(SqlState::QUERY_CANCELED), "{what}: {e:?}");
            assert_eq!(
                e.message(),
                Some("canceling statement due to query timeout (query_timeout = 1s)"),
                "{what}"
            );
            if way == "Execute then Flush" {
                c.send(&[FrontendMessage::Sync]).await.unwrap();
            }
            let (_, err) = within(&what, c.reader.until_ready()).await.unwrap();
            assert!(err.is_none(), "{what}: {err:?}");
            // The session goes on.
            c.send(&[FrontendMessage::Query { query: "select 7".into() }]).await.unwrap();
            let (frames, err) = within(&what, c.reader.until_ready()).await.unwrap();
            assert!(err.is_none() && frames.iter().any(|f| f.tag == b'D'), "{what}: {err:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_stalled_copy_from_stdin_on_both_ports() {
    let s = stack_with(limits(|l| l.query_timeout = Some(Duration::from_secs(1))), ProxySettings::default())
        .await;
    s.alice().await.batch_execute("create table sink (x int)").await.unwrap();
    for pooled in [false, true] {
        let c = if pooled { s.pooled_alice().await } else { s.alice().await };
        let sink = within("copy in", c.copy_in::<_, Bytes>("copy sink from stdin")).await.unwrap();
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        within("copy row", sink.send(Bytes::from_static(b"1\n"))).await.unwrap();
        within("copy flush", sink.flush()).await.unwrap();
        // The client dawdles mid-COPY, one row every 200 ms for three times the limit: the
        // statement runs all along and is timed. The server sees the cancel at its next row,
        // and the client hears of it when it ends the COPY.
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if sink.send(Bytes::from_static(b"2\n")).await.is_err() || sink.flush().await.is_err() {
                break;
            }
        }
        let e = within("the timed-out COPY", sink.finish()).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("57014"), "pooled={pooled}: {e}");
        let n: i32 = within("after", c.query_one("select 8", &[]))
            .await
            .unwrap_or_else(|e| panic!("pooled={pooled}: {e:?}"))
            .get(0);
        assert_eq!(n, 8, "pooled={pooled}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_and_idle_in_transaction_timeouts_end_pooled_sessions() {
    let s = stack_with(
        limits(|l| {
            l.transaction_timeout = Some(Duration::from_secs(2));
            l.idle_in_transaction_timeout = Some(Duration::from_secs(1));
        }),
        ProxySettings::default(),
    )
    .await;
    // Busy the whole time, so only the transaction limit applies.
    let (c, conn) = s.pooled_alice_with_conn().await;
    c.batch_execute("begin").await.unwrap();
    let busy = c.batch_execute("select pg_sleep(0.5); select pg_sleep(0.5); select pg_sleep(0.5); select pg_sleep(0.5); select pg_sleep(60)");
    // The FATAL reaches the statement in flight, as PostgreSQL's own would.
    let err = within("the transaction timeout", busy).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P04"), "{err}");
    assert_eq!(message(&err), "terminating connection due to transaction timeout (transaction_timeout = 2s)");
    within("the session to end", conn).await.unwrap().unwrap_err();
    // Idle inside a transaction.
    let (c, conn) = s.pooled_alice_with_conn().await;
    c.batch_execute("begin; select 1").await.unwrap();
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), Some("25P03"), "{err}");
    // Idle inside an extended-protocol transaction left at Execute and Flush, no Sync.
    let mut r = raw(&s, true).await;
    r.send(&[FrontendMessage::Query { query: "begin".into() }]).await.unwrap();
    within("begin", r.reader.until_ready()).await.unwrap();
    r.send(&extended("select 1", false)).await.unwrap();
    let e = until_error(&mut r).await;
    assert_eq!(e.code(), Some(SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT), "{e:?}");
}
