//! The simulated supply chain: products, lots, codes, movements, shipments,
//! cold-chain readings, vaccinations, AEFI reports and hospital documents.
//! Pure and deterministic: the same [`crate::Options`] give the same world.
//!
//! This file holds the world's types; `world/data.rs` its fixed tables
//! (organisations, products, devices) and `world/sim.rs` [`simulate`], one
//! method per phase.

use chrono::{NaiveDate, NaiveDateTime};

mod data;
mod sim;

pub use data::{CARRIER, CITY, CLINIC_A, CLINIC_B, COUNTY, HOSPITAL, MAH, ORGS, PRODUCTS, PROVINCE};
pub use sim::simulate;

/// One organisation of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Org {
    /// Short alias (used for keys and aliases in the gateway).
    pub alias: &'static str,
    /// The code the legacy systems use (USCC, 接种单位编码 or 医疗机构代码).
    pub code: &'static str,
    /// The unified social credit code the gateway registers it under.
    pub uscc: &'static str,
    /// Name.
    pub name: &'static str,
    /// Address (an organisation's, never a person's).
    pub address: &'static str,
    /// Gateway role.
    pub role: &'static str,
}

/// A vaccine product of the holder.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    /// 7-digit 药品标识码 (the first 7 digits of its trace codes).
    pub code7: &'static str,
    /// National 4-digit vaccine code.
    pub vaccine_code: &'static str,
    /// CVX code used by the HL7 feed.
    pub cvx: &'static str,
    /// Name.
    pub name: &'static str,
    /// Generic name.
    pub generic: &'static str,
    /// Strength.
    pub strength: &'static str,
    /// Approval number.
    pub approval: &'static str,
    /// Shelf life in months.
    pub shelf_months: u32,
    /// Lot-number letter.
    pub letter: char,
}

/// Units per carton (level-2 code).
pub const CARTON: usize = 10;
/// Cartons per shipment and bill at most: one bill is one ledger transaction,
/// and its sealed record must stay under 8 KiB (T/CPMA 026-2023 Annex A).
pub const MAX_CARTONS_PER_BILL: usize = 5;

/// A production lot.
#[derive(Debug, Clone)]
pub struct Lot {
    /// Index into [`PRODUCTS`].
    pub product: usize,
    /// Lot number (upper case).
    pub number: String,
    /// Production date.
    pub produced: NaiveDate,
    /// Expiry date (production + shelf life − 1 day).
    pub expires: NaiveDate,
    /// Lot release date.
    pub released: NaiveDate,
    /// Lot index in the code (1-based, 3 digits).
    pub code_index: usize,
    /// Cartons produced.
    pub cartons: usize,
}

impl Lot {
    /// The product of this lot.
    pub fn product(&self) -> &'static Product {
        &PRODUCTS[self.product]
    }
    /// Code of unit `serial` (1-based): 7-digit product, 3-digit lot, level
    /// digit 0, 9-digit serial. No check digit is invented.
    pub fn unit_code(&self, serial: usize) -> String {
        format!("{}{:03}0{:09}", self.product().code7, self.code_index, serial)
    }
    /// Code of carton `serial` (1-based), level digit 1.
    pub fn carton_code(&self, serial: usize) -> String {
        format!("{}{:03}1{:09}", self.product().code7, self.code_index, serial)
    }
    /// Unit codes of carton `serial`.
    pub fn carton_units(&self, serial: usize) -> Vec<String> {
        (0..CARTON)
            .map(|k| self.unit_code((serial - 1) * CARTON + k + 1))
            .collect()
    }
}

