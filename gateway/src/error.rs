//! Every error the API returns: an HTTP status, a stable machine-readable
//! code and a human message, as JSON `{"error": {"code", "message"}}`.
//! This table is the one place that maps failures to statuses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// A stable error code (part of the API contract) with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// The body is not valid JSON/XML for this route.
    MalformedBody,
    /// A query parameter has a value the route does not take.
    InvalidParameter,
    /// Content-Type is not one this route accepts.
    UnsupportedContentType,
    /// The body exceeds `server.max_body_bytes`.
    BodyTooLarge,
    /// The body did not arrive within `server.body_read_timeout_secs`.
    RequestTimeout,
    /// Authentication headers are missing or malformed.
    Unauthenticated,
    /// A request or batch signature does not verify.
    BadSignature,
    /// The entity or key id is not registered.
    UnknownEntity,
    /// The key is locked.
    KeyLocked,
    /// The key is revoked.
    KeyRevoked,
    /// The nonce was seen before.
    ReplayedNonce,
    /// The request timestamp is too far from the gateway's clock.
    ExpiredTimestamp,
    /// The principal may not do this.
    Forbidden,
    /// A record fails validation against the dataset.
    ValidationFailed,
    /// A trace code is not 20 digits.
    InvalidTraceCode,
    /// Same id, different content.
    Conflict,
    /// A record breaks a custody rule whose action is `refuse`
    /// (`docs/custody.md`): a history that cannot be true.
    CustodyViolation,
    /// Nothing there.
    NotFound,
    /// The path exists, but not with this method.
    MethodNotAllowed,
    /// Too many requests.
    RateLimited,
    /// The ledger or a dependency is not ready.
    Unavailable,
    /// A bug or an unexpected failure (details in the log, not here).
    Internal,
}

impl Code {
    /// Every code, for documentation (the OpenAPI error schema).
    pub const ALL: &[Code] = &[
        Code::MalformedBody,
        Code::InvalidParameter,
        Code::UnsupportedContentType,
        Code::BodyTooLarge,
        Code::RequestTimeout,
        Code::Unauthenticated,
        Code::BadSignature,
        Code::UnknownEntity,
        Code::KeyLocked,
        Code::KeyRevoked,
        Code::ReplayedNonce,
        Code::ExpiredTimestamp,
        Code::Forbidden,
        Code::ValidationFailed,
        Code::InvalidTraceCode,
        Code::Conflict,
        Code::CustodyViolation,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::RateLimited,
        Code::Unavailable,
        Code::Internal,
    ];

    /// The HTTP status of this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::MalformedBody | Code::InvalidParameter | Code::ValidationFailed | Code::InvalidTraceCode => {
                StatusCode::BAD_REQUEST
            }
            Code::UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::Unauthenticated
            | Code::BadSignature
            | Code::UnknownEntity
            | Code::KeyLocked
            | Code::KeyRevoked
            | Code::ReplayedNonce
            | Code::ExpiredTimestamp => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::Conflict | Code::CustodyViolation => StatusCode::CONFLICT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case name, as it appears in responses and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MalformedBody => "malformed_body",
            Code::InvalidParameter => "invalid_parameter",
            Code::UnsupportedContentType => "unsupported_content_type",
            Code::BodyTooLarge => "body_too_large",
            Code::RequestTimeout => "request_timeout",
            Code::Unauthenticated => "unauthenticated",
            Code::BadSignature => "bad_signature",
            Code::UnknownEntity => "unknown_entity",
            Code::KeyLocked => "key_locked",
            Code::KeyRevoked => "key_revoked",
            Code::ReplayedNonce => "replayed_nonce",
            Code::ExpiredTimestamp => "expired_timestamp",
            Code::Forbidden => "forbidden",
            Code::ValidationFailed => "validation_failed",
            Code::InvalidTraceCode => "invalid_trace_code",
            Code::Conflict => "conflict",
            Code::CustodyViolation => "custody_violation",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }
}

/// An API error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// What kind.
    pub code: Code,
    /// For a person; never personal data or secrets.
    pub message: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An internal error: logs the cause, tells the client only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(Code::Internal, "internal error; the gateway log has details")
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'static str,
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        crate::metrics::METRICS
            .rejections
            .with_label_values(&[self.code.as_str()])
            .inc();
        let mut r = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(Body {
            error: Inner {
                code: self.code.as_str(),
                message: &self.message,
            },
        })
    }
}

impl From<ledger::LedgerError> for ApiError {
    fn from(e: ledger::LedgerError) -> Self {
        use ledger::LedgerError as L;
        match e {
            L::NotFound(m) => ApiError::new(Code::NotFound, m),
            L::Duplicate { record_id, tx_id } => ApiError::new(
                Code::Conflict,
                format!("record {record_id} is already in the ledger as {tx_id}"),
            ),
            L::BadTransaction { tx_id, reason } => ApiError::new(Code::BadSignature, format!("{tx_id}: {reason}")),
            L::Closed => ApiError::new(Code::Unavailable, "the ledger is shutting down"),
            other => ApiError::internal(other),
        }
    }
}
