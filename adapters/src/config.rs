//! The agent's configuration (`vaxgate agent --config config/agent.toml`):
//! TOML with unknown keys refused, `${NAME}` replaced from the environment
//! (secrets such as database passwords), and validation before anything
//! starts. Every error names the file, the line and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::AgentError;
use crate::source::SourceConfig;

/// `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's identity and state.
    pub agent: AgentSection,
    /// How to reach the gateway.
    pub gateway: GatewaySection,
    /// The sources to run, each parsed by its `type` (`crate::source`).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Which library holds the agent's key and seals its records:
    /// `provider = "rustcrypto"` (default) or `"openssl"` (`docs/crypto.md`).
    #[serde(default)]
    pub crypto: secure_gateway::CryptoConfig,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The registered entity id (USCC with check digit) the agent submits as.
    pub entity_id: String,
    /// The entity's SM2 private key (encrypted PKCS#8 PEM).
    pub key: PathBuf,
    /// Environment variable holding the key's passphrase.
    #[serde(default = "default_passphrase_env")]
    pub passphrase_env: String,
    /// The agent's own SQLite state database (checkpoints, receipts, quarantine).
    pub state_db: PathBuf,
    /// NMPAB/T 1004 dataset definition; the built-in one when absent.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
}

fn default_passphrase_env() -> String {
    "VAXGATE_AGENT_PASSPHRASE".into()
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Base URL, e.g. `https://gateway.example:8443`.
    pub url: String,
    /// Extra CA certificate (PEM) to trust.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_identity: Option<PathBuf>,
    /// The gateway node's SM2 public key (records are sealed for it).
    pub node_key: PathBuf,
    /// Per-request timeout, seconds.
    #[serde(default = "default_u64::<60>")]
    pub timeout_secs: u64,
    /// Attempts per batch on transient errors before the source backs off.
    #[serde(default = "default_u32::<3>")]
    pub attempts: u32,
    /// First retry delay, milliseconds.
    #[serde(default = "default_u64::<200>")]
    pub retry_base_ms: u64,
    /// Longest retry delay, milliseconds.
    #[serde(default = "default_u64::<30_000>")]
    pub retry_max_ms: u64,
}

/// `#[serde(default = "default_usize::<N>")]`: a count's default, written
/// at its key.
pub(crate) fn default_usize<const N: usize>() -> usize {
    N
}

/// `#[serde(default = "default_u64::<N>")]`: a number's default, written at
/// its key.
pub(crate) fn default_u64<const N: u64>() -> u64 {
    N
}

/// `#[serde(default = "default_u32::<N>")]`: a number's default, written at
/// its key.
pub(crate) fn default_u32<const N: u32>() -> u32 {
    N
}

/// A loaded configuration with where it came from.
#[derive(Clone)]
pub struct LoadedAgentConfig {
    /// The configuration.
    pub config: AgentConfig,
    /// The file.
    pub path: PathBuf,
    text: String,
    /// The key's passphrase when the caller gives it (the sandbox), instead
    /// of the environment variable `[agent] passphrase_env`.
    passphrase: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for LoadedAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAgentConfig")
            .field("config", &self.config)
            .field("path", &self.path)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<given>"))
            .finish()
    }
}

impl LoadedAgentConfig {
    /// Uses `passphrase` for the agent's key instead of reading the
    /// environment variable `[agent] passphrase_env` (for a caller that
    /// holds it, such as the sandbox; the process environment cannot be
    /// changed safely once threads run).
    pub fn with_passphrase(mut self, passphrase: zeroize::Zeroizing<String>) -> Self {
        self.passphrase = Some(passphrase);
        self
    }

    /// The key's passphrase: the one given, else the environment
    /// variable's (`None` when it is unset).
    pub(crate) fn key_passphrase(&self) -> Option<zeroize::Zeroizing<String>> {
        self.passphrase.clone().or_else(|| {
            std::env::var(&self.config.agent.passphrase_env)
                .ok()
                .map(zeroize::Zeroizing::new)
        })
    }

