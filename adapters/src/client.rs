//! The HTTP client every vaxgate tool uses to talk to the gateway: TLS
//! (optionally with a private CA and a client certificate for mutual TLS)
//! and SM2-signed requests ([`secure_gateway::request`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secure_gateway::Signer;
use secure_gateway::request::sign_request;

/// Why a call to the gateway failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A file (CA, certificate) could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The connection or the exchange failed (gateway down, TLS error).
    #[error("calling {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The gateway answered with an error.
    #[error("{url} answered {status}: {code}: {message}")]
    Api {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Stable error code from the body.
        code: String,
        /// The gateway's message.
        message: String,
        /// `Retry-After` seconds, when given.
        retry_after: Option<u64>,
    },
    /// Signing failed (no randomness).
    #[error("signing the request: {0}")]
    Sign(String),
}

impl ClientError {
    /// Worth retrying later (gateway down, overloaded, rate-limited)?
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// How to reach the gateway.
#[derive(Debug, Clone, Default)]
pub struct GatewayClientConfig {
    /// Base URL, e.g. `https://gateway.example:8443`.
    pub base_url: String,
    /// Extra CA certificate (PEM) to trust, e.g. the gateway's self-signed one.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM, concatenated) for mutual TLS.
    pub client_identity: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
}

/// A signed client of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    base: String,
    http: reqwest::Client,
    key: Signer,
}

/// The PEM file at `path` read by `parse` (a certificate, an identity); an
/// unreadable or unparsable file is an error naming it.
fn read_pem<T>(path: &Path, parse: fn(&[u8]) -> reqwest::Result<T>) -> Result<T, ClientError> {
    let file_err = |e: &dyn std::fmt::Display| ClientError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let pem = std::fs::read(path).map_err(|e| file_err(&e))?;
    parse(&pem).map_err(|e| file_err(&e))
}

impl GatewayClient {
    /// A client that signs with `key` (held by its crypto provider).
    pub fn new(cfg: &GatewayClientConfig, key: Signer) -> Result<Self, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout.unwrap_or(Duration::from_secs(60)))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vaxgate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_cert {
            b = b.add_root_certificate(read_pem(ca, reqwest::Certificate::from_pem)?);
        }
        if let Some(id) = &cfg.client_identity {
            b = b.identity(read_pem(id, reqwest::Identity::from_pem)?);
        }
        let http = b.build().map_err(|e| ClientError::Transport {
            url: cfg.base_url.clone(),
            message: e.to_string(),
        })?;
        Ok(GatewayClient {
            base: cfg.base_url.trim_end_matches('/').to_string(),
            http,
            key,
        })
    }

    /// The signing key.
    pub fn key(&self) -> &Signer {
        &self.key
    }

    /// Sends a signed request (a body as `application/json`); returns the
    /// body of a 2xx answer.
    pub async fn send(&self, method: &str, path_and_query: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.send_as(method, path_and_query, body, "application/json").await
    }

    /// [`GatewayClient::send`] with the body declared as `content_type`
    /// (e.g. [`secure_gateway::BATCH_MEDIA_TYPE`] for a binary batch).
    pub async fn send_as(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let signed =
            sign_request(&self.key, method, path_and_query, &body).map_err(|e| ClientError::Sign(e.to_string()))?;
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut rb = self.http.request(m, &url);
        for (k, v) in signed.headers() {
            rb = rb.header(k, v);
        }
        if !body.is_empty() {
            rb = rb.header("content-type", content_type).body(body);
        }
        let resp = rb.send().await.map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let (code, message) = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some((
                    e.get("code")?.as_str()?.to_string(),
                    e.get("message")?.as_str()?.to_string(),
                ))
            })
            .unwrap_or_else(|| {
                (
                    "http".into(),
                    String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                )
            });
        Err(ClientError::Api {
            url,
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    /// A signed GET.
    pub async fn get(&self, path_and_query: &str) -> Result<Vec<u8>, ClientError> {
        self.send("GET", path_and_query, Vec::new()).await
    }

    /// A signed POST of JSON.
    pub async fn post_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<Vec<u8>, ClientError> {
        let body = serde_json::to_vec(value).map_err(|e| ClientError::Sign(e.to_string()))?;
        self.send("POST", path, body).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
