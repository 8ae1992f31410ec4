//! Connection pooling for the pooled listener: pools of server connections per (database,
//! role), and the client session that borrows a server per transaction (or keeps one, in
//! session mode), renaming prepared statements, replaying session settings and pinning
//! clients whose session state cannot move.

pub(crate) mod classify;
pub(crate) mod expect;
pub(crate) mod pins;
#[allow(clippy::module_inception)]
pub(crate) mod pool;
pub(crate) mod registry;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod slots;
pub(crate) mod statements;
pub mod stats;

pub use pool::{Pool, PoolKey};
pub use registry::Pools;
