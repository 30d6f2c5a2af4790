//! Writes a [`World`] as legacy systems: SQLite databases with the schemas
//! of `config/mappings/README.md`, HL7 v2 files, an XML export, ERP JSON
//! documents and the hospital's local documents.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{Duration, NaiveDateTime};
use serde_json::{Value, json};
use sqlx::{Connection, SqliteConnection};

use crate::SandboxError;
use crate::world::{self, CLINIC_A, CLINIC_B, MAH, Org, PRODUCTS, World};

/// One SQLite value.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

fn t(s: impl Into<String>) -> Val {
    Val::Text(s.into())
}
fn opt(s: Option<impl Into<String>>) -> Val {
    s.map_or(Val::Null, |s| Val::Text(s.into()))
}

/// A table: DDL, column names and rows.
pub(crate) struct Table {
    pub name: &'static str,
    pub ddl: &'static str,
    pub cols: &'static [&'static str],
    pub rows: Vec<Vec<Val>>,
}

impl Table {
    /// An empty table.
    fn new(name: &'static str, ddl: &'static str, cols: &'static [&'static str]) -> Table {
        Table {
            name,
            ddl,
            cols,
            rows: Vec::new(),
        }
    }
}

/// Rows of table `name` among `tables` (0 if absent).
pub(crate) fn rows_of(tables: &[Table], name: &str) -> usize {
    tables.iter().find(|t| t.name == name).map_or(0, |t| t.rows.len())
}

/// Local time (Asia/Shanghai, no DST) as Unix seconds.
pub(crate) fn unix(t: NaiveDateTime) -> i64 {
    (t - Duration::hours(8)).and_utc().timestamp()
}

/// Indexes the legacy systems keep on the columns their agents page by
/// (watermark, key), as a production system indexes its dates: without
/// one, every keyset page scans and sorts the whole table.
const INDEXES: &[(&str, &str)] = &[
    ("T_JZ_JZJL", "CREATE INDEX T_JZ_JZJL_JZRQ ON T_JZ_JZJL (JZRQ, JZJL_ID)"),
    ("T_AEFI_BG", "CREATE INDEX T_AEFI_BG_BGSJ ON T_AEFI_BG (BGSJ, BGBH)"),
    ("YM_CRKD_ZB", "CREATE INDEX YM_CRKD_ZB_DJRQ ON YM_CRKD_ZB (DJRQ, DJH)"),
    ("YM_CRKD_MX", "CREATE INDEX YM_CRKD_MX_DJH ON YM_CRKD_MX (DJH)"),
    ("EMR_WDSY", "CREATE INDEX EMR_WDSY_CJSJ ON EMR_WDSY (CJSJ, WDID)"),
    ("LL_WDHZ", "CREATE INDEX LL_WDHZ_DWBM ON LL_WDHZ (DWBM, JLID)"),
];

pub(crate) async fn write_db(path: &Path, tables: &[Table], views: &[&'static str]) -> Result<(), SandboxError> {
    let at = SandboxError::sqlite(path);
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| SandboxError::io(path, e))?;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Off);
    let mut conn = SqliteConnection::connect_with(&opts).await.map_err(at)?;
    let mut tx = conn.begin().await.map_err(at)?;
    for table in tables {
        sqlx::query(table.ddl).execute(&mut *tx).await.map_err(at)?;
        let per = (30_000 / table.cols.len()).max(1);
        for chunk in table.rows.chunks(per) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO {} ({}) ",
                table.name,
                table.cols.join(", ")
            ));
            qb.push_values(chunk, |mut b, row| {
                for v in row {
                    match v {
                        Val::Null => b.push_bind(None::<String>),
                        Val::Int(i) => b.push_bind(*i),
                        Val::Real(f) => b.push_bind(*f),
                        Val::Text(s) => b.push_bind(s.clone()),
                    };
                }
            });
            qb.build().execute(&mut *tx).await.map_err(at)?;
        }
    }
    for (table, ddl) in INDEXES {
        if tables.iter().any(|t| t.name == *table) {
            sqlx::query(*ddl).execute(&mut *tx).await.map_err(at)?;
        }
    }
    for v in views {
        sqlx::query(*v).execute(&mut *tx).await.map_err(at)?;
    }
    tx.commit().await.map_err(at)?;
    conn.close().await.map_err(at)?;
    Ok(())
}

/// The columns of the clinic's tables that name a person: recipient code,
/// name, sex, date of birth.
fn person_head(p: &world::Person) -> [Val; 4] {
    [
        t(&p.code),
        t(&p.name),
        t(p.sex),
        t(p.birth.format("%Y/%m/%d").to_string()),
    ]
}