    /// Resolves a path relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// An error at `key` (dotted, or `sources[n].key`).
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> AgentError {
        AgentError::Config {
            path: self.path.display().to_string(),
            line: line_of_key(&self.text, key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads, expands and parses a config file, then validates it.
pub fn load(path: &Path) -> Result<LoadedAgentConfig, AgentError> {
    let raw = std::fs::read_to_string(path).map_err(|e| AgentError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let loaded = load_str(&raw, path, &|name| std::env::var(name).ok())?;
    loaded.validate_files()?;
    Ok(loaded)
}

/// Like [`load`] from text, with an explicit environment (for tests);
/// checks everything except that the named files exist.
pub fn load_str(raw: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedAgentConfig, AgentError> {
    let p = path.display().to_string();
    let text = expand_env(raw, &p, env)?;
    let config: AgentConfig = toml::from_str(&text).map_err(|e| {
        let mut line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        let mut key = "-".to_string();
        // Inside a tagged `[[sources]]` entry toml points at the entry's
        // header; find the offending key's own line.
        if let Some(rest) = e.message().strip_prefix("unknown field `")
            && let Some((name, _)) = rest.split_once('`')
        {
            key = name.to_string();
            if let Some(n) = text
                .lines()
                .enumerate()
                .skip(line.saturating_sub(1))
                .find_map(|(n, l)| l.split_once('=').filter(|(k, _)| k.trim() == name).map(|_| n + 1))
            {
                line = n;
            }
        }
        AgentError::Config {
            path: p.clone(),
            line,
            key,
            message: e.message().to_string(),
        }
    })?;
    let mut loaded = LoadedAgentConfig {
        passphrase: None,
        config,
        path: path.to_path_buf(),
        text,
    };
    // Relative paths of the sources (mapping, directories) are relative to
    // the config file.
    let sources = std::mem::take(&mut loaded.config.sources);
    loaded.config.sources = sources.iter().map(|s| s.resolved(&|p| loaded.resolve(p))).collect();
    loaded.validate()?;
    Ok(loaded)
}

/// Replaces `${NAME}` with the variable's value (escaped for a TOML basic
/// string); an unset variable is an error naming its line.
fn expand_env(raw: &str, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, AgentError> {
    mappings::envsubst::expand_env_vars(raw, env).map_err(|u| AgentError::Config {
        path: path.to_string(),
        line: u.line,
        key: format!("${{{}}}", u.name),
        message: format!("environment variable {} is not set", u.name),
    })
}

/// The 1-based line of `table.key` or `sources[n].key` (0 if absent).
fn line_of_key(text: &str, key: &str) -> usize {
    let (table, index, leaf) = if let Some(rest) = key.strip_prefix("sources[") {
        let Some((n, leaf)) = rest.split_once("].") else {
            return 0;
        };
        ("sources".to_string(), n.parse::<usize>().ok(), leaf.to_string())
    } else {
        match key.rsplit_once('.') {
            Some((t, l)) => (t.to_string(), None, l.to_string()),
            None => (String::new(), None, key.to_string()),
        }
    };
    let mut seen = 0usize;
    let mut in_target = table.is_empty();
    let mut header_line = 0;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let array = t.starts_with("[[");
            let current = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_target = if current == table {
                if array {
                    seen += 1;
                    index.is_none_or(|i| i + 1 == seen)
                } else {
                    true
                }
            } else {
                false
            };
            if in_target {
                header_line = n + 1;
            }
            continue;
        }
        if in_target
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == leaf
        {
            return n + 1;
        }
    }
    header_line
}

impl LoadedAgentConfig {
    /// Checks that the files the config names exist.
    pub fn validate_files(&self) -> Result<(), AgentError> {
        let c = &self.config;
        let mut files: Vec<(String, &Path)> = vec![
            ("agent.key".into(), c.agent.key.as_path()),
            ("gateway.node_key".into(), c.gateway.node_key.as_path()),
        ];
        if let Some(p) = &c.gateway.ca {
            files.push(("gateway.ca".into(), p));
        }
        if let Some(p) = &c.gateway.client_identity {
            files.push(("gateway.client_identity".into(), p));
        }
        if let Some(p) = &c.agent.dataset {
            files.push(("agent.dataset".into(), p));
        }
        for (i, s) in c.sources.iter().enumerate() {
            files.push((format!("sources[{i}].mapping"), s.mapping()));
        }
        for (k, p) in files {
            if !self.resolve(p).is_file() {
                return Err(self.invalid(&k, format!("no file at {}", self.resolve(p).display())));
            }
        }
        Ok(())
    }

    /// Checks everything that can be checked without IO.
    pub fn validate(&self) -> Result<(), AgentError> {
        let c = &self.config;
        if c.agent.entity_id.trim().is_empty() {
            return Err(self.invalid("agent.entity_id", "must not be empty"));
        }
        if !(c.gateway.url.starts_with("https://") || c.gateway.url.starts_with("http://")) {
            return Err(self.invalid(
                "gateway.url",
                "must start with https:// (or http:// for a loopback test)",
            ));
        }
        if c.gateway.attempts == 0 {
            return Err(self.invalid("gateway.attempts", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in c.sources.iter().enumerate() {
            let k = |leaf: &str| format!("sources[{i}].{leaf}");
            if s.name().is_empty()
                || !s
                    .name()
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(self.invalid(&k("name"), "use letters, digits, `-`, `_` or `.`"));
            }
            if !names.insert(s.name().to_string()) {
                return Err(self.invalid(&k("name"), format!("source `{}` is configured twice", s.name())));
            }
            s.validate().map_err(|(key, msg)| self.invalid(&k(key), msg))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL config of an entry read by sqlx.
    pub(super) fn sqlx_config(s: &SourceConfig) -> &crate::pull::SqlSourceConfig {
        let any: &dyn std::any::Any = &**s;
        any.downcast_ref::<crate::pull::PullSource<crate::sql::SqlSource>>()
            .map(crate::pull::PullSource::config)
            .unwrap_or_else(|| panic!("{s:?} is not a sqlx source"))
    }

    fn files() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for f in ["k.pem", "node.pem", "m.toml"] {
            std::fs::write(d.path().join(f), "x").unwrap_or_else(|e| panic!("{e}"));
        }
        d
    }

    const GOOD: &str = r#"
[agent]
entity_id = "12320102MB1234567X"
key = "k.pem"
state_db = "state.db"

[gateway]
url = "https://127.0.0.1:8443"
node_key = "node.pem"

[[sources]]
type = "sqlite"
name = "a"
mapping = "m.toml"
url = "sqlite:a.db"
table = "T"
watermark = "ID"

[[sources]]
type = "postgres"
name = "b"
mapping = "m.toml"
url = "postgres://u:${PGPASS}@h/db"
table = "T"
watermark = "GXSJ"
key = "ID"
batch_size = 0
"#;

    fn load(text: &str, dir: &Path) -> Result<LoadedAgentConfig, AgentError> {
        load_str(text, &dir.join("agent.toml"), &|n| {
            (n == "PGPASS").then(|| "s\"ecret".to_string())
        })
    }

    #[test]
    fn errors_name_line_and_key() {
        let d = files();
        let e = load(GOOD, d.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.ends_with(":27: `sources[1].batch_size`: must be between 1 and 10000"),
            "{e}"
        );
        let ok = load(&GOOD.replace("batch_size = 0", ""), d.path()).unwrap_or_else(|e| panic!("{e}"));
        let pg = sqlx_config(&ok.config.sources[1]);
        assert_eq!(ok.config.sources[1].kind(), "postgres");
        assert_eq!(pg.url, "postgres://u:s\"ecret@h/db");
        let e = load(&GOOD.replace("${PGPASS}", "${NOPE}"), d.path())
            .err()
            .map(|e| e.to_string());
        assert!(
            e.unwrap_or_default()
                .contains(":23: `${NOPE}`: environment variable NOPE is not set")
        );
        let e = load(&GOOD.replace("type = \"postgres\"", "type = \"oracle\""), d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown variant `oracle`") && e.contains("`mysql`"), "{e}");
        let e = load(
            &GOOD.replace(
                "table = \"T\"\nwatermark = \"ID\"",
                "table = \"T\"\nwatermark = \"ID\"\nwatermrk = 1",
            ),
            d.path(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains(":18:") && e.contains("unknown field `watermrk`"), "{e}");
        let e = load(
            &GOOD.replace("node.pem", "gone.pem").replace("batch_size = 0", ""),
            d.path(),
        )
        .and_then(|c| c.validate_files())
        .err()
        .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains(":9: `gateway.node_key`: no file at"));
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// config/agent.toml parses, validates and its mapping specs compile.
    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let cfg = load_str(&text, &path, &|name| Some(format!("secret-for-{name}"))).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = cfg.config.sources.iter().map(SourceConfig::kind).collect();
        assert_eq!(kinds, ["sqlite", "postgres", "mysql"]);
        let pg = super::tests::sqlx_config(&cfg.config.sources[1]);
        assert!(pg.url.contains("secret-for-CDC_DB_PASSWORD"));
        let specs = crate::agent::load_specs(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(specs.len(), 3);
        for (i, s) in cfg.config.sources.iter().enumerate() {
            assert!(cfg.resolve(s.mapping()).is_file(), "sources[{i}].mapping");
        }
    }
}
