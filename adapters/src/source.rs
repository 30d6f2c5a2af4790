//! The seam between the agent and its source types.
//!
//! A source type is one module: its config struct (the `[[sources]]` table
//! without `type`, `deny_unknown_fields`) implements [`Source`] (checks,
//! `agent check`, run), and one line of `SOURCE_TYPES` maps its
//! `type = "..."` name to the function that parses that table. The agent
//! and the config loader only see `dyn Source`; nothing else lists the
//! types. See "Adding a source type" in `docs/sources.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use mappings::MappingSpec;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use tokio::sync::watch;

use crate::error::AgentError;
use crate::pipeline::Pipeline;

/// Parses a `[[sources]]` table (its `type` removed) of the type named by
/// the first argument.
pub type ParseFn = fn(&'static str, toml::Table) -> Result<Arc<dyn Source>, toml::de::Error>;

/// Every source type: its `type` name and how its table is parsed. Adding a
/// type is one line here; an unknown `type` lists them in this order.
const SOURCE_TYPES: &[(&str, ParseFn)] = &[
    ("sqlite", crate::pull::parse::<crate::sql::SqlSource>),
    ("postgres", crate::pull::parse::<crate::sql::SqlSource>),
    ("mysql", crate::pull::parse::<crate::sql::SqlSource>),
    ("mssql", crate::pull::parse::<crate::mssql::MssqlSource>),
    ("hl7_mllp", parse::<crate::mllp::Hl7MllpSourceConfig>),
    ("hl7_files", parse::<crate::hl7_files::Hl7FilesSourceConfig>),
    ("xml_dir", parse::<crate::xml_source::XmlDirSourceConfig>),
    ("amqp", parse::<crate::amqp::AmqpSourceConfig>),
];

/// The `type` names of [`SOURCE_TYPES`], for the unknown-`type` error.
static TYPE_NAMES: [&str; SOURCE_TYPES.len()] = {
    let mut names = [""; SOURCE_TYPES.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = SOURCE_TYPES[i].0;
        i += 1;
    }
    names
};

/// The valid `type` names, in the order the configuration error lists them.
pub fn source_types() -> &'static [&'static str] {
    &TYPE_NAMES
}

/// The [`ParseFn`] of a type whose config struct is the source: the table
/// deserializes into `T`.
pub fn parse<T: Source + DeserializeOwned + 'static>(
    _kind: &'static str,
    table: toml::Table,
) -> Result<Arc<dyn Source>, toml::de::Error> {
    Ok(Arc::new(T::deserialize(toml::Value::Table(table))?))
}

/// A problem with one key of a source's table: (key, what is wrong). The
/// loader turns it into an error naming the file, the line and
/// `sources[n].key`.
pub type Invalid = (&'static str, String);

/// What a running source returns: its statistics when it stops.
pub type SourceTask = BoxFuture<'static, Result<RunStats, AgentError>>;

/// What every source type provides. Implemented by the type's config struct
/// (for the SQL types, by [`crate::pull::PullSource`]).
pub trait Source: std::any::Any + std::fmt::Debug + Send + Sync {
    /// The unique name (checkpoints, receipts and quarantine are kept under it).
    fn name(&self) -> &str;

    /// The mapping spec file.
    fn mapping(&self) -> &Path;

    /// The same source with its relative paths (the mapping, directories)
    /// made absolute by `resolve` (relative to the config file's folder).
    fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Arc<dyn Source>;

    /// Checks the values deserialization cannot (ranges, URL schemes, that
    /// a directory exists).
    ///
    /// # Errors
    /// The first bad key and what is wrong with it.
    fn validate(&self) -> Result<(), Invalid>;

    /// `vaxgate agent check`: tests what can be tested without taking data
    /// (a connection, a query, a bindable address, a writable directory).
    /// `Ok` and `Err` both carry the line to show.
    fn check(&self) -> BoxFuture<'_, Result<String, String>>;

    /// Prepares the source (what can fail before anything runs, e.g. a
    /// malformed connection URL) and returns the task that runs it until
    /// `cx.stop` turns true (or, with `cx.once`, until it has nothing left
    /// to read; a source that only runs continuously returns at once).
    ///
    /// # Errors
    /// The source cannot be prepared.
    fn start(&self, cx: SourceContext) -> Result<SourceTask, AgentError>;
}

/// What a source is started with.
#[derive(Debug)]
pub struct SourceContext {
    /// The agent's pipeline (map → seal → POST → receipts).
    pub pipeline: Pipeline,
    /// The source's compiled mapping spec.
    pub spec: Arc<MappingSpec>,
    /// Turns true when the agent is asked to stop.
    pub stop: watch::Receiver<bool>,
    /// Run until caught up (`run --once`) instead of continuously.
    pub once: bool,
    /// Show a progress bar on stderr (pull sources).
    pub progress: bool,
}

/// What one source run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records accepted (including duplicates of earlier sends); HL7 files:
    /// messages.
    pub accepted: u64,
    /// Records refused by the gateway (HL7 files: messages answered AE/AR
    /// and not quarantined).
    pub rejected: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Batches committed (pull sources).
    pub batches: u64,
    /// A stop was requested before a `--once` run had read its source to
    /// the end (the next run resumes after the last committed page).
    pub stopped_early: bool,
}

