//! dbkeep: backups of PostgreSQL and SQLite that restore.
//!
//! The crate's map; dependencies point down this list only:
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line; `cli/run.rs` is the composition root (port, router, signals) |
//! | [`http`] | `/metrics`, `/health`, `/ready`, and the admin API split by resource |
//! | [`daemon`] | config, storages, schedules, reload, the registry of runs, systemd notify |
//! | [`schema`] | declared vs live schema: status, sync, migrations, diffs |
//! | [`ops`] | the use cases shared by all front ends: backup, cleanup, restore, verify, status |
//! | [`engine`] | everything database-specific (`postgres/`, `sqlite/`); the only place a connection is opened |
//! | [`storage`] | the `Storage` trait, local, S3, in-memory, the fan-out writer |
//! | [`config`] | raw settings, validation, validated types |
//! | leaves | [`catalog`] names and manifests, [`retention`] the pure plan, [`scheduler`] `next_run`, [`state`], [`compress`], [`crypt`] (age encryption, manifest signatures), [`process`] (the only place children are spawned), [`metrics`], [`telemetry`], [`error`] kinds, [`files`] (dbkeep's own files, written safely) |
//!
//! `schema` sits above `ops` (where the design's table put it below): its changes run
//! behind a backup and its diffs read a restored backup, so it uses `ops`, and `ops`
//! needs nothing of it (a backup's schema fingerprint comes from `engine`).

pub mod catalog;
pub mod cli;
pub mod compress;
pub mod config;
pub mod crypt;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod files;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod process;
pub mod progress;
pub mod retention;
pub mod scheduler;
pub mod schema;
pub mod state;
pub mod storage;
pub mod telemetry;
