//! What psql must never be fed from a stored archive: a backslash meta-command. `\!` runs
//! a shell command, `\o |cmd` and `\copy ... program` too, `\i` reads any file: a planted
//! or altered archive would run them as dbkeep's user (its sha256 sits beside it and proves
//! nothing about who wrote it). This guard reads the SQL as psql would — string literals,
//! quoted names, dollar quotes, comments, COPY data — and refuses any meta-command outside
//! them except the `\restrict KEY` / `\unrestrict KEY` pair that pg_dump 15.14+ writes to
//! make psql itself refuse the others.

/// Where in the SQL text the guard is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Normal,
    /// '...' (with `escapes` for E'...': a backslash quotes the next character).
    Single {
        escapes: bool,
        after_backslash: bool,
    },
    Double,
    /// $tag$ ... $tag$; `seen` holds the part of the closing tag matched so far.
    Dollar {
        tag: String,
        seen: usize,
    },
    LineComment,
    BlockComment {
        depth: u32,
        last: u8,
    },
    /// A backslash at the start of a line: the line is collected and checked whole.
    Meta {
        line: Vec<u8>,
    },
    /// Rows of a `COPY ... FROM stdin`, until a line `\.`.
    CopyData {
        line: Vec<u8>,
    },
}

pub struct SqlGuard {
    state: State,
    /// Only white space since the last newline (a meta-command starts a line).
    at_line_start: bool,
    /// The current statement outside literals, upper-cased, bounded: enough to tell a
    /// `COPY ... FROM stdin`.
    stmt: Vec<u8>,
    /// The previous byte in `Normal` (for `E'`, `--`, `/*` and dollar tags).
    prev: u8,
    /// The byte before `prev` (an `E'` string starts only where `E` is a word of its own).
    before_prev: u8,
    /// A dollar tag being read after a `$`.
    tag: Option<Vec<u8>>,
    /// A `COPY ... FROM stdin;` ended on this line: its rows start on the next one (psql
    /// runs the rest of this line as SQL).
    copy_next_line: bool,
}

/// A byte that can be part of an identifier as psql reads it (letters, digits, `_`, `$`
/// after the first, and any byte of a multi-byte character).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

const STMT_KEEP: usize = 512;
const LINE_LIMIT: usize = 4096;

impl Default for SqlGuard {
    fn default() -> Self {
        SqlGuard {
            state: State::Normal,
            at_line_start: true,
            stmt: Vec::new(),
            prev: b'\n',
            before_prev: b'\n',
            tag: None,
            copy_next_line: false,
        }
    }
}

fn allowed_meta(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    let mut words = text.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some("\\restrict" | "\\unrestrict"), Some(key), None)
            if key.bytes().all(|b| b.is_ascii_alphanumeric())
    )
}

/// With `standard_conforming_strings` off, psql reads backslashes in plain strings as
/// escapes, and the guard's reading of quotes would no longer be psql's: only the setting
/// pg_dump itself writes (on) passes.
fn changes_string_rules(stmt: &[u8]) -> Result<(), String> {
    let s = String::from_utf8_lossy(stmt);
    if !s.contains("STANDARD_CONFORMING_STRINGS") {
        return Ok(());
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    if matches!(
        words.as_slice(),
        ["SET", "STANDARD_CONFORMING_STRINGS", "=" | "TO", "ON"]
    ) {
        return Ok(());
    }
    Err(format!(
        "the archive changes standard_conforming_strings ({}); pg_dump never does, refused",
        s.chars().take(80).collect::<String>().trim()
    ))
}

fn is_copy_from_stdin(stmt: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stmt);
    let words: Vec<&str> = s.split_whitespace().collect();
    words.first() == Some(&"COPY")
        && words.len() >= 3
        && words[words.len() - 2] == "FROM"
        && words[words.len() - 1] == "STDIN"
}

