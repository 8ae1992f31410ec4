//! Local PostgreSQL instances for Berth: finding the system's server binaries, creating
//! clusters with `initdb`, copying them from templates, and running their postmasters on
//! private Unix sockets (never TCP). When Berth runs as root, each instance runs as an OS
//! user of its own, and trees a tenant could have changed are copied without following
//! links. This crate owns processes, files and those users; it never speaks the wire
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
mod tree;
mod user;

pub use bin::{BINDIR_ENV, PgBinaries};
pub use error::NodeError;
pub use initdb::InitOptions;
pub use instance::{DEFAULT_PORT, Instance, START_TIMEOUT, Status, remove_root};
pub use private::make_passable_dir;
pub use user::{
    INSTANCE_GROUP, InstanceUser, OsUser, USER_COMMENT, USER_PREFIX, instance_gid, instance_users,
    remove_users_under, sweep_orphan_users,
};
