//! SHOW CLIENTS: one row per logged-in client.

use std::sync::Arc;

use super::result::ResultSet;
use crate::server::Shared;
use crate::session::ListenerKind;

pub fn run(shared: &Arc<Shared>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "id",
        "database",
        "user",
        "state",
        "pinned",
        "port",
        "addr",
        "application_name",
        "connect_time",
    ]);
    for c in shared.clients.all() {
        rs.row(vec![
            c.id.to_string(),
            c.database.clone(),
            c.user.clone(),
            c.state().as_str().to_owned(),
            c.pinned().to_string(),
            match c.kind {
                ListenerKind::Direct => "direct",
                ListenerKind::Pooled => "pooled",
            }
            .to_owned(),
            c.peer.clone(),
            c.application_name.clone(),
            humantime::format_rfc3339_seconds(c.connected_at).to_string(),
        ]);
    }
    rs
}
