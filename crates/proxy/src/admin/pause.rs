//! PAUSE [db] and RESUME [db]. PAUSE holds new transactions, waits for the running ones to
//! finish, and closes the servers; RESUME lets the held transactions go.

use std::sync::Arc;

use wire::{ErrorResponse, SqlState};

use crate::server::Shared;

fn check_database(shared: &Arc<Shared>, db: Option<&str>) -> Result<(), ErrorResponse> {
    match db {
        Some(name) if shared.routes.load().get(name).is_none() => {
            Err(ErrorResponse::error(SqlState::INVALID_CATALOG_NAME, format!("no such database: {name}")))
        }
        _ => Ok(()),
    }
}

pub async fn pause(shared: &Arc<Shared>, db: Option<&str>) -> Result<(), ErrorResponse> {
    check_database(shared, db)?;
    tracing::info!(database = db.unwrap_or("*"), "PAUSE");
    shared.pools.pause(db).await;
    Ok(())
}

pub fn resume(shared: &Arc<Shared>, db: Option<&str>) -> Result<(), ErrorResponse> {
    check_database(shared, db)?;
    tracing::info!(database = db.unwrap_or("*"), "RESUME");
    shared.pools.resume(db);
    Ok(())
}
