//! A certificate chain and key the operator keeps in files and replaces (a renewal): loaded
//! at start, where a bad or mismatched pair is an error, then watched by polling, so that new
//! handshakes get the new pair while open sessions keep theirs. A pair that does not load at
//! reload is logged and the one in use is kept. Nothing here logs or returns the key's bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::Proxy;
use crate::tls::{TlsError, TlsServer};

/// How often the files are looked at: a renewal is picked up within this.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What tells a replaced file from the one loaded: its inode, size and modification time.
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

impl CertificateFiles {
    pub fn load(&self) -> Result<TlsServer, TlsError> {
        TlsServer::from_files(&self.cert, &self.key)
    }

    fn stamps(&self) -> (Stamp, Stamp) {
        (stamp(&self.cert), stamp(&self.key))
    }

    /// Reloads the pair into `proxy` whenever either file changes, until `shutdown`. Call it
    /// after [`CertificateFiles::load`] served the first pair, so a change made in between is
    /// seen.
    pub async fn watch(self, proxy: Proxy, every: Duration, shutdown: CancellationToken) {
        let mut seen = self.stamps();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = self.stamps();
            if now == seen {
                continue;
            }
            // Remembered whatever the outcome: a pair that failed is tried again only once
            // one of its files changes again (the key arriving after the certificate).
            seen = now;
            match self.load() {
                Ok(tls) => {
                    proxy.set_tls(tls);
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded; new connections get it");
                }
                Err(e) => tracing::warn!(
                    cert = %self.cert.display(),
                    key = %self.key.display(),
                    error = %e,
                    "TLS certificate not reloaded; keeping the one in use"
                ),
            }
        }
    }
}
