//! Restorability: content fingerprints taken from the dump stream and proven by drills,
//! suspicious backups held out of retention, one table restored beside the live data.

use std::path::{Path, PathBuf};

use crate::common::{
    all_files, dbkeep, decompress, pg_config, sha256_file, sqlite_query, Sandbox, SqliteLock,
    TestPostgres,
};

/// The one archive of `target` ending in `suffix`.
fn archive(sb: &Sandbox, target: &str, suffix: &str) -> PathBuf {
    let files: Vec<String> = sb
        .files(target)
        .into_iter()
        .filter(|f| f.ends_with(suffix))
        .collect();
    assert_eq!(files.len(), 1, "one {suffix} archive expected: {files:?}");
    sb.backups().join(target).join(&files[0])
}

fn manifest(archive: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(format!("{}.manifest.json", archive.display())).unwrap())
        .unwrap()
}

/// Replace the archive's plain bytes by `edit(raw)`, recompressed, and make its manifest
/// agree (sha256 and size): the checksum no longer protects it, only the content does.
fn tamper(sb: &Sandbox, archive: &Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let raw = sb.path().join("tamper.raw");
    decompress(archive, &raw);
    let changed = edit(std::fs::read(&raw).unwrap());
    assert_ne!(
        changed,
        std::fs::read(&raw).unwrap(),
        "the edit changed nothing"
    );
    let out = std::fs::File::create(archive).unwrap();
    zstd::stream::copy_encode(&changed[..], out, 3).unwrap();
    let mpath = format!("{}.manifest.json", archive.display());
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["sha256"] = sha256_file(archive).into();
    m["stored_bytes"] = std::fs::metadata(archive).unwrap().len().into();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn replace_once(raw: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(
        from.len(),
        to.len(),
        "same length keeps the archive's layout"
    );
    let at = raw
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the archive", String::from_utf8_lossy(from)));
    let mut out = raw;
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// Remove the COPY row holding `needle` from an uncompressed custom-format archive:
/// pg_dump writes each row as its own length-prefixed chunk (a sign byte and a 4-byte
/// little-endian length), so the row goes with its chunk header.
fn remove_row(raw: Vec<u8>, needle: &[u8]) -> Vec<u8> {
    let at = raw
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("row in the archive");
    let end = at + raw[at..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let header = (0..at)
        .rev()
        .find(|&p| {
            p + 5 <= at
                && raw[p] == 0
                && u32::from_le_bytes(raw[p + 1..p + 5].try_into().unwrap()) as usize
                    == end - (p + 5)
        })
        .expect("the row's chunk header");
    let mut out = raw[..header].to_vec();
    out.extend_from_slice(&raw[end..]);
    out
}

fn content_table<'a>(m: &'a serde_json::Value, qualified: &str) -> &'a serde_json::Value {
    m["content"]["tables"]
        .as_array()
        .expect("a content fingerprint")
        .iter()
        .find(|t| match t["schema"].as_str() {
            Some(s) => format!("{s}.{}", t["name"].as_str().unwrap()) == qualified,
            None => t["name"] == qualified,
        })
        .unwrap_or_else(|| panic!("{qualified} in {}", m["content"]))
}

const PARTITIONED: &str = "
CREATE TABLE public.events (id int, at date NOT NULL, note text) PARTITION BY RANGE (at);
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO public.events SELECT g, DATE '2025-06-01' + g, 'e' || g FROM generate_series(1, 400) g;
CREATE TABLE public.empty_one (s text);
INSERT INTO public.empty_one VALUES ('');
CREATE TABLE public.floats (f real, d double precision, t timestamptz);
INSERT INTO public.floats SELECT g / 3.0, g / 7.0, '2026-03-29 01:30:00+01'::timestamptz + g * interval '17 minutes' FROM generate_series(1, 200) g;
";

#[test]
fn a_drill_proves_every_row_and_names_the_table_whose_rows_changed_or_went_missing() {
    let pg = TestPostgres::start();
    // A server zone far from UTC: timestamptz values are written in the dump's zone, and
    // the drill must write them the same way.
    pg.psql("postgres", "ALTER SYSTEM SET timezone = 'Pacific/Chatham'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pg.create_db("src");
    pg.psql("src", crate::postgres_backup::MANY_TYPES);
    pg.psql("src", PARTITIONED);
    // A database setting pg_dump does not override changes how bytea is written: the
    // drill's scratch database does not have it, and must still write the same bytes.
    pg.psql("postgres", "ALTER DATABASE src SET bytea_output = 'escape'");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "src", "");
    dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    let a = archive(&sb, "app", ".dump.zst");
    let m = manifest(&a);

    // Exact counts, every table with its own count (each partition too), taken from the
    // stream: compare with the server's count(*).
    for (table, count) in [
        ("public.customers", 3000),
        ("billing.invoices", 500),
        ("public.docs", 1),
        ("public.events_2025", 213),
        ("public.events_2026", 187),
        ("public.empty_one", 1),
        ("public.floats", 200),
    ] {
        let t = content_table(&m, table);
        assert_eq!(t["rows"], count, "{table}: {t}");
        assert_eq!(
            pg.psql("src", &format!("SELECT count(*) FROM {table}")),
            count.to_string()
        );
        assert_eq!(t["hash"].as_str().unwrap().len(), 32, "{t}");
    }
    assert_eq!(
        m["content"]["large_objects"]["count"], 1,
        "{}",
        m["content"]
    );
    // The stream is read in whatever pieces the pipe gives: any piece size reads the same.
    let raw_path = sb.path().join("whole.raw");
    decompress(&a, &raw_path);
    let raw = std::fs::read(&raw_path).unwrap();
    for piece in [1usize, 5, 4093, 1 << 20] {
        let mut r = dbkeep::engine::postgres::custom::ContentReader::default();
        for c in raw.chunks(piece) {
            r.feed(c);
        }
        let got = serde_json::to_value(r.finish().unwrap()).unwrap();
        assert_eq!(got, m["content"], "pieces of {piece} bytes");
    }
    assert_eq!(m["content"]["encoding"], "UTF8");
    let seqs = m["content"]["sequences"].as_array().unwrap();
    assert!(
        seqs.iter().any(|s| s["schema"] == "billing"
            && s["name"] == "invoice_no"
            && s["value"] == "4242, true"),
        "{seqs:?}"
    );

    // An intact backup passes, and says how much it proved.
    let ok = dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]).ok();
    assert!(ok.stdout.contains("drill OK"), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("4102 rows in 7 tables proven identical"),
        "{}",
        ok.stdout
    );

    // One value of one row changed (the archive re-checksummed, so only the content
    // can tell): the drill fails and names the table.
    let pristine = std::fs::read(&a).unwrap();
    let pristine_manifest = std::fs::read(format!("{}.manifest.json", a.display())).unwrap();
    tamper(&sb, &a, |raw| {
        replace_once(raw, b"<i n=\"77\"/>", b"<i n=\"78\"/>")
    });
    let bad = dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    let said = format!("{}{}", bad.stdout, bad.stderr);
    assert!(said.contains("table billing.invoices"), "{said}");
    assert!(
        !said.contains("public.customers"),
        "only the changed table: {said}"
    );

    // One row removed.
    std::fs::write(&a, &pristine).unwrap();
    std::fs::write(format!("{}.manifest.json", a.display()), &pristine_manifest).unwrap();
    tamper(&sb, &a, |raw| remove_row(raw, b"customer 1234\t"));
    let bad = dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    let said = format!("{}{}", bad.stdout, bad.stderr);
    assert!(
        said.contains("table public.customers: 2999 rows after restore, the backup has 3000"),
        "{said}"
    );

    // A large object changed.
    std::fs::write(&a, &pristine).unwrap();
    std::fs::write(format!("{}.manifest.json", a.display()), &pristine_manifest).unwrap();
    tamper(&sb, &a, |raw| {
        replace_once(
            raw,
            b"large object payload large",
            b"large object paylaod large",
        )
    });
    let bad = dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    let said = format!("{}{}", bad.stdout, bad.stderr);
    assert!(said.contains("large objects"), "{said}");
}

