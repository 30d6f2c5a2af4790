//! For the agent tests: agent configs for a [`Node`], `vaxgate agent`,
//! the agent's state, ledger queries, and legacy clinic rows (`T_JZ_JZJL`,
//! config/mappings/README.md) in SQLite.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use super::{Ent, Node, block_on, vaxgate};

/// The name of the clinic's SQL source in [`Node::agent_config`].
pub const SOURCE: &str = "clinic-ims";

/// The source lines reading the clinic table `T_JZ_JZJL` (of
/// [`clinic_row`]s) by its watermark `JZRQ`, ties broken by `JZJL_ID`; a
/// test adds its `batch_size` and the like.
pub const CLINIC_BY_JZRQ: &str = "table = \"T_JZ_JZJL\"\nwatermark = \"JZRQ\"\nkey = \"JZJL_ID\"\n";

/// A gateway for agents with the clinic registered ([`Node::register_clinic`]),
/// and a new directory for the agent's files.
pub fn clinic_gateway() -> (Node, Ent, tempfile::TempDir) {
    let gw = Node::start_for_agents();
    let clinic = gw.register_clinic();
    (gw, clinic, tempfile::tempdir().unwrap())
}

/// The `[[sources]]` table of a SQL source `name` of `kind` at `url`
/// mapped by `mapping`, with the lines `source_extra` (table, watermark,
/// ...).
pub fn sql_source(name: &str, kind: &str, url: &str, source_extra: &str, mapping: &Path) -> String {
    format!(
        r#"[[sources]]
type = "{kind}"
name = "{name}"
mapping = "{mapping}"
url = "{url}"
{source_extra}"#,
        mapping = mapping.display(),
    )
}

impl Node {
    /// Writes an agent config in `dir` submitting as `e` with the given
    /// `[[sources]]` tables; returns its path.
    pub fn agent_config_with(&self, dir: &Path, e: &Ent, sources: &str) -> PathBuf {
        self.write_agent_config(dir, e, 500, sources)
    }

    /// Writes an agent config in `dir` submitting as `e` with one SQL
    /// source ([`SOURCE`]) of `kind` at `url` mapped by `mapping`, with
    /// the lines `source_extra` (table, watermark, ...); returns its path.
    pub fn agent_config(
        &self,
        dir: &Path,
        e: &Ent,
        kind: &str,
        url: &str,
        source_extra: &str,
        mapping: &Path,
    ) -> PathBuf {
        self.write_agent_config(dir, e, 1000, &sql_source(SOURCE, kind, url, source_extra, mapping))
    }

    /// [`Node::agent_config`] of the clinic table in the SQLite file `db`
    /// ([`sqlite_clinic`]) read as [`CLINIC_BY_JZRQ`] says, plus the
    /// lines `extra` (`batch_size`, ...).
    pub fn sqlite_agent_config(&self, dir: &Path, e: &Ent, db: &Path, mapping: &Path, extra: &str) -> PathBuf {
        let url = format!("sqlite:{}", db.display());
        self.agent_config(dir, e, "sqlite", &url, &format!("{CLINIC_BY_JZRQ}{extra}"), mapping)
    }

    fn write_agent_config(&self, dir: &Path, e: &Ent, retry_max_ms: u64, sources: &str) -> PathBuf {
        let text = format!(
            r#"# written by the agent tests
[agent]
entity_id = "{entity_id}"
key = "{key}"
state_db = "{state}"

[gateway]
url = "{base}"
node_key = "{node}"
timeout_secs = 30
attempts = 2
retry_base_ms = 100
retry_max_ms = {retry_max_ms}

{sources}
"#,
            entity_id = e.id,
            key = e.key_file.display(),
            state = dir.join("agent-state.db").display(),
            base = self.base,
            node = self.dir.join("keys/node.pub.pem").display(),
        );
        let p = dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `vaxgate agent --config C ARGS...`, to run or spawn.
pub fn agent_command(config: &Path, args: &[&str]) -> Command {
    let mut c = vaxgate();
    c.args(["agent", "--config", config.to_str().unwrap()]).args(args);
    c
}

/// Runs `vaxgate agent --config C ARGS...`.
pub fn agent(config: &Path, args: &[&str]) -> Output {
    agent_command(config, args).output().unwrap()
}

/// The agent state database's (in `dir`) event counts per status for `source`.
pub fn event_counts(dir: &Path, source: &str) -> Vec<(String, i64)> {
    block_on(async {
        let s = adapters::StateDb::open(&dir.join("agent-state.db")).await.unwrap();
        let c = s.event_counts(source).await.unwrap();
        s.close().await;
        c
    })
}

/// The `(record_id, category)` of every transaction in the ledger.
pub fn ledger_records(db: &Path) -> Vec<(String, String)> {
    block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT record_id, category FROM transactions ORDER BY leaf_index")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows
    })
}

/// The record ids of the ledger's transactions of `category`, asserting
/// that none is there twice.
pub fn ledger_ids(db: &Path, category: &str) -> BTreeSet<String> {
    let ids: Vec<String> = ledger_records(db)
        .into_iter()
        .filter(|(_, c)| c == category)
        .map(|(r, _)| r)
        .collect();
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a {category} event is in the ledger twice");
    set
}

/// The event ids the clinic source derives for these record keys.
pub fn expected_event_ids(keys: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    keys.into_iter()
        .map(|k| mappings::TraceEvent::derive_id(SOURCE, "vaccination", &k).to_string())
        .collect()
}

