//! Source text → element values (dates, numbers, booleans, JSON).

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::dataset::ElementType;

/// The value of an element of type `ty` from a field's values (at least
/// one): the first parsed date (`date` fields), an array of all values
/// (JSON elements with several), else the first value converted (and
/// scaled by `scale`).
pub(super) fn element_value(
    ty: ElementType,
    scale: Option<f64>,
    vals: &[Cow<'_, str>],
    dates: Option<&[(DateTime<FixedOffset>, bool)]>,
) -> Value {
    match dates {
        Some(d) => {
            let (dt, _) = d[0];
            Value::String(if ty == ElementType::Date {
                ymd(dt)
            } else {
                dt.to_rfc3339()
            })
        }
        None if ty == ElementType::Json && vals.len() > 1 => {
            Value::Array(vals.iter().map(|v| convert(ty, v, None)).collect())
        }
        None => convert(ty, &vals[0], scale),
    }
}

fn ymd(dt: DateTime<FixedOffset>) -> String {
    use chrono::Datelike as _;
    let (y, m, d) = (dt.year(), dt.month(), dt.day());
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}");
    }
    let y = y as u32;
    let digits = [
        y / 1000,
        y / 100 % 10,
        y / 10 % 10,
        y % 10,
        10,
        m / 10,
        m % 10,
        10,
        d / 10,
        d % 10,
    ];
    digits
        .iter()
        .map(|&n| if n == 10 { '-' } else { char::from(b'0' + n as u8) })
        .collect()
}

fn convert(ty: ElementType, v: &str, scale: Option<f64>) -> Value {
    if let Some(s) = scale
        && let Ok(n) = v.parse::<f64>()
        && let Some(num) = serde_json::Number::from_f64(round9(n * s))
    {
        return if ty == ElementType::Integer && (n * s).fract() == 0.0 {
            Value::Number(serde_json::Number::from((n * s) as i64))
        } else {
            Value::Number(num)
        };
    }
    match ty {
        ElementType::Integer => v
            .parse::<i64>()
            .map_or_else(|_| Value::String(v.to_string()), Value::from),
        ElementType::Decimal => match v.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(v.to_string()),
        },
        ElementType::Boolean => match v.to_lowercase().as_str() {
            "1" | "true" | "t" | "y" | "yes" | "是" => Value::Bool(true),
            "0" | "false" | "f" | "n" | "no" | "否" => Value::Bool(false),
            _ => Value::String(v.to_string()),
        },
        ElementType::Json => serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())),
        _ => Value::String(v.to_string()),
    }
}

/// Rounds away binary noise from scaling (e.g. 52 × 0.1).
fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}