/// The clinic's contact columns of a person: phone, address, guardian.
fn contacts(p: &world::Person) -> [Val; 3] {
    [opt(p.phone.clone()), opt(p.address.clone()), opt(p.guardian.clone())]
}

const SITES: [&str; 4] = ["LA", "RA", "LT", "RT"];

/// clinic.db: recipients, vaccinations, AEFI reports and stock of clinic A.
pub(crate) fn clinic_tables(w: &World) -> Vec<Table> {
    vec![recipients(w), vaccinations(w), aefi_reports(w), clinic_stock(w)]
}

/// Clinic A's vaccinations (its own, not the feed's).
fn clinic_a_vaccinations(w: &World) -> impl Iterator<Item = (usize, &world::Vaccination)> {
    w.vaccinations.iter().enumerate().filter(|(_, v)| v.clinic == 0)
}

/// T_JZ_SZZ: clinic A's recipients, each once, in the order of their first
/// vaccination (its day is the record's creation date).
fn recipients(w: &World) -> Table {
    let mut szz = Table::new(
        "T_JZ_SZZ",
        "CREATE TABLE T_JZ_SZZ (SZZBM TEXT PRIMARY KEY, XM TEXT, XB TEXT, CSRQ TEXT, ZJLX TEXT, ZJHM TEXT, LXDH TEXT, JTZZ TEXT, JHR_XM TEXT, JDRQ TEXT)",
        &[
            "SZZBM", "XM", "XB", "CSRQ", "ZJLX", "ZJHM", "LXDH", "JTZZ", "JHR_XM", "JDRQ",
        ],
    );
    let mut seen = std::collections::BTreeSet::new();
    for (_, v) in clinic_a_vaccinations(w) {
        if seen.insert(v.person) {
            let p = &w.people[v.person];
            let joined = t(v.time.format("%Y-%m-%d").to_string());
            let ids = [t(p.id_type), t(&p.id_number)];
            szz.rows.push(
                person_head(p)
                    .into_iter()
                    .chain(ids)
                    .chain(contacts(p))
                    .chain([joined])
                    .collect(),
            );
        }
    }
    szz
}

/// T_JZ_JZJL: clinic A's vaccination records, with the legacy system's
/// variations (lower-case lots, padded codes, numbers as text) and its
/// dirty rows.
fn vaccinations(w: &World) -> Table {
    let mut jzjl = Table::new(
        "T_JZ_JZJL",
        "CREATE TABLE T_JZ_JZJL (JZJL_ID TEXT PRIMARY KEY, SZZBM TEXT, SZZ_XM TEXT, SZZ_XB TEXT, CSRQ TEXT, ZJLX TEXT, ZJHM TEXT, LXDH TEXT, JTZZ TEXT, JHR_XM TEXT, \
              YMBM TEXT, YMMC TEXT, JC, YMPH TEXT, YXQ TEXT, DZJGM TEXT, JZRQ TEXT, JZBW TEXT, JZTJ TEXT, JZYS TEXT, JZDW_BM TEXT, JZDW_MC TEXT, \
              SCQY_BM TEXT, SCQY_MC TEXT, JL TEXT, BZJC INTEGER, SJLY TEXT)",
        &[
            "JZJL_ID", "SZZBM", "SZZ_XM", "SZZ_XB", "CSRQ", "ZJLX", "ZJHM", "LXDH", "JTZZ", "JHR_XM", "YMBM", "YMMC",
            "JC", "YMPH", "YXQ", "DZJGM", "JZRQ", "JZBW", "JZTJ", "JZYS", "JZDW_BM", "JZDW_MC", "SCQY_BM", "SCQY_MC",
            "JL", "BZJC", "SJLY",
        ],
    );
    for (i, v) in clinic_a_vaccinations(w) {
        let p = &w.people[v.person];
        let lot = &w.lots[v.lot];
        let prod = lot.product();
        let (zjlx, zjhm) = match (v.dirty, &p.resident_id) {
            (Some("id_number_check"), Some(id)) => (t("1"), t(crate::ids::with_bad_check(id))),
            _ => (t(p.id_type), t(&p.id_number)),
        };
        let code = match v.dirty {
            Some("trace_code_missing") => String::new(),
            _ if i % 11 == 0 => format!(" {} ", v.code),
            _ => v.code.clone(),
        };
        let record = [
            t(prod.vaccine_code),
            t(prod.name),
            if i % 3 == 0 {
                Val::Int(i64::from(v.dose))
            } else {
                t(v.dose.to_string())
            },
            t(if i % 7 == 0 {
                lot.number.to_lowercase()
            } else {
                lot.number.clone()
            }),
            t(lot.expires.format("%Y/%m/%d").to_string()),
            t(code),
            t(v.time.format("%Y%m%d%H%M%S").to_string()),
            t(format!("SX0504_{}", v.site)),
            t("SX0507_1"),
            t(format!("测试医生{:02}", v.clinician)),
            t(CLINIC_A.code),
            t(CLINIC_A.name),
            t("JS01"),
            t(MAH.name),
            t("0.5"),
            if i % 5 == 0 { Val::Null } else { Val::Int(1) },
            if i % 50 == 1 {
                t("2")
            } else if i % 4 == 0 {
                Val::Null
            } else {
                t("1")
            },
        ];
        let person = person_head(p).into_iter().chain([zjlx, zjhm]).chain(contacts(p));
        jzjl.rows
            .push(std::iter::once(t(&v.id)).chain(person).chain(record).collect());
    }
    jzjl
}

