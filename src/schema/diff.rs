//! Pure comparison of two schema models: each difference named with its table and
//! object, and the statements that would turn the live schema into the reference one.

use serde::Serialize;

use crate::engine::model::{quote_ident, Column, ConstraintKind, Dialect, SchemaModel, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    MissingTable,
    ExtraTable,
    MissingColumn,
    ExtraColumn,
    TypeChanged,
    NullabilityChanged,
    DefaultChanged,
    IdentityChanged,
    MissingIndex,
    ExtraIndex,
    IndexChanged,
    MissingConstraint,
    ExtraConstraint,
    ConstraintChanged,
}

/// One way the live schema differs from the reference (declared, or a past backup).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    pub kind: DiffKind,
    pub table: String,
    /// The column, index or constraint concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What the reference has (a type, `NOT NULL`, a definition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the live database has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    pub message: String,
}

/// Compare `live` against `reference`; `label` names the reference in messages
/// (`declared`, `backup 20261121_143022`).
pub fn diff(reference: &SchemaModel, live: &SchemaModel, label: &str) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |kind, table: &str, object: Option<&str>, expected, live, message: String| {
        out.push(Difference {
            kind,
            table: table.to_string(),
            object: object.map(str::to_string),
            expected,
            live,
            message,
        })
    };
    for (name, want) in &reference.tables {
        let Some(have) = live.tables.get(name) else {
            push(
                DiffKind::MissingTable,
                name,
                None,
                None,
                None,
                format!("table {name} is missing ({label} has it)"),
            );
            continue;
        };
        for c in &want.columns {
            let Some(h) = have.column(&c.name) else {
                push(
                    DiffKind::MissingColumn,
                    name,
                    Some(&c.name),
                    Some(c.data_type.clone()),
                    None,
                    format!(
                        "table {name}: column {} ({}) is missing",
                        c.name, c.data_type
                    ),
                );
                continue;
            };
            let col = c.name.as_str();
            if !c.data_type.eq_ignore_ascii_case(&h.data_type) {
                push(
                    DiffKind::TypeChanged,
                    name,
                    Some(col),
                    Some(c.data_type.clone()),
                    Some(h.data_type.clone()),
                    format!(
                        "table {name}: column {col} has type {}, {label} type is {}",
                        h.data_type, c.data_type
                    ),
                );
            }
            if c.nullable != h.nullable {
                let word = |n: bool| if n { "nullable" } else { "NOT NULL" };
                push(
                    DiffKind::NullabilityChanged,
                    name,
                    Some(col),
                    Some(word(c.nullable).into()),
                    Some(word(h.nullable).into()),
                    format!(
                        "table {name}: column {col} is {}, {label} is {}",
                        word(h.nullable),
                        word(c.nullable)
                    ),
                );
            }
            if c.default != h.default && !c.generated {
                let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "no default".into());
                push(
                    DiffKind::DefaultChanged,
                    name,
                    Some(col),
                    c.default.clone(),
                    h.default.clone(),
                    format!(
                        "table {name}: column {col} default is {}, {label} default is {}",
                        show(&h.default),
                        show(&c.default)
                    ),
                );
            }
            if c.identity != h.identity || c.generated != h.generated {
                push(
                    DiffKind::IdentityChanged,
                    name,
                    Some(col),
                    Some(generation(c)),
                    Some(generation(h)),
                    format!(
                        "table {name}: column {col} is {}, {label} is {}",
                        generation(h),
                        generation(c)
                    ),
                );
            }
        }
        for c in &have.columns {
            if want.column(&c.name).is_none() {
                push(
                    DiffKind::ExtraColumn,
                    name,
                    Some(&c.name),
                    None,
                    Some(c.data_type.clone()),
                    format!(
                        "table {name}: extra column {} ({}) that {label} does not have",
                        c.name, c.data_type
                    ),
                );
            }
        }
        for (iname, i) in &want.indexes {
            match have.indexes.get(iname) {
                None => push(
                    DiffKind::MissingIndex,
                    name,
                    Some(iname),
                    Some(i.definition.clone()),
                    None,
                    format!("table {name}: index {iname} is missing ({})", i.definition),
                ),
                Some(h) if h.definition != i.definition || h.unique != i.unique => push(
                    DiffKind::IndexChanged,
                    name,
                    Some(iname),
                    Some(i.definition.clone()),
                    Some(h.definition.clone()),
                    format!(
                        "table {name}: index {iname} is {}, {label} is {}",
                        h.definition, i.definition
                    ),
                ),
                Some(_) => {}
            }
        }
        for (iname, h) in &have.indexes {
            if !want.indexes.contains_key(iname) {
                push(
                    DiffKind::ExtraIndex,
                    name,
                    Some(iname),
                    None,
                    Some(h.definition.clone()),
                    format!("table {name}: extra index {iname} ({})", h.definition),
                );
            }
        }
        for (cname, k) in &want.constraints {
            match have.constraints.get(cname) {
                None => push(
                    DiffKind::MissingConstraint,
                    name,
                    Some(cname),
                    Some(k.definition.clone()),
                    None,
                    format!(
                        "table {name}: {} {cname} is missing ({})",
                        k.kind.label(),
                        k.definition
                    ),
                ),
                Some(h) if h.definition != k.definition => push(
                    DiffKind::ConstraintChanged,
                    name,
                    Some(cname),
                    Some(k.definition.clone()),
                    Some(h.definition.clone()),
                    format!(
                        "table {name}: {} {cname} is {}, {label} is {}",
                        k.kind.label(),
                        h.definition,
                        k.definition
                    ),
                ),
                Some(_) => {}
            }
        }
        for (cname, h) in &have.constraints {
            if !want.constraints.contains_key(cname) {
                push(
                    DiffKind::ExtraConstraint,
                    name,
                    Some(cname),
                    None,
                    Some(h.definition.clone()),
                    format!(
                        "table {name}: extra {} {cname} ({})",
                        h.kind.label(),
                        h.definition
                    ),
                );
            }
        }
    }
    for name in live.tables.keys() {
        if !reference.tables.contains_key(name) {
            push(
                DiffKind::ExtraTable,
                name,
                None,
                None,
                None,
                format!("extra table {name} that {label} does not have"),
            );
        }
    }
    out
}

