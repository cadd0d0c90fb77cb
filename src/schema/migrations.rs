//! Versioned migrations: the folder of `NNNN_name.up.sql` / `.down.sql` files, where each
//! stands against a schema's applied history (sqlx's `_sqlx_migrations` table, one per
//! schema), sqlx's migrator over them, and errors that name the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use super::SchemaError;
use crate::engine::model::MIGRATIONS_TABLE;
use crate::engine::{self, Applied};

/// One version of the migrations folder.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub version: i64,
    pub description: String,
    pub up_file: PathBuf,
    pub down_file: Option<PathBuf>,
    up: Migration,
    down: Option<Migration>,
}

impl MigrationFile {
    pub fn checksum(&self) -> &[u8] {
        &self.up.checksum
    }
    pub fn file_name(&self) -> String {
        file_name(&self.up_file)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Read the folder: `NNNN_name.up.sql` with an optional `NNNN_name.down.sql`, or a plain
/// `NNNN_name.sql` (not reversible). Other files are ignored.
pub fn load(dir: &Path) -> Result<Vec<MigrationFile>, SchemaError> {
    let bad = |m: String| SchemaError::Migrations {
        dir: dir.to_path_buf(),
        message: m,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut ups: BTreeMap<i64, (String, PathBuf, String)> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (PathBuf, String)> = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| bad(e.to_string()))?.path();
        let name = file_name(&path);
        if !path.is_file() || !name.ends_with(".sql") {
            continue;
        }
        let Some((num, rest)) = name.split_once('_') else {
            continue;
        };
        let Ok(version) = num.parse::<i64>() else {
            return Err(bad(format!(
                "{name}: the name must start with a version number, e.g. 0001_create_users.up.sql"
            )));
        };
        let sql = std::fs::read_to_string(&path).map_err(|e| bad(format!("{name}: {e}")))?;
        let (desc, is_down) = if let Some(d) = rest.strip_suffix(".down.sql") {
            (d, true)
        } else if let Some(d) = rest.strip_suffix(".up.sql") {
            (d, false)
        } else {
            (rest.trim_end_matches(".sql"), false)
        };
        let desc = desc.replace('_', " ");
        if is_down {
            if downs.insert(version, (path.clone(), sql)).is_some() {
                return Err(bad(format!("two down files for version {version}")));
            }
        } else if let Some((_, other, _)) = ups.insert(version, (desc, path.clone(), sql)) {
            return Err(bad(format!(
                "version {version} is used twice: {} and {name}; give each migration its own number",
                file_name(&other)
            )));
        }
    }
    if let Some((v, (p, _))) = downs.iter().find(|(v, _)| !ups.contains_key(v)) {
        return Err(bad(format!(
            "{} has no matching up file for version {v}",
            file_name(p)
        )));
    }
    let mut out = Vec::new();
    for (version, (description, up_file, sql)) in ups {
        let reversible = downs.contains_key(&version);
        let up_type = if reversible {
            MigrationType::ReversibleUp
        } else {
            MigrationType::Simple
        };
        let up = Migration::new(
            version,
            description.clone().into(),
            up_type,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        );
        let (down_file, down) = match downs.remove(&version) {
            Some((p, sql)) => (
                Some(p),
                Some(Migration::new(
                    version,
                    description.clone().into(),
                    MigrationType::ReversibleDown,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )),
            ),
            None => (None, None),
        };
        out.push(MigrationFile {
            version,
            description,
            up_file,
            down_file,
            up,
            down,
        });
    }
    if out.is_empty() {
        return Err(bad(
            "holds no migrations: add files named like 0001_create_users.up.sql".into(),
        ));
    }
    Ok(out)
}

/// Where a migration stands in one schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but the file changed since (checksum mismatch).
    Modified,
    /// Applied, but no file of that version is left in the folder.
    Missing,
    /// Recorded as failed (a migration run without a transaction broke half way).
    Failed,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub file: Option<String>,
    pub state: MigrationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_on: Option<DateTime<Utc>>,
}

/// Compare the folder with one schema's history; sorted by version.
pub fn statuses(files: &[MigrationFile], applied: &[Applied]) -> Vec<MigrationStatus> {
    let by_version: BTreeMap<i64, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    let mut out: Vec<MigrationStatus> = files
        .iter()
        .map(|f| {
            let a = by_version.get(&f.version);
            let state = match a {
                None => MigrationState::Pending,
                Some(a) if !a.success => MigrationState::Failed,
                Some(a) if a.checksum != f.checksum() => MigrationState::Modified,
                Some(_) => MigrationState::Applied,
            };
            MigrationStatus {
                version: f.version,
                description: f.description.clone(),
                file: Some(f.file_name()),
                state,
                installed_on: a.map(|a| a.installed_on),
            }
        })
        .collect();
    for a in applied {
        if !files.iter().any(|f| f.version == a.version) {
            out.push(MigrationStatus {
                version: a.version,
                description: a.description.clone(),
                file: None,
                state: MigrationState::Missing,
                installed_on: Some(a.installed_on),
            });
        }
    }
    out.sort_by_key(|s| s.version);
    out
}

