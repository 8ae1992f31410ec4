//! Transaction boundaries and session settings under transaction pooling: a transaction
//! keeps its server until it ends (committed or failed), and settings are kept exactly as
//! PostgreSQL would keep them in one session — `SET` in a committed transaction stays,
//! `SET LOCAL` and rolled-back `SET`s do not, `RESET ALL` and `DISCARD ALL` clear — and
//! never reach another client.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use pooled_kit::{eventually, pool_of, sqlstate, stack, within};
use tokio_postgres::Client;

async fn show(c: &Client, name: &str) -> String {
    c.query_one(&format!("show {name}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holds_the_only_server_until_commit() {
    let s = stack(pool_of(1)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("CREATE TABLE t(i int)").await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let waiter = tokio::spawn(async move {
        let n: i64 = b.query_one("select count(*) from t", &[]).await.unwrap().get(0);
        (b, n)
    });
    eventually("B waits for the server", || s.waiting() == 1).await;
    assert!(!waiter.is_finished(), "B ran while A's transaction held the only server");
    // A's transaction goes on undisturbed on the same server.
    a.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert!(!waiter.is_finished());
    a.batch_execute("COMMIT").await.unwrap();
    let (b, n) = within("B after A's commit", waiter).await.unwrap();
    assert_eq!(n, 2, "B saw the committed rows");

    // A failed transaction keeps the server until its ROLLBACK, then lets go.
    a.batch_execute("BEGIN").await.unwrap();
    let err = a.query_one("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    let waiter =
        tokio::spawn(async move { b.query_one("select 'b'", &[]).await.map(|r| r.get::<_, String>(0)) });
    eventually("B waits for the server", || s.waiting() == 1).await;
    let err = a.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "A's transaction is still the failed one");
    assert!(!waiter.is_finished());
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(within("B after A's rollback", waiter).await.unwrap().unwrap(), "b");
    let n: i64 = a.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_in_a_committed_transaction_is_kept_set_local_is_not() {
    let s = stack(pool_of(1)).await;
    let mut a = s.client().await;
    let b = s.client().await;
    a.batch_execute("BEGIN; SET statement_timeout = '7s'; COMMIT").await.unwrap();
    a.batch_execute("BEGIN; SET LOCAL lock_timeout = '3s'; SET LOCAL search_path = local_only")
        .await
        .unwrap();
    assert_eq!(show(&a, "lock_timeout").await, "3s");
    a.batch_execute("COMMIT").await.unwrap();
    let t = a.build_transaction().start().await.unwrap();
    t.batch_execute("SET work_mem = '5MB'").await.unwrap();
    t.commit().await.unwrap();
    for _ in 0..3 {
        // B shares the only server: with none of A's settings, and changing its own.
        assert_eq!(show(&b, "statement_timeout").await, "0");
        assert_eq!(show(&b, "work_mem").await, "4MB");
        b.batch_execute("SET lock_timeout = '9s'").await.unwrap();
        assert_eq!(show(&a, "statement_timeout").await, "7s");
        assert_eq!(show(&a, "work_mem").await, "5MB");
        assert_eq!(show(&a, "lock_timeout").await, "0", "SET LOCAL outlived its transaction");
        assert_eq!(show(&a, "search_path").await, "\"$user\", public");
        b.batch_execute("RESET lock_timeout").await.unwrap();
    }
}

/// PostgreSQL undoes a `SET` when its transaction (or savepoint) rolls back, and so must the
/// proxy's records of the client's and the server's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_in_a_rolled_back_transaction_is_forgotten() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let c = s.client().await;
    c.batch_execute("SET search_path = mine").await.unwrap();
    a.batch_execute("BEGIN; SET search_path = mine; ROLLBACK").await.unwrap();
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
    for _ in 0..3 {
        // Another client holds a server, so A and C change servers.
        let holder = s.client().await;
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        assert_eq!(show(&a, "search_path").await, "\"$user\", public", "a rolled-back SET came back");
        assert_eq!(show(&c, "search_path").await, "mine", "C's own setting is missing");
        holder.batch_execute("COMMIT").await.unwrap();
        assert_eq!(show(&c, "search_path").await, "mine", "C's own setting is missing");
        assert_eq!(show(&a, "search_path").await, "\"$user\", public", "a rolled-back SET came back");
    }
    // Savepoints, a failed transaction's COMMIT, and statements sent one by one.
    a.batch_execute(
        "BEGIN; SET search_path = kept; SAVEPOINT s; SET search_path = undone; ROLLBACK TO s; COMMIT",
    )
    .await
    .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path = lost").await.unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("START TRANSACTION").await.unwrap();
    a.batch_execute("SET statement_timeout = '7s'").await.unwrap();
    a.batch_execute("SAVEPOINT one").await.unwrap();
    a.batch_execute("RELEASE one").await.unwrap();
    a.batch_execute("ABORT").await.unwrap();
    for _ in 0..3 {
        let holder = s.client().await;
        holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        assert_eq!(show(&a, "search_path").await, "kept", "the setting before the savepoint was lost");
        assert_eq!(show(&a, "statement_timeout").await, "0", "an aborted SET came back");
        holder.batch_execute("COMMIT").await.unwrap();
        assert_eq!(show(&a, "search_path").await, "kept");
        assert_eq!(show(&c, "search_path").await, "mine", "C's own setting is missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_and_discard_all_clear_what_was_replayed() {
    let s = stack(pool_of(1)).await;
    let a = s.client().await;
    let b = s.client().await;
    for clear in ["RESET ALL", "DISCARD ALL"] {
        a.batch_execute("SET search_path = a_path").await.unwrap();
        a.batch_execute("SET statement_timeout = '8s'").await.unwrap();
        b.batch_execute("SET statement_timeout = '9s'").await.unwrap();
        assert_eq!(show(&a, "search_path").await, "a_path");
        assert_eq!(show(&a, "statement_timeout").await, "8s");
        a.batch_execute(clear).await.unwrap();
        for _ in 0..2 {
            assert_eq!(show(&b, "statement_timeout").await, "9s");
            assert_eq!(show(&a, "search_path").await, "\"$user\", public", "{clear}");
            assert_eq!(show(&a, "statement_timeout").await, "0", "{clear}");
        }
        b.batch_execute("RESET statement_timeout").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_never_reach_another_client() {
    let s = stack(pool_of(1)).await;
    const SETTINGS: [(&str, &str, &str); 4] = [
        ("statement_timeout", "SET statement_timeout = '11s'", "11s"),
        ("TimeZone", "SET TimeZone = 'Asia/Tokyo'", "Asia/Tokyo"),
        ("search_path", "SET search_path = somewhere", "somewhere"),
        ("default_transaction_read_only", "SET default_transaction_read_only = on", "on"),
    ];
    let fresh = s.client().await;
    let mut defaults = Vec::new();
    for (name, _, _) in SETTINGS {
        defaults.push(show(&fresh, name).await);
    }
    fresh.batch_execute("CREATE TABLE w(i int)").await.unwrap();
    let mut clients = Vec::new();
    for (_, set, _) in SETTINGS {
        let c = s.client().await;
        c.batch_execute(set).await.unwrap();
        clients.push(c);
    }
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            for (j, (name, _, value)) in SETTINGS.iter().enumerate() {
                let expected = if i == j { value.to_string() } else { defaults[j].clone() };
                assert_eq!(show(c, name).await, expected, "client {i}, {name}, round {round}");
            }
            let wrote = c.execute("insert into public.w values (1)", &[]).await;
            if i == 3 {
                assert_eq!(sqlstate(&wrote.unwrap_err()), Some("25006"));
            } else {
                wrote.unwrap();
            }
        }
        // Inside explicit transactions too.
        for (i, c) in clients.iter().enumerate() {
            c.batch_execute("BEGIN").await.unwrap();
            let tz = show(c, "TimeZone").await;
            c.batch_execute("COMMIT").await.unwrap();
            assert_eq!(tz, if i == 1 { "Asia/Tokyo".to_string() } else { defaults[1].clone() });
        }
    }
}
