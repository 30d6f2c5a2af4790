//! The registry of entities, their keys, devices and permission policies
//! (R5.1–R5.6). It changes only through signed operations that are appended
//! to the ledger as `registry` transactions; at start the gateway replays
//! them, so the ledger is the registry's only source of truth.
//!
//! Who may approve what:
//! * registering an entity, and changing its role or policy: `threshold`
//!   distinct registry administrators (k-of-n, from the config);
//! * adding an operational/system key, registering a device (the approval
//!   is the device's entity-signed certificate), locking or revoking one of
//!   its own non-master keys: the entity's active master key;
//! * replacing or revoking a master key (e.g. a lost USB key, R3.3): k-of-n
//!   administrators, so a lost key never locks an account.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use secure_gateway::{CryptoError, Signer, Sm2Signature, Sm2VerifyingKey};

use crate::error::ApiError;

/// Roles (R5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Vaccine manufacturer / marketing-authorisation holder.
    Manufacturer,
    /// Cold-chain logistics firm.
    Logistics,
    /// Centre for disease control (provincial, city, county).
    Cdc,
    /// Vaccination clinic.
    VaccinationUnit,
    /// Hospital (EMR index, vaccination, AEFI).
    Hospital,
    /// Drug regulator.
    Regulator,
    /// A partner firm that queries traceability.
    Partner,
}

impl Role {
    /// The categories this role may write unless its policy says otherwise.
    pub fn default_write(self) -> &'static [&'static str] {
        match self {
            Role::Manufacturer => &[
                "vaccine_product",
                "lot_release",
                "production_inbound",
                "outbound",
                "return",
                "recall",
                "loss_destruction",
                "cancellation",
            ],
            Role::Logistics => &["shipment", "cold_chain_readings", "cancellation"],
            Role::Cdc => &[
                "inbound_receipt",
                "outbound",
                "return",
                "recall",
                "loss_destruction",
                "shipment",
                "cold_chain_readings",
                "aefi_report",
                "cancellation",
            ],
            Role::VaccinationUnit => &[
                "inbound_receipt",
                "vaccination",
                "aefi_report",
                "loss_destruction",
                "return",
                "cold_chain_readings",
                "cancellation",
            ],
            Role::Hospital => &["emr_index", "vaccination", "aefi_report", "cancellation"],
            Role::Regulator | Role::Partner => &[],
        }
    }
}

/// What an entity may do (R5.6, R11.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Categories it may write; empty = the role's defaults.
    #[serde(default)]
    pub write: Vec<String>,
    /// What it may read.
    #[serde(default)]
    pub read: ReadScope,
    /// May see personal data: the personal elements, and the business
    /// elements that identify a person (dataset `scope = "personal_data"`:
    /// recipient code, sex, clinician, reporter).
    #[serde(default)]
    pub personal_data: bool,
    /// May see adverse-event findings (dataset `scope = "aefi"`: onset,
    /// symptoms, severity, classification).
    #[serde(default)]
    pub aefi_data: bool,
}

impl Policy {
    /// Whether this policy grants `scope`.
    #[must_use]
    pub fn grants(&self, scope: mappings::ReadScope) -> bool {
        match scope {
            mappings::ReadScope::PersonalData => self.personal_data,
            mappings::ReadScope::Aefi => self.aefi_data,
        }
    }
}

/// Which traceability data an entity may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadScope {
    /// Everything (regulators, CDCs).
    #[serde(default)]
    pub all: bool,
    /// Product identifiers: the first 7 digits of trace codes (NMPAB/T 1002).
    #[serde(default)]
    pub products: Vec<String>,
    /// Batch (lot) numbers.
    #[serde(default)]
    pub batches: Vec<String>,
    /// Individual trace codes.
    #[serde(default)]
    pub trace_codes: Vec<String>,
    /// Data it submitted itself (always true in effect; kept explicit).
    #[serde(default = "yes")]
    pub own: bool,
}

fn yes() -> bool {
    true
}

impl ReadScope {
    /// May this scope read an event about `trace_code` in `batch`?
    pub fn allows(&self, trace_code: Option<&str>, batch: Option<&str>) -> bool {
        if self.all {
            return true;
        }
        if let Some(tc) = trace_code {
            if self.trace_codes.iter().any(|t| t == tc) {
                return true;
            }
            if tc.len() >= 7 && self.products.iter().any(|p| tc.starts_with(p.as_str())) {
                return true;
            }
        }
        batch.is_some_and(|b| self.batches.iter().any(|x| x == b))
    }
}

/// Kinds of keys in an entity's hierarchy (R5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Authorises the entity's other keys.
    Master,
    /// Signs day-to-day submissions (an agent, a person).
    Operational,
    /// A registered system (an ERP, an immunization system).
    System,
    /// A registered device (a cold-chain logger).
    Device,
}

