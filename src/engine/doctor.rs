//! What `dbkeep doctor` finds about one thing (a target's database, a storage): for each
//! feature, whether it can work with the rights and tools at hand, and what to do if not.

use serde::Serialize;

/// How far a feature can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It works.
    Ok,
    /// It works, with less than it could (roles without passwords, little free space).
    Limited,
    /// It is configured and cannot work.
    Cannot,
}

/// One feature checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub feature: String,
    pub verdict: Verdict,
    /// What was found, and for anything but `ok`, what to grant or change.
    pub detail: String,
}

impl Check {
    pub fn new(feature: &str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            feature: feature.to_string(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// Which features of a target are turned on, so only those are checked.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    pub globals: bool,
    pub drills: bool,
    pub schema: bool,
}
