//! The built-in demo's application: a sample SQLite shop database that keeps taking
//! orders while the daemon backs it up, so dbkeep can be seen working with no database
//! server installed. It plays the application, not dbkeep.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

pub const DB_FILE: &str = "shop.db";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS customers (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE,
        country TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT (datetime('now')))",
    "CREATE TABLE IF NOT EXISTS products (
        id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
        price_cents INTEGER NOT NULL CHECK (price_cents > 0))",
    "CREATE TABLE IF NOT EXISTS orders (
        id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
        status TEXT NOT NULL, placed_at TEXT NOT NULL DEFAULT (datetime('now')))",
    "CREATE TABLE IF NOT EXISTS order_items (
        order_id INTEGER NOT NULL REFERENCES orders(id), product_id INTEGER NOT NULL REFERENCES products(id),
        quantity INTEGER NOT NULL, PRIMARY KEY (order_id, product_id))",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders(customer_id, placed_at)",
];

const COUNTRIES: &[&str] = &["DE", "FR", "NL", "PL", "SE", "ES", "IT", "US", "CA", "JP"];
const WORDS: &[&str] = &[
    "oak", "linen", "copper", "walnut", "wool", "slate", "amber", "cedar", "ivory", "cobalt",
];

/// Create (or reopen) the demo database in WAL mode with sample data.
pub async fn open_database(dir: &Path) -> Result<SqlitePool, sqlx::Error> {
    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
    let opts = SqliteConnectOptions::new()
        .filename(dir.join(DB_FILE))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&pool).await?;
    }
    let (customers,): (i64,) = sqlx::query_as("SELECT count(*) FROM customers")
        .fetch_one(&pool)
        .await?;
    if customers == 0 {
        let mut tx = pool.begin().await?;
        for i in 1..=500i64 {
            let name = format!(
                "{} {}",
                cap(WORDS[i as usize % 10]),
                cap(WORDS[(i as usize / 10) % 10])
            );
            sqlx::query("INSERT INTO customers (name, email, country) VALUES (?, ?, ?)")
                .bind(name)
                .bind(format!("customer{i}@example.com"))
                .bind(COUNTRIES[i as usize % COUNTRIES.len()])
                .execute(&mut *tx)
                .await?;
        }
        for i in 1..=120i64 {
            sqlx::query("INSERT INTO products (sku, title, price_cents) VALUES (?, ?, ?)")
                .bind(format!("SKU-{i:05}"))
                .bind(format!(
                    "{} {}",
                    cap(WORDS[i as usize % 10]),
                    ["chair", "lamp", "desk", "shelf"][i as usize % 4]
                ))
                .bind(500 + (i * 1379) % 40_000)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(pool)
}

fn cap(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// Place an order with a few items every `period` until cancelled.
pub async fn keep_writing(pool: SqlitePool, period: Duration, cancel: CancellationToken) {
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        n += 1;
        if let Err(e) = place_order(&pool, n).await {
            tracing::warn!(error = %e, "demo writer: order not placed");
        }
    }
}

async fn place_order(pool: &SqlitePool, n: u64) -> Result<(), sqlx::Error> {
    let r: u64 = rand::random();
    let mut tx = pool.begin().await?;
    let order_id = sqlx::query("INSERT INTO orders (customer_id, status) VALUES (?, ?)")
        .bind((r % 500 + 1) as i64)
        .bind(["new", "paid", "shipped"][(n % 3) as usize])
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
    for k in 0..(1 + r % 4) {
        sqlx::query("INSERT INTO order_items (order_id, product_id, quantity) VALUES (?, ?, ?)")
            .bind(order_id)
            .bind(((r / 7 + k * 31) % 120 + 1) as i64)
            .bind((1 + (r >> 8) % 5) as i64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
