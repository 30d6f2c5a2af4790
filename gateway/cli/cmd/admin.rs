//! `vaxgate admin ...`: registry changes and registry queries, as a client of
//! a running gateway. A change is built, approved with one or more keys
//! (`--approve`), then submitted; or written out (`--out`) so that other
//! administrators approve it offline (`vaxgate admin approve FILE --key K`)
//! before one of them submits it (`vaxgate admin submit FILE`).

use std::path::{Path, PathBuf};

use adapters::{GatewayClient, GatewayClientConfig};
use anyhow::Context;
use clap::{Args, Subcommand};
use gateway::registry::{Entity, KeyKind, KeyStatus, Policy, RegistryChange, RegistryOp, Role};
use secure_gateway::{KeyHandle, ProviderKind, Signer};

/// How to reach the gateway and sign.
#[derive(Debug, Args)]
pub struct Connect {
    /// Gateway base URL.
    #[arg(
        long,
        global = true,
        default_value = "https://127.0.0.1:8443",
        env = "VAXGATE_GATEWAY"
    )]
    pub gateway: String,
    /// Extra CA certificate (PEM) to trust, e.g. the gateway's self-signed tls/server.crt.pem.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (one PEM file) for mutual TLS.
    #[arg(long, global = true)]
    pub identity: Option<PathBuf>,
    /// Key that signs the HTTP request (default: the first --approve key).
    #[arg(long, global = true)]
    pub sign_with: Option<PathBuf>,
    /// Environment variable with the private keys' passphrase.
    #[arg(long, global = true, default_value = secure_gateway::DEFAULT_PASSPHRASE_ENV)]
    pub passphrase_env: String,
    /// The crypto provider that loads the keys and signs: rustcrypto or openssl.
    #[arg(long, global = true, default_value_t = ProviderKind::RustCrypto)]
    pub crypto_provider: ProviderKind,
}

/// Approvals and where the change goes.
#[derive(Debug, Args)]
pub struct Approve {
    /// Private key that approves the change (repeat for k-of-n).
    #[arg(long = "approve")]
    pub approve: Vec<PathBuf>,
    /// Write the change to this file instead of submitting it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `vaxgate admin ...`
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    cmd: AdminCmd,
}

/// The admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Register an entity with its master key (k-of-n administrators).
    RegisterEntity {
        /// Unified social credit code.
        #[arg(long)]
        id: String,
        /// Registered name.
        #[arg(long)]
        name: String,
        /// Short alias.
        #[arg(long)]
        alias: String,
        /// Role: manufacturer, logistics, cdc, vaccination_unit, hospital, regulator, partner.
        #[arg(long)]
        role: String,
        /// The entity's master public key (SPKI PEM).
        #[arg(long)]
        master_key: PathBuf,
        /// Policy (JSON: {"write": [...], "read": {...}, "personal_data": false}).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Another organisation code its systems report under (repeatable).
        #[arg(long = "code")]
        codes: Vec<String>,
        #[command(flatten)]
        approve: Approve,
    },
    /// Change an entity's role and policy (k-of-n administrators).
    SetPolicy {
        /// Entity id or alias.
        #[arg(long)]
        entity: String,
        /// New role.
        #[arg(long)]
        role: String,
        /// Policy JSON file.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        approve: Approve,
    },
    /// Add an operational or system key (the entity's master key approves).
    AddKey {
        /// Entity id.
        #[arg(long)]
        entity: String,
        /// The new public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        /// `operational` or `system`.
        #[arg(long, default_value = "operational")]
        kind: String,
        /// System id, for a system key.
        #[arg(long)]
        system_id: Option<String>,
        #[command(flatten)]
        approve: Approve,
    },
    /// Register a device; the master key's approval is its certificate.
    RegisterDevice {
        /// Entity id.
        #[arg(long)]
        entity: String,
        /// Device id.
        #[arg(long)]
        device_id: String,
        /// The device's public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        approve: Approve,
    },
    /// Lock, unlock or revoke a key.
    KeyStatus {
        /// Key id.
        #[arg(long)]
        key_id: String,
        /// active, locked or revoked.
        #[arg(long)]
        status: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        approve: Approve,
    },
    /// Replace a key (a lost master key: k-of-n administrators).
    ReplaceKey {
        /// Key id to replace.
        #[arg(long)]
        key_id: String,
        /// The new public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        approve: Approve,
    },
    /// Read-only API keys for partners (GET routes only; the entity's read policy).
    #[command(subcommand)]
    ApiKey(ApiKeyCmd),
    /// Add an approval to a change file.
    Approve {
        /// The change (JSON).
        file: PathBuf,
        /// Approving private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Submit a change file.
    Submit {
        /// The change (JSON).
        file: PathBuf,
    },
    /// List registered entities.
    Entities,
    /// Show one entity and its keys.
    Entity {
        /// Entity id or alias.
        id: String,
    },
}

