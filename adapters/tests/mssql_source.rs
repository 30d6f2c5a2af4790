//! The SQL Server source (tiberius) against the project's **mock** TDS
//! server (tests/support/tds_mock.rs): login, keyset pages by
//! `(GXSJ datetime2, JZJL_ID)` with the parameters the source binds,
//! Chinese nvarchar, NULLs, floats, a refused login and a server error.
//!
//! The real-server test runs only when `VAXGATE_MSSQL_URL` (an ADO.NET
//! connection string) is set: SQL Server cannot run on this machine. This
//! is the one documented exception to "never skip" (see README).

#![allow(clippy::unwrap_used)]

#[path = "support/tds_mock.rs"]
mod tds_mock;

use std::sync::{Arc, Mutex};

use adapters::mssql::MssqlSource;
use adapters::pull::{PullReader as _, SqlSourceConfig};
use adapters::sql::{Cell, SqlCheckpoint};
use tds_mock::{ColType, MockTdsServer, Reply, Request, Value};

const N: usize = 23;

fn when(i: usize) -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2024, 3, 5)
        .unwrap()
        .and_hms_milli_opt(9, 30, 0, 250)
        .unwrap()
        + chrono::Duration::seconds((i / 4) as i64)
}

/// Row `i` of the mock's T_JZ_JZJL; four rows share each GXSJ.
fn row(i: usize) -> Vec<Value> {
    vec![
        Value::Text(format!("JZ{:04}", N - i)), // keys not in insertion order
        Value::datetime2(when(i)),
        Value::Text(if i.is_multiple_of(5) {
            "欧阳娜娜·𠀀".into()
        } else {
            "王小明".into()
        }),
        if i.is_multiple_of(3) {
            Value::Null
        } else {
            Value::Int(i as i64 % 3 + 1)
        },
        Value::Float(0.5),
    ]
}

fn columns() -> Vec<(String, ColType)> {
    vec![
        ("JZJL_ID".into(), ColType::NVarChar),
        ("GXSJ".into(), ColType::DateTime2),
        ("SZZ_XM".into(), ColType::NVarChar),
        ("JC".into(), ColType::Int),
        ("JL".into(), ColType::Float),
    ]
}

fn order_key(v: &[Value]) -> (u32, u64, String) {
    match (&v[1], &v[0]) {
        (Value::DateTime2 { days, ticks }, Value::Text(k)) => (*days, *ticks, k.clone()),
        _ => panic!("bad row"),
    }
}

