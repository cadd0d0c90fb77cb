//! Integration tests: the real binary against real PostgreSQL clusters and SQLite files.

#[path = "../common/mod.rs"]
mod common;

mod config_errors;
mod listing;
mod postgres_backup;
mod sqlite_backup;
