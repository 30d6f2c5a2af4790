//! Synthetic legacy systems for `vaxgate sandbox`.
//!
//! [`generate`] writes, from a seed, the systems of a small vaccine supply
//! chain into a folder: SQLite databases with the legacy schemas of
//! `config/mappings/README.md` (a clinic immunization system, three CDC
//! stock systems, a cold-chain monitoring platform, a hospital HIS/EMR), the
//! provincial HL7 VXU feed, the holder's XML export and the carrier ERP's
//! JSON shipment events, plus the mapping specs for each source
//! ([`write_specs`]) and a `manifest.json` ([`Manifest`]).
//!
//! The world is deterministic: the PRNG is a hand-written xoshiro256**
//! ([`rng::Rng`]) and nothing depends on the clock, so the same seed gives
//! the same files on every platform. Persons are plainly synthetic
//! (`测试00001`, resident ID numbers in region `329999`, phones `0000-…`).
//! Trace codes are 20 digits: 7-digit product, 3-digit lot, a level digit
//! (0 unit, 1 carton) and a 9-digit serial; no check digit is invented.
//!
//! The lifecycle: production → lot release → holder to provincial CDC →
//! city CDC → county CDC → two clinics (with shipments and readings every
//! 5 min in transport, 30 min in storage) → vaccinations → some AEFI
//! reports and hospital visits. One flu lot is recalled; one shipment is
//! refused at the city CDC for a temperature excursion, returned and
//! destroyed. A few rows are deliberately dirty
//! ([`Manifest::expected_rejects`]).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod ids;
pub mod rng;
pub mod run;
pub mod world;
mod write;

/// The hand-keyed ERP waybill with a 19-digit carton code (dirty).
pub const DIRTY_WAYBILL: &str = "YD-MANUAL-0001";

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A SQLite database could not be written or read.
    #[error("sqlite database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// The manifest could not be (de)serialised.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Bad options.
    #[error("invalid option: {0}")]
    Options(String),
}

impl SandboxError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SandboxError {
        SandboxError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// What makes [`SandboxError::Sqlite`] errors about the database `path`.
    pub(crate) fn sqlite(path: &Path) -> impl Fn(sqlx::Error) -> SandboxError + Copy + '_ {
        move |source| SandboxError::Sqlite {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Seed of the world.
    pub seed: u64,
    /// Vaccinations to simulate (at least 20).
    pub doses: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { seed: 1, doses: 2_000 }
    }
}

/// How a source is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A table or view of a SQLite database.
    Sqlite,
    /// A folder of HL7 v2 files (`*.hl7`, segments separated by `\r`).
    Hl7Dir,
    /// One XML export file.
    XmlFile,
    /// A folder of JSON documents (`*.json`).
    JsonDir,
}

/// One legacy source and how to read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Source name (= the spec's `[source] name`).
    pub name: String,
    /// Spec file, relative to the sandbox folder (`mappings/<name>.toml`).
    pub spec: String,
    /// The example spec in `config/mappings/` it derives from.
    pub base_spec: String,
    /// Storage.
    pub kind: SourceKind,
    /// File or folder, relative to the sandbox folder.
    pub path: String,
    /// Table or view (SQLite sources).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub table: Option<String>,
    /// Increasing column an incremental reader follows (SQLite sources).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub watermark: Option<String>,
    /// Unique tie-breaker column (SQLite sources).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// Alias of the organisation that runs the system (and signs its
    /// batches); empty when `owner_column` splits the rows.
    pub operator: String,
    /// A multi-tenant system: each organisation reads (and signs) the rows
    /// whose `owner_column` holds its code (the cold-chain platform).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner_column: Option<String>,
    /// Records in the source (rows, messages, XML records, shipments).
    pub records: usize,
}

/// A deliberately dirty record and the rule it must fail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExpectedReject {
    /// Source name.
    pub source: String,
    /// Record key.
    pub record: String,
    /// Validation rule (e.g. `id_number_check`).
    pub rule: String,
}

