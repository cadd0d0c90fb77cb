//! Restores and drills against real PostgreSQL, SQLite and S3.

use std::time::Duration;

use crate::common::s3::TestS3;
use crate::common::{
    dbkeep, pg_config, spawn_daemon, sqlite_target, wait_for, Sandbox, TestPostgres,
};

fn seed(pg: &TestPostgres, db: &str) {
    pg.create_db(db);
    pg.psql(
        db,
        "CREATE SCHEMA billing;
         CREATE TABLE public.a (id int PRIMARY KEY, v text);
         INSERT INTO public.a SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         CREATE TABLE billing.t (id int PRIMARY KEY, amount numeric);
         INSERT INTO billing.t SELECT g, g * 1.25 FROM generate_series(1, 500) g;",
    );
}

fn listed(cfg: &std::path::Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&dbkeep(Some(cfg), &["list", "--json"], &[]).ok().stdout).unwrap()
}

fn archive_of(sb: &Sandbox, suffix: &str) -> std::path::PathBuf {
    let f = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(suffix))
        .unwrap();
    sb.backups().join("app").join(f)
}

#[test]
fn restore_latest_brings_back_the_backed_up_state_after_a_safety_backup() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let backed_up = pg.table_checksums("app");

    pg.psql(
        "app",
        "INSERT INTO public.a VALUES (99999, 'new'); UPDATE billing.t SET amount = 0 WHERE id < 10; DROP TABLE public.a;",
    );
    let changed = pg.table_checksums("app");
    assert_ne!(changed, backed_up);

    let run = dbkeep(Some(&cfg), &["restore", "app", "--yes"], &[]).ok();
    assert!(run.stderr.contains("checksum OK"), "{}", run.stderr);
    assert_eq!(
        pg.table_checksums("app"),
        backed_up,
        "restored state equals the backup, table by table"
    );

    // The safety backup exists, is listed, is marked, and itself restores the changed state.
    let all = listed(&cfg);
    assert_eq!(all.len(), 2, "{all:?}");
    let safety = &all[0];
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sb.backups().join("app").join(format!(
            "{}.manifest.json",
            safety["file"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["reason"], "pre-restore");
    let into = format!("postgres://postgres@127.0.0.1:{}/safety_copy", pg.port);
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            safety["id"].as_str().unwrap(),
            "--into",
            &into,
        ],
        &[],
    )
    .ok();
    assert_eq!(pg.table_checksums("safety_copy"), changed);
}

#[test]
fn one_tenant_schema_is_replaced_and_the_others_are_untouched() {
    let pg = TestPostgres::start();
    pg.create_db("mt");
    pg.psql(
        "mt",
        "CREATE SCHEMA tenant_1; CREATE SCHEMA tenant_2;
         CREATE TABLE tenant_1.items (id int PRIMARY KEY, v text); INSERT INTO tenant_1.items SELECT g, 'a' || g FROM generate_series(1, 300) g;
         CREATE TABLE tenant_2.items (id int PRIMARY KEY, v text); INSERT INTO tenant_2.items SELECT g, 'b' || g FROM generate_series(1, 300) g;",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "mt", "schemas = [\"tenant_*\"]");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let before = pg.table_checksums("mt");
    pg.psql(
        "mt",
        "DELETE FROM tenant_1.items WHERE id > 100; CREATE TABLE tenant_1.extra (x int);
         UPDATE tenant_2.items SET v = 'changed';",
    );
    let tenant2_changed = pg.psql(
        "mt",
        "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM tenant_2.items",
    );
    let id = listed(&cfg)[0]["id"].as_str().unwrap().to_string();
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:tenant_1"),
            "--yes",
            "--no-safety-backup",
        ],
        &[],
    )
    .ok();
    let after = pg.table_checksums("mt");
    let t1 = |v: &Vec<(String, String)>| {
        v.iter()
            .filter(|(t, _)| t.starts_with("tenant_1."))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        t1(&after),
        t1(&before),
        "tenant_1 is exactly as backed up (extra table gone)"
    );
    assert_eq!(
        pg.psql(
            "mt",
            "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM tenant_2.items"
        ),
        tenant2_changed,
        "tenant_2 untouched"
    );
}

#[test]
fn one_schema_restores_out_of_a_whole_database_archive() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let billing_before = pg.psql(
        "app",
        "SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM billing.t",
    );
    pg.psql(
        "app",
        "UPDATE billing.t SET amount = -1; UPDATE public.a SET v = 'kept'",
    );
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest:billing",
            "--yes",
            "--no-safety-backup",
        ],
        &[],
    )
    .ok();
    assert_eq!(
        pg.psql(
            "app",
            "SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM billing.t"
        ),
        billing_before
    );
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM public.a WHERE v = 'kept'"),
        "2000",
        "public untouched"
    );
}