#[test]
fn a_sqlite_drill_proves_every_row_and_catches_a_changed_value() {
    let sb = Sandbox::new();
    let db = sb.path().join("shop.db");
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "PRAGMA journal_mode = wal;
             CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, pic BLOB, qty);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO items SELECT i, 'item-' || printf('%05d', i), i / 3.0, randomblob(16), CASE WHEN i % 5 = 0 THEN NULL ELSE i END FROM n;
             CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('marker-value-0001'), ('x');",
        )
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.shop]\nkind = \"sqlite\"\npath = \"{}\"\n",
        sb.backups().display(),
        db.display()
    ));
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let a = archive(&sb, "shop", ".sqlite.zst");
    let m = manifest(&a);
    assert_eq!(content_table(&m, "items")["rows"], 500);
    assert_eq!(content_table(&m, "notes")["rows"], 2);
    let ok = dbkeep(Some(&cfg), &["verify", "shop", "--drill"], &[]).ok();
    assert!(
        ok.stdout.contains("502 rows in 2 tables proven identical"),
        "{}",
        ok.stdout
    );

    // SQLite pages carry no checksum: a changed text passes integrity_check, and only
    // the content tells.
    tamper(&sb, &a, |raw| {
        replace_once(raw, b"marker-value-0001", b"marker-value-0002")
    });
    let bad = dbkeep(Some(&cfg), &["verify", "shop", "--drill"], &[]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    let said = format!("{}{}", bad.stdout, bad.stderr);
    assert!(said.contains("table notes: the 2 rows differ"), "{said}");
}

