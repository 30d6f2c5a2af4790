//! The gateway's configuration (`vaxgate serve --config FILE`): TOML with
//! unknown keys refused, `${NAME}` replaced from the environment (for
//! secrets; only inside double-quoted strings), and a pure [`GatewayConfig::validate`]
//! that runs before anything starts. Every error names the file, the line
//! and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Syntax, a type mismatch, a missing or an unknown key.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What toml said.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the key (0 when the key is absent).
        line: usize,
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `vaxgate.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Config schema version; must be 1.
    pub version: u32,
    /// Where and how the gateway listens.
    pub server: ServerConfig,
    /// The ledger node's identity.
    pub node: NodeConfig,
    /// Where the ledger lives.
    pub ledger: LedgerSection,
    /// Registry administrators (k-of-n for role and permission changes).
    pub registry: RegistryConfig,
    /// Request authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Rate limits per route class.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Logs, traces and metrics.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Publishing committed blocks and alerts to AMQP (optional).
    #[serde(default)]
    pub forwarding: Option<ForwardingConfig>,
    /// What the custody rules do (`docs/custody.md`).
    #[serde(default)]
    pub custody: CustodyConfig,
    /// Which library holds the node key and does the SM2/SM3/SM4 work:
    /// `provider = "rustcrypto"` (default) or `"openssl"` (`docs/crypto.md`).
    #[serde(default)]
    pub crypto: secure_gateway::CryptoConfig,
}

/// `[custody]`: the action of each custody rule, where it differs from the
/// default (`docs/custody.md`), e.g. `rules = { not_holder = "refuse" }`,
/// and when pending alerts are escalated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyConfig {
    /// Rule code → `refuse`, `flag` or `pending`.
    #[serde(default)]
    pub rules: BTreeMap<String, mappings::custody::Action>,
    /// Seconds after which a `provenance_pending` alert that no later
    /// record resolved is escalated (`provenance_escalated`); 0 = never.
    /// Default 72 hours.
    #[serde(default = "default_escalate_after")]
    pub escalate_after_secs: u64,
    /// How often the gateway looks for pending alerts to escalate, in
    /// seconds (1..86400). Default 300.
    #[serde(default = "default_escalation_check")]
    pub escalation_check_secs: u64,
    /// How many trace codes' histories the gateway keeps in memory for
    /// judging the next records about them (least recently used are
    /// dropped; ~0.5 KB each); 0 = read every history from the database.
    /// Default 200000.
    #[serde(default = "default_cache_codes")]
    pub cache_codes: usize,
}

impl Default for CustodyConfig {
    fn default() -> Self {
        CustodyConfig {
            rules: BTreeMap::new(),
            escalate_after_secs: default_escalate_after(),
            escalation_check_secs: default_escalation_check(),
            cache_codes: default_cache_codes(),
        }
    }
}

fn default_cache_codes() -> usize {
    200_000
}

fn default_escalate_after() -> u64 {
    72 * 3600
}

fn default_escalation_check() -> u64 {
    300
}

impl CustodyConfig {
    /// The action of every rule: the configured ones, else the defaults.
    /// An unknown rule name, or `pending` for a rule no later record can
    /// resolve, is an error naming the valid choices.
    pub fn actions(&self) -> Result<BTreeMap<mappings::custody::Rule, mappings::custody::Action>, (String, String)> {
        use mappings::custody::{Action, Rule};
        let mut out: BTreeMap<Rule, Action> = Rule::ALL.into_iter().map(|r| (r, r.default_action())).collect();
        for (name, action) in &self.rules {
            let Some(rule) = Rule::parse(name) else {
                let valid: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
                return Err((
                    format!("custody.rules.{name}"),
                    format!("no custody rule {name:?}; the rules are {}", valid.join(", ")),
                ));
            };
            if *action == Action::Pending && !rule.may_resolve() {
                return Err((
                    format!("custody.rules.{name}"),
                    format!(
                        "{name} cannot be \"pending\" (no later record can resolve it): use \"refuse\" or \"flag\""
                    ),
                ));
            }
            out.insert(rule, *action);
        }
        Ok(out)
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, e.g. `127.0.0.1:8443`.
    pub listen: String,
    /// Serve plain HTTP instead of TLS. Only for tests and the sandbox; only
    /// on a loopback address unless `danger_plain_http_on_network` is set.
    #[serde(default)]
    pub plain_http: bool,
    /// Allow plain HTTP on a non-loopback address (never in production).
    #[serde(default)]
    pub danger_plain_http_on_network: bool,
    /// TLS 1.3 settings (required unless `plain_http`).
    pub tls: Option<TlsConfig>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Worker threads (0 = one per core).
    #[serde(default)]
    pub workers: usize,
    /// Seconds a request body may take to arrive, whole.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_secs: u64,
    /// Requests from one client address that may be in flight before their
    /// signature is verified (reading their body, waiting for it).
    #[serde(default = "default_unverified")]
    pub unverified_per_address: usize,
}

fn default_max_body() -> usize {
    8 * 1024 * 1024
}

fn default_body_timeout() -> u64 {
    30
}

fn default_unverified() -> usize {
    32
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// CA bundle for client certificates; enables mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Refuse connections without a client certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Ledger name written into the genesis block.
    pub name: String,
    /// The node's SM2 private key (encrypted PKCS#8 PEM): signs checkpoints
    /// and opens the sealed envelopes addressed to the gateway.
    pub key: PathBuf,
    /// Environment variable holding the key's passphrase.
    #[serde(default = "default_passphrase_env")]
    pub passphrase_env: String,
}

fn default_passphrase_env() -> String {
    "VAXGATE_KEY_PASSPHRASE".into()
}

/// `[ledger]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// `sqlite:PATH` (relative to the config file) or `postgres://...`.
    pub url: String,
    /// Most transactions per block.
    #[serde(default = "default_block_txs")]
    pub max_block_txs: usize,
}

