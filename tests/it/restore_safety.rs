//! Restores that must refuse, or stay consistent, under the conditions the data-safety
//! issue found: schemas missing from the archive or with dependents outside, a URL that
//! names another database, `latest` after a restore, runs whose archives must share a
//! snapshot, owners, odd schema names, an archive that changes mid-restore, a live SQLite
//! database with a reader, and a safety backup that fails.

use std::time::Duration;

use crate::common::s3::TestS3;
use crate::common::{
    dbkeep, pg_config, spawn_dbkeep, sqlite_target, wait_for, wrapped_pg_bin, Sandbox,
    TestPostgres, PG_PASSWORD,
};

fn listed(cfg: &std::path::Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&dbkeep(Some(cfg), &["list", "--json"], &[]).ok().stdout).unwrap()
}

fn newest_id(cfg: &std::path::Path) -> String {
    listed(cfg)[0]["id"].as_str().unwrap().to_string()
}

/// public.t, a schema `s1` with data, and a view in public that depends on it.
fn seed_with_dependent(pg: &TestPostgres, db: &str) {
    pg.create_db(db);
    pg.psql(
        db,
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series(1, 300) g;
         CREATE SCHEMA s1;
         CREATE TABLE s1.acct (id int PRIMARY KEY, bal int);
         INSERT INTO s1.acct SELECT g, 100 FROM generate_series(1, 300) g;
         CREATE VIEW public.rich AS SELECT id FROM s1.acct WHERE bal > 50;",
    );
}

#[test]
fn a_schema_restore_checks_the_archive_and_the_dependents_before_touching_anything() {
    let pg = TestPostgres::start();
    seed_with_dependent(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let id = newest_id(&cfg);
    pg.psql("app", "UPDATE s1.acct SET bal = 7 WHERE id <= 10");
    let before = pg.table_checksums("app");
    let backups_before = listed(&cfg).len();

    // A schema the archive does not hold: refused, the live schema untouched, no safety
    // backup taken.
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", &format!("{id}:nope"), "--yes"],
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("has no schema \"nope\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("s1"),
        "it names what it has: {}",
        run.stderr
    );
    assert_eq!(pg.table_checksums("app"), before);
    assert_eq!(listed(&cfg).len(), backups_before, "no safety backup");

    // A schema with a view outside it that CASCADE would drop: refused, named.
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", &format!("{id}:s1"), "--yes"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("view public.rich"), "{}", run.stderr);
    assert!(run.stderr.contains("--drop-dependents"), "{}", run.stderr);
    assert_eq!(pg.table_checksums("app"), before);
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_views WHERE viewname = 'rich'"
        ),
        "1"
    );
    assert_eq!(listed(&cfg).len(), backups_before, "no safety backup");

    // Said explicitly: the schema comes back, the view is gone as announced.
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:s1"),
            "--yes",
            "--drop-dependents",
        ],
        &[],
    )
    .ok();
    assert_eq!(
        pg.psql("app", "SELECT count(*), sum(bal) FROM s1.acct"),
        "300|30000"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_views WHERE viewname = 'rich'"
        ),
        "0"
    );
}

#[test]
fn into_refuses_a_url_that_names_its_database_twice() {
    let pg = TestPostgres::start();
    seed_with_dependent(&pg, "app");
    pg.create_db("other");
    pg.psql(
        "other",
        "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1)",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let before = pg.table_checksums("other");
    let url = format!("{}?dbname=other", pg.url("fresh"));
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &url],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("names its database twice"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.table_checksums("other"), before);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'fresh'"
        ),
        "0"
    );

    // `oth%65r` is `other` to libpq: the non-empty check must see `other` too.
    let encoded = pg.url("oth%65r");
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &encoded],
        &[],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("other"), "{}", run.stderr);
    assert_eq!(pg.table_checksums("other"), before);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'oth%65r'"
        ),
        "0"
    );
}

