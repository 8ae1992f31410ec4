//! The catalog's `berth_routes` notifications against a real PostgreSQL: a statement that
//! changes a row routes are built from notifies; one that changes nothing (no row matched,
//! or every value written back as it was) does not, so a worker's idle pass never makes the
//! route sync reload.

#![allow(clippy::unwrap_used)]

use catalog::{Catalog, CreateProject, NewJob, NewProject, NewRole, ProjectLimits, ROUTES_CHANNEL, ids};
use sqlx::postgres::PgListener;
use testkit::TestPg;

/// The payload of the marker this test sends after each change (the triggers send `''`).
const MARK: &str = "mark";

/// How many route notifications were sent since the last call: a marker is sent now and
/// every notification before it is counted. Notifications of distinct transactions arrive
/// in commit order, so nothing here waits on a clock.
async fn notified(catalog: &Catalog, listener: &mut PgListener) -> usize {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ROUTES_CHANNEL)
        .bind(MARK)
        .execute(catalog.pool())
        .await
        .unwrap();
    let mut count = 0;
    while listener.recv().await.unwrap().payload() != MARK {
        count += 1;
    }
    count
}

async fn execute(catalog: &Catalog, sql: &str) -> u64 {
    sqlx::query(sql).execute(catalog.pool()).await.unwrap().rows_affected()
}

#[tokio::test]
async fn routes_are_notified_when_a_route_row_changes_and_only_then() {
    let pg = TestPg::start().unwrap();
    let catalog = Catalog::connect_socket(pg.socket_dir(), pg.port(), "postgres", "postgres").await.unwrap();
    catalog.migrate().await.unwrap();
    let mut listener = PgListener::connect_with(catalog.pool()).await.unwrap();
    listener.listen(ROUTES_CHANNEL).await.unwrap();

    let org = catalog.create_organization("test").await.unwrap().id;
    let project_id = ids::generate(ids::PROJECT);
    let role_id = ids::generate(ids::ROLE);
    let new = NewProject {
        id: project_id.clone(),
        organization_id: org.clone(),
        name: "shop".into(),
        limits: ProjectLimits::default(),
        pool_config: serde_json::json!({}),
        branch_id: ids::generate(ids::BRANCH),
        role: NewRole {
            id: role_id.clone(),
            name: "shop_owner".into(),
            password_ciphertext: b"sealed".to_vec(),
            verifier: "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5".into(),
        },
    };
    let job = NewJob {
        kind: "provision_project".into(),
        organization_id: org,
        project_id: Some(project_id.clone()),
        cluster_id: None,
        locked_resource: Some(project_id.clone()),
        max_attempts: 3,
        payload: serde_json::json!({}),
    };
    let created = catalog.create_project(&new, &job).await.unwrap();
    assert!(matches!(created, CreateProject::Created { .. }));
    // A project, its branch and its role in one transaction: one notification (PostgreSQL
    // folds a transaction's identical notifications into one).
    assert_eq!(notified(&catalog, &mut listener).await, 1, "creating a project notifies once");

    // What every worker pass runs, with no rotation in its grace period: no row matches.
    assert_eq!(catalog.finish_expired_graces().await.unwrap(), 0);
    assert_eq!(
        notified(&catalog, &mut listener).await,
        0,
        "a worker pass that finished no rotation notified"
    );
    catalog.finish_rotation(&role_id).await.unwrap();
    assert_eq!(
        notified(&catalog, &mut listener).await,
        0,
        "finishing a rotation that is not under way notified"
    );

    // Rows written back as they were, and statements that match no row, change no route.
    for sql in [
        "UPDATE projects SET name = name, pool_config = pool_config",
        "UPDATE branches SET state = state",
        "UPDATE roles SET verifier = verifier, next_verifier = next_verifier",
        "UPDATE registered_databases SET host = host",
        "DELETE FROM branches WHERE id = 'br_none'",
        "DELETE FROM roles WHERE id = 'role_none'",
    ] {
        execute(&catalog, sql).await;
        assert_eq!(notified(&catalog, &mut listener).await, 0, "{sql} changed nothing but notified");
    }

    // Real changes still notify: each is its own transaction.
    catalog.set_project_state(&project_id, "ready").await.unwrap();
    assert_eq!(notified(&catalog, &mut listener).await, 1, "a project made ready was not notified");
    catalog.begin_rotation(&role_id, b"sealed-next", "SCRAM-SHA-256$4096:c2FsdA==$bmV3:bmV3").await.unwrap();
    assert_eq!(notified(&catalog, &mut listener).await, 1, "a rotation's next verifier was not notified");
    catalog.finish_rotation(&role_id).await.unwrap();
    assert_eq!(notified(&catalog, &mut listener).await, 1, "a finished rotation was not notified");
    assert_eq!(execute(&catalog, "UPDATE projects SET query_timeout_ms = 1000").await, 1);
    assert_eq!(notified(&catalog, &mut listener).await, 1, "a changed limit was not notified");
    // Deleting the project removes its branch and role too (cascades): one transaction.
    catalog.purge_project(&project_id).await.unwrap();
    assert_eq!(notified(&catalog, &mut listener).await, 1, "a deleted project was not notified");
}
