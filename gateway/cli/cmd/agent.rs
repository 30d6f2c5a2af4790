//! `vaxgate agent`: run the configured sources, `check` the config and
//! connections, inspect and replay the quarantine.

use std::path::PathBuf;

use adapters::agent;
use adapters::config::LoadedAgentConfig;
use adapters::state::StateDb;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

/// `vaxgate agent [--config FILE] [run|check|quarantine ...]`
#[derive(Debug, Args)]
pub struct AgentCmd {
    /// The agent configuration (TOML).
    #[arg(long, global = true, default_value = "config/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    sub: Option<AgentSub>,
}

#[derive(Debug, Subcommand)]
enum AgentSub {
    /// Run the sources (the default).
    Run {
        /// Stop once every pull source has nothing left to read (a backfill).
        #[arg(long)]
        once: bool,
    },
    /// Validate the config and test the state database, the gateway (reachable,
    /// key registered) and each source's connection.
    Check,
    /// Records that failed mapping or validation.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
}

#[derive(Debug, Subcommand)]
enum QuarantineCmd {
    /// Open entries (reasons only, no personal data).
    List {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Resolved entries too.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One entry with its problems; the record's values only with `--reveal`.
    Show {
        /// Entry id.
        id: i64,
        /// Print the record itself (contains personal data).
        #[arg(long)]
        reveal: bool,
    },
    /// Re-map entries with the current mapping specs and submit them.
    Replay {
        /// Entry ids (default: every open entry).
        ids: Vec<i64>,
        /// Only entries of this source.
        #[arg(long)]
        source: Option<String>,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<LoadedAgentConfig> {
    Ok(adapters::config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Runs `vaxgate agent`.
pub fn run(c: AgentCmd) -> anyhow::Result<u8> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = load(&c.config)?;
    let rt = runtime()?;
    match c.sub.unwrap_or(AgentSub::Run { once: false }) {
        AgentSub::Run { once } => rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::warn!("interrupted: stopping after the current batches");
                    let _ = tx.send(true);
                }
            });
            let started = Utc::now();
            let stats = agent::run(&cfg, rx, once).await?;
            let mut incomplete = false;
            for (name, s) in stats {
                println!(
                    "source {name}: {} accepted, {} rejected, {} quarantined in {} batches{}",
                    s.accepted,
                    s.rejected,
                    s.quarantined,
                    s.batches,
                    if s.stopped_early {
                        " (stopped before the end; the next run resumes there)"
                    } else {
                        ""
                    }
                );
                incomplete |= s.stopped_early;
            }
            // The summary of the gateway's refusals is for the operator; a
            // state database that cannot be read now does not undo the run.
            match agent::open_state(&cfg).await {
                Ok(state) => {
                    if let Err(e) = print_refusals(&state, None, started).await {
                        tracing::warn!(error = %e, "could not list the gateway's refusals of this run");
                    }
                    state.close().await;
                }
                Err(e) => tracing::warn!(error = %e, "could not list the gateway's refusals of this run"),
            }
            // A backfill that was interrupted is not a finished one.
            Ok(if incomplete { 130 } else { 0 })
        }),
        AgentSub::Check => rt.block_on(async {
            println!("config {}: valid", c.config.display());
            let lines = agent::check(&cfg).await?;
            let mut bad = 0;
            for l in &lines {
                println!("{:<40} {}  {}", l.what, if l.ok { "OK  " } else { "FAIL" }, l.detail);
                if !l.ok {
                    bad += 1;
                }
            }
            Ok(if bad == 0 { 0 } else { 1 })
        }),
        AgentSub::Quarantine(q) => rt.block_on(quarantine(&cfg, q)),
    }
}

async fn quarantine(cfg: &LoadedAgentConfig, q: QuarantineCmd) -> anyhow::Result<u8> {
    match q {
        QuarantineCmd::List { source, all, json } => {
            let state = agent::open_state(cfg).await?;
            let entries = state.quarantine_list(source.as_deref(), all).await?;
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!(
                        "{:>6}  {:<16} {:<24} {:>3}x  {}{}",
                        e.id,
                        e.source,
                        e.record_key,
                        e.attempts,
                        e.resolution.as_deref().map(|r| format!("[{r}] ")).unwrap_or_default(),
                        e.reason
                    );
                }
            }
            if !json {
                println!("{} entries", entries.len());
            }
            Ok(0)
        }
        QuarantineCmd::Show { id, reveal } => {
            let state = agent::open_state(cfg).await?;
            let e = state
                .quarantine_get(id)
                .await?
                .with_context(|| format!("no quarantine entry {id}"))?;
            let mut v = serde_json::to_value(&e)?;
            if reveal {
                v["record"] = serde_json::Value::String(e.record.clone());
            } else if e.kind == "row"
                && let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&e.record)
            {
                v["columns"] = m.keys().cloned().collect::<Vec<_>>().into();
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        QuarantineCmd::Replay { ids, source } => {
            let pipeline = agent::build_pipeline(cfg).await?;
            let started = Utc::now();
            let s = agent::replay(&pipeline, &ids, source.as_deref()).await?;
            println!(
                "replayed: {} accepted, {} still quarantined, {} rejected by the gateway",
                s.accepted, s.quarantined, s.rejected
            );
            print_refusals(pipeline.state(), source.as_deref(), started).await?;
            pipeline.state().close().await;
            Ok(if s.quarantined + s.rejected == 0 { 0 } else { 1 })
        }
    }
}

/// Refusals listed one per line after the counts.
const REFUSALS_SHOWN: u32 = 5;

/// Prints the gateway's refusals recorded since `since` (of `source`, or
/// all): the count per source and code, then the first few with the
/// gateway's message and problems (fields and rules; no record values).
async fn print_refusals(state: &StateDb, source: Option<&str>, since: DateTime<Utc>) -> anyhow::Result<()> {
    let counts = state.rejection_counts(source, Some(since)).await?;
    if counts.is_empty() {
        return Ok(());
    }
    let total: i64 = counts.iter().map(|c| c.2).sum();
    println!("refused by the gateway: {total} events");
    let mut i = 0;
    while i < counts.len() {
        let src = &counts[i].0;
        let per_code: Vec<String> = counts[i..]
            .iter()
            .take_while(|c| &c.0 == src)
            .map(|(_, code, n)| format!("{n} {code}"))
            .collect();
        println!("  source {src}: {}", per_code.join(", "));
        i += per_code.len();
    }
    let first = state.rejections(source, Some(since), REFUSALS_SHOWN).await?;
    for r in &first {
        println!("  {} {}: {}", r.source, r.record_key, r.describe());
    }
    let rest = total - first.len() as i64;
    if rest > 0 {
        println!("  and {rest} more: `vaxgate agent quarantine list` (details: `quarantine show ID`)");
    } else {
        println!("  details: `vaxgate agent quarantine show ID`");
    }
    Ok(())
}
