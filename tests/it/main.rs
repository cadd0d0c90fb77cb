//! Integration tests: the real binary against real PostgreSQL clusters and SQLite files.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod cleanup_status;
mod config_errors;
mod daemon;
mod data_safety;
mod deploy;
mod encryption;
mod fleet;
mod fuzz;
mod hooks;
mod hostile;
mod listing;
mod metrics_contract;
mod mirrors;
mod notify;
mod operator;
mod ops_in_process;
mod postgres_backup;
mod replicas;
mod restorability;
mod restore;
mod restore_safety;
mod s3_storage;
mod schema;
mod servers;
mod sqlite_backup;
mod storage_contract;
