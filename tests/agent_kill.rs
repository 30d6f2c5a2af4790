//! Kill tests: `kill -9` the agent (one test) or the gateway (the other)
//! during a 100,000-row backfill from SQLite; after the restart the ledger
//! holds every row exactly once (every expected event id, no other, none
//! twice) and the agent's state database has a receipt for each.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::agent::*;
use support::{Node, Process, block_on, repo};

const ROWS: usize = 100_000;
/// Rows per page (larger pages: fewer signed batches and state commits, so
/// the debug build gets through 100,000 rows sooner).
const BATCH: usize = 2_500;

/// 100,000 clinic rows generated inside SQLite (same shape as `clinic_row`).
fn big_clinic_db(db: &Path) {
    sqlite_clinic(db, 0..0, &|_| false);
    block_on(async {
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
    let first: (String, String, String) = block_on(async {
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

fn spawn_agent(cfg: &Path, log: &Path) -> Process {
    Process::spawn(
        agent_command(cfg, &["run", "--once"])
            .env("RUST_LOG", "warn,adapters=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap()),
    )
}

/// Vaccination events in the ledger so far (a count, not a read of every row:
/// this is polled while the backfill runs).
fn in_ledger(db: &Path) -> usize {
    block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions WHERE category = 'vaccination'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n as usize
    })
}

fn wait_for_ledger(gw: &Node, at_least: usize, agent: &mut Process, agent_log: &Path) {
    let start = Instant::now();
    loop {
        if in_ledger(&gw.ledger_db()) >= at_least {
            return;
        }
        if let Some(status) = agent.try_wait() {
            panic!(
                "the agent ended ({status}) before {at_least} rows were in the ledger: {}",
                std::fs::read_to_string(agent_log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the agent did not get to {at_least} rows: {}",
            std::fs::read_to_string(agent_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn setup() -> (Node, tempfile::TempDir, std::path::PathBuf) {
    let (gw, clinic, work) = clinic_gateway();
    let db = work.path().join("clinic.db");
    big_clinic_db(&db);
    let spec = repo().join("config/mappings/clinic-ims.toml");
    let extra = format!("batch_size = {BATCH}\nprefetch = 2\nin_flight = 2");
    let cfg = gw.sqlite_agent_config(work.path(), &clinic, &db, &spec, &extra);
    (gw, work, cfg)
}

fn finish(agent: Process, log: &Path) -> String {
    let out = agent.wait_with_output();
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

/// The agent's log without the per-page lines (for assertion messages).
fn warnings(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("batch committed"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn accepted_receipts(work: &Path) -> usize {
    event_counts(work, SOURCE)
        .iter()
        .filter(|(s, _)| s == "accepted")
        .map(|(_, n)| *n as usize)
        .sum()
}

/// Every row in the ledger once, a receipt for each, no personal data logged.
fn assert_complete(gw: &Node, work: &Path, logs: &[&Path]) {
    assert_exactly_once(&gw.ledger_db(), &expected_event_ids((0..ROWS).map(row_key)));
    assert_eq!(event_counts(work, SOURCE), vec![("accepted".to_string(), ROWS as i64)]);
    for l in logs {
        let t = std::fs::read_to_string(l).unwrap();
        assert!(
            !t.contains("王小明") && !t.contains("13812345678"),
            "personal data in {}",
            l.display()
        );
    }
}

/// The agent is killed with SIGKILL at 20,000 rows and restarted: it
/// resumes after its last committed page, re-sending only the pages that
/// were in flight (answered as duplicates with their original receipts).
#[test]
fn kill_agent_during_backfill() {
    let (gw, work, cfg) = setup();

    let log1 = work.path().join("agent-1.log");
    let mut agent = spawn_agent(&cfg, &log1);
    wait_for_ledger(&gw, 20_000, &mut agent, &log1);
    agent.kill();
    let committed = accepted_receipts(work.path());
    let before = in_ledger(&gw.ledger_db());
    assert!(before < ROWS, "killed too late: {before} rows already in");
    assert!(
        committed <= before,
        "{committed} receipts for {before} rows in the ledger"
    );
    assert_eq!(committed % BATCH, 0, "receipts are committed a page at a time");

    let log2 = work.path().join("agent-2.log");
    let out = finish(spawn_agent(&cfg, &log2), &log2);
    // The second run read exactly the rows after the committed checkpoint.
    let sent = accepted_in(&out);
    assert_eq!(
        sent,
        ROWS - committed,
        "second run accepted {sent}, {} were left: {out}\n{}",
        ROWS - committed,
        warnings(&log2)
    );
    assert_complete(&gw, work.path(), &[&log1, &log2]);
}

/// The gateway is killed with SIGKILL at 50,000 rows and restarted on the
/// same ledger once the agent has met the outage, while the agent keeps
/// retrying its pages.
#[test]
fn kill_gateway_during_backfill() {
    let (mut gw, work, cfg) = setup();

    let log = work.path().join("agent.log");
    let mut agent = spawn_agent(&cfg, &log);
    wait_for_ledger(&gw, 50_000, &mut agent, &log);
    gw.kill();
    let at_kill = in_ledger(&gw.ledger_db());
    assert!(at_kill < ROWS, "killed too late: {at_kill} rows already in");
    // Stay down until the agent has met the outage (its next page may still
    // be being sealed when the gateway dies), then come back.
    let down = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("retrying") {
        assert!(
            down.elapsed() < Duration::from_secs(300),
            "the agent did not notice the gateway was down within 300 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Some(status) = agent.try_wait() {
            panic!(
                "the agent ended ({status}) while the gateway was down: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.serve();
    let out = finish(agent, &log);

    let sent = accepted_in(&out);
    assert_eq!(sent, ROWS, "the agent accepted {sent}: {out}\n{}", warnings(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("retrying"),
        "the agent never saw the gateway down: {text}"
    );
    assert_complete(&gw, work.path(), &[&log]);
}