/// sqlx's migrator over the folder, keeping its history in `table`.
pub fn migrator(files: &[MigrationFile], table: String) -> Migrator {
    let mut all = Vec::new();
    for f in files {
        all.push(f.up.clone());
        if let Some(d) = &f.down {
            all.push(d.clone());
        }
    }
    let mut m = Migrator::with_migrations(all);
    m.dangerous_set_table_name(table);
    m
}

/// Turn a migrator error into one that names the schema, the file and (PostgreSQL) the
/// line of the statement that failed.
pub fn explain(e: MigrateError, schema: &str, files: &[MigrationFile], down: bool) -> SchemaError {
    let file_of = |v: i64| {
        files.iter().find(|f| f.version == v).map(|f| {
            let (path, sql) = if down {
                (
                    f.down_file.clone().unwrap_or_else(|| f.up_file.clone()),
                    f.down.as_ref().map(|m| m.sql.as_str().to_string()),
                )
            } else {
                (f.up_file.clone(), Some(f.up.sql.as_str().to_string()))
            };
            (path, sql.unwrap_or_default())
        })
    };
    match e {
        MigrateError::ExecuteMigration(err, version) => {
            let (file, sql) = file_of(version).unwrap_or_default();
            let line = engine::statement_position(&err).map(|pos| line_of(&sql, pos));
            let message = match err.as_database_error() {
                Some(d) => d.message().to_string(),
                None => err.to_string(),
            };
            SchemaError::MigrationFailed {
                schema: schema.to_string(),
                version,
                file,
                line,
                message,
            }
        }
        MigrateError::VersionMismatch(v) => SchemaError::Modified {
            schema: schema.to_string(),
            file: file_of(v).map(|(p, _)| p).unwrap_or_default(),
        },
        MigrateError::VersionMissing(v) => SchemaError::Other(format!(
            "schema {schema}: migration {v} was applied but its file is gone from the folder; put it back"
        )),
        MigrateError::Dirty(v) => SchemaError::Other(format!(
            "schema {schema}: migration {v} is recorded as failed half way (it ran without a transaction); repair the schema by hand and delete its row from {MIGRATIONS_TABLE}"
        )),
        other => SchemaError::Migrate {
            schema: schema.to_string(),
            source: other,
        },
    }
}

/// The 1-based line of the 1-based character position `pos` in `sql`.
pub fn line_of(sql: &str, pos: usize) -> usize {
    sql.chars()
        .take(pos.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_to_lines() {
        let sql = "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\nCREAT TABLE c;\n";
        let pos = sql.find("CREAT TABLE c").unwrap() + 1;
        assert_eq!(line_of(sql, pos), 3);
        assert_eq!(line_of(sql, 1), 1);
    }

    #[test]
    fn the_folder_pairs_up_and_down_files_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| std::fs::write(dir.path().join(n), s).unwrap();
        w("0001_users.up.sql", "CREATE TABLE users (id int);");
        w("0001_users.down.sql", "DROP TABLE users;");
        w("0002_orders.sql", "CREATE TABLE orders (id int);");
        w("README.md", "not a migration");
        let files = load(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].down_file.is_some());
        assert!(files[1].down_file.is_none());
        assert_eq!(files[0].description, "users");

        w("0002_again.up.sql", "SELECT 1;");
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 2 is used twice"), "{e}");
    }

    #[test]
    fn statuses_name_pending_modified_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0001_a.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.path().join("0002_b.up.sql"), "SELECT 2;").unwrap();
        std::fs::write(dir.path().join("0003_c.up.sql"), "SELECT 3;").unwrap();
        let files = load(dir.path()).unwrap();
        let row = |v: i64, checksum: Vec<u8>| Applied {
            version: v,
            description: String::new(),
            installed_on: Utc::now(),
            success: true,
            checksum,
            execution_ms: 0.0,
        };
        let applied = vec![
            row(1, files[0].checksum().to_vec()),
            row(2, vec![0; 48]),
            row(9, vec![]),
        ];
        let states: Vec<(i64, MigrationState)> = statuses(&files, &applied)
            .into_iter()
            .map(|s| (s.version, s.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, MigrationState::Applied),
                (2, MigrationState::Modified),
                (3, MigrationState::Pending),
                (9, MigrationState::Missing)
            ]
        );
    }
}