/// A person (recipient or patient). Plainly synthetic.
#[derive(Debug, Clone)]
pub struct Person {
    /// 受种者编码 (18 digits).
    pub code: String,
    /// Name, `测试` + number.
    pub name: String,
    /// 男 / 女.
    pub sex: &'static str,
    /// Date of birth.
    pub birth: NaiveDate,
    /// Local document type (1 身份证, 2 出生证明).
    pub id_type: &'static str,
    /// Document number.
    pub id_number: String,
    /// Resident ID number when the person has one.
    pub resident_id: Option<String>,
    /// Phone (a non-assignable `0000-` number).
    pub phone: Option<String>,
    /// Address (`测试路` + number).
    pub address: Option<String>,
    /// Guardian name (children).
    pub guardian: Option<String>,
    /// Is a child.
    pub child: bool,
}

/// A truck, vehicle box, cooler box or logger trip with its readings.
#[derive(Debug, Clone)]
pub struct Trip {
    /// Logger / device id.
    pub device: &'static str,
    /// Local device type (LCC, LCX, JLY).
    pub device_type: &'static str,
    /// Where the probe is.
    pub place: &'static str,
    /// Vehicle plate.
    pub plate: &'static str,
    /// ERP cold mode.
    pub cold_mode: &'static str,
    /// Departure.
    pub depart: NaiveDateTime,
    /// Arrival.
    pub arrive: NaiveDateTime,
    /// Readings every 5 min: (time, tenths of °C).
    pub readings: Vec<(NaiveDateTime, i64)>,
    /// Local alarm state (ZC, CW, GZ ...).
    pub alarm: &'static str,
    /// Ambient temperature at departure / arrival, tenths.
    pub ambient: (i64, i64),
    /// Distance in tenths of km.
    pub distance: i64,
}

/// One waybill (one lot, some cartons) on a trip.
#[derive(Debug, Clone)]
pub struct Shipment {
    /// Waybill number.
    pub waybill: String,
    /// Sender's outbound bill / dispatch note.
    pub dispatch: String,
    /// Trip index.
    pub trip: usize,
    /// From.
    pub from: Org,
    /// To.
    pub to: Org,
    /// Lot index.
    pub lot: usize,
    /// Carton serials.
    pub cartons: Vec<usize>,
    /// Purpose text.
    pub purpose: &'static str,
}

/// One bill line in a CDC stock system.
#[derive(Debug, Clone)]
pub struct Bill {
    /// Which CDC system holds it (0 province, 1 city, 2 county).
    pub system: usize,
    /// Bill number.
    pub code: String,
    /// Bill type (码上放心 code).
    pub bill_type: &'static str,
    /// Time.
    pub time: NaiveDateTime,
    /// From.
    pub from: Option<Org>,
    /// To.
    pub to: Option<Org>,
    /// Upstream dispatch note.
    pub from_bill: Option<String>,
    /// Lot index.
    pub lot: usize,
    /// Unit codes (empty = not scanned, a dirty row).
    pub codes: Vec<String>,
    /// Quantity.
    pub quantity: usize,
    /// Receipt check (inbound).
    pub verified: Option<bool>,
    /// Extra columns: return reason, recall, loss.
    pub extra: BillExtra,
}

/// Bill-type-specific columns.
#[derive(Debug, Clone, Default)]
pub struct BillExtra {
    /// THYY.
    pub return_reason: Option<&'static str>,
    /// ZHJB, ZHYY, ZHTZBH.
    pub recall: Option<(&'static str, &'static str, String)>,
    /// BSYY, XHFS.
    pub loss: Option<(&'static str, &'static str)>,
}

/// A vaccination.
#[derive(Debug, Clone)]
pub struct Vaccination {
    /// Record id (JZJL_ID / ORC-3).
    pub id: String,
    /// 0 = clinic A (SQLite IMS), 1 = clinic B (HL7 feed).
    pub clinic: usize,
    /// Time.
    pub time: NaiveDateTime,
    /// Recipient index.
    pub person: usize,
    /// Lot index.
    pub lot: usize,
    /// Trace code of the dose.
    pub code: String,
    /// Dose number.
    pub dose: u32,
    /// Site (SX0504_n index 1..4).
    pub site: u32,
    /// Clinician number.
    pub clinician: u32,
    /// Deliberate defect (a dirty row): the rule it must fail.
    pub dirty: Option<&'static str>,
}

