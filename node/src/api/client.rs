//! A small client of the HTTP API, used by the `status` and `publish` subcommands.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ApiToken, read_token};

/// A failure of an API call, worded for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Token(String),
    #[error("`{url}` is not a valid API URL: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the node at {url}: {message} (is it running, and is --api right?)")]
    Connect { url: String, message: String },
    #[error("the node answered {status}: {message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
}

/// A client bound to one node.
pub struct ApiClient {
    base: reqwest::Url,
    token: Option<ApiToken>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base_url`, with the token from `token_file` if given.
    pub fn new(base_url: &str, token_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = reqwest::Url::parse(base_url).map_err(|e| ClientError::Url {
            url: base_url.to_string(),
            message: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Url {
                url: base_url.to_string(),
                message: "expected an http:// URL".into(),
            });
        }
        let token = token_file
            .map(read_token)
            .transpose()
            .map_err(ClientError::Token)?;
        let http = reqwest::Client::builder()
            // A DKG runs several rounds of up to 10 s each when participants are slow.
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Connect {
                url: base_url.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self { base, token, http })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::Url {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        };
        let resp = req.send().await.map_err(|e| ClientError::Connect {
            url: self.base.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: v["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path)?;
        self.send(self.http.get(url)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        self.send(self.http.post(url).json(body)).await
    }
}

/// Percent-encodes a path segment (topic names may hold any printable character).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
