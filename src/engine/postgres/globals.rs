//! Restoring a globals archive (`pg_dumpall --globals-only`: roles, memberships,
//! tablespaces) without psql: the SQL is split into statements, each must be one of the
//! kinds pg_dumpall writes there, and each is sent alone over a plain connection with the
//! extended protocol, which runs exactly one statement per query. No client program reads
//! the stored bytes, so there is nothing a planted backslash command could run; a splitter
//! fooled by odd quoting only produces a statement the server refuses.

use sqlx::Connection;

use super::conn::Dsn;
use crate::engine::EngineError;

/// The statement kinds of a globals archive, by their first words.
const ALLOWED: &[&[&str]] = &[
    &["CREATE", "ROLE"],
    &["ALTER", "ROLE"],
    &["COMMENT", "ON", "ROLE"],
    &["GRANT"],
    &["REVOKE"],
    &["CREATE", "TABLESPACE"],
    &["ALTER", "TABLESPACE"],
    &["COMMENT", "ON", "TABLESPACE"],
    &["SECURITY", "LABEL"],
    &["SET", "DEFAULT_TRANSACTION_READ_ONLY"],
    &["SET", "CLIENT_ENCODING"],
    &["SET", "STANDARD_CONFORMING_STRINGS"],
];

/// The largest globals archive read (roles and tablespaces: kilobytes in practice).
pub const MAX_GLOBALS: usize = 64 * 1024 * 1024;

/// Split globals SQL into the statements to run. `\restrict`/`\unrestrict` lines (psql
/// directives pg_dumpall 15.14+ writes) are dropped; any other backslash line, a statement
/// of another kind, a NUL byte or text that is not UTF-8 refuses the whole archive.
pub fn statements(sql: &[u8]) -> Result<Vec<String>, String> {
    if sql.contains(&0) {
        return Err("the globals archive holds a NUL byte; refused".into());
    }
    let text = std::str::from_utf8(sql)
        .map_err(|_| "the globals archive is not UTF-8 text; refused".to_string())?;
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut line_start = true;
    while let Some(c) = chars.next() {
        if line_start && cur.trim().is_empty() && c == '\\' {
            let mut line = String::from(c);
            for n in chars.by_ref() {
                if n == '\n' {
                    break;
                }
                line.push(n);
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("\\restrict" | "\\unrestrict"), Some(_), None) => {}
                _ => {
                    return Err(format!(
                        "the globals archive holds a psql command ({:?}); refused",
                        line.chars().take(80).collect::<String>()
                    ))
                }
            }
            cur.clear();
            line_start = true;
            continue;
        }
        line_start = c == '\n';
        match c {
            '\'' | '"' => {
                cur.push(c);
                for n in chars.by_ref() {
                    cur.push(n);
                    if n == c {
                        break;
                    }
                }
                // A doubled quote is read as close-and-reopen: the same text either way.
            }
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line_start = true;
                        cur.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut depth = 1;
                let mut last = ' ';
                for n in chars.by_ref() {
                    if last == '*' && n == '/' {
                        depth -= 1;
                        last = ' ';
                        if depth == 0 {
                            break;
                        }
                        continue;
                    }
                    if last == '/' && n == '*' {
                        depth += 1;
                        last = ' ';
                        continue;
                    }
                    last = n;
                }
                cur.push(' ');
            }
            ';' => {
                let stmt = cur.trim().to_string();
                cur.clear();
                if !stmt.is_empty() {
                    allowed(&stmt)?;
                    out.push(stmt);
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        return Err(format!(
            "the globals archive ends inside a statement ({:?}); refused",
            cur.trim().chars().take(80).collect::<String>()
        ));
    }
    Ok(out)
}

fn allowed(stmt: &str) -> Result<(), String> {
    let words: Vec<String> = stmt
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let ok = ALLOWED.iter().any(|want| {
        want.len() <= words.len() && want.iter().zip(&words).all(|(a, b)| *a == b.as_str())
    });
    // The session setting pg_dumpall writes, and only its value: off would change how the
    // server reads the strings of the statements after it.
    let scs = words.len() >= 2 && words[1] == "STANDARD_CONFORMING_STRINGS";
    if ok
        && (!scs
            || stmt
                .to_ascii_uppercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                == ["SET", "STANDARD_CONFORMING_STRINGS", "=", "ON"])
    {
        Ok(())
    } else {
        Err(format!(
            "the globals archive holds a statement pg_dumpall does not write there ({:?}); only roles, memberships and tablespaces are restored; refused",
            stmt.chars().take(80).collect::<String>()
        ))
    }
}

/// Run the statements one by one on `dsn`. A role or tablespace that exists already is
/// kept (noted); any other error is collected and fails the restore at the end, after the
/// statements that could run have run (as psql did).
pub async fn apply(dsn: &Dsn, statements: &[String]) -> Result<Vec<String>, EngineError> {
    let mut conn = dsn.connect().await?;
    let mut notes = Vec::new();
    let mut failed = Vec::new();
    for stmt in statements {
        let run = sqlx::query(sqlx::AssertSqlSafe(stmt.as_str()))
            .persistent(false)
            .execute(&mut conn)
            .await;
        if let Err(e) = run {
            let code = e
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned());
            let head: String = stmt.chars().take(60).collect();
            if code.as_deref() == Some("42710") {
                notes.push(format!("{head}…: exists already, kept"));
            } else {
                failed.push(format!("{head}…: {}", crate::engine::sql_message(&e)));
            }
        }
    }
    let _ = conn.close().await;
    if failed.is_empty() {
        Ok(notes)
    } else {
        Err(EngineError::Check(format!(
            "{} of {} globals statements failed: {}",
            failed.len(),
            statements.len(),
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn what_pg_dumpall_writes_is_split_into_its_statements() {
        let sql = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abc123\n\n\
                   SET default_transaction_read_only = off;\nSET client_encoding = 'UTF8';\n\
                   SET standard_conforming_strings = on;\n\nCREATE ROLE alice;\n\
                   ALTER ROLE alice WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:x;y';\n\
                   COMMENT ON ROLE alice IS 'it''s; fine';\nGRANT reporting TO alice GRANTED BY postgres;\n\
                   /* a ; comment */ CREATE TABLESPACE ts OWNER alice LOCATION '/srv/ts';\n\
                   \\unrestrict abc123\n";
        let s = statements(sql.as_bytes()).unwrap();
        assert_eq!(s.len(), 8, "{s:#?}");
        assert!(s[4].ends_with("'SCRAM-SHA-256$4096:x;y'"), "{}", s[4]);
        assert_eq!(s[5], "COMMENT ON ROLE alice IS 'it''s; fine'");
    }

    #[test]
    fn anything_else_is_refused() {
        for sql in [
            "CREATE ROLE a;\n\\! id > /tmp/pwned\n",
            "CREATE ROLE a; \\! id\n",
            "COPY (SELECT 1) TO PROGRAM 'id';\n",
            "DO $$ BEGIN PERFORM 1; END $$;\n",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n",
            "ALTER SYSTEM SET archive_command = 'id';\n",
            "SET role = postgres;\n",
            "SET standard_conforming_strings = off;\n",
            "CREATE ROLE a;\0\n",
            "CREATE ROLE a",
        ] {
            assert!(statements(sql.as_bytes()).is_err(), "{sql:?}");
        }
    }
}
