//! The simulation: [`simulate`] runs the phases of [`Sim`] in order, from the
//! lots to the hospital documents. Each phase is one method that reads what
//! the earlier ones left in [`Sim`] and draws from its own stream forked from
//! the seed (`plan`, `people`, `vaccinations`, `aefi`, `storage`, `hospital`;
//! the three phases that create trips share `transport`), so the phases must
//! run in this order for a seed to give the same world.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Weekday};

use super::data::{STORES, SYMPTOMS, VEHICLES};
use super::{
    Aefi, Bill, BillExtra, CARRIER, CARTON, CITY, CLINIC_A, CLINIC_B, COUNTY, Document, Lot, MAH, MAX_CARTONS_PER_BILL,
    Org, PRODUCTS, PROVINCE, Person, Shipment, Summary, Trip, Vaccination, World, at, d, first_day, last_day,
    recall_time,
};
use crate::ids;
use crate::rng::Rng;

/// Simulates the world for `doses` vaccinations from `seed`.
pub fn simulate(seed: u64, doses: usize) -> World {
    let mut sim = Sim::delivered(seed, doses);
    sim.people();
    sim.vaccinations();
    let returned = sim.stock_states();
    sim.recall_bills(returned);
    sim.write_off();
    sim.dirty_vaccinations();
    sim.custody_violations();
    sim.aefi();
    sim.storage_summaries();
    sim.hospital();
    sim.w
}

/// Bill-number prefixes of the CDC stock systems (province, city, county).
const SYS_PREFIX: [&str; 3] = ["JS", "NJ", "XW"];

/// The lot a dose of `product` given on `day` comes from.
fn lot_for(product: usize, day: NaiveDate) -> usize {
    let second = match product {
        2 => day >= d(2025, 3, 17) && day < recall_time().date(),
        _ => day >= d(2025, 4, 1),
    };
    product * 2 + usize::from(second)
}

/// One planned vaccination.
#[derive(Debug)]
struct Plan {
    day: NaiveDate,
    minute: u32,
    clinic: usize,
    product: usize,
    lot: usize,
}

/// Bill and waybill numbers: prefix, day and a 3-digit serial per prefix and
/// day, in the order they are issued.
#[derive(Debug, Default)]
struct Numbers(BTreeMap<String, u32>);

impl Numbers {
    fn next(&mut self, prefix: &str, day: NaiveDate) -> String {
        let key = format!("{prefix}{}", day.format("%Y%m%d"));
        let n = self.0.entry(key.clone()).or_insert(0);
        *n += 1;
        format!("{key}{:03}", n)
    }
}

/// Units of the recalled lot the clinics send back.
#[derive(Debug, Default)]
struct Returned {
    /// All of them, in the order the clinics received them.
    all: Vec<String>,
    /// By clinic (0 = clinic A, 1 = clinic B).
    by_clinic: [Vec<String>; 2],
}

/// The state that flows between the phases of [`simulate`].
#[derive(Debug)]
struct Sim {
    /// The seed's generator: phases fork their streams from it, none draws
    /// from it.
    root: Rng,
    /// Vaccinations to plan (at least 20).
    doses: usize,
    /// The world built so far.
    w: World,
    /// Planned vaccinations in time order ([`Sim::plan`]).
    plans: Vec<Plan>,
    /// Deliveries to the clinics, sorted: (Friday, clinic, lot, cartons)
    /// ([`Sim::deliveries`]).
    deliveries: Vec<(NaiveDate, usize, usize, usize)>,
    /// Carton serials of each delivery ([`Sim::carton_serials`]).
    delivered: Vec<Vec<usize>>,
    /// Carton serials of each lot left at the county, city and province.
    buffers: Vec<[Vec<usize>; 3]>,
    /// Carton serials (lot 0) of the delivery refused at receipt.
    refused_cartons: Vec<usize>,
    /// The stream of every trip's readings, durations and distances.
    transport: Rng,
    /// Bill and waybill numbers issued so far.
    numbers: Numbers,
    /// Unit codes each clinic holds of each lot, first in first out
    /// ([`Sim::clinic_deliveries`], used up by [`Sim::vaccinations`]).
    stock: Vec<Vec<VecDeque<String>>>,
    /// Number of children among `w.people` (they come first, the adults
    /// after them; [`Sim::people`]).
    n_children: usize,
    /// Adults among `w.people`.
    n_adults: usize,
}

impl Sim {
    /// An empty world for `doses` vaccinations (at least 20) from `seed`.
    fn new(seed: u64, doses: usize) -> Sim {
        let root = Rng::new(seed);
        let transport = root.fork("transport");
        Sim {
            root,
            doses: doses.max(20),
            w: World {
                lots: Vec::new(),
                people: Vec::new(),
                patients: Vec::new(),
                trips: Vec::new(),
                shipments: Vec::new(),
                bills: Vec::new(),
                vaccinations: Vec::new(),
                aefi: Vec::new(),
                summaries: Vec::new(),
                documents: Vec::new(),
                clinic_stock: Vec::new(),
                recalled_lot: 5,
                recall: ("ZH-2025-017".to_string(), recall_time()),
                refused_shipment: 0,
            },
            plans: Vec::new(),
            deliveries: Vec::new(),
            delivered: Vec::new(),
            buffers: Vec::new(),
            refused_cartons: Vec::new(),
            transport,
            numbers: Numbers::default(),
            stock: Vec::new(),
            n_children: 0,
            n_adults: 0,
        }
    }

