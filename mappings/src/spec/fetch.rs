//! Reading source paths out of a record: the record context ([`Ctx`]),
//! path evaluation and the row column table.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{MappingSpec, SrcPath};
use crate::sources::{Hl7Record, XmlNode, json_text};

thread_local! {
    /// (spec id, [(column name at row position, spec column slot)]).
    static ROW_LAYOUT: std::cell::RefCell<(u64, Vec<(String, usize)>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

impl MappingSpec {
    /// The values of the spec's columns in a row: one pass over the row with
    /// a cheap hash; names that differ only in ASCII case are matched too.
    pub(super) fn columns_into<'r>(&self, row: &'r Map<String, Value>, cols: &mut [Option<&'r Value>]) {
        let mut exact = 0;
        // Rows of one source come with the same columns in the same order:
        // remember the layout per thread and confirm each name with one
        // comparison instead of a hash lookup.
        ROW_LAYOUT.with(|cell| {
            let mut layout = cell.borrow_mut();
            if layout.0 != self.id {
                layout.0 = self.id;
                layout.1.clear();
            }
            for (pos, (k, v)) in row.iter().enumerate() {
                let slot = match layout.1.get(pos) {
                    Some((name, slot)) if crate::dataset::same_key(name, k) => *slot,
                    _ => {
                        let slot = self.col_index.get(k.as_str()).copied().unwrap_or(usize::MAX);
                        if pos < layout.1.len() {
                            layout.1[pos] = (k.clone(), slot);
                        } else if pos == layout.1.len() && pos < 1024 {
                            layout.1.push((k.clone(), slot));
                        }
                        slot
                    }
                };
                if let Some(c) = cols.get_mut(slot) {
                    *c = Some(v);
                    exact += 1;
                }
            }
        });
        if exact < row.len() {
            for (slot, name) in cols.iter_mut().zip(&self.columns) {
                if slot.is_none() {
                    *slot = row.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
                }
            }
        }
    }
}

pub(super) fn trim_cow(v: Cow<'_, str>) -> Cow<'_, str> {
    match v {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) => {
            let t = o.trim();
            if t.len() == o.len() {
                Cow::Owned(o)
            } else {
                Cow::Owned(t.to_string())
            }
        }
    }
}

pub(super) enum Ctx<'a> {
    Row(&'a [Option<&'a Value>]),
    Hl7(&'a Hl7Record, Option<usize>),
    Xml(&'a XmlNode),
    Json(&'a Value),
}

pub(super) fn fetch<'a>(ctx: &Ctx<'a>, path: &SrcPath, all: bool) -> Vec<Cow<'a, str>> {
    let mut v = Vec::new();
    fetch_into(ctx, path, all, &mut v);
    v
}

/// `str::trim` with a fast path for values that start and end with a
/// visible ASCII character (the common case).
pub(super) fn fast_trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

pub(super) fn trim_in_place(v: &mut Cow<'_, str>) {
    match v {
        Cow::Borrowed(b) => *b = fast_trim(b),
        Cow::Owned(o) => {
            let t = fast_trim(o);
            if t.len() != o.len() {
                *v = Cow::Owned(t.to_string());
            }
        }
    }
}

pub(super) fn fetch_into<'a>(ctx: &Ctx<'a>, path: &SrcPath, all: bool, out: &mut Vec<Cow<'a, str>>) {
    match (ctx, path) {
        (Ctx::Row(cols), SrcPath::Column(_, slot)) => {
            out.extend(cols.get(*slot).copied().flatten().and_then(json_text));
        }
        (Ctx::Hl7(m, g), SrcPath::Hl7(p)) => out.extend(m.get(p, *g, all).into_iter().map(Cow::Owned)),
        (Ctx::Xml(n), SrcPath::Xml(p)) => {
            let v = p.eval(n);
            if all {
                out.extend(v.into_iter().map(Cow::Borrowed));
            } else {
                out.extend(v.into_iter().find(|s| !s.trim().is_empty()).map(Cow::Borrowed));
            }
        }
        (Ctx::Json(j), SrcPath::Json(p)) => {
            let v = p.eval(j).into_iter().filter_map(json_text);
            if all {
                out.extend(v);
            } else {
                out.extend(v.take(1));
            }
        }
        _ => {}
    }
}