/// `--into` a new database: the archive's sha256 is proven before pg_restore reads a byte
/// of it, and a corrupt archive leaves no database behind, while an intact one restores.
#[test]
fn a_corrupt_archive_restored_into_a_new_database_leaves_no_database() {
    let pg = TestPostgres::start();
    seed_with_dependent(&pg, "app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let name = listed(&cfg)[0]["file"].as_str().unwrap().to_string();
    let archive = sb.backups().join("app").join(&name);
    let good = std::fs::read(&archive).unwrap();
    let mut bad = good.clone();
    let at = bad.len() * 2 / 3;
    bad[at] ^= 0x5a;
    std::fs::write(&archive, &bad).unwrap();
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &pg.url("fresh")],
        &[],
    );
    assert_ne!(
        run.code, 0,
        "{}
{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("sha256"), "{}", run.stderr);
    let fresh = "SELECT count(*) FROM pg_database WHERE datname = 'fresh'";
    assert_eq!(pg.psql("postgres", fresh), "0", "{}", run.stderr);

    std::fs::write(&archive, &good).unwrap();
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &pg.url("fresh")],
        &[],
    )
    .ok();
    assert!(run.stderr.contains("checksum OK"), "{}", run.stderr);
    assert_eq!(pg.table_checksums("fresh"), pg.table_checksums("app"));
}

/// Change the plain bytes of a stored zstd archive with `edit` and store them again at the
/// archive's stored size, as someone with write access to the storage can (the manifest
/// is left alone): compressed again, then padded with a zstd skippable frame (the edit
/// must make the bytes compress smaller). Returns the original stored bytes.
fn forge_same_size(archive: &std::path::Path, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let stored = std::fs::read(archive).unwrap();
    let mut plain = zstd::decode_all(&stored[..]).unwrap();
    edit(&mut plain);
    let mut forged = zstd::encode_all(&plain[..], 3).unwrap();
    let pad = stored
        .len()
        .checked_sub(forged.len() + 8)
        .expect("the forged archive compresses smaller than the real one");
    forged.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    forged.extend_from_slice(&(pad as u32).to_le_bytes());
    forged.extend(std::iter::repeat_n(0u8, pad));
    assert_eq!(forged.len(), stored.len());
    std::fs::write(archive, &forged).unwrap();
    stored
}

/// Database `app` with table t of `rows` rows (id, md5 text) and what `more` makes,
/// backed up: the sandbox, its config and the archive.
fn backed_up_app(
    pg: &TestPostgres,
    rows: u32,
    more: &str,
) -> (Sandbox, std::path::PathBuf, std::path::PathBuf) {
    pg.create_db("app");
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g; {more}"
        ),
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let name = listed(&cfg)[0]["file"].as_str().unwrap().to_string();
    let archive = sb.backups().join("app").join(&name);
    (sb, cfg, archive)
}

/// Blanks the values of t's first `n` rows in a dump (so that a forged archive
/// compresses smaller than the real one).
fn blank_first_rows(pg: &TestPostgres, n: u32) -> impl Fn(&mut Vec<u8>) {
    let values = pg.psql(
        "app",
        &format!("SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id <= {n}"),
    );
    move |plain| {
        for v in values.split(',') {
            replace_in(plain, v, &"E".repeat(v.len()));
        }
    }
}

/// Overwrite the one `from` in `bytes` with `to`, of the same length.
fn replace_in(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} is not in the dump"));
    bytes[at..at + from.len()].copy_from_slice(to.as_bytes());
}

/// pg_restore runs the statements of the archive's table of contents as it reads them.
/// A changed definition (`COMMIT`, then a statement on the whole server) streamed into a
/// restore `--into` a new database once ran before the stream's sha256 was known, and
/// dropping the database did not undo it. Now every PostgreSQL restore proves the
/// archive before pg_restore reads it. The rows after the definition (~9 MB) are more
/// than the pipe, the copy buffer and the held-back tail hold, so a streamed check could
/// not reach the archive's end before pg_restore ran the definition.
#[test]
fn a_changed_definition_never_runs_on_the_server_of_a_restore_into_a_new_database() {
    let pg = TestPostgres::start();
    let (_sb, cfg, archive) = backed_up_app(&pg, 200_000, &EvilComment::table_comment());
    EvilComment::forge(&pg, &archive);

    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &pg.url("fresh")],
        &[],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("sha256"), "{}", run.stderr);
    EvilComment::assert_never_ran(&pg, &run.stderr);
}

/// A table comment whose definition, changed in the archive at the same length, commits
/// and then changes the restoring role (any role may change its own settings: no
/// privilege the restoring role lacks). The rows after it (~9 MB with 200,000 rows) are
/// more than the pipe, the copy buffer and the held-back tail hold.
struct EvilComment;

impl EvilComment {
    const EVIL: &str = "'';COMMIT;ALTER ROLE CURRENT_USER SET application_name = 'pwned';--";

    fn comment() -> String {
        "a".repeat(Self::EVIL.len() - 2)
    }

