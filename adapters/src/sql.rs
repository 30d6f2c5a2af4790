//! SQL sources on sqlx (SQLite, PostgreSQL, MySQL/MariaDB): incremental
//! pull by a watermark column with a tie-breaker key (keyset pagination
//! `(wm, key) > (last_wm, last_key)` ordered by both), or by a change
//! table's sequence. Rows become [`mappings::Record::Row`] (column → JSON
//! value, decoded per driver). The checkpoint is the last row's typed
//! `(wm, key)`, stored by the pipeline with the batch's receipts.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::mysql::{MySql, MySqlRow};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Database, Row, TypeInfo, ValueRef};

use crate::error::AgentError;
use crate::pull::{CHANGE_SEQ_ALIAS as SEQ_ALIAS, PullReader, SqlSourceConfig, source_row};

/// A typed SQL value, as read from a row and bound back into a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "lowercase")]
pub enum Cell {
    /// NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    I64(i64),
    /// Floating point.
    F64(f64),
    /// Text (also decimals read as text).
    Text(String),
    /// Timestamp without zone.
    Ts(NaiveDateTime),
    /// Timestamp with zone (UTC).
    Tstz(DateTime<Utc>),
    /// Date.
    Date(NaiveDate),
    /// JSON.
    Json(Value),
}

impl Cell {
    /// The JSON value handed to the mapping: strings, numbers, null;
    /// timestamps as `yyyy-MM-dd HH:mm:ss[.fff]` (with `Z` when zoned).
    pub fn to_json(&self) -> Value {
        self.clone().into_json()
    }

    /// [`Cell::to_json`] without copying text.
    pub fn into_json(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(b),
            Cell::I64(i) => Value::from(i),
            Cell::F64(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Cell::Text(s) => Value::String(s),
            Cell::Ts(t) => Value::String(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
            Cell::Tstz(t) => Value::String(t.format("%Y-%m-%d %H:%M:%S%.fZ").to_string()),
            Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            Cell::Json(v) => v,
        }
    }

    /// As a record key.
    pub fn key_string(&self) -> String {
        match self.to_json() {
            Value::String(s) => s,
            v => v.to_string(),
        }
    }
}

/// Where a SQL source stands: the last row's watermark and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlCheckpoint {
    /// Watermark of the last row handed over.
    pub wm: Cell,
    /// Tie-breaker key of the last row.
    pub key: Cell,
}

/// One row read from the source.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Column → JSON value (what the mapping sees).
    pub row: Map<String, Value>,
    /// The key column's value.
    pub key: Cell,
    /// Position after this row.
    pub position: SqlCheckpoint,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(Db<Sqlite>),
    Postgres(Db<Postgres>),
    Mysql(Db<MySql>),
}

/// How a [`Cell`] is bound into a query of database `DB` (`binder!`).
type Bind<DB> = for<'q> fn(
    sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    &Cell,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// How a non-NULL column of a `DB` row is read as a [`Cell`], given its
/// type name (see [`read_cell`]).
type ReadCell<DB> = fn(&<DB as Database>::Row, usize, &str) -> Result<Cell, String>;

/// A pool of one sqlx database with its ways of binding and reading a
/// [`Cell`]: the queries of a pull are the same on every database.
#[derive(Debug)]
struct Db<DB: Database> {
    pool: sqlx::Pool<DB>,
    bind: Bind<DB>,
    cell: ReadCell<DB>,
}

impl<DB: Database> Clone for Db<DB> {
    fn clone(&self) -> Self {
        Db {
            pool: self.pool.clone(),
            bind: self.bind,
            cell: self.cell,
        }
    }
}

impl<DB: Database> Db<DB> {
    /// A pool of at most two connections to the server at `url`, opened
    /// on first use (waiting at most 10 s for one).
    fn connect_lazy(url: &str, bind: Bind<DB>, cell: ReadCell<DB>) -> Result<Db<DB>, sqlx::Error> {
        let pool = sqlx::pool::PoolOptions::<DB>::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy(url)?;
        Ok(Db { pool, bind, cell })
    }
}

