//! HL7 v2 (R1.4): our own escape codec, a small MSH reader, ACK/ERR
//! building, and the message processor shared by the MLLP listener
//! ([`crate::mllp`]) and the `.hl7` file-drop directory.
//!
//! Field values for the mapping are read by `mappings` (which uses the `hl7`
//! crate, pinned at 0.1.5, through [`mappings::Record::Hl7`]); this module
//! never decodes message content with `hl7-parser` (it panics on escapes in
//! Chinese text). What it parses itself is only the MSH segment (separators,
//! message type, control id) with a splitter that works on `char`
//! boundaries and never panics, and the escape sequences in the text it
//! writes (MSA-3, ERR-8) and reads back (MSH fields).
//!
//! Acknowledgement rules (original acknowledgement mode):
//! - `AA` only after the [`RecordSink`] reported every record of the
//!   message durably accepted;
//! - `AE` with one `ERR` segment per problem (HL7 table 0357 code, location
//!   `SEG^seq^field^rep^comp^sub`, severity, rule name, explanation) when the
//!   message maps with errors or the sink rejects or quarantines it;
//! - `AR` for anything but `VXU^V04` (0357 codes 200/201), for text that is
//!   not an HL7 message (100), and with code 207 when the downstream is
//!   unavailable (the sender keeps the message and retries).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use mappings::sources::Hl7Path;
use mappings::{MapOutcome, MappingSpec, Problem, Record};

use crate::intake::{Outcome, Premapped, RecordSink, normalise};

/// Errors of this module's configuration step.
#[derive(Debug, thiserror::Error)]
pub enum Hl7Error {
    /// The message has no MSH segment or a malformed one.
    #[error("not an HL7 v2 message: {0}")]
    NotHl7(String),
    /// The spec file could not be read for field locations.
    #[error("mapping spec {origin}: {message}")]
    Spec {
        /// The spec's file.
        origin: String,
        /// What was wrong.
        message: String,
    },
}

// ---------------------------------------------------------------- escapes

/// The five encoding characters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (`|`).
    pub field: char,
    /// Component separator (`^`).
    pub component: char,
    /// Repetition separator (`~`).
    pub repetition: char,
    /// Escape character (`\`).
    pub escape: char,
    /// Subcomponent separator (`&`).
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as written in a message.
    pub fn encoding_characters(&self) -> String {
        [self.component, self.repetition, self.escape, self.subcomponent]
            .iter()
            .collect()
    }
}

/// Decodes HL7 escape sequences: `\F\ \S\ \T\ \R\ \E\` to the separators,
/// `\Xhh..\` to the bytes it names (read as UTF-8, e.g. `\X0D0A\` → CR LF,
/// `\XE4B8AD\` → 中). Formatting sequences (`\.br\`, `\H\`, `\N\`, `\Z..\`,
/// `\C..\`, `\M..\`), malformed hex and an unterminated escape are kept as
/// written. Works on any UTF-8 text (Chinese included) and never panics.
pub fn decode(text: &str, d: &Delimiters) -> String {
    let esc = d.escape;
    if !text.contains(esc) {
        return text.to_string();
    }
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    let mut rest = text;
    let mut buf = [0u8; 4];
    loop {
        let Some(i) = rest.find(esc) else {
            out.extend_from_slice(rest.as_bytes());
            break;
        };
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let after = &rest[i + esc.len_utf8()..];
        let Some(j) = after.find(esc) else {
            out.extend_from_slice(&rest.as_bytes()[i..]);
            break;
        };
        let seq = &after[..j];
        let single = match seq {
            "F" => Some(d.field),
            "S" => Some(d.component),
            "T" => Some(d.subcomponent),
            "R" => Some(d.repetition),
            "E" => Some(d.escape),
            _ => None,
        };
        match (single, hex_bytes(seq)) {
            (Some(c), _) => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            (None, Some(bytes)) => out.extend_from_slice(&bytes),
            (None, None) => out.extend_from_slice(&rest.as_bytes()[i..i + 2 * esc.len_utf8() + j]),
        }
        rest = &after[j + esc.len_utf8()..];
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex_bytes(seq: &str) -> Option<Vec<u8>> {
    let hex = seq.strip_prefix('X')?;
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).ok().and_then(|s| u8::from_str_radix(s, 16).ok()))
        .collect()
}