    /// Database `app` with table `t` of 200,000 rows and the comment to change.
    fn app(pg: &TestPostgres) {
        pg.create_db("app");
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g; {}",
                Self::table_comment()
            ),
        );
    }

    /// The SQL that gives `t` the comment to change.
    fn table_comment() -> String {
        format!("COMMENT ON TABLE t IS '{}'", Self::comment())
    }

    /// The archive's bytes with the changed definition, at its stored size.
    fn forged(pg: &TestPostgres, archive: &std::path::Path) -> Vec<u8> {
        let blank = blank_first_rows(pg, 2000);
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("forging");
        std::fs::copy(archive, &scratch).unwrap();
        forge_same_size(&scratch, |plain| {
            replace_in(plain, &format!("'{}'", Self::comment()), Self::EVIL);
            blank(plain);
        });
        std::fs::read(&scratch).unwrap()
    }

    /// Change the archive in place (its file keeps its inode and size).
    fn forge(pg: &TestPostgres, archive: &std::path::Path) {
        let forged = Self::forged(pg, archive);
        std::fs::write(archive, forged).unwrap();
    }

    /// The definition never ran.
    fn assert_not_run(pg: &TestPostgres, said: &str) {
        let pwned = "SELECT count(*) FROM pg_db_role_setting \
                     WHERE 'application_name=pwned' = ANY(setconfig)";
        assert_eq!(
            pg.psql("postgres", pwned),
            "0",
            "the definition ran: {said}"
        );
    }

    /// The definition never ran, and no `fresh` database is left.
    fn assert_never_ran(pg: &TestPostgres, said: &str) {
        Self::assert_not_run(pg, said);
        let fresh = "SELECT count(*) FROM pg_database WHERE datname = 'fresh'";
        assert_eq!(pg.psql("postgres", fresh), "0", "{said}");
    }
}

/// The library's context for the config at `cfg`, as the CLI and the daemon build it.
async fn in_process(cfg: &std::path::Path) -> (dbkeep::config::Config, dbkeep::ops::Context) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let cfg = dbkeep::config::load_from(Some(&text), Default::default()).unwrap();
    let ctx = dbkeep::ops::Context::new(
        std::sync::Arc::new(dbkeep::storage::build(&cfg).await.unwrap()),
        std::sync::Arc::new(dbkeep::state::StateFile::beside(&cfg.daemon.work_dir)),
        tokio_util::sync::CancellationToken::new(),
    );
    (cfg, ctx)
}

/// Prove the newest backup's archive for a restore `--into` database `fresh`, let
/// `change` change the stored archive, then run the restore: it must be refused as
/// changed since the proof, before pg_restore reads a byte. (A runtime of its own: the
/// test S3 server runs one.)
fn restore_after_a_change(pg: &TestPostgres, cfg: &std::path::Path, change: impl FnOnce()) {
    let err = restore_changed(pg, cfg, change).expect_err("an archive changed since its proof");
    EvilComment::assert_never_ran(pg, &err);
    assert!(err.contains("changed after its sha256 was proven"), "{err}");
}

/// Prove, let `change` change the stored archive, restore into `fresh`: the error said.
fn restore_changed(
    pg: &TestPostgres,
    cfg: &std::path::Path,
    change: impl FnOnce(),
) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(restore_changed_in(pg, cfg, change))
}

async fn restore_changed_in(
    pg: &TestPostgres,
    cfg: &std::path::Path,
    change: impl FnOnce(),
) -> Result<(), String> {
    use dbkeep::ops::restore;
    let (cfg, ctx) = in_process(cfg).await;
    let t = &cfg.targets[0];
    let latest = "latest".parse::<restore::Selector>().unwrap();
    let mut plan = restore::plan(&ctx, t, &latest, Some(&pg.url("fresh")), None, false)
        .await
        .expect("plan");
    plan.chosen
        .prove(&ctx, t)
        .await
        .expect("the stored archive is proven");
    change();
    let opts = restore::Options {
        yes: true,
        ..Default::default()
    };
    restore::execute(&ctx, t, &mut plan, &opts)
        .await
        .map(|_| ())
        .map_err(|e| dbkeep::error::chain(&e))
}

/// What a restore reads is what it proved. The CLI proves an archive, then asks the
/// operator; an archive changed while the question waits (here, in place: same inode,
/// same size) is refused before pg_restore reads a byte of it, where it was proven
/// again only as it streamed, and its definitions ran first.
#[test]
fn an_archive_changed_after_its_proof_is_never_read() {
    let pg = TestPostgres::start();
    let (_sb, cfg, archive) = backed_up_app(&pg, 200_000, &EvilComment::table_comment());
    let original = std::fs::read(&archive).unwrap();
    restore_after_a_change(&pg, &cfg, || EvilComment::forge(&pg, &archive));
    // Another file renamed over it is refused as well (the next restore proves anew).
    std::fs::write(&archive, original).unwrap();
    let aside = archive.with_extension("aside");
    std::fs::write(&aside, EvilComment::forged(&pg, &archive)).unwrap();
    restore_after_a_change(&pg, &cfg, || std::fs::rename(&aside, &archive).unwrap());
}