/// T_AEFI_BG: the adverse-event reports of clinic A (one dirty onset).
fn aefi_reports(w: &World) -> Table {
    let mut aefi = Table::new(
        "T_AEFI_BG",
        "CREATE TABLE T_AEFI_BG (BGBH TEXT PRIMARY KEY, SZZBM TEXT, XM TEXT, XB TEXT, CSRQ TEXT, YMBM TEXT, YMMC TEXT, PH TEXT, JC TEXT, JZRQ TEXT, \
              FSSJ TEXT, ZYBX TEXT, YZCD TEXT, FL TEXT, BGR TEXT, BGSJ TEXT, DZJGM TEXT, JZDW_BM TEXT)",
        &[
            "BGBH", "SZZBM", "XM", "XB", "CSRQ", "YMBM", "YMMC", "PH", "JC", "JZRQ", "FSSJ", "ZYBX", "YZCD", "FL",
            "BGR", "BGSJ", "DZJGM", "JZDW_BM",
        ],
    );
    for a in &w.aefi {
        let v = &w.vaccinations[a.vaccination];
        let lot = &w.lots[v.lot];
        let onset = match a.dirty {
            Some("onset_before_vaccination") => v.time - Duration::days(2),
            _ => a.onset,
        };
        let report = [
            t(lot.product().vaccine_code),
            t(lot.product().name),
            t(&lot.number),
            t(v.dose.to_string()),
            t(v.time.format("%Y/%m/%d").to_string()),
            t(onset.format("%Y%m%d%H%M").to_string()),
            t(a.symptoms),
            t(a.severity),
            t(a.class),
            t(format!("测试医生{:02}", v.clinician)),
            t(a.reported.format("%Y%m%d%H%M%S").to_string()),
            t(&v.code),
            t(CLINIC_A.code),
        ];
        let person = person_head(&w.people[v.person]);
        aefi.rows
            .push(std::iter::once(t(&a.id)).chain(person).chain(report).collect());
    }
    aefi
}

/// T_KC_YMKC: clinic A's stock of units and their state.
fn clinic_stock(w: &World) -> Table {
    let mut kc = Table::new(
        "T_KC_YMKC",
        "CREATE TABLE T_KC_YMKC (KCID INTEGER PRIMARY KEY, YMBM TEXT, YMMC TEXT, PH TEXT, DZJGM TEXT, RKRQ TEXT, ZT TEXT)",
        &["KCID", "YMBM", "YMMC", "PH", "DZJGM", "RKRQ", "ZT"],
    );
    for (clinic, li, code, received, state) in &w.clinic_stock {
        if *clinic != 0 {
            continue;
        }
        let lot = &w.lots[*li];
        kc.rows.push(vec![
            Val::Int(kc.rows.len() as i64 + 1),
            t(lot.product().vaccine_code),
            t(lot.product().name),
            t(&lot.number),
            t(code),
            t(received.format("%Y-%m-%d").to_string()),
            t(*state),
        ]);
    }
    kc
}

/// The view the cdc-stock spec reads: one row per bill line.
pub(crate) const CDC_VIEW: &str = "CREATE VIEW V_YM_CRKD AS SELECT z.DJH, z.DJLX, z.DJRQ, z.FHDW_DM, z.FHDW_MC, z.SHDW_DM, z.SHDW_MC, z.FHDH, \
    z.FHDZ, z.SHDZ, z.FHR, z.SHR, z.WTQY, m.YMBM, m.YMMC, m.PH, m.SCRQ, m.YXQZ, m.SL, m.YSSL, m.YSJG, m.WDJL, m.ZSM, m.BZJC, m.THYY, \
    z.ZHJB, z.ZHYY, z.ZHTZBH, m.BSYY, z.XHFS, z.ZXR, z.JDR, z.CZY FROM YM_CRKD_ZB z JOIN YM_CRKD_MX m ON m.DJH = z.DJH";