fn default_block_txs() -> usize {
    4096
}

/// `[registry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry administrators' public keys (SPKI PEM files).
    pub admins: Vec<PathBuf>,
    /// Signatures of distinct administrators a role or permission change needs.
    pub threshold: usize,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Largest accepted difference between a request's timestamp and ours.
    #[serde(default = "default_skew")]
    pub max_clock_skew_secs: u64,
    /// The SQLite file that remembers used nonces across restarts
    /// (relative to the config file).
    #[serde(default = "default_nonce_store")]
    pub nonce_store: PathBuf,
}

fn default_skew() -> u64 {
    300
}

fn default_nonce_store() -> PathBuf {
    PathBuf::from("data/nonces.db")
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_clock_skew_secs: default_skew(),
            nonce_store: default_nonce_store(),
        }
    }
}

/// One limit: a steady rate and a burst.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

/// `[rate_limits]`: per authenticated principal, or per client address for
/// unauthenticated routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// `POST /v1/transactions`, `/v1/cancellations`.
    #[serde(default = "limit_ingest")]
    pub ingest: Limit,
    /// Queries and the explorer.
    #[serde(default = "limit_query")]
    pub query: Limit,
    /// Registry administration.
    #[serde(default = "limit_admin")]
    pub admin: Limit,
    /// Unauthenticated routes, per client address.
    #[serde(default = "limit_public")]
    pub public: Limit,
}

fn limit_ingest() -> Limit {
    Limit {
        per_second: 200,
        burst: 400,
    }
}
fn limit_query() -> Limit {
    Limit {
        per_second: 500,
        burst: 1000,
    }
}
fn limit_admin() -> Limit {
    Limit {
        per_second: 5,
        burst: 20,
    }
}
fn limit_public() -> Limit {
    Limit {
        per_second: 50,
        burst: 100,
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ingest: limit_ingest(),
            query: limit_query(),
            admin: limit_admin(),
            public: limit_public(),
        }
    }
}

/// `[telemetry]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (default) or `text`.
    pub log_format: Option<String>,
    /// OTLP/gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`; no
    /// traces are exported without it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported traces (default `vaxgate`).
    pub service_name: Option<String>,
}