/// Escapes `text` for a field: separators and the escape character become
/// `\F\ \S\ \T\ \R\ \E\`, CR and LF become `\X0D\`/`\X0A\` (`\X0D0A\` for a
/// CR LF pair). [`decode`] of the result gives `text` back.
pub fn encode(text: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let e = d.escape;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let code = if c == d.field {
            "F"
        } else if c == d.component {
            "S"
        } else if c == d.subcomponent {
            "T"
        } else if c == d.repetition {
            "R"
        } else if c == e {
            "E"
        } else if c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
            "X0D0A"
        } else if c == '\r' {
            "X0D"
        } else if c == '\n' {
            "X0A"
        } else {
            out.push(c);
            continue;
        };
        out.push(e);
        out.push_str(code);
        out.push(e);
    }
    out
}

// ---------------------------------------------------------------- MSH

/// What the processor needs from MSH, fields still escaped as sent
/// (echoed verbatim into the ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// Separators of the message.
    pub delimiters: Delimiters,
    /// MSH-3..MSH-6 raw.
    pub sending_application: String,
    /// MSH-4 raw.
    pub sending_facility: String,
    /// MSH-5 raw.
    pub receiving_application: String,
    /// MSH-6 raw.
    pub receiving_facility: String,
    /// MSH-9.1 (e.g. `VXU`), decoded.
    pub message_code: String,
    /// MSH-9.2 (e.g. `V04`), decoded.
    pub trigger_event: String,
    /// MSH-10 raw (echoed in MSA-2).
    pub control_id: String,
    /// MSH-11 raw (`P`, `T`, `D`).
    pub processing_id: String,
    /// MSH-12 raw (e.g. `2.5.1`).
    pub version: String,
}

/// Splits text into segments on CR, LF or CR LF, dropping empty ones.
pub fn segments(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n']).filter(|s| !s.trim().is_empty())
}

impl MessageHeader {
    /// Reads the MSH segment at the start of `message`.
    ///
    /// # Errors
    /// [`Hl7Error::NotHl7`] naming what is missing.
    pub fn parse(message: &str) -> Result<MessageHeader, Hl7Error> {
        let msh = segments(message)
            .next()
            .ok_or_else(|| Hl7Error::NotHl7("empty message".into()))?;
        let body = msh
            .strip_prefix("MSH")
            .ok_or_else(|| Hl7Error::NotHl7("the first segment is not MSH".into()))?;
        let mut chars = body.chars();
        let field = chars
            .next()
            .ok_or_else(|| Hl7Error::NotHl7("MSH-1 (field separator) missing".into()))?;
        let enc: Vec<char> = chars.by_ref().take_while(|c| *c != field).collect();
        if enc.len() < 4 {
            return Err(Hl7Error::NotHl7(format!(
                "MSH-2 must hold 4 encoding characters, found {}",
                enc.len()
            )));
        }
        let delimiters = Delimiters {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
        };
        let distinct = [field, enc[0], enc[1], enc[2], enc[3]];
        if distinct.iter().enumerate().any(|(i, c)| distinct[..i].contains(c)) {
            return Err(Hl7Error::NotHl7("MSH-1/MSH-2 separators are not distinct".into()));
        }
        // fields[k] = MSH-(k+3)
        let rest: String = chars.collect();
        let fields: Vec<&str> = rest.split(field).collect();
        let msh = |n: usize| fields.get(n - 3).copied().unwrap_or("").to_string();
        let msg_type = msh(9);
        let mut parts = msg_type.split(delimiters.component);
        let message_code = decode(parts.next().unwrap_or(""), &delimiters);
        let trigger_event = decode(parts.next().unwrap_or(""), &delimiters);
        if message_code.is_empty() {
            return Err(Hl7Error::NotHl7("MSH-9 (message type) is empty".into()));
        }
        Ok(MessageHeader {
            delimiters,
            sending_application: msh(3),
            sending_facility: msh(4),
            receiving_application: msh(5),
            receiving_facility: msh(6),
            message_code,
            trigger_event,
            control_id: msh(10),
            processing_id: msh(11),
            version: msh(12),
        })
    }
}