#[test]
fn a_flipped_byte_is_refused_before_connecting_and_reported_by_verify_and_the_drill() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "every = \"1h\"\nverify_schedule = \"2s\"");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    pg.psql("app", "UPDATE public.a SET v = 'live'");
    let live = pg.table_checksums("app");
    let archive = archive_of(&sb, ".dump.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&archive, bytes).unwrap();

    let run = dbkeep(Some(&cfg), &["restore", "app", "--yes"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is corrupt: its sha256 is"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.table_checksums("app"), live, "database unchanged");
    assert_eq!(listed(&cfg).len(), 1, "no safety backup was taken either");

    let verify = dbkeep(Some(&cfg), &["verify"], &[]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stdout.contains("PROBLEM") && verify.stdout.contains("CORRUPT"),
        "{}",
        verify.stdout
    );
    let drill = dbkeep(Some(&cfg), &["verify", "--drill"], &[]);
    assert_eq!(drill.code, 1);
    assert!(drill.stdout.contains("drill FAILED"), "{}", drill.stdout);

    // The daemon's scheduled drill fails too, and /health says so.
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(30), "a failed drill", || {
        d.metric(r#"dbkeep_verify_runs_total{status="failure",target="app"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    let (status, body) = d.get("/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("last restore drill failed"), "{body}");
}

#[test]
fn a_restore_that_fails_midway_leaves_the_database_exactly_as_it_was() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    // A destination where the archive conflicts: billing.t exists with another shape, and
    // a view outside the archive depends on it, so `--yes` (which drops what the archive
    // holds first) fails at that drop; public.a (restored first) must not survive the
    // rollback.
    pg.create_db("conflict");
    pg.psql("conflict", "CREATE SCHEMA billing; CREATE TABLE billing.t (other text); INSERT INTO billing.t VALUES ('mine'); \
         CREATE VIEW public.mine AS SELECT other FROM billing.t;");
    let before = pg.table_checksums("conflict");
    let into = format!("postgres://postgres@127.0.0.1:{}/conflict", pg.port);
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "--into", &into, "--yes"],
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("pg_restore failed"), "{}", run.stderr);
    // What stands in the way, and the ways out.
    assert!(
        run.stderr
            .contains("hint: objects that are not in the backup depend on objects"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.table_checksums("conflict"), before, "rolled back whole");
}

#[test]
fn without_a_terminal_or_yes_the_live_database_is_not_touched_and_into_rules_hold() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    pg.psql("app", "DELETE FROM public.a");
    let live = pg.table_checksums("app");
    let run = dbkeep(Some(&cfg), &["restore", "app"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("add --yes"), "{}", run.stderr);
    assert_eq!(pg.table_checksums("app"), live);
    assert_eq!(listed(&cfg).len(), 1, "no safety backup either");

    // --into a new database creates it; into a non-empty one is refused without --yes.
    let into = format!("postgres://postgres@127.0.0.1:{}/copy", pg.port);
    dbkeep(Some(&cfg), &["restore", "app", "--into", &into], &[]).ok();
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM public.a"), "2000");
    let again = dbkeep(Some(&cfg), &["restore", "app", "--into", &into], &[]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("exists and is not empty"),
        "{}",
        again.stderr
    );
}

#[test]
fn restore_reads_from_s3_when_the_local_copy_is_gone() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}{}", s3.config_section("bkp", "prod", "")),
    )
    .unwrap();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    for f in sb.files("app") {
        std::fs::remove_file(sb.backups().join("app").join(f)).unwrap();
    }
    let into = format!("postgres://postgres@127.0.0.1:{}/from_s3", pg.port);
    let run = dbkeep(Some(&cfg), &["restore", "app", "--into", &into], &[]).ok();
    assert!(run.stdout.contains("from s3"), "{}", run.stdout);
    assert_eq!(pg.table_checksums("from_s3"), pg.table_checksums("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_is_refused_while_a_writer_holds_the_database_then_replaces_it() {
    use sqlx::Connection;
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "cache", "");
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || dbkeep(Some(&cfg2), &["backup"], &[]).ok())
        .await
        .unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let mut writer = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::raw_sql("INSERT INTO t (v) VALUES ('after'); BEGIN IMMEDIATE; INSERT INTO t (v) VALUES ('uncommitted');")
        .execute(&mut writer)
        .await
        .unwrap();
    let cfg2 = cfg.clone();
    let run = tokio::task::spawn_blocking(move || {
        dbkeep(Some(&cfg2), &["restore", "cache", "--yes"], &[])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("another process holds a write lock"),
        "{}",
        run.stderr
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut writer)
        .await
        .unwrap();
    writer.close().await.unwrap();

    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || {
        dbkeep(Some(&cfg2), &["restore", "cache", "--yes"], &[]).ok()
    })
    .await
    .unwrap();
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2, "the row written after the backup is gone");
    // The safety copy holds it.
    let all = listed(&cfg);
    assert_eq!(all.len(), 2);
    let out = sb.path().join("safety.db");
    let cfg2 = cfg.clone();
    let id = all[0]["id"].as_str().unwrap().to_string();
    let out2 = out.clone();
    tokio::task::spawn_blocking(move || {
        dbkeep(
            Some(&cfg2),
            &["restore", "cache", &id, "--into", out2.to_str().unwrap()],
            &[],
        )
        .ok()
    })
    .await
    .unwrap();
    let mut safety = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&out),
    )
    .await
    .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&mut safety)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn a_drill_proves_the_backup_and_cleans_up_its_scratch_database_even_when_it_fails() {
    let pg = TestPostgres::start();
    seed(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let run = dbkeep(Some(&cfg), &["verify", "--drill"], &[]).ok();
    assert!(run.stdout.contains("drill OK"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("2500 rows in 2 tables proven identical"),
        "{}",
        run.stdout
    );
    let manifest_path = format!("{}.manifest.json", archive_of(&sb, ".dump.zst").display());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    // The proof is kept beside the manifest, which is never rewritten.
    assert!(manifest.get("verified_at").is_none(), "{manifest}");
    let listed = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert!(listed[0]["verified_at"].is_string(), "{listed}");
    let scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbkeep_drill_%'";
    assert_eq!(pg.psql("postgres", scratch), "0");

    // A manifest naming a table the archive does not hold: the check fails, the scratch
    // database is dropped all the same.
    let mut m = manifest.clone();
    m["tables"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"schema": "public", "name": "ghost", "rows": 5}));
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let run = dbkeep(Some(&cfg), &["verify", "--drill"], &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("public\".\"ghost\" is missing"),
        "{}",
        run.stdout
    );
    assert_eq!(
        pg.psql("postgres", scratch),
        "0",
        "scratch database dropped after a failure"
    );
}
