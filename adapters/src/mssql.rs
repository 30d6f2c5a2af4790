//! SQL Server source on tiberius, with the same semantics as the sqlx
//! sources ([`crate::sql`]): keyset pagination by `(watermark, key)`
//! (expanded to `wm > @P1 OR (wm = @P1 AND key > @P2)`, SQL Server has no
//! row values), `TOP (n)`, an optional change table and `mark_processed`.
//!
//! `url` is an ADO.NET connection string, e.g.
//! `server=tcp:10.0.0.5,1433;database=HIS;user=vaxgate;password=${MSSQL_PASSWORD};encrypt=true;trustservercertificate=false`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde_json::Map;
use tiberius::{Client, ColumnData, Config, FromSql, ToSql};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt as _};

use crate::error::AgentError;
use crate::pull::{CHANGE_SEQ_ALIAS as SEQ_ALIAS, PullReader, SqlSourceConfig, source_row};
use crate::sql::{Cell, SourceRow, SqlCheckpoint};

type Conn = Client<Compat<TcpStream>>;

/// A SQL Server source.
pub struct MssqlSource {
    name: String,
    cfg: SqlSourceConfig,
    tds: Config,
    conn: Mutex<Option<Conn>>,
    wm_col: String,
    key_col: String,
}

impl std::fmt::Debug for MssqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlSource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn transient(e: &tiberius::error::Error) -> bool {
    matches!(
        e,
        tiberius::error::Error::Io { .. } | tiberius::error::Error::Tls(_) | tiberius::error::Error::Routing { .. }
    )
}

impl MssqlSource {
    /// A source for `cfg` (connects on first use).
    pub fn new(cfg: &SqlSourceConfig) -> Result<MssqlSource, AgentError> {
        let tds = Config::from_ado_string(&cfg.url)
            .map_err(|e| AgentError::source(&cfg.name, format!("connection string: {e}"), false))?;
        let (wm_col, key_col) = cfg.paging_columns();
        Ok(MssqlSource {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            tds,
            conn: Mutex::new(None),
            wm_col,
            key_col,
        })
    }

    fn quote(ident: &str) -> String {
        ident
            .split('.')
            .map(|p| format!("[{}]", p.replace(']', "]]")))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn base(&self) -> String {
        if let Some(ct) = &self.cfg.change_table {
            let table = Self::quote(self.cfg.table.as_deref().unwrap_or_default());
            let tkey = Self::quote(self.cfg.key.as_deref().unwrap_or(&ct.key));
            format!(
                "SELECT c.{seq} AS {SEQ_ALIAS}, t.* FROM {ctable} c JOIN {table} t ON t.{tkey} = c.{ckey}",
                seq = Self::quote(&ct.seq),
                ctable = Self::quote(&ct.table),
                ckey = Self::quote(&ct.key),
            )
        } else if let Some(q) = &self.cfg.query {
            q.trim().trim_end_matches(';').to_string()
        } else {
            format!(
                "SELECT * FROM {}",
                Self::quote(self.cfg.table.as_deref().unwrap_or_default())
            )
        }
    }

    fn condition(&self, after: Option<&SqlCheckpoint>) -> (String, Vec<Cell>) {
        let wm = Self::quote(&self.wm_col);
        let key = Self::quote(&self.key_col);
        match after {
            None => (String::new(), Vec::new()),
            Some(cp) if self.wm_col == self.key_col => (format!(" WHERE {wm} > @P1"), vec![cp.wm.clone()]),
            Some(cp) => (
                format!(" WHERE {wm} > @P1 OR ({wm} = @P1 AND {key} > @P2)"),
                vec![cp.wm.clone(), cp.key.clone()],
            ),
        }
    }

    async fn connect(&self) -> Result<Conn, AgentError> {
        let tcp = TcpStream::connect(self.tds.get_addr())
            .await
            .map_err(|e| AgentError::source(&self.name, format!("connecting to {}: {e}", self.tds.get_addr()), true))?;
        let _ = tcp.set_nodelay(true);
        Client::connect(self.tds.clone(), tcp.compat_write())
            .await
            .map_err(|e| AgentError::source(&self.name, format!("login: {e}"), transient(&e)))
    }

    /// Runs `sql` with `params`; the first result set. Reconnects once
    /// after a lost connection.
    async fn query(&self, sql: &str, params: &[Cell]) -> Result<Vec<tiberius::Row>, AgentError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let boxed: Vec<Box<dyn ToSql>> = params.iter().map(to_sql).collect();
        let refs: Vec<&dyn ToSql> = boxed.iter().map(|b| b.as_ref()).collect();
        let Some(client) = guard.as_mut() else {
            return Err(AgentError::source(&self.name, "no connection", true));
        };
        let result = match client.query(sql, &refs).await {
            Ok(stream) => stream.into_first_result().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => {
                let t = transient(&e);
                if t {
                    *guard = None;
                }
                Err(AgentError::source(&self.name, format!("query: {e}"), t))
            }
        }
    }
}

