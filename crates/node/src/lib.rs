//! Local PostgreSQL instances for Berth: finding the system's server binaries, creating
//! clusters with `initdb`, copying them from templates, and running their postmasters on
//! private Unix sockets (never TCP). When Berth runs as root, PostgreSQL runs as the
//! `postgres` OS user. This crate owns processes and files; it never speaks the wire
//! protocol.

mod bin;
pub mod clone;
mod conf;
mod copy;
mod error;
mod initdb;
mod instance;
mod logtail;
mod meta;
mod pidfile;
mod private;
mod process;
mod room;
pub mod schema;
mod user;

pub use bin::{BINDIR_ENV, PgBinaries};
pub use error::NodeError;
pub use initdb::InitOptions;
pub use instance::{DEFAULT_PORT, Instance, START_TIMEOUT, Status};
pub use private::make_passable_dir;
pub use user::{INSTANCE_OS_USER, InstanceUser, chown_to_instance_user, run_as_instance_user};