fn generation(c: &Column) -> String {
    match (&c.identity, c.generated) {
        (Some(i), _) => format!("an identity column (generated {i})"),
        (None, true) => "a generated column".into(),
        (None, false) => "a plain column".into(),
    }
}

/// The statements that create `table` as the reference has it, indexes and constraints
/// included. Foreign keys come last (in `tail`) so tables that reference each other can be
/// created in any order.
pub struct CreateTable {
    pub head: Vec<String>,
    pub tail: Vec<String>,
}

pub fn create_table(name: &str, t: &Table, dialect: Dialect) -> CreateTable {
    let q = quote_ident(name);
    if dialect == Dialect::Sqlite {
        // SQLite's own statement carries everything (its foreign keys included).
        let mut head = vec![format!(
            "{};",
            t.create_sql
                .clone()
                .unwrap_or_else(|| format!("CREATE TABLE {q} ()"))
        )];
        head.extend(
            t.indexes
                .values()
                .filter_map(|i| i.create_sql.clone())
                .map(|s| format!("{s};")),
        );
        return CreateTable {
            head,
            tail: Vec::new(),
        };
    }
    let mut head = Vec::new();
    let mut owned = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for c in &t.columns {
        if let Some(seq) = c.default.as_deref().and_then(serial_sequence) {
            head.push(format!(
                "CREATE SEQUENCE IF NOT EXISTS {};",
                quote_ident(seq)
            ));
            owned.push(format!(
                "ALTER SEQUENCE {} OWNED BY {q}.{};",
                quote_ident(seq),
                quote_ident(&c.name)
            ));
        }
        lines.push(format!("    {}", column_sql(c)));
    }
    let mut tail = Vec::new();
    for (cname, k) in &t.constraints {
        if k.kind == ConstraintKind::ForeignKey {
            tail.push(format!(
                "ALTER TABLE {q} ADD CONSTRAINT {} {};",
                quote_ident(cname),
                k.definition
            ));
        } else {
            lines.push(format!(
                "    CONSTRAINT {} {}",
                quote_ident(cname),
                k.definition
            ));
        }
    }
    head.push(format!("CREATE TABLE {q} (\n{}\n);", lines.join(",\n")));
    head.extend(owned);
    for (iname, i) in &t.indexes {
        head.push(create_index(name, iname, i.unique, &i.definition));
    }
    CreateTable { head, tail }
}