/// One CDC's stock system: bill headers, bill lines and the view.
pub(crate) fn cdc_tables(w: &World, system: usize) -> Vec<Table> {
    let mut zb = Table::new(
        "YM_CRKD_ZB",
        "CREATE TABLE YM_CRKD_ZB (DJH TEXT PRIMARY KEY, DJLX TEXT, DJRQ TEXT, FHDW_DM TEXT, FHDW_MC TEXT, SHDW_DM TEXT, SHDW_MC TEXT, FHDH TEXT, \
              FHDZ TEXT, SHDZ TEXT, FHR TEXT, SHR TEXT, WTQY TEXT, CZY TEXT, ZHJB TEXT, ZHYY TEXT, ZHTZBH TEXT, XHFS TEXT, ZXR TEXT, JDR TEXT)",
        &[
            "DJH", "DJLX", "DJRQ", "FHDW_DM", "FHDW_MC", "SHDW_DM", "SHDW_MC", "FHDH", "FHDZ", "SHDZ", "FHR", "SHR",
            "WTQY", "CZY", "ZHJB", "ZHYY", "ZHTZBH", "XHFS", "ZXR", "JDR",
        ],
    );
    let mut mx = Table::new(
        "YM_CRKD_MX",
        "CREATE TABLE YM_CRKD_MX (MXID INTEGER PRIMARY KEY, DJH TEXT, YMBM TEXT, YMMC TEXT, PH TEXT, SCRQ TEXT, YXQZ TEXT, SL, YSSL, YSJG TEXT, \
              WDJL TEXT, ZSM TEXT, BZJC TEXT, THYY TEXT, BSYY TEXT)",
        &[
            "MXID", "DJH", "YMBM", "YMMC", "PH", "SCRQ", "YXQZ", "SL", "YSSL", "YSJG", "WDJL", "ZSM", "BZJC", "THYY",
            "BSYY",
        ],
    );
    let mut bills: Vec<&world::Bill> = w.bills.iter().filter(|b| b.system == system).collect();
    bills.sort_by(|a, b| (a.time, &a.code).cmp(&(b.time, &b.code)));
    let staff = ["测试员01", "测试员02", "测试员03"];
    for (i, b) in bills.iter().enumerate() {
        let lot = &w.lots[b.lot];
        let inbound = b.bill_type.starts_with('1');
        let org = |o: Option<Org>| {
            (
                opt(o.map(|o| o.code)),
                opt(o.map(|o| o.name)),
                opt(o.map(|o| o.address)),
            )
        };
        let (fd, fm, fa) = org(b.from);
        let (sd, sm, sa) = org(b.to);
        let recall = b.extra.recall.clone();
        let loss = b.extra.loss;
        let op = staff[i % 3];
        // Columns that do not apply to a bill type stay NULL.
        let full = matches!(b.bill_type, "102" | "104" | "203");
        let is_return = matches!(b.bill_type, "103" | "202");
        let only = |keep: bool, v: Val| if keep { v } else { Val::Null };
        zb.rows.push(vec![
            t(&b.code),
            t(b.bill_type),
            t(b.time.format("%Y-%m-%d %H:%M:%S").to_string()),
            fd,
            fm,
            sd,
            sm,
            only(full || is_return, opt(b.from_bill.clone())),
            only(full, fa),
            only(full, sa),
            only(full, t(staff[(i + 1) % 3])),
            only(full, t(staff[(i + 2) % 3])),
            if b.bill_type == "203" { t(MAH.code) } else { Val::Null },
            t(op),
            opt(recall.as_ref().map(|r| r.0)),
            opt(recall.as_ref().map(|r| r.1)),
            opt(recall.as_ref().map(|r| r.2.clone())),
            opt(loss.map(|l| l.1)),
            opt(loss.map(|_| staff[(i + 1) % 3])),
            opt(loss.map(|_| staff[(i + 2) % 3])),
        ]);
        let qty = b.quantity as i64;
        mx.rows.push(vec![
            Val::Int(i as i64 + 1),
            t(&b.code),
            t(lot.product().vaccine_code),
            t(lot.product().name),
            t(&lot.number),
            only(full, t(lot.produced.format("%Y%m%d").to_string())),
            t(lot.expires.format("%Y%m%d").to_string()),
            if i % 2 == 0 { Val::Int(qty) } else { t(qty.to_string()) },
            if inbound && b.verified.is_some() {
                Val::Int(qty)
            } else {
                Val::Null
            },
            match b.verified {
                Some(true) => t("合格"),
                Some(false) => t("不合格"),
                None => Val::Null,
            },
            if b.verified.is_some() { t("Y") } else { Val::Null },
            if b.codes.is_empty() {
                Val::Null
            } else {
                t(b.codes.join(","))
            },
            only(full, t("1")),
            opt(b.extra.return_reason),
            opt(loss.map(|l| l.0)),
        ]);
    }
    vec![zb, mx]
}

