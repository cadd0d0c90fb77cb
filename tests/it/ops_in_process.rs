//! The use cases called in-process through the library, as the daemon and the API call
//! them, against a real PostgreSQL cluster and real SQLite files.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use dbkeep::config::{Config, Target};
use dbkeep::ops::restore::{Options, Selector};
use dbkeep::ops::{backup, cleanup, restore, Context};
use dbkeep::retention::Action;
use dbkeep::state::{RunStatus, StateFile};
use tokio_util::sync::CancellationToken;

use crate::common::{Sandbox, TestPostgres, PG_PASSWORD};

fn load(toml: &str) -> Config {
    dbkeep::config::load_from(Some(toml), HashMap::new()).unwrap()
}

async fn context(cfg: &Config) -> Context {
    Context::new(
        Arc::new(dbkeep::storage::build(cfg).await.unwrap()),
        Arc::new(StateFile::beside(&cfg.daemon.work_dir)),
        CancellationToken::new(),
    )
}

fn target(cfg: &Config) -> &Target {
    &cfg.targets[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_restore_and_cleanup_through_the_library() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g; \
         CREATE TABLE u (id int PRIMARY KEY, note text); INSERT INTO u VALUES (1, 'one'), (2, 'two')",
    );
    let sb = Sandbox::new();
    let cfg = load(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\nkeep_days = 0\nmin_keep = 1\n",
        sb.backups().display(),
        pg.url("app")
    ));
    let ctx = context(&cfg).await;
    let t = target(&cfg);

    // Three runs; each is recorded as the target's run in the state file.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let o = backup::run(&ctx, t, None).await.expect("backup");
        assert_eq!(o.manifests.len(), 1);
        assert!(o.manifests[0].tables.iter().any(|x| x.name == "t"));
        ids.push(o.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let st = ctx.state.get("app");
    assert_eq!(st.last_status, Some(RunStatus::Success));
    assert!(st.last_success.is_some());

    // Restore the newest into a new database: every row is back.
    let mut plan = restore::plan(
        &ctx,
        t,
        &"latest".parse::<Selector>().unwrap(),
        Some(&pg.url("copy")),
        None,
        false,
    )
    .await
    .expect("plan");
    assert_eq!(plan.chosen.backup.id, ids[2]);
    restore::execute(
        &ctx,
        t,
        &mut plan,
        &Options {
            yes: false,
            safety_backup: true,
            ..Default::default()
        },
    )
    .await
    .expect("restore --into");
    assert_eq!(pg.table_checksums("copy"), pg.table_checksums("app"));

    // Restoring into the now non-empty database without `yes` is refused, unchanged.
    let again = restore::execute(
        &ctx,
        t,
        &mut plan,
        &Options {
            yes: false,
            safety_backup: false,
            ..Default::default()
        },
    )
    .await;
    let err = again.expect_err("a non-empty destination needs yes");
    assert_eq!(
        dbkeep::error::Classify::kind(&err),
        dbkeep::error::ErrorKind::Refused
    );

    // Cleanup two days later: min_keep = 1 and keep_days = 0 keep only the newest.
    let later = Utc::now() + chrono::Duration::days(2);
    let dry = cleanup::run(&ctx, t, true, later).await.unwrap();
    let deleting: Vec<_> = dry[0]
        .decisions
        .iter()
        .filter(|(d, _)| d.action == Action::Delete)
        .map(|(d, _)| d.id)
        .collect();
    assert_eq!(deleting, [ids[1], ids[0]]);
    assert_eq!(sb.files("app").len(), 6, "a dry run deletes nothing");
    let done = cleanup::run(&ctx, t, false, later).await.unwrap();
    assert_eq!(done[0].remaining, 1);
    let left = sb.files("app");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left[0].contains(&ids[2].to_string()), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_restore_and_cleanup_through_the_library() {
    let sb = Sandbox::new();
    let db = sb.path().join("shop.db");
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); \
              WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
              INSERT INTO items SELECT i, 'item ' || i FROM n;",
        )
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = load(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.shop]\nkind = \"sqlite\"\npath = \"{}\"\nkeep_days = 0\nmin_keep = 1\n",
        sb.backups().display(),
        db.display()
    ));
    let ctx = context(&cfg).await;
    let t = target(&cfg);
    let first = backup::run(&ctx, t, None).await.expect("backup");
    let second = backup::run(&ctx, t, None).await.expect("backup");
    assert!(second.id > first.id);

    let copy = sb.path().join("copy.db");
    let mut plan = restore::plan(
        &ctx,
        t,
        &first.id.to_string().parse::<Selector>().unwrap(),
        Some(copy.to_str().unwrap()),
        None,
        false,
    )
    .await
    .unwrap();
    restore::execute(
        &ctx,
        t,
        &mut plan,
        &Options {
            yes: false,
            safety_backup: true,
            ..Default::default()
        },
    )
    .await
    .expect("restore into a new file");
    let count = std::process::Command::new("sqlite3")
        .arg(&copy)
        .arg("SELECT count(*), sum(id) FROM items")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "500|125250");

    // A schema of a SQLite backup is refused when the restore is planned, before anything
    // is asked, read or backed up; the live file is untouched.
    let before = std::fs::read(&db).unwrap();
    let listed_before = sb.files("shop");
    let refused = restore::plan(
        &ctx,
        t,
        &format!("{}:main", first.id).parse::<Selector>().unwrap(),
        None,
        None,
        false,
    )
    .await
    .err()
    .expect("a schema restore of SQLite is refused");
    assert_eq!(
        dbkeep::error::Classify::kind(&refused),
        dbkeep::error::ErrorKind::Refused
    );
    assert!(refused.to_string().contains("no schema"), "{refused}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert_eq!(
        sb.files("shop"),
        listed_before,
        "no safety backup was taken"
    );

    let later = Utc::now() + chrono::Duration::days(2);
    let done = cleanup::run(&ctx, t, false, later).await.unwrap();
    assert_eq!(done[0].remaining, 1);
    let left = sb.files("shop");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left[0].contains(&second.id.to_string()), "{left:?}");
}
