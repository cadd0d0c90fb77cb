//! Schema management against real PostgreSQL and SQLite: status, migrate up/down, drift,
//! sync, tenant schemas, diffs against past backups, and the drift metric.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    dbkeep, pg_config, spawn_daemon, sqlite_target, wait_for, Run, Sandbox, TestPostgres,
};

const M1_UP: &str = "CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL,
    name varchar(80)
);
CREATE INDEX users_email_idx ON users (email);
";
const M2_UP: &str = "CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id integer NOT NULL REFERENCES users(id),
    total numeric(10,2) DEFAULT 0
);
";
const M3_UP: &str = "CREATE TABLE audit (id int, at timestamptz DEFAULT now());
ALTER TABLE users ADD COLUMN created timestamptz;
";

/// The three migrations of the issue, each with a down file.
fn migrations(sb: &Sandbox) -> PathBuf {
    let dir = sb.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, up, down) in [
        ("0001_users", M1_UP, "DROP TABLE users;"),
        ("0002_orders", M2_UP, "DROP TABLE orders;"),
        (
            "0003_audit",
            M3_UP,
            "DROP TABLE audit;\nALTER TABLE users DROP COLUMN created;",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.up.sql")), up).unwrap();
        std::fs::write(dir.join(format!("{name}.down.sql")), down).unwrap();
    }
    dir
}

fn schema_section(dir: &Path, extra: &str) -> String {
    format!(
        "\n[targets.app.schema]\nmigrations = \"{}\"\n{extra}\n",
        dir.display()
    )
}

fn status_json(cfg: &Path) -> (i32, Value) {
    let run = dbkeep(Some(cfg), &["schema", "status", "app", "--json"], &[]);
    let v = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", run.stdout, run.stderr));
    (run.code, v)
}

fn states(schema: &Value) -> Vec<(i64, String)> {
    schema["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_i64().unwrap(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn differences(schema: &Value) -> Vec<(String, String, Option<String>)> {
    let mut d: Vec<(String, String, Option<String>)> = schema["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["table"].as_str().unwrap().to_string(),
                d["object"].as_str().map(str::to_string),
            )
        })
        .collect();
    d.sort();
    d
}

fn listed(cfg: &Path) -> Vec<Value> {
    serde_json::from_str(&dbkeep(Some(cfg), &["list", "--json"], &[]).ok().stdout).unwrap()
}

fn reasons(cfg: &Path) -> Vec<String> {
    listed(cfg)
        .iter()
        .filter_map(|b| b["reason"].as_str().map(str::to_string))
        // Backups taken before another operation, not by hand or schedule.
        .filter(|r| r.starts_with("pre-"))
        .collect()
}

fn pg_tables(pg: &TestPostgres, db: &str, schema: &str) -> Vec<String> {
    let out = pg.psql(
        db,
        &format!("SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"),
    );
    out.lines().map(str::to_string).collect()
}

fn setup_pg(extra: &str) -> (TestPostgres, Sandbox, PathBuf, PathBuf) {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let dir = migrations(&sb);
    let cfg = pg_config(&sb, &pg, "app", &schema_section(&dir, extra));
    (pg, sb, dir, cfg)
}