/// One `[[sources]]` entry: its `type` and the source it configures.
/// Deserializes through `SOURCE_TYPES`; dereferences to the [`Source`].
#[derive(Debug, Clone)]
pub struct SourceConfig {
    kind: &'static str,
    source: Arc<dyn Source>,
}

impl SourceConfig {
    /// The `type` tag.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The same entry with relative paths resolved by `resolve`.
    pub fn resolved(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> SourceConfig {
        SourceConfig {
            kind: self.kind,
            source: self.source.resolved(resolve),
        }
    }
}

impl std::ops::Deref for SourceConfig {
    type Target = dyn Source;

    fn deref(&self) -> &(dyn Source + 'static) {
        &*self.source
    }
}

/// The `type` of an entry, checked against [`SOURCE_TYPES`] as it is read
/// (so that an error points at its line, as serde's tagged enums do).
struct TypeTag(&'static str, ParseFn);

impl<'de> Deserialize<'de> for TypeTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tag;
        impl serde::de::Visitor<'_> for Tag {
            type Value = TypeTag;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("variant identifier")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TypeTag, E> {
                SOURCE_TYPES
                    .iter()
                    .find(|(name, _)| *name == v)
                    .map(|(name, parse)| TypeTag(name, *parse))
                    .ok_or_else(|| E::unknown_variant(v, source_types()))
            }
        }
        d.deserialize_identifier(Tag)
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = SourceConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a source table with a `type`")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SourceConfig, A::Error> {
                let mut tag = None;
                let mut table = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "type" {
                        tag = Some(map.next_value::<TypeTag>()?);
                    } else {
                        table.insert(key, map.next_value()?);
                    }
                }
                let TypeTag(kind, parse) = tag.ok_or_else(|| A::Error::missing_field("type"))?;
                let source = parse(kind, table).map_err(|e| A::Error::custom(e.message()))?;
                Ok(SourceConfig { kind, source })
            }
        }
        d.deserialize_map(Entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed_once() {
        let mut names = source_types().to_vec();
        assert_eq!(names.len(), SOURCE_TYPES.len());
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SOURCE_TYPES.len(), "a `type` is registered twice");
    }

    #[test]
    fn the_type_tag_is_checked_like_serde_does() {
        let e = toml::from_str::<SourceConfig>("name = \"x\"\n")
            .err()
            .map(|e| e.message().to_string());
        assert_eq!(e.as_deref(), Some("missing field `type`"));
        let e = toml::from_str::<SourceConfig>("type = 1\n")
            .err()
            .map(|e| e.message().to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid type: integer `1`, expected variant identifier")
        );
    }
}