impl<DB: Database> Db<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// `sql` with `binds` bound in order.
    fn query(&self, sql: String, binds: &[Cell]) -> sqlx::query::Query<'static, DB, DB::Arguments> {
        binds.iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), self.bind)
    }

    /// The rows of `sql` with `binds`.
    async fn all(&self, sql: String, binds: &[Cell]) -> Result<Vec<DB::Row>, sqlx::Error> {
        self.query(sql, binds).fetch_all(&self.pool).await
    }

    /// The rows of `sql` with `binds`, decoded (see [`decode_row`]); the
    /// inner error names a column that cannot be read.
    async fn rows(
        &self,
        sql: String,
        binds: &[Cell],
        wanted: &[&str],
    ) -> Result<Result<Vec<Decoded>, String>, sqlx::Error> {
        let rows = self.all(sql, binds).await?;
        Ok(rows.iter().map(|r| decode_row(r, self.cell, wanted)).collect())
    }

    /// The first column of the first row of `sql` with `binds`.
    async fn count(&self, sql: String, binds: &[Cell]) -> Result<i64, sqlx::Error>
    where
        i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    {
        self.query(sql, binds).fetch_one(&self.pool).await?.try_get(0)
    }

    /// Runs `sql` once per key (bound to its one parameter), in one
    /// transaction.
    async fn mark(&self, sql: &str, keys: &[Cell]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for k in keys {
            self.query(sql.to_string(), std::slice::from_ref(k))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// A SQL source.
#[derive(Debug, Clone)]
pub struct SqlSource {
    name: String,
    cfg: SqlSourceConfig,
    pool: Pool,
    dialect: Dialect,
    wm_col: String,
    key_col: String,
}

fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    )
}

impl SqlSource {
    /// Connects (lazily: the first query opens the connection) to the source.
    pub fn new(kind: &str, cfg: &SqlSourceConfig) -> Result<SqlSource, AgentError> {
        let name = cfg.name.clone();
        let (pool, dialect) = match kind {
            "sqlite" => {
                let opts = SqliteConnectOptions::from_str(&cfg.url)
                    .map_err(|e| AgentError::source(&name, e, false))?
                    .read_only(cfg.mark_processed.is_none())
                    .busy_timeout(std::time::Duration::from_secs(30))
                    // A whole page may queue for the agent (sqlx's default is
                    // 50 rows): the reader is woken once per page, not per
                    // few rows.
                    .row_buffer_size(cfg.batch_size.clamp(50, 4096));
                (
                    Pool::Sqlite(Db {
                        pool: SqlitePoolOptions::new().max_connections(2).connect_lazy_with(opts),
                        bind: bind_sqlite,
                        cell: sqlite_cell,
                    }),
                    Dialect::Sqlite,
                )
            }
            "postgres" => (
                Pool::Postgres(
                    Db::connect_lazy(&cfg.url, bind_pg, pg_cell).map_err(|e| AgentError::source(&name, e, false))?,
                ),
                Dialect::Postgres,
            ),
            "mysql" => (
                Pool::Mysql(
                    Db::connect_lazy(&cfg.url.replacen("mariadb://", "mysql://", 1), bind_mysql, mysql_cell)
                        .map_err(|e| AgentError::source(&name, e, false))?,
                ),
                Dialect::Mysql,
            ),
            other => {
                return Err(AgentError::source(
                    &name,
                    format!("`{other}` is not a sqlx source type"),
                    false,
                ));
            }
        };
        let (wm_col, key_col) = cfg.paging_columns();
        Ok(SqlSource {
            name,
            cfg: cfg.clone(),
            pool,
            dialect,
            wm_col,
            key_col,
        })
    }