/// coldchain.db: devices, summaries (LL_WDHZ) and raw transport readings.
pub(crate) fn coldchain_tables(w: &World) -> Vec<Table> {
    let mut sb = Table::new(
        "LL_SBXX",
        "CREATE TABLE LL_SBXX (SBBH TEXT PRIMARY KEY, SBLX TEXT, CFDD TEXT, DWBM TEXT)",
        &["SBBH", "SBLX", "CFDD", "DWBM"],
    );
    let mut devices = BTreeMap::new();
    for s in &w.summaries {
        devices.entry(s.device).or_insert((s.device_type, s.place, s.owner));
    }
    for (d, (ty, place, owner)) in devices {
        sb.rows.push(vec![t(d), t(ty), t(place), t(owner)]);
    }
    let mut hz = Table::new(
        "LL_WDHZ",
        "CREATE TABLE LL_WDHZ (JLID INTEGER PRIMARY KEY, SBBH TEXT, SBLX TEXT, CFDD TEXT, DWBM TEXT, KSSJ INTEGER, JSSJ INTEGER, DS INTEGER, \
              ZDWD INTEGER, ZGWD INTEGER, PJWD INTEGER, PJSD REAL, WDXX INTEGER, WDSX INTEGER, BJZT TEXT, JLJG INTEGER)",
        &[
            "JLID", "SBBH", "SBLX", "CFDD", "DWBM", "KSSJ", "JSSJ", "DS", "ZDWD", "ZGWD", "PJWD", "PJSD", "WDXX",
            "WDSX", "BJZT", "JLJG",
        ],
    );
    for (i, s) in w.summaries.iter().enumerate() {
        hz.rows.push(vec![
            Val::Int(100_001 + i as i64),
            t(s.device),
            t(s.device_type),
            t(s.place),
            t(s.owner),
            Val::Int(unix(s.start)),
            Val::Int(unix(s.end)),
            Val::Int(s.count),
            Val::Int(s.min),
            Val::Int(s.max),
            Val::Int(s.mean),
            s.humidity.map_or(Val::Null, |h| Val::Real(h as f64 / 10.0)),
            if s.range_given { Val::Int(2) } else { Val::Null },
            if s.range_given { Val::Int(8) } else { Val::Null },
            t(s.alarm),
            Val::Int(s.interval),
        ]);
    }
    let mut jl = Table::new(
        "LL_WDJL",
        "CREATE TABLE LL_WDJL (JLID INTEGER PRIMARY KEY, SBBH TEXT, CJSJ INTEGER, WD INTEGER)",
        &["JLID", "SBBH", "CJSJ", "WD"],
    );
    for trip in &w.trips {
        for (time, v) in &trip.readings {
            jl.rows.push(vec![
                Val::Int(jl.rows.len() as i64 + 1),
                t(trip.device),
                Val::Int(unix(*time)),
                Val::Int(*v),
            ]);
        }
    }
    vec![sb, hz, jl]
}

