//! The `Storage` contract: one body of expectations run against every implementation —
//! a local folder, the S3 test server on 127.0.0.1, and the in-memory storage.

use std::collections::HashMap;
use std::io::{Read, Write};

use dbkeep::storage::local::LocalStorage;
use dbkeep::storage::memory::MemoryStorage;
use dbkeep::storage::s3::S3Storage;
use dbkeep::storage::{Storage, StorageError};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::common::s3::TestS3;
use crate::common::Sandbox;

/// 12 MiB: more than two S3 parts of the smallest allowed size (5 MiB), so the S3 writer
/// runs a real multipart upload.
const LARGE: usize = 12 * 1024 * 1024;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn names(objects: &[dbkeep::storage::ObjectInfo]) -> Vec<String> {
    let mut v: Vec<String> = objects.iter().map(|o| o.file.clone()).collect();
    v.sort();
    v
}

fn read_all(s: &dyn Storage, target: &str, file: &str, rt: &tokio::runtime::Handle) -> Vec<u8> {
    let mut reader = rt.block_on(s.open(target, file)).expect("open");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read");
    out
}

/// Every expectation of the contract, against one storage.
fn contract(s: &dyn Storage, rt: &tokio::runtime::Runtime) {
    let h = rt.handle();
    let t = "app";

    // Nothing is visible before commit; commit makes it visible with its exact bytes.
    let data = pattern(LARGE);
    let mut w = h
        .block_on(s.create(t, "app_20261121_000001.dump.zst"))
        .unwrap();
    let writing = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for chunk in data.chunks(1024 * 1024) {
                    w.write_all(chunk).unwrap();
                }
                // Still not visible while being written.
                h.block_on(s.list(t)).unwrap()
            })
            .join()
            .unwrap()
    });
    assert!(
        writing.is_empty(),
        "{}: visible before commit: {writing:?}",
        s.name()
    );
    assert!(
        matches!(
            h.block_on(s.get_bytes(t, "app_20261121_000001.dump.zst")),
            Err(StorageError::NotFound { .. })
        ),
        "{}: readable before commit",
        s.name()
    );
    std::thread::scope(|scope| scope.spawn(|| w.commit().unwrap()).join().unwrap());
    let listed = h.block_on(s.list(t)).unwrap();
    assert_eq!(
        names(&listed),
        ["app_20261121_000001.dump.zst"],
        "{}",
        s.name()
    );
    assert_eq!(listed[0].bytes, LARGE as u64, "{}", s.name());
    let back = std::thread::scope(|scope| {
        scope
            .spawn(|| read_all(s, t, "app_20261121_000001.dump.zst", h))
            .join()
            .unwrap()
    });
    assert_eq!(
        hex::encode(Sha256::digest(&back)),
        hex::encode(Sha256::digest(&data)),
        "{}: bytes read back differ",
        s.name()
    );

    // An aborted writer leaves nothing listed, and no leftover after cleanup.
    let mut w = h
        .block_on(s.create(t, "app_20261121_000002.dump.zst"))
        .unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                w.write_all(&pattern(1000)).unwrap();
                w.abort();
            })
            .join()
            .unwrap()
    });
    h.block_on(s.remove_temp_files(t)).unwrap();
    assert_eq!(
        names(&h.block_on(s.list(t)).unwrap()),
        ["app_20261121_000001.dump.zst"],
        "{}: an aborted write left something",
        s.name()
    );

    // Nothing ever replaces a stored object: neither a second archive under the same name
    // nor a manifest written again with other bytes.
    let mut again = h
        .block_on(s.create(t, "app_20261121_000001.dump.zst"))
        .unwrap();
    let replaced = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                again.write_all(b"other bytes").unwrap();
                again.commit()
            })
            .join()
            .unwrap()
    });
    assert!(
        matches!(replaced, Err(StorageError::Exists { .. })),
        "{}: an archive was replaced: {replaced:?}",
        s.name()
    );
    assert_eq!(
        std::thread::scope(|scope| {
            scope
                .spawn(|| read_all(s, t, "app_20261121_000001.dump.zst", h))
                .join()
                .unwrap()
        })
        .len(),
        LARGE,
        "{}: the stored archive changed",
        s.name()
    );

    // Small objects round-trip whole.
    h.block_on(s.put_bytes(
        t,
        "app_20261121_000001.dump.zst.manifest.json",
        b"{}".to_vec(),
    ))
    .unwrap();
    assert_eq!(
        h.block_on(s.get_bytes(t, "app_20261121_000001.dump.zst.manifest.json"))
            .unwrap(),
        b"{}"
    );
    assert!(
        matches!(
            h.block_on(s.put_bytes(
                t,
                "app_20261121_000001.dump.zst.manifest.json",
                b"{\"forged\": true}".to_vec()
            )),
            Err(StorageError::Exists { .. })
        ),
        "{}: a manifest was replaced",
        s.name()
    );
    assert_eq!(
        h.block_on(s.get_bytes(t, "app_20261121_000001.dump.zst.manifest.json"))
            .unwrap(),
        b"{}"
    );

    // Missing objects are NotFound for reads; deleting one is not an error.
    for missing in ["nope.dump.zst", "app_20991231_235959.dump.zst"] {
        assert!(
            matches!(
                h.block_on(s.get_bytes(t, missing)),
                Err(StorageError::NotFound { .. })
            ),
            "{}: get_bytes of a missing object",
            s.name()
        );
        assert!(
            matches!(
                h.block_on(s.open(t, missing)),
                Err(StorageError::NotFound { .. })
            ),
            "{}: open of a missing object",
            s.name()
        );
        h.block_on(s.delete(t, missing))
            .unwrap_or_else(|e| panic!("{}: delete of a missing object: {e}", s.name()));
    }

    // Targets are separate folders, even when one name starts like another.
    h.block_on(s.put_bytes("ap", "ap_20261121_000001.dump", b"x".to_vec()))
        .unwrap();
    h.block_on(s.put_bytes("app2", "app2_20261121_000001.dump", b"y".to_vec()))
        .unwrap();
    assert_eq!(
        names(&h.block_on(s.list(t)).unwrap()),
        [
            "app_20261121_000001.dump.zst",
            "app_20261121_000001.dump.zst.manifest.json"
        ],
        "{}: another target's objects listed",
        s.name()
    );

    // Delete removes exactly the object named.
    h.block_on(s.delete(t, "app_20261121_000001.dump.zst.manifest.json"))
        .unwrap();
    assert_eq!(
        names(&h.block_on(s.list(t)).unwrap()),
        ["app_20261121_000001.dump.zst"],
        "{}",
        s.name()
    );
    assert!(matches!(
        h.block_on(s.get_bytes(t, "app_20261121_000001.dump.zst.manifest.json")),
        Err(StorageError::NotFound { .. })
    ));

    // Listing pages past 1,000 objects (S3 returns at most 1,000 per page).
    let many = "paged";
    let files: Vec<String> = (0..1050).map(|i| format!("paged_{i:05}.bin")).collect();
    h.block_on(
        futures_util::stream::iter(files.iter().map(|f| s.put_bytes(many, f, vec![1])))
            .buffer_unordered(16)
            .for_each(|r| async {
                r.unwrap();
            }),
    );
    let listed = h.block_on(s.list(many)).unwrap();
    assert_eq!(listed.len(), 1050, "{}: listing lost objects", s.name());
    assert_eq!(names(&listed), files, "{}", s.name());

    // Cleaning leftovers of a clean folder removes nothing that is committed.
    assert!(
        h.block_on(s.remove_temp_files(t)).unwrap().is_empty(),
        "{}",
        s.name()
    );
    assert_eq!(h.block_on(s.list(t)).unwrap().len(), 1, "{}", s.name());
}

