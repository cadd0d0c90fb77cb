//! Backup names, ids and manifests; listing the complete backups of a target.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Compression;
use crate::storage::{Storage, StorageError};

pub const MANIFEST_SUFFIX: &str = ".manifest.json";
pub const MANIFEST_VERSION: u32 = 1;
const ID_FORMAT: &str = "%Y%m%d_%H%M%S";
/// An archive without a manifest younger than this may belong to a run that is just
/// about to write its manifest; older ones are leftovers of an interrupted run.
pub const ORPHAN_MIN_AGE_SECS: i64 = 600;
/// The `Listing::broken` reason of a manifest whose archive is gone.
pub const ARCHIVE_MISSING: &str = "its archive is missing";

/// A backup id: the UTC start second of the run, `YYYYMMDD_HHMMSS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(NaiveDateTime);

impl BackupId {
    pub fn from_time(t: DateTime<Utc>) -> Self {
        let secs = t.timestamp();
        BackupId(
            DateTime::<Utc>::from_timestamp(secs, 0)
                .unwrap_or(t)
                .naive_utc(),
        )
    }
    pub fn time(&self) -> DateTime<Utc> {
        self.0.and_utc()
    }
    /// The next id after `self` (one second later).
    pub fn succ(&self) -> Self {
        BackupId(self.0 + chrono::Duration::seconds(1))
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format(ID_FORMAT))
    }
}

impl FromStr for BackupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 15 {
            return Err(format!(
                "{s:?} is not a backup id: write YYYYMMDD_HHMMSS as shown by `dbkeep list`"
            ));
        }
        NaiveDateTime::parse_from_str(s, ID_FORMAT)
            .map(BackupId)
            .map_err(|_| {
                format!("{s:?} is not a backup id: write YYYYMMDD_HHMMSS as shown by `dbkeep list`")
            })
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What one archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Contents {
    /// A whole PostgreSQL database or SQLite file.
    Database,
    /// One PostgreSQL schema.
    Schema,
    /// Cluster-wide roles and tablespaces (`pg_dumpall --globals-only`).
    Globals,
}

/// The file name of an archive:
/// `<target>_<YYYYMMDD>_<HHMMSS>[.<schema>].<format>[.<codec>]`.
pub fn archive_name(
    target: &str,
    id: BackupId,
    qualifier: Option<&str>,
    format: &str,
    codec: Compression,
) -> String {
    let mut name = format!("{target}_{id}");
    if let Some(q) = qualifier {
        name.push('.');
        name.push_str(&short_name(q));
    }
    name.push('.');
    name.push_str(format);
    let ext = codec.extension();
    if !ext.is_empty() {
        name.push('.');
        name.push_str(ext);
    }
    name
}

/// A schema name as a piece of a file name or object key: ASCII letters, digits, `_` and
/// `-` stay, every other byte becomes `%XX` (so `.`, `/`, quotes, newlines and unicode
/// can neither break the name nor leave the folder). Reversed by [`decode_name`].
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The longest encoded qualifier kept whole in a file name: a 63-byte schema or database
/// name of non-ASCII characters encodes to ~190 bytes, and with the target, id, format and
/// the temporary-file suffix would pass the 255 bytes a file name may have.
const MAX_QUALIFIER: usize = 96;

/// [`encode_name`], or for a name that encodes too long, its encoded start and `~` with
/// the first 16 hex digits of its sha256 (the manifest keeps the real name).
pub fn short_name(name: &str) -> String {
    use sha2::Digest;
    let full = encode_name(name);
    if full.len() <= MAX_QUALIFIER {
        return full;
    }
    let mut cut = MAX_QUALIFIER - 17;
    // Never inside a `%XX`.
    while cut > 0 && full[..cut].rfind('%').is_some_and(|i| i + 3 > cut) {
        cut -= 1;
    }
    let hash = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("{}~{}", &full[..cut], &hash[..16])
}

/// The name [`encode_name`] encoded; `None` for text it cannot have produced.
pub fn decode_name(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What an encrypted archive's name ends in (after the codec's): it is an age file.
pub const ENCRYPTED_SUFFIX: &str = ".age";

