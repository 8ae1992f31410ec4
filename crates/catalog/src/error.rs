//! The catalog's error type. Database errors carry PostgreSQL's message (never a query's
//! parameters, so never a secret); outcomes a caller must act on (a name taken, a job in the
//! way) are values of the operations' own result types, not errors.

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the catalog URL is not a valid postgresql:// URL")]
    InvalidUrl,
    #[error("a stored secret could not be decrypted: is this the master key it was sealed with?")]
    Decrypt,
    #[error("master key file {path}: {message}")]
    MasterKey { path: std::path::PathBuf, message: String },
    #[error("the new admin key could not be kept: {0}")]
    KeepAdminKey(Box<dyn std::error::Error + Send + Sync>),
}

impl CatalogError {
    /// Whether this is a violation of the unique constraint or index called `name`.
    pub(crate) fn is_unique_violation(e: &sqlx::Error, name: &str) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505")
            && db.constraint() == Some(name))
    }
}
