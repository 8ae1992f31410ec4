//! First start: the organization, and its admin API key written to `<data>/admin.key`
//! (0600) and printed once. Later starts find the organization and leave keys alone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use catalog::{Catalog, Secret};

pub struct Bootstrap {
    pub organization_id: String,
    /// The admin key, when it was made by this start (to print once).
    pub new_admin_key: Option<Secret>,
}

pub async fn run(catalog: &Catalog, data: &Path) -> anyhow::Result<Bootstrap> {
    if let Some(org) = catalog.first_organization().await? {
        return Ok(Bootstrap { organization_id: org.id, new_admin_key: None });
    }
    // The key file is written before the organization and key are committed: a start cut
    // short leaves a stale file and no organization, and the next start replaces both.
    let key_file = data.join("admin.key");
    let keep = |token: &Secret| write_private(&key_file, token.expose()).map_err(|e| format!("{e:#}").into());
    match catalog.create_first_organization("default", keep).await? {
        Some(first) => {
            tracing::info!(organization_id = %first.organization.id, key_id = %first.key.id,
                "created the organization and its admin key");
            Ok(Bootstrap { organization_id: first.organization.id, new_admin_key: Some(first.token) })
        }
        // Another start made it meanwhile.
        None => {
            let org = catalog.first_organization().await?.context("the organization vanished")?;
            Ok(Bootstrap { organization_id: org.id, new_admin_key: None })
        }
    }
}

/// Writes `contents` and a newline to a new 0600 file, replacing any earlier one.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_private_bytes(path, format!("{contents}\n").as_bytes())
}

/// Writes `data` to a 0600 temporary file beside `path`, synced, then renames it over `path`.
pub fn write_private_bytes(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
