//! The agent: builds the pipeline from the configuration, starts each
//! configured source through its type ([`crate::source::Source`]), and
//! offers `check` and the quarantine operations.

use std::io::IsTerminal as _;
use std::time::Duration;

use mappings::{Dataset, MappingSpec, Record};
use tokio::sync::watch;

use crate::client::{GatewayClient, GatewayClientConfig};
use crate::config::LoadedAgentConfig;
use crate::error::AgentError;
use crate::pipeline::{Pipeline, PipelineConfig, RecordOutcome, record_from_stored};
use crate::source::{RunStats, SourceContext};
use crate::state::StateDb;

fn file_err(path: &std::path::Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Loads the dataset and every source's mapping spec.
pub fn load_specs(cfg: &LoadedAgentConfig) -> Result<Vec<(String, MappingSpec)>, AgentError> {
    let dataset = match &cfg.config.agent.dataset {
        Some(p) => {
            let p = cfg.resolve(p);
            Dataset::load(&p).map_err(|e| file_err(&p, e))?
        }
        None => Dataset::builtin(),
    };
    cfg.config
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = cfg.resolve(s.mapping());
            let spec = MappingSpec::load(&p, &dataset)
                .map_err(|e| cfg.invalid(&format!("sources[{i}].mapping"), e.to_string()))?;
            Ok((s.name().to_string(), spec))
        })
        .collect()
}

/// Builds the signed pipeline (key, gateway client, state database, specs).
pub async fn build_pipeline(cfg: &LoadedAgentConfig) -> Result<Pipeline, AgentError> {
    let c = &cfg.config;
    let key_path = cfg.resolve(&c.agent.key);
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?);
    let pass = cfg.key_passphrase();
    let provider = c
        .crypto
        .provider
        .build()
        .map_err(|e| cfg.invalid("crypto.provider", e.to_string()))?;
    let handle = secure_gateway::KeyHandle::new("agent");
    provider
        .import_sm2_pem(
            handle.clone(),
            &pem,
            pass.as_deref().map(String::as_str),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .map_err(|e| {
            let hint = if pass.is_none() {
                format!(" (is {} set?)", c.agent.passphrase_env)
            } else {
                String::new()
            };
            cfg.invalid("agent.key", format!("cannot open the key: {e}{hint}"))
        })?;
    let key = secure_gateway::Signer::new(provider, handle).map_err(|e| cfg.invalid("agent.key", e.to_string()))?;
    let node_key_path = cfg.resolve(&c.gateway.node_key);
    let gateway_key = secure_gateway::load_verifying_key(&node_key_path)
        .map_err(|e| cfg.invalid("gateway.node_key", e.to_string()))?;
    let client = GatewayClient::new(
        &GatewayClientConfig {
            base_url: c.gateway.url.clone(),
            ca_cert: c.gateway.ca.as_ref().map(|p| cfg.resolve(p)),
            client_identity: c.gateway.client_identity.as_ref().map(|p| cfg.resolve(p)),
            timeout: Some(Duration::from_secs(c.gateway.timeout_secs)),
        },
        key.clone(),
    )?;
    let state = StateDb::open(&cfg.resolve(&c.agent.state_db)).await?;
    let pipeline = Pipeline::new(
        client,
        PipelineConfig {
            entity_id: c.agent.entity_id.clone(),
            key,
            gateway_key,
            attempts: c.gateway.attempts,
            retry_base: Duration::from_millis(c.gateway.retry_base_ms),
            retry_max: Duration::from_millis(c.gateway.retry_max_ms),
        },
        state,
    );
    for (name, spec) in load_specs(cfg)? {
        pipeline.add_source(&name, spec);
    }
    Ok(pipeline)
}

/// Runs every configured source until `stop` turns true (or, with
/// `until_caught_up`, until each pull source has nothing left to read).
/// On a terminal each pull source shows a progress bar.
pub async fn run(
    cfg: &LoadedAgentConfig,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
) -> Result<Vec<(String, RunStats)>, AgentError> {
    run_with_bars(cfg, stop, until_caught_up, std::io::stderr().is_terminal()).await
}