/// A key's state (R5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Temporarily unusable; can be unlocked.
    Locked,
    /// Permanently unusable.
    Revoked,
}

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// [`Sm2VerifyingKey::key_id`].
    pub key_id: String,
    /// SPKI PEM.
    pub public_key: String,
    /// Place in the hierarchy.
    pub kind: KeyKind,
    /// Owning entity.
    pub entity_id: String,
    /// For device and system keys: the device or system id.
    pub device_id: Option<String>,
    /// The key that authorised this one (None for a master key).
    pub authorised_by: Option<String>,
    /// Current state.
    pub status: KeyStatus,
    /// The key that replaced this one, if any.
    pub replaced_by: Option<String>,
}

/// A read-only API key (R5.7): only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (the middle part of the key).
    pub key_id: String,
    /// Owning entity; the key reads with the entity's read policy.
    pub entity_id: String,
    /// SM3 of the key, hex.
    pub key_sm3: String,
    /// What it is for.
    pub label: String,
    /// `active` or `revoked` (locked is not used).
    pub status: KeyStatus,
}

/// The prefix of API keys.
pub const API_KEY_PREFIX: &str = "vgk_";

/// A new API key: `vgk_<16 hex id>_<64 hex secret>` (256 random bits), its
/// public id and its SM3 hash (hex). The key itself is never stored.
pub fn generate_api_key() -> Result<(String, String, String), secure_gateway::CryptoError> {
    let id = hex::encode(secure_gateway::random::bytes::<8>()?);
    let secret = hex::encode(secure_gateway::random::bytes::<32>()?);
    let key = format!("{API_KEY_PREFIX}{id}_{secret}");
    let hash = secure_gateway::sm3(key.as_bytes()).to_hex();
    Ok((key, id, hash))
}

/// The public id of a presented API key, when it is well formed.
pub fn api_key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_hex(id, 16) && is_hex(secret, 64)).then_some(id)
}

/// A registered entity (R5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Unified social credit code (GB 32100), the entity id.
    pub id: String,
    /// Registered name.
    pub name: String,
    /// Short alias (R5.4).
    pub alias: String,
    /// Role.
    pub role: Role,
    /// Permissions.
    pub policy: Policy,
    /// Other organisation codes the entity's legacy systems report under
    /// (e.g. a 10-digit vaccination-unit code); events may name any of them
    /// as their source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
}

impl Entity {
    /// Is `source` this entity (its id or one of its codes)?
    pub fn is_source(&self, source: &str) -> bool {
        self.id == source || self.codes.iter().any(|c| c == source)
    }

    /// May this entity write `category`?
    pub fn may_write(&self, category: &str) -> bool {
        if self.policy.write.is_empty() {
            self.role.default_write().contains(&category)
        } else {
            self.policy.write.iter().any(|c| c == category)
        }
    }
}

/// A change to the registry. Approvals sign [`RegistryChange::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryOp {
    /// A new entity with its master key (k-of-n administrators).
    RegisterEntity {
        /// The entity.
        entity: Entity,
        /// Its master key (SPKI PEM).
        master_key: String,
    },
    /// Change role and/or policy (k-of-n administrators).
    SetPolicy {
        /// Entity id.
        entity_id: String,
        /// New role.
        role: Role,
        /// New policy.
        policy: Policy,
    },
    /// Add an operational or system key (the entity's master key).
    AddKey {
        /// Entity id.
        entity_id: String,
        /// The key (SPKI PEM).
        public_key: String,
        /// `operational` or `system`.
        kind: KeyKind,
        /// System id for a system key.
        #[serde(default)]
        device_id: Option<String>,
    },
    /// Register a device with its own key; the approving signature of the
    /// entity's master key is the device certificate (R5.3).
    RegisterDevice {
        /// Entity id.
        entity_id: String,
        /// Device id (e.g. a logger's serial number).
        device_id: String,
        /// The device's key (SPKI PEM).
        public_key: String,
    },
    /// Lock, unlock or revoke a key.
    SetKeyStatus {
        /// The key.
        key_id: String,
        /// New state (revoked is final).
        status: KeyStatus,
        /// Why (kept in the ledger).
        reason: String,
    },
    /// Give an entity a read-only API key (R5.7). Only the key's SM3 hash
    /// is in the change (and so in the ledger); the key itself is shown once
    /// to whoever created it. Approved by the entity's master key, or by
    /// k-of-n administrators.
    CreateApiKey {
        /// Entity id.
        entity_id: String,
        /// The public part of the key (`vgk_<key_id>_<secret>`).
        key_id: String,
        /// SM3 of the whole key string, hex.
        key_sm3: String,
        /// What it is for (no personal data).
        #[serde(default)]
        label: String,
    },
    /// Revoke an API key (final). Approved like [`RegistryOp::CreateApiKey`].
    RevokeApiKey {
        /// The key's public id.
        key_id: String,
        /// Why (kept in the ledger).
        reason: String,
    },
    /// Replace a key by a new one of the same kind; the old one is revoked.
    ReplaceKey {
        /// The key to replace.
        key_id: String,
        /// The new key (SPKI PEM).
        public_key: String,
        /// Why.
        reason: String,
    },
}

