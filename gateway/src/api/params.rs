//! Query parameters as types: each value a route takes is a Rust type with
//! its spellings, and a bad one is `invalid_parameter` naming the parameter
//! and what it takes. Parameters a route does not know are ignored.

use std::collections::HashMap;

use crate::error::{ApiError, Code};

/// The raw query string of a request, by parameter name.
pub(crate) type RawQuery = actix_web::web::Query<HashMap<String, String>>;

/// A value a query parameter takes.
pub(crate) trait ParamValue: Sized + Default {
    /// The valid spellings, for the error message ("true or false").
    const VALID: &'static str;
    /// The value spelled `s`, if it is one.
    fn parse(s: &str) -> Option<Self>;
}

impl ParamValue for bool {
    const VALID: &'static str = "true or false";
    fn parse(s: &str) -> Option<Self> {
        match s {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }
}

/// The parameter `name` of `q`: its default when absent, an
/// `invalid_parameter` error naming it when its value is not one of `T`'s.
pub(crate) fn param<T: ParamValue>(q: &HashMap<String, String>, name: &str) -> Result<T, ApiError> {
    match q.get(name) {
        None => Ok(T::default()),
        Some(v) => T::parse(v)
            .ok_or_else(|| ApiError::new(Code::InvalidParameter, format!("{name} {v:?} is not {}", T::VALID))),
    }
}

/// `?mode=` of an ingest call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Good records are written, bad ones answered one by one (default).
    #[default]
    Partial,
    /// Nothing is written when one record is refused.
    AllOrNothing,
}

impl ParamValue for Mode {
    const VALID: &'static str = "partial or all_or_nothing";
    fn parse(s: &str) -> Option<Self> {
        match s {
            "partial" => Some(Mode::Partial),
            "all_or_nothing" => Some(Mode::AllOrNothing),
            _ => None,
        }
    }
}

/// `?receipts=` of an ingest call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ReceiptForm {
    /// Each receipt with its signed checkpoint (default).
    #[default]
    Full,
    /// Receipts without checkpoints; each block's checkpoint once.
    Brief,
}

impl ParamValue for ReceiptForm {
    const VALID: &'static str = "full or brief";
    fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(ReceiptForm::Full),
            "brief" => Some(ReceiptForm::Brief),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_errors_that_name_the_parameter() {
        let q: HashMap<String, String> = [("mode", "all_or_nothing"), ("siblings", "maybe")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(param::<Mode>(&q, "mode").unwrap(), Mode::AllOrNothing);
        assert_eq!(param::<ReceiptForm>(&q, "receipts").unwrap(), ReceiptForm::Full);
        let e = param::<bool>(&q, "siblings").unwrap_err();
        assert_eq!(e.code, Code::InvalidParameter);
        assert_eq!(e.message, "siblings \"maybe\" is not true or false");
        assert!(!param::<bool>(&q, "codes").unwrap());
    }
}
