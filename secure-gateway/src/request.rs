//! SM2-signed HTTP requests (R5.7): every write to the gateway carries the
//! signer's key id, a timestamp, a nonce, the SM3 of the body and an SM2
//! signature over a canonical request string. `docs/request-signing.md` has
//! the scheme and a worked example with curl and the openssl CLI.
//!
//! The canonical string is seven lines joined by `\n` (no trailing newline):
//!
//! ```text
//! VAXGATE-SM2-SM3-V1
//! <HTTP method, upper case>
//! <path and query exactly as sent, e.g. /v1/transactions?mode=all>
//! <key id>
//! <timestamp: Unix seconds, decimal>
//! <nonce>
//! <SM3 of the body, 64 lowercase hex digits>
//! ```
//!
//! The signature is SM2 with SM3 and the distinguishing ID
//! `1234567812345678`, DER-encoded, then standard base64.

use base64::Engine as _;

use crate::{CryptoError, Signer, Sm2Signature, Sm2VerifyingKey, sm3};

/// First line of the canonical string.
pub const SCHEME: &str = "VAXGATE-SM2-SM3-V1";

/// Header names.
pub mod headers {
    /// The signing key's id.
    pub const KEY_ID: &str = "x-vaxgate-key-id";
    /// Unix seconds.
    pub const TIMESTAMP: &str = "x-vaxgate-timestamp";
    /// A fresh random string per request.
    pub const NONCE: &str = "x-vaxgate-nonce";
    /// SM3 of the body, lowercase hex.
    pub const CONTENT_SM3: &str = "x-vaxgate-content-sm3";
    /// Base64 of the DER SM2 signature.
    pub const SIGNATURE: &str = "x-vaxgate-signature";
}

/// The five authentication header values of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Key id.
    pub key_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// Nonce.
    pub nonce: String,
    /// SM3 of the body (hex).
    pub content_sm3: String,
    /// Base64 DER signature.
    pub signature: String,
}

impl SignedRequest {
    /// `(header name, value)` pairs to attach to the request.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            (headers::KEY_ID, self.key_id.clone()),
            (headers::TIMESTAMP, self.timestamp.to_string()),
            (headers::NONCE, self.nonce.clone()),
            (headers::CONTENT_SM3, self.content_sm3.clone()),
            (headers::SIGNATURE, self.signature.clone()),
        ]
    }
}

/// The canonical request string.
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    key_id: &str,
    timestamp: i64,
    nonce: &str,
    content_sm3: &str,
) -> String {
    format!(
        "{SCHEME}\n{}\n{path_and_query}\n{key_id}\n{timestamp}\n{nonce}\n{content_sm3}",
        method.to_ascii_uppercase()
    )
}

/// Is this an acceptable nonce: 16 to 64 characters of `[A-Za-z0-9_-]`?
pub fn valid_nonce(n: &str) -> bool {
    (16..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Signs a request with a fresh random nonce and the current time.
pub fn sign_request(
    key: &Signer,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<SignedRequest, CryptoError> {
    let nonce = hex::encode(crate::random::bytes::<16>()?);
    sign_request_at(
        key,
        method,
        path_and_query,
        body,
        chrono::Utc::now().timestamp(),
        &nonce,
    )
}

/// Signs a request with a given time and nonce (tests, worked examples).
pub fn sign_request_at(
    key: &Signer,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
) -> Result<SignedRequest, CryptoError> {
    let key_id = key.verifying_key().key_id().to_string();
    let content_sm3 = sm3(body).to_hex();
    let canon = canonical_request(method, path_and_query, &key_id, timestamp, nonce, &content_sm3);
    let sig = key.sign(canon.as_bytes())?;
    Ok(SignedRequest {
        key_id,
        timestamp,
        nonce: nonce.to_string(),
        content_sm3,
        signature: base64::engine::general_purpose::STANDARD.encode(sig.to_der()),
    })
}

/// Checks a request's body hash and signature under `key` (the caller has
/// looked the key up by `req.key_id`, and checks time and nonce itself).
pub fn verify_request(
    key: &Sm2VerifyingKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    req: &SignedRequest,
) -> Result<(), CryptoError> {
    if key.key_id() != req.key_id {
        return Err(CryptoError::SignerMismatch {
            expected: key.key_id().to_string(),
            found: req.key_id.clone(),
        });
    }
    if sm3(body).to_hex() != req.content_sm3 {
        return Err(CryptoError::BadSignature {
            context: "the body does not match x-vaxgate-content-sm3".into(),
        });
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(req.signature.as_bytes())
        .map_err(|_| CryptoError::MalformedSignature("x-vaxgate-signature is not base64".into()))?;
    let sig = Sm2Signature::from_der(&der)?;
    let canon = canonical_request(
        method,
        path_and_query,
        &req.key_id,
        req.timestamp,
        &req.nonce,
        &req.content_sm3,
    );
    key.verify(canon.as_bytes(), &sig)
        .map_err(|_| CryptoError::BadSignature {
            context: "request signature".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let k = Signer::generate(crate::RustCryptoProvider::shared(), crate::KeyHandle::new("k")).unwrap();
        let r = sign_request(&k, "post", "/v1/transactions", b"{}").unwrap();
        assert!(valid_nonce(&r.nonce));
        verify_request(k.verifying_key(), "POST", "/v1/transactions", b"{}", &r).unwrap();
        assert!(verify_request(k.verifying_key(), "POST", "/v1/transactions", b"{ }", &r).is_err());
        assert!(verify_request(k.verifying_key(), "POST", "/v1/cancellations", b"{}", &r).is_err());
        let mut r2 = r.clone();
        r2.timestamp += 1;
        assert!(verify_request(k.verifying_key(), "POST", "/v1/transactions", b"{}", &r2).is_err());
        let mut r3 = r.clone();
        r3.signature = "!!".into();
        assert!(verify_request(k.verifying_key(), "POST", "/v1/transactions", b"{}", &r3).is_err());
    }

    #[test]
    fn canonical_layout() {
        assert_eq!(
            canonical_request("get", "/v1/trace/1?x=1", "k", 5, "n", "h"),
            "VAXGATE-SM2-SM3-V1\nGET\n/v1/trace/1?x=1\nk\n5\nn\nh"
        );
    }
}