/// `[forwarding]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// AMQP URL (use `${NAME}` for the password).
    pub amqp_url: String,
    /// Topic exchange to publish to (declared durable by the forwarder).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Categories whose transactions are also published as alerts
    /// (routing key `alert.coldchain`).
    #[serde(default = "default_alert_categories")]
    pub alert_categories: Vec<String>,
    /// How often the forwarder looks for new blocks, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Most transactions published per confirmed round (a block is never split).
    #[serde(default = "default_fwd_batch")]
    pub max_batch: usize,
}

fn default_exchange() -> String {
    "vaxgate.events".into()
}

fn default_alert_categories() -> Vec<String> {
    vec!["cold_chain_alert".into(), "custody_alert".into()]
}

fn default_poll_ms() -> u64 {
    200
}

fn default_fwd_batch() -> usize {
    2000
}

/// A loaded configuration with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: GatewayConfig,
    /// The file.
    pub path: PathBuf,
    /// The text after `${NAME}` expansion (for line lookups).
    text: String,
}

impl LoadedConfig {
    /// Resolves a path from the config relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line: line_of_key(&self.text, key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads, expands and parses a config file, then validates it.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&raw, path, &|name| std::env::var(name).ok())
}

/// Like [`load`] from text, with an explicit environment (for tests).
pub fn load_str(raw: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedConfig, ConfigError> {
    let p = path.display().to_string();
    let text = expand_env(raw, &p, env)?;
    let config: GatewayConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: p.clone(),
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0),
        message: e.message().to_string(),
    })?;
    let loaded = LoadedConfig {
        config,
        path: path.to_path_buf(),
        text,
    };
    loaded.validate()?;
    Ok(loaded)
}

/// Replaces `${NAME}` with the variable's value, escaped for a TOML basic
/// string ([`mappings::envsubst::expand_env_vars`]). An unset variable is an
/// error naming its line.
fn expand_env(raw: &str, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    mappings::envsubst::expand_env_vars(raw, env).map_err(|u| ConfigError::Invalid {
        path: path.to_string(),
        line: u.line,
        key: format!("${{{}}}", u.name),
        message: format!("environment variable {} is not set", u.name),
    })
}

/// Finds the 1-based line of a dotted key (`server.tls.cert`): the line of
/// the key under its table header, or of the header itself; 0 if absent.
fn line_of_key(text: &str, key: &str) -> usize {
    let parts: Vec<&str> = key.split('.').collect();
    let (table, leaf) = parts.split_at(parts.len().saturating_sub(1));
    let header = table.join(".");
    let mut current = String::new();
    let mut header_line = 0;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == key {
                return n + 1;
            }
            if current == header {
                header_line = n + 1;
            }
            continue;
        }
        if current == header
            && let Some(leaf) = leaf.first()
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == *leaf
        {
            return n + 1;
        }
    }
    header_line
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

