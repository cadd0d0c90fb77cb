//! SQLite backups: a consistent online snapshot of a database that is being written to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, SqliteConnection};

use crate::common::{
    dbkeep, decompress, spawn_dbkeep, sqlite_query, sqlite_target, Sandbox, SqliteLock,
};

fn config(sb: &Sandbox, db: &std::path::Path, compression: &str) -> std::path::PathBuf {
    sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.cache]\nkind = \"sqlite\"\npath = \"{}\"\ncompression = \"{compression}\"\n",
        sb.backups().display(),
        db.display()
    ))
}

async fn open(path: &std::path::Path, mode: SqliteJournalMode) -> SqliteConnection {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(mode)
        .busy_timeout(Duration::from_secs(30));
    SqliteConnection::connect_with(&opts).await.unwrap()
}

/// Poll `cond` every 10 ms until it holds or `limit` passes (without blocking the runtime's
/// threads, which the writer task needs); panics with `what`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn snapshot_under_writes(mode: SqliteJournalMode) {
    let sb = Sandbox::new();
    let db = sb.path().join("live.db");
    let mut conn = open(&db, mode).await;
    sqlx::raw_sql(
        "CREATE TABLE a (seq INTEGER PRIMARY KEY);
         CREATE TABLE b (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)
         INSERT INTO a SELECT n FROM g;
         INSERT INTO b SELECT seq, randomblob(1500) FROM a;",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    // The writer commits pairs of rows (a, b) in one transaction each, bounded in count and time.
    let committed = Arc::new(AtomicU64::new(20000));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (committed, stop) = (committed.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 20000u64;
            while !stop.load(Ordering::Relaxed)
                && n < 2_000_000
                && started.elapsed() < Duration::from_secs(60)
            {
                n += 1;
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("INSERT INTO a VALUES (?)")
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO b VALUES (?, randomblob(1500))")
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                committed.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    // The backup starts while the writer is writing.
    wait_until(Duration::from_secs(60), "the writer's first commit", || {
        committed.load(Ordering::SeqCst) > 20000 || writer.is_finished()
    })
    .await;
    let before = committed.load(Ordering::SeqCst);
    assert!(before > 20000, "the writer stopped before its first commit");
    let cfg = config(&sb, &db, "zstd");
    let run = tokio::task::spawn_blocking(move || dbkeep(Some(&cfg), &["backup", "cache"], &[]))
        .await
        .unwrap()
        .ok();
    let after = committed.load(Ordering::SeqCst);
    // The writer goes on after the backup: wait for its next commit (or its end, which the
    // assertion below then reports).
    wait_until(Duration::from_secs(60), "a commit after the backup", || {
        committed.load(Ordering::SeqCst) > after || writer.is_finished()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    assert!(run.stdout.contains("OK: 1 archive"), "{}", run.stdout);
    assert!(last > after, "the writer kept writing after the backup");

    let files: Vec<String> = sb
        .files("cache")
        .into_iter()
        .filter(|f| f.ends_with(".sqlite.zst"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let restored = sb.path().join("restored.db");
    decompress(&sb.backups().join("cache").join(&files[0]), &restored);
    let mut snap = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&restored)
            .read_only(true),
    )
    .await
    .unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut snap)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    // The archive is a rollback-journal database, whatever the source's mode: it opens
    // read-only without -wal or -shm files beside it.
    let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut snap)
        .await
        .unwrap();
    assert_eq!(journal, "delete");
    let left: Vec<String> = sb
        .files("cache")
        .into_iter()
        .filter(|f| !f.starts_with(&files[0]))
        .collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
    let (count_a, max_a, count_b): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM a), (SELECT max(seq) FROM a), (SELECT count(*) FROM b)",
    )
    .fetch_one(&mut snap)
    .await
    .unwrap();
    // A consistent prefix: every committed transaction up to some point, both tables alike.
    assert_eq!(count_a, max_a, "rows 1..N with no gap");
    assert_eq!(
        count_a, count_b,
        "each transaction is in the snapshot whole or not at all"
    );
    assert!(
        (before as i64..=after as i64).contains(&count_a),
        "snapshot holds {count_a} rows; the writer had committed {before} before and {after} after the backup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_database_under_concurrent_writes_gives_a_consistent_snapshot() {
    snapshot_under_writes(SqliteJournalMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_journal_database_under_concurrent_writes_gives_a_consistent_snapshot() {
    snapshot_under_writes(SqliteJournalMode::Delete).await;
}

#[test]
fn missing_sqlite_file_fails_and_is_not_created() {
    let sb = Sandbox::new();
    let db = sb.path().join("nope.db");
    let cfg = config(&sb, &db, "gzip");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("nope.db"), "{}", run.stderr);
    assert!(run.stderr.contains("targets.cache.path"), "{}", run.stderr);
    assert!(
        !db.exists(),
        "dbkeep must never create the database it backs up"
    );
    assert!(sb.files("cache").is_empty());
}

#[test]
fn a_file_that_is_not_sqlite_fails_and_keeps_nothing() {
    let sb = Sandbox::new();
    let db = sb.path().join("notes.txt");
    std::fs::write(
        &db,
        "this is not a database, just some text that is long enough to have a header\n".repeat(10),
    )
    .unwrap();
    let cfg = config(&sb, &db, "zstd");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("not a usable SQLite database"),
        "{}",
        run.stderr
    );
    assert!(sb.files("cache").is_empty(), "{:?}", sb.files("cache"));
}

/// A restore killed before its file went into place leaves a temp file beside the
/// database; the next restore there removes it (its process is gone), and nothing else.
#[test]
fn the_temp_file_of_a_killed_restore_is_removed_by_the_next() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let folder = db.parent().unwrap();
    let name =
        |pid: u32, what: &str| folder.join(format!(".dbkeep-tmp.{pid}.00c0ffee00c0ffee.{what}"));
    let left = name(dead, "restore.sqlite");
    let running = name(std::process::id(), "restore.sqlite");
    let other = name(dead, "notes.txt");
    for f in [&left, &running, &other] {
        std::fs::write(f, b"half a database").unwrap();
    }
    let into = folder.join("copy.db");
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            &into.display().to_string(),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!left.exists(), "the killed restore's file is still there");
    assert!(running.exists(), "the file of a live process was removed");
    assert!(other.exists(), "a file that is no restore's was removed");
}

