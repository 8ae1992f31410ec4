//! Many clients against few servers, bounded waits, `max_active`, and session mode: clients
//! queue and are served or get a clear `53400`, the pool never opens more than `pool_size`
//! servers and stays healthy, and in session mode a client keeps one server whose state is
//! wiped before the next client gets it.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pooled_kit::{eventually, pool_of, sqlstate, stack, stack_with, within};
use proxy::{PoolConfig, PoolMode, ProxySettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_against_five_servers() {
    // Logins queue for the CPU, not for the pool: give them time.
    let settings = ProxySettings { auth_timeout: Duration::from_secs(120), ..ProxySettings::default() };
    let pool = PoolConfig { pool_timeout: Duration::from_secs(120), ..pool_of(5) };
    let s = Arc::new(stack_with(pool, settings, true).await);
    let mut tasks = Vec::new();
    for i in 0..300i32 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let c = s.client().await;
            for j in 0..3i32 {
                let row = c
                    .query_one("select $1::int * 10 + $2::int, pg_sleep(0.01)::text", &[&i, &j])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 10 + j);
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(within("client task", t).await.unwrap());
    }
    assert_eq!(clients.len(), 300);
    let (open, _) = s.pool().counts();
    assert!(open <= 5, "{open} servers");
    assert!(s.server_sessions().await <= 5);
    assert!(s.pool().stats.wait_count.load(Ordering::Relaxed) > 0);
    assert_eq!(s.pool().stats.timeouts.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_time_out_with_53400_and_the_pool_recovers() {
    let s = Arc::new(
        stack(PoolConfig { pool_size: 1, pool_timeout: Duration::from_millis(200), ..PoolConfig::default() })
            .await,
    );
    let holder = s.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let c = s.client().await;
        waiters.push(tokio::spawn(async move { c.query_one("select 1", &[]).await }));
    }
    for w in waiters {
        let err = within("waiter", w).await.unwrap().unwrap_err();
        assert_eq!(sqlstate(&err), Some("53400"), "{err}");
    }
    assert_eq!(s.pool().stats.timeouts.load(Ordering::Relaxed), 5);
    // The holder's transaction went on, and afterwards everyone is served.
    holder.batch_execute("INSERT INTO pg_temp.nothing SELECT 1").await.unwrap_err();
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(s.pool().stats.waiting.load(Ordering::Relaxed), 0);
    for _ in 0..3 {
        let c = s.client().await;
        let v: i32 = c.query_one("select 9", &[]).await.unwrap().get(0);
        assert_eq!(v, 9);
    }
    assert_eq!(s.pool().counts().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_bounds_clients_holding_or_waiting_for_servers() {
    let s = stack(PoolConfig { max_active: Some(2), ..pool_of(5) }).await;
    let a = s.client().await;
    let b = s.client().await;
    let c = s.client().await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // A third client may not take a third server while two are active.
    let third = tokio::spawn(async move {
        let r = c.query_one("select 3", &[]).await.map(|r| r.get::<_, i32>(0));
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.server_sessions().await <= 2, "a third server for max_active = 2");
    assert!(!third.is_finished(), "a third client ran while two were active");
    a.batch_execute("COMMIT").await.unwrap();
    let (_c, r) = within("third client", third).await.unwrap();
    assert_eq!(r.unwrap(), 3);
    b.batch_execute("COMMIT").await.unwrap();
    assert!(s.server_sessions().await <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_needs_no_pins_and_resets_before_reuse() {
    let s = stack(PoolConfig { pool_mode: PoolMode::Session, ..pool_of(1) }).await;
    let first_pid = {
        let (a, mut notes) = s.listening_client().await;
        let pid: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        let stmt = a.prepare("select $1::int * 3").await.unwrap();
        a.batch_execute(
            "CREATE TEMP TABLE scratch(i int); INSERT INTO scratch VALUES (4); LISTEN ch; \
             SET search_path = elsewhere; SELECT pg_advisory_lock(1)",
        )
        .await
        .unwrap();
        for i in 0..5 {
            let v: i32 = a.query_one(&stmt, &[&i]).await.unwrap().get(0);
            assert_eq!(v, i * 3);
            let n: i32 = a.query_one("select i from pg_temp.scratch", &[]).await.unwrap().get(0);
            assert_eq!(n, 4);
            let again: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
            assert_eq!(again, pid, "a session-mode client changed servers");
        }
        // A notification from outside the proxy (the only server is this client's) reaches
        // the listener, while it is idle.
        let direct = s.pg.connect_as("app", "app").await.unwrap();
        direct.batch_execute("NOTIFY ch, 'hi'").await.unwrap();
        let n = within("notification", notes.recv()).await.unwrap();
        assert_eq!((n.channel(), n.payload()), ("ch", "hi"));
        pid
    };
    // The next client gets the same server, reset.
    eventually("the server is back", || s.pool().counts().1 == 1).await;
    let b = s.client().await;
    let pid: i32 = b.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(pid, first_pid, "the server was replaced rather than reset");
    let path: String = b.query_one("show search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
    let err = b.query_one("select i from pg_temp.scratch", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("42P01"), "{err}");
    let channels = b.query("select pg_listening_channels()", &[]).await.unwrap();
    assert!(channels.is_empty());
    let locks: i64 =
        b.query_one("select count(*) from pg_locks where locktype = 'advisory'", &[]).await.unwrap().get(0);
    assert_eq!(locks, 0);
    // tokio-postgres names its first statement s0 again: no "already exists".
    let stmt = b.prepare("select $1::int * 3").await.unwrap();
    let v: i32 = b.query_one(&stmt, &[&5]).await.unwrap().get(0);
    assert_eq!(v, 15);
}
