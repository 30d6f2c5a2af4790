//! The canonical encoding's fields (`u32_be(len) ‖ value`, docs/envelope.md),
//! split and joined the way a reader in another language would.

/// Splits canonical bytes into their `u32_be(len) ‖ value` fields.
pub fn fields(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u32::from_be_bytes(b[..4].try_into().expect("a 4-byte length")) as usize;
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    out
}

/// Joins fields again.
pub fn join(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}
