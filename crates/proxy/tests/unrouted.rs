//! A catalog database that leaves the route table (deleted, or a preview that expired) ends
//! its sessions on both listeners with an error that says so; a reload that keeps it does
//! not, and a TOML database (`close_sessions_on_removal` false) keeps its sessions.

mod common;

use common::{PASSWORD, connection_error, message, sqlstate, stack};
use proxy::{Limits, RouteTable};
use testkit::route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_database_that_is_no_longer_routed_end_with_a_clear_error() {
    let s = stack().await;
    let (direct, direct_conn) = s.alice_with_conn().await;
    let (pooled, pooled_conn) = s.proxy.connect_pooled("app", "alice", PASSWORD).await.expect("pooled");
    let (in_tx, in_tx_conn) = s.proxy.connect_pooled("app", "alice", PASSWORD).await.expect("pooled");
    in_tx.batch_execute("BEGIN; SELECT 1").await.expect("begin");

    // A reload that keeps the database keeps its sessions.
    let managed = || {
        let mut d = route("app", &s.pg, "app", &[("alice", PASSWORD)], Limits::default());
        d.close_sessions_on_removal = true;
        d
    };
    s.proxy.proxy.set_routes(RouteTable::new([managed()]));
    s.proxy.proxy.set_routes(RouteTable::new([managed()]));
    for c in [&direct, &pooled, &in_tx] {
        c.batch_execute("SELECT 1").await.expect("still served after a reload that keeps the database");
    }

    s.proxy.proxy.set_routes(RouteTable::new([]));
    for conn in [direct_conn, pooled_conn, in_tx_conn] {
        let e = connection_error(conn).await;
        assert_eq!(sqlstate(&e), Some("57P01"), "{e}");
        assert!(message(&e).contains("database \"app\" no longer exists"), "{e}");
    }
    assert!(direct.is_closed() && pooled.is_closed() && in_tx.is_closed());
}
