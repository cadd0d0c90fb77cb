//! Fleet coverage (issue 19): table filters against a real PostgreSQL.

use crate::common::{dbkeep, pg_config, Sandbox, TestPostgres};

/// `exclude_tables` leaves tables out entirely, `exclude_table_data` keeps their
/// definition without rows; the manifest records both, a drill expects neither, a restore
/// brings back the rest, and doctor warns about a pattern that matches nothing.
#[test]
fn excluded_tables_and_table_data_stay_out_and_drills_know_it() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE keep AS SELECT g AS id FROM generate_series(1, 500) g; \
         CREATE TABLE audit_log AS SELECT g AS id FROM generate_series(1, 500) g; \
         CREATE TABLE big_data AS SELECT g AS id FROM generate_series(1, 500) g; \
         CREATE SCHEMA logs; CREATE TABLE logs.events AS SELECT 1 AS id; \
         CREATE TABLE \"AuditLog\" AS SELECT 1 AS id; \
         CREATE TABLE m (k int) PARTITION BY RANGE (k); \
         CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100); INSERT INTO m VALUES (1); \
         ANALYZE;",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        "exclude_tables = [\"public.audit_log\", \"logs.*\", \"public.AuditLog\", \"public.m\"]\n\
         exclude_table_data = [\"public.big_data\"]",
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let manifest_file = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sb.backups().join("app").join(manifest_file)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["excluded_tables"],
        serde_json::json!(["public.audit_log", "logs.*", "public.AuditLog", "public.m"])
    );
    assert_eq!(
        manifest["excluded_table_data"],
        serde_json::json!(["public.big_data"])
    );
    let tables = manifest["tables"].to_string();
    assert!(
        !tables.contains("audit_log") && !tables.contains("events"),
        "{tables}"
    );
    // The drill restores the archive and finds what it expects.
    dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]).ok();
    let into = pg.url("copy");
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    )
    .ok();
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM keep"), "500");
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM big_data"), "0");
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('audit_log', 'events')"
        ),
        "0"
    );
    // A pattern that matches nothing is a doctor warning (the table meant is backed up whole).
    let typo = pg_config(&sb, &pg, "app", "exclude_tables = [\"public.audit_logs\"]");
    let run = dbkeep(Some(&typo), &["doctor", "app"], &[]);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("exclusions"))
        .unwrap_or_else(|| panic!("{}", run.stdout))
        .to_string();
    assert!(
        line.contains("LIMITED") && line.contains("public.audit_logs"),
        "{line}"
    );
}

/// Filters need a schema-qualified pattern, and SQLite targets refuse them.
#[test]
fn table_filter_mistakes_are_config_errors() {
    let sb = Sandbox::new();
    let pg_target = |extra: &str| {
        sb.write_config(&format!(
            "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/app\"\n{extra}\n",
            sb.backups().display()
        ))
    };
    for (extra, key) in [
        (
            "exclude_tables = [\"audit_log\"]",
            "targets.app.exclude_tables",
        ),
        (
            "exclude_table_data = [\"public. x\"]",
            "targets.app.exclude_table_data",
        ),
        (
            "exclude_tables = ['public.\"Users\"']",
            "targets.app.exclude_tables",
        ),
        (
            "exclude_tables = [\"public.[ab]\"]",
            "targets.app.exclude_tables",
        ),
    ] {
        let run = dbkeep(Some(&pg_target(extra)), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{extra}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{extra}: {}", run.stderr);
        assert!(run.stderr.contains("schema-qualified"), "{}", run.stderr);
    }
    let sqlite = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.c]\nkind = \"sqlite\"\npath = \"/x.db\"\nexclude_tables = [\"main.t\"]\n",
        sb.backups().display()
    ));
    let run = dbkeep(Some(&sqlite), &["config", "check"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("targets.c.exclude_tables"),
        "{}",
        run.stderr
    );
}

/// A filter that would make an unrestorable backup is refused before anything is dumped:
/// a kept table referencing an excluded one, or rows referencing rows left out. Doctor
/// says so too. Patterns are case-sensitive globs on the real names.
#[test]
fn filters_that_break_foreign_keys_are_refused_and_names_are_exact() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers VALUES (1); \
         CREATE TABLE orders (cid int REFERENCES customers(id)); INSERT INTO orders VALUES (1); \
         CREATE TABLE \"Users\" AS SELECT 1 AS id; CREATE TABLE users AS SELECT 1 AS id;",
    );
    let sb = Sandbox::new();
    for filter in [
        "exclude_tables = [\"public.customers\"]",
        "exclude_table_data = [\"public.customers\"]",
    ] {
        let cfg = pg_config(&sb, &pg, "app", filter);
        let run = dbkeep(Some(&cfg), &["backup"], &[]);
        assert_eq!(run.code, 2, "{filter}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("public.orders references public.customers (orders_cid_fkey)"),
            "{}",
            run.stderr
        );
        assert!(sb.files("app").iter().all(|f| !f.ends_with(".dump.zst")));
        let doctor = dbkeep(Some(&cfg), &["doctor", "app"], &[]);
        assert!(
            doctor.stdout.contains("could not be restored"),
            "{}",
            doctor.stdout
        );
    }
    // Excluding both sides works; "public.Users" is the table "Users", not "users".
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        "exclude_tables = [\"public.customers\", \"public.orders\", \"public.Users\"]",
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]).ok();
    let into = pg.url("copy");
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    )
    .ok();
    assert_eq!(
        pg.psql("copy", "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"),
        "users"
    );
}

