//! Graceful shutdown: the listener closes, idle sessions end at once with `57P01`, sessions
//! inside a transaction or a statement finish it first, and stragglers end at the deadline.

mod common;

use std::time::Duration;

use common::{connection_error, message, sqlstate, stack, stack_with, wait_until_running, within};
use proxy::{Limits, ProxySettings};
use tokio::net::TcpStream;

fn assert_admin_shutdown(err: &tokio_postgres::Error) {
    assert_eq!(sqlstate(err), Some("57P01"), "{err}");
    assert_eq!(message(err), "terminating connection due to administrator command");
}

async fn refuses_new_connections(addr: std::net::SocketAddr) {
    within("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transactions_finish() {
    const SLEEP: &str = "select pg_sleep(1)::text || 'slept'";
    let s = stack().await;
    let (idle, idle_conn) = s.alice_with_conn().await;
    let (tx, tx_conn) = s.alice_with_conn().await;
    let (busy, busy_conn) = s.alice_with_conn().await;
    tx.batch_execute("create table sd (x int); begin; insert into sd values (1)").await.unwrap();

    // The simple protocol: `query_one` would leave a statement to close, and that Close, sent
    // after the answer, would race the proxy's FATAL.
    let (slept, ()) = tokio::join!(within("statement", busy.simple_query(SLEEP)), async {
        wait_until_running(&s.pg, SLEEP).await;
        s.proxy.proxy.shutdown();
        // The idle session is told at once.
        assert_admin_shutdown(&connection_error(idle_conn).await);
    });
    assert!(idle.is_closed());
    // The running statement finished, then its session was closed.
    let rows: Vec<_> = slept
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["slept"]);
    assert_admin_shutdown(&connection_error(busy_conn).await);

    refuses_new_connections(s.proxy.addr).await;

    // The transaction can still be finished, and is closed right after.
    tx.query_one("select count(*) from sd", &[]).await.unwrap();
    tx.batch_execute("insert into sd values (2); commit").await.unwrap();
    assert_admin_shutdown(&connection_error(tx_conn).await);

    within("drained", s.proxy.proxy.drained()).await;
    assert_eq!(s.proxy.proxy.connections(), 0);
    assert_eq!(s.proxy.proxy.cancel_registrations(), 0);
    assert_eq!(s.proxy.proxy.client_connections("app"), 0);
    let su = s.pg.connect_as("alice", "app").await.unwrap();
    let n: i64 = su.query_one("select count(*) from sd", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "the transaction committed during shutdown");
}

#[tokio::test]
async fn shutdown_deadline_closes_open_transactions() {
    let settings = ProxySettings { shutdown_timeout: Duration::from_secs(1), ..Default::default() };
    let s = stack_with(Limits::default(), settings).await;
    let (tx, tx_conn) = s.alice_with_conn().await;
    tx.batch_execute("create table sd (x int)").await.unwrap();
    let pid: i32 = tx.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    tx.batch_execute("begin; insert into sd values (1)").await.unwrap();
    s.proxy.proxy.shutdown();
    assert_admin_shutdown(&connection_error(tx_conn).await);
    within("drained", s.proxy.proxy.drained()).await;
    assert_eq!(s.proxy.proxy.connections(), 0);

    let su = s.pg.superuser().await.unwrap();
    within("the server session to end", async {
        while su.query_opt("select 1 from pg_stat_activity where pid = $1", &[&pid]).await.unwrap().is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let alice = s.pg.connect_as("alice", "app").await.unwrap();
    let n: i64 = alice.query_one("select count(*) from sd", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the unfinished transaction was rolled back");
}
