//! `Idempotency-Key` records: the first request with a key reserves it, its response is
//! stored when it completes, and a retry with the same key and the same request gets that
//! response again. The same key with a different request is refused, and a retry that
//! arrives while the first is still running is told so rather than run twice. A record
//! belongs to the API key that made it: no other key, even of the same organization, ever
//! sees it. What is stored must already be free of secrets; this module never looks inside.

use crate::{Catalog, CatalogError};

/// Whose record: the organization, the API key (`key_…`) that sent the request, and the
/// client's `Idempotency-Key`.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyScope<'a> {
    pub organization_id: &'a str,
    pub api_key_id: &'a str,
    pub key: &'a str,
}

#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
    /// JSON pointers of the members of `body` replaced before it was stored.
    pub redacted: Vec<String>,
}

#[derive(Debug)]
pub enum Idempotency {
    /// The key is new and now reserved for this request: run it, then `finish_idempotent`.
    Reserved,
    /// A request with this key completed: answer with its response.
    Replay(StoredResponse),
    /// A request with this key is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

impl Catalog {
    pub async fn begin_idempotent(
        &self,
        scope: IdempotencyScope<'_>,
        request_hash: &[u8],
    ) -> Result<Idempotency, CatalogError> {
        let reserved = sqlx::query(
            "INSERT INTO idempotency_keys (organization_id, api_key_id, key, request_hash) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(scope.organization_id)
        .bind(scope.api_key_id)
        .bind(scope.key)
        .bind(request_hash)
        .execute(&self.pool)
        .await?;
        if reserved.rows_affected() == 1 {
            return Ok(Idempotency::Reserved);
        }
        type Row = (Vec<u8>, Option<i32>, Option<serde_json::Value>, Vec<String>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, status, response, redacted FROM idempotency_keys \
             WHERE organization_id = $1 AND api_key_id = $2 AND key = $3",
        )
        .bind(scope.organization_id)
        .bind(scope.api_key_id)
        .bind(scope.key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            // Released between our insert and select: the caller may try again.
            None => Idempotency::InProgress,
            Some((hash, ..)) if hash != request_hash => Idempotency::Mismatch,
            Some((_, Some(status), Some(body), redacted)) => Idempotency::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                body,
                redacted,
            }),
            Some(_) => Idempotency::InProgress,
        })
    }

    /// Stores the response of a reserved key.
    pub async fn finish_idempotent(
        &self,
        scope: IdempotencyScope<'_>,
        response: &StoredResponse,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, response = $5, redacted = $6 \
             WHERE organization_id = $1 AND api_key_id = $2 AND key = $3",
        )
        .bind(scope.organization_id)
        .bind(scope.api_key_id)
        .bind(scope.key)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .bind(&response.redacted)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a reserved key back (the request failed in a way worth retrying).
    pub async fn release_idempotent(&self, scope: IdempotencyScope<'_>) -> Result<(), CatalogError> {
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE organization_id = $1 AND api_key_id = $2 AND key = $3 AND status IS NULL",
        )
        .bind(scope.organization_id)
        .bind(scope.api_key_id)
        .bind(scope.key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