impl LoadedConfig {
    /// Checks everything that can be checked without IO.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.version != 1 {
            return Err(self.invalid(
                "version",
                format!("unsupported config version {}; this vaxgate reads 1", c.version),
            ));
        }
        let addr: SocketAddr = c
            .server
            .listen
            .parse()
            .map_err(|_| self.invalid("server.listen", format!("{:?} is not an address:port", c.server.listen)))?;
        if c.server.plain_http {
            if c.server.tls.is_some() {
                return Err(self.invalid(
                    "server.plain_http",
                    "plain_http = true and [server.tls] both given; choose one",
                ));
            }
            if !is_loopback(&addr) && !c.server.danger_plain_http_on_network {
                return Err(self.invalid(
                    "server.plain_http",
                    format!("plain HTTP on {addr}, which is not a loopback address; use TLS (or set danger_plain_http_on_network)"),
                ));
            }
        } else {
            match &c.server.tls {
                None => {
                    return Err(self.invalid(
                        "server.tls",
                        "TLS is required: add [server.tls] (or plain_http = true on loopback for tests)",
                    ));
                }
                Some(t) if t.require_client_cert && t.client_ca.is_none() => {
                    return Err(self.invalid("server.tls.require_client_cert", "needs server.tls.client_ca"));
                }
                _ => {}
            }
        }
        if !(1..=3600).contains(&c.server.body_read_timeout_secs) {
            return Err(self.invalid("server.body_read_timeout_secs", "must be between 1 and 3600"));
        }
        if !(1..=100_000).contains(&c.server.unverified_per_address) {
            return Err(self.invalid("server.unverified_per_address", "must be between 1 and 100000"));
        }
        if c.server.max_body_bytes < 1024 {
            return Err(self.invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if c.node.name.trim().is_empty() {
            return Err(self.invalid("node.name", "must not be empty"));
        }
        if c.node.passphrase_env.is_empty() {
            return Err(self.invalid("node.passphrase_env", "must name an environment variable"));
        }
        if !(c.ledger.url.starts_with("sqlite:")
            || c.ledger.url.starts_with("postgres://")
            || c.ledger.url.starts_with("postgresql://"))
        {
            return Err(self.invalid("ledger.url", "must start with sqlite: or postgres://"));
        }
        if c.ledger.max_block_txs == 0 {
            return Err(self.invalid("ledger.max_block_txs", "must be at least 1"));
        }
        if let Err((key, message)) = c.custody.actions() {
            return Err(self.invalid(&key, message));
        }
        if !(1..=86_400).contains(&c.custody.escalation_check_secs) {
            return Err(self.invalid("custody.escalation_check_secs", "must be 1..86400"));
        }
        if c.custody.cache_codes > 50_000_000 {
            return Err(self.invalid(
                "custody.cache_codes",
                "must be at most 50000000 (~25 GB of memory); 0 turns the cache off",
            ));
        }
        if c.registry.admins.is_empty() {
            return Err(self.invalid("registry.admins", "at least one registry administrator key is needed"));
        }
        if c.registry.threshold == 0 || c.registry.threshold > c.registry.admins.len() {
            return Err(self.invalid(
                "registry.threshold",
                format!(
                    "must be between 1 and the number of admins ({})",
                    c.registry.admins.len()
                ),
            ));
        }
        if c.auth.max_clock_skew_secs == 0 || c.auth.max_clock_skew_secs > 3600 {
            return Err(self.invalid("auth.max_clock_skew_secs", "must be between 1 and 3600"));
        }
        let limits: BTreeMap<&str, Limit> = [
            ("ingest", c.rate_limits.ingest),
            ("query", c.rate_limits.query),
            ("admin", c.rate_limits.admin),
            ("public", c.rate_limits.public),
        ]
        .into();
        for (name, l) in limits {
            if l.per_second == 0 || l.burst == 0 {
                return Err(self.invalid(
                    &format!("rate_limits.{name}"),
                    "per_second and burst must be at least 1",
                ));
            }
        }
        if let Some(f) = &c.telemetry.log_format
            && f != "json"
            && f != "text"
        {
            return Err(self.invalid("telemetry.log_format", format!("{f:?} is not json or text")));
        }
        if let Some(fw) = &c.forwarding {
            if !(fw.amqp_url.starts_with("amqp://") || fw.amqp_url.starts_with("amqps://")) {
                return Err(self.invalid("forwarding.amqp_url", "must start with amqp:// or amqps://"));
            }
            if fw.exchange.is_empty() || fw.exchange.len() > 255 || fw.exchange.chars().any(|c| c.is_whitespace()) {
                return Err(self.invalid("forwarding.exchange", "must be 1 to 255 characters without spaces"));
            }
            if fw.alert_categories.iter().any(|a| a.trim().is_empty()) {
                return Err(self.invalid("forwarding.alert_categories", "must not contain an empty name"));
            }
            if !(10..=60_000).contains(&fw.poll_interval_ms) {
                return Err(self.invalid("forwarding.poll_interval_ms", "must be between 10 and 60000"));
            }
            if !(1..=100_000).contains(&fw.max_batch) {
                return Err(self.invalid("forwarding.max_batch", "must be between 1 and 100000"));
            }
        }
        if let Some(e) = &c.telemetry.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(self.invalid(
                "telemetry.otlp_endpoint",
                format!("{e:?} must be an http:// or https:// URL of an OTLP/gRPC receiver"),
            ));
        }
        if let Some(n) = &c.telemetry.service_name
            && n.trim().is_empty()
        {
            return Err(self.invalid("telemetry.service_name", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[server]
listen = "127.0.0.1:8080"
plain_http = true

[node]
name = "test"
key = "keys/node.key.pem"

[ledger]
url = "sqlite:data/ledger.db"

[registry]
admins = ["keys/admin-1.pub.pem", "keys/admin-2.pub.pem"]
threshold = 2

[forwarding]
amqp_url = "amqp://vaxgate:${AMQP_PASSWORD}@127.0.0.1:5672/%2f"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "AMQP_PASSWORD").then(|| "s\"cret".to_string())
    }

    fn load_text(t: &str) -> Result<LoadedConfig, ConfigError> {
        load_str(t, Path::new("vaxgate.toml"), &env)
    }

    #[test]
    fn good_config_loads_with_env_expanded() {
        let c = load_text(GOOD).unwrap();
        assert_eq!(
            c.config.forwarding.unwrap().amqp_url,
            "amqp://vaxgate:s\"cret@127.0.0.1:5672/%2f"
        );
        assert_eq!(c.config.rate_limits.admin, limit_admin());
    }

    #[test]
    fn unknown_key_names_line() {
        let t = GOOD.replace("plain_http = true", "plain_http = true\nlisten_port = 3");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.starts_with("vaxgate.toml:7:"), "{e}");
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn crypto_provider_is_chosen_and_an_unknown_one_lists_the_valid_ones() {
        assert_eq!(
            load_text(GOOD).unwrap().config.crypto.provider,
            secure_gateway::ProviderKind::RustCrypto
        );
        let t = format!("{GOOD}\n[crypto]\nprovider = \"openssl\"\n");
        assert_eq!(
            load_text(&t).unwrap().config.crypto.provider,
            secure_gateway::ProviderKind::Openssl
        );
        let t = format!("{GOOD}\n[crypto]\nprovider = \"gmssl\"\n");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.starts_with("vaxgate.toml:23:"), "{e}");
        assert!(
            e.contains("gmssl") && e.contains("rustcrypto") && e.contains("openssl"),
            "{e}"
        );
    }

    #[test]
    fn missing_env_names_line_and_variable() {
        let e = load_str(GOOD, Path::new("v.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.contains("v.toml:20:") && e.contains("AMQP_PASSWORD"), "{e}");
    }

    #[test]
    fn forwarding_and_telemetry_are_validated() {
        let c = load_text(GOOD).unwrap();
        let fw = c.config.forwarding.unwrap();
        assert_eq!(fw.exchange, "vaxgate.events");
        assert_eq!(
            fw.alert_categories,
            vec!["cold_chain_alert".to_string(), "custody_alert".to_string()]
        );
        let t = format!("{GOOD}poll_interval_ms = 0\n");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.contains(":21: `forwarding.poll_interval_ms`"), "{e}");
        let t = format!("{GOOD}exchange = \"a b\"\n");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.contains("`forwarding.exchange`"), "{e}");
        let t = format!("{GOOD}\n[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\n");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.contains(":23: `telemetry.otlp_endpoint`"), "{e}");
        let t = format!("{GOOD}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampler = 1\n");
        let e = load_text(&t).unwrap_err().to_string();
        assert!(e.contains("sampler"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let e = load_text(&GOOD.replace("threshold = 2", "threshold = 3"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "vaxgate.toml:17: `registry.threshold`: must be between 1 and the number of admins (2)"
        );
        let e = load_text(&GOOD.replace("127.0.0.1:8080", "0.0.0.0:8080"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":6: `server.plain_http`") && e.contains("not a loopback"),
            "{e}"
        );
        let e = load_text(&GOOD.replace("plain_http = true", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`server.tls`: TLS is required"), "{e}");
        let e = load_text(&GOOD.replace("sqlite:data", "mysql://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":13: `ledger.url`"), "{e}");
    }
}