/// One approving signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Key id of the approver.
    pub key_id: String,
    /// SM2 signature (DER, base64) over the change's signing bytes.
    pub signature: String,
}

/// An operation with its approvals, as submitted and as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryChange {
    /// Unique id of the change (idempotency).
    pub change_id: uuid::Uuid,
    /// When it was prepared (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// The operation.
    pub op: RegistryOp,
    /// Signatures of the approvers.
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Malformed content (bad key, bad id, unknown entity).
    #[error("{0}")]
    Invalid(String),
    /// Not enough valid approvals.
    #[error("not authorised: {0}")]
    NotAuthorised(String),
}

impl RegistryChange {
    /// A new change with no approvals yet.
    pub fn new(op: RegistryOp) -> Self {
        RegistryChange {
            change_id: uuid::Uuid::new_v4(),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            op,
            approvals: Vec::new(),
        }
    }

    /// What approvers sign: the tag line `vaxgate-registry-v1`, a newline,
    /// then the canonical JSON (sorted keys, no whitespace) of the change
    /// without its approvals.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("approvals");
        }
        let mut out = b"vaxgate-registry-v1\n".to_vec();
        out.extend(mappings::canonical::to_canonical_json(&v));
        out
    }

    /// Adds `key`'s approval (signed through its crypto provider).
    pub fn approve(&mut self, key: &Signer) -> Result<(), CryptoError> {
        use base64::Engine as _;
        let sig = key.sign(&self.signing_bytes())?;
        self.approvals.push(Approval {
            key_id: key.key_id().to_string(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_der()),
        });
        Ok(())
    }

    /// The key ids whose approval signatures verify under `keys`.
    fn valid_approvers(&self, keys: &dyn Fn(&str) -> Option<Sm2VerifyingKey>) -> Vec<String> {
        use base64::Engine as _;
        let msg = self.signing_bytes();
        let mut ok: Vec<String> = Vec::new();
        for a in &self.approvals {
            let Some(vk) = keys(&a.key_id) else { continue };
            let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&a.signature) else {
                continue;
            };
            let Ok(sig) = Sm2Signature::from_der(&der) else {
                continue;
            };
            if vk.verify(&msg, &sig).is_ok() && !ok.contains(&a.key_id) {
                ok.push(a.key_id.clone());
            }
        }
        ok
    }
}

/// The registry's current state.
#[derive(Debug, Clone)]
pub struct Registry {
    admins: BTreeMap<String, Sm2VerifyingKey>,
    threshold: usize,
    entities: BTreeMap<String, Entity>,
    keys: BTreeMap<String, KeyRecord>,
    /// Every registered key, parsed once (request signatures are checked
    /// against these without parsing PEM per request).
    verifying: BTreeMap<String, Sm2VerifyingKey>,
    api_keys: BTreeMap<String, ApiKeyRecord>,
}

/// A registered key of either sort, as far as revocation goes.
trait Revocable {
    /// What refusals call it ("key", "API key").
    const NOUN: &'static str;
    /// Its state.
    fn status(&self) -> KeyStatus;
}

impl Revocable for KeyRecord {
    const NOUN: &'static str = "key";
    fn status(&self) -> KeyStatus {
        self.status
    }
}

impl Revocable for ApiKeyRecord {
    const NOUN: &'static str = "API key";
    fn status(&self) -> KeyStatus {
        self.status
    }
}

/// `key_id`'s record in `records`, refused when it is not registered or
/// is revoked (`revoked` ends that refusal).
fn unrevoked<'a, R: Revocable>(
    records: &'a BTreeMap<String, R>,
    key_id: &str,
    revoked: &str,
) -> Result<&'a R, RegistryError> {
    let noun = R::NOUN;
    let r = records
        .get(key_id)
        .ok_or_else(|| RegistryError::Invalid(format!("{noun} {key_id} is not registered")))?;
    if r.status() == KeyStatus::Revoked {
        return Err(RegistryError::Invalid(format!("{noun} {key_id} {revoked}")));
    }
    Ok(r)
}

/// `s` is `n` hexadecimal characters.
fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the registry behind `lock` (the API's shared one); a poisoned lock
/// is an internal error.
pub(crate) fn read(lock: &RwLock<Registry>) -> Result<RwLockReadGuard<'_, Registry>, ApiError> {
    lock.read().map_err(|_| ApiError::internal("registry lock poisoned"))
}

