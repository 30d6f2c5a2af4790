//! SM3 (GB/T 32905-2016) digests.

use std::fmt;
use std::str::FromStr;

use sm3::Digest as _;

use crate::CryptoError;

/// A 32-byte SM3 digest. Displays and serialises as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sm3Digest(pub [u8; 32]);

impl Sm3Digest {
    /// The all-zero digest (the previous hash of the genesis block).
    pub const ZERO: Sm3Digest = Sm3Digest([0u8; 32]);

    /// Equality in constant time (for digests of secrets, e.g. API keys).
    pub fn ct_eq(&self, other: &Sm3Digest) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 64];
        self.hex_into(&mut buf).to_string()
    }

    /// Lowercase hex written into `buf` (no allocation).
    fn hex_into<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        // Only ASCII hex digits were written.
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let v = hex::decode(s).map_err(|e| CryptoError::Malformed {
            what: "sm3 digest",
            detail: e.to_string(),
        })?;
        Self::from_slice(&v)
    }

    /// Takes exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| CryptoError::Malformed {
            what: "sm3 digest",
            detail: format!("expected 32 bytes, got {}", b.len()),
        })?;
        Ok(Sm3Digest(arr))
    }
}

impl fmt::Display for Sm3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sm3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm3Digest({})", self.to_hex())
    }
}

impl FromStr for Sm3Digest {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl serde::Serialize for Sm3Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        s.serialize_str(self.hex_into(&mut buf))
    }
}

impl<'de> serde::Deserialize<'de> for Sm3Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Sm3Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// SM3 of one byte string.
pub fn sm3(data: &[u8]) -> Sm3Digest {
    let out = sm3::Sm3::digest(data);
    let mut arr = [0u8; 32];
    arr.copy_from_slice(&out);
    Sm3Digest(arr)
}

/// Incremental SM3.
#[derive(Clone, Default)]
pub struct Sm3Hasher(sm3::Sm3);

impl fmt::Debug for Sm3Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sm3Hasher")
    }
}

impl Sm3Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(data);
        self
    }
    /// Finishes.
    pub fn finalize(self) -> Sm3Digest {
        let out = self.0.finalize();
        let mut arr = [0u8; 32];
        arr.copy_from_slice(&out);
        Sm3Digest(arr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // GB/T 32905-2016 Appendix A, example 1.
    #[test]
    fn kat_abc() {
        assert_eq!(
            sm3(b"abc").to_hex(),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    // GB/T 32905-2016 Appendix A, example 2: "abcd" repeated 16 times (64 bytes).
    #[test]
    fn kat_64_bytes() {
        let m = b"abcd".repeat(16);
        assert_eq!(
            sm3(&m).to_hex(),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
        let mut h = Sm3Hasher::new();
        h.update(&m[..10]).update(&m[10..]);
        assert_eq!(h.finalize(), sm3(&m));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let d = sm3(b"x");
        assert_eq!(d.to_hex(), hex::encode(d.0));
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{}\"", hex::encode(d.0)));
        assert_eq!(Sm3Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert!(Sm3Digest::from_hex("zz").is_err());
        assert!(Sm3Digest::from_hex("abcd").is_err());
    }
}
