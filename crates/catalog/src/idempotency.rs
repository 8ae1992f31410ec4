//! `Idempotency-Key` records: the first request with a key reserves it, its response is
//! stored when it completes, and a retry with the same key and the same request gets that
//! response again. The same key with a different request is refused, and a retry that
//! arrives while the first is still running is told so rather than run twice.

use crate::{Catalog, CatalogError};

#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
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
        organization_id: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<Idempotency, CatalogError> {
        let reserved = sqlx::query(
            "INSERT INTO idempotency_keys (organization_id, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(organization_id)
        .bind(key)
        .bind(request_hash)
        .execute(&self.pool)
        .await?;
        if reserved.rows_affected() == 1 {
            return Ok(Idempotency::Reserved);
        }
        let row: Option<(Vec<u8>, Option<i32>, Option<serde_json::Value>)> = sqlx::query_as(
            "SELECT request_hash, status, response FROM idempotency_keys WHERE organization_id = $1 AND key = $2",
        )
        .bind(organization_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            // Released between our insert and select: the caller may try again.
            None => Idempotency::InProgress,
            Some((hash, _, _)) if hash != request_hash => Idempotency::Mismatch,
            Some((_, Some(status), Some(body))) => {
                Idempotency::Replay(StoredResponse { status: u16::try_from(status).unwrap_or(500), body })
            }
            Some(_) => Idempotency::InProgress,
        })
    }

    /// Stores the response of a reserved key.
    pub async fn finish_idempotent(
        &self,
        organization_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, response = $4 WHERE organization_id = $1 AND key = $2",
        )
        .bind(organization_id)
        .bind(key)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a reserved key back (the request failed in a way worth retrying).
    pub async fn release_idempotent(&self, organization_id: &str, key: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE organization_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(organization_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
