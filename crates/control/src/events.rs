//! Job change notifications: one LISTEN on `berth_jobs` per process, fanned out through a
//! watch channel so idle workers and long-polling requests wake as soon as a job changes.
//! A lost listener is reconnected; waiters also re-check on a timer, so nothing depends on
//! a notification arriving.

use std::time::Duration;

use catalog::Catalog;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct JobEvents {
    tx: watch::Sender<u64>,
}

impl Default for JobEvents {
    fn default() -> Self {
        JobEvents { tx: watch::Sender::new(0) }
    }
}

impl JobEvents {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn bump(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Listens until `shutdown`, reconnecting after errors.
    pub async fn listen(&self, catalog: Catalog, shutdown: CancellationToken) {
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.listen_once(&catalog) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "job notifications interrupted; reconnecting");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn listen_once(&self, catalog: &Catalog) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(catalog.pool()).await?;
        listener.listen(catalog::JOBS_CHANNEL).await?;
        // Whatever happened while we were not listening.
        self.bump();
        loop {
            listener.recv().await?;
            self.bump();
        }
    }
}
