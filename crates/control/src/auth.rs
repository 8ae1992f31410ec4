//! Bearer API keys. Every `/v1` request but the OpenAPI document carries
//! `Authorization: Bearer berth_live_…`; a missing, unknown or revoked key is 401, a key
//! without the endpoint's scope is 403, and a project-scoped key asking for anything outside
//! its project gets 404, exactly as if it did not exist, so ids cannot be probed.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use catalog::{ApiKey, Scope, Secret};

use crate::Control;
use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
}

impl Caller {
    pub fn org(&self) -> &str {
        &self.key.organization_id
    }

    /// The one project a project-scoped key may see.
    pub fn project_scope(&self) -> Option<&str> {
        self.key.project_id.as_deref()
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this API key lacks the {} scope", scope.as_str())))
        }
    }

    pub fn require_org_key(&self, what: &str) -> Result<(), ApiError> {
        match self.key.project_id {
            None => Ok(()),
            Some(_) => Err(ApiError::forbidden(format!("a project-scoped key cannot {what}"))),
        }
    }
}

impl FromRequestParts<Arc<Control>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, control: &Arc<Control>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing API key: send Authorization: Bearer <key>"))?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(|k| Secret::new(k.trim()))
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
        match control.catalog.authenticate_api_key(&presented).await? {
            Some(key) => Ok(Caller { key }),
            None => Err(ApiError::unauthorized("invalid or revoked API key")),
        }
    }
}
