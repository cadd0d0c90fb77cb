//! What kind of failure an error is: every module's error enum says its [`ErrorKind`] and
//! a hint for the operator, and keeps its cause as `#[source]`. The CLI's exit code and
//! the HTTP status are derived from the kind, each in one place.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad arguments or config: the command or the file must change.
    Usage,
    /// dbkeep will not go on without the operator's decision (a confirmation, a
    /// non-empty destination, a run already going).
    Refused,
    /// The named target, backup, schema or object does not exist.
    NotFound,
    /// The live schema differs from the declared one.
    Drift,
    /// What is stored conflicts with what was asked (an applied migration's file changed):
    /// nothing was done, and it is not the command that is wrong.
    Conflict,
    /// A disk or filesystem is full (ENOSPC, EDQUOT, EFBIG).
    NoSpace,
    /// Credentials or permissions were refused (a password, S3 keys, a file mode).
    Auth,
    /// A server or endpoint did not answer.
    Unreachable,
    /// Stored bytes do not match their manifest.
    Checksum,
    /// Stopped on request (a signal, a shutdown, a timeout).
    Cancelled,
    /// Anything else that went wrong while working.
    Failed,
}

impl ErrorKind {
    /// The process exit code of a command that ended with this kind of error:
    /// 2 for usage and refusals, 3 for drift, 1 for everything else.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage | ErrorKind::Refused => 2,
            ErrorKind::Drift => 3,
            _ => 1,
        }
    }
}

/// Implemented by every error enum of the crate.
pub trait Classify: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// What the operator can do about it, when the message does not say it already.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// The kind of an I/O error: a full disk and a permission problem are told apart from
/// other failures.
pub fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ErrorKind::NoSpace,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => ErrorKind::Auth,
        _ => match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Auth,
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::TimedOut => ErrorKind::Unreachable,
            _ => ErrorKind::Failed,
        },
    }
}

/// Text from a database or a file made safe for one line of a terminal: control
/// characters (a newline in a table or schema name) are shown escaped (`\n`), so a name
/// cannot forge the lines after it.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Every message of an error's source chain, outermost first, without repeats (an
/// outer message that already quotes its source is not followed by it again).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = tidy(&s.to_string());
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// A source's message without what sqlx wraps around a database's own words: the
/// "error returned from database: " prefix and the " at line N" of the server's C source,
/// which reads like a line of the operator's config.
fn tidy(msg: &str) -> String {
    let msg = msg
        .strip_prefix("error returned from database: ")
        .unwrap_or(msg);
    match msg.rsplit_once(" at line ") {
        Some((head, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
            head.to_string()
        }
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_kind(&full), ErrorKind::NoSpace);
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_kind(&denied), ErrorKind::Auth);
        let other = std::io::Error::other("boom");
        assert_eq!(io_kind(&other), ErrorKind::Failed);
        assert_eq!(ErrorKind::Refused.exit_code(), 2);
        assert_eq!(ErrorKind::Drift.exit_code(), 3);
        assert_eq!(ErrorKind::NoSpace.exit_code(), 1);
    }

    #[test]
    fn chains_skip_repeated_messages() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Quoting(#[source] std::io::Error);
        let e = Quoting(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