/// A SQLite archive forged together with its manifest (its sha256 matches) is checked
/// before the file goes into place: a restore checks every page's structure (`PRAGMA
/// quick_check`), a drill checks in full (`PRAGMA integrity_check`, each index entry
/// against its row). What fails is refused, and nothing is changed.
#[test]
fn a_forged_sqlite_archive_is_checked_before_it_goes_into_place() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_shop(&sb, 2000, "");
    sqlite_exec(&db, "CREATE INDEX orders_item ON orders (item)");
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let a = archive(&sb, "shop", ".sqlite.zst");
    let live = std::fs::read(&db).unwrap();

    // A page of the table overwritten: its header no longer parses.
    tamper(&sb, &a, |mut raw| {
        let page = usize::from(u16::from_be_bytes([raw[16], raw[17]]));
        raw[2 * page + 1..2 * page + 8].fill(0xff);
        raw
    });
    let into = sb.path().join("copy.db");
    let into_arg = into.display().to_string();
    let refused = dbkeep(
        Some(&cfg),
        &["restore", "shop", "latest", "--into", &into_arg],
        &[],
    );
    assert_ne!(refused.code, 0, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("fails PRAGMA quick_check")
            && refused.stderr.contains("Nothing was changed"),
        "{}",
        refused.stderr
    );
    assert!(!into.exists(), "a refused file was put in place");
    let in_place = dbkeep(
        Some(&cfg),
        &["restore", "shop", "latest", "--yes", "--no-safety-backup"],
        &[],
    );
    assert_ne!(in_place.code, 0, "{}", in_place.stderr);
    assert!(std::fs::read(&db).unwrap() == live, "the live file changed");
    let leftovers: Vec<_> = std::fs::read_dir(sb.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Index entries that match no row (the index redefined over another column): the
    // pages parse, so only the full check finds it, and a drill runs the full check.
    let damaged = sb.path().join("damaged.db");
    std::fs::copy(&db, &damaged).unwrap();
    sqlite_exec(
        &damaged,
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX orders_item ON orders (id)'
         WHERE name = 'orders_item';",
    );
    let bytes = std::fs::read(&damaged).unwrap();
    tamper(&sb, &a, |_| bytes);
    let drill = dbkeep(Some(&cfg), &["verify", "shop", "--drill"], &[]);
    assert_eq!(drill.code, 1, "{}\n{}", drill.stdout, drill.stderr);
    let said = format!("{}{}", drill.stdout, drill.stderr);
    assert!(
        said.contains("fails PRAGMA integrity_check") && said.contains("orders_item"),
        "{said}"
    );
}

fn sqlite_shop(sb: &Sandbox, rows: u32, extra: &str) -> (PathBuf, PathBuf) {
    let db = sb.path().join("shop.db");
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO orders SELECT i, 'order-' || i FROM n;
             CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('kept');"
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[storage.local]\npath = \"{}\"\n[targets.shop]\nkind = \"sqlite\"\npath = \"{}\"\n{extra}\n",
        sb.backups().display(),
        db.display()
    ));
    (db, cfg)
}

fn sqlite_exec(db: &Path, sql: &str) {
    let st = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .status()
        .unwrap();
    assert!(st.success(), "{sql}");
}

