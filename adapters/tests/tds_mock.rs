//! The project's **mock** TDS server (tests/support/tds_mock.rs) against the
//! real tiberius client: login (and a refused login), a batch with a
//! Chinese nvarchar row set and NULLs, an error token, and a parameterised
//! query over RPC sp_executesql with its parameters captured. SQL Server
//! itself cannot run here; a real server is exercised by the SQL source's
//! tests when VAXGATE_MSSQL_URL is set.

#[path = "support/tds_mock.rs"]
mod tds_mock;

use tds_mock::{ColType, MockTdsServer, Reply, Request, Value};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt as _;

fn config(port: u16, password: &str) -> Config {
    let mut c = Config::new();
    c.host("127.0.0.1");
    c.port(port);
    c.database("his");
    c.application_name("vaxgate-agent");
    c.authentication(AuthMethod::sql_server("vaxgate", password));
    c.encryption(EncryptionLevel::NotSupported);
    c
}

async fn connect(port: u16, password: &str) -> tiberius::Result<Client<tokio_util::compat::Compat<TcpStream>>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    tcp.set_nodelay(true).expect("nodelay");
    Client::connect(config(port, password), tcp.compat_write()).await
}

fn handler(req: &Request) -> Vec<Reply> {
    let sql = req.sql().unwrap_or("");
    let columns = vec![
        ("ID".to_string(), ColType::BigInt),
        ("XM".to_string(), ColType::NVarChar),
        ("JZSJ".to_string(), ColType::DateTime2),
        ("JL".to_string(), ColType::Int),
    ];
    let when = chrono::NaiveDate::from_ymd_opt(2024, 3, 5)
        .and_then(|d| d.and_hms_milli_opt(9, 30, 0, 250))
        .expect("date");
    let all = vec![
        vec![
            Value::Int(1),
            Value::Text("王小明".into()),
            Value::datetime2(when),
            Value::Int(1),
        ],
        vec![
            Value::Int(2),
            Value::Text("欧阳娜娜·𠀀".into()),
            Value::Null,
            Value::Null,
        ],
        vec![
            Value::Int(3),
            Value::Text(String::new()),
            Value::datetime2(when),
            Value::Int(3),
        ],
    ];
    if sql.contains("FROM missing_table") {
        return vec![Reply::Error {
            number: 208,
            class: 16,
            message: "Invalid object name 'missing_table'.".into(),
        }];
    }
    if sql.contains("FROM JZJL") {
        // watermark: rows with ID > @P1 (when given)
        let after = match req.values().first() {
            Some(Value::Int(n)) => *n,
            _ => i64::MIN,
        };
        let rows = all
            .into_iter()
            .filter(|r| matches!(r[0], Value::Int(id) if id > after))
            .collect();
        return vec![Reply::Rows { columns, rows }];
    }
    if sql.starts_with("UPDATE") {
        return vec![Reply::Affected(2)];
    }
    vec![Reply::Affected(0)]
}

#[tokio::test]
async fn tiberius_logs_in_and_reads_chinese_rows_from_the_mock() {
    let server = MockTdsServer::start("s3cret", handler).await;
    let mut client = connect(server.port(), "s3cret").await.expect("login to the mock");

    let rows = client
        .simple_query("SELECT ID, XM, JZSJ, JL FROM JZJL ORDER BY ID")
        .await
        .expect("batch")
        .into_first_result()
        .await
        .expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].get::<i64, _>("ID"), Some(1));
    assert_eq!(rows[0].get::<&str, _>("XM"), Some("王小明"));
    assert_eq!(
        rows[1].get::<&str, _>("XM"),
        Some("欧阳娜娜·𠀀"),
        "supplementary-plane character intact"
    );
    assert_eq!(rows[2].get::<&str, _>("XM"), Some(""));
    let when: Option<chrono::NaiveDateTime> = rows[0].get("JZSJ");
    assert_eq!(when.map(|w| w.to_string()).as_deref(), Some("2024-03-05 09:30:00.250"));
    assert_eq!(rows[1].get::<chrono::NaiveDateTime, _>("JZSJ"), None);
    assert_eq!(rows[1].get::<i32, _>("JL"), None);
    assert_eq!(rows[2].get::<i32, _>("JL"), Some(3));

    // the server's error token surfaces as tiberius' server error
    let err = match client.simple_query("SELECT * FROM missing_table").await {
        Err(e) => e,
        Ok(stream) => stream.into_results().await.expect_err("error token"),
    };
    match err {
        tiberius::error::Error::Server(e) => {
            assert_eq!(e.code(), 208);
            assert!(e.message().contains("missing_table"));
        }
        other => panic!("expected a server error, got {other:?}"),
    }

    // the connection is still usable: a parameterised query (RPC sp_executesql)
    let rows = client
        .query("SELECT ID, XM, JZSJ, JL FROM JZJL WHERE ID > @P1 ORDER BY ID", &[&1i64])
        .await
        .expect("rpc")
        .into_first_result()
        .await
        .expect("rows");
    let ids: Vec<i64> = rows.iter().filter_map(|r| r.get::<i64, _>("ID")).collect();
    assert_eq!(ids, [2, 3]);
    let res = client
        .execute(
            "UPDATE JZJL SET SC = 1 WHERE ID IN (@P1, @P2) AND XM <> @P3",
            &[&2i32, &3i32, &"张三"],
        )
        .await
        .expect("execute");
    assert_eq!(res.total(), 2);

    let reqs = server.requests();
    assert!(
        matches!(&reqs[0], Request::Login { user, database, app } if user == "vaxgate" && database == "his" && app == "vaxgate-agent")
    );
    let rpcs: Vec<&Request> = reqs.iter().filter(|r| matches!(r, Request::Rpc { .. })).collect();
    assert_eq!(rpcs.len(), 2);
    match rpcs[0] {
        Request::Rpc { procedure, params } => {
            assert_eq!(procedure, "sp_executesql");
            assert_eq!(params[2].name, "@P1");
            assert_eq!(params[2].value, Value::Int(1));
        }
        _ => unreachable!(),
    }
    assert_eq!(
        rpcs[1].values(),
        [Value::Int(2), Value::Int(3), Value::Text("张三".into())],
        "parameters captured, Chinese text included"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_like_sql_server_does() {
    let server = MockTdsServer::start("s3cret", handler).await;
    let err = connect(server.port(), "wrong").await.expect_err("login refused");
    match err {
        tiberius::error::Error::Server(e) => assert_eq!(e.code(), 18456, "{e:?}"),
        other => panic!("expected error 18456, got {other:?}"),
    }
}