/// Locks the registry behind `lock` for a change; a poisoned lock is an
/// internal error.
pub(crate) fn write(lock: &RwLock<Registry>) -> Result<RwLockWriteGuard<'_, Registry>, ApiError> {
    lock.write().map_err(|_| ApiError::internal("registry lock poisoned"))
}

fn parse_key(pem: &str) -> Result<Sm2VerifyingKey, RegistryError> {
    Sm2VerifyingKey::from_public_key_pem(pem).map_err(|e| RegistryError::Invalid(format!("public key: {e}")))
}

impl Registry {
    /// An empty registry governed by these administrators.
    pub fn new(admins: Vec<Sm2VerifyingKey>, threshold: usize) -> Self {
        Registry {
            admins: admins.into_iter().map(|k| (k.key_id().to_string(), k)).collect(),
            threshold,
            entities: BTreeMap::new(),
            keys: BTreeMap::new(),
            verifying: BTreeMap::new(),
            api_keys: BTreeMap::new(),
        }
    }

    /// An entity by id or alias.
    pub fn entity(&self, id_or_alias: &str) -> Option<&Entity> {
        self.entities
            .get(id_or_alias)
            .or_else(|| self.entities.values().find(|e| e.alias == id_or_alias))
    }

    /// The entity an organisation code belongs to: its id, or one of the
    /// codes its legacy systems report under.
    pub fn entity_of_code(&self, code: &str) -> Option<&Entity> {
        self.entities
            .get(code)
            .or_else(|| self.entities.values().find(|e| e.codes.iter().any(|c| c == code)))
    }