/// An organisation of the sandbox, for registration in the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entity {
    /// Alias.
    pub alias: String,
    /// USCC the gateway registers it under.
    pub uscc: String,
    /// Code used in the legacy data (`event.source`, from/to).
    pub code: String,
    /// Name.
    pub name: String,
    /// Gateway role.
    pub role: String,
}

/// The organisations of every sandbox (the same for any seed and size):
/// known before the legacy systems are generated.
pub fn entities() -> Vec<Entity> {
    world::ORGS
        .iter()
        .map(|o| Entity {
            alias: o.alias.into(),
            uscc: o.uscc.into(),
            code: o.code.into(),
            name: o.name.into(),
            role: o.role.into(),
        })
        .collect()
}

/// Facts about the generated world, written to `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Generator format version.
    pub generator: String,
    /// Seed.
    pub seed: u64,
    /// Requested vaccinations.
    pub doses: usize,
    /// Organisations.
    pub entities: Vec<Entity>,
    /// Sources in the order an agent should read them (upstream first).
    pub sources: Vec<Source>,
    /// Dirty records (refused by the agent's mapping and validation, or by
    /// the gateway's custody rules).
    pub expected_rejects: Vec<ExpectedReject>,
    /// Records the gateway keeps and flags with a custody alert (a recalled
    /// dose given: docs/custody.md).
    #[serde(default)]
    pub expected_flags: Vec<ExpectedReject>,
    /// A dose whose trace is complete: production to vaccination.
    pub demo_trace_code: String,
    /// The lot number of the demo dose.
    pub demo_lot: String,
    /// The recalled lot and its notice.
    pub recalled_lot: String,
    /// Recall notice number.
    pub recall_notice: String,
    /// Waybill of the shipment refused at receipt.
    pub refused_waybill: String,
    /// A unit code of that shipment (its trace shows the refused receipt).
    #[serde(default)]
    pub refused_trace_code: String,
    /// Unit codes produced.
    pub units_produced: usize,
    /// Vaccinations generated (both clinics).
    pub vaccinations: usize,
}

/// The example mapping specs, embedded at build time from
/// `config/mappings/` so an installed binary has them too.
pub const BASE_SPECS: [(&str, &str); 8] = [
    ("mah-export.toml", include_str!("../../config/mappings/mah-export.toml")),
    ("cdc-stock.toml", include_str!("../../config/mappings/cdc-stock.toml")),
    (
        "erp-shipment.toml",
        include_str!("../../config/mappings/erp-shipment.toml"),
    ),
    ("coldchain.toml", include_str!("../../config/mappings/coldchain.toml")),
    ("clinic-ims.toml", include_str!("../../config/mappings/clinic-ims.toml")),
    (
        "clinic-aefi.toml",
        include_str!("../../config/mappings/clinic-aefi.toml"),
    ),
    ("hl7-vxu.toml", include_str!("../../config/mappings/hl7-vxu.toml")),
    ("emr.toml", include_str!("../../config/mappings/emr.toml")),
];

/// The spec text for `source`: the embedded base spec, with `[source]
/// name` and `entity` replaced where the sandbox runs the same software at
/// another organisation (the provincial and county CDC stock systems).
pub fn spec_text(source: &Source, entity: Option<&str>) -> Option<String> {
    let base = BASE_SPECS.iter().find(|(f, _)| *f == source.base_spec)?.1;
    let mut out = String::with_capacity(base.len() + 64);
    let mut in_source = false;
    for line in base.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_source = trimmed.starts_with("[source]");
        }
        if in_source && trimmed.starts_with("name ") {
            out.push_str(&format!("name = \"{}\"\n", source.name));
        } else if in_source && trimmed.starts_with("entity ") && entity.is_some() {
            out.push_str(&format!("entity = \"{}\"\n", entity.unwrap_or_default()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Some(out)
}

fn spec_entity(source: &str) -> Option<&'static str> {
    match source {
        "cdc-stock-province" => Some(world::PROVINCE.code),
        "cdc-stock-county" => Some(world::COUNTY.code),
        "hl7-vxu-xinjiekou" => None,
        _ => None,
    }
}

/// Writes each source's spec into `dir/mappings/`.
///
/// # Errors
/// [`SandboxError::Io`] when a file cannot be written.
pub fn write_specs(dir: &Path, manifest: &Manifest) -> Result<(), SandboxError> {
    let mdir = dir.join("mappings");
    std::fs::create_dir_all(&mdir).map_err(|e| SandboxError::io(&mdir, e))?;
    for s in &manifest.sources {
        let text = spec_text(s, spec_entity(&s.name))
            .ok_or_else(|| SandboxError::Options(format!("source {}: no embedded spec {}", s.name, s.base_spec)))?;
        let p = dir.join(&s.spec);
        std::fs::write(&p, text).map_err(|e| SandboxError::io(&p, e))?;
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<(), SandboxError> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| SandboxError::io(parent, e))?;
    }
    std::fs::write(&p, data).map_err(|e| SandboxError::io(&p, e))
}

