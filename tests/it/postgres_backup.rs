//! PostgreSQL backups: round trip of many types, per-schema archives, globals, failures.

use std::path::Path;

use crate::common::{dbkeep, decompress, pg_config, Sandbox, TestPostgres, PG_PASSWORD};

pub(crate) const MANY_TYPES: &str = r#"
CREATE SCHEMA billing;
CREATE TABLE public.customers (
    id bigserial PRIMARY KEY, name text NOT NULL, balance numeric(14,4), tags text[],
    profile jsonb, avatar bytea, seen_at timestamptz, born date, score double precision, active boolean
);
INSERT INTO public.customers (name, balance, tags, profile, avatar, seen_at, born, score, active)
SELECT 'customer ' || g, (g * 12.3456)::numeric(14,4), ARRAY['t' || g % 7, 'x'],
       jsonb_build_object('g', g, 'nested', jsonb_build_object('k', md5(g::text))),
       decode(md5(g::text), 'hex'), '2026-01-01 00:00:00+00'::timestamptz + g * interval '37 minutes',
       DATE '1970-01-01' + g, g / 7.0, g % 2 = 0
FROM generate_series(1, 3000) g;
CREATE INDEX customers_name_idx ON public.customers (name);
CREATE TABLE billing.invoices (id int PRIMARY KEY, customer_id bigint REFERENCES public.customers(id), total numeric, due interval, doc xml);
INSERT INTO billing.invoices SELECT g, g, g * 1.5, g * interval '1 day', ('<i n="' || g || '"/>')::xml FROM generate_series(1, 500) g;
CREATE SEQUENCE billing.invoice_no START 1000;
SELECT setval('billing.invoice_no', 4242);
CREATE VIEW billing.big_invoices AS SELECT * FROM billing.invoices WHERE total > 100;
CREATE TABLE public.docs (id int PRIMARY KEY, blob oid);
INSERT INTO public.docs VALUES (1, lo_from_bytea(0, convert_to(repeat('large object payload ', 2000), 'UTF8')));
"#;

fn only_archive(sb: &Sandbox, target: &str, suffix: &str) -> std::path::PathBuf {
    let files: Vec<String> = sb
        .files(target)
        .into_iter()
        .filter(|f| f.ends_with(suffix))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "expected one {suffix} archive, found {files:?}"
    );
    sb.backups().join(target).join(&files[0])
}

#[test]
fn roundtrip_of_many_types_restores_identical_rows() {
    let pg = TestPostgres::start();
    pg.create_db("src");
    pg.psql("src", MANY_TYPES);
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "src", "");
    let run = dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    assert!(run.stdout.contains("OK: 1 archive"), "{}", run.stdout);

    let archive = only_archive(&sb, "app", ".dump.zst");
    let raw = sb.path().join("raw.dump");
    decompress(&archive, &raw);
    assert_eq!(&std::fs::read(&raw).unwrap()[..5], b"PGDMP");
    pg.create_db("restored");
    let out = pg.pg_restore("restored", &raw);
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = pg.table_checksums("src");
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(before, pg.table_checksums("restored"));
    let lo = "SELECT md5(lo_get(blob)) FROM public.docs WHERE id = 1";
    assert_eq!(pg.psql("src", lo), pg.psql("restored", lo));
    assert_eq!(
        pg.psql("restored", "SELECT last_value FROM billing.invoice_no"),
        "4242"
    );
    assert_eq!(
        pg.psql("restored", "SELECT count(*) FROM billing.big_invoices"),
        "434"
    );
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'customers_name_idx'"
        ),
        "1"
    );

    // The manifest records what the archive is.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{}.manifest.json", archive.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], crate::common::sha256_file(&archive));
    assert_eq!(
        manifest["stored_bytes"],
        std::fs::metadata(&archive).unwrap().len()
    );
    assert_eq!(
        manifest["raw_bytes"],
        std::fs::metadata(&raw).unwrap().len()
    );
    assert!(manifest["tools"]["dump_tool"]
        .as_str()
        .unwrap()
        .contains("pg_dump (PostgreSQL) 1"));
    assert!(manifest["tools"]["server"]
        .as_str()
        .unwrap()
        .starts_with("PostgreSQL 1"));
    // The config the backup ran with holds the password, so its absence below means something.
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains(&format!("password = \"{PG_PASSWORD}\"")),
        "the config carries the password"
    );
    let all = std::fs::read_to_string(format!("{}.manifest.json", archive.display())).unwrap();
    assert!(
        !all.contains(PG_PASSWORD),
        "password leaked into the manifest"
    );
}