#[test]
fn three_migrations_go_up_after_a_listed_backup_and_one_comes_back_down() {
    let (pg, _sb, _dir, cfg) = setup_pg("");

    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3, "pending migrations are drift: {st}");
    assert_eq!(st["in_sync"], false);
    let public = &st["schemas"][0];
    assert_eq!(public["schema"], "public");
    assert_eq!(
        states(public),
        vec![
            (1, "pending".into()),
            (2, "pending".into()),
            (3, "pending".into())
        ]
    );
    let text = dbkeep(Some(&cfg), &["schema", "status", "app"], &[]);
    assert_eq!(text.code, 3);
    assert!(
        text.stdout.contains("0 applied, 3 pending"),
        "{}",
        text.stdout
    );
    assert!(reasons(&cfg).is_empty(), "status takes no backup");

    let up = dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    assert!(
        up.stdout.contains("(pre-migrate) taken and verified"),
        "{}",
        up.stdout
    );
    assert!(
        up.stdout.contains("applied 0001, 0002, 0003"),
        "{}",
        up.stdout
    );
    assert_eq!(reasons(&cfg), vec!["pre-migrate"]);
    assert_eq!(
        pg_tables(&pg, "app", "public"),
        vec!["_sqlx_migrations", "audit", "orders", "users"]
    );

    let (code, st) = status_json(&cfg);
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["in_sync"], true);
    assert!(st["schemas"][0]["differences"]
        .as_array()
        .unwrap()
        .is_empty());

    // Nothing pending: no backup, nothing done.
    let again = dbkeep(Some(&cfg), &["migrate", "app"], &[]).ok();
    assert!(
        again.stdout.contains("nothing to apply"),
        "{}",
        again.stdout
    );
    assert_eq!(reasons(&cfg).len(), 1);

    // down needs --yes, and then reverts exactly the newest migration.
    let refused = dbkeep(Some(&cfg), &["migrate", "app", "down"], &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    let down = dbkeep(
        Some(&cfg),
        &["migrate", "app", "down", "--steps", "1", "--yes"],
        &[],
    )
    .ok();
    assert!(down.stdout.contains("reverted 0003"), "{}", down.stdout);
    assert_eq!(reasons(&cfg), vec!["pre-migrate", "pre-migrate"]);
    assert_eq!(
        pg_tables(&pg, "app", "public"),
        vec!["_sqlx_migrations", "orders", "users"]
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'created'"
        ),
        "0"
    );
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3);
    assert_eq!(
        states(&st["schemas"][0]),
        vec![
            (1, "applied".into()),
            (2, "applied".into()),
            (3, "pending".into())
        ]
    );
    let history: Vec<Value> = serde_json::from_str(
        &dbkeep(Some(&cfg), &["migrate", "app", "history", "--json"], &[])
            .ok()
            .stdout,
    )
    .unwrap();
    let versions: Vec<i64> = history
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(history[0]["file"], "0001_users.up.sql");
}

#[test]
fn each_kind_of_drift_is_named_and_sync_creates_only_the_missing_table() {
    let (pg, _sb, _dir, cfg) = setup_pg("");
    dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    pg.psql(
        "app",
        "CREATE TABLE extra (x int);
         DROP TABLE audit;
         ALTER TABLE users ADD COLUMN age int;
         ALTER TABLE users ALTER COLUMN name TYPE text;
         DROP INDEX users_email_idx;
         ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey;
         ALTER TABLE users ALTER COLUMN email DROP NOT NULL;",
    );
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3);
    let public = &st["schemas"][0];
    let s = |x: &str| x.to_string();
    assert_eq!(
        differences(public),
        vec![
            (s("extra_column"), s("users"), Some(s("age"))),
            (s("extra_table"), s("extra"), None),
            (
                s("missing_constraint"),
                s("orders"),
                Some(s("orders_user_id_fkey"))
            ),
            (s("missing_index"), s("users"), Some(s("users_email_idx"))),
            (s("missing_table"), s("audit"), None),
            (s("nullability_changed"), s("users"), Some(s("email"))),
            (s("type_changed"), s("users"), Some(s("name"))),
        ]
    );
    let text = dbkeep(Some(&cfg), &["schema", "status", "app"], &[]).stdout;
    for line in [
        "table audit is missing",
        "extra table extra",
        "table users: extra column age (integer)",
        "table users: column name has type text, declared type is character varying(80)",
        "table users: index users_email_idx is missing",
        "table orders: foreign key orders_user_id_fkey is missing",
        "table users: column email is nullable, declared is NOT NULL",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }

    // Without --yes and without a terminal, sync shows the statements and changes nothing.
    let refused = dbkeep(Some(&cfg), &["schema", "sync", "app"], &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stdout.contains("CREATE TABLE \"audit\""),
        "{}",
        refused.stdout
    );
    assert!(reasons(&cfg).iter().all(|r| r != "pre-sync"));
    assert!(!pg_tables(&pg, "app", "public").contains(&"audit".to_string()));

    let sync = dbkeep(Some(&cfg), &["schema", "sync", "app", "--yes"], &[]).ok();
    assert!(
        sync.stdout.contains("created 1 table(s)"),
        "{}",
        sync.stdout
    );
    assert!(reasons(&cfg).contains(&"pre-sync".to_string()));
    let (_, st) = status_json(&cfg);
    let left = differences(&st["schemas"][0]);
    assert_eq!(left.len(), 6, "only the missing table was fixed: {left:?}");
    assert!(!left.iter().any(|d| d.0 == "missing_table"));
    assert!(pg_tables(&pg, "app", "public").contains(&"extra".to_string()));
    assert_eq!(
        pg.psql(
            "app",
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'name'"
        ),
        "text",
        "sync alters nothing that exists"
    );

    // The proposed script is never applied and comments out what destroys data.
    let sql = dbkeep(Some(&cfg), &["schema", "diff", "app", "--sql"], &[])
        .ok()
        .stdout;
    assert!(
        sql.contains("ALTER TABLE \"users\" ALTER COLUMN \"name\" TYPE character varying(80);"),
        "{sql}"
    );
    assert!(
        sql.contains("CREATE INDEX \"users_email_idx\" ON \"users\" USING btree (email);"),
        "{sql}"
    );
    assert!(sql.contains("ALTER TABLE \"orders\" ADD CONSTRAINT \"orders_user_id_fkey\" FOREIGN KEY (user_id) REFERENCES users(id);"), "{sql}");
    assert!(sql.contains("-- DROP TABLE \"extra\";"), "{sql}");
    assert!(
        sql.contains("-- ALTER TABLE \"users\" DROP COLUMN \"age\";"),
        "{sql}"
    );
    assert!(pg_tables(&pg, "app", "public").contains(&"extra".to_string()));
}

