//! The operating system's random source (getrandom), the only source of
//! randomness in this crate.

use crate::CryptoError;

/// Fills `buf` from the operating system's cryptographic random source.
pub fn fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    sm2::elliptic_curve::common::getrandom::fill(buf)
        .map_err(|e| CryptoError::Cipher(format!("operating system random source failed: {e}")))
}

/// `N` fresh random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}