/// Splits a file into messages: each starts at an `MSH` segment; batch
/// envelope segments (FHS, BHS, BTS, FTS) are dropped. Segments are joined
/// with CR.
pub fn split_messages(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for seg in segments(text.trim_start_matches('\u{feff}')) {
        let seg = seg.trim_end();
        if ["FHS", "BHS", "BTS", "FTS"].iter().any(|p| seg.starts_with(p)) {
            continue;
        }
        if seg.starts_with("MSH") || out.is_empty() {
            out.push(seg.to_string());
        } else if let Some(last) = out.last_mut() {
            last.push('\r');
            last.push_str(seg);
        }
    }
    out
}

// ---------------------------------------------------------------- ACK / ERR

/// Acknowledgement code (HL7 table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    Aa,
    /// Application error.
    Ae,
    /// Application reject.
    Ar,
}

impl AckCode {
    /// The code as written in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Aa => "AA",
            AckCode::Ae => "AE",
            AckCode::Ar => "AR",
        }
    }
}

/// HL7 table 0357 (message error condition codes) as used here.
pub mod err_code {
    /// Segment sequence error (also: not an HL7 message).
    pub const SEGMENT_SEQUENCE: u16 = 100;
    /// Required field missing.
    pub const REQUIRED_FIELD_MISSING: u16 = 101;
    /// Data type error.
    pub const DATA_TYPE: u16 = 102;
    /// Table value not found.
    pub const TABLE_VALUE_NOT_FOUND: u16 = 103;
    /// Unsupported message type.
    pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
    /// Unsupported event code.
    pub const UNSUPPORTED_EVENT: u16 = 201;
    /// Application internal error.
    pub const INTERNAL: u16 = 207;

    /// The table's text for a code.
    pub fn text(code: u16) -> &'static str {
        match code {
            100 => "Segment sequence error",
            101 => "Required field missing",
            102 => "Data type error",
            103 => "Table value not found",
            200 => "Unsupported message type",
            201 => "Unsupported event code",
            207 => "Application internal error",
            _ => "Error",
        }
    }
}

/// One ERR segment (v2.5: ERR-2 location, ERR-3 code, ERR-4 severity,
/// ERR-5 application error code, ERR-8 user message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrEntry {
    /// ERR-2 as `SEG^seq^field^rep^comp^sub` (already in the message's
    /// component separator), or empty.
    pub location: Option<ErrLocation>,
    /// HL7 table 0357 code.
    pub code: u16,
    /// `E`, `W` or `I`.
    pub severity: char,
    /// Our rule name (ERR-5.1), e.g. `required`.
    pub rule: String,
    /// Explanation (ERR-8), no personal data.
    pub message: String,
}

/// ERR-2 error location (ERL data type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrLocation {
    /// Segment id, e.g. `RXA`.
    pub segment: String,
    /// Segment sequence (1-based occurrence in the message).
    pub sequence: usize,
    /// Field position.
    pub field: usize,
    /// Field repetition.
    pub repetition: Option<usize>,
    /// Component.
    pub component: Option<usize>,
    /// Subcomponent.
    pub subcomponent: Option<usize>,
}

impl ErrLocation {
    fn render(&self, c: char) -> String {
        let mut s = format!("{}{c}{}{c}{}", self.segment, self.sequence, self.field);
        let tail = [self.repetition, self.component, self.subcomponent];
        let last = tail.iter().rposition(Option::is_some);
        if let Some(last) = last {
            for (i, v) in tail.iter().enumerate().take(last + 1) {
                let v = match (i, v) {
                    (_, Some(v)) => *v,
                    (0, None) => 1, // repetition defaults to the first
                    _ => 1,
                };
                let _ = write!(s, "{c}{v}");
            }
        }
        s
    }
}

static ACK_SEQ: AtomicU64 = AtomicU64::new(0);

