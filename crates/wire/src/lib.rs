//! The PostgreSQL v3 frontend/backend protocol as Berth speaks it: framing, typed messages in
//! both directions, startup/SSL/GSSENC/cancel packets, SQLSTATE errors, and SCRAM-SHA-256 as
//! pure state machines. This crate owns bytes and their meaning; it never performs I/O, so
//! every decoder can be unit-tested, property-tested and fuzzed in isolation.

pub mod backend;
mod buf;
mod error;
pub mod error_response;
pub mod frame;
pub mod frontend;
pub mod scram;
pub mod sqlstate;
pub mod startup;

pub use error::WireError;
pub use error_response::{ErrorResponse, Severity};
pub use frame::{Frame, parse_frame};
pub use sqlstate::SqlState;
pub use startup::{CancelRequest, ProtocolVersion, StartupMessage, StartupPacket, parse_startup};