fn status_json(cfg: &Path) -> (i32, serde_json::Value) {
    let r = dbkeep(Some(cfg), &["status", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    (r.code, v[0].clone())
}

/// The ids of the complete backups, newest first.
fn ids(cfg: &Path) -> Vec<String> {
    let r = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    out.dedup();
    out
}

#[test]
fn emptied_tables_make_backups_suspect_and_cleanup_keeps_the_last_good_one() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_shop(&sb, 2000, "keep_days = 0\nmin_keep = 2");
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let good = ids(&cfg)[0].clone();
    let (code, t) = status_json(&cfg);
    assert_eq!((code, t["level"].as_str()), (0, Some("green")), "{t}");

    // A wipe: the table's rows are gone. Three backups of it in a row.
    sqlite_exec(&db, "DELETE FROM orders;");
    // A second apart, so each run has its own second and is older than keep_days = 0
    // when cleanup runs.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let r = dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
        assert!(r.stderr.contains("SUSPECT"), "{}", r.stderr);
    }
    let all = ids(&cfg);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3], good);
    let list = dbkeep(Some(&cfg), &["list", "shop"], &[]).ok();
    assert!(
        list.stdout
            .contains("SUSPECT: table orders is empty (it had 2000 rows)"),
        "{}",
        list.stdout
    );
    // Each suspect compared with the last good backup, not with the suspect before it.
    let newest = archive_of(&sb, &all[0]);
    assert_eq!(
        manifest(&newest)["suspect"],
        "table orders is empty (it had 2000 rows); rows down from 2001 to 1 (more than 50 % fewer)"
    );

    // min_keep = 2, keep_days = 0: without the marks the three empty dumps would push
    // the good one out. The newest stays (the newest always does), the good one stays.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let plan = dbkeep(Some(&cfg), &["cleanup", "--dry-run"], &[]).ok();
    assert!(
        plan.stdout.contains("newest backup that is not suspect"),
        "{}",
        plan.stdout
    );
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    let left = ids(&cfg);
    assert_eq!(left, vec![all[0].clone(), good.clone()], "{left:?}");

    // Health: amber (200 from /health, exit 0 from status), with the reason and a metric.
    let (code, t) = status_json(&cfg);
    assert_eq!(code, 0, "amber is not a failure: {t}");
    assert_eq!(t["level"], "amber", "{t}");
    assert!(
        t["attention"][0].as_str().unwrap().contains("SUSPECT"),
        "{t}"
    );
    let mut d = crate::common::spawn_daemon(&cfg, &[]);
    crate::common::wait_for(
        std::time::Duration::from_secs(30),
        "the suspect gauge",
        || d.metric(r#"dbkeep_backup_suspect{target="shop"}"#) == Some(1.0),
    );
    let (code, body) = d.get("/health");
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "amber", "{body}");
    assert_eq!(h["amber_targets"][0], "shop", "{body}");
    d.signal(libc::SIGTERM);
    d.wait_exit(std::time::Duration::from_secs(30));

    // `latest` is the newest backup not marked suspect: the good one comes back, and
    // the suspect one still can, by its id.
    let copy = sb.path().join("copy.db");
    let r = dbkeep(
        Some(&cfg),
        &["restore", "shop", "--into", copy.to_str().unwrap()],
        &[],
    )
    .ok();
    assert!(r.stderr.contains("not marked suspect"), "{}", r.stderr);
    assert_eq!(
        crate::common::sqlite_query(&copy, "SELECT count(*) FROM orders"),
        "2000"
    );
    std::fs::remove_file(&copy).unwrap();
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "shop",
            &left[0],
            "--into",
            copy.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    assert_eq!(
        crate::common::sqlite_query(&copy, "SELECT count(*) FROM orders"),
        "0"
    );

    // Accepting the newest clears the mark: green, and retention counts it again.
    let bad = dbkeep(Some(&cfg), &["accept", "shop", &good], &[]);
    assert_ne!(bad.code, 0, "the good backup is not suspect");
    assert!(bad.stderr.contains("is not suspect"), "{}", bad.stderr);
    dbkeep(Some(&cfg), &["accept", "shop", &left[0]], &[]).ok();
    let (_, t) = status_json(&cfg);
    assert_eq!(t["level"], "green", "{t}");
    let list = dbkeep(Some(&cfg), &["list", "shop"], &[]).ok();
    assert!(list.stdout.contains("accepted"), "{}", list.stdout);
    // A new backup of the (still empty) table is now compared with the accepted one.
    let r = dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    assert!(!r.stderr.contains("SUSPECT"), "{}", r.stderr);
}

fn archive_of(sb: &Sandbox, id: &str) -> PathBuf {
    let f = sb
        .files("shop")
        .into_iter()
        .find(|f| f.contains(id) && !f.ends_with(".manifest.json"))
        .unwrap();
    sb.backups().join("shop").join(f)
}