fn create_index(table: &str, name: &str, unique: bool, definition: &str) -> String {
    format!(
        "CREATE {}INDEX {} ON {} {definition};",
        if unique { "UNIQUE " } else { "" },
        quote_ident(name),
        quote_ident(table)
    )
}

/// `nextval('orders_id_seq'::regclass)` → `orders_id_seq`: a serial column's sequence.
fn serial_sequence(default: &str) -> Option<&str> {
    let inner = default
        .strip_prefix("nextval('")?
        .strip_suffix("'::regclass)")?;
    (!inner.contains('\'') && !inner.contains('.')).then_some(inner.trim_matches('"'))
}

fn column_sql(c: &Column) -> String {
    let mut s = format!("{} {}", quote_ident(&c.name), c.data_type);
    if let Some(i) = &c.identity {
        s.push_str(&format!(
            " GENERATED {} AS IDENTITY",
            i.to_ascii_uppercase()
        ));
    } else if c.generated {
        if let Some(d) = &c.default {
            s.push_str(&format!(" GENERATED ALWAYS AS ({d}) STORED"));
        }
    } else if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if !c.nullable {
        s.push_str(" NOT NULL");
    }
    s
}

/// The statements `schema sync` runs: the missing tables only, with their indexes and
/// constraints; nothing existing is altered or dropped.
pub fn sync_statements(
    reference: &SchemaModel,
    live: &SchemaModel,
    dialect: Dialect,
) -> Vec<String> {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for (name, t) in &reference.tables {
        if !live.tables.contains_key(name) {
            let c = create_table(name, t, dialect);
            head.extend(c.head);
            tail.extend(c.tail);
        }
    }
    head.extend(tail);
    head
}

