//! Personal data: kept apart from the business fields, masked in every
//! human-readable output, pseudonymised with a keyed SM3-HMAC for lookups.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sm3::Sm3;

/// The personal data of one event (element key → value), e.g. the
/// recipient's name and ID number. The gateway encrypts it (SM4) before it
/// reaches the ledger. `Debug` and [`Pii::masked`] never show plaintext.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pii(BTreeMap<String, String>);

impl Pii {
    /// An empty set.
    pub fn new() -> Pii {
        Pii::default()
    }

    /// Sets a value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// The plaintext value of `key`. Callers must not log it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Removes and returns a value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Whether there is no personal data.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates over (key, plaintext value). Callers must not log the values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A copy with every value masked by [`mask`].
    pub fn masked(&self) -> Pii {
        Pii(self.0.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
    }
}

impl fmt::Debug for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, mask(v)))).finish()
    }
}

/// Masks a personal value for display: identifiers (8+ ASCII letters and
/// digits only, e.g. ID or phone numbers) keep the first 3 and last 4
/// characters; anything else (names, addresses, dates) keeps only its first
/// character. Every hidden character is `*`.
///
/// ```
/// assert_eq!(mappings::mask("11010519491231002X"), "110***********002X");
/// assert_eq!(mappings::mask("张三丰"), "张**");
/// ```
pub fn mask(value: &str) -> String {
    let n = value.chars().count();
    if n == 0 {
        return String::new();
    }
    let ident = n >= 8 && value.chars().all(|c| c.is_ascii_alphanumeric());
    let (head, tail) = if ident { (3, 4) } else { (1, 0) };
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i < head || i >= n - tail { c } else { '*' })
        .collect()
}

/// HMAC-SM3 (RFC 2104 with SM3, block size 64 bytes, 32-byte output), by the
/// RustCrypto `hmac` crate.
pub fn hmac_sm3(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac as _};
    // HMAC takes a key of any length (longer keys are hashed first), so
    // `new_from_slice` cannot fail; the fallback keeps the function total.
    match hmac::Hmac::<Sm3>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

/// The lookup pseudonym of an identity number: hex HMAC-SM3 under the
/// deployment's secret `key` of the normalised number (trimmed, ASCII
/// uppercase, so `...x` and `...X` agree). Equal numbers give equal
/// pseudonyms; without the key they cannot be reversed by enumeration.
pub fn pseudonym(key: &[u8], id_number: &str) -> String {
    let normalised = id_number.trim().to_ascii_uppercase();
    hex::encode(hmac_sm3(key, normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed once with OpenSSL 3.0.19 and pasted here:
    //   echo -n "110101199003077777" | openssl dgst -sm3 -hmac "vaxgate-test-key"
    //   echo -n "what do ya want for nothing?" | openssl dgst -sm3 -hmac "Jefe"
    //   echo -n "msg" | openssl dgst -sm3 -mac HMAC -macopt hexkey:$(printf '61%.0s' {1..100})
    #[test]
    fn hmac_sm3_matches_openssl() {
        assert_eq!(
            hex::encode(hmac_sm3(b"vaxgate-test-key", b"110101199003077777")),
            "1967495815fed94014388d68321577450aee074d09fe454099cec1db13c409be"
        );
        assert_eq!(
            hex::encode(hmac_sm3(b"Jefe", b"what do ya want for nothing?")),
            "2e87f1d16862e6d964b50a5200bf2b10b764faa9680a296a2405f24bec39f882"
        );
        // a key longer than the block is hashed first
        assert_eq!(
            hex::encode(hmac_sm3(&[b'a'; 100], b"msg")),
            "7f05737cbf4e91e582f311272db391778c7f2af9545c20ce68406d24ce2ea3ae"
        );
    }

    #[test]
    fn sm3_abc() {
        use sm3::Digest as _;
        let d: [u8; 32] = Sm3::digest(b"abc").into();
        assert_eq!(
            hex::encode(d),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn pseudonym_normalises() {
        assert_eq!(
            pseudonym(b"k", "11010519491231002x"),
            pseudonym(b"k", " 11010519491231002X")
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask("13812345678"), "138****5678");
        assert_eq!(mask("李四"), "李*");
        assert_eq!(mask(""), "");
        let mut p = Pii::new();
        p.insert("recipient_name", "王小明");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("小明"), "{dbg}");
    }
}