/// Asserts the ledger holds exactly `expected` vaccination events, each once.
pub fn assert_exactly_once(db: &Path, expected: &BTreeSet<String>) {
    let rows = ledger_records(db);
    let vacc: Vec<&String> = rows
        .iter()
        .filter(|(_, c)| c == "vaccination")
        .map(|(r, _)| r)
        .collect();
    let distinct: BTreeSet<String> = vacc.iter().map(|s| s.to_string()).collect();
    assert_eq!(distinct.len(), vacc.len(), "duplicate event ids in the ledger");
    let missing = expected.difference(&distinct).count();
    let extra = distinct.difference(expected).count();
    assert_eq!(
        (vacc.len(), missing, extra),
        (expected.len(), 0, 0),
        "ledger vaccination events vs the source rows"
    );
}

/// The record key of clinic row `i`.
pub fn row_key(i: usize) -> String {
    format!("JZ{i:010}")
}

/// Clinic row `i` (T_JZ_JZJL): every 7 consecutive rows share one JZRQ
/// (the watermark), so the tie-breaker key matters. `bad` rows carry a
/// vaccination-site code missing from the spec's `jzbw` table.
pub fn clinic_row(i: usize, bad: bool) -> Value {
    let t = chrono::NaiveDate::from_ymd_opt(2024, 3, 5)
        .unwrap()
        .and_hms_opt(8, 0, 0)
        .unwrap()
        + chrono::Duration::seconds((i / 7) as i64);
    json!({
        "JZJL_ID": row_key(i),
        "SZZBM": format!("320102000120{:06}", i % 1_000_000),
        "SZZ_XM": "王小明",
        "SZZ_XB": if i.is_multiple_of(2) { "男" } else { "女" },
        "CSRQ": "2023/01/15",
        "ZJLX": "2",
        "ZJHM": "320102202301150028",
        "LXDH": "13812345678",
        "JTZZ": "江苏省南京市玄武区中山路1号",
        "JHR_XM": "王大伟",
        "YMBM": "0201",
        "YMMC": "乙肝疫苗(酿酒酵母)",
        "JC": (i % 3 + 1).to_string(),
        "YMPH": "202311a05",
        "YXQ": "2026/11/30",
        "DZJGM": format!("8612345{:013}", i),
        "JZRQ": t.format("%Y%m%d%H%M%S").to_string(),
        "JZBW": if bad { "SX0504_9" } else { "SX0504_1" },
        "JZTJ": "SX0507_1",
        "JZYS": "李医生",
        "JZDW_BM": "3201020001",
        "JZDW_MC": "玄武区梅园社区卫生服务中心预防接种门诊",
        "SCQY_BM": "SZ01",
        "SCQY_MC": "深圳康泰生物制品股份有限公司",
        "JL": "0.5",
        "BZJC": 1,
        "SJLY": "1"
    })
}

/// The clinic table's columns (all TEXT except BZJC INTEGER).
pub const COLUMNS: &[&str] = &[
    "JZJL_ID", "SZZBM", "SZZ_XM", "SZZ_XB", "CSRQ", "ZJLX", "ZJHM", "LXDH", "JTZZ", "JHR_XM", "YMBM", "YMMC", "JC",
    "YMPH", "YXQ", "DZJGM", "JZRQ", "JZBW", "JZTJ", "JZYS", "JZDW_BM", "JZDW_MC", "SCQY_BM", "SCQY_MC", "JL", "BZJC",
    "SJLY",
];

/// Creates `T_JZ_JZJL` in a SQLite file and inserts rows `range`.
pub fn sqlite_clinic(db: &Path, range: std::ops::Range<usize>, bad: &dyn Fn(usize) -> bool) {
    sqlite_clinic_rows(db, range.map(|i| clinic_row(i, bad(i))).collect());
}

/// Creates `T_JZ_JZJL` in a SQLite file and inserts `rows` (from
/// [`clinic_row`], changed as a test needs).
pub fn sqlite_clinic_rows(db: &Path, rows: Vec<Value>) {
    sqlite_table_rows(
        db,
        "T_JZ_JZJL",
        "JZJL_ID",
        COLUMNS,
        &|c| if c == "BZJC" { "INTEGER" } else { "TEXT" },
        rows,
    );
}

/// Creates table `table` (primary key `key`, `columns` typed by `ty`: ""
/// leaves a column untyped) in a SQLite file if needed and inserts `rows`
/// (JSON objects by column name; numbers as integers, strings as text,
/// anything else NULL).
pub fn sqlite_table_rows(
    db: &Path,
    table: &str,
    key: &str,
    columns: &[&str],
    ty: &dyn Fn(&str) -> &'static str,
    rows: Vec<Value>,
) {
    block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} {}", ty(c)).trim().to_string())
            .collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({key}))",
            cols.join(", ")
        )))
        .execute(&pool)
        .await
        .unwrap();
        let ph = vec!["?"; columns.len()].join(", ");
        let sql = format!("INSERT INTO {table} ({}) VALUES ({ph})", columns.join(", "));
        let mut tx = pool.begin().await.unwrap();
        for row in rows {
            row_query(&sql, &row, columns, |n| n).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    });
}

/// The statement `sql` with the `columns` of `row` (a JSON object by column
/// name) bound in order: numbers as integers (through `int`, for the
/// database's integer column type), strings as text, anything else NULL.
pub fn row_query<DB, I>(sql: &str, row: &Value, columns: &[&str], int: fn(i64) -> I) -> RowQuery<DB>
where
    DB: sqlx::Database,
    Option<I>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for c in columns {
        q = match &row[*c] {
            Value::Number(n) => q.bind(n.as_i64().map(int)),
            Value::String(s) => q.bind(s.clone()),
            _ => q.bind(None::<String>),
        };
    }
    q
}

/// What [`row_query`] returns: a statement with its parameters bound.
pub type RowQuery<DB> = sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>;
