//! The proxy's API-key logins (the tunnel, the admin console) checked against the catalog,
//! afresh on every login so a revoked key is refused at once.

use catalog::{Catalog, Scope, Secret};
use proxy::apikey::{ApiKeys, CheckFuture, KeyGrant};

pub struct CatalogKeys {
    pub catalog: Catalog,
}

impl ApiKeys for CatalogKeys {
    fn check<'a>(&'a self, key: &'a str) -> CheckFuture<'a> {
        Box::pin(async move {
            let presented = Secret::new(key.to_owned());
            match self.catalog.authenticate_api_key(&presented).await {
                Ok(Some(k)) => Ok(Some(KeyGrant {
                    can_connect: k.has_scope(Scope::CredentialsRead),
                    can_administer: k.has_scope(Scope::Admin),
                    organization_id: k.organization_id,
                    project_id: k.project_id,
                })),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