    /// Every entity.
    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values()
    }

    /// A key by id (entity keys only; administrators are separate).
    pub fn key(&self, key_id: &str) -> Option<&KeyRecord> {
        self.keys.get(key_id)
    }

    /// The parsed public key of a registered entity key (any status); every
    /// key in [`Registry::key`] has one.
    pub fn verifying_key(&self, key_id: &str) -> Option<&Sm2VerifyingKey> {
        self.verifying.get(key_id)
    }

    /// An API key record by public id.
    pub fn api_key(&self, key_id: &str) -> Option<&ApiKeyRecord> {
        self.api_keys.get(key_id)
    }

    /// The API keys of an entity (hashes only).
    pub fn api_keys_of<'a>(&'a self, entity_id: &'a str) -> impl Iterator<Item = &'a ApiKeyRecord> + 'a {
        self.api_keys.values().filter(move |k| k.entity_id == entity_id)
    }

    /// The record of a presented API key when it is well formed, registered
    /// and its hash matches (compared in constant time); `None` otherwise.
    /// Its status is the caller's to check.
    pub fn match_api_key(&self, presented: &str) -> Option<&ApiKeyRecord> {
        let rec = self.api_keys.get(api_key_id(presented)?)?;
        let want = secure_gateway::Sm3Digest::from_hex(&rec.key_sm3).ok()?;
        let got = secure_gateway::sm3(presented.as_bytes());
        want.ct_eq(&got).then_some(rec)
    }

    /// An administrator's key.
    pub fn admin(&self, key_id: &str) -> Option<&Sm2VerifyingKey> {
        self.admins.get(key_id)
    }

    /// The keys of an entity.
    pub fn keys_of<'a>(&'a self, entity_id: &'a str) -> impl Iterator<Item = &'a KeyRecord> + 'a {
        self.keys.values().filter(move |k| k.entity_id == entity_id)
    }

    fn require_admins(&self, c: &RegistryChange, what: &str) -> Result<(), RegistryError> {
        let ok = c.valid_approvers(&|id| self.admins.get(id).cloned());
        if ok.len() >= self.threshold {
            Ok(())
        } else {
            Err(RegistryError::NotAuthorised(format!(
                "{what} needs {} registry-administrator approvals, {} valid given",
                self.threshold,
                ok.len()
            )))
        }
    }

    fn master_of(&self, entity_id: &str) -> Option<&KeyRecord> {
        self.keys
            .values()
            .find(|k| k.entity_id == entity_id && k.kind == KeyKind::Master && k.status == KeyStatus::Active)
    }

    fn require_master(&self, c: &RegistryChange, entity_id: &str, what: &str) -> Result<(), RegistryError> {
        let master = self
            .master_of(entity_id)
            .ok_or_else(|| RegistryError::NotAuthorised(format!("entity {entity_id} has no active master key")))?;
        let vk = parse_key(&master.public_key)?;
        let mid = master.key_id.clone();
        if c.valid_approvers(&|id| (id == mid).then(|| vk.clone())).is_empty() {
            return Err(RegistryError::NotAuthorised(format!(
                "{what} needs the approval of entity {entity_id}'s master key {mid}"
            )));
        }
        Ok(())
    }

    fn new_key(&self, pem: &str) -> Result<Sm2VerifyingKey, RegistryError> {
        let vk = parse_key(pem)?;
        if self.keys.contains_key(vk.key_id()) || self.admins.contains_key(vk.key_id()) {
            return Err(RegistryError::Invalid(format!(
                "key {} is already registered",
                vk.key_id()
            )));
        }
        Ok(vk)
    }

    /// Records `vk` (parsed from `pem` by [`Self::new_key`]) as an active key
    /// of `entity_id`.
    fn add_active_key(
        &mut self,
        vk: Sm2VerifyingKey,
        pem: &str,
        kind: KeyKind,
        entity_id: &str,
        device_id: Option<String>,
        authorised_by: Option<String>,
    ) {
        let key_id = vk.key_id().to_string();
        self.verifying.insert(key_id.clone(), vk);
        self.keys.insert(
            key_id.clone(),
            KeyRecord {
                key_id,
                public_key: pem.to_string(),
                kind,
                entity_id: entity_id.to_string(),
                device_id,
                authorised_by,
                status: KeyStatus::Active,
                replaced_by: None,
            },
        );
    }

    fn known_entity(&self, id: &str) -> Result<&Entity, RegistryError> {
        self.entities
            .get(id)
            .ok_or_else(|| RegistryError::Invalid(format!("entity {id} is not registered")))
    }

    /// Checks a change against the current state without applying it.
    pub fn check(&self, c: &RegistryChange) -> Result<(), RegistryError> {
        self.clone().apply(c)
    }

    /// Checks and applies a change.
    pub fn apply(&mut self, c: &RegistryChange) -> Result<(), RegistryError> {
        match &c.op {
            RegistryOp::RegisterEntity { entity, master_key } => self.register_entity(c, entity, master_key),
            RegistryOp::SetPolicy {
                entity_id,
                role,
                policy,
            } => self.set_policy(c, entity_id, *role, policy),
            RegistryOp::AddKey {
                entity_id,
                public_key,
                kind,
                device_id,
            } => {
                self.known_entity(entity_id)?;
                if !matches!(kind, KeyKind::Operational | KeyKind::System) {
                    return Err(RegistryError::Invalid("add_key adds operational or system keys".into()));
                }
                self.add_entity_key(c, entity_id, public_key, *kind, device_id.clone(), "adding a key")
            }
            RegistryOp::RegisterDevice {
                entity_id,
                device_id,
                public_key,
            } => {
                self.known_entity(entity_id)?;
                if device_id.trim().is_empty() {
                    return Err(RegistryError::Invalid("device id is empty".into()));
                }
                let device = Some(device_id.clone());
                self.add_entity_key(
                    c,
                    entity_id,
                    public_key,
                    KeyKind::Device,
                    device,
                    "registering a device",
                )
            }
            RegistryOp::SetKeyStatus { key_id, status, .. } => self.set_key_status(c, key_id, *status),
            RegistryOp::CreateApiKey {
                entity_id,
                key_id,
                key_sm3,
                label,
            } => self.create_api_key(c, entity_id, key_id, key_sm3, label),
            RegistryOp::RevokeApiKey { key_id, .. } => self.revoke_api_key(c, key_id),
            RegistryOp::ReplaceKey { key_id, public_key, .. } => self.replace_key(c, key_id, public_key),
        }
    }

    /// [`RegistryOp::RegisterEntity`]: a valid, new id, a free alias, a name;
    /// k-of-n administrators.
    fn register_entity(&mut self, c: &RegistryChange, entity: &Entity, master_key: &str) -> Result<(), RegistryError> {
        if !mappings::checks::is_valid_uscc(&entity.id) {
            return Err(RegistryError::Invalid(format!(
                "{} is not a valid unified social credit code (GB 32100)",
                entity.id
            )));
        }
        if self.entities.contains_key(&entity.id) {
            return Err(RegistryError::Invalid(format!(
                "entity {} is already registered",
                entity.id
            )));
        }
        if entity.alias.is_empty() || self.entities.values().any(|e| e.alias == entity.alias) {
            return Err(RegistryError::Invalid(format!(
                "alias {:?} is empty or taken",
                entity.alias
            )));
        }
        if entity.name.trim().is_empty() {
            return Err(RegistryError::Invalid("entity name is empty".into()));
        }
        self.require_admins(c, "registering an entity")?;
        let vk = self.new_key(master_key)?;
        self.add_active_key(vk, master_key, KeyKind::Master, &entity.id, None, None);
        self.entities.insert(entity.id.clone(), entity.clone());
        Ok(())
    }

    /// [`RegistryOp::SetPolicy`]: k-of-n administrators.
    fn set_policy(
        &mut self,
        c: &RegistryChange,
        entity_id: &str,
        role: Role,
        policy: &Policy,
    ) -> Result<(), RegistryError> {
        self.known_entity(entity_id)?;
        self.require_admins(c, "changing a role or policy")?;
        if let Some(e) = self.entities.get_mut(entity_id) {
            e.role = role;
            e.policy = policy.clone();
        }
        Ok(())
    }

    /// A new key of `entity_id` approved by its master key (`what` names
    /// the change in the refusal): [`RegistryOp::AddKey`] and
    /// [`RegistryOp::RegisterDevice`] once their own checks passed.
    fn add_entity_key(
        &mut self,
        c: &RegistryChange,
        entity_id: &str,
        pem: &str,
        kind: KeyKind,
        device_id: Option<String>,
        what: &str,
    ) -> Result<(), RegistryError> {
        self.require_master(c, entity_id, what)?;
        let vk = self.new_key(pem)?;
        let master = self.master_of(entity_id).map(|m| m.key_id.clone());
        self.add_active_key(vk, pem, kind, entity_id, device_id, master);
        Ok(())
    }

    /// [`RegistryOp::SetKeyStatus`]: an unrevoked key; administrators for a
    /// master key, else its entity's master key or administrators.
    fn set_key_status(&mut self, c: &RegistryChange, key_id: &str, status: KeyStatus) -> Result<(), RegistryError> {
        let k = unrevoked(&self.keys, key_id, "is revoked; revocation is final")?;
        self.require_key_authority(
            c,
            k,
            "changing the state of a master key",
            "changing the state of a key",
        )?;
        if let Some(k) = self.keys.get_mut(key_id) {
            k.status = status;
        }
        Ok(())
    }

    /// [`RegistryOp::CreateApiKey`]: a well-formed, new id and hash; the
    /// entity's master key or administrators.
    fn create_api_key(
        &mut self,
        c: &RegistryChange,
        entity_id: &str,
        key_id: &str,
        key_sm3: &str,
        label: &str,
    ) -> Result<(), RegistryError> {
        self.known_entity(entity_id)?;
        if !is_hex(key_id, 16) {
            return Err(RegistryError::Invalid(format!(
                "API key id {key_id:?} is not 16 hexadecimal characters"
            )));
        }
        if !is_hex(key_sm3, 64) {
            return Err(RegistryError::Invalid(
                "key_sm3 is not an SM3 hash (64 hexadecimal characters)".into(),
            ));
        }
        if self.api_keys.contains_key(key_id) {
            return Err(RegistryError::Invalid(format!(
                "API key {key_id} is already registered"
            )));
        }
        self.require_master_or_admins(c, entity_id, "creating an API key")?;
        self.api_keys.insert(
            key_id.to_string(),
            ApiKeyRecord {
                key_id: key_id.to_string(),
                entity_id: entity_id.to_string(),
                key_sm3: key_sm3.to_ascii_lowercase(),
                label: label.to_string(),
                status: KeyStatus::Active,
            },
        );
        Ok(())
    }

    /// [`RegistryOp::RevokeApiKey`]: an unrevoked API key; its entity's
    /// master key or administrators.
    fn revoke_api_key(&mut self, c: &RegistryChange, key_id: &str) -> Result<(), RegistryError> {
        let k = unrevoked(&self.api_keys, key_id, "is already revoked")?;
        self.require_master_or_admins(c, &k.entity_id, "revoking an API key")?;
        if let Some(k) = self.api_keys.get_mut(key_id) {
            k.status = KeyStatus::Revoked;
        }
        Ok(())
    }

    /// [`RegistryOp::ReplaceKey`]: an unrevoked key, approved as for
    /// [`RegistryOp::SetKeyStatus`]; the new key takes its place (same
    /// kind, entity and device) and the old one is revoked.
    fn replace_key(&mut self, c: &RegistryChange, key_id: &str, public_key: &str) -> Result<(), RegistryError> {
        let old = unrevoked(&self.keys, key_id, "is already revoked")?.clone();
        self.require_key_authority(c, &old, "replacing a master key", "replacing a key")?;
        let vk = self.new_key(public_key)?;
        let new_id = vk.key_id().to_string();
        if let Some(o) = self.keys.get_mut(key_id) {
            o.status = KeyStatus::Revoked;
            o.replaced_by = Some(new_id.clone());
        }
        self.verifying.insert(vk.key_id().to_string(), vk.clone());
        self.keys.insert(
            new_id.clone(),
            KeyRecord {
                key_id: new_id,
                public_key: public_key.to_string(),
                status: KeyStatus::Active,
                replaced_by: None,
                ..old
            },
        );
        Ok(())
    }

    /// The entity's master key approves `what`, or else k-of-n
    /// administrators do (whose refusal is the one returned).
    fn require_master_or_admins(&self, c: &RegistryChange, entity_id: &str, what: &str) -> Result<(), RegistryError> {
        if self.require_master(c, entity_id, what).is_err() {
            self.require_admins(c, what)?;
        }
        Ok(())
    }

    /// Who approves a change to key `k`: k-of-n administrators for a master
    /// key (`master_what`), else as [`Self::require_master_or_admins`] (`what`).
    fn require_key_authority(
        &self,
        c: &RegistryChange,
        k: &KeyRecord,
        master_what: &str,
        what: &str,
    ) -> Result<(), RegistryError> {
        if k.kind == KeyKind::Master {
            self.require_admins(c, master_what)
        } else {
            self.require_master_or_admins(c, &k.entity_id, what)
        }
    }

    /// The state key under which a change is stored in the ledger.
    pub fn state_key(c: &RegistryChange) -> String {
        match &c.op {
            RegistryOp::RegisterEntity { entity, .. } => entity.id.clone(),
            RegistryOp::SetPolicy { entity_id, .. }
            | RegistryOp::AddKey { entity_id, .. }
            | RegistryOp::RegisterDevice { entity_id, .. } => entity_id.clone(),
            RegistryOp::SetKeyStatus { key_id, .. } | RegistryOp::ReplaceKey { key_id, .. } => key_id.clone(),
            RegistryOp::CreateApiKey { key_id, .. } | RegistryOp::RevokeApiKey { key_id, .. } => {
                format!("apikey:{key_id}")
            }
        }
    }
}

