//! A SQLite connection for schema work: the `main` schema's model, its migration history,
//! migrations and DDL in a transaction.

use async_trait::async_trait;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection};

use super::{introspect, restore};
use crate::catalog::TableInfo;
use crate::engine::model::history_table;
use crate::engine::{Applied, Dialect, EngineError, MigrateStep, SchemaModel, Session};

pub struct SqliteSession {
    pub conn: SqliteConnection,
    pub path: std::path::PathBuf,
}

impl SqliteSession {
    fn err(&self, what: &str) -> impl FnOnce(sqlx::Error) -> EngineError {
        let path = self.path.clone();
        let message = what.to_string();
        move |e| EngineError::Sqlite {
            path,
            message,
            source: Some(e),
        }
    }
}

#[async_trait]
impl Session for SqliteSession {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn main_schema(&mut self) -> Result<String, EngineError> {
        Ok("main".into())
    }

    async fn schemas(&mut self) -> Result<Vec<String>, EngineError> {
        Ok(vec!["main".into()])
    }

    async fn model(&mut self, _schema: &str) -> Result<SchemaModel, EngineError> {
        let e = self.err("reading the schema");
        introspect::schema_model(&mut self.conn).await.map_err(e)
    }

    async fn inventory(&mut self, _schema: &str) -> Result<Vec<String>, EngineError> {
        let e = self.err("listing views and triggers");
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT type || ' ' || name || coalesce(' on ' || CASE WHEN type = 'trigger' THEN tbl_name END, '') \
             FROM sqlite_master WHERE type IN ('view', 'trigger') ORDER BY 1",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(e)?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    fn history_table(&self, _schema: Option<&str>) -> String {
        history_table(None)
    }

    async fn applied(&mut self, _schema: &str) -> Result<Vec<Applied>, EngineError> {
        let e = self.err("reading the migration history");
        introspect::applied(&mut self.conn).await.map_err(e)
    }

    async fn migrate(
        &mut self,
        migrator: &Migrator,
        _search_path: Option<&str>,
        step: MigrateStep,
    ) -> Result<(), MigrateError> {
        crate::engine::migrate_on(migrator, &mut self.conn, step).await
    }

    async fn baseline(&mut self, migrator: &Migrator, upto: i64) -> Result<(), MigrateError> {
        use sqlx::migrate::Migrate;
        let table = migrator.table_name.as_ref();
        self.conn.ensure_migrations_table(table).await?;
        let mut tx = self.conn.begin().await?;
        for m in migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && m.version <= upto)
        {
            // As sqlx records a migration it ran (its checksum is checked later), with no
            // time spent.
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (version, description, success, checksum, execution_time) VALUES (?1, ?2, TRUE, ?3, 0)"
            )))
            .bind(m.version)
            .bind(&*m.description)
            .bind(&*m.checksum)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn execute_script(&mut self, sql: &str) -> Result<(), EngineError> {
        let e = self.err("running the script");
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(e)
    }

    async fn apply_in_transaction(
        &mut self,
        batches: &[(String, Vec<String>)],
    ) -> Result<(), EngineError> {
        let e = self.err("applying the statements (rolled back, nothing was changed)");
        let r = async {
            let mut tx = self.conn.begin().await?;
            for s in batches.iter().flat_map(|(_, s)| s) {
                sqlx::raw_sql(AssertSqlSafe(s.clone()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        r.map_err(e)
    }

    async fn verify_tables(&mut self, tables: &[TableInfo]) -> Result<(), EngineError> {
        restore::verify_tables(&mut self.conn, tables).await
    }

    async fn close(self: Box<Self>) {
        let _ = self.conn.close().await;
    }
}