/// A version pin: the version an open names opens again; once the object is replaced
/// behind the storage's back (`replace`), a pinned open is refused as changed, and an
/// open without a pin reads the new bytes. A storage that names no version pins nothing.
fn pins(s: &dyn Storage, rt: &tokio::runtime::Runtime, replace: &dyn Fn(&str, &str, &[u8])) {
    let h = rt.handle();
    let (t, f) = ("app", "pinned_20261121_000001.dump.zst");
    h.block_on(s.put_bytes(t, f, b"first".to_vec())).unwrap();
    let read = |pin: Option<&str>| {
        let mut opened = h.block_on(s.open_version(t, f, pin))?;
        let mut out = Vec::new();
        opened.reader.read_to_end(&mut out).unwrap();
        Ok::<_, StorageError>((out, opened.version))
    };
    let (bytes, version) = read(None).unwrap();
    assert_eq!(bytes, b"first", "{}", s.name());
    let Some(version) = version else {
        assert_eq!(s.name(), "memory", "only the test storage names no version");
        return;
    };
    assert_eq!(read(Some(&version)).unwrap().0, b"first", "{}", s.name());
    replace(t, f, b"other");
    match read(Some(&version)) {
        Err(StorageError::Changed { file, .. }) => assert_eq!(file, f),
        Err(e) => panic!("{}: a replaced object: {e}", s.name()),
        Ok((bytes, _)) => panic!(
            "{}: a replaced object opened under the old pin: {:?}",
            s.name(),
            String::from_utf8_lossy(&bytes)
        ),
    }
    assert_eq!(read(None).unwrap().0, b"other", "{}", s.name());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn local_storage_keeps_the_contract() {
    let sb = Sandbox::new();
    let s = LocalStorage::new(sb.backups());
    let rt = runtime();
    contract(&s, &rt);
    // Another file renamed over the object.
    pins(&s, &rt, &|t, f, bytes| {
        let path = sb.backups().join(t).join(f);
        let aside = path.with_extension("aside");
        std::fs::write(&aside, bytes).unwrap();
        std::fs::rename(&aside, &path).unwrap();
    });
}

#[test]
fn memory_storage_keeps_the_contract() {
    let s = MemoryStorage::new("memory");
    let rt = runtime();
    contract(&s, &rt);
    pins(&s, &rt, &|_, _, _| {
        unreachable!("memory storage names no version")
    });
}

#[test]
fn s3_storage_keeps_the_contract() {
    let s3 = TestS3::start("contract");
    let sb = Sandbox::new();
    let toml = format!(
        "[storage.local]\npath = \"{}\"\n{}[targets.x]\nkind = \"sqlite\"\npath = \"/x.db\"\n",
        sb.backups().display(),
        s3.config_section("contract", "prod", "part_size = \"5MiB\"")
    );
    let cfg = dbkeep::config::load_from(Some(&toml), HashMap::new()).unwrap();
    let rt = runtime();
    let storage = rt.block_on(S3Storage::new(
        cfg.storage.s3.clone().unwrap(),
        sb.path().to_path_buf(),
    ));
    contract(&storage, &rt);
    // s3s-fs ignores If-Match on GET: the ETag of what it sends is what refuses it.
    pins(&storage, &rt, &|t, f, bytes| {
        s3.put("contract", &format!("prod/{t}/{f}"), bytes)
    });
    assert!(
        s3.open_uploads().is_empty(),
        "multipart uploads left open: {:?}",
        s3.open_uploads()
    );
}

/// The same contract against a second, independent S3 implementation (moto).
#[test]
fn s3_storage_keeps_the_contract_on_moto_too() {
    let moto = crate::common::moto::TestMoto::start("contract");
    let sb = Sandbox::new();
    let toml = format!(
        "[storage.local]\npath = \"{}\"\n{}[targets.x]\nkind = \"sqlite\"\npath = \"/x.db\"\n",
        sb.backups().display(),
        moto.config_section("contract", "prod", "part_size = \"5MiB\"")
    );
    let cfg = dbkeep::config::load_from(Some(&toml), HashMap::new()).unwrap();
    let rt = runtime();
    let storage = rt.block_on(S3Storage::new(
        cfg.storage.s3.clone().unwrap(),
        sb.path().to_path_buf(),
    ));
    contract(&storage, &rt);
    // moto answers a GET whose If-Match no longer holds with 412.
    pins(&storage, &rt, &|t, f, bytes| {
        moto.put("contract", &format!("prod/{t}/{f}"), bytes)
    });
    // A bucket that keeps versions (Object Lock) gives back the pinned version itself.
    moto.bucket("versioned", true);
    let versioned = dbkeep::config::load_from(
        Some(&toml.replace("\"contract\"", "\"versioned\"")),
        HashMap::new(),
    )
    .unwrap();
    let kept = rt.block_on(S3Storage::new(
        versioned.storage.s3.clone().unwrap(),
        sb.path().to_path_buf(),
    ));
    let (t, f) = ("app", "kept_20261121_000001.dump.zst");
    rt.block_on(kept.put_bytes(t, f, b"first".to_vec()))
        .unwrap();
    let version = rt
        .block_on(kept.open_version(t, f, None))
        .unwrap()
        .version
        .expect("an ETag and a version id");
    moto.put("versioned", &format!("prod/{t}/{f}"), b"other");
    let mut pinned = rt
        .block_on(kept.open_version(t, f, Some(&version)))
        .unwrap();
    let mut got = Vec::new();
    pinned.reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"first", "the pinned version");
    assert_eq!(read_all(&kept, t, f, rt.handle()), b"other");
    // moto lists multipart uploads: none is left open by the writes above.
    assert_eq!(
        rt.block_on(storage.open_multipart_uploads()).unwrap(),
        Vec::<String>::new()
    );
}