/// Back up with `cfg` (to bucket `bkp`, prefix `prod`): the key of the archive ending in
/// `suffix`.
fn backed_up_to_s3(s3: &TestS3, cfg: &std::path::Path, suffix: &str) -> String {
    let run = dbkeep(Some(cfg), &["backup"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    s3.keys("bkp", "prod/")
        .into_iter()
        .find(|k| k.ends_with(suffix))
        .expect("the archive on S3")
}

/// A private copy never takes more than the manifest's size: an object replaced after
/// the listing by a larger one is proven wrong without filling the scratch folder.
#[test]
fn an_oversized_object_is_not_kept_while_it_is_proven() {
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let (_db, local_cfg) = sqlite_target(&sb, "app", "");
    let db = sb.path().join("app.db");
    let cfg = sb.write_config(&format!(
        "{}[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\n",
        s3.config_section("bkp", "prod", ""),
        db.display()
    ));
    drop(local_cfg);
    let key = backed_up_to_s3(&s3, &cfg, ".sqlite.zst");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use dbkeep::ops::restore;
            let (cfg, ctx) = in_process(&cfg).await;
            let t = &cfg.targets[0];
            let latest = "latest".parse::<restore::Selector>().unwrap();
            let plan = restore::plan(&ctx, t, &latest, None, None, false)
                .await
                .expect("plan");
            let backup = &plan.chosen.backup;
            let storage = ctx.storages.get(plan.chosen.storage).unwrap();
            let spool = restore::spool_for(&ctx, t, storage, backup).expect("room for a copy");
            s3.put("bkp", &key, &vec![7u8; 8 << 20]);
            let (sha256, _, kept) =
                dbkeep::engine::archive::stored_sha256(storage, backup, None, Some(spool))
                    .await
                    .unwrap();
            assert_ne!(sha256, backup.sha256);
            assert!(
                kept.is_none(),
                "8 MiB kept for a {}-byte archive",
                backup.bytes
            );
        });
}

/// On S3 the proven bytes are kept in a private file while they are proven, and the
/// restore reads them from there: an object replaced after the proof is never read, and
/// the archive is downloaded once. (Without room for that copy, the restore downloads the
/// proven version again, pinned by its ETag: `storage_contract`'s `pins`.)
#[test]
fn an_object_replaced_after_its_proof_on_s3_is_never_read() {
    let pg = TestPostgres::start();
    EvilComment::app(&pg);
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "{}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\n",
        s3.config_section("bkp", "prod", ""),
        pg.url("app")
    ));
    let key = backed_up_to_s3(&s3, &cfg, ".dump.zst");
    let stored = s3.object_path("bkp", &key);
    let original = std::fs::read(&stored).unwrap();
    let forged = EvilComment::forged(&pg, &stored);
    restore_changed(&pg, &cfg, || s3.put("bkp", &key, &forged)).expect("the proven bytes restore");
    EvilComment::assert_not_run(&pg, "restored from S3");
    assert_eq!(pg.table_checksums("fresh"), pg.table_checksums("app"));
    let forged_now = std::fs::read(&stored).unwrap();
    assert_eq!(forged_now, forged, "the store holds the forged object");

    // A restore that fails for its own reason (pg_restore cannot run) says so: the bytes
    // it read were the proven ones, whatever the bucket holds now.
    pg.psql("postgres", "DROP DATABASE fresh");
    s3.put("bkp", &key, &original);
    let broken = wrapped_pg_bin(
        &sb,
        &pg,
        "pg_restore",
        "echo 'pg_restore: broken on purpose' >&2\nexit 1",
    );
    let cfg = sb.write_config(&format!(
        "{}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\npg_bin_dir = \"{}\"\n",
        s3.config_section("bkp", "prod", ""),
        pg.url("app"),
        broken.display()
    ));
    let err =
        restore_changed(&pg, &cfg, || s3.put("bkp", &key, &forged)).expect_err("pg_restore fails");
    assert!(
        err.contains("pg_restore") && !err.contains("sha256"),
        "{err}"
    );
}

