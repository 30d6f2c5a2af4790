//! Kill test: `kill -9` the agent, then the gateway, during a 100,000-row
//! backfill from SQLite; after the restart the ledger holds every row
//! exactly once (every expected event id, no other, none twice) and the
//! agent's state database has a receipt for each.

#![allow(clippy::unwrap_used)]

#[path = "agent_common.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROWS: usize = 100_000;

/// 100,000 clinic rows generated inside SQLite (same shape as `clinic_row`).
fn big_clinic_db(db: &Path) {
    sqlite_clinic(db, 0..0, &|_| false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO T_JZ_JZJL ({cols})
             SELECT printf('JZ%010d', i), printf('320102000120%06d', i % 1000000), '王小明',
                    CASE i % 2 WHEN 0 THEN '男' ELSE '女' END, '2023/01/15', '2', '320102202301150028',
                    '13812345678', '江苏省南京市玄武区中山路1号', '王大伟', '0201', '乙肝疫苗(酿酒酵母)',
                    CAST(i % 3 + 1 AS TEXT), '202311a05', '2026/11/30', printf('8612345%013d', i),
                    strftime('%Y%m%d%H%M%S', '2024-03-05 08:00:00', '+' || (i / 7) || ' seconds'),
                    'SX0504_1', 'SX0507_1', '李医生', '3201020001', '玄武区梅园社区卫生服务中心预防接种门诊',
                    'SZ01', '深圳康泰生物制品股份有限公司', '0.5', 1, '1'
             FROM n",
            last = ROWS - 1,
            cols = COLUMNS.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM T_JZ_JZJL")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n as usize, ROWS);
        pool.close().await;
    });
    // The generated rows are the ones the tests reason about.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first: (String, String, String) = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
            .await
            .unwrap();
        let r = sqlx::query_as("SELECT JZJL_ID, DZJGM, JZRQ FROM T_JZ_JZJL WHERE JZJL_ID = 'JZ0000000008'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        r
    });
    let row = clinic_row(8, false);
    assert_eq!(
        (first.0.as_str(), first.1.as_str(), first.2.as_str()),
        (
            row["JZJL_ID"].as_str().unwrap(),
            row["DZJGM"].as_str().unwrap(),
            row["JZRQ"].as_str().unwrap()
        )
    );
}

struct Agent(Option<Child>);
impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_agent(cfg: &Path, log: &Path) -> Agent {
    Agent(Some(
        vaxgate()
            .env("RUST_LOG", "warn,adapters=info")
            .args(["agent", "--config", cfg.to_str().unwrap(), "run", "--once"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    ))
}

/// Vaccination events in the ledger so far.
fn in_ledger(db: &Path) -> usize {
    ledger_records(db).iter().filter(|(_, c)| c == "vaccination").count()
}

fn wait_for_ledger(gw: &Gateway, at_least: usize, agent_log: &Path) {
    let start = Instant::now();
    loop {
        if in_ledger(&gw.ledger_db()) >= at_least {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the agent did not get to {at_least} rows: {}",
            std::fs::read_to_string(agent_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setup() -> (Gateway, tempfile::TempDir, std::path::PathBuf) {
    let gw = Gateway::start();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("clinic.db");
    big_clinic_db(&db);
    let cfg = gw.agent_config(
        work.path(),
        "sqlite",
        &format!("sqlite:{}", db.display()),
        "table = \"T_JZ_JZJL\"\nwatermark = \"JZRQ\"\nkey = \"JZJL_ID\"\nbatch_size = 1000\nprefetch = 2",
        &repo().join("config/mappings/clinic-ims.toml"),
    );
    (gw, work, cfg)
}

fn finish(agent: &mut Agent, log: &Path) -> String {
    let out = agent.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "agent failed: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn accepted_in(stdout: &str) -> usize {
    let (_, rest) = stdout.split_once("source clinic-ims: ").unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// One 100,000-row backfill, two crashes: the agent is killed with SIGKILL
/// at 20,000 rows and restarted; then the gateway is killed with SIGKILL at
/// 50,000 rows and restarted on the same ledger while the agent keeps
/// retrying. (One backfill instead of two keeps the test near two minutes
/// in a debug build.)
#[test]
fn kill_agent_then_gateway_during_backfill() {
    let (mut gw, work, cfg) = setup();

    // 1. kill -9 the agent mid-backfill (no cleanup, no flush).
    let log1 = work.path().join("agent-1.log");
    let mut agent = spawn_agent(&cfg, &log1);
    wait_for_ledger(&gw, 20_000, &log1);
    let mut child = agent.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let committed: i64 = state_counts(work.path())
        .iter()
        .filter(|(s, _)| s == "accepted")
        .map(|(_, n)| *n)
        .sum();
    let before = in_ledger(&gw.ledger_db());
    assert!(before < 50_000, "killed too late: {before} rows already in");
    assert!(committed as usize <= before);

    // 2. Restart the agent; kill -9 the gateway while it runs, restart it.
    let log2 = work.path().join("agent-2.log");
    let mut agent = spawn_agent(&cfg, &log2);
    wait_for_ledger(&gw, 50_000, &log2);
    gw.kill();
    let at_kill = in_ledger(&gw.ledger_db());
    assert!(at_kill < ROWS, "killed too late: {at_kill} rows already in");
    std::thread::sleep(Duration::from_secs(2));
    gw.serve();
    let out = finish(&mut agent, &log2);

    // The restarted agent resumed after the last committed page: it re-sent
    // at most the page in flight at each crash (answered as duplicates with
    // the original receipts), never from the start.
    let sent = accepted_in(&out);
    let remaining = ROWS - committed as usize;
    assert!(
        sent >= remaining && sent <= remaining + 2 * 1000,
        "second run accepted {sent}, {remaining} were left: {out}\n{}",
        std::fs::read_to_string(&log2)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("batch committed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_exactly_once(&gw.ledger_db(), &expected_event_ids((0..ROWS).map(row_key)));
    assert_eq!(state_counts(work.path()), vec![("accepted".to_string(), ROWS as i64)]);
    let log_text = std::fs::read_to_string(&log2).unwrap();
    assert!(
        log_text.contains("retrying"),
        "the agent never saw the gateway down: {log_text}"
    );
    for l in [&log1, &log2] {
        let t = std::fs::read_to_string(l).unwrap();
        assert!(
            !t.contains("王小明") && !t.contains("13812345678"),
            "personal data in {}",
            l.display()
        );
    }
}