impl SqlGuard {
    /// Check the next piece of the stream; an error names the meta-command refused.
    pub fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
        for &b in chunk {
            self.step(b)?;
        }
        Ok(())
    }

    fn push_stmt(&mut self, b: u8) {
        if self.stmt.len() < STMT_KEEP {
            let c = if b.is_ascii_whitespace() {
                b' '
            } else {
                b.to_ascii_uppercase()
            };
            self.stmt.push(c);
        }
    }

    fn step(&mut self, b: u8) -> Result<(), String> {
        if b == 0 {
            // psql drops the rest of a line after a NUL byte: what it runs is not what was
            // checked. No SQL pg_dump writes holds one.
            return Err("the archive holds a NUL byte in its SQL; refused".into());
        }
        match &mut self.state {
            State::Normal => self.normal(b)?,
            State::Single {
                escapes,
                after_backslash,
            } => {
                if *after_backslash {
                    *after_backslash = false;
                } else if *escapes && b == b'\\' {
                    *after_backslash = true;
                } else if b == b'\'' {
                    // A doubled quote reopens at once: same state either way.
                    self.state = State::Normal;
                    self.before_prev = b'x';
                    self.prev = b'\'';
                } else {
                    // Kept (bounded) so a statement's string values can be checked too.
                    let c = b.to_ascii_uppercase();
                    if self.stmt.len() < STMT_KEEP {
                        self.stmt.push(c);
                    }
                }
            }
            State::Double => {
                if b == b'"' {
                    self.state = State::Normal;
                    self.prev = b'"';
                }
            }
            State::Dollar { tag, seen } => {
                let closing = format!("${tag}$");
                let want = closing.as_bytes();
                if b == want[*seen] {
                    *seen += 1;
                    if *seen == want.len() {
                        self.state = State::Normal;
                        self.prev = b'$';
                    }
                } else {
                    *seen = usize::from(b == b'$');
                }
            }
            State::LineComment => {
                if b == b'\n' {
                    self.state = State::Normal;
                    self.at_line_start = true;
                    self.prev = b'\n';
                }
            }
            State::BlockComment { depth, last } => {
                if *last == b'*' && b == b'/' {
                    *depth -= 1;
                    *last = 0;
                    if *depth == 0 {
                        self.state = State::Normal;
                        self.prev = b' ';
                    }
                } else if *last == b'/' && b == b'*' {
                    *depth += 1;
                    *last = 0;
                } else {
                    *last = b;
                }
            }
            State::Meta { line } => {
                if b == b'\n' {
                    if !allowed_meta(line) {
                        let shown: String =
                            String::from_utf8_lossy(line).chars().take(80).collect();
                        return Err(format!(
                            "the archive holds a psql meta-command ({shown:?}); dbkeep never lets stored bytes run psql commands. Restore from a backup you trust"
                        ));
                    }
                    self.state = State::Normal;
                    self.at_line_start = true;
                    self.prev = b'\n';
                } else if line.len() < LINE_LIMIT {
                    line.push(b);
                } else {
                    return Err(
                        "the archive holds an overlong psql meta-command line; refused".into(),
                    );
                }
            }
            State::CopyData { line } => {
                if b == b'\n' {
                    if line.as_slice() == b"\\." || line.as_slice() == b"\\.\r" {
                        self.state = State::Normal;
                        self.at_line_start = true;
                        self.prev = b'\n';
                    } else {
                        line.clear();
                    }
                } else if line.len() < 4 {
                    line.push(b);
                } else {
                    // Only a short line can be the end marker; longer lines are data.
                    line.truncate(4);
                }
            }
        }
        Ok(())
    }

    fn normal(&mut self, b: u8) -> Result<(), String> {
        // A dollar tag being read: $tag$ opens a dollar quote. A tag starts with a letter,
        // `_` or a multi-byte character, never a digit (`$1` is a parameter).
        if let Some(tag) = &mut self.tag {
            if b == b'$' {
                let tag = String::from_utf8_lossy(tag).into_owned();
                self.tag = None;
                self.state = State::Dollar { tag, seen: 0 };
                return Ok(());
            }
            if is_ident(b) && !(tag.is_empty() && b.is_ascii_digit()) {
                tag.push(b);
                return Ok(());
            }
            self.tag = None;
        }
        if b == b'\\' {
            if self.at_line_start {
                self.state = State::Meta { line: vec![b] };
                return Ok(());
            }
            return Err(
                "the archive holds a psql meta-command inside a line; dbkeep never lets stored bytes run psql commands. Restore from a backup you trust"
                    .into(),
            );
        }
        let at_start = self.at_line_start;
        self.at_line_start = b == b'\n' || (at_start && (b == b' ' || b == b'\t' || b == b'\r'));
        if b == b'\n' && self.copy_next_line {
            self.copy_next_line = false;
            self.state = State::CopyData { line: Vec::new() };
            self.prev = b'\n';
            return Ok(());
        }
        match b {
            b'\'' => {
                // `E'...'` only where the E is a word of its own (`name'...'` is not one).
                let escapes =
                    (self.prev == b'E' || self.prev == b'e') && !is_ident(self.before_prev);
                self.state = State::Single {
                    escapes,
                    after_backslash: false,
                };
            }
            b'"' => self.state = State::Double,
            b'-' if self.prev == b'-' => {
                self.state = State::LineComment;
                self.stmt.pop();
            }
            b'*' if self.prev == b'/' => {
                self.state = State::BlockComment { depth: 1, last: 0 };
                self.stmt.pop();
            }
            b'$' if !is_ident(self.prev) => {
                self.tag = Some(Vec::new());
            }
            b';' => {
                changes_string_rules(&self.stmt)?;
                let copy = is_copy_from_stdin(&self.stmt);
                self.stmt.clear();
                if copy {
                    // The rows start on the next line; the rest of this one is SQL.
                    self.copy_next_line = true;
                }
            }
            _ => self.push_stmt(b),
        }
        self.before_prev = self.prev;
        self.prev = b;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Result<(), String> {
        let mut g = SqlGuard::default();
        // Byte by byte and in one piece must agree.
        let whole = g.check(sql.as_bytes());
        let mut g2 = SqlGuard::default();
        let split = sql.as_bytes().chunks(3).try_for_each(|c| g2.check(c));
        assert_eq!(whole.is_ok(), split.is_ok(), "{sql:?}");
        whole
    }

    #[test]
    fn what_pg_dump_writes_passes() {
        check(
            "\\restrict abc123XYZ\n\
             SET standard_conforming_strings = on;\n\
             CREATE ROLE alice;\n\
             ALTER ROLE alice WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:a\\\\b';\n\
             COMMENT ON ROLE alice IS 'it''s \\ fine';\n\
             CREATE FUNCTION f() RETURNS text AS $body$ SELECT '\\x' $body$ LANGUAGE sql;\n\
             CREATE TABLE \"we\\ird\" (x text); -- a \\ comment\n\
             /* block \\ /* nested \\ */ still */ SELECT 1;\n\
             COPY public.t (id, v) FROM stdin;\n\
             1\t\\N\n\
             2\tback\\\\slash\n\
             \\.\n\
             SELECT E'\\'' ;\n\
             \\unrestrict abc123XYZ\n",
        )
        .unwrap();
    }

    #[test]
    fn meta_commands_are_refused_wherever_they_hide() {
        for bad in [
            "\\! id > pwned\n",
            "CREATE ROLE x;\n\\! id\n",
            "CREATE ROLE x; \\! id\n",
            "  \\o |sh\n",
            "\\i /etc/passwd\n",
            "\\restrict\n",
            "\\restrict a b\n",
            "SELECT 'closed' \\! id\n",
            "COPY t FROM stdin;\n1\n\\.\n\\! id\n",
            "SELECT $x$ \\ $x$; \\copy t to program 'id'\n",
        ] {
            assert!(check(bad).is_err(), "{bad:?} passed");
        }
    }
}