/// pg_restore COMMITs once it read the last data block, not at the end of its input. An
/// archive whose rows were changed and that goes on past that block (8 MiB of zeros,
/// which compress to almost nothing, then a zstd skippable frame that gives it its
/// stored size back) once let pg_restore commit while the stream, and its sha256 check,
/// were still on their way: into an existing database, the changed rows stayed there
/// and dbkeep said nothing was committed. Now the archive is proven before pg_restore
/// reads any of it, and the stream must also end with that block (custom.rs's tests show
/// that second check alone).
#[test]
fn changed_rows_with_filler_after_the_last_block_never_reach_an_existing_database() {
    let pg = TestPostgres::start();
    let (_sb, cfg, archive) = backed_up_app(&pg, 20_000, "");
    pg.create_db("other");
    pg.psql(
        "other",
        "CREATE TABLE keep (v text); INSERT INTO keep VALUES ('mine')",
    );
    let before = pg.table_checksums("other");
    let blank = blank_first_rows(&pg, 1000);
    let stored = forge_same_size(&archive, |plain| {
        blank(plain);
        plain.extend(std::iter::repeat_n(0u8, 8 << 20));
    });

    let other = pg.url("other");
    let restore = || {
        dbkeep(
            Some(&cfg),
            &["restore", "app", "latest", "--yes", "--into", &other],
            &[],
        )
    };
    let run = restore();
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("sha256") || run.stderr.contains("goes on after"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.table_checksums("other"), before, "{}", run.stderr);

    // The real archive still restores there.
    std::fs::write(&archive, &stored).unwrap();
    restore().ok();
    assert_eq!(
        pg.psql("other", "SELECT count(*) FROM t WHERE v LIKE 'EEEE%'"),
        "0"
    );
    assert_eq!(pg.psql("other", "SELECT count(*) FROM t"), "20000");
}

#[test]
fn latest_never_means_the_safety_copy_of_a_restore() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('v1')",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let first = newest_id(&cfg);
    pg.psql("app", "UPDATE t SET v = 'v2'");

    let run = dbkeep(Some(&cfg), &["restore", "app", "latest", "--yes"], &[]).ok();
    assert!(run.stderr.contains(&first), "{}", run.stderr);
    assert!(
        run.stderr.contains("taken by hand"),
        "the prompt says why the backup was taken: {}",
        run.stderr
    );
    assert_eq!(pg.psql("app", "SELECT v FROM t"), "v1");
    // The safety copy holds v2 and is the newest backup...
    let all = listed(&cfg);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["reason"], "pre-restore");
    let safety = all[0]["id"].as_str().unwrap().to_string();
    assert!(
        run.stdout
            .contains(&format!("to undo: dbkeep restore app {safety} --yes")),
        "{}",
        run.stdout
    );
    // ...but restoring `latest` again restores the first backup, not the state just
    // replaced.
    pg.psql("app", "UPDATE t SET v = 'v3'");
    let again = dbkeep(Some(&cfg), &["restore", "app", "latest", "--yes"], &[]).ok();
    assert!(again.stderr.contains(&first), "{}", again.stderr);
    assert_eq!(pg.psql("app", "SELECT v FROM t"), "v1");
    // Named explicitly, the safety copy restores, and the prompt says what it is.
    let undo = dbkeep(Some(&cfg), &["restore", "app", &safety, "--yes"], &[]).ok();
    assert!(undo.stderr.contains("taken pre-restore"), "{}", undo.stderr);
    assert_eq!(pg.psql("app", "SELECT v FROM t"), "v2");
}

