//! Protocol-level behaviour of the relay, driven byte by byte with the test kit's raw
//! client: pipelined extended-protocol batches, Sync storms, server errors that must reach
//! the client while it is still sending, and PostgreSQL's own errors for broken sequences.

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proxy::{Limits, ProxySettings, RouteTable};
use testkit::raw::RawConn;
use testkit::{TestPg, TestProxy, route};
use wire::frontend::{Bind, FrontendMessage};

const PW: &str = "raw-pw";

async fn setup() -> (TestPg, TestProxy) {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    pg.superuser()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE raw LOGIN; CREATE TABLE nums(v int); GRANT ALL ON nums TO raw")
        .await
        .unwrap();
    let proxy = TestProxy::start(
        RouteTable::new([route("db", &pg, "postgres", &[("raw", PW)], Limits::default())]),
        ProxySettings::default(),
    )
    .await
    .unwrap();
    (pg, proxy)
}

async fn login(proxy: &TestProxy) -> RawConn {
    RawConn::login(proxy.addr, proxy.client_tls(), "db", "raw", PW).await.unwrap()
}

fn q(sql: &str) -> FrontendMessage {
    FrontendMessage::Query { query: sql.into() }
}

fn bind(stmt: &str, params: Vec<Option<bytes::Bytes>>) -> FrontendMessage {
    FrontendMessage::Bind(Bind {
        portal: String::new(),
        statement: stmt.into(),
        param_formats: vec![],
        params,
        result_formats: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_all_answer_in_order() {
    let (_pg, proxy) = setup().await;
    let mut c = login(&proxy).await;
    let mut batch = vec![FrontendMessage::Parse {
        name: "s".into(),
        query: "select $1::int * 2".into(),
        param_types: vec![],
    }];
    for i in 0..200 {
        batch.push(bind("s", vec![Some(i.to_string().into())]));
        batch.push(FrontendMessage::Execute { portal: String::new(), max_rows: 0 });
        batch.push(FrontendMessage::Sync);
    }
    c.send(&batch).await.unwrap();
    for i in 0..200 {
        let (frames, err) = c.reader.until_ready().await.unwrap();
        assert!(err.is_none(), "{err:?}");
        let row = frames.iter().find(|f| f.tag == b'D').expect("a DataRow");
        // DataRow: count(2) len(4) value
        let value = std::str::from_utf8(&row.body[6..]).unwrap();
        assert_eq!(value, (i * 2).to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_storm_gets_one_ready_for_query_each() {
    let (_pg, proxy) = setup().await;
    let mut c = login(&proxy).await;
    let storm = vec![FrontendMessage::Sync; 10_000];
    c.send(&storm).await.unwrap();
    for _ in 0..10_000 {
        let (frames, err) = c.reader.until_ready().await.unwrap();
        assert!(err.is_none());
        assert_eq!(frames.len(), 1);
    }
    c.send(&[q("select 1")]).await.unwrap();
    let (_, err) = c.reader.until_ready().await.unwrap();
    assert!(err.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_for_broken_extended_sequences_reach_the_client() {
    let (_pg, proxy) = setup().await;
    let mut c = login(&proxy).await;
    // Execute of a portal that was never bound.
    c.send(&[FrontendMessage::Execute { portal: "nope".into(), max_rows: 0 }, FrontendMessage::Sync])
        .await
        .unwrap();
    let (_, err) = c.reader.until_ready().await.unwrap();
    assert_eq!(err.expect("an error").code().unwrap().code(), "34000");
    // Bind of a statement that was never prepared.
    c.send(&[bind("missing", vec![]), FrontendMessage::Sync]).await.unwrap();
    let (_, err) = c.reader.until_ready().await.unwrap();
    assert_eq!(err.expect("an error").code().unwrap().code(), "26000");
    // Bind with the wrong number of parameters.
    c.send(&[
        FrontendMessage::Parse {
            name: "two".into(),
            query: "select $1::int + $2::int".into(),
            param_types: vec![],
        },
        bind("two", vec![Some("1".into())]),
        FrontendMessage::Sync,
    ])
    .await
    .unwrap();
    let (_, err) = c.reader.until_ready().await.unwrap();
    assert_eq!(err.expect("an error").code().unwrap().code(), "08P01");
    // The session is fine afterwards.
    c.send(&[
        bind("two", vec![Some("1".into()), Some("2".into())]),
        FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
        FrontendMessage::Sync,
    ])
    .await
    .unwrap();
    let (frames, err) = c.reader.until_ready().await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert!(frames.iter().any(|f| f.tag == b'D' && f.body.ends_with(b"3")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_arrives_while_the_client_is_still_sending_copy_data() {
    let (_pg, proxy) = setup().await;
    let mut c = login(&proxy).await;
    c.send(&[q("COPY nums FROM STDIN")]).await.unwrap();
    let f = c.reader.next().await.unwrap().unwrap();
    assert_eq!(f.tag, b'G', "CopyInResponse");
    c.send(&[FrontendMessage::CopyData("not a number\n".into())]).await.unwrap();
    let chunk: bytes::Bytes = "1\n".repeat(8 * 1024).into();
    let mut sent = 0;
    let error = loop {
        // Keep streaming rows; the error must show up without the client ever stopping.
        c.send(&[FrontendMessage::CopyData(chunk.clone())]).await.unwrap();
        sent += 1;
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(20), c.reader.next()).await {
            break frame.unwrap().expect("a frame");
        }
        assert!(sent < 5_000, "no error after {sent} chunks: the relay is holding server messages back");
    };
    assert_eq!(error.tag, b'E');
    let e = wire::ErrorResponse::decode(&error.body).unwrap();
    assert_eq!(e.code().unwrap().code(), "22P02", "{e}");
    c.send(&[FrontendMessage::CopyDone]).await.unwrap();
    let (_, _) = c.reader.until_ready().await.unwrap();
    c.send(&[q("select count(*) from nums")]).await.unwrap();
    let (frames, err) = c.reader.until_ready().await.unwrap();
    assert!(err.is_none());
    assert!(
        frames.iter().any(|f| f.tag == b'D' && f.body.ends_with(b"0")),
        "the failed COPY inserted nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_starts_copy_and_disconnects_leaves_nothing_behind() {
    let (pg, proxy) = setup().await;
    let mut c = login(&proxy).await;
    c.send(&[q("COPY nums FROM STDIN")]).await.unwrap();
    assert_eq!(c.reader.next().await.unwrap().unwrap().tag, b'G');
    c.send(&[FrontendMessage::CopyData("7\n8\n".into())]).await.unwrap();
    drop(c);
    let su = pg.superuser().await.unwrap();
    // The backend goes away and its COPY is rolled back.
    for _ in 0..100 {
        let n: i64 = su
            .query_one("select count(*) from pg_stat_activity where usename = 'raw'", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: i64 = su.query_one("select count(*) from nums", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
    let left: i64 = su
        .query_one("select count(*) from pg_stat_activity where usename = 'raw'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the upstream session outlived its client");
    let mut again = login(&proxy).await;
    again.send(&[q("select 1")]).await.unwrap();
    assert!(again.reader.until_ready().await.unwrap().1.is_none());
}