    /// The world from `seed` through the phases up to and including the
    /// clinics' deliveries: the stock is in place, nothing is given yet.
    fn delivered(seed: u64, doses: usize) -> Sim {
        let mut sim = Sim::new(seed, doses);
        sim.lots();
        sim.plan();
        sim.deliveries();
        sim.carton_serials();
        sim.chain_shipments();
        sim.refused_shipment();
        sim.clinic_deliveries();
        sim
    }

    /// Lots: two per product (their cartons are counted by
    /// [`Sim::carton_serials`]).
    fn lots(&mut self) {
        self.w.lots = (0..6)
            .map(|li| {
                let p = &PRODUCTS[li / 2];
                let produced = d(2024, 8, 5) + Duration::days(10 * li as i64);
                let expires = produced
                    .checked_add_months(chrono::Months::new(p.shelf_months))
                    .unwrap_or(produced)
                    - Duration::days(1);
                Lot {
                    product: li / 2,
                    number: format!("2024{:02}{}{:02}", produced.month(), p.letter, li % 2 + 1),
                    produced,
                    expires,
                    released: produced + Duration::days(45),
                    code_index: li + 1,
                    cartons: 0,
                }
            })
            .collect();
    }

    /// Vaccination plan spread over the working days: day, minute, clinic
    /// and product of each dose, in time order.
    fn plan(&mut self) {
        let mut rng = self.root.fork("plan");
        let mut days = Vec::new();
        let mut day = first_day();
        while day <= last_day() {
            if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
                days.push(day);
            }
            day += Duration::days(1);
        }
        let doses = self.doses;
        self.plans = (0..doses)
            .map(|i| {
                let day = days[i * days.len() / doses];
                let minute = rng.range(9 * 60 + 30, 16 * 60 + 30) as u32;
                let clinic = usize::from(!rng.chance(800));
                let r = rng.below(100);
                let product = if r < 40 {
                    0
                } else if r < 75 {
                    1
                } else {
                    2
                };
                Plan {
                    day,
                    minute,
                    clinic,
                    product,
                    lot: lot_for(product, day),
                }
            })
            .collect();
        self.plans.sort_by_key(|p| (p.day, p.minute));
    }

    /// Deliveries to the clinics: on the Friday before each week, whole
    /// cartons for that week's doses beyond what is left.
    fn deliveries(&mut self) {
        let monday = |d: NaiveDate| d - Duration::days(i64::from(d.weekday().num_days_from_monday()));
        let mut deliveries: Vec<(NaiveDate, usize, usize, usize)> = Vec::new(); // (friday, clinic, lot, cartons)
        for clinic in 0..2 {
            for (li, _) in self.w.lots.iter().enumerate() {
                let mut left = 0usize;
                let mut week_counts: Vec<(NaiveDate, usize)> = Vec::new();
                for p in self.plans.iter().filter(|p| p.clinic == clinic && p.lot == li) {
                    let w = monday(p.day);
                    match week_counts.last_mut() {
                        Some((lw, n)) if *lw == w => *n += 1,
                        _ => week_counts.push((w, 1)),
                    }
                }
                for (w, need) in week_counts {
                    if need > left {
                        let cartons = (need - left).div_ceil(CARTON);
                        deliveries.push((w - Duration::days(3), clinic, li, cartons));
                        left += cartons * CARTON;
                    }
                    left -= need;
                }
            }
        }
        deliveries.sort();
        self.deliveries = deliveries;
    }

    /// Carton serials: clinic-bound first (in delivery order), then the
    /// buffers left at county, city and province, then the refused cartons.
    fn carton_serials(&mut self) {
        let mut next_carton = vec![1usize; self.w.lots.len()];
        let mut take = |li: usize, n: usize| -> Vec<usize> {
            let s = next_carton[li];
            next_carton[li] += n;
            (s..s + n).collect()
        };
        self.delivered = self.deliveries.iter().map(|&(_, _, li, n)| take(li, n)).collect();
        self.buffers = (0..self.w.lots.len())
            .map(|li| [take(li, 2), take(li, 2), take(li, 2)])
            .collect(); // county, city, province
        self.refused_cartons = take(0, 3);
        for (li, lot) in self.w.lots.iter_mut().enumerate() {
            lot.cartons = next_carton[li] - 1;
        }
    }

    /// Chain shipments: holder → province → city → county, per lot, in
    /// chunks of at most MAX_CARTONS_PER_BILL cartons.
    fn chain_shipments(&mut self) {
        let legs: [(Org, Org, i64, u32, i64, usize); 3] = [
            (MAH, PROVINCE, 0, 8 * 60, 150, 0),
            (PROVINCE, CITY, 7, 9 * 60, 60, 0),
            (CITY, COUNTY, 14, 9 * 60, 40, 2),
        ];
        for li in 0..self.w.lots.len() {
            let clinic_bound: Vec<usize> = self
                .deliveries
                .iter()
                .zip(&self.delivered)
                .filter(|((_, _, l, _), _)| *l == li)
                .flat_map(|(_, c)| c.iter().copied())
                .collect();
            let buffers = &self.buffers[li];
            let county: Vec<usize> = clinic_bound.iter().chain(&buffers[0]).copied().collect();
            let city: Vec<usize> = county.iter().chain(&buffers[1]).copied().collect();
            let province: Vec<usize> = city
                .iter()
                .chain(&buffers[2])
                .chain(if li == 0 { &self.refused_cartons[..] } else { &[] })
                .copied()
                .collect();
            let s0 = d(2025, 1, 13) + Duration::days(li as i64);
            for (leg, cartons) in legs.iter().zip([&province, &city, &county]) {
                let (from, to, offset, start_min, minutes, vehicle) = *leg;
                let depart = at(s0 + Duration::days(offset), start_min / 60, start_min % 60);
                let trip = new_trip(&mut self.transport, vehicle, depart, minutes, false);
                self.w.trips.push(trip);
                let ti = self.w.trips.len() - 1;
                for chunk in cartons.chunks(MAX_CARTONS_PER_BILL) {
                    self.ship_with_bills(ti, from, to, li, chunk.to_vec(), "调拨配送");
                }
            }
        }
    }

    /// The refused shipment: province → city, temperature excursion. The
    /// city refuses it at receipt and returns it; the province destroys it.
    fn refused_shipment(&mut self) {
        let depart = at(d(2025, 1, 22), 9, 0);
        let trip = new_trip(&mut self.transport, 1, depart, 70, true);
        self.w.trips.push(trip);
        let ti = self.w.trips.len() - 1;
        let arrive = self.w.trips[ti].arrive;
        let dispatch = self.numbers.next("CKJS", depart.date());
        let units: Vec<String> = self
            .refused_cartons
            .iter()
            .flat_map(|&c| self.w.lots[0].carton_units(c))
            .collect();
        self.w.shipments.push(Shipment {
            waybill: self.numbers.next("YD", depart.date()),
            dispatch: dispatch.clone(),
            trip: ti,
            from: PROVINCE,
            to: CITY,
            lot: 0,
            cartons: self.refused_cartons.clone(),
            purpose: "调拨配送",
        });
        self.w.refused_shipment = self.w.shipments.len() - 1;
        let mk = |system, code: String, bill_type, time, from, to, from_bill: Option<String>, verified, extra| Bill {
            system,
            code,
            bill_type,
            time,
            from: Some(from),
            to,
            from_bill,
            lot: 0,
            codes: units.clone(),
            quantity: units.len(),
            verified,
            extra,
        };
        self.w.bills.push(mk(
            0,
            dispatch.clone(),
            "203",
            depart - Duration::minutes(30),
            PROVINCE,
            Some(CITY),
            None,
            None,
            BillExtra::default(),
        ));
        self.w.bills.push(mk(
            1,
            self.numbers.next("RKNJ", arrive.date()),
            "104",
            arrive + Duration::minutes(20),
            PROVINCE,
            Some(CITY),
            Some(dispatch.clone()),
            Some(false),
            BillExtra::default(),
        ));
        // The city sends it back (202) and the province takes it in (103):
        // a return for temperature (WD), each bill naming the one before.
        let back = self.numbers.next("THNJ", arrive.date());
        let back_in = self.numbers.next("THJS", arrive.date() + Duration::days(1));
        for (system, code, bill_type, time, after) in [
            (1, back.clone(), "202", arrive + Duration::minutes(90), dispatch),
            (0, back_in, "103", at(arrive.date() + Duration::days(1), 9, 0), back),
        ] {
            let extra = BillExtra {
                return_reason: Some("WD"),
                ..Default::default()
            };
            let bill = mk(
                system,
                code,
                bill_type,
                time,
                CITY,
                Some(PROVINCE),
                Some(after),
                None,
                extra,
            );
            self.w.bills.push(bill);
        }
        self.w.bills.push(mk(
            0,
            self.numbers.next("XHJS", arrive.date() + Duration::days(7)),
            "205",
            at(arrive.date() + Duration::days(7), 15, 0),
            PROVINCE,
            None,
            None,
            None,
            BillExtra {
                loss: Some(("WD", "高压灭菌后医疗废物处置")),
                ..Default::default()
            },
        ));
    }

    /// County → clinics: one cooler-box trip per clinic and Friday; the
    /// units delivered fill the clinics' stock.
    fn clinic_deliveries(&mut self) {
        self.stock = vec![vec![Default::default(); self.w.lots.len()]; 2];
        let mut trip_of: BTreeMap<(NaiveDate, usize), usize> = Default::default();
        // copies: shipping below needs `self` whole
        let (deliveries, delivered) = (self.deliveries.clone(), self.delivered.clone());
        for (&(friday, clinic, li, _), cartons) in deliveries.iter().zip(&delivered) {
            let ti = *trip_of.entry((friday, clinic)).or_insert_with(|| {
                let depart = at(friday, 14, 0) + Duration::minutes(90 * clinic as i64);
                let mins = self.transport.range(25, 40);
                let t = new_trip(&mut self.transport, 3 + clinic, depart, mins, false);
                self.w.trips.push(t);
                self.w.trips.len() - 1
            });
            let to = if clinic == 0 { CLINIC_A } else { CLINIC_B };
            // A large week's delivery travels on one trip under several bills.
            for chunk in cartons.chunks(MAX_CARTONS_PER_BILL) {
                self.ship_with_bills(ti, COUNTY, to, li, chunk.to_vec(), "接种单位配送");
            }
            let arrive = self.w.trips[ti].arrive;
            for &c in cartons {
                for u in self.w.lots[li].carton_units(c) {
                    self.stock[clinic][li].push_back(u.clone());
                    self.w.clinic_stock.push((clinic, li, u, arrive, "在库"));
                }
            }
        }
    }

    /// People: the children (for the first two products), then the adults
    /// (for the flu vaccine).
    fn people(&mut self) {
        let mut prng = self.root.fork("people");
        self.n_children = (self.doses * 3 / 10).max(4);
        self.n_adults = (self.doses / 5).max(4);
        let n_children = self.n_children;
        let mut born: BTreeMap<NaiveDate, u32> = Default::default();
        for i in 0..n_children + self.n_adults {
            let child = i < n_children;
            let birth = if child {
                d(2024, 1, 1) + Duration::days(prng.range(0, 364))
            } else {
                d(1950, 1, 1) + Duration::days(prng.range(0, 365 * 50))
            };
            let sex = if prng.chance(500) { "男" } else { "女" };
            // GB 11643: the 17th digit is odd for men, even for women.
            let k = born.entry(birth).or_insert(0);
            *k += 1;
            let seq = (*k % 500) * 2 + u32::from(sex == "男");
            let resident = ids::resident_id("329999", birth, seq);
            let birth_cert = child && prng.chance(600);
            // 受种者编码: the registering 接种点编码, birth year, serial.
            let code = format!("32010200{:02}{}{:04}", 1 + i / 10_000, birth.year(), i % 10_000);
            self.w.people.push(Person {
                code,
                name: format!("测试{:05}", i + 1),
                sex,
                birth,
                id_type: if birth_cert { "2" } else { "1" },
                id_number: if birth_cert {
                    format!("Q3299{:05}", i % 100_000)
                } else {
                    resident.clone()
                },
                resident_id: (!birth_cert).then_some(resident),
                phone: (!prng.chance(100)).then(|| format!("0000-{:07}", prng.below(10_000_000))),
                address: (!prng.chance(50)).then(|| format!("测试市测试区测试路{}号", prng.range(1, 999))),
                guardian: child.then(|| format!("测试监护人{:05}", i + 1)),
                child,
            });
        }
    }

    /// Vaccinations: each planned dose, given to a person of its product's
    /// pool from the clinic's stock.
    fn vaccinations(&mut self) {
        let (n_children, n_adults) = (self.n_children, self.n_adults);
        let mut doses_of: BTreeMap<(usize, usize), u32> = Default::default();
        let mut below_cap: BTreeMap<usize, NextBelowCap> = Default::default();
        let mut per_day: BTreeMap<(usize, NaiveDate), u32> = Default::default();
        let mut vrng = self.root.fork("vaccinations");
        for p in &self.plans {
            let pool = if p.product == 2 {
                n_children..n_children + n_adults
            } else {
                0..n_children
            };
            let mut person = pool.start + vrng.below(pool.len() as u64) as usize;
            // at most 3 doses of a product per person (1 of flu): the next
            // person (cyclically) below the cap, or the drawn one if all are full
            let cap = if p.product == 2 { 1 } else { 3 };
            let free = below_cap
                .entry(p.product)
                .or_insert_with(|| NextBelowCap::new(pool.len()));
            if let Some(r) = free.find(person - pool.start) {
                person = pool.start + r;
            }
            let dose = doses_of.entry((person, p.product)).or_insert(0);
            *dose += 1;
            if *dose == cap {
                free.mark_full(person - pool.start);
            }
            let dose = (*dose).min(10);
            let Some(code) = self.stock[p.clinic][p.lot].pop_front() else {
                continue; // cannot happen: deliveries cover every planned dose
            };
            let n = per_day.entry((p.clinic, p.day)).or_insert(0);
            *n += 1;
            let clinic_code = if p.clinic == 0 { CLINIC_A.code } else { CLINIC_B.code };
            self.w.vaccinations.push(Vaccination {
                id: format!("JZ{}{}{:04}", &clinic_code[6..], p.day.format("%Y%m%d"), n),
                clinic: p.clinic,
                time: at(p.day, p.minute / 60, p.minute % 60) + Duration::seconds(vrng.range(0, 59)),
                person,
                lot: p.lot,
                code,
                dose,
                site: vrng.range(1, 4) as u32,
                clinician: vrng.range(1, 4) as u32,
                dirty: None,
            });
        }
    }

    /// Stock states: used and recalled units. One unit of the recalled lot
    /// that clinic A still has is given after the recall began (an incident
    /// the gateway keeps and flags as recalled_used) instead of being sent
    /// back. Returns the units the clinics send back.
    fn stock_states(&mut self) -> Returned {
        let rt = self.w.recall.1;
        let recalled = self.w.recalled_lot;
        let given_after_recall = {
            let used: BTreeSet<&str> = self.w.vaccinations.iter().map(|v| v.code.as_str()).collect();
            self.w
                .clinic_stock
                .iter()
                .find(|s| s.0 == 0 && s.1 == recalled && !used.contains(s.2.as_str()))
                .map(|s| s.2.clone())
        };
        if let Some(code) = &given_after_recall {
            let person = self.n_children; // an adult: the recalled lot is the flu vaccine's
            self.w.vaccinations.push(Vaccination {
                id: format!(
                    "JZ{}{}R001",
                    &CLINIC_A.code[6..],
                    (rt + Duration::days(1)).date().format("%Y%m%d")
                ),
                clinic: 0,
                time: rt + Duration::days(1),
                person,
                lot: recalled,
                code: code.clone(),
                dose: 1,
                site: 1,
                clinician: 1,
                dirty: None,
            });
        }
        let used: BTreeSet<&str> = self.w.vaccinations.iter().map(|v| v.code.as_str()).collect();
        let mut returned = Returned::default();
        for s in &mut self.w.clinic_stock {
            if used.contains(s.2.as_str()) {
                s.4 = "已接种";
            } else if s.1 == recalled {
                s.4 = "召回退回";
                returned.all.push(s.2.clone());
                returned.by_clinic[s.0].push(s.2.clone());
            }
        }
        returned
    }

    /// Recall bills: whatever each CDC still holds of the lot, plus what the
    /// clinics send back through the county.
    fn recall_bills(&mut self, returned: Returned) {
        let (notice, rt) = self.w.recall.clone();
        let recalled = self.w.recalled_lot;
        let reason = "持有人主动召回: 效价检测偏低";
        // The clinics bill nothing: the county documents what each sends back
        // (103 退货入库 from the clinic) before recalling it with its own stock.
        for (clinic, codes) in returned.by_clinic.into_iter().enumerate() {
            if codes.is_empty() {
                continue;
            }
            let t = rt + Duration::hours(5) + Duration::minutes(10 * clinic as i64);
            self.w.bills.push(Bill {
                system: 2,
                code: self.numbers.next("THXW", t.date()),
                bill_type: "103",
                time: t,
                from: Some(if clinic == 0 { CLINIC_A } else { CLINIC_B }),
                to: Some(COUNTY),
                from_bill: None,
                lot: recalled,
                quantity: codes.len(),
                codes,
                verified: None,
                extra: BillExtra {
                    return_reason: Some("ZL"),
                    ..Default::default()
                },
            });
        }
        for (system, held) in [
            (0usize, &self.buffers[recalled][2]),
            (1, &self.buffers[recalled][1]),
            (2, &self.buffers[recalled][0]),
        ] {
            let mut codes: Vec<String> = held
                .iter()
                .flat_map(|&c| self.w.lots[recalled].carton_units(c))
                .collect();
            if system == 2 {
                codes.extend(returned.all.iter().cloned());
            }
            let org = [PROVINCE, CITY, COUNTY][system];
            let t = rt + Duration::hours(2 + 2 * system as i64);
            self.w.bills.push(Bill {
                system,
                code: self.numbers.next(&format!("ZH{}", SYS_PREFIX[system]), t.date()),
                bill_type: "211",
                time: t,
                from: Some(org),
                to: Some(MAH),
                from_bill: None,
                lot: recalled,
                quantity: codes.len(),
                codes,
                verified: None,
                extra: BillExtra {
                    recall: Some(("2", reason, notice.clone())),
                    ..Default::default()
                },
            });
        }
    }

    /// A county write-off whose code was never scanned (dirty: no trace code).
    fn write_off(&mut self) {
        self.w.bills.push(Bill {
            system: 2,
            code: self.numbers.next("XHXW", d(2025, 3, 20)),
            bill_type: "205",
            time: at(d(2025, 3, 20), 16, 0),
            from: Some(COUNTY),
            to: None,
            from_bill: None,
            lot: 0,
            codes: Vec::new(),
            quantity: 1,
            verified: None,
            extra: BillExtra {
                loss: Some(("PS", "高压灭菌后医疗废物处置")),
                ..Default::default()
            },
        });
    }

    /// Dirty vaccination rows: a bad ID check digit, a missing trace code
    /// (clinic A), a bad ID check digit in the HL7 feed (clinic B).
    fn dirty_vaccinations(&mut self) {
        let pick_dirty = |w: &World, clinic: usize, nth: usize, need_resident: bool| -> Option<usize> {
            w.vaccinations
                .iter()
                .enumerate()
                .filter(|(_, v)| v.clinic == clinic && v.dirty.is_none())
                .filter(|(_, v)| !need_resident || w.people[v.person].resident_id.is_some())
                .map(|(i, _)| i)
                .nth(nth)
        };
        let w = &mut self.w;
        if let Some(i) = pick_dirty(w, 0, 7, true) {
            w.vaccinations[i].dirty = Some("id_number_check");
        }
        if let Some(i) = pick_dirty(w, 0, 13, false) {
            w.vaccinations[i].dirty = Some("trace_code_missing");
        }
        if let Some(i) = pick_dirty(w, 1, 5, true) {
            w.vaccinations[i].dirty = Some("id_number_check");
        }
    }

    /// Custody violations the gateway refuses whichever agent sends them
    /// (docs/custody.md): a dose clinic A gave, given again two days later
    /// in clinic B's HL7 feed (administered_twice); a dose of the delivery
    /// refused at receipt and destroyed by the province, given by clinic A
    /// (destroyed_used).
    fn custody_violations(&mut self) {
        let w = &mut self.w;
        let Some(v) = w
            .vaccinations
            .iter()
            .find(|v| v.clinic == 0 && v.dirty.is_none())
            .cloned()
        else {
            return;
        };
        let again = v.time + Duration::days(2);
        w.vaccinations.push(Vaccination {
            id: format!("JZ{}{}X001", &CLINIC_B.code[6..], again.date().format("%Y%m%d")),
            clinic: 1,
            time: again,
            dirty: Some("administered_twice"),
            ..v.clone()
        });
        let destroyed_at = w.trips[w.shipments[w.refused_shipment].trip].arrive + Duration::days(14);
        w.vaccinations.push(Vaccination {
            id: format!("JZ{}{}X002", &CLINIC_A.code[6..], destroyed_at.date().format("%Y%m%d")),
            clinic: 0,
            time: destroyed_at,
            lot: 0,
            code: w.lots[0].unit_code((self.refused_cartons[0] - 1) * CARTON + 1),
            dirty: Some("destroyed_used"),
            ..v
        });
    }

    /// AEFI reports for about 1 % of clinic A's doses; the second one's
    /// onset is before its vaccination (dirty).
    fn aefi(&mut self) {
        let mut arng = self.root.fork("aefi");
        let w = &mut self.w;
        let mut per_month: BTreeMap<String, u32> = Default::default();
        for (vi, v) in w.vaccinations.iter().enumerate() {
            if v.clinic != 0 || v.dirty.is_some() || !arng.chance(10) {
                continue;
            }
            let onset = v.time + Duration::minutes(arng.range(30, 36 * 60));
            let reported = at(onset.date() + Duration::days(1), 9, 0) + Duration::minutes(arng.range(0, 240));
            let month = reported.format("%Y%m").to_string();
            let n = per_month.entry(month.clone()).or_insert(0);
            *n += 1;
            let severe = arng.chance(60);
            w.aefi.push(Aefi {
                id: format!("AEFI{}{}{:03}", CLINIC_A.code, month, n),
                vaccination: vi,
                onset,
                reported,
                symptoms: SYMPTOMS[arng.below(SYMPTOMS.len() as u64) as usize],
                severity: if severe { "严重" } else { "一般" },
                class: ["1", "1", "1", "4", "5", "9"][arng.below(6) as usize],
                dirty: None,
            });
        }
        if let Some(a) = w.aefi.get_mut(1) {
            a.dirty = Some("onset_before_vaccination");
        }
    }

    /// Ships `cartons` of `lot` from `from` to `to` on trip `trip`: the
    /// waybill, and the outbound (203) and inbound (102 from the holder, 104
    /// otherwise) bills of whichever ends are CDCs.
    fn ship_with_bills(
        &mut self,
        trip: usize,
        from: Org,
        to: Org,
        lot: usize,
        cartons: Vec<usize>,
        purpose: &'static str,
    ) {
        let (depart, arrive) = (self.w.trips[trip].depart, self.w.trips[trip].arrive);
        let system_of = |o: &Org| {
            [PROVINCE.code, CITY.code, COUNTY.code]
                .iter()
                .position(|c| *c == o.code)
        };
        let units: Vec<String> = cartons.iter().flat_map(|&c| self.w.lots[lot].carton_units(c)).collect();
        let dispatch = match system_of(&from) {
            Some(s) => self.numbers.next(&format!("CK{}", SYS_PREFIX[s]), depart.date()),
            None => self.numbers.next("XS", depart.date()),
        };
        if let Some(s) = system_of(&from) {
            self.w.bills.push(Bill {
                system: s,
                code: dispatch.clone(),
                bill_type: "203",
                time: depart - Duration::minutes(30),
                from: Some(from),
                to: Some(to),
                from_bill: None,
                lot,
                codes: units.clone(),
                quantity: units.len(),
                verified: None,
                extra: BillExtra::default(),
            });
        }
        if let Some(s) = system_of(&to) {
            self.w.bills.push(Bill {
                system: s,
                code: self.numbers.next(&format!("RK{}", SYS_PREFIX[s]), arrive.date()),
                bill_type: if from.code == MAH.code { "102" } else { "104" },
                time: arrive + Duration::minutes(20),
                from: Some(from),
                to: Some(to),
                from_bill: Some(dispatch.clone()),
                lot,
                quantity: units.len(),
                codes: units,
                verified: Some(true),
                extra: BillExtra::default(),
            });
        }
        self.w.shipments.push(Shipment {
            waybill: self.numbers.next("YD", depart.date()),
            dispatch,
            trip,
            from,
            to,
            lot,
            cartons,
            purpose,
        });
    }

    /// Cold-chain reading summaries: one per trip, daily ones per storage
    /// device, and one with its period reversed (dirty).
    fn storage_summaries(&mut self) {
        let rng = &mut self.root.fork("storage");
        let w = &mut self.w;
        // Transport: one set per trip, readings every 5 minutes.
        for t in &w.trips {
            let vals: Vec<i64> = t.readings.iter().map(|r| r.1).collect();
            w.summaries.push(Summary {
                device: t.device,
                device_type: t.device_type,
                place: t.place,
                owner: CARRIER.code,
                start: t.depart,
                end: t.arrive,
                count: vals.len() as i64,
                min: vals.iter().copied().min().unwrap_or(0),
                max: vals.iter().copied().max().unwrap_or(0),
                mean: mean(&vals),
                humidity: None,
                range_given: false,
                alarm: t.alarm,
                interval: 5,
                dirty: None,
            });
        }
        // Storage: daily sets of 30-minute readings, with a few power cuts
        // (gaps), one fridge excursion and one low-temperature alarm.
        let (mut day, end) = (d(2025, 1, 6), d(2025, 5, 31));
        let special_excursion = (5usize, d(2025, 3, 5));
        let special_low = (2usize, d(2025, 2, 20));
        let gaps: Vec<(usize, NaiveDate)> = (0..3)
            .map(|_| {
                (
                    rng.below(STORES.len() as u64) as usize,
                    d(2025, 1, 20) + Duration::days(rng.range(0, 100)),
                )
            })
            .collect();
        while day <= end {
            for (si, (device, device_type, place, owner)) in STORES.iter().enumerate() {
                let gap = gaps.contains(&(si, day));
                let n = if gap { rng.range(28, 40) } else { 48 };
                let mut v = rng.range(40, 52);
                let mut vals = Vec::with_capacity(48);
                for k in 0..n {
                    v = (v + rng.range(-2, 2)).clamp(30, 65);
                    let mut x = v;
                    if (si, day) == special_excursion && (20..23).contains(&k) {
                        x = 80 + (k - 19) * 5; // door left open
                    }
                    if (si, day) == special_low && (10..12).contains(&k) {
                        x = 15;
                    }
                    vals.push(x);
                }
                let alarm = if (si, day) == special_excursion {
                    "CW"
                } else if (si, day) == special_low {
                    "DW"
                } else if gap {
                    "DD"
                } else {
                    "ZC"
                };
                w.summaries.push(Summary {
                    device,
                    device_type,
                    place,
                    owner,
                    start: at(day, 0, 0),
                    end: at(day + Duration::days(1), 0, 0),
                    count: n,
                    min: vals.iter().copied().min().unwrap_or(0),
                    max: vals.iter().copied().max().unwrap_or(0),
                    mean: mean(&vals),
                    humidity: (!rng.chance(200)).then(|| rng.range(350, 650)),
                    range_given: !rng.chance(100),
                    alarm,
                    interval: 30,
                    dirty: None,
                });
            }
            day += Duration::days(1);
        }
        // A logger whose clock was reset: the period ends before it starts.
        let t = at(d(2025, 3, 12), 10, 0);
        w.summaries.push(Summary {
            device: "JLY-XW-0002",
            device_type: "JLY",
            place: VEHICLES[4].2,
            owner: CARRIER.code,
            start: t,
            end: t - Duration::hours(3),
            count: 7,
            min: 41,
            max: 47,
            mean: 44,
            humidity: None,
            range_given: false,
            alarm: "GZ",
            interval: 5,
            dirty: Some("period_order"),
        });
        w.summaries.sort_by_key(|s| (s.end, s.device));
    }

    /// Hospital patients (everyone with a serious AEFI, some with a mild
    /// one, plus other adults) and their EMR documents, one index row with a
    /// mistyped ID number (dirty).
    fn hospital(&mut self) {
        let rng = &mut self.root.fork("hospital");
        let w = &mut self.w;
        // Patients: children with serious AEFI come to the hospital, plus adults.
        let mut patients: Vec<(Person, Option<NaiveDateTime>)> = Vec::new();
        for a in &w.aefi {
            if a.severity == "严重" || rng.chance(300) {
                let v = &w.vaccinations[a.vaccination];
                patients.push((w.people[v.person].clone(), Some(a.onset + Duration::hours(2))));
            }
        }
        let extra = (w.vaccinations.len() / 20).max(3);
        for i in 0..extra {
            let birth = d(1940, 1, 1) + Duration::days(rng.range(0, 365 * 60));
            let sex = if rng.chance(500) { "男" } else { "女" };
            let id = ids::resident_id("329998", birth, (i % 999) as u32);
            patients.push((
                Person {
                    code: String::new(),
                    name: format!("测试患者{:05}", i + 1),
                    sex,
                    birth,
                    id_type: "1",
                    id_number: id.clone(),
                    resident_id: Some(id),
                    phone: Some(format!("0000-{:07}", rng.below(10_000_000))),
                    address: None,
                    guardian: None,
                    child: false,
                },
                None,
            ));
        }
        let mut per_day: std::collections::BTreeMap<NaiveDate, u32> = Default::default();
        for (pi, (person, when)) in patients.into_iter().enumerate() {
            let visit = when.unwrap_or_else(|| {
                at(d(2025, 2, 3) + Duration::days(rng.range(0, 110)), 8, 0) + Duration::minutes(rng.range(0, 600))
            });
            let local = format!("{:010}", 1_000_000 + pi);
            let inpatient = when.is_some() && rng.chance(300);
            let types: &[&str] = if inpatient {
                &["RYJL", "JYBG", "CYXJ"]
            } else if when.is_some() {
                &["MZBL", "JYBG"]
            } else {
                [&["MZBL"][..], &["MZBL", "JYBG"], &["MZBL", "JCBG"]][rng.below(3) as usize]
            };
            let encounter = format!("JZ{}{:06}", visit.format("%Y%m%d"), pi);
            for (k, t) in types.iter().enumerate() {
                let time = visit + Duration::hours(if *t == "CYXJ" { 72 } else { k as i64 });
                let n = per_day.entry(time.date()).or_insert(0);
                *n += 1;
                let prefix = match *t {
                    "MZBL" => "MZ",
                    "RYJL" => "RY",
                    "CYXJ" => "CY",
                    "JYBG" => "JY",
                    _ => "JC",
                };
                let id = format!("{prefix}{}{:04}", time.format("%Y%m%d"), n);
                let path = format!("{}/{id}.txt", time.format("%Y/%m/%d"));
                let content = format!(
                    "文档 {id}\n类型 {t}\n患者 {}\n时间 {}\n内容: 合成测试文档, 非真实病历。\n",
                    person.name,
                    time.format("%Y-%m-%d %H:%M")
                );
                w.documents.push(Document {
                    id,
                    patient: pi,
                    patient_local: local.clone(),
                    encounter: encounter.clone(),
                    doc_type: t,
                    time,
                    path,
                    content,
                    dirty: None,
                });
            }
            w.patients.push(person);
        }
        w.documents.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        // One index row whose ID number was mistyped (bad check digit).
        if let Some(i) = w
            .documents
            .iter()
            .position(|doc| w.patients[doc.patient].resident_id.is_some() && doc.time.date() > d(2025, 3, 1))
        {
            w.documents[i].dirty = Some("id_number_check");
        }
    }
}

