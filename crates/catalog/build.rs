//! `sqlx::migrate!` embeds the migrations it finds when the crate is compiled; it tracks the
//! files it read, not the directory, so a new migration would be missed by an incremental
//! build (sqlx's documented remedy).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
