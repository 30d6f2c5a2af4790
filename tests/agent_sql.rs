//! End to end: `vaxgate agent` pulling the clinic table `T_JZ_JZJL` from
//! SQLite, PostgreSQL and MariaDB into a real `vaxgate serve`: watermark
//! resume without gap or duplicate, change table, mark-processed, `check`,
//! and the quarantine (list, show, replay after a spec fix).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use support::agent::*;
use support::{block_on, ok, repo};

fn copy_spec(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("clinic-ims.toml");
    std::fs::copy(repo().join("config/mappings/clinic-ims.toml"), &p).unwrap();
    p
}

#[test]
fn sqlite_watermark_resume_and_quarantine_replay() {
    let (gw, clinic, work) = clinic_gateway();
    let db = work.path().join("clinic.db");
    let bad = |i: usize| i % 50 == 7;
    sqlite_clinic(&db, 0..300, &bad);
    let spec = copy_spec(work.path());
    let cfg = gw.sqlite_agent_config(
        work.path(),
        &clinic,
        &db,
        &spec,
        "batch_size = 64\npoll_interval_secs = 0.2",
    );

    let out = ok(agent(&cfg, &["check"]));
    assert!(
        out.contains("gateway") && out.contains("source clinic-ims (sqlite)"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.contains("300 rows"), "{out}");
    // No index on the watermark: every page would sort the table.
    assert!(
        out.contains("warning: each page sorts the whole source (no usable index on (JZRQ, JZJL_ID))"),
        "{out}"
    );
    block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        sqlx::query("CREATE INDEX T_JZ_JZJL_JZRQ ON T_JZ_JZJL (JZRQ, JZJL_ID)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let out = ok(agent(&cfg, &["check"]));
    assert!(out.contains("300 rows") && !out.contains("warning"), "{out}");

    let out = ok(agent(&cfg, &["run", "--once"]));
    assert!(
        out.contains("source clinic-ims: 294 accepted, 0 rejected, 6 quarantined"),
        "{out}"
    );

    // New rows only: the watermark resumes after the last committed page.
    sqlite_clinic(&db, 300..400, &|_| false);
    let out = ok(agent(&cfg, &["run", "--once"]));
    assert!(
        out.contains("source clinic-ims: 100 accepted, 0 rejected, 0 quarantined"),
        "{out}"
    );
    let good: Vec<String> = (0..400).filter(|i| !(*i < 300 && bad(*i))).map(row_key).collect();
    assert_exactly_once(&gw.ledger_db(), &expected_event_ids(good));

    // Quarantine: reasons without personal data; the record only on --reveal.
    let list = ok(agent(&cfg, &["quarantine", "list"]));
    assert!(list.contains("6 entries"), "{list}");
    assert!(list.contains(&row_key(7)) && list.contains("jzbw"), "{list}");
    assert!(!list.contains("王小明") && !list.contains("13812345678"), "{list}");
    let json = ok(agent(&cfg, &["quarantine", "list", "--json"]));
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let id = first["id"].as_i64().unwrap().to_string();
    let show = ok(agent(&cfg, &["quarantine", "show", &id]));
    assert!(show.contains("JZBW") && !show.contains("王小明"), "{show}");
    let shown = ok(agent(&cfg, &["quarantine", "show", &id, "--reveal"]));
    assert!(shown.contains("王小明"), "{shown}");

    // Replay with the unchanged spec: still quarantined (exit 1).
    let o = agent(&cfg, &["quarantine", "replay"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 accepted, 6 still quarantined"));

    // Fix the spec (the local code SX0504_9 is the left upper arm too), replay.
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("\"SX0504_1\" = \"LA\"", "\"SX0504_1\" = \"LA\"\n\"SX0504_9\" = \"LA\"");
    std::fs::write(&spec, text).unwrap();
    let out = ok(agent(&cfg, &["quarantine", "replay"]));
    assert!(out.contains("6 accepted, 0 still quarantined, 0 rejected"), "{out}");
    let list = ok(agent(&cfg, &["quarantine", "list"]));
    assert!(list.contains("0 entries"), "{list}");
    let all = ok(agent(&cfg, &["quarantine", "list", "--all"]));
    assert!(all.contains("[accepted]"), "{all}");
    assert_exactly_once(&gw.ledger_db(), &expected_event_ids((0..400).map(row_key)));
    assert_eq!(event_counts(work.path(), SOURCE), vec![("accepted".to_string(), 400)]);
}

/// A new database on the server of `base` (the URL's database replaced),
/// created with `CREATE DATABASE <name><options>`, with `tables` created
/// in it; returns its URL.
fn new_database<DB: sqlx::Database>(
    rt: &tokio::runtime::Runtime,
    base: &str,
    options: &str,
    tables: &[String],
) -> String
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let name = format!("agent_{}", uuid::Uuid::new_v4().simple());
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{name}");
    let run = |db: &str, statements: &[String]| {
        rt.block_on(async {
            let pool = sqlx::Pool::<DB>::connect(db).await.unwrap();
            for sql in statements {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        })
    };
    run(base, &[format!("CREATE DATABASE {name}{options}")]);
    run(&url, tables);
    url
}

/// Runs the statements `rows(i)` of each row `i` of `range` on the
/// database at `url`, in one transaction.
fn insert_rows<DB: sqlx::Database>(
    rt: &tokio::runtime::Runtime,
    url: &str,
    range: std::ops::Range<usize>,
    rows: impl Fn(usize) -> Vec<RowQuery<DB>>,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    rt.block_on(async {
        let pool = sqlx::Pool::<DB>::connect(url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for i in range {
            for q in rows(i) {
                q.execute(&mut *tx).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        pool.close().await;
    })
}

/// The clinic's agent reading `T_JZ_JZJL` at `url` (`kind`, the source
/// lines `extra`) that holds `rows` rows: `agent check` counts them (its
/// output also goes to `check`), a run delivers them, `insert(more)` adds
/// rows the next run delivers, and the ledger holds every row once. Returns
/// the agent's directory.
fn two_runs(
    kind: &str,
    url: &str,
    extra: &str,
    rows: usize,
    more: std::ops::Range<usize>,
    insert: &dyn Fn(std::ops::Range<usize>),
    check: &dyn Fn(&str),
) -> tempfile::TempDir {
    let (gw, clinic, work) = clinic_gateway();
    let spec = copy_spec(work.path());
    let cfg = gw.agent_config(work.path(), &clinic, kind, url, extra, &spec);
    let out = ok(agent(&cfg, &["check"]));
    assert!(!out.contains("FAIL") && out.contains(&format!("{rows} rows")), "{out}");
    check(&out);
    let run_once = |accepted: usize| {
        let out = ok(agent(&cfg, &["run", "--once"]));
        assert!(
            out.contains(&format!("{accepted} accepted, 0 rejected, 0 quarantined")),
            "{out}"
        );
    };
    run_once(rows);
    insert(more.clone());
    run_once(more.len());
    assert_exactly_once(&gw.ledger_db(), &expected_event_ids((0..more.end).map(row_key)));
    work
}

fn pg_url() -> String {
    std::env::var("VAXGATE_TEST_PG_URL")
        .expect("VAXGATE_TEST_PG_URL is not set: run ./scripts/test.sh, which starts PostgreSQL")
}

fn mysql_url() -> String {
    std::env::var("VAXGATE_TEST_MYSQL_URL")
        .expect("VAXGATE_TEST_MYSQL_URL is not set: run ./scripts/test.sh, which starts MariaDB")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// PostgreSQL with the legacy quoted upper-case schema, a TIMESTAMP update
/// column as watermark (ties broken by the id) and a mark-processed flag.
#[test]
fn postgres_timestamp_watermark_and_mark_processed() {
    let rt = rt();
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            if *c == "BZJC" {
                format!("\"{c}\" INTEGER")
            } else {
                format!("\"{c}\" TEXT")
            }
        })
        .collect();
    let table = format!(
        "CREATE TABLE \"T_JZ_JZJL\" ({}, \"GXSJ\" TIMESTAMP NOT NULL, \"SCBZ\" TEXT, PRIMARY KEY (\"JZJL_ID\"))",
        cols.join(", ")
    );
    let url = new_database::<sqlx::Postgres>(&rt, &pg_url(), "", &[table]);
    let cols: Vec<String> = COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
    let ph: Vec<String> = (1..=COLUMNS.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "INSERT INTO \"T_JZ_JZJL\" ({}, \"GXSJ\") VALUES ({}, TIMESTAMP '2024-03-05 08:00:00' + (${} || ' seconds')::interval)",
        cols.join(", "),
        ph.join(", "),
        COLUMNS.len() + 1
    );
    let insert = |range: std::ops::Range<usize>| {
        insert_rows::<sqlx::Postgres>(&rt, &url, range, |i| {
            vec![row_query(&sql, &clinic_row(i, false), COLUMNS, |v| v as i32).bind(((i / 10) as i64).to_string())]
        })
    };
    insert(0..500);

    two_runs(
        "postgres",
        &url,
        "table = \"T_JZ_JZJL\"\nwatermark = \"GXSJ\"\nkey = \"JZJL_ID\"\nbatch_size = 70\n\
         mark_processed = \"UPDATE \\\"T_JZ_JZJL\\\" SET \\\"SCBZ\\\" = '1' WHERE \\\"JZJL_ID\\\" = {key}\"",
        500,
        500..560,
        &insert,
        &|out| {
            assert!(
                out.contains("warning: each page sorts the whole source (no usable index on (GXSJ, JZJL_ID))"),
                "{out}"
            );
        },
    );
    let marked: i64 = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM \"T_JZ_JZJL\" WHERE \"SCBZ\" = '1'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    });
    assert_eq!(marked, 560);
}

/// MariaDB read through a change table (`T_JZ_BG`, an AUTO_INCREMENT
/// sequence and the changed record's key).
#[test]
fn mariadb_change_table() {
    let rt = rt();
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| match *c {
            "BZJC" => format!("{c} INT"),
            "JZJL_ID" => format!("{c} VARCHAR(32) NOT NULL"),
            _ => format!("{c} VARCHAR(200)"),
        })
        .collect();
    let tables = [
        format!(
            "CREATE TABLE T_JZ_JZJL ({}, PRIMARY KEY (JZJL_ID)) DEFAULT CHARSET=utf8mb4",
            cols.join(", ")
        ),
        "CREATE TABLE T_JZ_BG (BGXH BIGINT AUTO_INCREMENT PRIMARY KEY, JZJL_ID VARCHAR(32) NOT NULL)".to_string(),
    ];
    let url = new_database::<sqlx::MySql>(&rt, &mysql_url(), " CHARACTER SET utf8mb4", &tables);
    let ph = vec!["?"; COLUMNS.len()].join(", ");
    let sql = format!("INSERT INTO T_JZ_JZJL ({}) VALUES ({ph})", COLUMNS.join(", "));
    let insert = |range: std::ops::Range<usize>| {
        insert_rows::<sqlx::MySql>(&rt, &url, range, |i| {
            vec![
                row_query(&sql, &clinic_row(i, false), COLUMNS, |n| n),
                sqlx::query("INSERT INTO T_JZ_BG (JZJL_ID) VALUES (?)").bind(row_key(i)),
            ]
        })
    };
    insert(0..250);

    let work = two_runs(
        "mysql",
        &url,
        "table = \"T_JZ_JZJL\"\nkey = \"JZJL_ID\"\nbatch_size = 40\n\
         change_table = { table = \"T_JZ_BG\", seq = \"BGXH\", key = \"JZJL_ID\" }",
        250,
        250..300,
        &insert,
        &|_| {},
    );
    // The record keys in the agent's receipts are the table's, not the sequence.
    assert_eq!(event_counts(work.path(), SOURCE), vec![("accepted".to_string(), 300)]);
}
