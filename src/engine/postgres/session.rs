//! A PostgreSQL connection for schema work: catalog models, migration histories,
//! migrations and DDL with a schema as search path, table checks after a drill.

use async_trait::async_trait;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

use super::conn::quote_ident;
use super::introspect;
use crate::catalog::TableInfo;
use crate::engine::model::history_table;
use crate::engine::{Applied, Dialect, EngineError, MigrateStep, SchemaModel, Session};

pub struct PgSession {
    pub conn: PgConnection,
    /// host:port/database, for messages.
    pub location: String,
}

impl PgSession {
    fn db(&self, what: &str) -> impl FnOnce(sqlx::Error) -> EngineError {
        EngineError::db(format!("{what} ({})", self.location))
    }
}

#[async_trait]
impl Session for PgSession {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn main_schema(&mut self) -> Result<String, EngineError> {
        let e = self.db("reading the current schema");
        introspect::current_schema(&mut self.conn).await.map_err(e)
    }

    async fn schemas(&mut self) -> Result<Vec<String>, EngineError> {
        let e = self.db("listing schemas");
        introspect::schemas(&mut self.conn).await.map_err(e)
    }

    async fn model(&mut self, schema: &str) -> Result<SchemaModel, EngineError> {
        let e = self.db(&format!("reading the catalog of schema {schema}"));
        introspect::schema_model(&mut self.conn, schema)
            .await
            .map_err(e)
    }

    async fn inventory(&mut self, schema: &str) -> Result<Vec<String>, EngineError> {
        let e = self.db(&format!("listing the objects of schema {schema}"));
        let rows: Vec<(String,)> = sqlx::query_as(
            "WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = $1) \
             SELECT 'view ' || c.relname FROM pg_class c, s WHERE c.relnamespace = s.oid AND c.relkind IN ('v', 'm') \
             UNION ALL SELECT 'sequence ' || c.relname FROM pg_class c, s WHERE c.relnamespace = s.oid AND c.relkind = 'S' \
             UNION ALL SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' \
               FROM pg_proc p, s WHERE p.pronamespace = s.oid \
             UNION ALL SELECT 'type ' || t.typname || coalesce(' (' || (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) \
                                                   FROM pg_enum e WHERE e.enumtypid = t.oid) || ')', '') \
               FROM pg_type t, s WHERE t.typnamespace = s.oid AND (t.typtype IN ('e', 'd') \
                 OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))) \
             UNION ALL SELECT 'trigger ' || tg.tgname || ' on ' || c.relname \
               FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid, s WHERE c.relnamespace = s.oid AND NOT tg.tgisinternal \
             UNION ALL SELECT 'collation ' || co.collname || ' of ' || c.relname || '.' || a.attname \
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_collation co ON co.oid = a.attcollation, s \
               WHERE c.relnamespace = s.oid AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
                 AND co.collname <> 'default' \
             ORDER BY 1",
        )
        .bind(schema)
        .fetch_all(&mut self.conn)
        .await
        .map_err(e)?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    fn history_table(&self, schema: Option<&str>) -> String {
        history_table(schema)
    }

    async fn applied(&mut self, schema: &str) -> Result<Vec<Applied>, EngineError> {
        let e = self.db(&format!("reading the migration history of schema {schema}"));
        introspect::applied(&mut self.conn, schema).await.map_err(e)
    }

    async fn migrate(
        &mut self,
        migrator: &Migrator,
        search_path: Option<&str>,
        step: MigrateStep,
    ) -> Result<(), MigrateError> {
        if let Some(schema) = search_path {
            sqlx::query("SELECT set_config('search_path', $1, false)")
                .bind(quote_ident(schema))
                .execute(&mut self.conn)
                .await?;
        }
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
                "INSERT INTO {table} (version, description, success, checksum, execution_time) VALUES ($1, $2, TRUE, $3, 0)"
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
        let e = self.db("running the script");
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
        let e = self.db("applying the statements (rolled back, nothing was changed)");
        let r = async {
            let mut tx = self.conn.begin().await?;
            for (schema, stmts) in batches {
                if stmts.is_empty() {
                    continue;
                }
                sqlx::query("SELECT set_config('search_path', $1, true)")
                    .bind(quote_ident(schema))
                    .execute(&mut *tx)
                    .await?;
                for s in stmts {
                    sqlx::raw_sql(AssertSqlSafe(s.clone()))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await
        }
        .await;
        r.map_err(e)
    }

    async fn verify_tables(&mut self, tables: &[TableInfo]) -> Result<(), EngineError> {
        for t in tables {
            let schema = t.schema.clone().unwrap_or_else(|| "public".into());
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&t.name));
            let present: Option<(bool,)> = sqlx::query_as(
                "SELECT true FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
            )
            .bind(&schema)
            .bind(&t.name)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(self.db("looking up a restored table"))?;
            if present.is_none() {
                return Err(EngineError::Check(format!(
                    "table {qualified} is missing after the drill restore"
                )));
            }
            if t.rows.unwrap_or(0) > 0 {
                let sql = format!("SELECT EXISTS (SELECT 1 FROM {qualified})");
                let (has,): (bool,) = sqlx::query_as(AssertSqlSafe(sql))
                    .fetch_one(&mut self.conn)
                    .await
                    .map_err(self.db("reading a restored table"))?;
                if !has {
                    return Err(EngineError::Check(format!(
                        "table {qualified} is empty after the drill restore; about {} rows were backed up",
                        t.rows.unwrap_or(0)
                    )));
                }
            }
        }
        Ok(())
    }

    async fn close(self: Box<Self>) {
        let _ = self.conn.close().await;
    }
}