/// Builds an ACK for `header` (or a minimal MSH when the message could not
/// be read), segments separated by CR.
pub fn build_ack(header: Option<&MessageHeader>, code: AckCode, text: &str, errs: &[ErrEntry]) -> String {
    let d = header.map(|h| h.delimiters).unwrap_or_default();
    let f = d.field;
    let c = d.component;
    let now = chrono::Local::now().format("%Y%m%d%H%M%S%z");
    let seq = ACK_SEQ.fetch_add(1, Ordering::Relaxed);
    let ack_id = format!("VG{}{:06}", chrono::Utc::now().format("%y%m%d%H%M%S"), seq % 1_000_000);
    let empty = String::new();
    let (sa, sf, ra, rf, ctl, pid, ver) = match header {
        Some(h) => (
            &h.receiving_application,
            &h.receiving_facility,
            &h.sending_application,
            &h.sending_facility,
            &h.control_id,
            &h.processing_id,
            &h.version,
        ),
        None => (&empty, &empty, &empty, &empty, &empty, &empty, &empty),
    };
    let pid = if pid.is_empty() { "P" } else { pid.as_str() };
    let ver = if ver.is_empty() { "2.5.1" } else { ver.as_str() };
    let event = header.map(|h| h.trigger_event.as_str()).unwrap_or("");
    let mut out = format!(
        "MSH{f}{}{f}{sa}{f}{sf}{f}{ra}{f}{rf}{f}{now}{f}{f}ACK{c}{}{c}ACK{f}{ack_id}{f}{pid}{f}{ver}\rMSA{f}{}{f}{ctl}",
        d.encoding_characters(),
        encode(event, &d),
        code.as_str(),
    );
    if !text.is_empty() {
        let _ = write!(out, "{f}{}", encode(text, &d));
    }
    for e in errs {
        let loc = e.location.as_ref().map(|l| l.render(c)).unwrap_or_default();
        let _ = write!(
            out,
            "\rERR{f}{f}{loc}{f}{}{c}{}{c}HL70357{f}{}{f}{}{f}{f}{f}{}",
            e.code,
            err_code::text(e.code),
            e.severity,
            encode(&e.rule, &d),
            encode(&e.message, &d),
        );
    }
    out.push('\r');
    out
}

// ---------------------------------------------------------------- locations

/// Element key → HL7 source path of a mapping spec, for ERR-2 locations.
/// Read from the spec's TOML text (`[[fields]] to/from`), because the
/// compiled `MappingSpec` keeps its field list private.
#[derive(Debug, Clone, Default)]
pub struct FieldLocator {
    paths: HashMap<String, Hl7Path>,
    group_by: Option<String>,
}

impl FieldLocator {
    /// Reads `[[fields]]` and `[source] group_by` from a spec's TOML text.
    ///
    /// # Errors
    /// [`Hl7Error::Spec`] when the text is not TOML.
    pub fn from_spec_toml(text: &str, origin: &str) -> Result<FieldLocator, Hl7Error> {
        let v: toml::Value = toml::from_str(text).map_err(|e| Hl7Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut paths = HashMap::new();
        for f in v.get("fields").and_then(toml::Value::as_array).into_iter().flatten() {
            let Some(to) = f.get("to").and_then(toml::Value::as_str) else {
                continue;
            };
            let from = match f.get("from") {
                Some(toml::Value::String(s)) => Some(s.as_str()),
                Some(toml::Value::Array(a)) => a.first().and_then(toml::Value::as_str),
                _ => None,
            };
            if let Some(p) = from.and_then(|s| Hl7Path::parse(s).ok()) {
                paths.insert(to.to_string(), p);
            }
        }
        let group_by = v
            .get("source")
            .and_then(|s| s.get("group_by"))
            .and_then(toml::Value::as_str)
            .map(str::to_string);
        Ok(FieldLocator { paths, group_by })
    }

    /// The location of `problem` in `message`; `group` is the index of the
    /// record's group (its position among the mapped events).
    pub fn locate(&self, problem: &Problem, message: &str, group: Option<usize>) -> Option<ErrLocation> {
        let path = self.paths.get(&problem.field)?;
        let names: Vec<&str> = segments(message).map(|s| s.get(..3).unwrap_or(s)).collect();
        let occurrence_at = |idx: usize| names[..=idx].iter().filter(|n| **n == path.segment).count();
        let mut sequence = None;
        if let (Some(gb), Some(g)) = (&self.group_by, group) {
            // the g-th group starts at the g-th `group_by` segment
            let starts: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| *n == gb)
                .map(|(i, _)| i)
                .collect();
            if let Some(&start) = starts.get(g) {
                let end = starts.get(g + 1).copied().unwrap_or(names.len());
                let k = path.occurrence.unwrap_or(1);
                sequence = (start..end)
                    .filter(|i| names[*i] == path.segment)
                    .nth(k - 1)
                    .map(occurrence_at);
            }
        }
        let sequence = sequence.unwrap_or(path.occurrence.unwrap_or(1));
        Some(ErrLocation {
            segment: path.segment.clone(),
            sequence,
            field: path.field,
            repetition: path.repetition,
            component: path.component,
            subcomponent: path.subcomponent,
        })
    }
}