#[test]
fn the_archives_of_one_run_share_one_snapshot() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE a.acct (id int PRIMARY KEY, bal int);
         CREATE TABLE b.acct (id int PRIMARY KEY, bal int);
         INSERT INTO a.acct SELECT g, 100 FROM generate_series(1, 100) g;
         INSERT INTO b.acct SELECT g, 100 FROM generate_series(1, 100) g;",
    );
    let sb = Sandbox::new();
    // Each pg_dump starts a second late: without one snapshot, transfers committed between
    // the dump of `a` and the dump of `b` would be counted in neither or both.
    let late = wrapped_pg_bin(&sb, &pg, "pg_dump", "sleep 1\nexec $REAL \"$@\"");
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!(
            "schemas = [\"a\", \"b\"]\npg_bin_dir = \"{}\"",
            late.display()
        ),
    );
    // Transfers between the schemas, each its own transaction, all the time the backup
    // runs (a bounded loop, cancelled once the backup is done).
    let mut writer = std::process::Command::new(pg.bin.join("psql"))
        .env("PGPASSWORD", PG_PASSWORD)
        .args(["-X", "-q", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", "postgres", "-d", "app", "-c"])
        .arg(
            "DO $$ BEGIN FOR i IN 1..5000000 LOOP \
               UPDATE a.acct SET bal = bal - 1 WHERE id = i % 100 + 1; \
               UPDATE b.acct SET bal = bal + 1 WHERE id = i % 100 + 1; \
               COMMIT; END LOOP; END $$",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "transfers going", || {
        pg.psql("app", "SELECT sum(bal) FROM a.acct") != "10000"
    });
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let moved_during = pg.psql("app", "SELECT sum(bal) FROM a.acct");
    pg.psql(
        "postgres",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'DO $$ BEGIN FOR%' AND pid <> pg_backend_pid()",
    );
    let _ = writer.wait();
    assert_ne!(moved_during, "10000", "{}", run.stdout);

    let all = listed(&cfg);
    assert_eq!(all.len(), 2, "{all:?}");
    let id = all[0]["id"].as_str().unwrap().to_string();
    // Both manifests name the same exported snapshot.
    let snapshots: Vec<String> = sb
        .files("app")
        .into_iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .map(|f| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(sb.backups().join("app").join(f)).unwrap())
                    .unwrap();
            m["snapshot"].as_str().expect("a snapshot").to_string()
        })
        .collect();
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[0], snapshots[1]);

    // Restored together, the money adds up: no transfer is half in.
    for (schema, extra) in [("a", None), ("b", Some("--yes"))] {
        let sel = format!("{id}:{schema}");
        let mut args = vec!["restore", "app", &sel, "--into"];
        let url = pg.url("check");
        args.push(&url);
        if let Some(e) = extra {
            args.push(e);
        }
        dbkeep(Some(&cfg), &args, &[]).ok();
    }
    assert_eq!(
        pg.psql(
            "check",
            "SELECT (SELECT sum(bal) FROM a.acct) + (SELECT sum(bal) FROM b.acct)"
        ),
        "20000"
    );
}

#[test]
fn owners_are_kept_when_the_restoring_role_can_be_them_and_named_when_not() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE alice LOGIN PASSWORD '{PG_PASSWORD}'; \
             CREATE ROLE restorer LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'"
        ),
    );
    pg.psql(
        "app",
        "CREATE SCHEMA owned AUTHORIZATION alice;
         CREATE TABLE owned.t (id int); ALTER TABLE owned.t OWNER TO alice;
         INSERT INTO owned.t VALUES (1), (2);",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let owner = |db: &str| {
        pg.psql(
            db,
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'owned' AND tablename = 't'",
        )
    };

    // A superuser can be alice: the owner comes back as it was.
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &pg.url("as_super")],
        &[],
    )
    .ok();
    assert_eq!(owner("as_super"), "alice");

    // A role that is not alice: restored without owners, and told which.
    let url = format!(
        "postgres://restorer:{PG_PASSWORD}@127.0.0.1:{}/as_restorer",
        pg.port
    );
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &url],
        &[],
    )
    .ok();
    assert!(
        run.stderr.contains("objects come back owned by restorer"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("alice"), "{}", run.stderr);
    assert_eq!(owner("as_restorer"), "restorer");
    assert_eq!(pg.psql("as_restorer", "SELECT count(*) FROM owned.t"), "2");
}

#[test]
fn odd_schema_names_back_up_list_and_restore_without_escaping_their_folder() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA \"../../x\"; CREATE TABLE \"../../x\".t (v int); INSERT INTO \"../../x\".t VALUES (1);
         CREATE SCHEMA \"quo\"\"te\"; CREATE TABLE \"quo\"\"te\".t (v int);
         CREATE SCHEMA \"ünï名\"; CREATE TABLE \"ünï名\".t (v int);",
    );
    pg.psql(
        "app",
        "DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', E'new\\nline ERROR forged'); END $$",
    );
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n{}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\n\
         password = \"{PG_PASSWORD}\"\nschemas = [\"*\"]\n",
        sb.backups().display(),
        s3.config_section("bkp", "prod", ""),
        pg.url("app")
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(run.stdout.contains("OK: 5 archive(s)"), "{}", run.stdout);
    // No log line was forged by the newline in a schema name.
    assert!(
        run.stderr.lines().all(|l| !l.starts_with("line ERROR")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("new\\x0aline"), "{}", run.stderr);
    // Every file stays in the target's folder, with a plain name.
    for f in sb.files("app") {
        assert!(
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-%".contains(&b)),
            "{f:?}"
        );
    }
    assert!(!sb.path().join("x").exists());
    for k in s3.keys("bkp", "") {
        assert!(k.starts_with("prod/app/") && !k.contains(".."), "{k}");
    }
    // Listed back under their real names.
    let mut schemas: Vec<String> = listed(&cfg)
        .iter()
        .filter(|b| b["storage"] == "local")
        .map(|b| b["schema"].as_str().unwrap().to_string())
        .collect();
    schemas.sort();
    assert_eq!(
        schemas,
        [
            "../../x",
            "new\nline ERROR forged",
            "public",
            "quo\"te",
            "ünï名"
        ]
    );
    let id = newest_id(&cfg);
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:../../x"),
            "--into",
            &pg.url("copy"),
        ],
        &[],
    )
    .ok();
    assert_eq!(pg.psql("copy", "SELECT v FROM \"../../x\".t"), "1");
}

