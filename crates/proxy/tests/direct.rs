//! Direct (session) connections through the proxy with tokio-postgres over TLS, against a
//! real PostgreSQL instance.

mod common;

use common::{PASSWORD, stack};

#[tokio::test]
async fn simple_and_extended_queries() {
    let s = stack().await;
    let c = s.alice().await;
    let rows = c.simple_query("select 1 as one").await.unwrap();
    assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
    let row = c.query_one("select $1::int + 1, current_user::text", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "alice");
    let _ = PASSWORD;
}