#[test]
fn changed_defaults_identities_indexes_and_constraints_are_named() {
    let (pg, _sb, _dir, cfg) = setup_pg("");
    dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 0, "in sync after the migrations: {st}");
    pg.psql(
        "app",
        "ALTER TABLE orders ALTER COLUMN total SET DEFAULT 1;
         ALTER TABLE orders ALTER COLUMN id SET GENERATED BY DEFAULT;
         CREATE INDEX users_name_idx ON users (name);
         DROP INDEX users_email_idx;
         CREATE INDEX users_email_idx ON users (lower(email));
         ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);
         ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey;
         ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey
             FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;",
    );
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3, "drift: {st}");
    assert_eq!(st["in_sync"], false);
    let public = &st["schemas"][0];
    assert_eq!(public["schema"], "public");
    let s = |x: &str| x.to_string();
    assert_eq!(
        differences(public),
        vec![
            (
                s("constraint_changed"),
                s("orders"),
                Some(s("orders_user_id_fkey"))
            ),
            (s("default_changed"), s("orders"), Some(s("total"))),
            (
                s("extra_constraint"),
                s("users"),
                Some(s("users_email_key"))
            ),
            (s("extra_index"), s("users"), Some(s("users_name_idx"))),
            (s("identity_changed"), s("orders"), Some(s("id"))),
            (s("index_changed"), s("users"), Some(s("users_email_idx"))),
        ]
    );
    let messages: Vec<(String, String)> = public["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (kind, message) in [
        (
            "default_changed",
            "table orders: column total default is 1, declared default is 0",
        ),
        (
            "identity_changed",
            "table orders: column id is an identity column (generated by default), \
             declared is an identity column (generated always)",
        ),
        (
            "extra_index",
            "table users: extra index users_name_idx (USING btree (name))",
        ),
        (
            "index_changed",
            "table users: index users_email_idx is USING btree (lower(email)), \
             declared is USING btree (email)",
        ),
        (
            "extra_constraint",
            "table users: extra unique constraint users_email_key (UNIQUE (email))",
        ),
        (
            "constraint_changed",
            "table orders: foreign key orders_user_id_fkey is \
             FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE, \
             declared is FOREIGN KEY (user_id) REFERENCES users(id)",
        ),
    ] {
        assert!(
            messages.contains(&(kind.to_string(), message.to_string())),
            "{kind}: {message:?} not in {messages:#?}"
        );
    }
    // The text report names them the same way.
    let text = dbkeep(Some(&cfg), &["schema", "status", "app"], &[]);
    assert_eq!(text.code, 3, "{}", text.stderr);
    for (_, message) in &messages {
        assert!(
            text.stdout.contains(message.as_str()),
            "{message:?} not in:\n{}",
            text.stdout
        );
    }
}

