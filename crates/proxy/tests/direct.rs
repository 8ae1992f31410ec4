//! The data path of direct (session) connections through the proxy, with tokio-postgres over
//! TLS against a real PostgreSQL instance: both query protocols, pipelining, COPY in both
//! directions, large rows and results, notices, errors, and the end of a session.

mod common;

use std::pin::pin;

use bytes::Bytes;
use common::{hex, message, sqlstate, stack, within};
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

#[tokio::test]
async fn simple_and_extended_queries() {
    let s = stack().await;
    let c = s.alice().await;
    let rows = c.simple_query("select 1 as one").await.unwrap();
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
    let row = c.query_one("select $1::int + 1, current_user::text", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "alice");
}

#[tokio::test]
async fn extended_query_with_parameters() {
    let s = stack().await;
    let c = s.alice().await;
    c.batch_execute("create table t (id int primary key, name text, score float8)").await.unwrap();
    let insert = c.prepare("insert into t values ($1, $2, $3)").await.unwrap();
    for (id, name, score) in [(1, "ann", 1.5f64), (2, "bob", -2.25), (3, "o'brien; drop table t", 0.0)] {
        assert_eq!(c.execute(&insert, &[&id, &name, &score]).await.unwrap(), 1);
    }
    let null: Option<&str> = None;
    c.execute(&insert, &[&4i32, &null, &9.0f64]).await.unwrap();

    let rows = c.query("select id, name, score from t where id >= $1 order by id", &[&2i32]).await.unwrap();
    let got: Vec<(i32, Option<String>, f64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![(2, Some("bob".into()), -2.25), (3, Some("o'brien; drop table t".into()), 0.0), (4, None, 9.0)]
    );
    // A reused statement, and one that fails at bind time, then the session goes on.
    let err = c.query_one("select $1::int", &[&"not a number"]).await.unwrap_err();
    assert!(err.to_string().contains("error serializing parameter"), "{err}");
    let err = c.query("select 1 / $1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    let n: i64 = c.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 4);
}

#[tokio::test]
async fn multi_statement_simple_query() {
    let s = stack().await;
    let c = s.alice().await;
    let msgs = c
        .simple_query(
            "create table m (x int); insert into m values (1), (2), (3); \
             select x from m order by x; select 'a' as y, null as z",
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    let mut completes = Vec::new();
    for m in &msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect::<Vec<_>>())
            }
            SimpleQueryMessage::CommandComplete(n) => completes.push(*n),
            _ => {}
        }
    }
    assert_eq!(
        rows,
        vec![
            vec![Some("1".to_owned())],
            vec![Some("2".to_owned())],
            vec![Some("3".to_owned())],
            vec![Some("a".to_owned()), None]
        ]
    );
    assert_eq!(completes, vec![0, 3, 3, 1]);
    // An error in the middle of a batch stops it there (implicit transaction: all rolled back).
    let err =
        c.simple_query("insert into m values (4); select 1/0; insert into m values (5)").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    let n: i64 = c.query_one("select count(*) from m", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);
}

#[tokio::test]
async fn copy_in_and_copy_out() {
    const ROWS: i64 = 10_000;
    let s = stack().await;
    let c = s.alice().await;
    c.batch_execute("create table c (id int8 primary key, label text)").await.unwrap();

    let mut text = String::new();
    for i in 1..=ROWS {
        text.push_str(&format!("{i}\trow number {i} with a tab-free payload \\\\ and more\n"));
    }
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    let mut sink = pin!(sink);
    // Several CopyData messages of uneven size, so frames straddle the relay's reads.
    for chunk in text.as_bytes().chunks(7_777) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, ROWS as u64);

    let row = c
        .query_one("select count(*), sum(id)::int8, md5(string_agg(label, ',' order by id)) from c", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), ROWS);
    assert_eq!(row.get::<_, i64>(1), ROWS * (ROWS + 1) / 2);
    let server_md5: String = row.get(2);
    let labels: Vec<String> =
        (1..=ROWS).map(|i| format!("row number {i} with a tab-free payload \\ and more")).collect();
    assert_eq!(server_md5, md5_hex(labels.join(",").as_bytes()));

    let stream = c.copy_out("copy (select id, label from c order by id) to stdout").await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out, text.as_bytes(), "COPY TO STDOUT gives back exactly what COPY FROM STDIN took");
    assert_eq!(out.iter().filter(|b| **b == b'\n').count() as i64, ROWS);
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex(&Md5::digest(data))
}