/// his.db: patients, encounters, the EMR document index and the documents
/// themselves (`EMR_WDNR`, by storage path: the index's `CCLJ`).
pub(crate) fn hospital_tables(w: &World) -> Vec<Table> {
    let mut br = Table::new(
        "HIS_BRXX",
        "CREATE TABLE HIS_BRXX (BRID TEXT PRIMARY KEY, XM TEXT, XB TEXT, CSRQ TEXT, SFZH TEXT, LXDH TEXT)",
        &["BRID", "XM", "XB", "CSRQ", "SFZH", "LXDH"],
    );
    let mut jz = Table::new(
        "HIS_JZXX",
        "CREATE TABLE HIS_JZXX (JZID TEXT PRIMARY KEY, BRID TEXT, JZLX TEXT, JZSJ TEXT)",
        &["JZID", "BRID", "JZLX", "JZSJ"],
    );
    let mut wd = Table::new(
        "EMR_WDSY",
        "CREATE TABLE EMR_WDSY (WDID TEXT PRIMARY KEY, YLJGDM TEXT, BRID TEXT, SFZH TEXT, WDLX TEXT, CJSJ TEXT, NRZY TEXT, CCLJ TEXT)",
        &["WDID", "YLJGDM", "BRID", "SFZH", "WDLX", "CJSJ", "NRZY", "CCLJ"],
    );
    let mut nr = Table::new(
        "EMR_WDNR",
        "CREATE TABLE EMR_WDNR (CCLJ TEXT PRIMARY KEY, NR TEXT)",
        &["CCLJ", "NR"],
    );
    let mut seen_p = std::collections::BTreeSet::new();
    let mut seen_e = std::collections::BTreeSet::new();
    for doc in &w.documents {
        let p = &w.patients[doc.patient];
        if seen_p.insert(doc.patient) {
            br.rows.push(vec![
                t(&doc.patient_local),
                t(&p.name),
                t(p.sex),
                t(p.birth.format("%Y%m%d").to_string()),
                opt(p.resident_id.clone()),
                opt(p.phone.clone()),
            ]);
        }
        if seen_e.insert(doc.encounter.clone()) {
            let kind = if doc.doc_type == "RYJL" || doc.doc_type == "CYXJ" {
                "住院"
            } else {
                "门诊"
            };
            jz.rows.push(vec![
                t(&doc.encounter),
                t(&doc.patient_local),
                t(kind),
                t(doc.time.format("%Y-%m-%d %H:%M:%S").to_string()),
            ]);
        }
        let sfzh = match (doc.dirty, &p.resident_id) {
            (Some("id_number_check"), Some(id)) => Some(crate::ids::with_bad_check(id)),
            _ => p.resident_id.clone(),
        };
        wd.rows.push(vec![
            t(&doc.id),
            t(world::HOSPITAL.code),
            t(&doc.patient_local),
            opt(sfzh),
            t(doc.doc_type),
            t(doc.time.format("%Y/%m/%d %H:%M:%S").to_string()),
            t(secure_gateway::hash::sm3(doc.content.as_bytes()).to_hex()),
            t(&doc.path),
        ]);
        nr.rows.push(vec![t(&doc.path), t(&doc.content)]);
    }
    br.rows
        .sort_by(|a, b| format!("{:?}", a[0]).cmp(&format!("{:?}", b[0])));
    vec![br, jz, wd, nr]
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The holder's nightly XML export (mah-export): products, production
/// inbound bills (101) with unit and carton codes, lot releases.
pub(crate) fn mah_xml(w: &World) -> String {
    let mut recs: Vec<(NaiveDateTime, String)> = Vec::new();
    let holder = format!("<Holder uscc=\"{}\">{}</Holder>", MAH.code, xml_escape(MAH.name));
    let product_time = chrono::NaiveDate::from_ymd_opt(2024, 6, 3)
        .and_then(|d| d.and_hms_opt(9, 0, 0))
        .unwrap_or_default();
    for p in &PRODUCTS {
        recs.push((
            product_time,
            format!(
                "    <Record type=\"PRODUCT\" id=\"P-{code}\">\n      <Time>{time}</Time>\n      <Product code=\"{code}\">\n        <Name>{name}</Name>\n        <GenericName>{generic}</GenericName>\n        <Form>注射剂</Form>\n        <Strength>{strength}</Strength>\n        <Package doses=\"1\">1支/盒</Package>\n        <ApprovalNo>{approval}</ApprovalNo>\n        <ShelfLife months=\"{months}\"/>\n        <Storage min=\"2\" max=\"8\"/>\n      </Product>\n      {holder}\n    </Record>\n",
                code = p.code7,
                time = product_time.format("%Y-%m-%d %H:%M:%S"),
                name = xml_escape(p.name),
                generic = xml_escape(p.generic),
                strength = xml_escape(p.strength),
                approval = p.approval,
                months = p.shelf_months,
            ),
        ));
    }
    let mut bill_no = 0;
    for (li, lot) in w.lots.iter().enumerate() {
        let p = lot.product();
        let lot_xml = |size: bool| {
            format!(
                "<Lot no=\"{}\"{}><Produced>{}</Produced><Expires>{}</Expires></Lot>",
                lot.number,
                if size {
                    format!(" size=\"{}\"", lot.cartons * world::CARTON)
                } else {
                    String::new()
                },
                lot.produced.format("%Y%m%d"),
                lot.expires.format("%Y%m%d")
            )
        };
        let serials: Vec<usize> = (1..=lot.cartons).collect();
        for (k, chunk) in serials.chunks(world::MAX_CARTONS_PER_BILL).enumerate() {
            bill_no += 1;
            let time = lot.produced.and_hms_opt(8, 0, 0).unwrap_or_default()
                + Duration::days(3)
                + Duration::minutes(k as i64 * 10);
            let mut codes = String::new();
            for &c in chunk {
                for u in lot.carton_units(c) {
                    codes.push_str(&format!("        <Code level=\"1\">{u}</Code>\n"));
                }
            }
            for &c in chunk {
                codes.push_str(&format!("        <Code level=\"2\">{}</Code>\n", lot.carton_code(c)));
            }
            recs.push((
                time,
                format!(
                    "    <Record type=\"PRODIN\" id=\"PI-{day}-{li}{k:02}\">\n      <Time>{t}</Time>\n      <Bill no=\"SC{day}{bill_no:03}\" type=\"101\"><Quantity>{q}</Quantity><Operator>测试员0{op}</Operator></Bill>\n      <Product code=\"{code}\"><Name>{name}</Name><Package doses=\"1\">1支/盒</Package><ShelfLife months=\"{months}\"/></Product>\n      {lot}\n      <Codes>\n{codes}      </Codes>\n    </Record>\n",
                    day = time.format("%Y%m%d"),
                    t = time.format("%Y-%m-%d %H:%M:%S"),
                    q = chunk.len() * world::CARTON,
                    op = 1 + k % 3,
                    code = p.code7,
                    name = xml_escape(p.name),
                    months = p.shelf_months,
                    lot = lot_xml(false),
                ),
            ));
        }
        let rt = lot.released.and_hms_opt(16, 30, 0).unwrap_or_default();
        recs.push((
            rt,
            format!(
                "    <Record type=\"LOTREL\" id=\"L-{number}\">\n      <Time>{t}</Time>\n      <Product code=\"{code}\"><Name>{name}</Name></Product>\n      {lot}\n      <Release>\n        <CertNo>SJ{day}{n:04}</CertNo>\n        <Date>{date}</Date>\n        <Authority>中国食品药品检定研究院</Authority>\n        <Conclusion>合格</Conclusion>\n      </Release>\n      {holder}\n    </Record>\n",
                number = lot.number,
                t = rt.format("%Y-%m-%d %H:%M:%S"),
                code = p.code7,
                name = xml_escape(p.name),
                lot = lot_xml(true),
                day = rt.format("%Y%m%d"),
                n = 101 + li,
                date = lot.released.format("%Y年%m月%d日"),
            ),
        ));
    }
    recs.sort_by_key(|r| r.0);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Export system=\"MAH-TRACE\" version=\"2.1\" exported=\"2025-01-12T02:00:00+08:00\">\n  <Header>{holder}</Header>\n  <Records>\n"
    );
    for (_, r) in recs {
        out.push_str(&r);
    }
    out.push_str("  </Records>\n</Export>\n");
    out
}

