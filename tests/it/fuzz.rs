//! Bounded fuzzing of the parsers that read what others wrote: the config (file and
//! environment), manifests, URLs, archive names and the SQL guard. Each runs a fixed
//! number of cases (no persistence files, shrinking capped), so the suite's time stays
//! bounded; the property is always "an answer, never a panic", plus what each must keep.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use dbkeep::catalog;
use dbkeep::config;
use dbkeep::engine::postgres::sqlguard::SqlGuard;

fn bounded(cases: u32) -> Config {
    Config {
        cases,
        max_shrink_iters: 2_000,
        max_shrink_time: 20_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Config-shaped TOML from the real keys and hostile values, so the cases reach
/// validation rather than stopping at the first syntax error.
fn toml_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "url",
        "path",
        "kind",
        "schedule",
        "every",
        "keep_days",
        "min_keep",
        "schemas",
        "password",
        "password_file",
        "globals",
        "compression",
        "listen",
        "admin_token_file",
        "bucket",
        "endpoint",
        "prefix",
        "timeout",
        "drill_every",
        "max_concurrent",
    ]);
    let section = prop::sample::select(vec![
        "[daemon]",
        "[defaults]",
        "[storage.local]",
        "[storage.s3]",
        "[targets.app]",
        "[targets.\"../x\"]",
        "[targets.app.schema]",
        "",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,40}".prop_map(|s| format!("{s:?}")),
        Just("\"postgres://u:S3cr3tPW@h/db?sslmode=disable\"".to_string()),
        Just("\"postgres://u@h/db?application_name=a&password=S3cr3tPW\"".to_string()),
        Just("\"postgres://u@h/db?sslpassword=S3cr3tPW\"".to_string()),
        Just("\"/\"".to_string()),
        Just("[\"a\", \"b*\", \"\"]".to_string()),
        Just("true".to_string()),
        Just("\"0 0 31 2 *\"".to_string()),
        Just("\"1000000000000d\"".to_string()),
    ];
    prop::collection::vec((section, key, value), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(s, k, v)| format!("{s}\n{k} = {v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(bounded(400))]

    #[test]
    fn any_text_as_config_is_an_answer_not_a_panic(text in "\\PC{0,300}") {
        let _ = config::load_from(Some(&text), HashMap::new());
    }

    #[test]
    fn config_shaped_text_is_an_answer_not_a_panic(text in toml_like()) {
        match config::load_from(Some(&text), HashMap::new()) {
            // What loads never shows a password (config check prints this).
            Ok(cfg) => {
                let shown = serde_json::to_string(&cfg).unwrap();
                prop_assert!(!shown.contains("S3cr3tPW"), "{shown}");
            }
            Err(e) => prop_assert!(!e.to_string().contains("S3cr3tPW"), "{e}"),
        }
    }

    #[test]
    fn any_environment_is_an_answer_not_a_panic(
        vars in prop::collection::hash_map("DBKEEP_[A-Z_]{1,30}", "\\PC{0,40}", 0..6)
    ) {
        let _ = config::load_from(None, vars);
    }
}

proptest! {
    #![proptest_config(bounded(2_000))]

    #[test]
    fn any_bytes_as_a_manifest_are_an_answer_not_a_panic(
        raw in prop::collection::vec(any::<u8>(), 0..600),
        bytes in any::<u64>(),
    ) {
        let _ = catalog::check_manifest("app", "app_20260101_000000.dump.zst", bytes, &raw, None);
    }

    #[test]
    fn a_signed_manifest_changed_anywhere_is_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let (key, raw) = signed_good_manifest();
        let verify = key.verifying();
        let mut changed = raw.clone();
        for (at, b) in edits {
            let i = at.index(changed.len());
            changed[i] = b;
        }
        let got = catalog::check_manifest("app", "app_20260101_000000.dump.zst", 42, &changed, Some(&verify));
        // Only an edit that leaves the same manifest once parsed (white space, a byte set to
        // itself) may pass.
        if let Ok(m) = got {
            let original = catalog::check_manifest("app", "app_20260101_000000.dump.zst", 42, &raw, Some(&verify)).unwrap();
            prop_assert_eq!(catalog::signed_bytes(&m), catalog::signed_bytes(&original));
        }
    }

    #[test]
    fn a_changed_manifest_is_refused_or_still_names_its_archive(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut raw = GOOD_MANIFEST.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(raw.len());
            raw[i] = b;
        }
        raw.truncate(cut.index(raw.len() + 1).max(raw.len() / 2));
        if let Ok(m) = catalog::check_manifest("app", "app_20260101_000000.dump.zst", 42, &raw, None) {
            prop_assert_eq!(m.file, "app_20260101_000000.dump.zst");
            prop_assert_eq!(m.target, "app");
            prop_assert_eq!(m.stored_bytes, 42);
        }
    }

    #[test]
    fn any_string_as_a_url_is_an_answer_and_never_keeps_its_password(url in "\\PC{0,120}") {
        if let Ok((clean, _)) = config::split_url_password(&url) {
            prop_assert!(!clean.to_ascii_lowercase().contains("password="), "{clean}");
        }
    }

    #[test]
    fn postgres_urls_with_passwords_anywhere_lose_them(
        user in "[a-z]{1,8}",
        pw in "[a-zA-Z0-9]{8,16}",
        host in "[a-z]{1,8}",
        before in prop::bool::ANY,
        params in prop::collection::vec(("[a-z_]{1,12}", "[a-z0-9]{0,8}"), 0..4),
        key in prop::sample::select(vec!["password", "PASSWORD", "Password"]),
    ) {
        let mut query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !before {
            query.insert(query.len() / 2, format!("{key}={pw}"));
        }
        let url = format!(
            "postgres://{user}{}@{host}:5432/db{}{}",
            if before { format!(":{pw}") } else { String::new() },
            if query.is_empty() { "" } else { "?" },
            query.join("&")
        );
        let filtered = params.iter().any(|(k, _)| {
            matches!(k.as_str(), "password" | "sslpassword" | "dbname" | "service")
        });
        match config::split_url_password(&url) {
            Ok((clean, secret)) => {
                prop_assert!(!clean.contains(&pw), "{clean}");
                prop_assert_eq!(secret.map(|s| s.expose().to_string()), Some(pw.clone()));
            }
            Err(e) => {
                prop_assert!(filtered, "{url}: {e}");
                prop_assert!(!e.contains(&pw), "{e}");
            }
        }
    }

    #[test]
    fn archive_names_parse_or_are_ignored(name in "\\PC{0,80}") {
        let _ = catalog::id_of_file("app", &name);
        if let Some(decoded) = catalog::decode_name(&name) {
            // What decodes encodes back to a name without a path in it.
            let again = catalog::encode_name(&decoded);
            prop_assert!(!again.contains('/'), "{again}");
        }
    }

    #[test]
    fn the_sql_guard_answers_any_bytes_alike_in_any_chunks(
        sql in prop::collection::vec(
            prop::sample::select(vec![
                b'\\', b'\n', b'\'', b'"', b'$', b'-', b'/', b'*', b'E', b'a', b' ', b';',
                b'!', b'C', b'O', b'P', b'Y', b'.', b'q',
            ]),
            0..300,
        ),
        chunk in 1usize..17,
    ) {
        let mut whole = SqlGuard::default();
        let one = whole.check(&sql);
        let mut pieces = SqlGuard::default();
        let many = sql.chunks(chunk).try_for_each(|c| pieces.check(c));
        prop_assert_eq!(one.is_ok(), many.is_ok());
    }
}

