//! Organizations: the owners of projects and API keys. `berth up` makes the first one.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::keys::{ApiKey, NewApiKey, Scope, insert_api_key};
use crate::{Catalog, CatalogError, Secret, ids};

/// What a first start made: the organization and its admin key.
pub struct FirstOrganization {
    pub organization: Organization,
    pub key: ApiKey,
    pub token: Secret,
}

/// The advisory lock that serializes first starts against one catalog.
const FIRST_ORGANIZATION_LOCK: i64 = 0x6265_7274_685f_6f72;

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

    /// Makes the first organization and its admin key (every scope) in one transaction,
    /// unless an organization exists (then `None`). `keep` receives the key's plaintext
    /// before the commit and must store it: if it fails, nothing is committed. So a first
    /// start cut short at any point leaves either nothing, and the next start begins again,
    /// or both, and never an organization whose admin key nobody holds. Concurrent first
    /// starts wait on an advisory lock and then find the organization.
    pub async fn create_first_organization(
        &self,
        name: &str,
        keep: impl FnOnce(&Secret) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<Option<FirstOrganization>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FIRST_ORGANIZATION_LOCK)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT id FROM organizations LIMIT 1").fetch_optional(&mut *tx).await?;
        if existing.is_some() {
            return Ok(None);
        }
        let organization: Organization =
            sqlx::query_as("INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING *")
                .bind(ids::generate(ids::ORGANIZATION))
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        let new = NewApiKey {
            organization_id: organization.id.clone(),
            project_id: None,
            name: "admin".into(),
            scopes: Scope::ALL.to_vec(),
        };
        let (key, token) = insert_api_key(&mut *tx, &new).await?;
        keep(&token).map_err(CatalogError::KeepAdminKey)?;
        tx.commit().await?;
        Ok(Some(FirstOrganization { organization, key, token }))
    }

    /// The oldest organization (the one `berth up` created), if any.
    pub async fn first_organization(&self) -> Result<Option<Organization>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM organizations ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?)
    }
}