/// Completes a 17-character prefix into a valid unified social credit code
/// (GB 32100-2015 check character). For tools and tests.
pub fn uscc_with_check(prefix17: &str) -> Option<String> {
    const CHARS: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
    const W: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    if prefix17.chars().count() != 17 {
        return None;
    }
    let mut sum = 0;
    for (c, w) in prefix17.chars().zip(W) {
        sum += CHARS.find(c)? as u32 * w;
    }
    let check = (31 - sum % 31) % 31;
    Some(format!("{prefix17}{}", CHARS.chars().nth(check as usize)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key() -> Signer {
        Signer::generate(
            secure_gateway::RustCryptoProvider::shared(),
            secure_gateway::KeyHandle::new("k"),
        )
        .unwrap()
    }

    fn entity(id: &str, alias: &str, role: Role) -> Entity {
        Entity {
            id: id.into(),
            name: format!("{alias} 测试单位"),
            alias: alias.into(),
            role,
            policy: Policy::default(),
            codes: Vec::new(),
        }
    }

    #[test]
    fn k_of_n_master_hierarchy_devices_and_key_life() {
        let admins: Vec<Signer> = (0..3).map(|_| new_key()).collect();
        let mut reg = Registry::new(admins.iter().map(|k| k.verifying_key().clone()).collect(), 2);
        let id = uscc_with_check("91320100MA1XYA123").unwrap();
        assert!(mappings::checks::is_valid_uscc(&id), "{id}");
        let master = new_key();
        let mut c = RegistryChange::new(RegistryOp::RegisterEntity {
            entity: entity(&id, "nj-cdc", Role::Cdc),
            master_key: master.verifying_key().to_public_key_pem(),
        });
        c.approve(&admins[0]).unwrap();
        let e = reg.check(&c).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs 2 registry-administrator approvals, 1 valid"),
            "{e}"
        );
        c.approve(&admins[0]).unwrap();
        assert!(reg.check(&c).is_err(), "the same admin twice is one approval");
        c.approve(&admins[2]).unwrap();
        reg.apply(&c).unwrap();
        assert!(reg.entity("nj-cdc").unwrap().may_write("inbound_receipt"));
        assert!(!reg.entity(&id).unwrap().may_write("vaccination"));

        // The master key authorises an operational key; an admin alone cannot.
        let op = new_key();
        let mut add = RegistryChange::new(RegistryOp::AddKey {
            entity_id: id.clone(),
            public_key: op.verifying_key().to_public_key_pem(),
            kind: KeyKind::Operational,
            device_id: None,
        });
        add.approve(&admins[0]).unwrap();
        assert!(reg.check(&add).is_err());
        add.approve(&master).unwrap();
        reg.apply(&add).unwrap();
        let rec = reg.key(op.verifying_key().key_id()).unwrap();
        assert_eq!(rec.authorised_by.as_deref(), Some(master.verifying_key().key_id()));

        // A device with its entity-signed certificate.
        let dev = new_key();
        let mut d = RegistryChange::new(RegistryOp::RegisterDevice {
            entity_id: id.clone(),
            device_id: "LOGGER-0001".into(),
            public_key: dev.verifying_key().to_public_key_pem(),
        });
        d.approve(&master).unwrap();
        reg.apply(&d).unwrap();

        // Lock and revoke; revocation is final.
        let mut lock = RegistryChange::new(RegistryOp::SetKeyStatus {
            key_id: op.verifying_key().key_id().into(),
            status: KeyStatus::Locked,
            reason: "lost laptop".into(),
        });
        lock.approve(&master).unwrap();
        reg.apply(&lock).unwrap();
        assert_eq!(reg.key(op.verifying_key().key_id()).unwrap().status, KeyStatus::Locked);

        // A lost master key is replaced by the administrators (R3.3).
        let new_master = new_key();
        let mut rep = RegistryChange::new(RegistryOp::ReplaceKey {
            key_id: master.verifying_key().key_id().into(),
            public_key: new_master.verifying_key().to_public_key_pem(),
            reason: "USB key lost".into(),
        });
        rep.approve(&master).unwrap();
        assert!(
            reg.check(&rep).is_err(),
            "a master key is replaced only by administrators"
        );
        rep.approve(&admins[1]).unwrap();
        rep.approve(&admins[2]).unwrap();
        reg.apply(&rep).unwrap();
        assert_eq!(
            reg.key(master.verifying_key().key_id()).unwrap().status,
            KeyStatus::Revoked
        );
        assert_eq!(
            reg.key(new_master.verifying_key().key_id()).unwrap().kind,
            KeyKind::Master
        );

        // Tampering with an approved change invalidates the approvals.
        let mut bad = c.clone();
        if let RegistryOp::RegisterEntity { entity, .. } = &mut bad.op {
            entity.role = Role::Regulator;
        }
        let mut fresh = Registry::new(admins.iter().map(|k| k.verifying_key().clone()).collect(), 2);
        assert!(fresh.apply(&bad).is_err());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let admin = new_key();
        let mut reg = Registry::new(vec![admin.verifying_key().clone()], 1);
        let mut c = RegistryChange::new(RegistryOp::RegisterEntity {
            entity: entity("91320100MA1XYA1230", "x", Role::Partner),
            master_key: new_key().verifying_key().to_public_key_pem(),
        });
        c.approve(&admin).unwrap();
        assert!(
            reg.apply(&c)
                .unwrap_err()
                .to_string()
                .contains("unified social credit code")
        );
        let mut c = RegistryChange::new(RegistryOp::RegisterEntity {
            entity: entity(&uscc_with_check("91320100MA1XYA123").unwrap(), "x", Role::Partner),
            master_key: "not a key".into(),
        });
        c.approve(&admin).unwrap();
        assert!(reg.apply(&c).unwrap_err().to_string().contains("public key"));
    }

    #[test]
    fn api_keys_hash_only_master_or_admins_and_revocation() {
        let admin = new_key();
        let mut reg = Registry::new(vec![admin.verifying_key().clone()], 1);
        let id = uscc_with_check("91320100MA1XYA123").unwrap();
        let master = new_key();
        let mut c = RegistryChange::new(RegistryOp::RegisterEntity {
            entity: entity(&id, "partner", Role::Partner),
            master_key: master.verifying_key().to_public_key_pem(),
        });
        c.approve(&admin).unwrap();
        reg.apply(&c).unwrap();
        let (key, key_id, hash) = generate_api_key().unwrap();
        assert_eq!(api_key_id(&key), Some(key_id.as_str()));
        let mut create = RegistryChange::new(RegistryOp::CreateApiKey {
            entity_id: id.clone(),
            key_id: key_id.clone(),
            key_sm3: hash,
            label: "dashboard".into(),
        });
        assert!(reg.check(&create).is_err(), "unapproved");
        create.approve(&master).unwrap();
        reg.apply(&create).unwrap();
        let text = serde_json::to_string(&create).unwrap();
        assert!(!text.contains(&key[20..]), "the secret is not in the change");
        assert_eq!(reg.match_api_key(&key).unwrap().entity_id, id);
        let mut forged = key.clone();
        forged.pop();
        forged.push(if key.ends_with('0') { '1' } else { '0' });
        assert!(reg.match_api_key(&forged).is_none());
        assert!(reg.match_api_key("vgk_short_x").is_none());
        let mut revoke = RegistryChange::new(RegistryOp::RevokeApiKey {
            key_id: key_id.clone(),
            reason: "contract ended".into(),
        });
        revoke.approve(&admin).unwrap();
        reg.apply(&revoke).unwrap();
        assert_eq!(reg.match_api_key(&key).unwrap().status, KeyStatus::Revoked);
        assert!(reg.check(&revoke).is_err(), "revocation is final");
    }

    #[test]
    fn read_scope() {
        let s = ReadScope {
            products: vec!["8612345".into()],
            batches: vec!["B1".into()],
            ..ReadScope::default()
        };
        assert!(s.allows(Some("86123450000000000001"), None));
        assert!(!s.allows(Some("86999990000000000001"), Some("B2")));
        assert!(s.allows(None, Some("B1")));
    }
}
