//! The pooled port's login and the session state that ties a client to its server: the
//! canonical ParameterStatus values a client sees at login (also when they come from the
//! proxy's login cache), LISTEN/NOTIFY, session advisory locks, `WITH HOLD` cursors, SQL
//! `PREPARE` and `set_config`, each pinning until its own undo.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use pooled_kit::{PW, eventually, pool_of, sqlstate, stack, within};
use testkit::raw::RawConn;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reports_canonical_parameter_status_also_from_the_cache() {
    let s = stack(pool_of(1)).await;
    let extra = [("client_encoding", "utf-8"), ("DateStyle", "iso, mdy"), ("application_name", "x")];
    let login = || RawConn::login_with(s.proxy.pooled_addr, s.proxy.client_tls(), "app", "app", PW, &extra);
    let (mut first, params) = within("first login", login()).await.unwrap();
    assert_eq!(param(&params, "client_encoding"), Some("UTF8"), "{params:?}");
    assert_eq!(param(&params, "DateStyle"), Some("ISO, MDY"), "{params:?}");
    assert_eq!(param(&params, "application_name"), Some("x"), "{params:?}");
    for name in ["server_version", "server_encoding", "integer_datetimes", "standard_conforming_strings"] {
        assert!(param(&params, name).is_some_and(|v| !v.is_empty()), "{name} missing: {params:?}");
    }
    // The settings are in force on the server too.
    let v = pooled_kit::raw_value(&mut first, "select current_setting('DateStyle')").await;
    assert_eq!(v, "ISO, MDY");

    // The only server is held inside a transaction: a second login with the same settings
    // must come from the login cache, and report the same values.
    let holder = s.client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let (mut second, again) = within("cached login", login()).await.unwrap();
    assert_eq!(again, params);
    holder.batch_execute("COMMIT").await.unwrap();
    let v = pooled_kit::raw_value(&mut second, "select current_setting('application_name')").await;
    assert_eq!(v, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_receives_notifications_while_idle_until_unlisten() {
    let s = stack(pool_of(2)).await;
    let (a, mut notes) = s.listening_client().await;
    let b = s.client().await;
    a.batch_execute("LISTEN ch").await.unwrap();
    assert_eq!(s.pinned(), 1);
    // Other clients' transactions run meanwhile, on the other server.
    for i in 0..5 {
        b.batch_execute(&format!("NOTIFY ch, 'payload {i}'")).await.unwrap();
    }
    // A sends nothing at all: the notifications reach it anyway.
    for i in 0..5 {
        let n = within("notification", notes.recv()).await.unwrap();
        assert_eq!((n.channel(), n.payload()), ("ch", format!("payload {i}").as_str()));
    }
    let channels: Vec<String> =
        a.query("select pg_listening_channels()", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(channels, ["ch"]);
    a.batch_execute("UNLISTEN *").await.unwrap();
    assert_eq!(s.pinned(), 0);
    assert!(a.query("select pg_listening_channels()", &[]).await.unwrap().is_empty());
    b.batch_execute("NOTIFY ch, 'late'").await.unwrap();
    a.query_one("select 1", &[]).await.unwrap();
    assert!(notes.try_recv().is_err(), "a notification after UNLISTEN *");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_pins_until_unlock_all() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.query_one("select pg_advisory_lock(42)", &[]).await.unwrap();
    assert_eq!(s.pinned(), 1);
    for _ in 0..3 {
        // Were A's server given to B, B's session would own the lock and get it again.
        let got: bool = b.query_one("select pg_try_advisory_lock(42)", &[]).await.unwrap().get(0);
        assert!(!got, "another client got a lock A holds");
        // A still owns it: unlocking once and locking again works on A's own server.
        let held: i64 = a
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 1);
    }
    // A try-lock pins whatever it returned: the proxy does not read results.
    assert_eq!(s.pinned(), 2);
    a.query_one("select pg_advisory_unlock_all()", &[]).await.unwrap();
    assert_eq!(s.pinned(), 1);
    let got: bool = b.query_one("select pg_try_advisory_lock(42)", &[]).await.unwrap().get(0);
    assert!(got, "the lock was released");
    b.query_one("select pg_advisory_unlock_all()", &[]).await.unwrap();
    assert_eq!(s.pinned(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hold_cursor_pins_until_close() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 9) g").await.unwrap();
    assert_eq!(s.pinned(), 1);
    for chunk in 0..3 {
        let err = b.query("FETCH 1 FROM c", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("34000"), "{err}");
        let got: Vec<i32> = a.query("FETCH 3 FROM c", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(got, [chunk * 3 + 1, chunk * 3 + 2, chunk * 3 + 3]);
    }
    a.batch_execute("CLOSE c").await.unwrap();
    assert_eq!(s.pinned(), 0);
    let err = a.query("FETCH 1 FROM c", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("34000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_until_deallocate() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("PREPARE p(int) AS SELECT $1 * 10").await.unwrap();
    assert_eq!(s.pinned(), 1);
    for i in 0..3 {
        let err = b.simple_query("EXECUTE p(1)").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("26000"), "{err}");
        let rows = a.simple_query(&format!("EXECUTE p({i})")).await.unwrap();
        let v = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(v, Some((i * 10).to_string()));
    }
    a.batch_execute("DEALLOCATE p").await.unwrap();
    assert_eq!(s.pinned(), 0);
    let err = a.simple_query("EXECUTE p(1)").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("26000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_pins_for_good() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let b = s.client().await;
    let v: String =
        a.query_one("select set_config('search_path', 'pinned_path', false)", &[]).await.unwrap().get(0);
    assert_eq!(v, "pinned_path");
    assert_eq!(s.pinned(), 1);
    let pid: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    for _ in 0..3 {
        let path: String = b.query_one("show search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "\"$user\", public", "A's set_config reached B");
        let path: String = a.query_one("show search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "pinned_path");
    }
    // Even a reset does not let go: the proxy cannot tell what else the function changed.
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(s.pinned(), 1);
    let again: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(again, pid);
    // A disconnect ends the pin, and the server it leaves behind is clean.
    drop(a);
    eventually("pin released at disconnect", || s.pinned() == 0).await;
    for _ in 0..2 {
        let c = s.client().await;
        let path: String = within("show", c.query_one("show search_path", &[])).await.unwrap().get(0);
        assert_eq!(path, "\"$user\", public");
    }
}