#[tokio::test]
async fn large_row_round_trip() {
    let s = stack().await;
    let c = s.alice().await;
    c.batch_execute("create table big (id int primary key, v text)").await.unwrap();
    // 20 MB of varied text (not a repeated byte, so a lost or duplicated chunk changes the hash).
    let value: String = (0..20 * 1024 * 1024u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 7) % 26) as u8))
        .collect();
    let local = md5_hex(value.as_bytes());
    c.execute("insert into big values (1, $1)", &[&value]).await.unwrap();
    let row = c.query_one("select length(v), md5(v) from big where id = 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, value.len());
    assert_eq!(row.get::<_, String>(1), local);
    let back: String = c.query_one("select v from big where id = 1", &[]).await.unwrap().get(0);
    assert_eq!(back.len(), value.len());
    assert!(back == value, "the value read back differs from the one inserted");
    // Same through the simple protocol (text rows, one 20 MB DataRow).
    let msgs = c.simple_query("select v from big").await.unwrap();
    let SimpleQueryMessage::Row(r) = &msgs[1] else { panic!("expected a row, got {:?}", msgs.len()) };
    assert_eq!(md5_hex(r.get(0).unwrap().as_bytes()), local);
}

#[tokio::test]
async fn notices_reach_the_client() {
    let s = stack().await;
    let (c, mut messages, _conn) = s.connect_with_messages(s.config()).await;
    c.batch_execute(
        "DO $$ BEGIN RAISE NOTICE 'hello'; RAISE WARNING 'careful' USING ERRCODE = '01000'; END $$",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match within("notice", messages.recv()).await {
            Some(AsyncMessage::Notice(n)) => {
                got.push((n.severity().to_owned(), n.code().code().to_owned(), n.message().to_owned()))
            }
            other => panic!("expected a notice, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("NOTICE".into(), "00000".into(), "hello".into()),
            ("WARNING".into(), "01000".into(), "careful".into())
        ]
    );
}

#[tokio::test]
async fn error_mid_transaction() {
    let s = stack().await;
    let c = s.alice().await;
    c.batch_execute("create table e (x int)").await.unwrap();
    c.batch_execute("begin").await.unwrap();
    c.execute("insert into e values (1)", &[]).await.unwrap();
    let err = c.query("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    assert_eq!(message(&err), "division by zero");
    let err = c.query("select 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"));
    assert_eq!(
        message(&err),
        "current transaction is aborted, commands ignored until end of transaction block"
    );
    c.batch_execute("rollback").await.unwrap();
    let n: i64 = c.query_one("select count(*) from e", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the insert was rolled back");
    c.execute("insert into e values (2)", &[]).await.unwrap();
    let n: i64 = c.query_one("select count(*) from e", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the session is usable after the rollback");
}

#[tokio::test]
async fn direct_tls_with_tokio_postgres() {
    let s = stack().await;
    let mut config = s.config();
    config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    let mut tls = s.proxy.client_tls();
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    let (c, conn) = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one("select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await;
    // The upstream leg is a unix socket: pg_stat_ssl knows nothing of the client's TLS.
    let row = row.unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    assert!(!row.get::<_, bool>(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_and_a_large_result() {
    let s = stack().await;
    let c = s.alice().await;
    let stmt = c.prepare("select $1::int8 * 2, repeat('x', $1::int)").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures =
        (0..200i64).map(|i| {
            let (c, stmt) = (&c, &stmt);
            async move {
                c.query_one(stmt, &[&i]).await.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1).len()))
            }
        });
    let results = within("pipelined queries", futures_util::future::join_all(futures)).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (2 * i as i64, i));
    }
    let rows = c.query("select g, md5(g::text) from generate_series(1, 200000) g", &[]).await.unwrap();
    assert_eq!(rows.len(), 200_000);
    assert_eq!(rows[199_999].get::<_, i32>(0), 200_000);
    assert_eq!(rows[41].get::<_, String>(1), md5_hex(b"42"));
}

#[tokio::test]
async fn closing_the_client_ends_the_server_session() {
    let s = stack().await;
    let (c, conn) = s.alice_with_conn().await;
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(s.proxy.proxy.cancel_registrations(), 1);
    drop(c);
    within("client close", conn).await.unwrap().unwrap();
    let su = s.pg.superuser().await.unwrap();
    within("the server session to end", async {
        while su.query_opt("select 1 from pg_stat_activity where pid = $1", &[&pid]).await.unwrap().is_some()
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    common::eventually("the proxy session to end", || s.proxy.proxy.connections() == 0).await;
    assert_eq!(s.proxy.proxy.cancel_registrations(), 0);
    assert_eq!(s.proxy.proxy.client_connections("app"), 0);
}