/// A trip of `vehicle` (index into `VEHICLES`) leaving at `depart` for
/// `minutes`, with readings every 5 minutes; on an `excursion` the load
/// warms past 8 °C.
fn new_trip(rng: &mut Rng, vehicle: usize, depart: NaiveDateTime, minutes: i64, excursion: bool) -> Trip {
    let (device, device_type, place, plate, cold_mode) = VEHICLES[vehicle];
    let arrive = depart + Duration::minutes(minutes);
    let mut readings = Vec::new();
    let mut t = depart;
    let mut v = rng.range(38, 52);
    let mut k = 0;
    while t <= arrive {
        v = (v + rng.range(-3, 3)).clamp(30, 65);
        let mut x = v;
        if excursion && k >= 4 {
            // the reefer unit fails: the load warms past 8 °C
            x = (v + (k as i64 - 3) * 9).min(118);
        }
        readings.push((t, x));
        t += Duration::minutes(5);
        k += 1;
    }
    Trip {
        device,
        device_type,
        place,
        plate,
        cold_mode,
        depart,
        arrive,
        readings,
        alarm: if excursion { "CW" } else { "ZC" },
        ambient: (rng.range(20, 150), rng.range(20, 180)),
        distance: minutes * rng.range(4, 9),
    }
}

/// Mean of `v` rounded to the nearest integer (halves up; 0 when empty).
fn mean(v: &[i64]) -> i64 {
    if v.is_empty() {
        return 0;
    }
    let s: i64 = v.iter().sum();
    let n = v.len() as i64;
    (2 * s + n) / (2 * n)
}