#[test]
fn a_failing_migration_rolls_back_to_the_state_after_the_previous_one() {
    let (pg, sb, dir, cfg) = setup_pg("");
    std::fs::write(
        dir.join("0003_audit.up.sql"),
        "CREATE TABLE audit (id int);\nALTER TABLE users ADD COLUMN created timestamptz;\nCREAT INDEX audit_id ON audit (id);\n",
    )
    .unwrap();
    let run = dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("0003_audit.up.sql failed at line 3"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("schema public"), "{}", run.stderr);
    assert_eq!(
        pg_tables(&pg, "app", "public"),
        vec!["_sqlx_migrations", "orders", "users"],
        "the third migration's CREATE TABLE was rolled back"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'created'"
        ),
        "0"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations"
        ),
        "1,2"
    );
    // The backup before it is there to go back to.
    assert_eq!(reasons(&cfg), vec!["pre-migrate"]);
    drop(sb);
}

#[test]
fn tenant_schemas_get_the_migrations_and_their_own_drift() {
    let (pg, _sb, _dir, cfg) = setup_pg("tenant_schemas = [\"tenant_*\"]");
    pg.psql(
        "app",
        "CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b; CREATE SCHEMA other;",
    );
    let up = dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    for schema in ["public", "tenant_a", "tenant_b"] {
        assert!(
            up.stdout
                .contains(&format!("schema {schema}: applied 0001, 0002, 0003")),
            "{}",
            up.stdout
        );
        assert_eq!(
            pg_tables(&pg, "app", schema),
            vec!["_sqlx_migrations", "audit", "orders", "users"],
            "{schema}"
        );
    }
    assert!(pg_tables(&pg, "app", "other").is_empty());
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM tenant_b._sqlx_migrations"),
        "3",
        "each schema keeps its own history"
    );
    let (code, _) = status_json(&cfg);
    assert_eq!(code, 0);

    pg.psql("app", "ALTER TABLE tenant_b.users DROP COLUMN name;");
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3);
    let by_schema: Vec<(String, usize)> = st["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["schema"].as_str().unwrap().to_string(),
                s["differences"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        by_schema,
        vec![
            ("public".to_string(), 0),
            ("tenant_a".to_string(), 0),
            ("tenant_b".to_string(), 1)
        ]
    );
    assert_eq!(
        differences(&st["schemas"][2]),
        vec![(
            "missing_column".to_string(),
            "users".to_string(),
            Some("name".to_string())
        )]
    );
}

#[test]
fn a_modified_applied_migration_is_refused_before_anything_happens() {
    let (pg, _sb, dir, cfg) = setup_pg("");
    dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    std::fs::write(
        dir.join("0001_users.up.sql"),
        format!("{M1_UP}-- edited after it ran\n"),
    )
    .unwrap();
    std::fs::write(dir.join("0004_tags.up.sql"), "CREATE TABLE tags (id int);").unwrap();
    let run = dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("0001_users.up.sql was modified"),
        "{}",
        run.stderr
    );
    assert!(!pg_tables(&pg, "app", "public").contains(&"tags".to_string()));
    assert_eq!(reasons(&cfg).len(), 1, "no backup for a refused run");
    let (_, st) = status_json(&cfg);
    assert_eq!(states(&st["schemas"][0])[0], (1, "modified".to_string()));
}

