//! The catalog's own PostgreSQL instance under `<data>/catalog`, when no `--catalog-url` is
//! given: created on first start, started on every start, reached over its private unix
//! socket, holding the catalog in a database named `berth`.

use std::path::Path;

use anyhow::Context;
use catalog::Catalog;
use node::{InitOptions, Instance, PgBinaries};

const DATABASE: &str = "berth";

/// Starts (creating it the first time) the local catalog instance and connects to it.
pub async fn start(bins: &PgBinaries, data: &Path) -> anyhow::Result<(Instance, Catalog)> {
    let root = data.join("catalog");
    let mut instance = if root.join("data").join("PG_VERSION").exists() {
        Instance::open(bins, &root)?
    } else {
        crate::up::traversable(&root)?;
        tracing::info!(root = %root.display(), "initialising the catalog instance");
        tokio::task::block_in_place(|| Instance::init(bins, &root, &InitOptions::default()))?
    };
    tokio::task::block_in_place(|| control::instances::start_fresh(&mut instance))?;
    create_database(&instance).await?;
    let catalog =
        Catalog::connect_socket(instance.socket_dir(), instance.port(), instance.superuser(), DATABASE)
            .await
            .context("connecting to the catalog instance")?;
    Ok((instance, catalog))
}

async fn create_database(instance: &Instance) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(instance.socket_dir())
        .port(instance.port())
        .user(instance.superuser())
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the catalog instance")?;
    tokio::spawn(conn);
    let exists =
        client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE]).await?.is_some();
    if !exists {
        client.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await?;
    }
    Ok(())
}
