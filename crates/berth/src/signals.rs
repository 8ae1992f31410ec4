//! Process signals: SIGTERM and SIGINT begin a graceful shutdown; SIGHUP asks for a reload.

use tokio::signal::unix::{SignalKind, signal};

/// Handles SIGTERM and SIGINT from now on; the future resolves at the first one. Installed
/// before a process says it is up, so a signal sent as soon as it says so is not fatal.
pub fn terminate() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