/// HL7 table 0357 code for a mapping/validation rule.
pub fn code_for_rule(rule: &str) -> u16 {
    match rule {
        "required" | "cardinality" => err_code::REQUIRED_FIELD_MISSING,
        "code_table" | "lookup" | "not_in_category" => err_code::TABLE_VALUE_NOT_FOUND,
        _ => err_code::DATA_TYPE,
    }
}

// ---------------------------------------------------------------- processor

/// Turns one HL7 message into its ACK: checks the type, maps it with the
/// spec (for located ERR segments), hands the message with that mapping to
/// the sink ([`RecordSink::submit_mapped`]: the agent's pipeline does not
/// map it again while the spec is the same) and acknowledges by the sink's
/// outcome. Shared by MLLP and the file drop.
#[derive(Debug)]
pub struct Hl7Processor<S> {
    source: String,
    spec: std::sync::Arc<MappingSpec>,
    locator: FieldLocator,
    sink: S,
}

/// The result of processing one message.
#[derive(Debug, Clone)]
pub struct Processed {
    /// MSA-1.
    pub code: AckCode,
    /// The ACK message (segments separated by CR).
    pub ack: String,
    /// The downstream was unavailable: resend later.
    pub retry: bool,
    /// The message is kept in the agent's quarantine (it failed mapping or
    /// validation): fixable and replayable there after a spec change.
    pub quarantined: bool,
}

/// A message checked and mapped, waiting for the sink.
#[derive(Debug)]
enum Prepared {
    Done(Processed),
    /// Mapped without errors: submitted with its mapping.
    Submit {
        header: Box<MessageHeader>,
        text: String,
        mapped: MapOutcome,
    },
    /// Failed mapping: submitted with its mapping for the quarantine,
    /// answered with `refusal`.
    Refuse {
        header: Box<MessageHeader>,
        text: String,
        mapped: MapOutcome,
        refusal: Processed,
    },
}