#[test]
fn an_archive_that_changes_during_a_schema_restore_commits_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    // About 6 MB in the schema, stored uncompressed: far more than the pipes hold.
    pg.psql(
        "app",
        "CREATE SCHEMA s1;
         CREATE TABLE s1.big AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS v \
         FROM generate_series(1, 80000) g;",
    );
    let sb = Sandbox::new();
    // The restoring pg_restore (`--file=-`) says it started, then reads 3 s late; the
    // TOC read does not wait.
    let started = sb.path().join("restoring");
    let late = wrapped_pg_bin(
        &sb,
        &pg,
        "pg_restore",
        &format!(
            "case \"$*\" in *--file=-*) touch {}; sleep 3;; esac\nexec $REAL \"$@\"",
            started.display()
        ),
    );
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!(
            "compression = \"none\"\npg_bin_dir = \"{}\"",
            late.display()
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let id = newest_id(&cfg);
    pg.psql("app", "UPDATE s1.big SET v = 'changed' WHERE id <= 100");
    let before = pg.table_checksums("app");
    let archive = sb
        .backups()
        .join("app")
        .join(listed(&cfg)[0]["file"].as_str().unwrap());

    let child = spawn_dbkeep(
        &cfg,
        &[
            "restore",
            "app",
            &format!("{id}:s1"),
            "--yes",
            "--no-safety-backup",
        ],
    );
    // The restore's own read of the archive is open (it opens the archive once
    // pg_restore is running): what it reads from here is the version it proved.
    let pid = child.child.id();
    let reading = || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == archive))
        })
    };
    wait_for(
        Duration::from_secs(60),
        "the restore reading the archive",
        || started.exists() && reading(),
    );
    // Change one byte near the end of the stored archive, in place.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len - 5000)).unwrap();
        f.write_all(b"X").unwrap();
    }
    let run = child.finish(Duration::from_secs(120));
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("changed while it was restored"),
        "{}",
        run.stderr
    );
    // Nothing committed: the schema is exactly as it was, the changed rows included.
    assert_eq!(pg.table_checksums("app"), before);
}