/// The provincial immunization system's VXU^V04 feed for clinic B, one
/// file per day: (file name, text with `\r` segment separators).
pub(crate) fn hl7_files(w: &World) -> Vec<(String, String)> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for (i, v) in w.vaccinations.iter().enumerate().filter(|(_, v)| v.clinic == 1) {
        let p = &w.people[v.person];
        let lot = &w.lots[v.lot];
        let prod = lot.product();
        let ts = v.time.format("%Y%m%d%H%M%S");
        let mut msg = format!(
            "MSH|^~\\&|JSIIS|{unit}|VAXGATE|JSCDC|{ts}+0800||VXU^V04^VXU_V04|MSG{id}|P|2.5.1|||ER|AL|||||Z22^CDCPHINVS\r",
            unit = CLINIC_B.code,
            id = v.id
        );
        let resident = match (v.dirty, &p.resident_id) {
            (Some("id_number_check"), Some(id)) => Some(crate::ids::with_bad_check(id)),
            (_, r) => r.clone(),
        };
        let pid3 = match resident {
            Some(r) => format!("{}^^^JSIIS^SZZBM~{r}^^^CHN^NNCHN", p.code),
            None => format!("{}^^^JSIIS^SZZBM", p.code),
        };
        let given = p.name.trim_start_matches("测试");
        let addr = p.address.as_deref().unwrap_or("");
        let phone = p
            .phone
            .as_deref()
            .map(|ph| format!("^PRN^PH^^^^^^^^^{ph}"))
            .unwrap_or_default();
        msg.push_str(&format!(
            "PID|1||{pid3}||测试^{given}^^^^^L||{}|{}|||{addr}^^^^^CHN||{phone}\r",
            p.birth.format("%Y%m%d"),
            if p.sex == "男" { "M" } else { "F" }
        ));
        if let Some(g) = &p.guardian {
            msg.push_str(&format!(
                "NK1|1|测试^{}^^^^^L|MTH^母亲^HL70063\r",
                g.trim_start_matches("测试")
            ));
        }
        msg.push_str(&format!("ORC|RE||{}^JSIIS\r", v.id));
        msg.push_str(&format!(
            "RXA|0|1|{ts}+0800||{cvx}^{name}^CVX|0.5|mL^^UCUM||00^新接种^NIP001|^测试^医生{c:02}|^^^{unit}||||{lot}|{exp}|JS01^{mah}^MVX-CN|||CP|A\r",
            cvx = prod.cvx,
            name = prod.name,
            c = v.clinician,
            unit = CLINIC_B.code,
            lot = lot.number,
            exp = lot.expires.format("%Y%m%d"),
            mah = MAH.name,
        ));
        let site = SITES[(v.site as usize - 1) % 4];
        msg.push_str(&format!("RXR|C28161^肌内注射^NCIT|{site}^^HL70163\r"));
        msg.push_str(&format!(
            "OBX|1|NM|30973-2^Dose number in series^LN|1|{}||||||F\r",
            v.dose
        ));
        msg.push_str(&format!("OBX|2|ST|ZTC^疫苗追溯码^L|1|{}||||||F\r", v.code));
        if i % 9 == 0 {
            msg.push_str("OBX|3|TX|ZBZ^备注^L|1|留观30分钟\\F\\无异常\\X0D0A\\已告知注意事项||||||F\r");
        }
        files
            .entry(format!("VXU-{}.hl7", v.time.format("%Y%m%d")))
            .or_default()
            .push_str(&msg);
    }
    files.into_iter().collect()
}

