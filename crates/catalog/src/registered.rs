//! Registered upstreams (`db_…`): databases a user runs elsewhere and serves through Berth's
//! proxy. Rows carry the sealed password; callers unseal it only to connect.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Catalog, CatalogError, Page};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RegisteredDatabase {
    pub id: String,
    pub project_id: String,
    pub host: String,
    pub port: i32,
    pub name: String,
    pub username: String,
    #[serde(skip)]
    pub password_ciphertext: Vec<u8>,
    pub ssl_mode: String,
    pub role: String,
    pub pool_region: String,
    pub cache_config: serde_json::Value,
    pub pool_config: serde_json::Value,
    /// The password exchange the registration check saw (`scram-sha-256`, `md5` or
    /// `password`); `None` for rows from before it was recorded.
    pub auth_method: Option<String>,
    /// PEM roots for `verify-ca`/`verify-full`; `None` means the system's.
    pub ssl_root_cert: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registered database with its project's organization, for the route table.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegisteredRoute {
    pub organization_id: String,
    /// Its project's name: the SNI label it is served under (`<project>.<public-host>`).
    pub project_name: String,
    #[sqlx(flatten)]
    pub database: RegisteredDatabase,
}

/// What PATCH may change; `None` keeps the stored value.
#[derive(Debug, Default)]
pub struct RegisteredUpdate {
    pub cache_config: Option<serde_json::Value>,
    pub pool_config: Option<serde_json::Value>,
    pub pool_region: Option<String>,
}

impl Catalog {
    pub async fn insert_registered_database(
        &self,
        db: &RegisteredDatabase,
    ) -> Result<RegisteredDatabase, CatalogError> {
        Ok(sqlx::query_as(
            "INSERT INTO registered_databases (id, project_id, host, port, name, username, password_ciphertext, \
             ssl_mode, role, pool_region, cache_config, pool_config, auth_method, ssl_root_cert) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *",
        )
        .bind(&db.id)
        .bind(&db.project_id)
        .bind(&db.host)
        .bind(db.port)
        .bind(&db.name)
        .bind(&db.username)
        .bind(&db.password_ciphertext)
        .bind(&db.ssl_mode)
        .bind(&db.role)
        .bind(&db.pool_region)
        .bind(&db.cache_config)
        .bind(&db.pool_config)
        .bind(&db.auth_method)
        .bind(&db.ssl_root_cert)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn registered_database(
        &self,
        project_id: &str,
        id: &str,
    ) -> Result<Option<RegisteredDatabase>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM registered_databases WHERE project_id = $1 AND id = $2")
            .bind(project_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_registered_databases(
        &self,
        project_id: &str,
        page: &Page,
    ) -> Result<Vec<RegisteredDatabase>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT * FROM registered_databases WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(project_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.limit_plus_one())
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn update_registered_database(
        &self,
        project_id: &str,
        id: &str,
        update: &RegisteredUpdate,
    ) -> Result<Option<RegisteredDatabase>, CatalogError> {
        Ok(sqlx::query_as(
            "UPDATE registered_databases SET cache_config = coalesce($3, cache_config), \
             pool_config = coalesce($4, pool_config), pool_region = coalesce($5, pool_region), \
             updated_at = now() WHERE project_id = $1 AND id = $2 RETURNING *",
        )
        .bind(project_id)
        .bind(id)
        .bind(&update.cache_config)
        .bind(&update.pool_config)
        .bind(&update.pool_region)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// True when a row was deleted.
    pub async fn delete_registered_database(&self, project_id: &str, id: &str) -> Result<bool, CatalogError> {
        let done = sqlx::query("DELETE FROM registered_databases WHERE project_id = $1 AND id = $2")
            .bind(project_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every registered database of a ready project, for the route table, in the order
    /// they claim their names under the project's SNI label (the first of a name keeps it).
    pub async fn registered_routes(&self) -> Result<Vec<RegisteredRoute>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "SELECT p.organization_id, p.name AS project_name, d.* FROM registered_databases d \
             JOIN projects p ON p.id = d.project_id WHERE p.state = 'ready' ORDER BY p.id, {SNI_ORDER}"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The registered databases of project `project_id` (named `project_name`) that their
    /// names reach under the project's SNI label: of those sharing a name, the first in
    /// [`SNI_ORDER`]; none when an older ready project's name is the same label (labels are
    /// case-insensitive, and the route table gives a label to the first project by id). The
    /// project's own database comes before every registered one: callers check that.
    pub async fn sni_owners(
        &self,
        project_id: &str,
        project_name: &str,
    ) -> Result<std::collections::HashSet<String>, CatalogError> {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM projects WHERE lower(name) = lower($2) AND id < $1 AND state = 'ready')",
        )
        .bind(project_id)
        .bind(project_name)
        .fetch_one(&self.pool)
        .await?;
        if taken {
            return Ok(Default::default());
        }
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT ON (d.name) d.id FROM registered_databases d WHERE d.project_id = $1 \
             ORDER BY d.name, {SNI_ORDER}"
        ))
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().collect())
    }
}

/// Which of a project's registered databases sharing a name gets it under the project's SNI
/// label: primaries before replicas, then the oldest.
const SNI_ORDER: &str = "(d.role <> 'primary'), d.created_at, d.id";
