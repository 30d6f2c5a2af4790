//! The fixed tables of the sandbox world: the organisations, the holder's
//! products, the vehicles and storage devices with their loggers, and the
//! AEFI symptoms. The same for every seed.

use super::{Org, Product};

/// Manufacturer / marketing authorisation holder.
pub const MAH: Org = Org {
    alias: "mah",
    code: "91320000134567890Y",
    uscc: "91320000134567890Y",
    name: "江苏某生物制品有限公司",
    address: "江苏省测试市生物医药产业园1号",
    role: "manufacturer",
};
/// Cold-chain logistics firm.
pub const CARRIER: Org = Org {
    alias: "carrier",
    code: "91110000100012345L",
    uscc: "91110000100012345L",
    name: "某冷链物流有限公司",
    address: "江苏省测试市物流园8号",
    role: "logistics",
};
/// Provincial CDC.
pub const PROVINCE: Org = Org {
    alias: "js-cdc",
    code: "12320000466000456J",
    uscc: "12320000466000456J",
    name: "江苏省疾病预防控制中心",
    address: "南京市江苏路172号",
    role: "cdc",
};
/// City CDC.
pub const CITY: Org = Org {
    alias: "nj-cdc",
    code: "12320100466001234B",
    uscc: "12320100466001234B",
    name: "南京市疾病预防控制中心",
    address: "南京市紫竹林2号",
    role: "cdc",
};
/// County (district) CDC.
pub const COUNTY: Org = Org {
    alias: "xw-cdc",
    code: "123201024660123451",
    uscc: "123201024660123451",
    name: "南京市玄武区疾病预防控制中心",
    address: "南京市玄武区太平门街55号",
    role: "cdc",
};
/// The vaccination clinic running the SQLite immunization system.
pub const CLINIC_A: Org = Org {
    alias: "meiyuan",
    code: "3201020001",
    uscc: "12320102MB0001001N",
    name: "玄武区梅园社区卫生服务中心预防接种门诊",
    address: "南京市玄武区测试街1号",
    role: "vaccination_unit",
};
/// The vaccination clinic reporting through the provincial HL7 feed.
pub const CLINIC_B: Org = Org {
    alias: "xinjiekou",
    code: "3201020002",
    uscc: "12320102MB00020021",
    name: "玄武区新街口社区卫生服务中心预防接种门诊",
    address: "南京市玄武区测试街2号",
    role: "vaccination_unit",
};
/// The hospital whose EMR publishes a document index.
pub const HOSPITAL: Org = Org {
    alias: "hospital",
    code: "320102H001",
    uscc: "12320102MB0003003B",
    name: "玄武区某医院",
    address: "南京市玄武区测试街3号",
    role: "hospital",
};

/// Every organisation that runs a legacy system.
pub const ORGS: [Org; 8] = [MAH, CARRIER, PROVINCE, CITY, COUNTY, CLINIC_A, CLINIC_B, HOSPITAL];

/// The holder's products.
pub const PRODUCTS: [Product; 3] = [
    Product {
        code7: "8612345",
        vaccine_code: "0201",
        cvx: "08",
        name: "乙型肝炎疫苗(酿酒酵母)",
        generic: "乙型肝炎疫苗",
        strength: "0.5mL:10μg",
        approval: "国药准字S20130001",
        shelf_months: 36,
        letter: 'A',
    },
    Product {
        code7: "8623456",
        vaccine_code: "0301",
        cvx: "10",
        name: "脊髓灰质炎灭活疫苗(Vero细胞)",
        generic: "脊髓灰质炎灭活疫苗",
        strength: "0.5mL/支",
        approval: "国药准字S20170002",
        shelf_months: 24,
        letter: 'B',
    },
    Product {
        code7: "8634567",
        vaccine_code: "2801",
        cvx: "141",
        name: "流感病毒裂解疫苗",
        generic: "流感病毒裂解疫苗",
        strength: "0.5mL/支",
        approval: "国药准字S20100003",
        shelf_months: 12,
        letter: 'C',
    },
];

/// Vehicles: (device, type, place, plate, cold mode).
pub(super) const VEHICLES: [(&str, &str, &str, &str, &str); 5] = [
    (
        "LCC-SU-A1234",
        "LCC",
        "冷藏车 苏A·L1234 车厢前部探头",
        "苏A·L1234",
        "REEFER_TRUCK",
    ),
    (
        "LCC-SU-A5678",
        "LCC",
        "冷藏车 苏A·L5678 车厢前部探头",
        "苏A·L5678",
        "REEFER_TRUCK",
    ),
    ("LCX-NJ-0001", "LCX", "车载冷藏箱 苏A·C3456", "苏A·C3456", "VEHICLE_BOX"),
    (
        "JLY-XW-0001",
        "JLY",
        "冷藏箱 记录仪1号 (梅园线)",
        "苏A·D1001",
        "COOLER_BOX",
    ),
    (
        "JLY-XW-0002",
        "JLY",
        "冷藏箱 记录仪2号 (新街口线)",
        "苏A·D1002",
        "COOLER_BOX",
    ),
];

/// Storage devices: (device, type, place, owner).
pub(super) const STORES: [(&str, &str, &str, &str); 7] = [
    ("LK-MAH-0001", "LK", "持有人成品冷库1号", MAH.code),
    ("LK-JS-0001", "LK", "江苏省疾控中心 疫苗冷库1号", PROVINCE.code),
    ("LK-NJ-0003", "LK", "南京市疾控中心 疫苗冷库3号", CITY.code),
    ("BX-XWCDC-01", "BX", "玄武区疾控中心 疫苗冰箱1号", COUNTY.code),
    ("BX-XW-0001", "BX", "梅园接种门诊 冷藏冰箱1号", CLINIC_A.code),
    ("BX-XW-0002", "BX", "梅园接种门诊 冷藏冰箱2号", CLINIC_A.code),
    ("BX-XJK-0001", "BX", "新街口接种门诊 冷藏冰箱1号", CLINIC_B.code),
];

/// Symptoms of the AEFI reports.
pub(super) const SYMPTOMS: [&str; 5] = [
    "接种部位红肿(直径2.5cm)",
    "发热37.8℃",
    "接种部位硬结",
    "皮疹",
    "发热38.6℃, 哭闹",
];