/// Linear probing over a pool of people for the first one (cyclically from
/// a start) whose dose count of a product is below its cap, in near O(1):
/// a full person points at a later candidate (path-compressed), so a
/// saturated pool does not cost a scan per dose. `next[i]` is such that
/// every person cyclically in `[i, next[i])` is full.
#[derive(Debug)]
struct NextBelowCap {
    next: Vec<usize>,
    full: usize,
}

impl NextBelowCap {
    fn new(len: usize) -> Self {
        NextBelowCap {
            next: (0..len).collect(),
            full: 0,
        }
    }

    /// The first person at or after `i` (cyclically) below the cap; `None`
    /// when everyone is full.
    fn find(&mut self, i: usize) -> Option<usize> {
        if self.full >= self.next.len() {
            return None;
        }
        let mut root = i;
        while self.next[root] != root {
            root = self.next[root];
        }
        let mut j = i;
        while self.next[j] != root && self.next[j] != j {
            let n = self.next[j];
            self.next[j] = root;
            j = n;
        }
        Some(root)
    }

    /// Person `i` reached the cap.
    fn mark_full(&mut self, i: usize) {
        if self.next[i] == i {
            self.next[i] = (i + 1) % self.next.len();
            self.full += 1;
        }
    }
}

#[cfg(test)]
mod next_below_cap_tests {
    use super::NextBelowCap;

