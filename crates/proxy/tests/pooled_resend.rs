//! A pooled server that goes away before answering: what the client sent goes to another
//! server only when it cannot have committed, and only once. A statement that ends its own
//! backend is tried twice at most, not forever; a request an upstream took and then dropped
//! the connection on is never sent again (an autocommit write may have committed).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{PASSWORD, sqlstate, stack, within};
use proxy::{ProxySettings, RouteTable};
use testkit::TestProxy;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_ends_its_own_backend_is_tried_twice_at_most() {
    let s = stack().await;
    let c = s.pooled_alice().await;
    c.batch_execute("create sequence attempts").await.unwrap();
    // nextval is not rolled back: it counts every run, aborted or not.
    let r = within(
        "the self-terminating statement",
        c.batch_execute(
            "do $$ begin perform nextval('attempts'); perform pg_terminate_backend(pg_backend_pid()); end $$",
        ),
    )
    .await;
    let e = r.unwrap_err();
    assert!(sqlstate(&e).is_none_or(|c| c.starts_with("57") || c.starts_with("08")), "unexpected error: {e}");
    let check = s.alice().await;
    let runs: i64 = check.query_one("select last_value from attempts", &[]).await.unwrap().get(0);
    assert!((1..=2).contains(&runs), "the statement ran {runs} times");
}

/// An upstream that answers settings, then drops the connection on an insert without
/// answering, as a server that crashed mid-statement does. Counts inserts.
async fn dropping_upstream() -> (u16, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let port = common::fake_upstream(move |mut sock| {
        let counted = Arc::clone(&counted);
        async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                if buf[..n].windows(6).any(|w| w == b"insert") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if common::answer_setting(&mut sock).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (port, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_server_took_and_dropped_is_not_sent_again() {
    testkit::init_tracing();
    let (port, requests) = dropping_upstream().await;
    let db = common::route_to_port("app", port);
    let proxy = TestProxy::start(RouteTable::new([db]), ProxySettings::default()).await.unwrap();
    let (c, _conn) = within("login", proxy.connect_pooled("app", "alice", PASSWORD)).await.unwrap();
    let e = within("the dropped request", c.simple_query("insert into t values (1)")).await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("08006"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the request went to another server");
}