    fn quote(&self, ident: &str) -> String {
        ident
            .split('.')
            .map(|p| match self.dialect {
                Dialect::Mysql => format!("`{}`", p.replace('`', "``")),
                _ => format!("\"{}\"", p.replace('"', "\"\"")),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    fn param(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("${n}"),
            _ => "?".into(),
        }
    }

    /// The row source as a subquery.
    fn base(&self) -> String {
        if let Some(ct) = &self.cfg.change_table {
            let table = self.quote(self.cfg.table.as_deref().unwrap_or_default());
            let tkey = self.quote(self.cfg.key.as_deref().unwrap_or(&ct.key));
            format!(
                "SELECT c.{seq} AS {alias}, t.* FROM {ctable} c JOIN {table} t ON t.{tkey} = c.{ckey}",
                seq = self.quote(&ct.seq),
                alias = SEQ_ALIAS,
                ctable = self.quote(&ct.table),
                ckey = self.quote(&ct.key),
            )
        } else if let Some(q) = &self.cfg.query {
            q.trim().trim_end_matches(';').to_string()
        } else {
            format!(
                "SELECT * FROM {}",
                self.quote(self.cfg.table.as_deref().unwrap_or_default())
            )
        }
    }

    /// The page query after `after` and its parameters (the watermark,
    /// and the key unless it is the watermark column).
    fn page_sql(&self, after: Option<&SqlCheckpoint>, limit: usize) -> (String, Vec<Cell>) {
        let wm = self.quote(&self.wm_col);
        let key = self.quote(&self.key_col);
        let same = self.wm_col == self.key_col;
        let (cond, binds) = match after {
            None => (String::new(), Vec::new()),
            Some(cp) if same => (format!(" WHERE {wm} > {}", self.param(1)), vec![cp.wm.clone()]),
            Some(cp) => (
                format!(" WHERE ({wm}, {key}) > ({}, {})", self.param(1), self.param(2)),
                vec![cp.wm.clone(), cp.key.clone()],
            ),
        };
        let order = if same { wm.clone() } else { format!("{wm}, {key}") };
        (
            format!(
                "SELECT * FROM ({}) vg_src{cond} ORDER BY {order} LIMIT {limit}",
                self.base()
            ),
            binds,
        )
    }

    /// Whether the database's plan for a page sorts the whole source
    /// instead of reading an index in (watermark, key) order.
    async fn sorts_every_page(&self) -> Result<bool, sqlx::Error> {
        let (sql, _) = self.page_sql(None, self.cfg.batch_size.max(1));
        Ok(match &self.pool {
            Pool::Sqlite(d) => d.all(format!("EXPLAIN QUERY PLAN {sql}"), &[]).await?.iter().any(|r| {
                r.try_get::<String, _>("detail")
                    .is_ok_and(|d| d.contains("TEMP B-TREE FOR ORDER BY"))
            }),
            Pool::Postgres(d) => d.all(format!("EXPLAIN {sql}"), &[]).await?.iter().any(|r| {
                r.try_get::<String, _>(0).is_ok_and(|line| {
                    let node = line.trim_start().trim_start_matches("->").trim_start();
                    node.starts_with("Sort ")
                })
            }),
            Pool::Mysql(d) => d.all(format!("EXPLAIN {sql}"), &[]).await?.iter().any(|r| {
                let extra = r.try_get::<Option<String>, _>("Extra").ok().flatten().or_else(|| {
                    r.try_get::<Option<Vec<u8>>, _>("Extra")
                        .ok()
                        .flatten()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                });
                extra.is_some_and(|e| e.contains("filesort"))
            }),
        })
    }
}

impl PullReader for SqlSource {
    fn open(kind: &str, cfg: &SqlSourceConfig) -> Result<SqlSource, AgentError> {
        SqlSource::new(kind, cfg)
    }

    fn accepts_url(kind: &str, url: &str) -> bool {
        match kind {
            "sqlite" => url.starts_with("sqlite:"),
            "postgres" => url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "mysql" => url.starts_with("mysql://") || url.starts_with("mariadb://"),
            _ => false,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &SqlSourceConfig {
        &self.cfg
    }

    /// Rows after `after`, at most `limit`, in watermark order.
    async fn fetch(&self, after: Option<&SqlCheckpoint>, limit: usize) -> Result<Vec<SourceRow>, AgentError> {
        let (sql, binds) = self.page_sql(after, limit);
        let name = &self.name;
        let fail = |e: sqlx::Error| AgentError::source(name, format!("reading rows: {e}"), is_transient(&e));
        let record_key_col = self
            .cfg
            .change_table
            .as_ref()
            .map(|ct| self.cfg.key.as_deref().unwrap_or(&ct.key));
        let wanted: Vec<&str> = [Some(self.wm_col.as_str()), Some(self.key_col.as_str()), record_key_col]
            .into_iter()
            .flatten()
            .collect();
        let rows = match &self.pool {
            Pool::Sqlite(d) => d.rows(sql, &binds, &wanted).await,
            Pool::Postgres(d) => d.rows(sql, &binds, &wanted).await,
            Pool::Mysql(d) => d.rows(sql, &binds, &wanted).await,
        }
        .map_err(fail)?
        .map_err(|e| AgentError::source(name, e, false))?;
        let cols = (self.wm_col.as_str(), self.key_col.as_str());
        let notes = (" (watermark, key)", "; such rows cannot be read incrementally");
        let mut out = Vec::with_capacity(rows.len());
        for (row, cells) in rows {
            out.push(source_row(name, &self.cfg, cols, row, &cells, notes)?);
        }
        Ok(out)
    }

    /// Rows after `after` (for the backfill progress bar).
    async fn count_after(&self, after: Option<&SqlCheckpoint>) -> Result<u64, AgentError> {
        let (page, binds) = self.page_sql(after, 1);
        let inner = page.rsplit_once(" ORDER BY ").map(|(a, _)| a).unwrap_or(&page);
        let sql = format!("SELECT COUNT(*) FROM ({inner}) vg_count");
        let name = &self.name;
        let fail = |e: sqlx::Error| AgentError::source(name, format!("counting rows: {e}"), is_transient(&e));
        let n = match &self.pool {
            Pool::Sqlite(d) => d.count(sql, &binds).await,
            Pool::Postgres(d) => d.count(sql, &binds).await,
            Pool::Mysql(d) => d.count(sql, &binds).await,
        }
        .map_err(fail)?;
        Ok(n.max(0) as u64)
    }

    /// Runs the `mark_processed` statement for each accepted key, in one
    /// source transaction.
    async fn mark_processed(&self, keys: &[Cell]) -> Result<(), AgentError> {
        let Some(stmt) = &self.cfg.mark_processed else {
            return Ok(());
        };
        if keys.is_empty() {
            return Ok(());
        }
        let sql = stmt.replacen("{key}", &self.param(1), 1);
        let name = &self.name;
        let fail = |e: sqlx::Error| AgentError::source(name, format!("mark_processed: {e}"), is_transient(&e));
        match &self.pool {
            Pool::Sqlite(d) => d.mark(&sql, keys).await,
            Pool::Postgres(d) => d.mark(&sql, keys).await,
            Pool::Mysql(d) => d.mark(&sql, keys).await,
        }
        .map_err(fail)
    }

    /// Connects and runs the page query with `LIMIT 1` (for `agent check`);
    /// warns when the database sorts the whole source for every page (no
    /// index on the watermark and key), which makes a backfill quadratic.
    async fn check(&self) -> Result<String, AgentError> {
        let rows = self.fetch(None, 1).await?;
        let total = self.count_after(None).await?;
        let mut out = match rows.first() {
            Some(r) => format!("connected; {total} rows; {} columns", r.row.len()),
            None => "connected; the table is empty".into(),
        };
        if let Ok(true) = self.sorts_every_page().await {
            let cols = if self.wm_col == self.key_col {
                self.wm_col.clone()
            } else {
                format!("{}, {}", self.wm_col, self.key_col)
            };
            out.push_str(&format!(
                "; warning: each page sorts the whole source (no usable index on ({cols})): \
                 create one before a large backfill"
            ));
        }
        Ok(out)
    }

    /// Closes the pool.
    async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(d) => d.pool.close().await,
            Pool::Postgres(d) => d.pool.close().await,
            Pool::Mysql(d) => d.pool.close().await,
        }
    }
}

type Decoded = (Map<String, Value>, Vec<(String, Cell)>);

/// A row as column → JSON value, plus the typed cells of the `wanted`
/// columns (watermark, key, record key).
fn decode_row<R: Row>(row: &R, cell: ReadCell<R::Database>, wanted: &[&str]) -> Result<Decoded, String>
where
    usize: sqlx::ColumnIndex<R>,
{
    let mut map = Map::new();
    let mut cells = Vec::with_capacity(wanted.len());
    for (i, c) in row.columns().iter().enumerate() {
        let v = read_cell(row, i, cell).map_err(|e| format!("column `{}`: {e}", c.name()))?;
        if wanted.contains(&c.name()) {
            cells.push((c.name().to_string(), v.clone()));
        }
        map.insert(c.name().to_string(), v.into_json());
    }
    Ok((map, cells))
}

fn e2s(e: sqlx::Error) -> String {
    e.to_string()
}

/// Reads column `i` of `row`: NULL is [`Cell::Null`], any other value is
/// read by the database's `typed` given its type name (upper case).
fn read_cell<R: Row>(row: &R, i: usize, typed: ReadCell<R::Database>) -> Result<Cell, String>
where
    usize: sqlx::ColumnIndex<R>,
{
    let raw = row.try_get_raw(i).map_err(e2s)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let ty = raw.type_info().name().to_ascii_uppercase();
    typed(row, i, &ty)
}

fn sqlite_cell(row: &SqliteRow, i: usize, ty: &str) -> Result<Cell, String> {
    Ok(match ty {
        "INTEGER" | "INT" | "BIGINT" => Cell::I64(row.try_get(i).map_err(e2s)?),
        "REAL" | "FLOAT" | "DOUBLE" | "NUMERIC" => match row.try_get::<f64, _>(i) {
            Ok(f) => Cell::F64(f),
            Err(_) => Cell::Text(row.try_get_unchecked(i).map_err(e2s)?),
        },
        "BOOLEAN" => Cell::Bool(row.try_get(i).map_err(e2s)?),
        "BLOB" => return Err("BLOB values are not supported; select them as hex or text".into()),
        _ => Cell::Text(row.try_get_unchecked(i).map_err(e2s)?),
    })
}

fn pg_cell(row: &PgRow, i: usize, ty: &str) -> Result<Cell, String> {
    Ok(match ty {
        "BOOL" => Cell::Bool(row.try_get(i).map_err(e2s)?),
        "INT2" => Cell::I64(i64::from(row.try_get::<i16, _>(i).map_err(e2s)?)),
        "INT4" => Cell::I64(i64::from(row.try_get::<i32, _>(i).map_err(e2s)?)),
        "INT8" => Cell::I64(row.try_get(i).map_err(e2s)?),
        "FLOAT4" => Cell::F64(f64::from(row.try_get::<f32, _>(i).map_err(e2s)?)),
        "FLOAT8" => Cell::F64(row.try_get(i).map_err(e2s)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => Cell::Text(row.try_get(i).map_err(e2s)?),
        "TIMESTAMP" => Cell::Ts(row.try_get(i).map_err(e2s)?),
        "TIMESTAMPTZ" => Cell::Tstz(row.try_get(i).map_err(e2s)?),
        "DATE" => Cell::Date(row.try_get(i).map_err(e2s)?),
        "JSON" | "JSONB" => Cell::Json(row.try_get(i).map_err(e2s)?),
        other => {
            return Err(format!(
                "PostgreSQL type {other} is not read directly; cast it in the source query (e.g. `col::text`)"
            ));
        }
    })
}

fn mysql_cell(row: &MySqlRow, i: usize, ty: &str) -> Result<Cell, String> {
    Ok(match ty {
        "BOOLEAN" => Cell::Bool(row.try_get(i).map_err(e2s)?),
        "TINYINT" => Cell::I64(i64::from(row.try_get::<i8, _>(i).map_err(e2s)?)),
        "SMALLINT" => Cell::I64(i64::from(row.try_get::<i16, _>(i).map_err(e2s)?)),
        "INT" | "MEDIUMINT" => Cell::I64(i64::from(row.try_get::<i32, _>(i).map_err(e2s)?)),
        "BIGINT" => Cell::I64(row.try_get(i).map_err(e2s)?),
        "TINYINT UNSIGNED" => Cell::I64(i64::from(row.try_get::<u8, _>(i).map_err(e2s)?)),
        "SMALLINT UNSIGNED" => Cell::I64(i64::from(row.try_get::<u16, _>(i).map_err(e2s)?)),
        "INT UNSIGNED" | "MEDIUMINT UNSIGNED" => Cell::I64(i64::from(row.try_get::<u32, _>(i).map_err(e2s)?)),
        "BIGINT UNSIGNED" => {
            let v: u64 = row.try_get(i).map_err(e2s)?;
            i64::try_from(v)
                .map(Cell::I64)
                .unwrap_or_else(|_| Cell::Text(v.to_string()))
        }
        "YEAR" => Cell::I64(i64::from(row.try_get::<u16, _>(i).map_err(e2s)?)),
        "FLOAT" => Cell::F64(f64::from(row.try_get::<f32, _>(i).map_err(e2s)?)),
        "DOUBLE" => Cell::F64(row.try_get(i).map_err(e2s)?),
        "DECIMAL" => Cell::Text(row.try_get_unchecked(i).map_err(e2s)?),
        "DATETIME" => Cell::Ts(row.try_get(i).map_err(e2s)?),
        "TIMESTAMP" => Cell::Tstz(row.try_get(i).map_err(e2s)?),
        "DATE" => Cell::Date(row.try_get(i).map_err(e2s)?),
        "JSON" => Cell::Json(row.try_get(i).map_err(e2s)?),
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY" | "BIT" => {
            return Err(format!(
                "MySQL type {ty} is not read directly; convert it in the source query"
            ));
        }
        _ => Cell::Text(row.try_get(i).map_err(e2s)?),
    })
}

macro_rules! binder {
    ($name:ident, $db:ty) => {
        fn $name<'q>(
            q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            c: &Cell,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            match c.clone() {
                Cell::Null => q.bind(None::<String>),
                Cell::Bool(b) => q.bind(b),
                Cell::I64(i) => q.bind(i),
                Cell::F64(f) => q.bind(f),
                Cell::Text(s) => q.bind(s),
                Cell::Ts(t) => q.bind(t),
                Cell::Tstz(t) => q.bind(t),
                Cell::Date(d) => q.bind(d),
                Cell::Json(v) => q.bind(v.to_string()),
            }
        }
    };
}
binder!(bind_sqlite, sqlx::Sqlite);
binder!(bind_pg, sqlx::Postgres);
binder!(bind_mysql, sqlx::MySql);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> SqlSourceConfig {
        toml::from_str(&format!(
            "name = \"t\"\nmapping = \"m.toml\"\nurl = \"{url}\"\ntable = \"T_JZ_JZJL\"\nwatermark = \"JZRQ\"\nkey = \"JZJL_ID\"\nbatch_size = 2\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn sqlite_keyset_pages_resume_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = dir.path().join("s.db");
        let url = format!("sqlite:{}?mode=rwc", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("CREATE TABLE T_JZ_JZJL (JZJL_ID TEXT PRIMARY KEY, JZRQ TEXT, JC INTEGER, JL REAL, X TEXT)")
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Five rows, three sharing one watermark (the tie-breaker decides).
        for (id, t) in [("b", "2"), ("a", "2"), ("c", "2"), ("d", "1"), ("e", "3")] {
            sqlx::query("INSERT INTO T_JZ_JZJL VALUES (?, ?, 3, 0.5, NULL)")
                .bind(id)
                .bind(t)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let src = SqlSource::new("sqlite", &cfg(&format!("sqlite:{}", db.display()))).unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        let mut cp: Option<SqlCheckpoint> = None;
        loop {
            let rows = src.fetch(cp.as_ref(), 2).await.unwrap_or_else(|e| panic!("{e}"));
            let Some(last) = rows.last() else { break };
            // The checkpoint goes through JSON, as in the state database.
            let json = serde_json::to_string(&last.position).unwrap_or_default();
            cp = serde_json::from_str(&json).ok();
            seen.extend(rows.iter().map(|r| r.key.key_string()));
        }
        assert_eq!(seen, ["d", "a", "b", "c", "e"]);
        let rows = src.fetch(None, 1).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows[0].row["JC"], Value::from(3));
        assert_eq!(rows[0].row["JL"], serde_json::json!(0.5));
        assert_eq!(rows[0].row["X"], Value::Null);
        assert_eq!(src.count_after(cp.as_ref()).await.unwrap_or(99), 0);
    }
}