/// A manifest as dbkeep writes it.
const GOOD_MANIFEST: &str = r#"{"format_version":1,"target":"app","id":"20260101_000000","kind":"postgres","contents":"database","schema":null,"file":"app_20260101_000000.dump.zst","started":"2026-01-01T00:00:00Z","finished":"2026-01-01T00:00:01Z","duration_seconds":1.0,"raw_bytes":100,"stored_bytes":42,"codec":"zstd","sha256":"0000000000000000000000000000000000000000000000000000000000000000","tools":{"dbkeep":"0.1.0","dump_tool":"pg_dump (PostgreSQL) 15.0","server":"PostgreSQL 15.0"},"tables":[]}"#;

#[test]
fn the_good_manifest_of_the_fuzz_cases_is_accepted() {
    // Else the "changed manifest" property would test nothing.
    let m = catalog::check_manifest(
        "app",
        "app_20260101_000000.dump.zst",
        42,
        GOOD_MANIFEST.as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(m.id.to_string(), "20260101_000000");
    // Signed, it verifies; unsigned or by another key, it does not.
    let (key, raw) = signed_good_manifest();
    let verify = key.verifying();
    let file = "app_20260101_000000.dump.zst";
    assert!(catalog::check_manifest("app", file, 42, &raw, Some(&verify)).is_ok());
    let unsigned = GOOD_MANIFEST.as_bytes();
    assert!(catalog::check_manifest("app", file, 42, unsigned, Some(&verify)).is_err());
    let (other, _) = dbkeep::crypt::SigningKey::generate();
    let other = dbkeep::crypt::SigningKey::parse(&other)
        .unwrap()
        .verifying();
    assert!(catalog::check_manifest("app", file, 42, &raw, Some(&other)).is_err());
}

/// The good manifest signed with a new key: (the key, the manifest's bytes).
fn signed_good_manifest() -> (dbkeep::crypt::SigningKey, Vec<u8>) {
    let (text, _) = dbkeep::crypt::SigningKey::generate();
    let key = dbkeep::crypt::SigningKey::parse(&text).unwrap();
    let mut m: catalog::Manifest = serde_json::from_str(GOOD_MANIFEST).unwrap();
    catalog::sign(&mut m, &key);
    (key, serde_json::to_vec_pretty(&m).unwrap())
}

#[test]
fn deeply_nested_input_is_refused_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(catalog::check_manifest(
        "app",
        "app_20260101_000000.dump.zst",
        1,
        deep.as_bytes(),
        None
    )
    .is_err());
    let toml = format!("a = {}{}", "[".repeat(50_000), "]".repeat(50_000));
    assert!(config::load_from(Some(&toml), HashMap::new()).is_err());
}