fn temp(tenths: i64) -> Value {
    json!(tenths as f64 / 10.0)
}

fn rfc3339(t: NaiveDateTime) -> String {
    format!("{}+08:00", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// The carrier ERP's shipment documents, one per departure day.
pub(crate) fn erp_files(w: &World) -> Vec<(String, String)> {
    let mut days: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in &w.shipments {
        let trip = &w.trips[s.trip];
        let lot = &w.lots[s.lot];
        let party = |o: &Org| json!({"uscc": o.code, "name": o.name, "address": o.address});
        let doc = json!({
            "waybillNo": s.waybill,
            "dispatchNote": s.dispatch,
            "vehicle": {"plate": trip.plate, "coldMode": trip.cold_mode},
            "logger": {"id": trip.device},
            "shipper": party(&s.from),
            "consignee": party(&s.to),
            "departure": {"time": rfc3339(trip.depart), "vaccineTemp": temp(trip.readings.first().map_or(45, |r| r.1)), "ambientTemp": temp(trip.ambient.0)},
            "arrival": {"time": rfc3339(trip.arrive), "vaccineTemp": temp(trip.readings.last().map_or(45, |r| r.1)), "ambientTemp": temp(trip.ambient.1)},
            "distanceKm": trip.distance as f64 / 10.0,
            "purpose": s.purpose,
            "packages": s.cartons.len(),
            "goods": {"name": lot.product().name, "lot": lot.number, "quantity": s.cartons.len() * world::CARTON},
            "cartons": s.cartons.iter().map(|&c| json!({"code": lot.carton_code(c), "units": lot.carton_units(c)})).collect::<Vec<_>>(),
        });
        days.entry(trip.depart.format("%Y%m%d").to_string())
            .or_default()
            .push(doc);
    }
    // A test waybill keyed in by hand with a 19-digit carton code.
    if let Some((_, docs)) = days.iter_mut().nth(2)
        && let Some(first) = docs.first()
    {
        let mut bad = first.clone();
        bad["waybillNo"] = json!(crate::DIRTY_WAYBILL);
        bad["dispatchNote"] = Value::Null;
        bad["goods"]["quantity"] = json!(10);
        bad["packages"] = json!(1);
        bad["cartons"] = json!([{"code": "8612345001100000001", "units": []}]);
        docs.push(bad);
    }
    days.into_iter()
        .map(|(day, shipments)| {
            let doc = json!({"batchId": format!("ERP-{day}-01"), "shipments": shipments});
            (
                format!("shipments-{day}.json"),
                serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
            )
        })
        .collect()
}