/// The snapshot's integrity check runs beside the stream now: an archive is still stored
/// only once it passed.
#[test]
fn a_database_that_fails_its_integrity_check_stores_nothing() {
    let sb = Sandbox::new();
    let db = sb.path().join("damaged.db");
    // An index whose entries do not match its definition: the file opens and every query
    // answers, but PRAGMA integrity_check finds each row missing from the index.
    sqlite_query(
        &db,
        "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT); CREATE INDEX tb ON t (b);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50000)
         INSERT INTO t SELECT n, 'v' || (50000 - n) FROM g;
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX tb ON t (a)' WHERE name = 'tb';",
    );
    let before = std::fs::read(&db).unwrap();
    let cfg = config(&sb, &db, "zstd");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("fails PRAGMA integrity_check")
            && run.stderr.contains("missing from index tb"),
        "{}",
        run.stderr
    );
    assert!(sb.files("cache").is_empty(), "{:?}", sb.files("cache"));
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the source database was changed"
    );
    let list = dbkeep(Some(&cfg), &["list"], &[]);
    assert!(!list.stdout.contains("cache "), "{}", list.stdout);
}

/// A writer's exclusive lock on a rollback-journal database stops every reader until the
/// busy timeout (60 s): a SIGTERM must not wait for it.
#[test]
fn a_stop_is_not_held_up_by_a_writers_lock() {
    let sb = Sandbox::new();
    let db = sb.path().join("locked.db");
    sqlite_query(&db, "CREATE TABLE t (a); INSERT INTO t VALUES (1), (2);");
    let locker = SqliteLock::take(&db, "BEGIN EXCLUSIVE");
    let cfg = config(&sb, &db, "zstd");
    let child = spawn_dbkeep(&cfg, &["backup"]);
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    let run = child.finish(Duration::from_secs(60));
    let took = signalled.elapsed();
    drop(locker);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM: {}",
        run.stderr
    );
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
    assert!(sb.files("cache").is_empty(), "{:?}", sb.files("cache"));
}
