//! Organizations: the owners of projects and API keys. `berth up` makes the first one.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Catalog, CatalogError, ids};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl Catalog {
    pub async fn create_organization(&self, name: &str) -> Result<Organization, CatalogError> {
        Ok(sqlx::query_as("INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING *")
            .bind(ids::generate(ids::ORGANIZATION))
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The oldest organization (the one `berth up` created), if any.
    pub async fn first_organization(&self) -> Result<Option<Organization>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM organizations ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?)
    }
}
