//! `vaxgate mapping ...`: try a mapping spec on sample input.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use mappings::exchange::{self, ExchangeMessage};
use mappings::{Dataset, InputFormat, MappingSpec, QualityTracker, Severity, epcis, records_from_text};

/// `vaxgate mapping ...`
#[derive(Debug, Subcommand)]
pub enum MappingCmd {
    /// Map sample input through a spec; print each exchange message and
    /// every problem. Exit 0 when all records pass, 1 when any fails, 2
    /// when the spec (or dataset) is invalid.
    Test {
        /// The mapping spec (TOML), e.g. config/mappings/clinic-ims.toml.
        #[arg(long)]
        spec: PathBuf,
        /// The sample input file.
        #[arg(long)]
        input: PathBuf,
        /// Input format: rows-json (a JSON array of row objects), hl7, xml
        /// or json. Default: the spec's source.format.
        #[arg(long, value_parser = ["rows-json", "hl7", "xml", "json"])]
        input_format: Option<String>,
        /// Dataset definition (default: the built-in NMPAB/T 1004 reconstruction).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// How to print messages: json, xml, epcis (one document at the end) or none.
        #[arg(long, default_value = "json", value_parser = ["json", "xml", "epcis", "none"])]
        output: String,
        /// Print personal data in the clear (masked by default).
        #[arg(long)]
        show_pii: bool,
    },
}

/// Runs a mapping subcommand; exit 0 all pass, 1 any record fails, 2 bad spec.
pub fn run(c: MappingCmd) -> anyhow::Result<u8> {
    match c {
        MappingCmd::Test {
            spec,
            input,
            input_format,
            dataset,
            output,
            show_pii,
        } => {
            let dataset = match dataset {
                Some(p) => match Dataset::load(&p) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: invalid dataset: {e}");
                        return Ok(2);
                    }
                },
                None => Dataset::builtin(),
            };
            let spec = match MappingSpec::load(&spec, &dataset) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: invalid spec: {e}");
                    return Ok(2);
                }
            };
            let format = input_format
                .as_deref()
                .and_then(InputFormat::parse)
                .unwrap_or(spec.format);
            let text = std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
            let mut w = std::io::stdout().lock();
            match test(&mut w, &spec, &dataset, format, &input, &text, &output, show_pii) {
                Ok(code) => Ok(code),
                // output closed early (e.g. piped into `head`): stop quietly
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => Err(e).context("writing to stdout"),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn test(
    w: &mut impl Write,
    spec: &MappingSpec,
    dataset: &Dataset,
    format: InputFormat,
    input: &Path,
    text: &str,
    output: &str,
    show_pii: bool,
) -> std::io::Result<u8> {
    let records = match records_from_text(spec, format, text) {
        Ok(r) => r,
        Err(e) => {
            writeln!(w, "error: {}: cannot split into records: {e}", input.display())?;
            return Ok(1);
        }
    };
    let mut tracker = QualityTracker::new(dataset);
    let (mut failed, mut events_n, mut errors, mut warnings) = (0usize, 0usize, 0usize, 0usize);
    let mut all_events = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let mut out = spec.map(record);
        for e in &out.events {
            let extra = tracker.observe(e);
            out.problems.extend(extra);
        }
        for e in &out.events {
            events_n += 1;
            let shown = if show_pii { e.clone() } else { e.masked() };
            let msg = ExchangeMessage::new(shown, &spec.receiver);
            match output {
                "json" => writeln!(w, "{}", exchange::to_json(&msg))?,
                "xml" => write!(w, "{}", exchange::to_xml(&msg))?,
                _ => {}
            }
            if output == "epcis" {
                all_events.push(e.clone());
            }
        }
        for p in &out.problems {
            match p.severity {
                Severity::Error => errors += 1,
                Severity::Warning => warnings += 1,
            }
            writeln!(w, "{p}")?;
        }
        if !out.is_ok() {
            failed += 1;
            if out.events.is_empty() {
                writeln!(w, "record {} produced no event", i + 1)?;
            }
        }
    }
    if output == "epcis" {
        let doc = epcis::to_epcis_document(&all_events, dataset);
        writeln!(w, "{}", serde_json::to_string_pretty(&doc).unwrap_or_default())?;
    }
    writeln!(
        w,
        "{}: {} records, {} events, {} failed, {} errors, {} warnings",
        spec.origin,
        records.len(),
        events_n,
        failed,
        errors,
        warnings
    )?;
    Ok(if failed > 0 { 1 } else { 0 })
}
