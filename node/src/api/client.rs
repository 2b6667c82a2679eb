//! A small client of the HTTP API, used by the client subcommands (`status`, `publish`,
//! `keys`, `aggregate`): plain HTTP, or HTTPS checked against `--api-ca`.

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
    #[error("{0}")]
    Tls(String),
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
    http: Http,
}

/// Whole-request deadline: a DKG runs several rounds of up to 10 s each when participants
/// are slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How requests travel: plain HTTP through reqwest, or HTTPS (HTTP/1.1 over tokio-rustls,
/// one connection per request) verified against the `--api-ca` certificates only.
enum Http {
    Plain(reqwest::Client),
    Tls {
        connector: tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
        host: String,
        port: u16,
    },
}

impl ApiClient {
    /// A client for the API at `base_url`, with the token from `token_file` if given. An
    /// `https://` API is verified against the CA certificates in `ca_file` (only those),
    /// which it needs.
    pub fn new(
        base_url: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let token = token_file
            .map(read_token)
            .transpose()
            .map_err(ClientError::Token)?;
        Self::with_token(base_url, token, ca_file)
    }

    /// Like [`new`](Self::new), with the token itself (the operator reads it from a Secret).
    pub fn with_token(
        base_url: &str,
        token: Option<ApiToken>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let base = reqwest::Url::parse(base_url).map_err(|e| ClientError::Url {
            url: base_url.to_string(),
            message: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Url {
                url: base_url.to_string(),
                message: "expected an http:// or https:// URL".into(),
            });
        }
        let host = base.host_str().unwrap_or_default().to_string();
        let http = match (base.scheme(), ca_file) {
            ("https", Some(ca)) => {
                let config = crate::tls::client_config(ca)
                    .map_err(|e| ClientError::Tls(format!("--api-ca: {e}")))?;
                let name = host.trim_start_matches('[').trim_end_matches(']');
                let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .map_err(|e| ClientError::Url {
                        url: base_url.to_string(),
                        message: format!("`{host}` is not a host name or IP address: {e}"),
                    })?;
                Http::Tls {
                    connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                    server_name,
                    port: base.port_or_known_default().unwrap_or(443),
                    host,
                }
            }
            ("https", None) => {
                return Err(ClientError::Tls(format!(
                    "{base_url} is an https:// API: give the CA certificate that signed its certificate with --api-ca FILE (env P2P_MPC_API_CA)"
                )));
            }
            (_, Some(_)) => {
                return Err(ClientError::Tls(format!(
                    "--api-ca is given but {base_url} is not an https:// URL: the CA would check nothing"
                )));
            }
            _ => Http::Plain(
                reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build()
                    .map_err(|e| ClientError::Connect {
                        url: base_url.to_string(),
                        message: e.to_string(),
                    })?,
            ),
        };
        Ok(Self { base, token, http })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::Url {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    /// Sends one request; the status and body of the answer.
    async fn exchange(
        &self,
        method: &'static str,
        url: reqwest::Url,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, bytes::Bytes), String> {
        match &self.http {
            Http::Plain(client) => {
                let req = client.request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("a method"),
                    url,
                );
                let req = match body {
                    Some(b) => req.header("content-type", "application/json").body(b),
                    None => req,
                };
                let req = match &self.token {
                    Some(t) => req.bearer_auth(t.expose()),
                    None => req,
                };
                let resp = req.send().await.map_err(|e| error_chain(&e))?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
                Ok((status, bytes))
            }
            Http::Tls {
                connector,
                server_name,
                host,
                port,
            } => {
                let exchange = async {
                    let tcp = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect((host.as_str(), *port)),
                    )
                    .await
                    .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
                    .map_err(|e| error_chain(&e))?;
                    let tls = connector
                        .connect(server_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {}", error_chain(&e)))?;
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                            .await
                            .map_err(|e| error_chain(&e))?;
                    tokio::spawn(connection);
                    let target = match url.query() {
                        Some(q) => format!("{}?{q}", url.path()),
                        None => url.path().to_string(),
                    };
                    let mut req = hyper::Request::builder()
                        .method(method)
                        .uri(target)
                        .header("host", format!("{host}:{port}"));
                    if body.is_some() {
                        req = req.header("content-type", "application/json");
                    }
                    if let Some(t) = &self.token {
                        req = req.header("authorization", format!("Bearer {}", t.expose()));
                    }
                    let req = req
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            body.unwrap_or_default(),
                        )))
                        .map_err(|e| e.to_string())?;
                    let resp = sender
                        .send_request(req)
                        .await
                        .map_err(|e| error_chain(&e))?;
                    let status = resp.status().as_u16();
                    let bytes = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .map_err(|e| error_chain(&e))?
                        .to_bytes();
                    Ok((status, bytes))
                };
                tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                    .await
                    .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            }
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, body) =
            self.exchange(method, url, body)
                .await
                .map_err(|message| ClientError::Connect {
                    url: self.base.to_string(),
                    message,
                })?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        self.send("POST", path, Some(body)).await
    }

    /// `DELETE path` with a JSON body.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        self.send("DELETE", path, Some(body)).await
    }

    /// A request whose body and answer stream (no whole-body buffering and no overall
    /// deadline: an upload or download takes as long as its bytes take), over HTTP/1.1 on a
    /// connection of its own (TLS checked against `--api-ca` for an https:// API). An
    /// answer other than 2xx is read whole and returned as the API's error.
    pub async fn stream<B>(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, String)],
        body: B,
    ) -> Result<hyper::body::Incoming, ClientError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let url = self.url(path)?;
        let connect = |message: String| ClientError::Connect {
            url: self.base.to_string(),
            message,
        };
        let host = self.base.host_str().unwrap_or_default().to_string();
        let port = self.base.port_or_known_default().unwrap_or(80);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            )),
        )
        .await
        .map_err(|_| connect(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect(error_chain(&e)))?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header("host", format!("{host}:{port}"));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.expose()));
        }
        let req = req.body(body).map_err(|e| connect(e.to_string()))?;
        let resp = match &self.http {
            Http::Plain(_) => {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .map_err(|e| connect(error_chain(&e)))?;
                tokio::spawn(connection);
                sender.send_request(req).await
            }
            Http::Tls {
                connector,
                server_name,
                ..
            } => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| connect(format!("TLS handshake failed: {}", error_chain(&e))))?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .map_err(|e| connect(error_chain(&e)))?;
                tokio::spawn(connection);
                sender.send_request(req).await
            }
        }
        .map_err(|e| connect(error_chain(&e)))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(|e| connect(error_chain(&e)))?
                .to_bytes();
            return Err(api_error(status, &body));
        }
        Ok(resp.into_body())
    }
}

/// The error of a non-2xx answer: its `{"error", "code"}` body, or its text.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError::Api {
        status,
        code: v["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

/// An error and its causes, joined: reqwest's own message hides why a request failed (a
/// refused connection, an unknown certificate issuer, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
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
