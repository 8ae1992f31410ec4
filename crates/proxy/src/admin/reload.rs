//! RELOAD: asks whoever composed the proxy to load its routes again (the configuration
//! file, or the catalog).

use std::sync::Arc;

use wire::{ErrorResponse, SqlState};

use crate::server::Shared;

pub fn run(shared: &Arc<Shared>) -> Result<(), ErrorResponse> {
    let hook = shared.reload_hook.load_full();
    let Some(hook) = hook.as_ref() else {
        return Err(ErrorResponse::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "this proxy has no route source to reload from",
        ));
    };
    (**hook)().map_err(|e| ErrorResponse::error(SqlState::INTERNAL_ERROR, format!("reload failed: {e}")))
}
