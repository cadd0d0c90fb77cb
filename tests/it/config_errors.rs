//! Bad configs exit 2 with a message naming the key; a good one prints with secrets hidden.

use crate::common::{dbkeep, Sandbox};

const STORAGE: &str = "[storage.local]\npath = \"/tmp/dbkeep-never-written\"\n";
const APP: &str = "[targets.app]\nkind = \"postgres\"\nurl = \"postgres://backup@db:5432/app\"\n";

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let sb = Sandbox::new();
    let unreadable = sb.path().join("missing-secret");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("unknown key", format!("{STORAGE}{APP}compresion = \"zstd\"\n"), vec![], "targets.app"),
        ("unknown key says which", format!("{STORAGE}{APP}compresion = \"zstd\"\n"), vec![], "unknown field `compresion`"),
        ("unknown section", format!("{STORAGE}{APP}[storage.ftp]\nhost = \"x\"\n"), vec![], "storage"),
        ("bad cron", format!("{STORAGE}{APP}schedule = \"0 25 * * *\"\n"), vec![], "targets.app.schedule"),
        ("cron with 3 fields", format!("{STORAGE}[defaults]\nschedule = \"0 2 *\"\n{APP}"), vec![], "defaults.schedule"),
        ("every and schedule", format!("{STORAGE}{APP}every = \"6h\"\nschedule = \"0 2 * * *\"\n"), vec![], "targets.app.every"),
        ("timezone shown so the typo shows", format!("{STORAGE}[defaults]\ntimezone = \"europe/berlin\"\n{APP}"), vec![], "\"europe/berlin\" is not an IANA time zone"),
        ("s3 endpoint with credentials", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"p\"\nendpoint = \"http://u:EndpointSecret9@127.0.0.1:9000\"\n"), vec![], "`storage.s3.endpoint`: holds credentials"),
        ("bad every", format!("{STORAGE}{APP}every = \"sometimes\"\n"), vec![], "targets.app.every"),
        ("missing url", format!("{STORAGE}[targets.app]\nkind = \"postgres\"\n"), vec![], "targets.app.url"),
        ("non-postgres url", format!("{STORAGE}[targets.app]\nkind = \"postgres\"\nurl = \"mysql://x/y\"\n"), vec![], "targets.app.url"),
        ("unreadable password_file", format!("{STORAGE}{APP}password_file = \"{}\"\n", unreadable.display()), vec![], "targets.app.password_file"),
        ("password and password_file", format!("{STORAGE}{APP}password = \"a\"\npassword_file = \"/etc/hostname\"\n"), vec![], "targets.app.password_file"),
        ("compression lz5", format!("{STORAGE}{APP}compression = \"lz5\"\n"), vec![], "targets.app.compression"),
        ("zstd level 30", format!("{STORAGE}{APP}compression_level = 30\n"), vec![], "targets.app.compression_level"),
        ("negative min_keep", format!("{STORAGE}{APP}min_keep = -1\n"), vec![], "targets.app.min_keep"),
        ("negative keep_days in defaults", format!("{STORAGE}[defaults]\nkeep_days = -3\n{APP}"), vec![], "defaults.keep_days"),
        ("missing kind", format!("{STORAGE}[targets.app]\nurl = \"postgres://x/y\"\n"), vec![], "targets.app.kind"),
        ("unknown kind", format!("{STORAGE}[targets.app]\nkind = \"oracle\"\n"), vec![], "targets.app.kind"),
        ("sqlite without path", format!("{STORAGE}[targets.c]\nkind = \"sqlite\"\n"), vec![], "targets.c.path"),
        ("sqlite with url", format!("{STORAGE}[targets.c]\nkind = \"sqlite\"\npath = \"/x.db\"\nurl = \"postgres://a/b\"\n"), vec![], "targets.c.url"),
        ("no storage", APP.to_string(), vec![], "storage.local.path"),
        ("no targets", STORAGE.to_string(), vec![], "no targets configured"),
        ("bad target name", format!("{STORAGE}[targets.\"App Server\"]\nkind = \"sqlite\"\npath = \"/x.db\"\n"), vec![], "targets.App Server"),
        ("bad listen", format!("[daemon]\nlisten = \"localhost\"\n{STORAGE}{APP}"), vec![], "daemon.listen"),
        ("zero max_concurrent", format!("[daemon]\nmax_concurrent = 0\n{STORAGE}{APP}"), vec![], "daemon.max_concurrent"),
        ("bad shutdown_grace", format!("[daemon]\nshutdown_grace = \"soon\"\n{STORAGE}{APP}"), vec![], "daemon.shutdown_grace"),
        ("unknown env key", format!("{STORAGE}{APP}"), vec![("DBKEEP_TARGETS__APP__BOGUS", "1")], "unknown field `bogus`"),
        ("bad env value", format!("{STORAGE}{APP}"), vec![("DBKEEP_DEFAULTS__MIN_KEEP", "many")], "defaults.min_keep"),
        ("env compression", format!("{STORAGE}{APP}"), vec![("DBKEEP_TARGETS__APP__COMPRESSION", "brotli")], "targets.app.compression"),
        ("s3 empty prefix", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"\"\n"), vec![], "storage.s3.prefix"),
        ("s3 prefix /", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"/\"\n"), vec![], "storage.s3.prefix"),
        ("s3 no prefix", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\n"), vec![], "storage.s3.prefix"),
        ("s3 no bucket", format!("{STORAGE}{APP}[storage.s3]\nprefix = \"p\"\n"), vec![], "storage.s3.bucket"),
        ("s3 half the keys", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"p\"\naccess_key_id = \"x\"\n"), vec![], "storage.s3.secret_access_key"),
        ("s3 small parts", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"p\"\npart_size = \"1MiB\"\n"), vec![], "storage.s3.part_size"),
        ("s3 bad checksum", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"p\"\nchecksum = \"never\"\n"), vec![], "storage.s3.checksum"),
        ("s3 prefix from env", format!("{STORAGE}{APP}[storage.s3]\nbucket = \"b\"\nprefix = \"p\"\n"), vec![("DBKEEP_STORAGE__S3__PREFIX", "/")], "storage.s3.prefix"),
        ("toml syntax", format!("{STORAGE}{APP}keep_days = = 3\n"), vec![], "TOML"),
    ];
    let mut failures = Vec::new();
    for (name, toml, env, needle) in &cases {
        let cfg = sb.write_config(toml);
        let run = dbkeep(Some(&cfg), &["config", "check"], env);
        if run.code != 2 || !run.stderr.contains(needle) {
            failures.push(format!(
                "{name}: exit {} stderr {:?} (wanted {needle:?})",
                run.code, run.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let run = dbkeep(
        Some(std::path::Path::new("/nonexistent/dbkeep.toml")),
        &["config", "check"],
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent/dbkeep.toml"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_check_shows_the_effective_config_with_secrets_hidden() {
    let sb = Sandbox::new();
    let secret = sb.path().join("pw");
    std::fs::write(&secret, "file-secret-123\n").unwrap();
    let cfg = sb.write_config(&format!(
        "{STORAGE}[defaults]\nkeep_days = 30\n[targets.app]\nkind = \"postgres\"\nurl = \"postgres://u:url-secret-456@db/app\"\n\
         [targets.other]\nkind = \"postgres\"\nurl = \"postgres://u@db/other\"\npassword_file = \"{}\"\n",
        secret.display()
    ));
    let run = dbkeep(
        Some(&cfg),
        &["config", "check"],
        &[
            ("DBKEEP_DEFAULTS__KEEP_DAYS", "14"),
            ("DBKEEP_TARGETS__APP__EVERY", "6h"),
        ],
    )
    .ok();
    for leaked in ["url-secret-456", "file-secret-123"] {
        assert!(
            !run.stdout.contains(leaked) && !run.stderr.contains(leaked),
            "{leaked} shown"
        );
    }
    assert_eq!(
        run.stdout.matches("\"password\": \"***\"").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\"keep_days\": 14"),
        "env overrides the file: {}",
        run.stdout
    );
    assert!(run.stdout.contains("every 6h"), "{}", run.stdout);
    assert!(
        run.stdout.contains("\"url\": \"postgres://u@db/app\""),
        "{}",
        run.stdout
    );
}

#[test]
fn env_only_config_without_a_file_works() {
    let sb = Sandbox::new();
    let run = crate::common::dbkeep_in(
        sb.path(),
        &["config", "check"],
        &[
            ("DBKEEP_STORAGE__LOCAL__PATH", "/tmp/b"),
            ("DBKEEP_TARGETS__CACHE__KIND", "sqlite"),
            ("DBKEEP_TARGETS__CACHE__PATH", "/tmp/c.db"),
            ("DBKEEP_TARGETS__CACHE__EVERY", "1h"),
        ],
    )
    .ok();
    assert!(run.stdout.contains("environment only"), "{}", run.stdout);
    assert!(run.stdout.contains("\"name\": \"cache\""), "{}", run.stdout);
}
