//! The OpenAPI 3.1 document, generated from the handlers' annotations: the reference for
//! every endpoint, served without authentication at `/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth API", description = "Projects, branches, preview databases, connection strings, jobs and API keys of a Berth control plane."),
    paths(
        super::projects::create,
        super::projects::list,
        super::projects::get,
        super::projects::update,
        super::projects::delete,
        super::branches::create,
        super::branches::list,
        super::branches::get,
        super::branches::delete,
        super::branches::reset,
        super::previews::create,
        super::previews::list,
        super::previews::get,
        super::previews::delete,
        super::previews::connections,
        super::databases::create,
        super::databases::list,
        super::databases::get,
        super::databases::update,
        super::databases::delete,
        super::connection::connection,
        super::connection::connection_alias,
        super::connection::connections,
        super::credentials::rotate,
        super::jobs::get,
        super::jobs::list,
        super::keys::create,
        super::keys::list,
        super::keys::revoke,
        super::tls::ca_pem,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = doc.components.as_mut() {
            components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
