//! Shared by the agent end-to-end tests: a gateway node (`vaxgate init
//! --plain-http` + `vaxgate serve`, restartable on the same ledger), the
//! clinic entity registered through `vaxgate admin`, an agent config, legacy
//! clinic rows (`T_JZ_JZJL`, config/mappings/README.md) and ledger queries.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PASS_ENV: &str = "VAXGATE_TEST_PASSPHRASE";
pub const PASS: &str = "correct horse battery staple";
pub const SOURCE: &str = "clinic-ims";

pub fn vaxgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaxgate"));
    c.env(PASS_ENV, PASS)
        .env("VAXGATE_AGENT_PASSPHRASE", PASS)
        .env("RUST_LOG", "warn");
    c
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A gateway node whose server can be killed and restarted.
pub struct Gateway {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub base: String,
    pub port: u16,
    pub entity_id: String,
    pub key_file: PathBuf,
    server: Option<Child>,
    starts: usize,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Gateway {
    /// A fresh node with the clinic (`3201020001`, vaccination unit) registered.
    pub fn start() -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ok(vaxgate()
            .args(["init", "--dir", dir.to_str().unwrap(), "--plain-http"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--passphrase-env", PASS_ENV])
            .output()
            .unwrap());
        let mut g = Gateway {
            tmp,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            port,
            entity_id: String::new(),
            key_file: PathBuf::new(),
            server: None,
            starts: 0,
        };
        g.serve();
        let id = gateway::registry::uscc_with_check("12320102MB1234567").unwrap();
        let keys = g.tmp.path().join("keys-clinic");
        ok(vaxgate()
            .args([
                "keys",
                "generate",
                "--out",
                keys.to_str().unwrap(),
                "--entity",
                "clinic",
            ])
            .args(["--passphrase-env", PASS_ENV])
            .output()
            .unwrap());
        ok(vaxgate()
            .args([
                "admin",
                "--gateway",
                &g.base,
                "--passphrase-env",
                PASS_ENV,
                "register-entity",
            ])
            .args([
                "--id",
                &id,
                "--name",
                "玄武区梅园社区卫生服务中心",
                "--alias",
                "meiyuan",
            ])
            .args(["--role", "vaccination_unit", "--code", "3201020001"])
            .args(["--master-key", keys.join("clinic.pub.pem").to_str().unwrap()])
            .args(["--approve", g.dir.join("keys/admin-1.key.pem").to_str().unwrap()])
            .args(["--approve", g.dir.join("keys/admin-2.key.pem").to_str().unwrap()])
            .output()
            .unwrap());
        g.entity_id = id;
        g.key_file = keys.join("clinic.key.pem");
        g
    }

    /// Starts `vaxgate serve` and waits for `/healthz`.
    pub fn serve(&mut self) {
        assert!(self.server.is_none());
        let log = self.tmp.path().join(format!("server-{}.log", self.starts));
        self.starts += 1;
        let child = vaxgate()
            .args(["serve", "--config", self.dir.join("vaxgate.toml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.server = Some(child);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let start = Instant::now();
        while http.get(format!("{}/healthz", self.base)).send().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ledger_db(&self) -> PathBuf {
        self.dir.join("data/ledger.db")
    }

    /// Registers another entity (`id`: a USCC with its check digit) with a
    /// fresh master key through `vaxgate admin register-entity`; returns its
    /// private key file.
    pub fn register_entity(&self, id: &str, name: &str, alias: &str, role: &str, codes: &[&str]) -> PathBuf {
        let keys = self.tmp.path().join(format!("keys-{alias}"));
        ok(vaxgate()
            .args(["keys", "generate", "--out", keys.to_str().unwrap(), "--entity", alias])
            .args(["--passphrase-env", PASS_ENV])
            .output()
            .unwrap());
        let mut cmd = vaxgate();
        cmd.args([
            "admin",
            "--gateway",
            &self.base,
            "--passphrase-env",
            PASS_ENV,
            "register-entity",
        ])
        .args(["--id", id, "--name", name, "--alias", alias, "--role", role])
        .args(["--master-key", keys.join(format!("{alias}.pub.pem")).to_str().unwrap()])
        .args(["--approve", self.dir.join("keys/admin-1.key.pem").to_str().unwrap()])
        .args(["--approve", self.dir.join("keys/admin-2.key.pem").to_str().unwrap()]);
        for c in codes {
            cmd.args(["--code", c]);
        }
        ok(cmd.output().unwrap());
        keys.join(format!("{alias}.key.pem"))
    }

    /// Writes an agent config submitting as `entity_id` (signing with
    /// `key_file`) with the given `[[sources]]` tables; returns its path.
    pub fn agent_config_with(&self, dir: &Path, entity_id: &str, key_file: &Path, sources: &str) -> PathBuf {
        self.write_agent_config(dir, entity_id, key_file, 500, sources)
    }

    fn write_agent_config(
        &self,
        dir: &Path,
        entity_id: &str,
        key_file: &Path,
        retry_max_ms: u64,
        sources: &str,
    ) -> PathBuf {
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
            key = key_file.display(),
            state = dir.join("agent-state.db").display(),
            base = self.base,
            node = self.dir.join("keys/node.pub.pem").display(),
        );
        let p = dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The server's log so far (for failure messages).
    pub fn server_log(&self) -> String {
        let n = self.starts.saturating_sub(1);
        std::fs::read_to_string(self.tmp.path().join(format!("server-{n}.log"))).unwrap_or_default()
    }

    /// Writes an agent config for one SQL source; returns its path.
    pub fn agent_config(&self, dir: &Path, kind: &str, url: &str, source_extra: &str, mapping: &Path) -> PathBuf {
        let source = format!(
            r#"[[sources]]
type = "{kind}"
name = "{SOURCE}"
mapping = "{mapping}"
url = "{url}"
{source_extra}"#,
            mapping = mapping.display(),
        );
        self.write_agent_config(dir, &self.entity_id, &self.key_file, 1000, &source)
    }
}

/// The `(record_id, category)` of every transaction in the ledger.
pub fn ledger_records(db: &Path) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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

/// Polls `cond` every 100 ms until it holds (true) or `secs` have passed (false).
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for c in columns {
                q = match &row[*c] {
                    Value::Number(n) => q.bind(n.as_i64()),
                    Value::String(s) => q.bind(s.clone()),
                    _ => q.bind(None::<String>),
                };
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    });
}

/// Runs `vaxgate agent --config C ARGS...`.
pub fn agent(config: &Path, args: &[&str]) -> Output {
    vaxgate()
        .args(["agent", "--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// Opens the agent's state database.
pub fn state_counts(dir: &Path) -> Vec<(String, i64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = adapters::StateDb::open(&dir.join("agent-state.db")).await.unwrap();
        let c = s.event_counts(SOURCE).await.unwrap();
        s.close().await;
        c
    })
}