/// A proposed migration script for the differences: additive statements as SQL,
/// destructive ones (drops, and for SQLite what it cannot alter) as comments for a human
/// to enable. Never applied by dbkeep.
pub fn proposal(reference: &SchemaModel, diffs: &[Difference], dialect: Dialect) -> Vec<String> {
    let mut out = Vec::new();
    let mut tail = Vec::new();
    let comment = |s: String| {
        s.lines()
            .map(|l| format!("-- {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for d in diffs {
        let t = quote_ident(&d.table);
        let obj = d.object.as_deref().unwrap_or("");
        let want = reference.tables.get(&d.table);
        let want_col = want.and_then(|w| w.column(obj));
        match d.kind {
            DiffKind::MissingTable => {
                if let Some(w) = want {
                    let c = create_table(&d.table, w, dialect);
                    out.extend(c.head);
                    tail.extend(c.tail);
                }
            }
            DiffKind::ExtraTable => {
                out.push(comment(format!("DROP TABLE {t};  -- destroys its rows")))
            }
            DiffKind::MissingColumn => {
                if let Some(c) = want_col {
                    out.push(format!("ALTER TABLE {t} ADD COLUMN {};", column_sql(c)));
                }
            }
            DiffKind::ExtraColumn => out.push(comment(format!(
                "ALTER TABLE {t} DROP COLUMN {};  -- destroys its values",
                quote_ident(obj)
            ))),
            DiffKind::TypeChanged => {
                let stmt = format!(
                    "ALTER TABLE {t} ALTER COLUMN {} TYPE {};",
                    quote_ident(obj),
                    d.expected.clone().unwrap_or_default()
                );
                match dialect {
                    Dialect::Postgres => out.push(stmt),
                    Dialect::Sqlite => out.push(comment(format!(
                        "{stmt}  -- SQLite cannot change a column's type: rebuild the table"
                    ))),
                }
            }
            DiffKind::NullabilityChanged => {
                let set = if want_col.is_some_and(|c| !c.nullable) {
                    "SET NOT NULL"
                } else {
                    "DROP NOT NULL"
                };
                let stmt = format!("ALTER TABLE {t} ALTER COLUMN {} {set};", quote_ident(obj));
                match dialect {
                    Dialect::Postgres => out.push(stmt),
                    Dialect::Sqlite => out.push(comment(format!(
                        "{stmt}  -- SQLite cannot change nullability: rebuild the table"
                    ))),
                }
            }
            DiffKind::DefaultChanged => {
                let set = match want_col.and_then(|c| c.default.as_deref()) {
                    Some(d) => format!("SET DEFAULT {d}"),
                    None => "DROP DEFAULT".into(),
                };
                let stmt = format!("ALTER TABLE {t} ALTER COLUMN {} {set};", quote_ident(obj));
                match dialect {
                    Dialect::Postgres => out.push(stmt),
                    Dialect::Sqlite => out.push(comment(format!(
                        "{stmt}  -- SQLite cannot change a default: rebuild the table"
                    ))),
                }
            }
            DiffKind::IdentityChanged => out.push(comment(format!(
                "column {}.{obj}: {} -> {}: change by hand",
                d.table,
                d.live.clone().unwrap_or_default(),
                d.expected.clone().unwrap_or_default()
            ))),
            DiffKind::MissingIndex | DiffKind::IndexChanged => {
                let Some(i) = want.and_then(|w| w.indexes.get(obj)) else {
                    continue;
                };
                if d.kind == DiffKind::IndexChanged {
                    out.push(format!("DROP INDEX {};", quote_ident(obj)));
                }
                out.push(match (dialect, &i.create_sql) {
                    (Dialect::Sqlite, Some(sql)) => format!("{sql};"),
                    _ => create_index(&d.table, obj, i.unique, &i.definition),
                });
            }
            DiffKind::ExtraIndex => out.push(comment(format!("DROP INDEX {};", quote_ident(obj)))),
            DiffKind::MissingConstraint => {
                let Some(k) = want.and_then(|w| w.constraints.get(obj)) else {
                    continue;
                };
                let stmt = format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {};",
                    quote_ident(obj),
                    k.definition
                );
                match dialect {
                    Dialect::Postgres if k.kind == ConstraintKind::ForeignKey => tail.push(stmt),
                    Dialect::Postgres => out.push(stmt),
                    Dialect::Sqlite => out.push(comment(format!(
                        "{stmt}  -- SQLite cannot add a constraint: rebuild the table"
                    ))),
                }
            }
            DiffKind::ExtraConstraint | DiffKind::ConstraintChanged => {
                let drop = format!("ALTER TABLE {t} DROP CONSTRAINT {};", quote_ident(obj));
                let add = want
                    .and_then(|w| w.constraints.get(obj))
                    .map(|k| {
                        format!(
                            "\nALTER TABLE {t} ADD CONSTRAINT {} {};",
                            quote_ident(obj),
                            k.definition
                        )
                    })
                    .unwrap_or_default();
                out.push(comment(format!("{drop}{add}")));
            }
        }
    }
    out.extend(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{Constraint, Index};

    fn col(name: &str, ty: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            nullable,
            default: None,
            identity: None,
            generated: false,
        }
    }

    fn users() -> Table {
        let mut t = Table {
            columns: vec![
                col("id", "integer", false),
                col("email", "text", false),
                col("name", "text", true),
            ],
            ..Table::default()
        };
        t.constraints.insert(
            "users_pkey".into(),
            Constraint {
                kind: ConstraintKind::PrimaryKey,
                definition: "PRIMARY KEY (id)".into(),
            },
        );
        t.indexes.insert(
            "users_email_idx".into(),
            Index {
                unique: false,
                definition: "USING btree (email)".into(),
                create_sql: None,
            },
        );
        t
    }

    fn orders() -> Table {
        let mut t = Table {
            columns: vec![col("id", "integer", false), col("user_id", "integer", true)],
            ..Table::default()
        };
        t.constraints.insert(
            "orders_user_id_fkey".into(),
            Constraint {
                kind: ConstraintKind::ForeignKey,
                definition: "FOREIGN KEY (user_id) REFERENCES users(id)".into(),
            },
        );
        t
    }

    fn model(tables: Vec<(&str, Table)>) -> SchemaModel {
        SchemaModel {
            tables: tables
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
        }
    }

    fn kinds(d: &[Difference]) -> Vec<(DiffKind, String, Option<String>)> {
        d.iter()
            .map(|d| (d.kind, d.table.clone(), d.object.clone()))
            .collect()
    }

    #[test]
    fn each_drift_is_named_precisely() {
        let declared = model(vec![("users", users()), ("orders", orders())]);
        type Case = (
            &'static str,
            fn(&mut SchemaModel),
            DiffKind,
            &'static str,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("same", |_| {}, DiffKind::MissingTable, "", None),
            (
                "extra table",
                |m| {
                    m.tables.insert("audit".into(), Table::default());
                },
                DiffKind::ExtraTable,
                "audit",
                None,
            ),
            (
                "missing table",
                |m| {
                    m.tables.remove("orders");
                },
                DiffKind::MissingTable,
                "orders",
                None,
            ),
            (
                "extra column",
                |m| {
                    m.tables
                        .get_mut("users")
                        .unwrap()
                        .columns
                        .push(col("age", "integer", true))
                },
                DiffKind::ExtraColumn,
                "users",
                Some("age"),
            ),
            (
                "changed type",
                |m| {
                    m.tables.get_mut("users").unwrap().columns[1].data_type =
                        "character varying(80)".into()
                },
                DiffKind::TypeChanged,
                "users",
                Some("email"),
            ),
            (
                "dropped index",
                |m| {
                    m.tables.get_mut("users").unwrap().indexes.clear();
                },
                DiffKind::MissingIndex,
                "users",
                Some("users_email_idx"),
            ),
            (
                "missing foreign key",
                |m| {
                    m.tables.get_mut("orders").unwrap().constraints.clear();
                },
                DiffKind::MissingConstraint,
                "orders",
                Some("orders_user_id_fkey"),
            ),
            (
                "nullability",
                |m| m.tables.get_mut("users").unwrap().columns[2].nullable = false,
                DiffKind::NullabilityChanged,
                "users",
                Some("name"),
            ),
        ];
        for (what, change, kind, table, object) in cases {
            let mut live = declared.clone();
            change(&mut live);
            let d = diff(&declared, &live, "declared");
            if what == "same" {
                assert!(d.is_empty(), "{what}: {d:?}");
                continue;
            }
            assert_eq!(
                kinds(&d),
                vec![(kind, table.to_string(), object.map(str::to_string))],
                "{what}"
            );
            assert!(d[0].message.contains(table), "{what}: {}", d[0].message);
        }
    }

    #[test]
    fn sync_creates_only_missing_tables_with_foreign_keys_last() {
        let declared = model(vec![("users", users()), ("orders", orders())]);
        let mut live = declared.clone();
        live.tables.remove("orders");
        live.tables.get_mut("users").unwrap().columns.pop();
        let stmts = sync_statements(&declared, &live, Dialect::Postgres);
        assert_eq!(stmts.len(), 2, "{stmts:?}");
        assert!(stmts[0].starts_with("CREATE TABLE \"orders\""), "{stmts:?}");
        assert!(stmts[1].contains("ADD CONSTRAINT \"orders_user_id_fkey\" FOREIGN KEY"));
        assert!(!stmts.iter().any(|s| s.contains("TABLE \"users\"")));
    }

    #[test]
    fn proposals_comment_out_destructive_statements() {
        let declared = model(vec![("users", users())]);
        let mut live = declared.clone();
        live.tables.insert("audit".into(), Table::default());
        let u = live.tables.get_mut("users").unwrap();
        u.columns.retain(|c| c.name != "name");
        u.columns.push(col("legacy", "text", true));
        u.columns[1].data_type = "character varying(10)".into();
        let d = diff(&declared, &live, "declared");
        let sql = proposal(&declared, &d, Dialect::Postgres).join("\n");
        assert!(
            sql.contains("\nALTER TABLE \"users\" ADD COLUMN \"name\" text;")
                || sql.starts_with("ALTER TABLE \"users\" ADD COLUMN \"name\" text;"),
            "{sql}"
        );
        assert!(
            sql.contains("ALTER TABLE \"users\" ALTER COLUMN \"email\" TYPE text;"),
            "{sql}"
        );
        assert!(
            sql.contains("-- ALTER TABLE \"users\" DROP COLUMN \"legacy\""),
            "{sql}"
        );
        assert!(sql.contains("-- DROP TABLE \"audit\""), "{sql}");
        for line in sql.lines() {
            if line.contains("DROP") {
                assert!(
                    line.starts_with("--"),
                    "active destructive statement: {line}"
                );
            }
        }
    }

    #[test]
    fn serial_defaults_recreate_their_sequence() {
        let mut t = users();
        t.columns[0].default = Some("nextval('users_id_seq'::regclass)".into());
        let c = create_table("users", &t, Dialect::Postgres);
        assert_eq!(c.head[0], "CREATE SEQUENCE IF NOT EXISTS \"users_id_seq\";");
        assert!(c
            .head
            .iter()
            .any(|s| s == "ALTER SEQUENCE \"users_id_seq\" OWNED BY \"users\".\"id\";"));
        assert_eq!(serial_sequence("nextval('other.s'::regclass)"), None);
    }
}