pub fn manifest_name(archive: &str) -> String {
    format!("{archive}{MANIFEST_SUFFIX}")
}

/// The id encoded in a file name of `target`'s folder, if it is one of ours.
pub fn id_of_file(target: &str, file: &str) -> Option<BackupId> {
    let rest = file.strip_prefix(target)?.strip_prefix('_')?;
    rest.get(..15)?
        .parse()
        .ok()
        .filter(|_| rest[15..].starts_with('.'))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolVersions {
    pub dbkeep: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dump_tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server: Option<String>,
}

/// A table in an archive, with the rows the server estimated at backup time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableInfo {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema: Option<String>,
    pub name: String,
    /// Row count (SQLite, exact) or estimate (PostgreSQL); `None` when unknown.
    pub rows: Option<i64>,
}

/// What an archive holds, row by row: per table the exact row count and an
/// order-independent hash of its rows, taken from the dump stream itself (PostgreSQL: the
/// COPY text of `pg_dump`; SQLite: the snapshot's values). A drill recomputes it on the
/// restored database and compares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Content {
    /// How rows were hashed; a drill only compares content taken the same way.
    pub method: String,
    /// The client encoding the rows were written in (PostgreSQL), which the drill's dump
    /// uses too.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub encoding: Option<String>,
    pub tables: Vec<TableContent>,
    /// Large objects: how many, and the sum of the hashes of (oid, bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub large_objects: Option<Tally>,
    /// Sequence values (`setval` arguments: `42, true`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sequences: Vec<SequenceValue>,
}

/// A count and an order-independent hash (the sum of 64-bit item hashes, hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Tally {
    pub count: u64,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableContent {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema: Option<String>,
    pub name: String,
    pub rows: u64,
    pub hash: String,
}

