//! Transparency of a direct connection through the proxy: what the client sees of the
//! server (backend pid, NOTIFY sender pids, ParameterStatus, startup options and the server's
//! own errors about them, server-side terminations) is exactly what the server says.

mod common;

use common::{PASSWORD, message, sqlstate, stack, within};
use tokio_postgres::AsyncMessage;
use wire::backend::BackendMessage;
use wire::frontend::FrontendMessage;

#[tokio::test]
async fn backend_pid_is_the_servers() {
    let s = stack().await;
    let mut config = s.config();
    config.application_name("transparency-test");
    let (c, _conn) = s.proxy.connect_with(config).await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);

    let su = s.pg.superuser().await.unwrap();
    let rows = su
        .query(
            "select pid, usename::text, datname::text from pg_stat_activity where application_name = $1",
            &[&"transparency-test"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one server session carries the client's application_name");
    assert_eq!(rows[0].get::<_, i32>(0), pid);
    assert_eq!(rows[0].get::<_, String>(1), "alice");
    assert_eq!(rows[0].get::<_, String>(2), "app");

    // The pid in the BackendKeyData the client got is the server's real one.
    let mut raw = testkit::raw::RawConn::login(s.proxy.addr, s.proxy.client_tls(), "app", "alice", PASSWORD)
        .await
        .unwrap();
    raw.send(&[FrontendMessage::Query { query: "select pg_backend_pid()".into() }]).await.unwrap();
    let (frames, error) = within("pg_backend_pid", raw.reader.until_ready()).await.unwrap();
    assert!(error.is_none(), "{error:?}");
    let pid = frames
        .iter()
        .find_map(|f| match BackendMessage::decode(f).unwrap() {
            BackendMessage::DataRow { values } => Some(values[0].clone().unwrap()),
            _ => None,
        })
        .expect("a row");
    assert_eq!(std::str::from_utf8(&pid).unwrap(), raw.pid.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_carries_the_senders_backend_pid() {
    let s = stack().await;
    let (listener, mut messages, _conn) = s.connect_with_messages(s.config()).await;
    listener.batch_execute("LISTEN ch").await.unwrap();
    let sender = s.alice().await;
    let sender_pid: i32 = sender.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    sender.batch_execute("NOTIFY ch, 'payload 1'").await.unwrap();
    match within("notification", messages.recv()).await {
        Some(AsyncMessage::Notification(n)) => {
            assert_eq!(n.channel(), "ch");
            assert_eq!(n.payload(), "payload 1");
            assert_eq!(n.process_id(), sender_pid);
        }
        other => panic!("expected a notification, got {other:?}"),
    }
    // A session notifying itself sees its own pid.
    let own_pid: i32 = listener.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_ne!(own_pid, sender_pid);
    listener.batch_execute("NOTIFY ch, 'to myself'").await.unwrap();
    match within("notification", messages.recv()).await {
        Some(AsyncMessage::Notification(n)) => {
            assert_eq!(n.payload(), "to myself");
            assert_eq!(n.process_id(), own_pid);
        }
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[tokio::test]
async fn startup_parameters_pass_through() {
    let s = stack().await;
    let mut config = s.config();
    config
        .options("-c search_path=foo,public -c client_min_messages=warning -c statement_timeout=123s")
        .application_name("params-test");
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(s.proxy.client_tls());
    let (c, conn) = config.connect(tls).await.unwrap();
    // ParameterStatus messages arrive as the server sent them.
    assert_eq!(conn.parameter("application_name"), Some("params-test"));
    assert_eq!(conn.parameter("session_authorization"), Some("alice"));
    assert_eq!(conn.parameter("is_superuser"), Some("off"));
    let server_version = conn.parameter("server_version").map(str::to_owned);
    tokio::spawn(conn);

    let row = c
        .query_one(
            "select current_setting('search_path'), current_setting('application_name'), \
             current_setting('client_min_messages'), current_setting('statement_timeout'), \
             current_setting('server_version'), current_database()::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "foo,public");
    assert_eq!(row.get::<_, String>(1), "params-test");
    assert_eq!(row.get::<_, String>(2), "warning");
    assert_eq!(row.get::<_, String>(3), "123s");
    assert_eq!(Some(row.get::<_, String>(4)), server_version);
    assert_eq!(row.get::<_, String>(5), "app");
    // client_min_messages=warning reached the server: a NOTICE is no longer sent.
    let (c, mut messages, _conn) = s.connect_with_messages(config).await;
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hidden'; RAISE WARNING 'shown'; END $$").await.unwrap();
    match within("warning", messages.recv()).await {
        Some(AsyncMessage::Notice(n)) => assert_eq!(n.message(), "shown"),
        other => panic!("expected the warning, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_startup_option_gets_the_servers_error() {
    let s = stack().await;
    let mut config = s.config();
    config.options("-c no_such_setting=1");
    let err = common::refused(s.proxy.connect_with(config).await, "the server refuses the option");
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");
    assert_eq!(message(&err), "unrecognized configuration parameter \"no_such_setting\"");
    assert_eq!(err.as_db_error().unwrap().severity(), "FATAL");
    s.assert_serving().await;
    let _ = PASSWORD;
}

#[tokio::test]
async fn a_terminated_server_session_reaches_the_client_as_is() {
    let s = stack().await;
    let (c, conn) = s.alice_with_conn().await;
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let su = s.pg.superuser().await.unwrap();
    let done: bool = su.query_one("select pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(done);
    let err = common::connection_error(conn).await;
    // The server's FATAL is relayed as it is. Under load the unix socket can report a reset
    // first, and the kernel then discards the unread FATAL: the client sees the close alone.
    if let Some(code) = sqlstate(&err) {
        assert_eq!(code, "57P01", "{err}");
        assert_eq!(message(&err), "terminating connection due to administrator command");
    }
    common::eventually("the proxy session to end", || s.proxy.proxy.connections() == 0).await;
    assert_eq!(s.proxy.proxy.cancel_registrations(), 0);
    s.assert_serving().await;
}