#[test]
fn recovery_objectives_turn_health_amber_and_red() {
    let sb = Sandbox::new();
    // A drill always takes longer than 1 ms; the newest backup is soon older than 2 s.
    let (_db, cfg) = sqlite_shop(&sb, 10, "rto = \"1ms\"\nrpo = \"2s\"");
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let (code, t) = status_json(&cfg);
    assert_eq!((code, t["level"].as_str()), (0, Some("green")), "{t}");
    dbkeep(Some(&cfg), &["verify", "shop", "--drill"], &[]).ok();
    let (code, t) = status_json(&cfg);
    assert_eq!(code, 0, "{t}");
    assert_eq!(t["level"], "amber", "{t}");
    assert!(
        t["attention"][0]
            .as_str()
            .unwrap()
            .contains("longer than the recovery time objective (rto 1ms)"),
        "{t}"
    );
    assert_eq!(t["last_proven_restore"]["rows_proven"], 11, "{t}");
    let text = dbkeep(Some(&cfg), &["status"], &[]);
    assert!(
        text.stdout.contains("last proven restore: backup"),
        "{}",
        text.stdout
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (code, t) = status_json(&cfg);
    assert_eq!(code, 1, "{t}");
    assert_eq!(t["level"], "red", "{t}");
    assert!(
        t["problems"][0]
            .as_str()
            .unwrap()
            .contains("recovery point objective missed"),
        "{t}"
    );
}

#[test]
fn a_sqlite_table_no_row_can_be_read_from_does_not_fail_the_backup() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_shop(&sb, 10, "");
    // A virtual table whose module this SQLite does not have: its rows cannot be read
    // (a real one's live in its shadow tables, which are counted).
    sqlite_exec(
        &db,
        "PRAGMA writable_schema = ON; INSERT INTO sqlite_master VALUES ('table', 'vv', 'vv', 0, 'CREATE VIRTUAL TABLE vv USING nosuchmodule(x)');",
    );
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let a = archive(&sb, "shop", ".sqlite.zst");
    let m = manifest(&a);
    assert_eq!(content_table(&m, "orders")["rows"], 10);
    let ok = dbkeep(Some(&cfg), &["verify", "shop", "--drill"], &[]).ok();
    assert!(ok.stdout.contains("drill OK"), "{}", ok.stdout);
}

const SHOP_WITH_TIES: &str = r#"
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('ok', 'sad');
CREATE TABLE shop.customers (id serial PRIMARY KEY, name text UNIQUE);
CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int REFERENCES shop.customers (id), total numeric CHECK (total >= 0),
    mood shop.mood, note text);
