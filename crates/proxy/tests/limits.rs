//! Per-database limits enforced by the proxy, with the SQLSTATEs PostgreSQL uses for the
//! same conditions, and route table reloads under open sessions.

mod common;

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use common::{
    PASSWORD, Stack, connection_error, eventually, message, sqlstate, stack, stack_with, wait_until_running,
    within,
};
use futures_util::SinkExt;
use proxy::{Limits, ProxySettings, RouteTable};
use testkit::route;

async fn limited(limits: Limits) -> Stack {
    stack_with(limits, ProxySettings::default()).await
}

/// Waits until the server has no session with this pid any more.
async fn backend_gone(s: &Stack, pid: i32) {
    let su = s.pg.superuser().await.expect("superuser");
    within("the server session to end", async {
        while su
            .query_opt("select 1 from pg_stat_activity where pid = $1", &[&pid])
            .await
            .expect("pg_stat_activity")
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn max_client_connections_per_database() {
    let s = limited(Limits { max_client_connections: Some(2), ..Default::default() }).await;
    let (a, a_conn) = s.alice_with_conn().await;
    let (b, _b_conn) = s.alice_with_conn().await;
    let err =
        common::refused(s.proxy.connect("app", "alice", PASSWORD).await, "a third connection is refused");
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    assert_eq!(message(&err), "too many connections for database \"app\" (max_client_connections = 2)");
    assert_eq!(s.proxy.proxy.client_connections("app"), 2, "a refused connection is not counted");
    // Failed logins are refused as failed logins, not counted.
    let err = common::refused(s.proxy.connect("app", "alice", "wrong").await, "login");
    assert_eq!(sqlstate(&err), Some("28P01"));

    drop(a);
    within("first session to close", a_conn).await.unwrap().unwrap();
    eventually("the slot to be released", || s.proxy.proxy.client_connections("app") == 1).await;
    let c = s.alice().await;
    assert_eq!(c.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    assert_eq!(b.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test]
async fn query_timeout_cancels_the_statement_only() {
    let s = limited(Limits { query_timeout: Some(Duration::from_secs(1)), ..Default::default() }).await;
    let c = s.alice().await;
    for round in 0..2 {
        // Extended protocol, then simple.
        let err = if round == 0 {
            within("timed-out query", c.query("select pg_sleep(20)", &[])).await.unwrap_err()
        } else {
            within("timed-out query", c.simple_query("select pg_sleep(20)")).await.unwrap_err()
        };
        assert_eq!(sqlstate(&err), Some("57014"), "{err}");
        assert!(message(&err).contains("query timeout"), "{err}");
        assert_eq!(message(&err), "canceling statement due to query timeout (query_timeout = 1s)");
        // The session goes on, and a quick query is not affected.
        let n: i32 = c.query_one("select 5", &[]).await.unwrap().get(0);
        assert_eq!(n, 5);
    }
    // The clock is per statement: a transaction of short statements outlives the limit.
    c.batch_execute("begin").await.unwrap();
    for _ in 0..6 {
        c.query("select pg_sleep(0.25)", &[]).await.unwrap();
    }
    c.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cancel_under_a_query_timeout_keeps_the_servers_wording() {
    const QUERY: &str = "select pg_sleep(60)";
    let s = limited(Limits { query_timeout: Some(Duration::from_secs(20)), ..Default::default() }).await;
    let c = s.alice().await;
    let token = c.cancel_token();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(s.proxy.client_tls());
    let (r, ()) = tokio::join!(within("cancelled query", c.query(QUERY, &[])), async {
        wait_until_running(&s.pg, QUERY).await;
        token.cancel_query(tls).await.unwrap();
    });
    let err = r.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"));
    assert_eq!(message(&err), "canceling statement due to user request");
}

#[tokio::test]
async fn transaction_timeout_ends_the_session_and_rolls_back() {
    let s = limited(Limits { transaction_timeout: Some(Duration::from_secs(1)), ..Default::default() }).await;
    let (c, conn) = s.alice_with_conn().await;
    c.batch_execute("create table tt (x int)").await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute("begin; insert into tt values (1)").await.unwrap();
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), Some("25P04"), "{err}");
    assert_eq!(message(&err), "terminating connection due to transaction timeout (transaction_timeout = 1s)");
    let next = c.query("select 1", &[]).await.unwrap_err();
    assert!(next.is_closed(), "{next}");

    backend_gone(&s, pid).await;
    let su = s.pg.connect_as("alice", "app").await.unwrap();
    let n: i64 = su.query_one("select count(*) from tt", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the transaction was rolled back");
    // Short transactions are fine.
    let c = s.alice().await;
    c.batch_execute("begin; insert into tt values (2); commit").await.unwrap();
    assert_eq!(su.query_one("select count(*) from tt", &[]).await.unwrap().get::<_, i64>(0), 1);
}

#[tokio::test]
async fn idle_in_transaction_timeout() {
    let s =
        limited(Limits { idle_in_transaction_timeout: Some(Duration::from_secs(1)), ..Default::default() })
            .await;
    let (c, conn) = s.alice_with_conn().await;
    let (idle, _idle_conn) = s.alice_with_conn().await;
    c.batch_execute("create table it (x int)").await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute("begin; insert into it values (1)").await.unwrap();
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), Some("25P03"), "{err}");
    assert_eq!(
        message(&err),
        "terminating connection due to idle-in-transaction timeout (idle_in_transaction_timeout = 1s)"
    );
    assert!(c.is_closed());
    backend_gone(&s, pid).await;
    // A session idle outside a transaction, and a busy one inside, are left alone.
    let n: i64 = idle.query_one("select count(*) from it", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the insert was rolled back");
    idle.batch_execute("begin").await.unwrap();
    idle.query("select pg_sleep(1.5)", &[]).await.unwrap();
    idle.batch_execute("commit").await.unwrap();
}

#[tokio::test]
async fn idle_timeout() {
    let s = limited(Limits { idle_timeout: Some(Duration::from_secs(1)), ..Default::default() }).await;
    let (c, conn) = s.alice_with_conn().await;
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), Some("57P05"), "{err}");
    assert_eq!(message(&err), "terminating connection due to idle-session timeout (idle_timeout = 1s)");
    assert!(c.query("select 1", &[]).await.unwrap_err().is_closed());
    // Neither a long statement nor an open transaction counts as idle.
    let c = s.alice().await;
    c.query("select pg_sleep(1.5)", &[]).await.unwrap();
    c.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.batch_execute("commit").await.unwrap();
    eventually("sessions closed", || s.proxy.proxy.connections() == 0).await;
}

/// tokio-postgres runs COPY FROM STDIN as Bind/Execute/Sync, CopyData..., CopyDone, Sync:
/// the server ignores the first Sync (it arrives in copy-in mode) and answers one
/// ReadyForQuery for the two. The session must still count as idle afterwards.
#[tokio::test]
async fn idle_timeout_after_copy_from_stdin() {
    let s = limited(Limits { idle_timeout: Some(Duration::from_secs(1)), ..Default::default() }).await;
    let (c, conn) = s.alice_with_conn().await;
    c.batch_execute("create table cp (x int)").await.unwrap();
    let mut sink = pin!(c.copy_in::<_, Bytes>("copy cp from stdin").await.unwrap());
    sink.send(Bytes::from_static(b"1\n2\n3\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), Some("57P05"), "{err}");
}

/// The same miscount would leave a query timeout armed on an idle session: a statement
/// sent after a COPY and a pause must still be timed from its own start.
#[tokio::test]
async fn query_timeout_after_copy_from_stdin() {
    let s = limited(Limits { query_timeout: Some(Duration::from_secs(1)), ..Default::default() }).await;
    let c = s.alice().await;
    c.batch_execute("create table cp (x int)").await.unwrap();
    let mut sink = pin!(c.copy_in::<_, Bytes>("copy cp from stdin").await.unwrap());
    sink.send(Bytes::from_static(b"1\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = within("timed-out query", c.simple_query("select pg_sleep(20)")).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert_eq!(message(&err), "canceling statement due to query timeout (query_timeout = 1s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_routes_under_open_sessions() {
    let s = stack().await;
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("CREATE DATABASE app2 OWNER alice").await.unwrap();
    let (old, old_conn) = s.alice_with_conn().await;
    let err = common::refused(s.proxy.connect("app2", "alice", PASSWORD).await, "login");
    assert_eq!(sqlstate(&err), Some("28P01"), "not routed yet");

    let app = || route("app", &s.pg, "app", &[("alice", PASSWORD)], Limits::default());
    let app2 = route("app2", &s.pg, "app2", &[("alice", PASSWORD)], Limits::default());
    s.proxy.proxy.set_routes(RouteTable::new([app(), app2]));
    let (new, _new_conn) = s.proxy.connect("app2", "alice", PASSWORD).await.unwrap();
    let db: String = new.query_one("select current_database()::text", &[]).await.unwrap().get(0);
    assert_eq!(db, "app2");
    let db: String = old.query_one("select current_database()::text", &[]).await.unwrap().get(0);
    assert_eq!(db, "app", "the open session was not dropped");

    // Limits changed by a reload apply to open sessions.
    let limits = Limits { query_timeout: Some(Duration::from_secs(1)), ..Default::default() };
    s.proxy.proxy.set_routes(RouteTable::new([route("app", &s.pg, "app", &[("alice", PASSWORD)], limits)]));
    let err = within("timed-out query", old.query("select pg_sleep(20)", &[])).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // app2 is gone for new connections; its open session stays.
    let err = common::refused(s.proxy.connect("app2", "alice", PASSWORD).await, "login");
    assert_eq!(sqlstate(&err), Some("28P01"));
    assert_eq!(new.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(old.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert!(!old_conn.is_finished());
}