impl<S: RecordSink> Hl7Processor<S> {
    /// A processor for source `source` (the agent's source name).
    pub fn new(source: &str, spec: std::sync::Arc<MappingSpec>, locator: FieldLocator, sink: S) -> Self {
        Hl7Processor {
            source: source.to_string(),
            spec,
            locator,
            sink,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn prepare(&self, text: String) -> Prepared {
        let header = match MessageHeader::parse(&text) {
            Ok(h) => h,
            Err(e) => {
                let err = ErrEntry {
                    location: None,
                    code: err_code::SEGMENT_SEQUENCE,
                    severity: 'E',
                    rule: "parse".into(),
                    message: e.to_string(),
                };
                return Prepared::Done(Processed {
                    code: AckCode::Ar,
                    ack: build_ack(None, AckCode::Ar, "not an HL7 v2 message", &[err]),
                    retry: false,
                    quarantined: false,
                });
            }
        };
        if header.message_code != "VXU" || header.trigger_event != "V04" {
            let (code, field) = if header.message_code != "VXU" {
                (err_code::UNSUPPORTED_MESSAGE_TYPE, 1)
            } else {
                (err_code::UNSUPPORTED_EVENT, 2)
            };
            let err = ErrEntry {
                location: Some(ErrLocation {
                    segment: "MSH".into(),
                    sequence: 1,
                    field: 9,
                    repetition: None,
                    component: Some(field),
                    subcomponent: None,
                }),
                code,
                severity: 'E',
                rule: "message_type".into(),
                message: format!(
                    "only VXU^V04 is accepted, got {}^{}",
                    header.message_code, header.trigger_event
                ),
            };
            let ack = build_ack(Some(&header), AckCode::Ar, "unsupported message type", &[err]);
            return Prepared::Done(Processed {
                code: AckCode::Ar,
                ack,
                retry: false,
                quarantined: false,
            });
        }
        let outcome = self.spec.map(&Record::Hl7(text.clone()));
        if !outcome.is_ok() {
            let errs: Vec<ErrEntry> = outcome
                .problems
                .iter()
                .filter(|p| p.is_error())
                .map(|p| {
                    let group = outcome.events.iter().position(|e| e.record_key == p.record);
                    ErrEntry {
                        location: self.locator.locate(p, &text, group),
                        code: if p.rule == "parse" {
                            err_code::SEGMENT_SEQUENCE
                        } else {
                            code_for_rule(p.rule)
                        },
                        severity: 'E',
                        rule: p.rule.to_string(),
                        message: format!("record {}: field {}: {}", p.record, p.field, p.message),
                    }
                })
                .collect();
            let ack = build_ack(Some(&header), AckCode::Ae, "message has errors", &errs);
            // Still handed to the sink with this mapping, which quarantines
            // it durably (the agent's pipeline takes the reason from this
            // outcome, mapping again only if its spec was replaced, and
            // keeps the message replayable after a spec fix); the sender
            // gets this detailed AE once the quarantine holds it, or AR
            // "resend later" if not.
            return Prepared::Refuse {
                header: Box::new(header),
                text,
                mapped: outcome,
                refusal: Processed {
                    code: AckCode::Ae,
                    ack,
                    retry: false,
                    quarantined: true,
                },
            };
        }
        Prepared::Submit {
            header: Box::new(header),
            text,
            mapped: outcome,
        }
    }

    /// Processes a batch of messages (e.g. from several connections) with
    /// one sink call, which gets the mapping each message was checked with
    /// along with it; returns one result per message, in order.
    pub async fn process_batch(&self, messages: Vec<String>) -> Vec<Processed> {
        let mut prepared: Vec<Prepared> = messages.into_iter().map(|m| self.prepare(m)).collect();
        let mut records = Vec::new();
        let mut mapped_records = Vec::new();
        for p in &mut prepared {
            if let Prepared::Submit { header, text, mapped }
            | Prepared::Refuse {
                header, text, mapped, ..
            } = p
            {
                let key = decode(&header.control_id, &header.delimiters);
                // the ACK needs only the header (and the refusal) from here on
                records.push((key, Record::Hl7(std::mem::take(text))));
                mapped_records.push(std::mem::take(mapped));
            }
        }
        let n = records.len();
        let outcomes = if n == 0 {
            Vec::new()
        } else {
            let premapped = Premapped {
                spec: self.spec.clone(),
                outcomes: mapped_records,
            };
            normalise(self.sink.submit_mapped(&self.source, records, premapped, None).await, n)
        };
        let mut outcomes = outcomes.into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Prepared::Done(done) => done,
                Prepared::Submit { header, .. } => {
                    let o = outcomes.next().unwrap_or(Outcome::Retry {
                        reason: "no outcome".into(),
                    });
                    ack_for_outcome(&header, &o)
                }
                Prepared::Refuse { header, refusal, .. } => {
                    let o = outcomes.next().unwrap_or(Outcome::Retry {
                        reason: "no outcome".into(),
                    });
                    match &o {
                        Outcome::Retry { .. } => ack_for_outcome(&header, &o),
                        Outcome::Quarantined { .. } => refusal,
                        // A sink that does not quarantine (it accepted or
                        // refused the record itself): still AE, not kept.
                        _ => Processed {
                            quarantined: false,
                            ..refusal
                        },
                    }
                }
            })
            .collect()
    }

