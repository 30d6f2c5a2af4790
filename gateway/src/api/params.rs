//! Query parameters as types: each value a route takes is a Rust type with
//! its spellings, and a bad one is `invalid_parameter` naming the parameter
//! and what it takes. Parameters a route does not know are ignored.

use std::collections::HashMap;

use crate::error::{ApiError, Code};

/// The raw query string of a request, by parameter name.
pub(crate) type RawQuery = actix_web::web::Query<HashMap<String, String>>;

/// A value a query parameter takes.
pub(crate) trait ParamValue: Sized + Default + Copy + 'static {
    /// Each valid spelling and the value it stands for, in the order the
    /// error message lists them.
    const SPELLINGS: &'static [(&'static str, Self)];
}

impl ParamValue for bool {
    const SPELLINGS: &'static [(&'static str, Self)] = &[("true", true), ("false", false)];
}

/// The parameter `name` of `q`: its default when absent, an
/// `invalid_parameter` error naming it and the valid spellings ("true or
/// false") when its value is not one of `T`'s.
pub(crate) fn param<T: ParamValue>(q: &HashMap<String, String>, name: &str) -> Result<T, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(T::default());
    };
    T::SPELLINGS
        .iter()
        .find(|(spelling, _)| spelling == v)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let valid: Vec<&str> = T::SPELLINGS.iter().map(|(spelling, _)| *spelling).collect();
            ApiError::new(
                Code::InvalidParameter,
                format!("{name} {v:?} is not {}", valid.join(" or ")),
            )
        })
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
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("partial", Mode::Partial), ("all_or_nothing", Mode::AllOrNothing)];
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
    const SPELLINGS: &'static [(&'static str, Self)] = &[("full", ReceiptForm::Full), ("brief", ReceiptForm::Brief)];
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
        let e = param::<Mode>(&HashMap::from([("mode".to_string(), "all".to_string())]), "mode").unwrap_err();
        assert_eq!(e.message, "mode \"all\" is not partial or all_or_nothing");
    }
}