/// `vaxgate admin api-key ...`
#[derive(Debug, Subcommand)]
pub enum ApiKeyCmd {
    /// Create a key for an entity (its master key, or k-of-n administrators,
    /// approve). The key is printed once; only its SM3 hash is submitted.
    Create {
        /// Entity id (unified social credit code).
        #[arg(long)]
        entity: String,
        /// What the key is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Also write the key to this file (mode 0600) instead of only printing it.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[command(flatten)]
        approve: Approve,
    },
    /// Revoke a key by its public id (final).
    Revoke {
        /// The key's public id (the 16 hex characters after `vgk_`).
        #[arg(long)]
        key_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        approve: Approve,
    },
}

fn write_secret(p: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(p)
        .with_context(|| format!("creating {} (it must not exist yet)", p.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

fn api_key(c: &Connect, cmd: ApiKeyCmd) -> anyhow::Result<u8> {
    match cmd {
        ApiKeyCmd::Create {
            entity,
            label,
            key_out,
            approve,
        } => {
            let (key, key_id, key_sm3) = gateway::registry::generate_api_key()?;
            let op = RegistryOp::CreateApiKey {
                entity_id: entity,
                key_id: key_id.clone(),
                key_sm3,
                label,
            };
            if let Some(p) = &key_out {
                write_secret(p, &format!("{key}\n"))?;
            }
            let code = finish(c, op, &approve)?;
            match &key_out {
                Some(p) => println!("API key {key_id} written to {} (shown nowhere else)", p.display()),
                None => println!("API key (shown once, store it now): {key}"),
            }
            Ok(code)
        }
        ApiKeyCmd::Revoke {
            key_id,
            reason,
            approve,
        } => finish(c, RegistryOp::RevokeApiKey { key_id, reason }, &approve),
    }
}

fn enum_value<T: serde::de::DeserializeOwned>(what: &str, v: &str, valid: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| anyhow::anyhow!("{what} {v:?} is not one of: {valid}"))
}

fn role(v: &str) -> anyhow::Result<Role> {
    enum_value(
        "role",
        v,
        "manufacturer, logistics, cdc, vaccination_unit, hospital, regulator, partner",
    )
}

fn read_pem(p: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    secure_gateway::Sm2VerifyingKey::from_public_key_pem(&s).with_context(|| format!("{}", p.display()))?;
    Ok(s)
}

fn policy(p: &Option<PathBuf>) -> anyhow::Result<Policy> {
    match p {
        None => Ok(Policy::default()),
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&t).with_context(|| format!("{}: not a policy", p.display()))
        }
    }
}

fn key(c: &Connect, p: &Path) -> anyhow::Result<Signer> {
    Signer::load_file(
        c.crypto_provider.build()?,
        KeyHandle::new(p.display().to_string()),
        p,
        &c.passphrase_env,
    )
    .with_context(|| format!("loading {}", p.display()))
}