#[test]
fn a_failing_safety_backup_stops_the_restore_before_anything_changes() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('old')",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    pg.psql("app", "UPDATE t SET v = 'new'");
    let failing = wrapped_pg_bin(&sb, &pg, "pg_dump", "echo 'disk on fire' >&2\nexit 1");
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("pg_bin_dir = \"{}\"", failing.display()),
    );
    let run = dbkeep(Some(&cfg), &["restore", "app", "latest", "--yes"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("safety backup before the restore failed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("disk on fire"), "{}", run.stderr);
    assert_eq!(pg.psql("app", "SELECT v FROM t"), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_wal_database_with_a_reader_is_replaced_whole() {
    use sqlx::{ConnectOptions, Connection};
    let sb = Sandbox::new();
    let db = sb.path().join("live.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut w = opts.connect().await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2), (3);")
        .execute(&mut w)
        .await
        .unwrap();
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.live]\nkind = \"sqlite\"\npath = \"{}\"\n",
        sb.backups().display(),
        db.display()
    ));
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || dbkeep(Some(&cfg2), &["backup"], &[]).ok())
        .await
        .unwrap();
    sqlx::raw_sql("INSERT INTO t VALUES (4), (5);")
        .execute(&mut w)
        .await
        .unwrap();
    w.close().await.unwrap();
    // A reader in the middle of a read transaction when the restore comes.
    let mut reader = opts.connect().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut reader).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let cfg2 = cfg.clone();
    let run = tokio::task::spawn_blocking(move || {
        dbkeep(Some(&cfg2), &["restore", "live", "latest", "--yes"], &[])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The reader keeps its view of the old file; a new connection sees the backup.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let _ = reader.close().await;
    let mut after = opts.connect().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&mut after)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut after)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn per_schema_archives_of_public_restore_into_a_new_database_and_pass_the_drill() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE public.t AS SELECT g AS id FROM generate_series(1, 50) g;
         CREATE SCHEMA s1; CREATE TABLE s1.u AS SELECT g AS id FROM generate_series(1, 7) g;",
    );
    pg.create_db("fresh");
    pg.create_db("busy");
    pg.psql("busy", "CREATE TABLE public.mine (x int)");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "schemas = [\"public\", \"s1\"]");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let id = newest_id(&cfg);
    // The drill restores every archive of the run into one new database.
    let drill = dbkeep(Some(&cfg), &["verify", "--drill"], &[]);
    assert_eq!(drill.code, 0, "{}\n{}", drill.stdout, drill.stderr);
    // A new database has an empty `public`: the archive's own takes its place.
    let fresh = format!("postgres://postgres@127.0.0.1:{}/fresh", pg.port);
    dbkeep(
        Some(&cfg),
        &["restore", "app", &format!("{id}:public"), "--into", &fresh],
        &[],
    )
    .ok();
    assert_eq!(pg.psql("fresh", "SELECT count(*) FROM public.t"), "50");
    // A `public` that holds something is not dropped to make room.
    let busy = format!("postgres://postgres@127.0.0.1:{}/busy", pg.port);
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:public"),
            "--into",
            &busy,
            "--yes",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("already holds objects"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.psql("busy", "SELECT count(*) FROM public.mine"), "0");
}

#[test]
fn schemas_with_quotes_and_newlines_restore_from_a_whole_backup_and_are_told_apart() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "DO $$ BEGIN
           EXECUTE format('CREATE SCHEMA %I', E'new\\nline');
           EXECUTE format('CREATE TABLE %I.keep AS SELECT 1 AS v', E'new\\nline');
         END $$;
         CREATE SCHEMA \"we\"\"ird\"; CREATE TABLE \"we\"\"ird\".keep AS SELECT 2 AS v;",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let id = newest_id(&cfg);
    // Changed after the backup; a schema the backup does not have, named like the
    // printed form of one it has.
    pg.psql(
        "app",
        "DO $$ BEGIN EXECUTE format('UPDATE %I.keep SET v = 10', E'new\\nline'); END $$;
         UPDATE \"we\"\"ird\".keep SET v = 20;
         CREATE SCHEMA \"new line\"; CREATE TABLE \"new line\".keep AS SELECT 3 AS v;",
    );
    for (schema, sql, want) in [
        ("new\nline", "SELECT v FROM \"new\nline\".keep", "1"),
        ("we\"ird", "SELECT v FROM \"we\"\"ird\".keep", "2"),
    ] {
        let run = dbkeep(
            Some(&cfg),
            &[
                "restore",
                "app",
                &format!("{id}:{schema}"),
                "--yes",
                "--no-safety-backup",
            ],
            &[],
        );
        assert_eq!(run.code, 0, "{schema:?}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(pg.psql("app", sql), want, "{schema:?}");
    }
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:new line"),
            "--yes",
            "--no-safety-backup",
            "--drop-dependents",
        ],
        &[],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("has no schema"), "{}", run.stderr);
    assert_eq!(pg.psql("app", "SELECT v FROM \"new line\".keep"), "3");
    // The plain list keeps one line per backup.
    let list = dbkeep(Some(&cfg), &["list"], &[]).ok();
    assert_eq!(list.stdout.lines().count(), 2, "{}", list.stdout);
}

/// `--into` the target's own SQLite file (a path that resolves to it) is a restore over
/// the live file: the write-lock check and the safety backup apply, as without `--into`.
#[test]
fn into_the_targets_own_file_is_a_restore_over_it() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let same = sb.path().join(".").join("app.db");
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            same.to_str().unwrap(),
            "--yes",
        ],
        &[],
    )
    .ok();
    assert!(run.stderr.contains("own database"), "{}", run.stderr);
    assert!(run.stdout.contains("pre-restore"), "{}", run.stdout);
    let list = dbkeep(Some(&cfg), &["list", "app", "--json"], &[]).ok();
    assert!(list.stdout.contains("\"pre-restore\""), "{}", list.stdout);
    assert!(db.exists());
}