#[cfg(test)]
mod red_team {
    use super::SqlGuard;

    fn refused(sql: &str) -> bool {
        let mut g = SqlGuard::default();
        let whole = g.check(sql.as_bytes()).is_err();
        let mut g2 = SqlGuard::default();
        let split = sql
            .as_bytes()
            .chunks(2)
            .try_for_each(|c| g2.check(c))
            .is_err();
        assert_eq!(whole, split, "{sql:?}");
        whole
    }

    /// The payloads a red team used to slip `\!` past the first version of the guard.
    #[test]
    fn the_red_teams_payloads_are_refused() {
        for sql in [
            // An identifier ending in E is not an E'' string.
            "SELECT name'\\';\n\\! id > /tmp/x\nSELECT 1; -- '\n",
            // A multi-byte character belongs to the identifier: no dollar quote.
            "SELECT 1 AS \u{e9}$x$;\n\\! id > /tmp/x\n-- $x$\n",
            // psql drops what follows a NUL on its line.
            "SELECT 1;\0'\n\\! id > /tmp/x\n--'\n",
            // The rest of a COPY line is SQL; the rows start on the next line.
            "CREATE TEMP TABLE tt(a int);\nCOPY tt FROM stdin; \\! id > /tmp/x\n1\n\\.\n",
            // Backslashes become escapes with standard_conforming_strings off.
            "SET standard_conforming_strings = off;\nSELECT '\\'''';\n\\! id > /tmp/x\n-- '\n",
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\n",
            // A tag never starts with a digit.
            "SELECT $1$;\n\\! id > /tmp/x\n-- $1$\n",
        ] {
            assert!(refused(sql), "{sql:?}");
        }
    }

    #[test]
    fn what_pg_dump_writes_about_strings_still_passes() {
        for sql in [
            "SET standard_conforming_strings = on;\nSELECT E'a\\'b';\n",
            "SELECT $_x$ \\! $_x$, $\u{e9}$ \\q $\u{e9}$;\n",
            "COPY public.t (a) FROM stdin;\n\\! not a command, a row\n\\.\nSELECT 1;\n",
            "SELECT pg_catalog.set_config('search_path', '', false);\n",
        ] {
            assert!(!refused(sql), "{sql:?}");
        }
    }
}
