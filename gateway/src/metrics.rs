//! Prometheus metrics (`GET /metrics`). Labels never carry personal data:
//! only route classes, error codes and categories.

use std::sync::LazyLock;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route class and status.
    pub requests: IntCounterVec,
    /// Records appended, by dataset category.
    pub ingested: IntCounterVec,
    /// Rejections by error code.
    pub rejections: IntCounterVec,
    /// Requests refused by a rate limit, by route class.
    pub rate_limited: IntCounterVec,
    /// Ledger append latency (seconds), by outcome.
    pub append_seconds: HistogramVec,
    /// Configured limits (requests per second) by route class.
    pub rate_limit_per_second: IntCounterVec,
    /// Current ledger height.
    pub ledger_height: IntGauge,
    /// Cold-chain alerts written, by type.
    pub cold_chain_alerts: IntCounterVec,
    /// Custody rules broken, by rule and action (`docs/custody.md`).
    pub custody_findings: IntCounterVec,
    /// Trace-code histories the custody judgement found in its memory
    /// (`hit`) or read from the database (`miss`).
    pub custody_cache: IntCounterVec,
    /// Requests authenticated with an API key, by route class.
    pub api_key_requests: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let m = Metrics {
        requests: counter(
            "vaxgate_http_requests_total",
            "HTTP requests by route class and status",
            &["class", "status"],
        ),
        ingested: counter(
            "vaxgate_records_ingested_total",
            "Records appended to the ledger",
            &["category"],
        ),
        rejections: counter(
            "vaxgate_rejections_total",
            "Requests or records refused, by error code",
            &["code"],
        ),
        rate_limited: counter(
            "vaxgate_rate_limited_total",
            "Requests refused by a rate limit",
            &["class"],
        ),
        append_seconds: HistogramVec::new(
            HistogramOpts::new("vaxgate_ledger_append_seconds", "Durable ledger append latency")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["outcome"],
        )
        .expect("static metric definition"),
        rate_limit_per_second: counter(
            "vaxgate_rate_limit_per_second",
            "Configured sustained rate per principal, by route class",
            &["class"],
        ),
        ledger_height: IntGauge::new("vaxgate_ledger_height", "Height of the newest block").expect("static metric"),
        cold_chain_alerts: counter(
            "vaxgate_cold_chain_alerts_total",
            "Cold-chain alert events written (excursion, gap, device_alarm, receipt_refused)",
            &["type"],
        ),
        custody_findings: counter(
            "vaxgate_custody_findings_total",
            "Records that broke a custody rule, by rule and action (refuse, flag, pending)",
            &["rule", "action"],
        ),
        custody_cache: counter(
            "vaxgate_custody_cache_total",
            "Trace-code histories the custody judgement found in memory (hit) or read from the database (miss)",
            &["result"],
        ),
        api_key_requests: counter(
            "vaxgate_api_key_requests_total",
            "Read requests authenticated with an API key",
            &["class"],
        ),
        registry,
    };
    for c in [
        Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.ingested.clone()),
        Box::new(m.rejections.clone()),
        Box::new(m.rate_limited.clone()),
        Box::new(m.append_seconds.clone()),
        Box::new(m.rate_limit_per_second.clone()),
        Box::new(m.ledger_height.clone()),
        Box::new(m.cold_chain_alerts.clone()),
        Box::new(m.custody_findings.clone()),
        Box::new(m.custody_cache.clone()),
        Box::new(m.api_key_requests.clone()),
    ] {
        m.registry.register(c).expect("metrics register once");
    }
    m
});

impl Metrics {
    /// The registry `/metrics` renders; other modules register their own
    /// collectors here (`forward`, `telemetry`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