/// `jobs = 2`: the archives of one run stream two at a time from the run's one snapshot.
/// When one fails, no new one starts, those going are awaited, and nothing of the run is
/// kept (no archive without its manifest).
#[test]
fn archives_of_a_run_stream_in_parallel_and_a_failure_keeps_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let pg = TestPostgres::start();
    pg.create_db("app");
    for s in ["s1", "s2", "s3", "s4"] {
        pg.psql(
            "app",
            &format!("CREATE SCHEMA {s}; CREATE TABLE {s}.t AS SELECT g FROM generate_series(1, 20000) g"),
        );
    }
    let sb = Sandbox::new();
    // A pg_dump that takes a second per archive: two at once show as overlapping times.
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = pg.bin.join("pg_dump");
    std::fs::write(
        bin.join("pg_dump"),
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {r} --version;; esac\n\
             if [ -e {m} ]; then case \"$*\" in *s3*) sleep 1; echo broken; exit 3;; esac; fi\n\
             sleep 1\nexec {r} \"$@\"\n",
            r = real.display(),
            m = sb.path().join("fail-s3").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!(
            "schemas = [\"s*\"]\njobs = 2\npg_bin_dir = \"{}\"",
            bin.display()
        ),
    );
    let t0 = std::time::Instant::now();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let took = t0.elapsed();
    let manifests: Vec<serde_json::Value> = sb
        .files("app")
        .into_iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .map(|f| {
            serde_json::from_slice(&std::fs::read(sb.backups().join("app").join(f)).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(manifests.len(), 4);
    // Four archives of at least a second each: two at a time is about 2 s, not 4.
    let overlaps = manifests.iter().enumerate().any(|(i, a)| {
        manifests.iter().skip(i + 1).any(|b| {
            a["started"].as_str() < b["finished"].as_str()
                && b["started"].as_str() < a["finished"].as_str()
        })
    });
    assert!(overlaps, "no two archives overlapped in {took:?}");
    // The dump of s3 fails while others stream: the run fails and keeps nothing of itself.
    std::fs::write(sb.path().join("fail-s3"), b"").unwrap();
    let before = sb.files("app");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(sb.files("app"), before, "{}", run.stderr);
}

/// A run of one archive per schema restores whole into another database with one
/// command, `jobs` archives at once. Schema `a` has a foreign key into `c`: its archive
/// cannot go in before `c`'s, fails as a whole, and goes in on the next round. Every row
/// and the constraint come back; a non-empty destination is refused without --yes.
#[test]
fn a_per_schema_run_restores_whole_into_another_database_jobs_at_once() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA a; CREATE SCHEMA b; CREATE SCHEMA c; \
         CREATE TABLE c.t AS SELECT g AS id FROM generate_series(1, 3000) g; \
         ALTER TABLE c.t ADD PRIMARY KEY (id); \
         CREATE TABLE b.t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000) g; \
         CREATE TABLE a.t (id int PRIMARY KEY, c_id int REFERENCES c.t (id)); \
         INSERT INTO a.t SELECT g, g FROM generate_series(1, 1000) g;",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "schemas = [\"a\", \"b\", \"c\"]\njobs = 2");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let into = pg.url("copy");
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    )
    .ok();
    assert!(
        run.stdout.contains("restored 3 schema archive(s)"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("tried again") && run.stderr.contains("up to 2 at once"),
        "a's archive needs c's and goes in on a later round: {}",
        run.stderr
    );
    for (table, rows) in [("a.t", "1000"), ("b.t", "2000"), ("c.t", "3000")] {
        assert_eq!(
            pg.psql("copy", &format!("SELECT count(*) FROM {table}")),
            rows
        );
    }
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'a.t'::regclass"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM b.t"
        ),
        pg.psql("app", "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM b.t")
    );
    // Into it again: not empty, refused, nothing changed.
    let again = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM a.t"), "1000");
}

/// An archive that can never go in (it needs a schema the run does not hold) stops the
/// restore after one round without progress, naming it and the schemas that went in.
#[test]
fn a_per_schema_restore_that_cannot_finish_names_what_went_in() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA x; CREATE TYPE x.mood AS ENUM ('ok', 'sad'); \
         CREATE SCHEMA a; CREATE TABLE a.t (id int, m x.mood); INSERT INTO a.t VALUES (1, 'ok'); \
         CREATE SCHEMA b; CREATE TABLE b.t AS SELECT g AS id FROM generate_series(1, 10) g;",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "schemas = [\"a\", \"b\"]\njobs = 2");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let into = pg.url("copy");
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("schema a could not be restored")
            && run.stderr.contains("restored: b")
            && run.stderr.contains(
                "remove them (or, if this restore created it, the database) before trying again"
            ),
        "{}",
        run.stderr
    );
    // Nothing of a's archive went in (one transaction), all of b's did.
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM b.t"), "10");
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'a'"
        ),
        "0"
    );
}