fn client(c: &Connect, signer: Option<&Path>) -> anyhow::Result<GatewayClient> {
    let signer = c
        .sign_with
        .as_deref()
        .or(signer)
        .context("give --sign-with KEY (or --approve KEY)")?;
    let cfg = GatewayClientConfig {
        base_url: c.gateway.clone(),
        ca_cert: c.ca.clone(),
        client_identity: c.identity.clone(),
        timeout: None,
    };
    Ok(GatewayClient::new(&cfg, key(c, signer)?)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn submit(c: &Connect, change: &RegistryChange, signer: Option<&Path>) -> anyhow::Result<u8> {
    let cl = client(c, signer)?;
    let body = runtime()?.block_on(cl.post_json("/v1/admin/registry", change))?;
    let r: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "registry change {} committed: transaction {} in block {}",
        change.change_id,
        r["tx_id"].as_str().unwrap_or("?"),
        r["height"]
    );
    Ok(0)
}

fn finish(c: &Connect, op: RegistryOp, a: &Approve) -> anyhow::Result<u8> {
    let mut change = RegistryChange::new(op);
    for k in &a.approve {
        change.approve(&key(c, k)?)?;
    }
    match &a.out {
        Some(out) => {
            std::fs::write(out, serde_json::to_string_pretty(&change)?)?;
            println!(
                "change {} written to {} with {} approval(s)",
                change.change_id,
                out.display(),
                change.approvals.len()
            );
            Ok(0)
        }
        None => submit(c, &change, a.approve.first().map(PathBuf::as_path)),
    }
}

/// Runs an admin subcommand.
pub fn run(args: AdminArgs) -> anyhow::Result<u8> {
    let c = &args.connect;
    match args.cmd {
        AdminCmd::RegisterEntity {
            id,
            name,
            alias,
            role: r,
            master_key,
            policy: p,
            codes,
            approve,
        } => {
            let op = RegistryOp::RegisterEntity {
                entity: Entity {
                    id,
                    name,
                    alias,
                    role: role(&r)?,
                    policy: policy(&p)?,
                    codes,
                },
                master_key: read_pem(&master_key)?,
            };
            finish(c, op, &approve)
        }
        AdminCmd::SetPolicy {
            entity,
            role: r,
            policy: p,
            approve,
        } => finish(
            c,
            RegistryOp::SetPolicy {
                entity_id: entity,
                role: role(&r)?,
                policy: policy(&p)?,
            },
            &approve,
        ),
        AdminCmd::AddKey {
            entity,
            public_key,
            kind,
            system_id,
            approve,
        } => {
            let kind: KeyKind = enum_value("kind", &kind, "operational, system")?;
            let op = RegistryOp::AddKey {
                entity_id: entity,
                public_key: read_pem(&public_key)?,
                kind,
                device_id: system_id,
            };
            finish(c, op, &approve)
        }
        AdminCmd::RegisterDevice {
            entity,
            device_id,
            public_key,
            approve,
        } => {
            let op = RegistryOp::RegisterDevice {
                entity_id: entity,
                device_id,
                public_key: read_pem(&public_key)?,
            };
            finish(c, op, &approve)
        }
        AdminCmd::KeyStatus {
            key_id,
            status,
            reason,
            approve,
        } => {
            let status: KeyStatus = enum_value("status", &status, "active, locked, revoked")?;
            finish(c, RegistryOp::SetKeyStatus { key_id, status, reason }, &approve)
        }
        AdminCmd::ReplaceKey {
            key_id,
            public_key,
            reason,
            approve,
        } => finish(
            c,
            RegistryOp::ReplaceKey {
                key_id,
                public_key: read_pem(&public_key)?,
                reason,
            },
            &approve,
        ),
        AdminCmd::ApiKey(cmd) => api_key(c, cmd),
        AdminCmd::Approve { file, key: k } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut change: RegistryChange =
                serde_json::from_str(&text).with_context(|| format!("{}: not a registry change", file.display()))?;
            change.approve(&key(c, &k)?)?;
            std::fs::write(&file, serde_json::to_string_pretty(&change)?)?;
            println!("{}: {} approval(s)", file.display(), change.approvals.len());
            Ok(0)
        }
        AdminCmd::Submit { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let change: RegistryChange =
                serde_json::from_str(&text).with_context(|| format!("{}: not a registry change", file.display()))?;
            submit(c, &change, None)
        }
        AdminCmd::Entities => {
            let body = runtime()?.block_on(client(c, None)?.get("/v1/admin/entities"))?;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        AdminCmd::Entity { id } => {
            let body = runtime()?.block_on(client(c, None)?.get(&format!("/v1/admin/entities/{id}")))?;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
    }
}
