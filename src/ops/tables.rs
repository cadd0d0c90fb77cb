//! `restore TARGET ID --table SCHEMA.NAME [--as SCHEMA.NEW]`: tables of a backup restored
//! beside the live data under new names (default `<name>_restored_<id>`), so an operator
//! can compare and copy rows back. The names are resolved against the backup's manifest,
//! the archive's sha256 is proven, then the engine restores the copies in one
//! transaction; nothing that exists in the live database is changed.

use super::restore::{self as ops_restore, RestoreError, Selector};
use super::Context;
use crate::catalog::{Backup, TableInfo};
use crate::config::Target;
use crate::engine::{self, TableCopy, TableName, TableRestored};

/// A table name as typed: `name`, `schema.name`, each part bare or in double quotes (a
/// doubled `"` inside stands for one), so `"My Schema"."a.b"` names table `a.b`.
pub fn parse_table_name(s: &str) -> Result<TableName, String> {
    let mut parts: Vec<String> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("{s:?}: a quoted name is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '"' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!(
                "{s:?}: write the table as NAME or SCHEMA.NAME (quote a part that holds a dot: \"a.b\")"
            ));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => {
                return Err(format!(
                    "{s:?}: write the table as NAME or SCHEMA.NAME (a quoted part ends at its closing quote)"
                ))
            }
        }
    }
    match parts.len() {
        1 => Ok(TableName {
            schema: None,
            name: parts.remove(0),
        }),
        2 => Ok(TableName {
            name: parts.remove(1),
            schema: Some(parts.remove(0)),
        }),
        _ => Err(format!(
            "{s:?}: write the table as NAME or SCHEMA.NAME (quote a part that holds a dot: \"a.b\")"
        )),
    }
}