impl PullReader for MssqlSource {
    fn open(_kind: &str, cfg: &SqlSourceConfig) -> Result<MssqlSource, AgentError> {
        MssqlSource::new(cfg)
    }

    /// An ADO.NET connection string (parsed when the source is opened).
    fn accepts_url(_kind: &str, url: &str) -> bool {
        !url.is_empty()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &SqlSourceConfig {
        &self.cfg
    }

    /// Rows after `after`, at most `limit`, in watermark order.
    async fn fetch(&self, after: Option<&SqlCheckpoint>, limit: usize) -> Result<Vec<SourceRow>, AgentError> {
        let (cond, params) = self.condition(after);
        let order = if self.wm_col == self.key_col {
            Self::quote(&self.wm_col)
        } else {
            format!("{}, {}", Self::quote(&self.wm_col), Self::quote(&self.key_col))
        };
        let sql = format!(
            "SELECT TOP ({limit}) * FROM ({}) vg_src{cond} ORDER BY {order}",
            self.base()
        );
        let rows = self.query(&sql, &params).await?;
        let cols = (self.wm_col.as_str(), self.key_col.as_str());
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let names: Vec<String> = row.columns().iter().map(|c| c.name().to_string()).collect();
            let mut map = Map::new();
            let mut cells = Vec::with_capacity(names.len());
            for (name, data) in names.into_iter().zip(row) {
                let cell =
                    cell(&data).map_err(|e| AgentError::source(&self.name, format!("column `{name}`: {e}"), false))?;
                map.insert(name.clone(), cell.to_json());
                cells.push((name, cell));
            }
            out.push(source_row(&self.name, &self.cfg, cols, map, &cells, ("", ""))?);
        }
        Ok(out)
    }

    /// Rows after `after`.
    async fn count_after(&self, after: Option<&SqlCheckpoint>) -> Result<u64, AgentError> {
        let (cond, params) = self.condition(after);
        let sql = format!("SELECT COUNT_BIG(*) AS n FROM ({}) vg_src{cond}", self.base());
        let rows = self.query(&sql, &params).await?;
        let n = rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .and_then(|d| match d {
                ColumnData::I64(v) => v,
                ColumnData::I32(v) => v.map(i64::from),
                _ => None,
            })
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    /// Runs `mark_processed` for each accepted key.
    async fn mark_processed(&self, keys: &[Cell]) -> Result<(), AgentError> {
        let Some(stmt) = &self.cfg.mark_processed else {
            return Ok(());
        };
        let sql = stmt.replacen("{key}", "@P1", 1);
        for k in keys {
            self.query(&sql, std::slice::from_ref(k)).await?;
        }
        Ok(())
    }

    /// Connects and reads one row (for `agent check`).
    async fn check(&self) -> Result<String, AgentError> {
        let rows = self.fetch(None, 1).await?;
        let total = self.count_after(None).await?;
        Ok(match rows.first() {
            Some(r) => format!("connected; {total} rows; {} columns", r.row.len()),
            None => "connected; the table is empty".into(),
        })
    }

    /// Drops the connection.
    async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.close().await;
        }
    }
}

