//! Which database a ledger lives in: the one place that lists the backends
//! (SQLite, PostgreSQL) and what differs in their SQL. Everything that
//! exists once per backend — a store, a borrowed connection, a reader, the
//! gateway's own tables — is a [`Backend`] of the two; code that is the same
//! on both is written once and stamped out per backend with
//! [`on_backend!`](crate::on_backend) and [`each_backend!`](crate::each_backend).
//!
//! **Who writes what.** The ledger's tables are written only by a block
//! commit. Tables derived from the ledger (the gateway's projection and
//! custody tables, its forwarding cursor) are written only through the
//! ledger's committing connection: inside a block's own database
//! transaction ([`SideWrite`](super::SideWrite)), or in a
//! [`SideTx`] on that connection outside any block. A [`Reader`] comes from
//! the pool of readers and is for queries only.

use sqlx::pool::PoolConnection;
use sqlx::{Database, Encode, PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection, Type};

use crate::error::LedgerError;

/// One value per database backend: a store, a connection, a query of it.
#[derive(Debug, Clone)]
pub enum Backend<S, P> {
    /// SQLite, the embedded default.
    Sqlite(S),
    /// PostgreSQL, for production.
    Postgres(P),
}

/// `on_backend!(x, v => expr)`: `expr` with `v` bound to the value of
/// whichever backend the [`Backend`] `x` holds. `expr` is compiled once per
/// backend, so it may call code that differs by type (an sqlx connection or
/// pool of each database) with the same text.
#[macro_export]
macro_rules! on_backend {
    ($x:expr, $v:pat => $e:expr) => {
        match $x {
            $crate::Backend::Sqlite($v) => $e,
            $crate::Backend::Postgres($v) => $e,
        }
    };
}

/// `each_backend!(m)` invokes the caller's macro `m!(Database, Connection)`
/// once per backend with its sqlx database and connection types, e.g. to
/// implement a trait of the caller's on each backend's connection (then
/// called through [`on_backend!`](crate::on_backend)).
#[macro_export]
macro_rules! each_backend {
    ($m:ident) => {
        $m!(
            $crate::store::backend::sqlx::Sqlite,
            $crate::store::backend::sqlx::SqliteConnection
        );
        $m!(
            $crate::store::backend::sqlx::Postgres,
            $crate::store::backend::sqlx::PgConnection
        );
    };
}

#[doc(hidden)]
pub use sqlx;

/// A connection of the store lent for writing: a block's own database
/// transaction (to a [`SideWrite`](super::SideWrite)), or a [`SideTx`].
pub type SideConn<'c> = Backend<&'c mut SqliteConnection, &'c mut PgConnection>;

/// A connection from the store's pool of readers: for queries, never for
/// writes (those go through [`SideTx`] or a side write).
pub type Reader = Backend<PoolConnection<Sqlite>, PoolConnection<Postgres>>;

/// A database transaction on the connection that commits blocks, for
/// writing tables the ledger does not own (never the ledger's: their
/// triggers refuse updates and deletes, and an insert would be a block
/// without its checks). It waits for the block being committed, and blocks
/// wait for it: keep it short and do not append while holding it. Dropped
/// without [`SideTx::commit`], it is rolled back.
#[derive(Debug)]
pub struct SideTx {
    pub(crate) location: String,
    pub(crate) tx: Backend<sqlx::Transaction<'static, Sqlite>, sqlx::Transaction<'static, Postgres>>,
}

impl SideTx {
    /// The transaction's connection.
    pub fn conn(&mut self) -> SideConn<'_> {
        match &mut self.tx {
            Backend::Sqlite(t) => Backend::Sqlite(&mut **t),
            Backend::Postgres(t) => Backend::Postgres(&mut **t),
        }
    }

    /// Commits; durable when it returns, like a block.
    pub async fn commit(self) -> Result<(), LedgerError> {
        let location = self.location;
        on_backend!(self.tx, t => t.commit().await).map_err(|e| LedgerError::storage(&location, e))
    }
}

/// What differs in the SQL of the backends, for statements and schemas
/// written once: `{int}`, `{blob}` and `{wr}` in a template
/// ([`Dialect::sql`]), and the few statements that are not the same text.
/// Placeholders need no dialect: `$1`, `$2` ... are PostgreSQL's and SQLite
/// reads them too (sqlx binds them by number), and `QueryBuilder` writes
/// each database's own.
pub trait Dialect: sqlx::Database {
    /// `{int}`: a 64-bit integer column (in SQLite `INTEGER`, which makes an
    /// `INTEGER PRIMARY KEY` the table's rowid).
    const INTEGER: &'static str;
    /// `{blob}`: a byte-string column.
    const BLOB: &'static str;
    /// `{wr}`, after the closing parenthesis of a `CREATE TABLE`: a table
    /// that is its primary key (SQLite stores it as that key alone).
    const WITHOUT_ROWID: &'static str;
    /// Returns a row when the table named by its one parameter exists in the
    /// ledger's database (schema).
    const TABLE_EXISTS: &'static str;

    /// `template` with `{int}`, `{blob}` and `{wr}` replaced.
    fn sql(template: &str) -> String {
        template
            .replace("{int}", Self::INTEGER)
            .replace("{blob}", Self::BLOB)
            .replace("{wr}", Self::WITHOUT_ROWID)
    }
}

impl Dialect for Sqlite {
    const INTEGER: &'static str = "INTEGER";
    const BLOB: &'static str = "BLOB";
    const WITHOUT_ROWID: &'static str = " WITHOUT ROWID";
    const TABLE_EXISTS: &'static str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1";
}

impl Dialect for Postgres {
    const INTEGER: &'static str = "BIGINT";
    const BLOB: &'static str = "BYTEA";
    const WITHOUT_ROWID: &'static str = "";
    const TABLE_EXISTS: &'static str = "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1";
}

/// Pushes `values` onto `qb` as bound parameters separated by commas (the
/// inside of an `IN (...)` list), with the backend's own placeholders.
pub fn push_list<DB, T>(qb: &mut QueryBuilder<DB>, values: impl IntoIterator<Item = T>) -> &mut QueryBuilder<DB>
where
    DB: Database,
    T: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    qb
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn lists_are_bound_with_each_backends_placeholders() {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT x FROM t WHERE id IN (");
        super::push_list(&mut q, [1i64, 2, 3]).push(") ORDER BY x");
        assert_eq!(q.sql().as_str(), "SELECT x FROM t WHERE id IN ($1, $2, $3) ORDER BY x");
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT x FROM t WHERE id IN (");
        super::push_list(&mut q, ["a".to_string()]).push(")");
        assert_eq!(q.sql().as_str(), "SELECT x FROM t WHERE id IN (?)");
    }

    #[test]
    fn templates_are_filled_per_backend() {
        let t = "CREATE TABLE t (id {int} PRIMARY KEY, b {blob} NOT NULL){wr}";
        assert_eq!(
            <sqlx::Sqlite as Dialect>::sql(t),
            "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL) WITHOUT ROWID"
        );
        assert_eq!(
            <sqlx::Postgres as Dialect>::sql(t),
            "CREATE TABLE t (id BIGINT PRIMARY KEY, b BYTEA NOT NULL)"
        );
    }
}
