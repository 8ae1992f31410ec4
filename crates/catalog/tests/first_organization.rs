//! The first start's organization and admin key are made together or not at all: a key that
//! could not be kept leaves no organization behind, and concurrent first starts make one.

#![allow(clippy::unwrap_used)]

use catalog::{Catalog, Secret};
use testkit::TestPg;

async fn catalog(pg: &TestPg) -> Catalog {
    let catalog = Catalog::connect_socket(pg.socket_dir(), pg.port(), "postgres", "postgres").await.unwrap();
    catalog.migrate().await.unwrap();
    catalog
}

#[tokio::test]
async fn a_key_that_cannot_be_kept_leaves_no_organization_and_the_next_start_makes_both() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let failed = catalog.create_first_organization("default", |_| Err("disk full".into())).await;
    assert!(failed.is_err(), "the failure to keep the key was not reported");
    assert!(catalog.first_organization().await.unwrap().is_none(), "an organization without a kept key");

    let mut kept = None;
    let first = catalog
        .create_first_organization("default", |token| {
            kept = Some(Secret::new(token.expose().to_owned()));
            Ok(())
        })
        .await
        .unwrap()
        .expect("the second start made nothing");
    let kept = kept.unwrap();
    let key = catalog.authenticate_api_key(&kept).await.unwrap().expect("the kept key does not authenticate");
    assert_eq!(
        (key.id.as_str(), key.organization_id.as_str()),
        (first.key.id.as_str(), first.organization.id.as_str())
    );
    for scope in catalog::Scope::ALL {
        assert!(key.has_scope(scope), "the admin key lacks {}", scope.as_str());
    }
    // Later starts find it and make nothing.
    assert!(
        catalog
            .create_first_organization("default", |_| panic!("asked to keep a second key"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_make_one_organization() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let catalog = catalog.clone();
            tokio::spawn(async move {
                catalog.create_first_organization("default", |_| Ok(())).await.unwrap().is_some()
            })
        })
        .collect();
    let mut made = 0;
    for start in starts {
        made += usize::from(start.await.unwrap());
    }
    assert_eq!(made, 1);
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM organizations").fetch_one(catalog.pool()).await.unwrap();
    assert_eq!(count, 1);
}
