//! Query cancellation. Every client gets a BackendKeyData whose secret is the proxy's own;
//! the registry maps (pid, secret) to the upstream connection the client holds, and a
//! CancelRequest is forwarded there with the upstream's real key. A forward works on a copy
//! of the target, so the canceller hanging up or the target disconnecting mid-forward
//! changes nothing, and removing an entry twice is harmless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{CancelRequest, StartupPacket};

use crate::routes::Database;
use crate::upstream::open_transport;

/// A server connection to cancel: where it is and its real key.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub db: Arc<Database>,
    pub pid: i32,
    pub secret: i32,
}

/// What a client's key points at now; a pooled client's server changes per transaction,
/// and between transactions there is nothing to cancel.
type Slot = Arc<Mutex<Option<CancelTarget>>>;

#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<CancelRequest, Slot>>,
}

impl CancelRegistry {
    /// Registers a client under `pid` (what it will see) and a fresh random secret.
    pub fn register(self: &Arc<Self>, pid: i32, target: Option<CancelTarget>) -> CancelGuard {
        let slot: Slot = Arc::new(Mutex::new(target));
        let mut map = self.map.lock().expect("cancel registry lock poisoned");
        loop {
            let key = CancelRequest { pid, secret: rand::random() };
            if let std::collections::hash_map::Entry::Vacant(entry) = map.entry(key) {
                entry.insert(Arc::clone(&slot));
                return CancelGuard { registry: Arc::clone(self), key, slot };
            }
        }
    }

    pub fn lookup(&self, key: &CancelRequest) -> Option<CancelTarget> {
        let slot = self.map.lock().expect("cancel registry lock poisoned").get(key).cloned()?;
        slot.lock().expect("cancel slot poisoned").clone()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("cancel registry lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: &CancelRequest) {
        self.map.lock().expect("cancel registry lock poisoned").remove(key);
    }
}

/// A client's registration; removed when the session ends.
#[derive(Debug)]
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: CancelRequest,
    slot: Slot,
}

impl CancelGuard {
    pub fn key(&self) -> CancelRequest {
        self.key
    }

    /// Points the client's key at the server it holds now (or at nothing).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.slot.lock().expect("cancel slot poisoned") = target;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.key);
    }
}

/// Sends a CancelRequest with the target's real key and waits briefly for the server to
/// close the connection, which it does once the request is processed.
pub async fn forward(target: &CancelTarget, timeout: Duration) -> Result<(), String> {
    let mut stream = open_transport(&target.db.upstream, timeout).await?;
    let mut buf = BytesMut::new();
    StartupPacket::Cancel(CancelRequest { pid: target.pid, secret: target.secret }).encode(&mut buf);
    stream.write_all(&buf).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
    Ok(())
}
