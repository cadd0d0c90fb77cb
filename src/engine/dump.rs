//! What a dump is made of: the archives a run produces ([`Part`]), what the engine found
//! out before dumping ([`Prepared`]), and a dump in progress ([`Dump`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::pin::Pin;

use super::EngineError;
use crate::catalog::{Content, Contents, TableInfo, ToolVersions};
use crate::process::Stopper;

/// One archive a run will produce.
#[derive(Debug, Clone)]
pub struct Part {
    pub schema: Option<String>,
    /// The database of a server target's archive (`databases = [...]`).
    pub database: Option<String>,
    pub contents: Contents,
    /// Format word of the file name: `dump`, `sql`, `sqlite`.
    pub format: &'static str,
    /// The bytes a complete stream of this format starts with.
    pub magic: &'static [u8],
    /// What an operator should know about this archive; recorded in its manifest.
    pub note: Option<String>,
}

impl Part {
    /// The qualifier in the file name (`.<schema>`, `.<database>`, `.globals`).
    pub fn qualifier(&self) -> Option<&str> {
        match self.contents {
            Contents::Database => self.database.as_deref(),
            Contents::Schema => self.schema.as_deref(),
            Contents::Globals => Some("globals"),
        }
    }
}

/// The schema fingerprint of the whole database, and of each schema.
pub type Fingerprints = (String, BTreeMap<String, String>);

/// What an engine found out before dumping: the archives to make, the tool versions, and
/// the consistent view every archive of the run is dumped from.
pub struct Prepared {
    pub parts: Vec<Part>,
    pub tools: ToolVersions,
    /// The folder of the client binaries chosen for this server (PostgreSQL).
    pub tool_dir: Option<PathBuf>,
    /// Every user table with its row estimate (for the manifest, and later drills).
    pub tables: Vec<TableInfo>,
    /// The snapshot every archive of the run is dumped from (PostgreSQL's exported
    /// snapshot id), recorded in the manifests.
    pub snapshot: Option<String>,
    /// The schema as the snapshot sees it; `None` when it could not be read (logged).
    pub fingerprints: Option<Fingerprints>,
    /// Keeps the snapshot alive (its transaction's connection) until the run is done.
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Tables left out of the dump, and tables dumped without rows, as `schema.table`,
    /// resolved from the configured patterns in the run's snapshot (PostgreSQL).
    pub excluded: Vec<(String, String)>,
    pub data_excluded: Vec<(String, String)>,
    /// Roughly how many bytes the run dumps (the database's size), for progress.
    pub size_estimate: Option<u64>,
    /// A server target's databases, each prepared in its own snapshot (its tables,
    /// fingerprints and filters, and the connection holding the snapshot).
    pub databases: BTreeMap<String, Prepared>,
    /// A server target's databases that could not be prepared, with why: they fail on
    /// their own, the others are backed up.
    pub failed: Vec<(String, String)>,
    /// Whether `open` counts and hashes the rows (the target's `fingerprint`).
    pub fingerprint: bool,
}

impl Prepared {
    /// What `part` was prepared from: its database's own view on a server target, else
    /// the run's.
    pub fn view(&self, part: &Part) -> &Prepared {
        part.database
            .as_ref()
            .and_then(|d| self.databases.get(d))
            .unwrap_or(self)
    }

    /// The tables one part holds.
    pub fn tables_of(&self, part: &Part) -> Vec<TableInfo> {
        // A server target's database part: the tables its own database's view read.
        let view = self.view(part);
        match part.contents {
            Contents::Database => view.tables.clone(),
            Contents::Schema => view
                .tables
                .iter()
                .filter(|t| t.schema.as_deref() == part.schema.as_deref())
                .cloned()
                .collect(),
            Contents::Globals => Vec::new(),
        }
    }
}

pub type DoneFuture = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send>>;

/// A dump in progress: a blocking reader of the raw bytes and a future that resolves
/// once the producer has exited (with its exit status checked).
pub struct Dump {
    pub reader: Box<dyn Read + Send>,
    pub done: DoneFuture,
    /// Stops the producer when the reading side fails.
    pub stopper: Option<Stopper>,
    /// The archive's content fingerprint, once `reader` was read to its end.
    pub content: PendingContent,
    /// The tables and their rows as the snapshot itself holds them, when the engine read
    /// them there (SQLite); otherwise the manifest lists those `prepare` found.
    pub tables: Option<Vec<TableInfo>>,
}

/// A dump's content fingerprint: known before the stream (a SQLite snapshot), read from
/// it on another thread (a PostgreSQL dump), or none (globals).
pub enum PendingContent {
    Ready(Option<Content>),
    /// Blocks until the content is known; call it off the async runtime.
    Later(Box<dyn FnOnce() -> Option<Content> + Send>),
}

impl PendingContent {
    /// Wait for it (blocking: the work ends with the stream).
    pub fn wait(self) -> Option<Content> {
        match self {
            PendingContent::Ready(c) => c,
            PendingContent::Later(f) => f(),
        }
    }
}

/// `*` and `?` glob match, the way operators write schema patterns (`tenant_*`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("tenant_*", "tenant_42", true),
            ("tenant_*", "tenant_", true),
            ("tenant_*", "tenants", false),
            ("shared", "shared", true),
            ("shared", "shared2", false),
            ("t?", "t1", true),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }
}