/// The table of `tables` (a manifest's) that `want` names: exactly, else the one whose
/// name differs only in case; a name without schema must be unique among the schemas.
pub fn resolve(want: &TableName, tables: &[TableInfo], sqlite: bool) -> Result<TableName, String> {
    let want_schema = match (&want.schema, sqlite) {
        (Some(s), true) if s == "main" => None,
        (Some(s), true) => {
            return Err(format!(
                "a SQLite database has no schema {s:?}: name the table alone"
            ))
        }
        (s, false) => s.clone(),
        (None, true) => None,
    };
    let in_schema = |t: &&TableInfo| match &want_schema {
        Some(s) => t.schema.as_deref() == Some(s.as_str()),
        None => true,
    };
    let exact: Vec<&TableInfo> = tables
        .iter()
        .filter(in_schema)
        .filter(|t| t.name == want.name)
        .collect();
    let found = match exact.len() {
        0 => tables
            .iter()
            .filter(in_schema)
            .filter(|t| t.name.eq_ignore_ascii_case(&want.name))
            .collect(),
        _ => exact,
    };
    let name = |t: &TableInfo| TableName {
        schema: t.schema.clone(),
        name: t.name.clone(),
    };
    match found.as_slice() {
        [one] => Ok(name(one)),
        [] => {
            let mut near: Vec<String> = tables
                .iter()
                .filter(|t| {
                    let (a, b) = (t.name.to_lowercase(), want.name.to_lowercase());
                    a.contains(&b) || b.contains(&a)
                })
                .map(|t| name(t).to_string())
                .take(10)
                .collect();
            near.sort();
            Err(format!(
                "the backup holds no table {want}{}",
                match near.is_empty() {
                    true => format!(" (it holds {} tables)", tables.len()),
                    false => format!("; did you mean: {}", near.join(", ")),
                }
            ))
        }
        many => Err(format!(
            "{want} names {} tables: write one of {} (a name in double quotes is taken as written)",
            many.len(),
            many.iter()
                .map(|t| name(t).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// PostgreSQL's longest name, in bytes.
const PG_NAME_MAX: usize = 63;

/// `<name>_restored_<id>`; for PostgreSQL within its 63 bytes, the original name cut
/// rather than the part that says which backup the copy is of.
pub fn default_copy_name(name: &str, id: &str, sqlite: bool) -> String {
    let suffix = format!("_restored_{id}");
    if sqlite || name.len() + suffix.len() <= PG_NAME_MAX {
        return format!("{name}{suffix}");
    }
    let kept = crate::engine::model::cut_at_char(name, PG_NAME_MAX.saturating_sub(suffix.len()));
    format!("{kept}{suffix}")
}

/// What a table restore did.
pub struct Done {
    pub backup: Backup,
    pub storage: &'static str,
    pub restored: Vec<TableRestored>,
    pub notes: Vec<String>,
}

/// A table restore decided: the archive chosen, the copies named.
pub struct Plan {
    pub chosen: ops_restore::Chosen,
    pub copies: Vec<TableCopy>,
    /// What the operator sees before it starts.
    pub description: String,
}

/// Choose the archive and name the copies of `tables` (as typed) out of it; `rename` is
/// the copy's name when there is one table.
pub async fn plan(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
    tables: &[String],
    rename: Option<&str>,
) -> Result<Plan, RestoreError> {
    let refused = RestoreError::Refused;
    if tables.is_empty() {
        return Err(refused("name at least one table with --table".into()));
    }
    if rename.is_some() && tables.len() > 1 {
        return Err(refused(
            "--as names the copy of one table; with several --table each copy is named <name>_restored_<id>".into(),
        ));
    }
    let wanted: Vec<TableName> = tables
        .iter()
        .map(|t| parse_table_name(t))
        .collect::<Result<_, _>>()
        .map_err(refused)?;
    let rename = rename.map(parse_table_name).transpose().map_err(refused)?;
    // The tables' one schema picks its archive in a run of one archive per schema; in a
    // whole-database run the database archive is chosen all the same.
    let sqlite = target.source.kind() == "sqlite";
    let mut selector = selector.clone();
    let schemas: std::collections::BTreeSet<Option<&str>> =
        wanted.iter().map(|t| t.schema.as_deref()).collect();
    if let (None, false, [Some(one)]) = (
        &selector.schema,
        sqlite,
        schemas.iter().copied().collect::<Vec<_>>().as_slice(),
    ) {
        selector.schema = Some(one.to_string());
    }
    let chosen = ops_restore::choose(ctx, target, &selector, false).await?;
    let backup = &chosen.backup;
    let mut copies: Vec<TableCopy> = Vec::new();
    for want in &wanted {
        let from = resolve(want, &backup.manifest.tables, sqlite).map_err(|m| {
            RestoreError::NotFound(format!(
                "{m} (backup {} of target {})",
                backup.id, target.name
            ))
        })?;
        let to = match &rename {
            Some(r) => TableName {
                schema: match (sqlite, &r.schema) {
                    (true, Some(s)) if s != "main" => {
                        return Err(refused(format!(
                            "--as {}: a SQLite copy goes into the live file itself; name it without a schema",
                            r
                        )))
                    }
                    (true, _) => None,
                    (false, s) => s.clone().or_else(|| from.schema.clone()),
                },
                name: r.name.clone(),
            },
            None => TableName {
                schema: from.schema.clone(),
                name: default_copy_name(&from.name, &backup.id.to_string(), sqlite),
            },
        };
        if !sqlite && to.name.len() > PG_NAME_MAX {
            return Err(refused(format!(
                "--as {to}: PostgreSQL names are at most {PG_NAME_MAX} bytes; choose a shorter one"
            )));
        }
        if to == from {
            return Err(refused(format!(
                "--as names {from} itself; the copy goes beside the original, under another name"
            )));
        }
        if copies.iter().any(|c| c.from == from) {
            continue;
        }
        if let Some(other) = copies.iter().find(|c| c.to == to) {
            return Err(refused(format!(
                "{} and {from} would both be restored as {to} (long names are cut to fit); restore them one at a time, each with --as",
                other.from
            )));
        }
        copies.push(TableCopy { from, to });
    }
    let age = crate::retention::fmt_age(ctx.now() - backup.id.time());
    let engine = engine::build(target);
    let description = format!(
        "restore {} of target {} from backup {} ({age} old, {}, {} on {})\ninto {}, beside the live data: {}",
        match copies.len() {
            1 => "one table".to_string(),
            n => format!("{n} tables"),
        },
        target.name,
        backup.id,
        crate::storage::human_size(backup.bytes),
        backup.file,
        backup.storage,
        engine.describe(&engine::Destination::Own, backup.database.as_deref()),
        copies
            .iter()
            .map(|c| format!("{} as {}", c.from, c.to))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Plan {
        chosen,
        copies,
        description,
    })
}

/// Restore the copies. The archive's sha256 is proven before the scratch copy reads it
/// when the engine's restore runs what it reads (ops_restore::proven_first), else as it
/// streams into the scratch copy; either way before anything reaches the live database. A
/// copy that cannot be read or does not match gives way to the next storage's.
pub async fn execute(
    ctx: &Context,
    target: &Target,
    plan: &mut Plan,
) -> Result<Done, RestoreError> {
    let engine = engine::build(target);
    let dir = super::scratch_dir(ctx, target);
    let (restored, notes) = loop {
        // The first copy and any copy turned to are proven before they are read.
        plan.chosen.prove_for(ctx, target).await?;
        let archive = plan.chosen.archive(ctx)?;
        match engine
            .restore_tables(archive, &plan.copies, &dir, &ctx.cancel)
            .await
        {
            Ok(done) => break done,
            Err(e) if plan.chosen.next_after(&e) => {}
            Err(e) => return Err(e.into()),
        }
    };
    for r in &restored {
        tracing::info!(
            target = %target.name,
            backup_id = %plan.chosen.backup.id,
            table = %r.copy.from,
            copy = %r.copy.to,
            rows = r.rows,
            "table restored beside the live data"
        );
    }
    Ok(Done {
        backup: plan.chosen.backup.clone(),
        storage: plan.chosen.storage,
        restored,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: Option<&str>, name: &str) -> TableName {
        TableName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    #[test]
    fn names_parse_as_typed() {
        assert_eq!(parse_table_name("orders").unwrap(), t(None, "orders"));
        assert_eq!(
            parse_table_name("public.Orders").unwrap(),
            t(Some("public"), "Orders")
        );
        assert_eq!(
            parse_table_name("\"My Schema\".\"a.b\"\"c\"").unwrap(),
            t(Some("My Schema"), "a.b\"c")
        );
        for bad in ["", "a.", ".b", "a.b.c", "\"open", "\"a\"x"] {
            assert!(parse_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_names_fit_postgres() {
        let id = "20261121_143022";
        assert_eq!(
            default_copy_name("orders", id, false),
            "orders_restored_20261121_143022"
        );
        let long = "é".repeat(30);
        let d = default_copy_name(&long, id, false);
        assert!(
            d.len() <= PG_NAME_MAX && d.ends_with("_restored_20261121_143022"),
            "{d}"
        );
        assert_eq!(
            default_copy_name(&long, id, true),
            format!("{long}_restored_{id}")
        );
    }

    #[test]
    fn names_resolve_against_the_manifest() {
        let info = |s: Option<&str>, n: &str| TableInfo {
            schema: s.map(str::to_string),
            name: n.to_string(),
            rows: None,
        };
        let tables = [
            info(Some("public"), "orders"),
            info(Some("shop"), "orders"),
            info(Some("public"), "Customers"),
        ];
        assert_eq!(
            resolve(&t(Some("shop"), "orders"), &tables, false).unwrap(),
            t(Some("shop"), "orders")
        );
        assert!(resolve(&t(None, "orders"), &tables, false)
            .unwrap_err()
            .contains("names 2 tables"));
        assert_eq!(
            resolve(&t(None, "customers"), &tables, false).unwrap(),
            t(Some("public"), "Customers")
        );
        assert!(resolve(&t(None, "order"), &tables, false)
            .unwrap_err()
            .contains("did you mean"));
        let lite = [info(None, "orders")];
        assert_eq!(
            resolve(&t(Some("main"), "orders"), &lite, true).unwrap(),
            t(None, "orders")
        );
        assert!(resolve(&t(Some("x"), "orders"), &lite, true).is_err());
    }
}