CREATE INDEX orders_by_customer ON shop.orders (customer_id);
CREATE FUNCTION shop.refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'refused by trigger'; END$$;
CREATE TRIGGER refuse_big BEFORE INSERT ON shop.orders FOR EACH ROW WHEN (NEW.total > 1000000) EXECUTE FUNCTION shop.refuse();
COMMENT ON CONSTRAINT orders_customer_id_fkey ON shop.orders IS 'each order has a customer';
CREATE TABLE shop."we.ird ""t""" (id int PRIMARY KEY, v text);
INSERT INTO shop."we.ird ""t""" VALUES (1, 'x'), (2, 'y');
CREATE TABLE shop.events (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2026 PARTITION OF shop.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO shop.customers (name) VALUES ('a'), ('b');
INSERT INTO shop.orders (customer_id, total, mood, note)
    SELECT 1 + g % 2, g, 'ok', 'n' || g FROM generate_series(1, 1000) g;
INSERT INTO shop.events VALUES (1, '2026-05-01'), (2, '2026-06-01');
"#;

/// Every relation of the database outside the system schemas, with its kind.
fn relations(pg: &TestPostgres, db: &str) -> Vec<String> {
    pg.psql(
        db,
        "SELECT format('%I.%I %s', n.nspname, c.relname, c.relkind) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_postgres_table_comes_back_beside_the_original_which_stays_as_it_is() {
    let pg = TestPostgres::start();
    pg.create_db("src");
    pg.psql("src", SHOP_WITH_TIES);
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "src", "");
    dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    let id = ids(&cfg)[0].clone();
    let at_backup: std::collections::HashMap<String, String> =
        pg.table_checksums("src").into_iter().collect();
    // The mistake to recover from.
    pg.psql(
        "src",
        "DELETE FROM shop.orders WHERE id > 10; UPDATE shop.orders SET note = 'changed'",
    );
    let before = pg.table_checksums("src");
    let rels_before = relations(&pg, "src");

    let r = dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "shop.orders"],
        &[],
    )
    .ok();
    let copy = format!("shop.orders_restored_{id}");
    assert!(
        r.stdout
            .contains(&format!("restored shop.orders as {copy} (1000 rows)")),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // The original and every other table as they were; the copy holds the backup's rows.
    let after: std::collections::HashMap<String, String> =
        pg.table_checksums("src").into_iter().collect();
    for (t, sum) in &before {
        assert_eq!(&after[t], sum, "{t} changed");
    }
    assert_eq!(after[&copy], at_backup["shop.orders"]);
    let new: Vec<String> = relations(&pg, "src")
        .into_iter()
        .filter(|r| !rels_before.contains(r))
        .collect();
    assert_eq!(
        new,
        [
            format!("{copy} r"),
            format!("{copy}_by_customer i"),
            format!("{copy}_id_seq S"),
            format!("{copy}_pkey i"),
        ]
    );
    // Its own key and check, no foreign key or trigger tying it to the live rows; its
    // identity goes on after the backup's last value.
    let kinds = pg.psql(
        "src",
        &format!(
            "SELECT string_agg(contype::text, '' ORDER BY contype) FROM pg_constraint WHERE conrelid = '{copy}'::regclass"
        ),
    );
    assert_eq!(kinds, "cp", "check and primary key only");
    assert_eq!(
        pg.psql(
            "src",
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{copy}'::regclass")
        ),
        "0"
    );
    assert_eq!(
        pg.psql(
            "src",
            &format!("INSERT INTO {copy} (customer_id, total) VALUES (999, 2000000) RETURNING id")
        )
        .lines()
        .next()
        .unwrap(),
        "1001"
    );

    // Again: the name is taken, and nothing changes.
    let rels = relations(&pg, "src");
    let again = dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "shop.orders"],
        &[],
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains(&format!("table {copy}")) && again.stderr.contains("--as"),
        "{}",
        again.stderr
    );
    assert_eq!(relations(&pg, "src"), rels);

    // Hostile names stay names: a quoted table with a dot and quotes, and a copy named
    // like an injection.
    let hostile = r#"x"; DROP TABLE shop.orders; --"#;
    let r = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "--table",
            r#"shop."we.ird ""t""""#,
            "--as",
            &format!("shop.\"{}\"", hostile.replace('"', "\"\"")),
        ],
        &[],
    )
    .ok();
    assert!(r.stdout.contains("(2 rows)"), "{}", r.stdout);
    assert_eq!(
        pg.psql(
            "src",
            &format!(
                "SELECT count(*) FROM shop.\"{}\"",
                hostile.replace('"', "\"\"")
            )
        ),
        "2"
    );
    assert_eq!(pg.psql("src", "SELECT count(*) FROM shop.orders"), "10");

    // A partitioned table: its partitions are named; a partition comes back standing alone.
    let part = dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "shop.events"],
        &[],
    );
    assert_ne!(part.code, 0);
    assert!(
        part.stderr.contains("partitioned") && part.stderr.contains("shop.events_2026"),
        "{}",
        part.stderr
    );
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "--table",
            "shop.events_2026",
            "--as",
            "public.ev",
        ],
        &[],
    )
    .ok();
    assert_eq!(
        pg.psql(
            "src",
            "SELECT count(*) || ' ' || (SELECT relispartition FROM pg_class WHERE oid = 'public.ev'::regclass) FROM public.ev"
        ),
        "2 false"
    );

    // A copy that cannot go in (its type is gone from the live database) leaves nothing:
    // the load is one transaction, and the scratch database is dropped.
    pg.psql(
        "src",
        "ALTER TABLE shop.orders DROP COLUMN mood; DROP TYPE shop.mood CASCADE",
    );
    let rels = relations(&pg, "src");
    let failed = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "--table",
            "shop.orders",
            "--as",
            "shop.again",
        ],
        &[],
    );
    assert_ne!(failed.code, 0);
    assert!(failed.stderr.contains("mood"), "{}", failed.stderr);
    assert_eq!(relations(&pg, "src"), rels);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbkeep_%'"
        ),
        "0"
    );
    let missing = dbkeep(Some(&cfg), &["restore", "app", "--table", "shop.nope"], &[]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("holds no table shop.nope"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_sqlite_table_comes_back_into_the_live_file_beside_the_original() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_shop(&sb, 50, "");
    sqlite_exec(
        &db,
        "CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders (id) ON DELETE CASCADE,
             qty INT CHECK (qty > 0), total INT GENERATED ALWAYS AS (qty * 10) VIRTUAL);
         CREATE INDEX lines_by_order ON lines (order_id);
         CREATE TRIGGER lines_guard BEFORE INSERT ON lines WHEN NEW.qty > 100 BEGIN SELECT RAISE(ABORT, 'too many'); END;
         INSERT INTO lines (id, order_id, qty) SELECT id * 3, id, id FROM orders;
         CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO kv VALUES ('a', 1), ('b', 2);",
    );
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let id = ids(&cfg)[0].clone();
    let lines_at_backup = sqlite_query(
        &db,
        "SELECT group_concat(id || ':' || order_id || ':' || qty || ':' || total) FROM lines",
    );
    sqlite_exec(
        &db,
        "DELETE FROM lines WHERE id > 30; UPDATE lines SET qty = 7",
    );
    let lines_now = sqlite_query(&db, "SELECT group_concat(id || ':' || qty) FROM lines");
    let schema_before = sqlite_query(&db, "SELECT group_concat(sql, ';') FROM sqlite_schema");

    let r = dbkeep(Some(&cfg), &["restore", "shop", "--table", "lines"], &[]).ok();
    let copy = format!("lines_restored_{id}");
    assert!(
        r.stdout
            .contains(&format!("restored lines as {copy} (50 rows)")),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // The copy holds the backup's rows under their rowids; the original is as it was.
    assert_eq!(
        sqlite_query(&db, &format!("SELECT group_concat(id || ':' || order_id || ':' || qty || ':' || total) FROM {copy}")),
        lines_at_backup
    );
    assert_eq!(
        sqlite_query(&db, "SELECT group_concat(id || ':' || qty) FROM lines"),
        lines_now
    );
    let schema_after = sqlite_query(&db, "SELECT group_concat(sql, ';') FROM sqlite_schema");
    assert!(schema_after.starts_with(&schema_before), "{schema_after}");
    // Its index, no foreign key, no trigger.
    assert_eq!(
        sqlite_query(&db, &format!("SELECT group_concat(type || ' ' || name) FROM sqlite_schema WHERE tbl_name = '{copy}'")),
        format!("table {copy},index {copy}_by_order")
    );
    assert_eq!(
        sqlite_query(
            &db,
            &format!("SELECT count(*) FROM pragma_foreign_key_list('{copy}')")
        ),
        "0"
    );
    sqlite_exec(
        &db,
        &format!("PRAGMA foreign_keys = ON; INSERT INTO {copy} (order_id, qty) VALUES (999, 500)"),
    );

    // A taken name, a writer holding the lock, a corrupt archive: refused, and the file
    // is not changed by a byte.
    let sum = sha256_file(&db);
    let again = dbkeep(Some(&cfg), &["restore", "shop", "--table", "lines"], &[]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains(&format!("table {copy}")),
        "{}",
        again.stderr
    );
    assert_eq!(sha256_file(&db), sum);

    let writer = SqliteLock::take(&db, "BEGIN IMMEDIATE");
    let locked = dbkeep(Some(&cfg), &["restore", "shop", "--table", "kv"], &[]);
    drop(writer);
    assert_eq!(locked.code, 2, "{}", locked.stderr);
    assert!(locked.stderr.contains("write lock"), "{}", locked.stderr);
    assert_eq!(sha256_file(&db), sum);

    let a = archive_of(&sb, &id);
    let good = std::fs::read(&a).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&a, &bad).unwrap();
    let corrupt = dbkeep(Some(&cfg), &["restore", "shop", "--table", "kv"], &[]);
    assert_ne!(corrupt.code, 0);
    assert!(corrupt.stderr.contains("sha256"), "{}", corrupt.stderr);
    assert_eq!(sha256_file(&db), sum);
    std::fs::write(&a, &good).unwrap();

    // A name like an injection is a name; a table without rowid comes back too.
    let hostile = r#"x"; DROP TABLE orders; --"#;
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "shop",
            "--table",
            "kv",
            "--as",
            &format!("\"{}\"", hostile.replace('"', "\"\"")),
        ],
        &[],
    )
    .ok();
    assert_eq!(
        sqlite_query(
            &db,
            &format!(
                "SELECT group_concat(k || v) FROM \"{}\"",
                hostile.replace('"', "\"\"")
            )
        ),
        "a1,b2"
    );
    assert_eq!(sqlite_query(&db, "SELECT count(*) FROM orders"), "50");
    // A definition in the archive holding a second statement (planted with
    // writable_schema, the manifest fixed to match) is refused: nothing runs in the live
    // file.
    dbkeep(Some(&cfg), &["backup", "shop"], &[]).ok();
    let newest = ids(&cfg)[0].clone();
    let planted = archive_of(&sb, &newest);
    tamper(&sb, &planted, |raw| {
        let f = sb.path().join("planted.db");
        std::fs::write(&f, &raw).unwrap();
        sqlite_exec(
            &f,
            "PRAGMA writable_schema = ON; UPDATE sqlite_schema SET sql = 'CREATE TABLE notes (body TEXT); DROP TABLE orders' WHERE name = 'notes';",
        );
        std::fs::read(&f).unwrap()
    });
    let sum = sha256_file(&db);
    let r = dbkeep(
        Some(&cfg),
        &["restore", "shop", &newest, "--table", "notes"],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("more than one statement"), "{}", r.stderr);
    assert_eq!(sha256_file(&db), sum);

    // No scratch file is left behind.
    let left: Vec<PathBuf> = all_files(sb.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("tables."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_postgres_table_copy_stands_alone_whatever_its_ties_or_name() {
    let pg = TestPostgres::start();
    pg.create_db("src");
    let long = "t".repeat(60);
    pg.psql(
        "src",
        &format!(
            "CREATE TABLE pa (id int); CREATE TABLE pb (name text);
             CREATE TABLE kid (extra int) INHERITS (pa, pb);
             INSERT INTO pa VALUES (1); INSERT INTO kid VALUES (2, 'k', 3);
             CREATE SCHEMA recovery;
             CREATE TABLE orders (id int PRIMARY KEY, c int); CREATE INDEX orders_c ON orders (c);
             INSERT INTO orders SELECT g, g % 7 FROM generate_series(1, 50) g;
             CREATE TYPE addr AS (street text, city text);
             CREATE TABLE people (id int PRIMARY KEY, home addr, name text);
             INSERT INTO people VALUES (1, ROW('Main St', 'Bern'), 'ann');
             CREATE TABLE {long} (id int PRIMARY KEY); INSERT INTO {long} VALUES (1), (2);
             CREATE TABLE {long}_b (id int);"
        ),
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "src", "");
    dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
    let id = ids(&cfg)[0].clone();
    let counts = "SELECT (SELECT count(*) FROM pa) || ' ' || (SELECT count(*) FROM pb)";
    let before = pg.psql("src", counts);

    // A child of two parents comes back a child of neither: the parents' rows stay.
    dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "public.kid"],
        &[],
    )
    .ok();
    assert_eq!(pg.psql("src", counts), before);
    assert_eq!(
        pg.psql(
            "src",
            &format!(
                "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'kid_restored_{id}'::regclass"
            )
        ),
        "0"
    );

    // The same name in another schema keeps its index and key names.
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "--table",
            "orders",
            "--as",
            "recovery.orders",
        ],
        &[],
    )
    .ok();
    assert_eq!(
        pg.psql(
            "src",
            "SELECT string_agg(indexrelid::regclass::text, ' ' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 'recovery.orders'::regclass"
        ),
        "recovery.orders_c recovery.orders_pkey"
    );

    // A name over PostgreSQL's 63 bytes is cut from the original's part.
    let r = dbkeep(Some(&cfg), &["restore", "app", "--table", &long], &[]).ok();
    let copy = format!("{}_restored_{id}", &long[..63 - 25]);
    assert!(
        r.stdout.contains(&format!("as public.{copy} (2 rows)")),
        "{}",
        r.stdout
    );
    // Two long names cut to one copy name: refused before anything is read.
    let same = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "--table",
            &long,
            "--table",
            &format!("{long}_b"),
        ],
        &[],
    );
    assert_eq!(same.code, 2, "{}", same.stderr);
    assert!(same.stderr.contains("one at a time"), "{}", same.stderr);
    let too_long = "x".repeat(64);
    let refused = dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "orders", "--as", &too_long],
        &[],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("at most 63 bytes"),
        "{}",
        refused.stderr
    );

    // A copy named like a type of the backup that the live database has renamed since:
    // the scratch type is moved aside, never dropped (which would drop the column that
    // uses it), so the copy fails to load and nothing is created.
    pg.psql("src", "ALTER TYPE addr RENAME TO address");
    let rels = relations(&pg, "src");
    let r = dbkeep(
        Some(&cfg),
        &["restore", "app", "--table", "people", "--as", "public.addr"],
        &[],
    );
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("dbkeep_moved_"), "{}", r.stderr);
    assert_eq!(relations(&pg, "src"), rels);
}