#[test]
fn diff_against_an_older_backup_lists_the_tables_added_since() {
    let (pg, sb, _dir, cfg) = setup_pg("");
    dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    let first = listed(&cfg)
        .into_iter()
        .find(|b| b["reason"] == "manual")
        .unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    pg.psql(
        "app",
        "CREATE TABLE invoices (id int PRIMARY KEY); CREATE TABLE refunds (id int);",
    );
    let run = dbkeep(
        Some(&cfg),
        &["schema", "diff", "app", "--against", &id],
        &[],
    )
    .ok();
    assert!(
        run.stdout.contains(&format!(
            "extra table invoices that backup {id} does not have"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("extra table refunds"), "{}", run.stdout);
    assert!(!run.stdout.contains("users"), "{}", run.stdout);

    // The manifests record the fingerprint; the next backup notices the change.
    let manifest = |id: &str| -> Value {
        let f = sb
            .files("app")
            .into_iter()
            .find(|f| f.starts_with(&format!("app_{id}")) && f.ends_with(".manifest.json"))
            .unwrap();
        serde_json::from_slice(&std::fs::read(sb.backups().join("app").join(f)).unwrap()).unwrap()
    };
    let before = manifest(&id)["schema_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(before.len(), 64);
    let second = dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    assert!(
        second
            .stderr
            .contains("schema changed since the last backup"),
        "{}",
        second.stderr
    );
    let newest = listed(&cfg)[0]["id"].as_str().unwrap().to_string();
    assert_ne!(
        manifest(&newest)["schema_fingerprint"].as_str().unwrap(),
        before
    );
    let third = dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    assert!(!third.stderr.contains("schema changed"), "{}", third.stderr);
}

fn sqlite(db: &Path, sql: &str) -> String {
    crate::common::sqlite_query(db, sql)
}

fn sqlite_migrations(sb: &Sandbox) -> PathBuf {
    let dir = sb.path().join("lite-migrations");
    std::fs::create_dir_all(&dir).unwrap();
    // The table `sqlite_target` creates is part of the declared schema too.
    std::fs::write(
        dir.join("0000_t.up.sql"),
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    std::fs::write(
        dir.join("0001_notes.up.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, t_id INTEGER REFERENCES t(id));\nCREATE INDEX notes_body ON notes (body);\n",
    )
    .unwrap();
    std::fs::write(dir.join("0001_notes.down.sql"), "DROP TABLE notes;").unwrap();
    std::fs::write(
        dir.join("0002_tags.up.sql"),
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE);\n",
    )
    .unwrap();
    std::fs::write(dir.join("0002_tags.down.sql"), "DROP TABLE tags;").unwrap();
    dir
}

fn sqlite_tables(db: &Path) -> String {
    sqlite(
        db,
        "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name)",
    )
}

#[test]
fn sqlite_status_migrate_and_sync_on_a_file_database() {
    let sb = Sandbox::new();
    let dir = sqlite_migrations(&sb);
    let (db, cfg) = sqlite_target(
        &sb,
        "app",
        &format!("[targets.app.schema]\nmigrations = \"{}\"", dir.display()),
    );
    let (code, st) = status_json(&cfg);
    assert_eq!(code, 3);
    assert_eq!(st["schemas"][0]["schema"], "main");
    let s = |x: &str| x.to_string();
    assert_eq!(
        differences(&st["schemas"][0]),
        vec![
            (s("missing_table"), s("notes"), None),
            (s("missing_table"), s("tags"), None)
        ]
    );

    // sync creates the missing tables from SQLite's own statements, after a backup.
    dbkeep(Some(&cfg), &["schema", "sync", "app", "--yes"], &[]).ok();
    assert_eq!(sqlite_tables(&db), "notes,t,tags");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), "2", "rows untouched");
    assert_eq!(reasons(&cfg), vec!["pre-sync"]);
    let (_, st) = status_json(&cfg);
    assert!(
        st["schemas"][0]["differences"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{st}"
    );

    // The history still says pending: the migrations were not run, so migrate would fail
    // on the tables sync made. Start again from a database with only `t`.
    let (db2, cfg2) = sqlite_target(&sb, "fresh", "");
    let toml = std::fs::read_to_string(&cfg2).unwrap();
    let cfg2 = sb.write_config(&format!(
        "{toml}\n[targets.fresh.schema]\nmigrations = \"{}\"\n",
        dir.display()
    ));
    let up = dbkeep(Some(&cfg2), &["migrate", "fresh", "up", "--to", "1"], &[]).ok();
    assert!(
        up.stdout.contains("schema main: applied 0000, 0001"),
        "{}",
        up.stdout
    );
    assert_eq!(sqlite_tables(&db2), "_sqlx_migrations,notes,t");
    let run = dbkeep(Some(&cfg2), &["schema", "status", "fresh", "--json"], &[]);
    assert_eq!(run.code, 3, "0002 is still pending");
    dbkeep(Some(&cfg2), &["migrate", "fresh"], &[]).ok();
    let (code, _) = {
        let r: Run = dbkeep(Some(&cfg2), &["schema", "status", "fresh"], &[]);
        (r.code, r.stdout)
    };
    assert_eq!(code, 0);

    // Drift on SQLite is named too; a dropped index and an extra column.
    sqlite(
        &db2,
        "DROP INDEX notes_body; ALTER TABLE tags ADD COLUMN color TEXT;",
    );
    let r = dbkeep(Some(&cfg2), &["schema", "status", "fresh", "--json"], &[]);
    assert_eq!(r.code, 3);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        differences(&v["schemas"][0]),
        vec![
            (s("extra_column"), s("tags"), Some(s("color"))),
            (s("missing_index"), s("notes"), Some(s("notes_body"))),
        ]
    );
    dbkeep(
        Some(&cfg2),
        &["migrate", "fresh", "down", "--steps", "2", "--yes"],
        &[],
    )
    .ok();
    assert_eq!(sqlite_tables(&db2), "_sqlx_migrations,t");
}

#[test]
fn schema_config_mistakes_name_their_key() {
    let sb = Sandbox::new();
    let dir = sqlite_migrations(&sb);
    let file = sb.path().join("desired.sql");
    std::fs::write(&file, "CREATE TABLE x (id int);").unwrap();
    for (extra, key) in [
        (
            format!(
                "migrations = \"{}\"\ndesired = \"{}\"",
                dir.display(),
                file.display()
            ),
            "targets.app.schema.desired",
        ),
        (
            format!("migrations = \"{}/nope\"", dir.display()),
            "targets.app.schema.migrations",
        ),
        (
            format!(
                "migrations = \"{}\"\ntenant_schemas = [\"t_*\"]",
                dir.display()
            ),
            "targets.app.schema.tenant_schemas",
        ),
        ("tenants = [\"x\"]".to_string(), "tenants"),
    ] {
        let (_, cfg) = sqlite_target(&sb, "app", &format!("[targets.app.schema]\n{extra}"));
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{extra}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{extra}: {}", run.stderr);
        std::fs::remove_file(sb.path().join("app.db")).unwrap();
    }
    // A target without a schema section says how to add one.
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let run = dbkeep(Some(&cfg), &["schema", "status", "app"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("[targets.app.schema]"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_daemon_reports_schema_drift_until_the_migrations_are_applied() {
    let sb = Sandbox::new();
    let dir = sqlite_migrations(&sb);
    let (_db, cfg) = sqlite_target(
        &sb,
        "app",
        &format!(
            "every = \"2s\"\nmin_keep = 2\n[targets.app.schema]\nmigrations = \"{}\"",
            dir.display()
        ),
    );
    let daemon = spawn_daemon(&cfg, &[]);
    let sample = "dbkeep_schema_drift{target=\"app\"}";
    wait_for(Duration::from_secs(60), "drift reported", || {
        daemon.metric(sample) == Some(1.0)
    });
    dbkeep(Some(&cfg), &["migrate", "app"], &[]).ok();
    wait_for(
        Duration::from_secs(60),
        "drift cleared after a backup",
        || daemon.metric(sample) == Some(0.0),
    );
}

#[test]
fn a_role_without_createdb_is_told_what_the_declared_schema_needs() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE ROLE app_user LOGIN PASSWORD 'app-user-pw' NOCREATEDB;",
    );
    let sb = Sandbox::new();
    let dir = migrations(&sb);
    let url = pg.url("app").replace("postgres@", "app_user@");
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{url}\"\npassword = \"app-user-pw\"\n{}",
        sb.backups().display(),
        schema_section(&dir, "")
    ));
    let run = dbkeep(Some(&cfg), &["schema", "status", "app"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("needs CREATEDB"), "{}", run.stderr);
    assert!(!run.stderr.contains("app-user-pw"), "{}", run.stderr);
}

/// `migrate baseline`: a database whose schema was built before its migrations adopts
/// the folder after a check that it equals what migrations 1..N build; nothing is run,
/// no backup is needed, and a database that differs or already has a history is refused.
#[test]
fn baseline_adopts_migrations_on_a_database_that_already_has_the_schema() {
    let (pg, _sb, _dir, cfg) = setup_pg("");
    // Built by hand, long ago: what migrations 1 and 2 declare, and a row of data.
    pg.psql("app", &format!("{M1_UP}{M2_UP}"));
    pg.psql("app", "INSERT INTO users (email) VALUES ('a@b.test')");
    let history = || {
        dbkeep(Some(&cfg), &["migrate", "app", "history", "--json"], &[])
            .ok()
            .stdout
    };

    // All three: migration 3 (audit) is not in the database, so it is refused.
    let run = dbkeep(Some(&cfg), &["migrate", "app", "baseline"], &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("not what migrations 1..3 build"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("audit"),
        "the difference is named: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing was recorded"),
        "{}",
        run.stderr
    );
    assert_eq!(history().trim(), "[]", "nothing recorded");

    // A version that is not in the folder.
    let run = dbkeep(
        Some(&cfg),
        &["migrate", "app", "baseline", "--to", "7"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("versions: 1, 2, 3"), "{}", run.stderr);

    // Up to 2: matches, recorded, nothing run, no backup taken.
    let run = dbkeep(
        Some(&cfg),
        &["migrate", "app", "baseline", "--to", "2"],
        &[],
    )
    .ok();
    assert!(
        run.stdout
            .contains("recorded as applied: 0001, 0002 (nothing was run)"),
        "{}",
        run.stdout
    );
    let (_, st) = status_json(&cfg);
    assert_eq!(
        states(&st["schemas"][0]),
        vec![
            (1, "applied".into()),
            (2, "applied".into()),
            (3, "pending".into())
        ]
    );
    assert!(
        reasons(&cfg).is_empty(),
        "baseline takes no backup: {:?}",
        reasons(&cfg)
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM users"), "1");

    // Twice is refused: the database has a history now.
    let run = dbkeep(
        Some(&cfg),
        &["migrate", "app", "baseline", "--to", "2"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("already has a migration history"),
        "{}",
        run.stderr
    );

    // And the folder now drives the database: up applies only migration 3.
    let up = dbkeep(Some(&cfg), &["migrate", "app", "up"], &[]).ok();
    assert!(up.stdout.contains("applied 0003"), "{}", up.stdout);
    assert_eq!(
        pg_tables(&pg, "app", "public"),
        vec!["_sqlx_migrations", "audit", "orders", "users"]
    );
}

/// Baseline compares more than tables: schemas the migrations create, views, functions,
/// enum labels, triggers and column collations must be there too, or nothing is recorded.
#[test]
fn baseline_refuses_a_database_missing_views_functions_types_or_schemas() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let dir = sb.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    let full = "CREATE TYPE mood AS ENUM ('happy', 'sad');\n\
                CREATE TABLE a (id int PRIMARY KEY, m mood, name text COLLATE \"C\");\n\
                CREATE VIEW a_names AS SELECT name FROM a;\n\
                CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n\
                CREATE TRIGGER a_touch BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION touch();\n\
                CREATE SCHEMA audit;\nCREATE TABLE audit.log (at timestamptz);\n";
    std::fs::write(dir.join("0001_init.up.sql"), full).unwrap();
    let cfg = pg_config(&sb, &pg, "app", &schema_section(&dir, ""));
    // Built by hand with the table right but each other object wrong or missing.
    pg.psql(
        "app",
        "CREATE TYPE mood AS ENUM ('angry'); \
         CREATE TABLE a (id int PRIMARY KEY, m mood, name text);",
    );
    let run = dbkeep(Some(&cfg), &["migrate", "app", "baseline"], &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    for named in [
        "type mood (happy, sad) is missing",
        "type mood (angry) is not in the migrations",
        "view a_names is missing",
        "function touch() is missing",
        "trigger a_touch on a is missing",
        "collation C of a.name is missing",
        "schema audit is missing",
    ] {
        assert!(run.stderr.contains(named), "{named}: {}", run.stderr);
    }
    let history = dbkeep(Some(&cfg), &["migrate", "app", "history", "--json"], &[]).ok();
    assert_eq!(history.stdout.trim(), "[]");
    // Made to match, it is adopted.
    pg.psql("app", "DROP TABLE a; DROP TYPE mood;");
    pg.psql("app", full);
    let run = dbkeep(Some(&cfg), &["migrate", "app", "baseline"], &[]).ok();
    assert!(
        run.stdout.contains("recorded as applied: 0001"),
        "{}",
        run.stdout
    );
}