fn to_sql(c: &Cell) -> Box<dyn ToSql> {
    match c.clone() {
        Cell::Null => Box::new(Option::<String>::None),
        Cell::Bool(b) => Box::new(b),
        Cell::I64(i) => Box::new(i),
        Cell::F64(f) => Box::new(f),
        Cell::Text(s) => Box::new(s),
        Cell::Ts(t) => Box::new(t),
        Cell::Tstz(t) => Box::new(t),
        Cell::Date(d) => Box::new(d),
        Cell::Json(v) => Box::new(v.to_string()),
    }
}

fn cell(d: &ColumnData<'static>) -> Result<Cell, String> {
    let e = |e: tiberius::error::Error| e.to_string();
    Ok(match d {
        ColumnData::U8(v) => v.map(|x| Cell::I64(i64::from(x))).unwrap_or(Cell::Null),
        ColumnData::I16(v) => v.map(|x| Cell::I64(i64::from(x))).unwrap_or(Cell::Null),
        ColumnData::I32(v) => v.map(|x| Cell::I64(i64::from(x))).unwrap_or(Cell::Null),
        ColumnData::I64(v) => v.map(Cell::I64).unwrap_or(Cell::Null),
        ColumnData::F32(v) => v.map(|x| Cell::F64(f64::from(x))).unwrap_or(Cell::Null),
        ColumnData::F64(v) => v.map(Cell::F64).unwrap_or(Cell::Null),
        ColumnData::Bit(v) => v.map(Cell::Bool).unwrap_or(Cell::Null),
        ColumnData::String(v) => v.as_ref().map(|s| Cell::Text(s.to_string())).unwrap_or(Cell::Null),
        ColumnData::Guid(v) => v.map(|g| Cell::Text(g.to_string())).unwrap_or(Cell::Null),
        ColumnData::Numeric(v) => v.map(|n| Cell::Text(n.to_string())).unwrap_or(Cell::Null),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => NaiveDateTime::from_sql(d)
            .map_err(e)?
            .map(Cell::Ts)
            .unwrap_or(Cell::Null),
        ColumnData::Date(_) => NaiveDate::from_sql(d).map_err(e)?.map(Cell::Date).unwrap_or(Cell::Null),
        ColumnData::Time(_) => NaiveTime::from_sql(d)
            .map_err(e)?
            .map(|t| Cell::Text(t.format("%H:%M:%S%.f").to_string()))
            .unwrap_or(Cell::Null),
        ColumnData::DateTimeOffset(_) => DateTime::<Utc>::from_sql(d)
            .map_err(e)?
            .map(Cell::Tstz)
            .unwrap_or(Cell::Null),
        ColumnData::Binary(None) | ColumnData::Xml(None) => Cell::Null,
        ColumnData::Xml(Some(x)) => Cell::Text(x.to_string()),
        ColumnData::Binary(Some(_)) => {
            return Err("binary values are not read directly; convert them in the query".into());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_condition_is_expanded_for_sql_server() {
        let cfg: SqlSourceConfig = toml::from_str(
            "name = \"his\"\nmapping = \"m.toml\"\nurl = \"server=tcp:127.0.0.1,1433;user=u;password=p\"\n\
             table = \"dbo.T_JZ_JZJL\"\nwatermark = \"GXSJ\"\nkey = \"JZJL_ID\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = MssqlSource::new(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let cp = SqlCheckpoint {
            wm: Cell::I64(5),
            key: Cell::Text("a".into()),
        };
        let (cond, params) = s.condition(Some(&cp));
        assert_eq!(cond, " WHERE [GXSJ] > @P1 OR ([GXSJ] = @P1 AND [JZJL_ID] > @P2)");
        assert_eq!(params.len(), 2);
        assert_eq!(s.base(), "SELECT * FROM [dbo].[T_JZ_JZJL]");
    }
}
