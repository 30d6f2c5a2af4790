//! Error types of the crate. Spec and dataset errors name the file, the line
//! and the TOML key; an unknown name lists the nearest valid ones.

use std::fmt;

/// Where in a TOML document something is: file name, 1-based line and
/// column, and the key (dotted path or the key written on that line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or origin name given to `from_toml_str`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The key the problem is about.
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: key `{}`", self.file, self.line, self.column, self.key)
    }
}

impl Location {
    /// The location of byte `offset` in `text`; `key` is used when given,
    /// otherwise the key written on that line (or the table header).
    pub(crate) fn at(file: &str, text: &str, offset: usize, key: Option<&str>) -> Box<Location> {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..offset].chars().count() + 1;
        let key = match key {
            Some(k) => k.to_string(),
            None => key_on_line(text, line_start),
        };
        Box::new(Location {
            file: file.to_string(),
            line,
            column,
            key,
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The key written on the line starting at `line_start` (`a.b = ...` gives
/// `a.b`, `[x.y]` gives `x.y`), or the nearest table header above it.
fn key_on_line(text: &str, line_start: usize) -> String {
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some(h) = header(line) {
        return h;
    }
    if let Some((k, _)) = line.split_once('=') {
        let k = k.trim().trim_start_matches('{').trim();
        let k = k.rsplit([',', '{']).next().unwrap_or(k).trim();
        if !k.is_empty() {
            return k.trim_matches('"').to_string();
        }
    }
    // fall back to the enclosing table header
    for l in text[..line_start].lines().rev() {
        if let Some(h) = header(l.trim()) {
            return h;
        }
    }
    String::from("(top level)")
}

fn header(line: &str) -> Option<String> {
    if line.starts_with('[') {
        let inner = line.trim_start_matches('[');
        let end = inner.find(']')?;
        return Some(inner[..end].trim().to_string());
    }
    None
}

/// Formats a list of suggestions as `; did you mean `a`, `b`?`.
pub(crate) fn hint(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
        format!("; did you mean {}?", list.join(", "))
    }
}

/// An error loading a dataset definition or a mapping spec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that was asked for.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has a field of the wrong shape.
    #[error("{loc}: {message}")]
    Syntax {
        /// Where.
        loc: Box<Location>,
        /// What the TOML parser said.
        message: String,
    },
    /// A name (element, category, code table, transform) is not defined.
    #[error("{loc}: unknown {kind} `{name}`{}", hint(suggestions))]
    Unknown {
        /// Where.
        loc: Box<Location>,
        /// What kind of name: "element", "category", "code table", ...
        kind: &'static str,
        /// The name as written.
        name: String,
        /// Nearest valid names (edit distance), best first.
        suggestions: Vec<String>,
    },
    /// A value is well-formed TOML but not a valid setting.
    #[error("{loc}: {message}")]
    Invalid {
        /// Where.
        loc: Box<Location>,
        /// What is wrong.
        message: String,
    },
}

impl SpecError {
    /// The location in the spec, when the error has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            SpecError::Io { .. } => None,
            SpecError::Syntax { loc, .. } | SpecError::Unknown { loc, .. } | SpecError::Invalid { loc, .. } => {
                Some(loc)
            }
        }
    }

    pub(crate) fn from_toml(file: &str, text: &str, e: &toml::de::Error) -> SpecError {
        let offset = e.span().map_or(0, |s| s.start);
        let mut message = e.message().trim().to_string();
        // "unknown field `frm`, expected one of `to`, `from`, ..." → add near matches
        if let Some(rest) = message
            .strip_prefix("unknown field `")
            .or_else(|| message.strip_prefix("unknown variant `"))
            && let Some((name, expected)) = rest.split_once('`')
        {
            let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let near = near_matches(name, valid.into_iter());
            message.push_str(&hint(&near));
        }
        SpecError::Syntax {
            loc: Location::at(file, text, offset, None),
            message,
        }
    }
}

/// An error decoding an exchange message or an input record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Malformed JSON.
    #[error("exchange json: {0}")]
    Json(#[from] serde_json::Error),
    /// Malformed XML.
    #[error("exchange xml at byte {position}: {message}")]
    Xml {
        /// Byte offset in the input.
        position: u64,
        /// What is wrong.
        message: String,
    },
    /// A required part is missing or has the wrong form.
    #[error("exchange message: {0}")]
    Invalid(String),
}

/// Levenshtein edit distance (on chars).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Up to three names near `name`: within an edit distance of a third of its
/// length (at least 2), or containing it, best first.
pub(crate) fn near_matches<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            let d = edit_distance(name, c);
            if d <= limit || (name.len() >= 3 && (c.contains(name) || name.contains(c))) {
                Some((d, c))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_near() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let near = near_matches("lot_numbr", ["lot_number", "dose_number", "bill_code"].into_iter());
        assert_eq!(near, vec!["lot_number".to_string()]);
    }

    #[test]
    fn location_finds_line_and_key() {
        let text = "[a]\nx = 1\n[[field]]\nto = \"zz\"\n";
        let off = text.find("\"zz\"").unwrap_or(0);
        let loc = Location::at("f.toml", text, off, None);
        assert_eq!((loc.line, loc.key.as_str()), (4, "to"));
    }
}