/// [`run`], with the pull sources' progress bars on stderr only if
/// `progress` (a caller running several agents at once shows its own).
pub async fn run_with_bars(
    cfg: &LoadedAgentConfig,
    stop: watch::Receiver<bool>,
    until_caught_up: bool,
    progress: bool,
) -> Result<Vec<(String, RunStats)>, AgentError> {
    let pipeline = build_pipeline(cfg).await?;
    let mut tasks = Vec::new();
    for s in &cfg.config.sources {
        let task = s.start(SourceContext {
            pipeline: pipeline.clone(),
            spec: pipeline.spec(s.name())?,
            stop: stop.clone(),
            once: until_caught_up,
            progress,
        })?;
        let name = s.name().to_string();
        tasks.push(tokio::spawn(async move { (name, task.await) }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let (name, r) = t.await.map_err(|e| AgentError::Source {
            source_name: "?".into(),
            message: format!("source task failed: {e}"),
            transient: false,
        })?;
        out.push((name, r?));
    }
    pipeline.state().close().await;
    Ok(out)
}

/// One line of `vaxgate agent check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// What was checked (`gateway`, `state`, `source <name>`).
    pub what: String,
    /// Whether it works.
    pub ok: bool,
    /// Details.
    pub detail: String,
}

/// Tests the state database, the gateway (reachable, key registered) and
/// every source's connection and query.
pub async fn check(cfg: &LoadedAgentConfig) -> Result<Vec<CheckLine>, AgentError> {
    let pipeline = build_pipeline(cfg).await?;
    let mut out = vec![CheckLine {
        what: "state".into(),
        ok: true,
        detail: format!("state database {} opens", pipeline.state().path()),
    }];
    let gw = match pipeline.client().get("/v1/stats").await {
        Ok(_) => CheckLine {
            what: "gateway".into(),
            ok: true,
            detail: format!(
                "{} reachable; the agent's key is registered for {}",
                cfg.config.gateway.url, cfg.config.agent.entity_id
            ),
        },
        Err(crate::ClientError::Api { status: 403, .. }) => CheckLine {
            what: "gateway".into(),
            ok: true,
            detail: format!(
                "{} reachable; the agent's key is registered (no read scope for /v1/stats)",
                cfg.config.gateway.url
            ),
        },
        Err(e) => CheckLine {
            what: "gateway".into(),
            ok: false,
            detail: e.to_string(),
        },
    };
    out.push(gw);
    for s in &cfg.config.sources {
        let what = format!("source {} ({})", s.name(), s.kind());
        let (ok, detail) = match s.check().await {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        out.push(CheckLine { what, ok, detail });
    }
    pipeline.state().close().await;
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Now accepted (resolved).
    pub accepted: usize,
    /// Still failing mapping/validation (kept).
    pub quarantined: usize,
    /// Refused by the gateway (kept).
    pub rejected: usize,
}

/// Re-maps quarantined records with the current specs and submits them:
/// the given ids, or every open entry (of `source`, if given).
pub async fn replay(pipeline: &Pipeline, ids: &[i64], source: Option<&str>) -> Result<ReplayStats, AgentError> {
    let mut entries = Vec::new();
    if ids.is_empty() {
        entries = pipeline.state().quarantine_list(source, false).await?;
    } else {
        for id in ids {
            match pipeline.state().quarantine_get(*id).await? {
                Some(e) if e.resolved_at.is_none() => entries.push(e),
                Some(_) => {
                    return Err(AgentError::Answer(format!("quarantine entry {id} is already resolved")));
                }
                None => return Err(AgentError::Answer(format!("no quarantine entry {id}"))),
            }
        }
    }
    let mut stats = ReplayStats::default();
    let mut by_source: std::collections::BTreeMap<String, Vec<(String, Record)>> = Default::default();
    for e in entries {
        let Some(r) = record_from_stored(&e.kind, &e.record) else {
            return Err(AgentError::Answer(format!(
                "quarantine entry {} holds an unreadable {} record",
                e.id, e.kind
            )));
        };
        by_source
            .entry(e.source.clone())
            .or_default()
            .push((e.record_key.clone(), r));
    }
    for (src, records) in by_source {
        for chunk in records.chunks(500) {
            for o in pipeline.submit(&src, chunk.to_vec()).await? {
                match o {
                    RecordOutcome::Accepted { .. } => stats.accepted += 1,
                    RecordOutcome::Quarantined { .. } => stats.quarantined += 1,
                    RecordOutcome::Rejected { .. } => stats.rejected += 1,
                }
            }
        }
    }
    Ok(stats)
}

/// Opens only the state database (for `quarantine list/show`).
pub async fn open_state(cfg: &LoadedAgentConfig) -> Result<StateDb, AgentError> {
    StateDb::open(&cfg.resolve(&cfg.config.agent.state_db)).await
}