/// An AEFI report.
#[derive(Debug, Clone)]
pub struct Aefi {
    /// Report number.
    pub id: String,
    /// Vaccination index.
    pub vaccination: usize,
    /// Onset.
    pub onset: NaiveDateTime,
    /// Report time.
    pub reported: NaiveDateTime,
    /// Symptoms.
    pub symptoms: &'static str,
    /// 一般 / 严重.
    pub severity: &'static str,
    /// Classification 1-5, 9.
    pub class: &'static str,
    /// Deliberate defect.
    pub dirty: Option<&'static str>,
}

/// A storage or transport reading summary (LL_WDHZ row).
#[derive(Debug, Clone)]
pub struct Summary {
    /// Device.
    pub device: &'static str,
    /// Device type (LK, BX, LCC, LCX, JLY).
    pub device_type: &'static str,
    /// Place.
    pub place: &'static str,
    /// Owning unit code.
    pub owner: &'static str,
    /// Period start / end.
    pub start: NaiveDateTime,
    /// End.
    pub end: NaiveDateTime,
    /// Reading count.
    pub count: i64,
    /// Min, max, mean in tenths.
    pub min: i64,
    /// Max.
    pub max: i64,
    /// Mean.
    pub mean: i64,
    /// Humidity (tenths of %), NULL sometimes.
    pub humidity: Option<i64>,
    /// Whether WDXX/WDSX are filled.
    pub range_given: bool,
    /// Alarm state.
    pub alarm: &'static str,
    /// Interval in minutes.
    pub interval: i64,
    /// Deliberate defect.
    pub dirty: Option<&'static str>,
}

/// An EMR document index row.
#[derive(Debug, Clone)]
pub struct Document {
    /// Document id.
    pub id: String,
    /// Patient index into `patients`.
    pub patient: usize,
    /// Local patient id.
    pub patient_local: String,
    /// Encounter id.
    pub encounter: String,
    /// Local type code.
    pub doc_type: &'static str,
    /// Time.
    pub time: NaiveDateTime,
    /// Relative storage path.
    pub path: String,
    /// Document text (stays at the hospital).
    pub content: String,
    /// Deliberate defect.
    pub dirty: Option<&'static str>,
}

/// The whole simulated world.
#[derive(Debug, Clone)]
pub struct World {
    /// Lots.
    pub lots: Vec<Lot>,
    /// Recipients.
    pub people: Vec<Person>,
    /// Hospital patients (index into `people` or own).
    pub patients: Vec<Person>,
    /// Trips.
    pub trips: Vec<Trip>,
    /// Shipments.
    pub shipments: Vec<Shipment>,
    /// Bills of the three CDC systems.
    pub bills: Vec<Bill>,
    /// Vaccinations in time order.
    pub vaccinations: Vec<Vaccination>,
    /// AEFI reports.
    pub aefi: Vec<Aefi>,
    /// Cold-chain summaries.
    pub summaries: Vec<Summary>,
    /// EMR documents.
    pub documents: Vec<Document>,
    /// Clinic stock: (clinic, lot, unit code, received, state).
    pub clinic_stock: Vec<(usize, usize, String, NaiveDateTime, &'static str)>,
    /// Recalled lot.
    pub recalled_lot: usize,
    /// Recall notice number and time.
    pub recall: (String, NaiveDateTime),
    /// Index of the shipment refused at receipt.
    pub refused_shipment: usize,
}

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap_or_default()
}

fn at(day: NaiveDate, h: u32, m: u32) -> NaiveDateTime {
    day.and_hms_opt(h, m, 0).unwrap_or_default()
}

/// First vaccination day.
pub fn first_day() -> NaiveDate {
    d(2025, 2, 10)
}
/// Last vaccination day.
pub fn last_day() -> NaiveDate {
    d(2025, 5, 30)
}
/// The recall of the second flu lot.
pub fn recall_time() -> NaiveDateTime {
    at(d(2025, 4, 15), 10, 0)
}