    /// Processes one message.
    pub async fn process(&self, message: String) -> Processed {
        let mut v = self.process_batch(vec![message]).await;
        v.pop().unwrap_or_else(|| Processed {
            code: AckCode::Ar,
            ack: build_ack(None, AckCode::Ar, "internal error", &[]),
            retry: true,
            quarantined: false,
        })
    }
}

fn ack_for_outcome(header: &MessageHeader, o: &Outcome) -> Processed {
    let (code, text, err) = match o {
        Outcome::Accepted => (AckCode::Aa, "", None),
        Outcome::Rejected { code, message } => (
            AckCode::Ae,
            "message rejected",
            Some(ErrEntry {
                location: None,
                code: code_for_rule(code),
                severity: 'E',
                rule: code.clone(),
                message: message.clone(),
            }),
        ),
        Outcome::Quarantined { reason } => (
            AckCode::Ae,
            "message quarantined",
            Some(ErrEntry {
                location: None,
                code: err_code::DATA_TYPE,
                severity: 'E',
                rule: "quarantined".into(),
                message: reason.clone(),
            }),
        ),
        Outcome::Retry { reason } => (
            AckCode::Ar,
            "temporarily unavailable, resend later",
            Some(ErrEntry {
                location: None,
                code: err_code::INTERNAL,
                severity: 'E',
                rule: "unavailable".into(),
                message: reason.clone(),
            }),
        ),
    };
    Processed {
        code,
        ack: build_ack(Some(header), code, text, err.as_slice()),
        retry: matches!(o, Outcome::Retry { .. }),
        quarantined: matches!(o, Outcome::Quarantined { .. }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_separators_hex_and_chinese() {
        let d = Delimiters::default();
        assert_eq!(
            decode(r"首剂\F\无不良反应\X0D0A\已留观30分钟", &d),
            "首剂|无不良反应\r\n已留观30分钟"
        );
        assert_eq!(decode(r"中山路1号\T\3栋", &d), "中山路1号&3栋");
        assert_eq!(decode(r"a\S\b\R\c\E\d", &d), "a^b~c\\d");
        assert_eq!(decode(r"\XE4B8AD\文", &d), "中文");
        assert_eq!(decode(r"keep \.br\ and \H\x\N\", &d), r"keep \.br\ and \H\x\N\");
        assert_eq!(decode(r"bad \X0\ \XZZ\ open\F", &d), r"bad \X0\ \XZZ\ open\F");
        assert_eq!(encode("首剂|无\r\n留", &d), r"首剂\F\无\X0D0A\留");
    }

    #[test]
    fn msh_and_ack() {
        let msg = "MSH|^~\\&|JSIIS|3201020001|VAXGATE|JSCDC|20240305093500+0800||VXU^V04^VXU_V04|MSG1|P|2.5.1\rPID|1";
        let h = MessageHeader::parse(msg).expect("msh");
        assert_eq!((h.message_code.as_str(), h.trigger_event.as_str()), ("VXU", "V04"));
        assert_eq!(h.control_id, "MSG1");
        let err = ErrEntry {
            location: Some(ErrLocation {
                segment: "RXA".into(),
                sequence: 1,
                field: 5,
                repetition: None,
                component: Some(1),
                subcomponent: None,
            }),
            code: 101,
            severity: 'E',
            rule: "required".into(),
            message: "疫苗编码|缺失".into(),
        };
        let ack = build_ack(Some(&h), AckCode::Ae, "", &[err]);
        let segs: Vec<&str> = segments(&ack).collect();
        assert!(
            segs[0].starts_with("MSH|^~\\&|VAXGATE|JSCDC|JSIIS|3201020001|"),
            "{ack}"
        );
        assert!(segs[0].contains("|ACK^V04^ACK|"), "{ack}");
        assert_eq!(segs[1], "MSA|AE|MSG1");
        assert_eq!(
            segs[2],
            "ERR||RXA^1^5^1^1|101^Required field missing^HL70357|E|required|||疫苗编码\\F\\缺失"
        );
        assert!(MessageHeader::parse("PID|1").is_err());
        assert!(MessageHeader::parse("MSH|^~").is_err());
        assert!(MessageHeader::parse("").is_err());
    }

    /// What one `submit_mapped` call was given.
    struct Given {
        keys: Vec<String>,
        spec: std::sync::Arc<MappingSpec>,
        /// Per outcome: whether it maps cleanly, and its number of events.
        shape: Vec<(bool, usize)>,
    }

    /// A sink keeping what `submit_mapped` was given.
    #[derive(Default)]
    struct KeepingSink {
        got: std::sync::Mutex<Vec<Given>>,
    }

    impl RecordSink for KeepingSink {
        async fn submit(&self, _: &str, _: Vec<(String, Record)>, _: Option<serde_json::Value>) -> Vec<Outcome> {
            panic!("the processor hands over its mapping")
        }

        async fn submit_mapped(
            &self,
            _: &str,
            records: Vec<(String, Record)>,
            premapped: Premapped,
            _: Option<serde_json::Value>,
        ) -> Vec<Outcome> {
            let answers = premapped
                .outcomes
                .iter()
                .map(|o| {
                    if o.is_ok() {
                        Outcome::Accepted
                    } else {
                        Outcome::Quarantined { reason: "bad".into() }
                    }
                })
                .collect();
            let keys = records.into_iter().map(|(k, _)| k).collect();
            let shape = premapped.outcomes.iter().map(|o| (o.is_ok(), o.events.len())).collect();
            self.got.lock().expect("got").push(Given {
                keys,
                spec: premapped.spec,
                shape,
            });
            answers
        }

        async fn checkpoint(&self, _: &str) -> Option<serde_json::Value> {
            None
        }
    }

    #[tokio::test]
    async fn the_sink_gets_each_message_with_its_mapping_and_spec() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("config/mappings/hl7-vxu.toml")).expect("spec");
        let spec = std::sync::Arc::new(
            MappingSpec::from_toml_str(&text, "hl7-vxu.toml", &mappings::Dataset::builtin()).expect("spec"),
        );
        let loc = FieldLocator::from_spec_toml(&text, "hl7-vxu.toml").expect("locator");
        let sample = std::fs::read_to_string(root.join("config/mappings/samples/hl7-vxu.hl7")).expect("sample");
        let good = split_messages(&sample);
        // RXA-15 (lot number) of the second group missing: AE, quarantined
        let bad = good[0]
            .replace("||||20231001A|20240930|", "|||||20240930|")
            .replace("MSG20240305001", "BAD1");
        let other = good[0].replace("VXU^V04^VXU_V04", "ADT^A01");
        let proc = Hl7Processor::new("hl7", spec.clone(), loc, KeepingSink::default());

        let out = proc
            .process_batch(vec![good[0].clone(), other, bad, good[1].clone()])
            .await;
        let codes: Vec<AckCode> = out.iter().map(|p| p.code).collect();
        assert_eq!(codes, vec![AckCode::Aa, AckCode::Ar, AckCode::Ae, AckCode::Aa]);
        assert!(
            out[2].quarantined && out[2].ack.contains("ERR||RXA^2^15|101^"),
            "{}",
            out[2].ack
        );

        let got = proc.sink().got.lock().expect("got");
        assert_eq!(got.len(), 1, "one sink call");
        let Given {
            keys,
            spec: given,
            shape,
        } = &got[0];
        // the VXU messages (not the ADT), each with the outcome `prepare`
        // made (2, 2 and 1 ORC groups), and the processor's own spec Arc
        assert_eq!(keys, &["MSG20240305001", "BAD1", "MSG20240306002"]);
        assert_eq!(shape, &[(true, 2), (false, 2), (true, 1)]);
        assert!(std::sync::Arc::ptr_eq(given, &spec));
    }

    #[test]
    fn splits_files_into_messages() {
        let text = "FHS|^~\\&\nMSH|^~\\&|A|B|C|D|1||VXU^V04|1|P|2.5.1\nPID|1\r\nMSH|^~\\&|A|B|C|D|1||VXU^V04|2|P|2.5.1\nFTS|1\n";
        let m = split_messages(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], "MSH|^~\\&|A|B|C|D|1||VXU^V04|1|P|2.5.1\rPID|1");
    }
}