/// Answers like SQL Server would for the source's page and count queries.
fn handler(req: &Request) -> Vec<Reply> {
    let Some(sql) = req.sql() else {
        return vec![Reply::Affected(0)];
    };
    if sql.contains("BROKEN") {
        return vec![Reply::Error {
            number: 208,
            class: 16,
            message: "Invalid object name 'BROKEN'.".into(),
        }];
    }
    let mut rows: Vec<Vec<Value>> = (0..N).map(row).collect();
    rows.sort_by_key(|r| order_key(r));
    let params = req.values();
    if let [Value::DateTime2 { days, ticks }, Value::Text(k)] = params.as_slice() {
        assert!(
            sql.contains("WHERE [GXSJ] > @P1 OR ([GXSJ] = @P1 AND [JZJL_ID] > @P2)"),
            "{sql}"
        );
        let after = (*days, *ticks, k.clone());
        rows.retain(|r| order_key(r) > after);
    } else {
        assert!(params.is_empty(), "unexpected parameters {params:?}");
    }
    if sql.starts_with("SELECT COUNT_BIG(*)") {
        return vec![Reply::Rows {
            columns: vec![("n".into(), ColType::BigInt)],
            rows: vec![vec![Value::Int(rows.len() as i64)]],
        }];
    }
    let top: usize = sql
        .split_once("TOP (")
        .and_then(|(_, r)| r.split_once(')'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap();
    assert!(sql.ends_with("ORDER BY [GXSJ], [JZJL_ID]"), "{sql}");
    rows.truncate(top);
    vec![Reply::Rows {
        columns: columns(),
        rows,
    }]
}

fn cfg(port: u16, password: &str, table: &str) -> SqlSourceConfig {
    toml::from_str(&format!(
        "name = \"his\"\nmapping = \"m.toml\"\n\
         url = \"server=tcp:127.0.0.1,{port};database=HIS;user=vaxgate;password={password};encrypt=DANGER_PLAINTEXT\"\n\
         table = \"{table}\"\nwatermark = \"GXSJ\"\nkey = \"JZJL_ID\"\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn pages_through_the_mock_server_without_gap_or_duplicate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = MockTdsServer::start("s3cret", handler).await;
    let src = MssqlSource::new(&cfg(server.port(), "s3cret", "dbo.T_JZ_JZJL")).unwrap();
    assert_eq!(src.count_after(None).await.unwrap(), N as u64);
    let mut cp: Option<SqlCheckpoint> = None;
    let mut seen = Vec::new();
    loop {
        let page = src.fetch(cp.as_ref(), 5).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 5);
        // Through JSON, as stored in the state database.
        cp = Some(serde_json::from_str(&serde_json::to_string(&last.position).unwrap()).unwrap());
        seen.extend(page);
    }
    let mut expected: Vec<Vec<Value>> = (0..N).map(row).collect();
    expected.sort_by_key(|r| order_key(r));
    let keys: Vec<String> = seen.iter().map(|r| r.key.key_string()).collect();
    let want: Vec<String> = expected
        .iter()
        .map(|r| match &r[0] {
            Value::Text(k) => k.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(keys, want, "every row once, in (GXSJ, JZJL_ID) order");
    // Row 0 (key JZ0023): supplementary-plane Chinese text and a NULL.
    let first = &seen.iter().find(|r| r.key.key_string() == "JZ0023").unwrap().row;
    assert_eq!(first["GXSJ"], "2024-03-05 09:30:00.250");
    assert_eq!(first["SZZ_XM"], "欧阳娜娜·𠀀");
    assert_eq!(first["JC"], serde_json::Value::Null);
    assert_eq!(first["JL"], serde_json::json!(0.5));
    assert!(matches!(seen[0].position.wm, Cell::Ts(_)));
    assert_eq!(src.count_after(cp.as_ref()).await.unwrap(), 0);
    // The parameters went over RPC (sp_executesql) with their SQL types.
    let rpcs = server
        .requests()
        .into_iter()
        .filter(|r| matches!(r, Request::Rpc { .. }) && !r.values().is_empty())
        .count();
    assert!(rpcs >= 4, "{rpcs} parameterised queries");
    assert!(src.check().await.unwrap().contains(&format!("{N} rows")));
    src.close().await;
}

#[tokio::test]
async fn login_refused_and_server_errors_name_the_source() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Arc::new(Mutex::new(0));
    let s2 = seen.clone();
    let server = MockTdsServer::start("s3cret", move |r| {
        *s2.lock().unwrap() += 1;
        handler(r)
    })
    .await;
    let bad = MssqlSource::new(&cfg(server.port(), "wrong", "T")).unwrap();
    let e = bad.fetch(None, 5).await.unwrap_err().to_string();
    assert!(e.starts_with("source `his`: login:"), "{e}");
    let broken = MssqlSource::new(&cfg(server.port(), "s3cret", "BROKEN")).unwrap();
    let e = broken.fetch(None, 5).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("Invalid object name 'BROKEN'"), "{e}");
}

/// Against a real SQL Server (an ADO.NET string in `VAXGATE_MSSQL_URL`
/// whose user may create tables). No SQL Server installs from the package
/// registries this project's machines reach, so CI tests tiberius against
/// the TDS mock above only (README, "Not there yet"); run this one by hand:
/// `VAXGATE_MSSQL_URL=... cargo test -p adapters --test mssql_source -- --ignored`.
/// It fails when the variable is missing.
#[tokio::test]
#[ignore = "needs a real SQL Server: set VAXGATE_MSSQL_URL and run with --ignored"]
async fn real_sql_server() {
    let url = std::env::var("VAXGATE_MSSQL_URL")
        .expect("VAXGATE_MSSQL_URL is not set: this test needs a real SQL Server (ADO.NET connection string)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let table = format!("vg_agent_{}", uuid::Uuid::new_v4().simple());
    let mut c: SqlSourceConfig = toml::from_str(&format!(
        "name = \"his\"\nmapping = \"m.toml\"\nurl = \"x\"\ntable = \"{table}\"\nwatermark = \"GXSJ\"\nkey = \"JZJL_ID\"\n\
         mark_processed = \"UPDATE {table} SET SCBZ = 1 WHERE JZJL_ID = {{key}}\"\n"
    ))
    .unwrap();
    c.url = url.clone();
    let mut setup: SqlSourceConfig = c.clone();
    setup.table = Some("sys.objects".into());
    let tds = tiberius::Config::from_ado_string(&url).unwrap();
    let tcp = tokio::net::TcpStream::connect(tds.get_addr()).await.unwrap();
    use tokio_util::compat::TokioAsyncWriteCompatExt as _;
    let mut client = tiberius::Client::connect(tds, tcp.compat_write()).await.unwrap();
    client
        .simple_query(format!(
            "CREATE TABLE {table} (JZJL_ID NVARCHAR(32) PRIMARY KEY, GXSJ DATETIME2 NOT NULL, SZZ_XM NVARCHAR(50), JC INT, SCBZ INT)"
        ))
        .await
        .unwrap();
    for i in 0..N {
        client
            .execute(
                format!("INSERT INTO {table} VALUES (@P1, @P2, @P3, @P4, 0)"),
                &[&format!("JZ{:04}", N - i), &when(i), &"王小明", &(i as i32)],
            )
            .await
            .unwrap();
    }
    let src = MssqlSource::new(&c).unwrap();
    let mut cp: Option<SqlCheckpoint> = None;
    let mut n = 0;
    loop {
        let page = src.fetch(cp.as_ref(), 5).await.unwrap();
        let Some(last) = page.last() else { break };
        cp = Some(last.position.clone());
        n += page.len();
        assert_eq!(page[0].row["SZZ_XM"], "王小明");
        src.mark_processed(&page.iter().map(|r| r.key.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    assert_eq!(n, N);
    client.simple_query(format!("DROP TABLE {table}")).await.unwrap();
}