/// Aborts the task when dropped (an early error return stops the writer of
/// the clinic system instead of leaving it running).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The numbers of vaccinations a world can have.
pub const DOSES: std::ops::RangeInclusive<usize> = 20..=10_000_000;

/// Generates the legacy systems into `dir` (created if missing; the
/// sandbox's own files are overwritten) and returns the manifest, also
/// written to `dir/manifest.json`.
///
/// # Errors
/// [`SandboxError`] naming the file that could not be written.
pub async fn generate(dir: &Path, opts: &Options) -> Result<Manifest, SandboxError> {
    if !DOSES.contains(&opts.doses) {
        return Err(SandboxError::Options(format!(
            "--doses {} is outside {}..={}",
            opts.doses,
            DOSES.start(),
            DOSES.end()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    let w = std::sync::Arc::new(world::simulate(opts.seed, opts.doses));
    clear_systems(dir)?;
    let written = write_systems(dir, &w).await?;
    let manifest = manifest(&w, opts, sources(&written));
    let p = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| SandboxError::Manifest {
        path: p.display().to_string(),
        source: e,
    })?;
    std::fs::write(&p, text + "\n").map_err(|e| SandboxError::io(&p, e))?;
    write_specs(dir, &manifest)?;
    Ok(manifest)
}

/// Empties (or creates) the folder of each legacy system. The hospital's
/// is kept but for its former `docs` folder (documents are in his.db now).
fn clear_systems(dir: &Path) -> Result<(), SandboxError> {
    for sub in ["clinic", "cdc", "coldchain", "hospital", "hl7", "erp", "mah"] {
        let p = dir.join(sub);
        if p.exists() && sub != "hospital" {
            std::fs::remove_dir_all(&p).map_err(|e| SandboxError::io(&p, e))?;
        }
        std::fs::create_dir_all(&p).map_err(|e| SandboxError::io(&p, e))?;
    }
    // Documents were files in hospital/docs before they moved into his.db.
    let docs = dir.join("hospital/docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs).map_err(|e| SandboxError::io(&docs, e))?;
    }
    Ok(())
}

/// How many records each legacy system was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    /// XML records of the holder's export.
    mah_records: usize,
    /// Bills of the province, city and county CDC stock systems.
    cdc_bills: [usize; 3],
    /// ERP shipment events.
    shipments: usize,
    /// Rows of the cold-chain platform's readings.
    readings: usize,
    /// Vaccination rows of the clinic system.
    vaccinations: usize,
    /// AEFI reports of the clinic system.
    aefi: usize,
    /// HL7 messages of the provincial feed.
    hl7_messages: usize,
    /// Document index rows of the hospital EMR.
    documents: usize,
}

/// Writes every legacy system of `w` into `dir`. The clinic system (80 %
/// of the rows) is built and written on a task of its own while this one
/// builds and writes the others.
async fn write_systems(dir: &Path, w: &std::sync::Arc<world::World>) -> Result<Written, SandboxError> {
    let clinic_db = dir.join("clinic/clinic.db");
    let mut clinic = {
        let w = w.clone();
        AbortOnDrop(tokio::spawn(async move {
            let tables = tokio::task::spawn_blocking(move || write::clinic_tables(&w))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            write::write_db(&clinic_db, &tables, &[]).await?;
            Ok::<_, SandboxError>((
                write::rows_of(&tables, "T_JZ_JZJL"),
                write::rows_of(&tables, "T_AEFI_BG"),
            ))
        }))
    };
    let cdc: Vec<Vec<write::Table>> = (0..3).map(|s| write::cdc_tables(w, s)).collect();
    let cold = write::coldchain_tables(w);
    let his = write::hospital_tables(w);
    // The legacy systems written on this task, before the clinic's are awaited.
    let xml = write::mah_xml(w);
    let erp = write::erp_files(w);
    let hl7 = write::hl7_files(w);
    for (s, file) in ["cdc/province.db", "cdc/city.db", "cdc/county.db"]
        .into_iter()
        .enumerate()
    {
        write::write_db(&dir.join(file), &cdc[s], &[write::CDC_VIEW]).await?;
    }
    write::write_db(&dir.join("coldchain/coldchain.db"), &cold, &[]).await?;
    write::write_db(&dir.join("hospital/his.db"), &his, &[]).await?;
    let (vaccinations, aefi) = (&mut clinic.0)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    write_file(dir, "mah/export.xml", xml.as_bytes())?;
    Ok(Written {
        mah_records: xml.matches("<Record ").count(),
        cdc_bills: [0, 1, 2].map(|s| write::rows_of(&cdc[s], "YM_CRKD_ZB")),
        shipments: write_files(dir, "erp", &erp, "\"waybillNo\"")?,
        readings: write::rows_of(&cold, "LL_WDHZ"),
        vaccinations,
        aefi,
        hl7_messages: write_files(dir, "hl7", &hl7, "MSH|")?,
        documents: write::rows_of(&his, "EMR_WDSY"),
    })
}

/// Writes `files` (name, text) into the folder `sub` of `dir` and returns
/// how many records they hold: the occurrences of `record_marker`.
fn write_files(dir: &Path, sub: &str, files: &[(String, String)], record_marker: &str) -> Result<usize, SandboxError> {
    let mut records = 0;
    for (name, text) in files {
        records += text.matches(record_marker).count();
        write_file(dir, &format!("{sub}/{name}"), text.as_bytes())?;
    }
    Ok(records)
}

/// The sources of the written systems, in the order an agent reads them
/// (upstream first).
fn sources(n: &Written) -> Vec<Source> {
    let mut sources = Vec::new();
    let mut src =
        |name: &str, base: &str, kind, path: &str, table: Option<(&str, &str, &str)>, operator: &str, records| {
            sources.push(Source {
                name: name.into(),
                spec: format!("mappings/{name}.toml"),
                base_spec: base.into(),
                kind,
                path: path.into(),
                table: table.map(|t| t.0.to_string()),
                watermark: table.map(|t| t.1.to_string()),
                key: table.map(|t| t.2.to_string()),
                operator: operator.into(),
                owner_column: (operator.is_empty() && table.is_some()).then(|| "DWBM".to_string()),
                records,
            });
        };
    src(
        "mah-export",
        "mah-export.toml",
        SourceKind::XmlFile,
        "mah/export.xml",
        None,
        world::MAH.alias,
        n.mah_records,
    );
    for (s, (name, file, alias)) in [
        ("cdc-stock-province", "cdc/province.db", world::PROVINCE.alias),
        ("cdc-stock", "cdc/city.db", world::CITY.alias),
        ("cdc-stock-county", "cdc/county.db", world::COUNTY.alias),
    ]
    .into_iter()
    .enumerate()
    {
        src(
            name,
            "cdc-stock.toml",
            SourceKind::Sqlite,
            file,
            Some(("V_YM_CRKD", "DJRQ", "DJH")),
            alias,
            n.cdc_bills[s],
        );
    }
    src(
        "erp-shipment",
        "erp-shipment.toml",
        SourceKind::JsonDir,
        "erp",
        None,
        world::CARRIER.alias,
        n.shipments,
    );
    src(
        "coldchain",
        "coldchain.toml",
        SourceKind::Sqlite,
        "coldchain/coldchain.db",
        Some(("LL_WDHZ", "JLID", "JLID")),
        "",
        n.readings,
    );
    src(
        "clinic-ims",
        "clinic-ims.toml",
        SourceKind::Sqlite,
        "clinic/clinic.db",
        Some(("T_JZ_JZJL", "JZRQ", "JZJL_ID")),
        world::CLINIC_A.alias,
        n.vaccinations,
    );
    src(
        "clinic-aefi",
        "clinic-aefi.toml",
        SourceKind::Sqlite,
        "clinic/clinic.db",
        Some(("T_AEFI_BG", "BGSJ", "BGBH")),
        world::CLINIC_A.alias,
        n.aefi,
    );
    src(
        "hl7-vxu",
        "hl7-vxu.toml",
        SourceKind::Hl7Dir,
        "hl7",
        None,
        world::CLINIC_B.alias,
        n.hl7_messages,
    );
    src(
        "emr",
        "emr.toml",
        SourceKind::Sqlite,
        "hospital/his.db",
        Some(("EMR_WDSY", "CJSJ", "WDID")),
        world::HOSPITAL.alias,
        n.documents,
    );
    sources
}

fn manifest(w: &world::World, opts: &Options, sources: Vec<Source>) -> Manifest {
    let mut rejects = Vec::new();
    for v in w.vaccinations.iter().filter(|v| v.dirty.is_some()) {
        rejects.push(ExpectedReject {
            source: if v.clinic == 0 { "clinic-ims" } else { "hl7-vxu" }.into(),
            record: v.id.clone(),
            rule: v.dirty.unwrap_or_default().into(),
        });
    }
    for a in w.aefi.iter().filter(|a| a.dirty.is_some()) {
        rejects.push(ExpectedReject {
            source: "clinic-aefi".into(),
            record: a.id.clone(),
            rule: a.dirty.unwrap_or_default().into(),
        });
    }
    for (i, s) in w.summaries.iter().enumerate() {
        if let Some(rule) = s.dirty {
            rejects.push(ExpectedReject {
                source: "coldchain".into(),
                record: (100_001 + i).to_string(),
                rule: rule.into(),
            });
        }
    }
    for doc in w.documents.iter().filter(|d| d.dirty.is_some()) {
        rejects.push(ExpectedReject {
            source: "emr".into(),
            record: doc.id.clone(),
            rule: doc.dirty.unwrap_or_default().into(),
        });
    }
    for b in w.bills.iter().filter(|b| b.codes.is_empty()) {
        rejects.push(ExpectedReject {
            source: ["cdc-stock-province", "cdc-stock", "cdc-stock-county"][b.system].into(),
            record: b.code.clone(),
            rule: "trace_code_missing".into(),
        });
    }
    rejects.push(ExpectedReject {
        source: "erp-shipment".into(),
        record: DIRTY_WAYBILL.into(),
        rule: "trace_code_format".into(),
    });
    rejects.sort();
    // The demo dose: the first clean clinic-A dose of the first product
    // (8612345, which the sandbox's partner firm may read) from a lot's
    // first carton.
    let demo = w
        .vaccinations
        .iter()
        .find(|v| {
            v.clinic == 0
                && v.dirty.is_none()
                && w.lots[v.lot].product == 0
                && w.lots[v.lot].carton_units(1).contains(&v.code)
        })
        .or_else(|| w.vaccinations.iter().find(|v| v.clinic == 0 && v.dirty.is_none()));
    Manifest {
        generator: "vaxgate-sandbox/1".into(),
        seed: opts.seed,
        doses: opts.doses,
        entities: entities(),
        sources,
        expected_rejects: rejects,
        expected_flags: w
            .vaccinations
            .iter()
            .filter(|v| v.dirty.is_none() && v.lot == w.recalled_lot && v.time >= w.recall.1)
            .map(|v| ExpectedReject {
                source: if v.clinic == 0 { "clinic-ims" } else { "hl7-vxu" }.into(),
                record: v.id.clone(),
                rule: "recalled_used".into(),
            })
            .collect(),
        demo_trace_code: demo.map(|v| v.code.clone()).unwrap_or_default(),
        demo_lot: demo.map(|v| w.lots[v.lot].number.clone()).unwrap_or_default(),
        recalled_lot: w.lots[w.recalled_lot].number.clone(),
        recall_notice: w.recall.0.clone(),
        refused_waybill: w.shipments[w.refused_shipment].waybill.clone(),
        refused_trace_code: {
            let sh = &w.shipments[w.refused_shipment];
            sh.cartons
                .first()
                .and_then(|c| w.lots[sh.lot].carton_units(*c).into_iter().next())
                .unwrap_or_default()
        },
        units_produced: w.lots.iter().map(|l| l.cartons * world::CARTON).sum(),
        vaccinations: w.vaccinations.len(),
    }
}

/// Reads `dir/manifest.json`.
///
/// # Errors
/// [`SandboxError`] when it is missing or malformed.
pub fn load_manifest(dir: &Path) -> Result<Manifest, SandboxError> {
    let p = dir.join("manifest.json");
    let text = std::fs::read_to_string(&p).map_err(|e| SandboxError::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| SandboxError::Manifest {
        path: p.display().to_string(),
        source: e,
    })
}

/// Opens the SQLite database `path` read-only.
async fn open_read_only(path: &Path) -> Result<sqlx::SqliteConnection, SandboxError> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
        .await
        .map_err(SandboxError::sqlite(path))
}

/// Reads every row of a SQLite table or view as JSON objects (TEXT →
/// string, INTEGER/REAL → number, NULL → null), ordered by `order_by`.
///
/// # Errors
/// [`SandboxError::Sqlite`] naming the database.
pub async fn sqlite_rows(
    path: &Path,
    table: &str,
    order_by: &str,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, SandboxError> {
    use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};
    let at = SandboxError::sqlite(path);
    let mut conn = open_read_only(path).await?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b',' || b == b' ')
    };
    if !ident(table) || !ident(order_by) {
        return Err(SandboxError::Options(format!(
            "{}: table `{table}` / order `{order_by}` must be plain identifiers",
            path.display()
        )));
    }
    // Identifiers checked above; no value is interpolated.
    let sql = sqlx::AssertSqlSafe(format!("SELECT * FROM {table} ORDER BY {order_by}"));
    let rows = sqlx::query(sql).fetch_all(&mut conn).await.map_err(at)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut m = serde_json::Map::new();
        for (i, c) in row.columns().iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(at)?;
            let v = if raw.is_null() {
                serde_json::Value::Null
            } else {
                match raw.type_info().name() {
                    "INTEGER" => serde_json::Value::from(row.try_get::<i64, _>(i).map_err(at)?),
                    "REAL" => serde_json::Value::from(row.try_get::<f64, _>(i).map_err(at)?),
                    _ => serde_json::Value::from(row.try_get::<String, _>(i).map_err(at)?),
                }
            };
            m.insert(c.name().to_string(), v);
        }
        out.push(m);
    }
    Ok(out)
}

/// SM3 of a SQLite database's logical content: every table (by name) and
/// its rows in rowid order with typed values. Independent of page layout.
///
/// # Errors
/// [`SandboxError::Sqlite`] naming the database.
pub async fn logical_digest(path: &Path) -> Result<String, SandboxError> {
    let at = SandboxError::sqlite(path);
    let mut conn = open_read_only(path).await?;
    let tables: Vec<(String, String)> =
        sqlx::query_as("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .map_err(at)?;
    drop(conn);
    let mut h = secure_gateway::hash::Sm3Hasher::new();
    for (name, sql) in tables {
        h.update(sql.as_bytes()).update(b"\n");
        if sql.starts_with("CREATE TABLE") {
            for row in sqlite_rows(path, &name, "rowid").await? {
                h.update(serde_json::Value::Object(row).to_string().as_bytes())
                    .update(b"\n");
            }
        }
    }
    Ok(h.finalize().to_hex())
}

/// Every generated file under `dir`, relative, sorted (for digests).
///
/// # Errors
/// [`SandboxError::Io`].
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) -> Result<(), SandboxError> {
        for e in std::fs::read_dir(d).map_err(|e| SandboxError::io(d, e))? {
            let e = e.map_err(|e| SandboxError::io(d, e))?;
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
