//! Restorability: content fingerprints taken from the dump stream and proven by drills,
//! suspicious backups held out of retention, one table restored beside the live data.

use std::path::{Path, PathBuf};

use crate::common::{dbkeep, decompress, pg_config, sha256_file, Sandbox, TestPostgres};

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