#[test]
fn schemas_give_one_archive_each_that_restores_only_that_schema() {
    let pg = TestPostgres::start();
    pg.create_db("mt");
    pg.psql(
        "mt",
        "CREATE SCHEMA shared; CREATE SCHEMA tenant_1; CREATE SCHEMA tenant_2; CREATE SCHEMA other;
         CREATE TABLE shared.plans (id int PRIMARY KEY, name text);
         INSERT INTO shared.plans VALUES (1, 'free'), (2, 'pro');
         CREATE TABLE tenant_1.items (id int PRIMARY KEY, v text);
         INSERT INTO tenant_1.items SELECT g, 't1-' || g FROM generate_series(1, 100) g;
         CREATE TABLE tenant_2.items (id int PRIMARY KEY, v text);
         INSERT INTO tenant_2.items SELECT g, 't2-' || g FROM generate_series(1, 50) g;
         CREATE TABLE other.junk (id int);",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "mt", r#"schemas = ["shared", "tenant_*"]"#);
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(run.stdout.contains("OK: 3 archive"), "{}", run.stdout);
    only_archive(&sb, "app", ".shared.dump.zst");
    only_archive(&sb, "app", ".tenant_2.dump.zst");
    assert!(sb.files("app").iter().all(|f| !f.contains("other")));

    let raw = sb.path().join("t1.dump");
    decompress(&only_archive(&sb, "app", ".tenant_1.dump.zst"), &raw);
    pg.create_db("t1only");
    let out = pg.pg_restore("t1only", &raw);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sums = pg.table_checksums("t1only");
    assert_eq!(sums.len(), 1, "only tenant_1 must be restored: {sums:?}");
    assert_eq!(sums[0].0, "tenant_1.items");
    assert_eq!(
        sums,
        pg.table_checksums("mt")
            .into_iter()
            .filter(|(t, _)| t == "tenant_1.items")
            .collect::<Vec<_>>()
    );

    // All archives of one run share the id; list shows each with its schema.
    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    let mut schemas: Vec<&str> = arr.iter().map(|b| b["schema"].as_str().unwrap()).collect();
    schemas.sort();
    assert_eq!(schemas, ["shared", "tenant_1", "tenant_2"]);
    assert!(arr.iter().all(|b| b["id"] == arr[0]["id"]));
}

#[test]
fn schema_pattern_matching_nothing_fails_and_keeps_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("mt");
    pg.psql(
        "mt",
        "CREATE SCHEMA shared; CREATE TABLE shared.t (id int);",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "mt", r#"schemas = ["shared", "tenant_*"]"#);
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("\"tenant_*\" matches no schema"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("targets.app.schemas"), "{}", run.stderr);
    assert!(sb.files("app").is_empty(), "{:?}", sb.files("app"));
}

#[test]
fn globals_are_dumped_beside_the_database() {
    let pg = TestPostgres::start();
    pg.create_db("g");
    pg.psql("postgres", "CREATE ROLE reporting_ro NOLOGIN");
    pg.psql("g", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "g", "globals = true\ncompression = \"gzip\"");
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(run.stdout.contains("OK: 2 archive"), "{}", run.stdout);
    let globals = only_archive(&sb, "app", ".globals.sql.gz");
    only_archive(&sb, "app", ".dump.gz");
    let sql = sb.path().join("globals.sql");
    decompress(&globals, &sql);
    let text = std::fs::read_to_string(&sql).unwrap();
    assert!(text.contains("CREATE ROLE reporting_ro"), "{text}");
    assert!(!text.contains(PG_PASSWORD));
}

fn assert_failed_cleanly(sb: &Sandbox, cfg: &Path, run: &crate::common::Run, needle: &str) {
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "expected {needle:?} in: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(PG_PASSWORD),
        "password in error output"
    );
    assert!(
        sb.files("app").is_empty(),
        "files left behind: {:?}",
        sb.files("app")
    );
    let list = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    assert_eq!(list.stdout.trim(), "[]");
}

#[test]
fn wrong_password_fails_with_a_clear_message_and_leaves_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"not-the-password\"\n",
        sb.backups().display(),
        pg.url("app")
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_failed_cleanly(&sb, &cfg, &run, "password authentication failed");
    assert!(
        run.stderr.contains("check the user's password"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-the-password"));
}

#[test]
fn missing_database_fails_with_a_clear_message_and_leaves_nothing() {
    let pg = TestPostgres::start();
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "no_such_db", "");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_failed_cleanly(&sb, &cfg, &run, "database \"no_such_db\" does not exist");
}

#[test]
fn pg_dump_killed_mid_stream_keeps_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("big");
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v FROM generate_series(1, 200000) g",
    );
    let sb = Sandbox::new();
    // A pg_bin_dir whose pg_dump streams 300 kB of a real dump, then dies by SIGKILL.
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = pg.bin.join("pg_dump");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\n{real} \"$@\" | head -c 300000\nkill -KILL $$\n",
        real = real.display()
    );
    let wrapper = bin.join("pg_dump");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = pg_config(
        &sb,
        &pg,
        "big",
        &format!("pg_bin_dir = \"{}\"", bin.display()),
    );
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_failed_cleanly(&sb, &cfg, &run, "pg_dump failed (killed by signal 9)");
}

#[test]
fn a_pg_bin_dir_without_pg_dump_names_the_package_to_install() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let empty = sb.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("pg_bin_dir = \"{}\"", empty.display()),
    );
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_failed_cleanly(&sb, &cfg, &run, "install postgresql-client-");
    assert!(
        run.stderr.contains("targets.app.pg_bin_dir"),
        "{}",
        run.stderr
    );
}

#[test]
fn password_file_and_pgpassword_are_used_and_never_shown() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let sb = Sandbox::new();
    let pw = sb.path().join("pg.secret");
    std::fs::write(&pw, format!("{PG_PASSWORD}\n")).unwrap();
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
        sb.backups().display(),
        pg.url("app"),
        pw.display()
    ));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let check = dbkeep(Some(&cfg), &["config", "check"], &[]).ok();
    assert!(
        check.stdout.contains("\"password\": \"***\""),
        "{}",
        check.stdout
    );
    assert!(!check.stdout.contains(PG_PASSWORD));

    // No password in the config: PGPASSWORD from the environment is used.
    let cfg2 = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\n",
        sb.backups().display(),
        pg.url("app")
    ));
    dbkeep(Some(&cfg2), &["backup"], &[("PGPASSWORD", PG_PASSWORD)]).ok();
    let list = dbkeep(Some(&cfg2), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(arr.len(), 2);
}
