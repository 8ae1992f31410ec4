//! API keys: `berth_live_` and 32 random base62 characters, shown once at creation. The
//! catalog keeps only their SHA-256 (a key has ~190 bits of entropy, so no salt is needed)
//! and checks a presented key by hash lookup plus a constant-time comparison.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::page::Page;
use crate::{Catalog, CatalogError, Secret, ids};

pub const KEY_PREFIX: &str = "berth_live_";
const KEY_RANDOM_LEN: usize = 32;
/// Characters of the key kept in clear to tell keys apart (`berth_live_` and four more).
const SHOWN_PREFIX_LEN: usize = KEY_PREFIX.len() + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    #[serde(rename = "projects:read")]
    ProjectsRead,
    #[serde(rename = "projects:write")]
    ProjectsWrite,
    #[serde(rename = "credentials:read")]
    CredentialsRead,
    #[serde(rename = "credentials:write")]
    CredentialsWrite,
    #[serde(rename = "jobs:read")]
    JobsRead,
    #[serde(rename = "keys:write")]
    KeysWrite,
    /// The proxy's admin console (SHOW, PAUSE, RELOAD…), for organization-wide keys.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ProjectsRead,
        Scope::ProjectsWrite,
        Scope::CredentialsRead,
        Scope::CredentialsWrite,
        Scope::JobsRead,
        Scope::KeysWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProjectsRead => "projects:read",
            Scope::ProjectsWrite => "projects:write",
            Scope::CredentialsRead => "credentials:read",
            Scope::CredentialsWrite => "credentials:write",
            Scope::JobsRead => "jobs:read",
            Scope::KeysWrite => "keys:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    /// `None` for an organization-wide key.
    pub project_id: Option<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| s == scope.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub organization_id: String,
    pub project_id: Option<String>,
    pub name: String,
    pub scopes: Vec<Scope>,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

const KEY_COLUMNS: &str =
    "id, organization_id, project_id, name, scopes, key_prefix, created_at, last_used_at, revoked_at";

impl Catalog {
    /// Creates a key and returns it with its one-time plaintext.
    pub async fn create_api_key(&self, new: &NewApiKey) -> Result<(ApiKey, Secret), CatalogError> {
        insert_api_key(&self.pool, new).await
    }

    /// The live (not revoked) key whose plaintext is `presented`, if any.
    pub async fn authenticate_api_key(&self, presented: &Secret) -> Result<Option<ApiKey>, CatalogError> {
        let presented = presented.expose();
        if !presented.starts_with(KEY_PREFIX) || presented.len() > 128 {
            return Ok(None);
        }
        let digest = hash(presented);
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "UPDATE api_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL \
             RETURNING key_hash",
        )
        .bind(&digest)
        .fetch_optional(&self.pool)
        .await?;
        // The index lookup found the row by hash; compare again in constant time so no
        // early-exit comparison of secret-derived bytes happens in our process.
        let Some((stored,)) = row else { return Ok(None) };
        if !bool::from(stored.ct_eq(&digest)) {
            return Ok(None);
        }
        Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
            .bind(&digest)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Keys of the organization (only those of `project` when set), oldest first.
    pub async fn list_api_keys(
        &self,
        organization_id: &str,
        project: Option<&str>,
        page: &Page,
    ) -> Result<Vec<ApiKey>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 \
             AND ($2::text IS NULL OR project_id = $2) AND id > $3 ORDER BY id LIMIT $4"
        ))
        .bind(organization_id)
        .bind(project)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.limit_plus_one())
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn get_api_key(
        &self,
        organization_id: &str,
        project: Option<&str>,
        id: &str,
    ) -> Result<Option<ApiKey>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 \
             AND ($2::text IS NULL OR project_id = $2) AND id = $3"
        ))
        .bind(organization_id)
        .bind(project)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Revokes a key (revoking a revoked key keeps its first revocation time).
    pub async fn revoke_api_key(
        &self,
        organization_id: &str,
        project: Option<&str>,
        id: &str,
    ) -> Result<Option<ApiKey>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE organization_id = $1 \
             AND ($2::text IS NULL OR project_id = $2) AND id = $3 RETURNING {KEY_COLUMNS}"
        ))
        .bind(organization_id)
        .bind(project)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// Inserts a key with `executor` (the pool, or a transaction) and returns its plaintext.
pub(crate) async fn insert_api_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    new: &NewApiKey,
) -> Result<(ApiKey, Secret), CatalogError> {
    let random: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(KEY_RANDOM_LEN)
        .map(char::from)
        .collect();
    let plaintext = format!("{KEY_PREFIX}{random}");
    let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    let key = sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, organization_id, project_id, name, scopes, key_hash, key_prefix) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
    ))
    .bind(ids::generate(ids::API_KEY))
    .bind(&new.organization_id)
    .bind(&new.project_id)
    .bind(&new.name)
    .bind(&scopes)
    .bind(hash(&plaintext))
    .bind(&plaintext[..SHOWN_PREFIX_LEN])
    .fetch_one(executor)
    .await?;
    Ok((key, Secret::new(plaintext)))
}