impl TableContent {
    /// `schema.name`, or the name alone (SQLite).
    pub fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SequenceValue {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema: Option<String>,
    pub name: String,
    pub value: String,
}

impl Content {
    /// Rows of every table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Where `restored` differs from this (the backup's) content, one line per table,
    /// sequence or the large objects; empty when every row came back.
    pub fn differences(&self, restored: &Content) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            let got = restored
                .tables
                .iter()
                .find(|r| r.schema == t.schema && r.name == t.name);
            match got {
                None if t.rows > 0 => out.push(format!(
                    "table {}: missing after restore (the backup has {} rows)",
                    t.qualified(),
                    t.rows
                )),
                None => {}
                Some(r) if r.rows != t.rows => out.push(format!(
                    "table {}: {} rows after restore, the backup has {}",
                    t.qualified(),
                    r.rows,
                    t.rows
                )),
                Some(r) if r.hash != t.hash => out.push(format!(
                    "table {}: the {} rows differ from the backup's (content hash {} after restore, {} in the backup)",
                    t.qualified(),
                    t.rows,
                    r.hash,
                    t.hash
                )),
                Some(_) => {}
            }
        }
        for r in &restored.tables {
            let known = self
                .tables
                .iter()
                .any(|t| t.schema == r.schema && t.name == r.name);
            if !known && r.rows > 0 {
                out.push(format!(
                    "table {}: {} rows after restore that the backup does not list",
                    r.qualified(),
                    r.rows
                ));
            }
        }
        let none = Tally::default();
        let want = self.large_objects.as_ref().unwrap_or(&none);
        let got = restored.large_objects.as_ref().unwrap_or(&none);
        if want.count != got.count {
            out.push(format!(
                "large objects: {} after restore, the backup has {}",
                got.count, want.count
            ));
        } else if want.count > 0 && want.hash != got.hash {
            out.push(format!(
                "large objects: the {} large objects differ from the backup's",
                want.count
            ));
        }
        for s in &self.sequences {
            let got = restored
                .sequences
                .iter()
                .find(|r| r.schema == s.schema && r.name == s.name);
            let name = match &s.schema {
                Some(sc) => format!("{sc}.{}", s.name),
                None => s.name.clone(),
            };
            match got {
                None => out.push(format!("sequence {name}: missing after restore")),
                Some(g) if g.value != s.value => out.push(format!(
                    "sequence {name}: ({}) after restore, the backup has ({})",
                    g.value, s.value
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// Written beside each archive, last: its presence commits the backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub target: String,
    pub id: BackupId,
    /// `postgres` or `sqlite`.
    pub kind: String,
    pub contents: Contents,
    pub schema: Option<String>,
    /// The database of a server target's archive (`databases = [...]`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub database: Option<String>,
    pub file: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_seconds: f64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub codec: String,
    pub sha256: String,
    pub tools: ToolVersions,
    /// The tables the archive holds, for restore drills.
    #[serde(default)]
    pub tables: Vec<TableInfo>,
    /// When a restore drill proved this archive restores (manifests of older versions;
    /// drills now record it in the state file, since manifests are never rewritten).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verified_at: Option<DateTime<Utc>>,
    /// The archive's key in S3-compatible storage, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub object_key: Option<String>,
    /// Why the backup was taken when it was not the schedule or an operator (e.g. `pre-restore`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The exported snapshot every archive of the run was dumped from (PostgreSQL).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
    /// sha256 of the normalized catalog (tables, columns, indexes, constraints) of what the
    /// archive holds, read in the run's snapshot; `schema diff` and drift logs compare it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema_fingerprint: Option<String>,
    /// What an operator should know about this archive (e.g. role passwords left out).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
    /// What started the run: `scheduled` or `manual` (older manifests: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trigger: Option<String>,
    /// `schema.table` patterns left out of the archive (`exclude_tables`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub excluded_tables: Vec<String>,
    /// `schema.table` patterns whose rows were left out (`exclude_table_data`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub excluded_table_data: Vec<String>,
    /// How many archives the run committed: a run found with its commit marker still
    /// there is whole when this many of its manifests check out.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run_archives: Option<u32>,
    /// The age recipients (public keys) the archive is encrypted to; empty: stored as
    /// compressed. `sha256` and `stored_bytes` are of the encrypted bytes.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub encrypted_to: Vec<String>,
    /// Every table's exact rows and content hash, taken while the archive streamed
    /// (see [`Content`]); none for globals and for manifests older than that.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<Content>,
    /// Why this backup looks wrong next to the previous complete one (a table emptied,
    /// most rows or bytes gone): retention does not count it, and `dbkeep accept` clears
    /// the mark when the drop was intended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub suspect: Option<String>,
    /// The signature of every other field (see [`signed_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signature: Option<Signature>,
}

/// A manifest's signature: over the manifest as serialized without it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signature {
    /// `ed25519`.
    pub alg: String,
    /// The verify key that checks it (`dbkeep-verify-...`).
    pub key: String,
    /// Hex of the signature.
    pub sig: String,
}

/// The bytes a manifest's signature covers: the manifest as this version of dbkeep reads
/// it, serialized without its signature. What is checked is exactly what is used: a
/// field this version does not know is not kept, and fails the check.
pub fn signed_bytes(m: &Manifest) -> Vec<u8> {
    let mut unsigned = m.clone();
    unsigned.signature = None;
    serde_json::to_vec(&unsigned).unwrap_or_default()
}

/// Sign `m` with `key`.
pub fn sign(m: &mut Manifest, key: &crate::crypt::SigningKey) {
    let sig = key.sign(&signed_bytes(m));
    m.signature = Some(Signature {
        alg: crate::crypt::SIGNATURE_ALG.to_string(),
        key: key.verifying().text(),
        sig,
    });
}

/// Whether `m` carries a good signature by `key`; the error says what is wrong.
pub fn check_signature(m: &Manifest, key: &crate::crypt::VerifyingKey) -> Result<(), String> {
    let Some(s) = &m.signature else {
        return Err(format!(
            "manifest is not signed, and manifests must be signed by {} (`verify_key` / `signing_key_file`): not trusted",
            key.text()
        ));
    };
    if s.alg != crate::crypt::SIGNATURE_ALG || s.key != key.text() {
        return Err(format!(
            "manifest is signed by {} ({}), not by the configured key {}: not trusted",
            s.key.chars().take(90).collect::<String>(),
            s.alg.chars().take(20).collect::<String>(),
            key.text()
        ));
    }
    if !key.verify(&signed_bytes(m), &s.sig) {
        return Err(
            "manifest signature does not match its contents (altered, forged, or written by a newer dbkeep): not trusted"
                .into(),
        );
    }
    Ok(())
}

/// A complete backup archive: its manifest exists and its archive is present.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub id: BackupId,
    pub target: String,
    pub schema: Option<String>,
    /// The database of a server target's archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub contents: Contents,
    pub storage: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub created: DateTime<Utc>,
    /// Why it was taken: `scheduled`, `manual`, or the operation it came before
    /// (`pre-restore`, `pre-migrate`, `pre-sync`); none for manifests older than that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a restore drill last proved it restores (kept outside the manifest, which is
    /// never rewritten).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
    /// Why the run is pinned (never deleted by retention), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// Why the run looks wrong next to the last good one (its manifest's mark), unless an
    /// operator accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// When an operator accepted the run's suspect mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Accept>,
    /// A server target's database that the newest run no longer backs up (dropped, or
    /// excluded since): its backups are kept under retention. Set by listings that
    /// look at every run of the target.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub database_gone: bool,
    #[serde(skip)]
    pub manifest: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl crate::error::Classify for CatalogError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            CatalogError::Storage(e) => e.kind(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            CatalogError::Storage(e) => e.hint(),
        }
    }
}

/// What a storage holds for one target, judged by object names alone.
#[derive(Debug, Default)]
pub struct Scan {
    /// (id, archive file, archive bytes) of archives whose manifest exists.
    pub complete: Vec<(BackupId, String, u64)>,
    /// Pin files, by the id of the run they pin.
    pub pins: Vec<(BackupId, String)>,
    /// Accept files, by the id of the suspect run they clear.
    pub accepts: Vec<(BackupId, String)>,
    /// Probe objects `dbkeep doctor` wrote and, interrupted, did not remove (old enough
    /// that no doctor run still owns them).
    pub probes: Vec<String>,
    /// Archives with no manifest, old enough to be leftovers of an interrupted run.
    pub orphans: Vec<String>,
    /// Manifests whose archive is gone.
    pub dangling_manifests: Vec<String>,
    /// Commit markers, by run id: that run is going on (or died before it finished), so
    /// none of its archives counts.
    pub committing: Vec<(BackupId, String)>,
}

/// Classify `target`'s objects by name: cheap (one listing, no reads). Retention needs no
/// more: a backup is complete when its manifest exists.
pub async fn scan(
    storage: &dyn Storage,
    target: &str,
    now: DateTime<Utc>,
) -> Result<Scan, CatalogError> {
    let objects = storage.list(target).await?;
    let by_name: HashMap<&str, &crate::storage::ObjectInfo> =
        objects.iter().map(|o| (o.file.as_str(), o)).collect();
    let mut scan = Scan::default();
    for o in &objects {
        if let Some(id) = pin_id(&o.file) {
            scan.pins.push((id, o.file.clone()));
            continue;
        }
        if let Some(id) = accept_id(&o.file) {
            scan.accepts.push((id, o.file.clone()));
            continue;
        }
        if let Some(id) = commit_id(&o.file) {
            scan.committing.push((id, o.file.clone()));
            continue;
        }
        if o.file.starts_with(crate::storage::PROBE_PREFIX) {
            if (now - o.modified).num_seconds() >= ORPHAN_MIN_AGE_SECS {
                scan.probes.push(o.file.clone());
            }
            continue;
        }
        let Some(id) = id_of_file(target, &o.file) else {
            continue;
        };
        if let Some(archive) = o.file.strip_suffix(MANIFEST_SUFFIX) {
            match by_name.get(archive) {
                Some(a) => scan.complete.push((id, archive.to_string(), a.bytes)),
                None => scan.dangling_manifests.push(o.file.clone()),
            }
        } else if !by_name.contains_key(manifest_name(&o.file).as_str())
            && (now - o.modified).num_seconds() >= ORPHAN_MIN_AGE_SECS
        {
            scan.orphans.push(o.file.clone());
        }
    }
    // A run whose commit is not finished: neither a backup nor a leftover yet.
    let open: Vec<BackupId> = scan.committing.iter().map(|(id, _)| *id).collect();
    let of_open = |file: &str| id_of_file(target, file).is_some_and(|id| open.contains(&id));
    scan.complete.retain(|(id, _, _)| !open.contains(id));
    scan.dangling_manifests.retain(|m| !of_open(m));
    scan.orphans.retain(|m| !of_open(m));
    scan.complete
        .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(scan)
}

/// Complete backups with their manifests read and checked against the archives.
#[derive(Debug, Default)]
pub struct Listing {
    /// Complete backups, newest first (archives of one run in file-name order).
    pub complete: Vec<Backup>,
    /// Manifests that cannot be trusted, with why.
    pub broken: Vec<(String, String)>,
}

/// How many manifests are fetched at once.
const MANIFEST_FETCHES: usize = 16;

/// Check a manifest read for `archive` (of `bytes` bytes): it must parse, name this
/// target and archive, carry the id of the archive's name, and match its size.
fn validate(
    storage: &dyn Storage,
    target: &str,
    archive: &str,
    bytes: u64,
    raw: &[u8],
    verify: Option<&crate::crypt::VerifyingKey>,
) -> Result<Backup, String> {
    let manifest = check_manifest(target, archive, bytes, raw, verify)?;
    Ok(Backup {
        id: manifest.id,
        target: target.to_string(),
        schema: manifest.schema.clone(),
        database: manifest.database.clone(),
        contents: manifest.contents,
        storage: storage.name().to_string(),
        file: archive.to_string(),
        bytes,
        sha256: manifest.sha256.clone(),
        created: manifest.finished,
        reason: manifest.reason.clone().or_else(|| manifest.trigger.clone()),
        verified_at: manifest.verified_at,
        pinned: None,
        suspect: manifest.suspect.clone(),
        accepted: None,
        database_gone: false,
        manifest,
    })
}

/// Parse the manifest of `archive` (of `bytes` bytes) and check that it names this target
/// and archive, carries the id of the archive's name, and matches its size; with a verify
/// key, that it is signed by it. Any bytes give an answer, never a panic (the parser is
/// fuzzed).
pub fn check_manifest(
    target: &str,
    archive: &str,
    bytes: u64,
    raw: &[u8],
    verify: Option<&crate::crypt::VerifyingKey>,
) -> Result<Manifest, String> {
    let manifest =
        serde_json::from_slice::<Manifest>(raw).map_err(|e| format!("unreadable manifest: {e}"))?;
    if manifest.target != target || manifest.file != archive {
        return Err("manifest names another archive".into());
    }
    if id_of_file(target, archive) != Some(manifest.id) {
        return Err(format!(
            "manifest id {} differs from the archive name's",
            manifest.id
        ));
    }
    if manifest.stored_bytes != bytes {
        return Err(format!(
            "archive has {bytes} bytes, manifest says {}",
            manifest.stored_bytes
        ));
    }
    if let Some(key) = verify {
        check_signature(&manifest, key)?;
    }
    Ok(manifest)
}

/// Read and check the manifest of one archive; `Ok(None)` when it vanished meanwhile (a
/// concurrent cleanup), `Err` for a storage failure, `Ok(Some(Err(why)))` when broken.
async fn read_one(
    storage: &dyn Storage,
    target: &str,
    archive: &str,
    bytes: u64,
    verify: Option<&crate::crypt::VerifyingKey>,
) -> Result<Option<Result<Backup, String>>, CatalogError> {
    match storage.get_bytes(target, &manifest_name(archive)).await {
        Ok(raw) => Ok(Some(validate(
            storage, target, archive, bytes, &raw, verify,
        ))),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e @ StorageError::TooLarge { .. }) => Ok(Some(Err(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

/// List `target` on `storage`: archives with a manifest that parses and matches them
/// (and, with a verify key, is signed by it). Everything else that looks like a backup is
/// in `broken`, with why: not listed, not counted by retention, not restored.
pub async fn list(
    storage: &dyn Storage,
    target: &str,
    verify: Option<&crate::crypt::VerifyingKey>,
    now: DateTime<Utc>,
) -> Result<Listing, CatalogError> {
    use futures_util::StreamExt;
    let scan = scan(storage, target, now).await?;
    let mut listing = Listing::default();
    for m in scan.dangling_manifests {
        listing.broken.push((m, ARCHIVE_MISSING.into()));
    }
    let fetches = futures_util::stream::iter(scan.complete.into_iter().map(
        |(_, archive, bytes)| async move {
            let got = read_one(storage, target, &archive, bytes, verify).await;
            (archive, got)
        },
    ))
    .buffered(MANIFEST_FETCHES)
    .collect::<Vec<_>>()
    .await;
    for (archive, got) in fetches {
        match got? {
            None => {}
            Some(Ok(b)) => listing.complete.push(b),
            Some(Err(why)) => listing.broken.push((manifest_name(&archive), why)),
        }
    }
    for (id, file) in &scan.pins {
        // A pin that cannot be read (garbage, too large, a link, a folder) still pins:
        // keeping too much is the safe side, and one bad pin stops nothing else.
        let unreadable = |why: String| format!("pin file {file} is unreadable ({why})");
        let reason = match storage.get_bytes(target, file).await {
            Ok(raw) => serde_json::from_slice::<Pin>(&raw)
                .map(|p| p.reason)
                .unwrap_or_else(|e| unreadable(e.to_string())),
            Err(crate::storage::StorageError::NotFound { .. }) => continue,
            Err(e) => unreadable(crate::error::chain(&e)),
        };
        for b in listing.complete.iter_mut().filter(|b| b.id == *id) {
            b.pinned = Some(reason.clone());
        }
    }
    for (id, file) in &scan.accepts {
        // An accept that cannot be read clears nothing: the run stays suspect, which only
        // ever keeps more.
        let Ok(raw) = storage.get_bytes(target, file).await else {
            continue;
        };
        let Ok(accept) = serde_json::from_slice::<Accept>(&raw) else {
            continue;
        };
        if accept.id != *id {
            continue;
        }
        for b in listing.complete.iter_mut().filter(|b| b.id == *id) {
            b.accepted = Some(accept.clone());
        }
    }
    listing
        .complete
        .sort_by(|a, b| b.id.cmp(&a.id).then_with(|| a.file.cmp(&b.file)));
    Ok(listing)
}

/// Pin files start with this; the rest of the name is `<id>.json`. They do not start
/// with the target's name, so nothing takes them for an archive or a leftover.
pub use crate::storage::PIN_PREFIX;

/// A new pin file name for run `id`: `.dbkeep-pin.ID.NONCE.json`. A new reason is a new
/// file written before the old one goes, so the run is never without a pin between.
pub fn pin_name(id: BackupId) -> String {
    format!("{PIN_PREFIX}{id}.{:08x}.json", rand::random::<u32>())
}

/// The commit marker of run `id`: written when the run starts, removed after its last
/// manifest; while it exists no archive of the run is listed as a backup.
pub fn commit_name(id: BackupId) -> String {
    format!("{}{id}.json", crate::storage::COMMIT_PREFIX)
}

/// What a commit marker holds: nothing is read from it, its name is the record.
pub const COMMIT_BODY: &[u8] = b"{}";

/// The run a commit marker belongs to.
pub fn commit_id(file: &str) -> Option<BackupId> {
    file.strip_prefix(crate::storage::COMMIT_PREFIX)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// The run a pin file pins: `.dbkeep-pin.ID.json` or `.dbkeep-pin.ID.ANYTHING.json`.
pub fn pin_id(file: &str) -> Option<BackupId> {
    let rest = file.strip_prefix(PIN_PREFIX)?.strip_suffix(".json")?;
    rest.split('.').next()?.parse().ok()
}

/// A pinned run: retention never deletes it. Stored beside the backup as its own small
/// object, so a manifest is never rewritten (Object Lock buckets keep working) and the
/// pin survives a lost state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pin {
    pub id: BackupId,
    pub reason: String,
    pub pinned_at: DateTime<Utc>,
}

/// Accept files start with this; the rest of the name is `<id>.<nonce>.json`.
pub use crate::storage::ACCEPT_PREFIX;

/// A new accept file name for run `id`.
pub fn accept_name(id: BackupId) -> String {
    format!("{ACCEPT_PREFIX}{id}.{:08x}.json", rand::random::<u32>())
}

/// The run an accept file clears.
pub fn accept_id(file: &str) -> Option<BackupId> {
    let rest = file.strip_prefix(ACCEPT_PREFIX)?.strip_suffix(".json")?;
    rest.split('.').next()?.parse().ok()
}

/// A suspect run an operator said is right (`dbkeep accept`): the drop was intended.
/// Stored beside the backup like a pin, since manifests are never rewritten.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accept {
    pub id: BackupId,
    /// The suspect reason that was accepted.
    pub reason: String,
    pub accepted_at: DateTime<Utc>,
}

/// One database of a server target, as its backups show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatabaseSummary {
    pub name: String,
    /// Its newest complete backup: the run's id and when it finished (none for a database
    /// whose every run so far failed).
    pub newest: Option<BackupId>,
    pub newest_created: Option<DateTime<Utc>>,
    /// Stored bytes of that archive.
    pub bytes: u64,
    /// Runs that hold an archive of it.
    pub backups: usize,
    /// Not in the newest run of the target: dropped from the server (or excluded since).
    /// Its backups stay under retention; it is not a failure.
    pub gone: bool,
    /// Its backup failed in the last run (the others were stored), with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
}

/// Mark the databases whose backup failed in the last run (`failed`, by name): failing,
/// and so not gone though the newest run lacks them. One that never had a backup is
/// added, so it is seen per database too.
pub fn mark_failing(
    dbs: &mut Vec<DatabaseSummary>,
    failed: &std::collections::BTreeMap<String, String>,
) {
    for d in dbs.iter_mut() {
        if let Some(why) = failed.get(&d.name) {
            d.failing = Some(why.clone());
            d.gone = false;
        }
    }
    for (name, why) in failed {
        if !dbs.iter().any(|d| &d.name == name) {
            dbs.push(DatabaseSummary {
                name: name.clone(),
                newest: None,
                newest_created: None,
                bytes: 0,
                backups: 0,
                gone: false,
                failing: Some(why.clone()),
            });
        }
    }
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The databases `backups` (complete backups of one server target, any storages) hold,
/// by name. A database is gone when the newest run that holds any database archive (a
/// restore's safety copy aside) does not hold it and did not fail it (see
/// [`mark_failing`]).
pub fn databases_of(backups: &[Backup]) -> Vec<DatabaseSummary> {
    // Safety copies of a restore hold one database: they say nothing about the others.
    let newest_run = backups
        .iter()
        .filter(|b| b.database.is_some())
        .filter(|b| b.manifest.reason.as_deref() != Some("pre-restore"))
        .map(|b| b.id)
        .max();
    let mut by_name: std::collections::BTreeMap<&str, Vec<&Backup>> = Default::default();
    for b in backups {
        if let Some(db) = &b.database {
            by_name.entry(db).or_default().push(b);
        }
    }
    by_name
        .into_iter()
        .filter_map(|(name, list)| {
            let newest = list.iter().max_by_key(|b| b.id)?;
            let mut runs: Vec<BackupId> = list.iter().map(|b| b.id).collect();
            runs.sort();
            runs.dedup();
            Some(DatabaseSummary {
                name: name.to_string(),
                newest: Some(newest.id),
                newest_created: Some(newest.created),
                bytes: newest.bytes,
                backups: runs.len(),
                gone: !list.iter().any(|b| Some(b.id) == newest_run),
                failing: None,
            })
        })
        .collect()
}

/// The newest complete backup of `target` on `storage`, reading manifests newest first
/// until one checks out (usually one read).
pub async fn newest(
    storage: &dyn Storage,
    target: &str,
    verify: Option<&crate::crypt::VerifyingKey>,
    now: DateTime<Utc>,
) -> Result<Option<Backup>, CatalogError> {
    let scan = scan(storage, target, now).await?;
    for (_, archive, bytes) in scan.complete {
        if let Some(Ok(b)) = read_one(storage, target, &archive, bytes, verify).await? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_qualifiers_are_cut_with_a_hash_and_stay_distinct() {
        let a = "😀".repeat(15);
        let b = format!("{}x", "😀".repeat(14));
        let (sa, sb) = (short_name(&a), short_name(&b));
        assert!(
            sa.len() <= MAX_QUALIFIER && sb.len() <= MAX_QUALIFIER,
            "{sa} {sb}"
        );
        assert_ne!(sa, sb);
        assert!(sa.contains('~'));
        let prefix = sa.split('~').next().unwrap();
        let pieces: Vec<&str> = prefix.split('%').skip(1).collect();
        assert!(
            pieces.iter().all(|p| p.len() >= 2),
            "cut inside a %XX: {prefix}"
        );
        assert_eq!(short_name("tenant_1"), "tenant_1");
        let id: BackupId = "20261121_143022".parse().unwrap();
        let file = archive_name("t", id, Some(&a), "dump", Compression::Zstd { level: 3 });
        assert!(
            file.len() + ".manifest.json.tmp-XXXXXXXXXXXXXXXX".len() < 255,
            "{file}"
        );
    }

    #[test]
    fn names_follow_the_contract() {
        let id: BackupId = "20261121_143022".parse().unwrap();
        let z = Compression::Zstd { level: 3 };
        assert_eq!(
            archive_name("app", id, None, "dump", z),
            "app_20261121_143022.dump.zst"
        );
        assert_eq!(
            archive_name("app", id, Some("tenant_42"), "dump", z),
            "app_20261121_143022.tenant_42.dump.zst"
        );
        assert_eq!(
            archive_name("cache", id, None, "sqlite", Compression::Gzip { level: 6 }),
            "cache_20261121_143022.sqlite.gz"
        );
        assert_eq!(
            archive_name("app", id, None, "dump", Compression::None),
            "app_20261121_143022.dump"
        );
        assert_eq!(id_of_file("app", "app_20261121_143022.dump.zst"), Some(id));
        assert_eq!(id_of_file("app", "app_2_20261121_143022.dump.zst"), None);
        assert_eq!(id_of_file("app", "other_20261121_143022.dump.zst"), None);
        assert_eq!(id_of_file("app", "app_20261121_143022"), None);
        assert!("2026-11-21".parse::<BackupId>().is_err());
    }

    #[test]
    fn odd_schema_names_make_safe_file_names_and_come_back() {
        let id: BackupId = "20261121_143022".parse().unwrap();
        for schema in [
            "tenant_42",
            "../../x",
            "a.b",
            "new\nline",
            "quo\"te",
            "sp ace",
            "ünï名",
            "%41",
        ] {
            let file = archive_name(
                "app",
                id,
                Some(schema),
                "dump",
                Compression::Zstd { level: 3 },
            );
            let q = file
                .strip_prefix("app_20261121_143022.")
                .and_then(|r| r.strip_suffix(".dump.zst"))
                .unwrap();
            assert!(
                q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{file}"
            );
            assert_eq!(decode_name(q).as_deref(), Some(schema));
            assert_eq!(id_of_file("app", &file), Some(id));
        }
        assert_eq!(decode_name("%4"), None);
    }
}