    /// Same answers as the scan it replaces, over random draws and caps.
    #[test]
    fn agrees_with_linear_probing() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        for len in [1usize, 2, 7, 50] {
            for cap in [1u32, 3] {
                let mut fast = NextBelowCap::new(len);
                let mut counts = vec![0u32; len];
                for _ in 0..(len * cap as usize + 20) {
                    let start = rand(len);
                    // the scan of the vaccinations phase before NextBelowCap
                    let mut p = start;
                    let mut tries = 0;
                    while counts[p] >= cap && tries < len {
                        p = (p + 1) % len;
                        tries += 1;
                    }
                    let q = fast.find(start).unwrap_or(start);
                    assert_eq!(p, q, "len {len} cap {cap} start {start} counts {counts:?}");
                    counts[p] += 1;
                    if counts[p] == cap {
                        fast.mark_full(p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod phase_tests {
    use chrono::{Datelike, Weekday};

    use super::Sim;

    /// Every carton of a lot goes to exactly one place (a clinic delivery,
    /// a CDC's buffer or the refused shipment), and they are numbered
    /// 1..=cartons.
    #[test]
    fn carton_serials_partition_each_lot() {
        let sim = Sim::delivered(3, 500);
        for (li, lot) in sim.w.lots.iter().enumerate() {
            let mut serials: Vec<usize> = sim
                .deliveries
                .iter()
                .zip(&sim.delivered)
                .filter(|((_, _, l, _), _)| *l == li)
                .flat_map(|(_, c)| c.iter().copied())
                .chain(sim.buffers[li].iter().flatten().copied())
                .chain(if li == 0 {
                    sim.refused_cartons.clone()
                } else {
                    Vec::new()
                })
                .collect();
            serials.sort_unstable();
            assert_eq!(serials, (1..=lot.cartons).collect::<Vec<_>>(), "lot {li}");
        }
    }

    /// The clinics get their deliveries on Fridays, and these cover every
    /// planned dose: the vaccinations phase never runs out of stock.
    #[test]
    fn deliveries_cover_every_planned_dose() {
        for (seed, doses) in [(1, 20), (5, 700)] {
            let mut sim = Sim::delivered(seed, doses);
            assert!(sim.deliveries.iter().all(|d| d.0.weekday() == Weekday::Fri));
            sim.people();
            sim.vaccinations();
            assert_eq!(sim.w.vaccinations.len(), doses);
        }
    }
}
