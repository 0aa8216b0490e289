//! The HTTP sink: POSTs over pooled HTTP/1.1 keep-alive connections (hyper-util's client).
//!
//! Headers go out in NanoMQ's order: `Host`, the configured headers in config order, the guest's
//! headers, then `Content-Length`, then `Idempotency-Key`. The response status is read: 2xx is delivered, anything else is
//! a failure; the response body is read (up to a cap) so the connection can be reused. A failed
//! attempt is tried again as [`RetryPolicy`] says.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::dead_letter::{DeadLetterError, DeadLetters};
use super::retry::{RetryPolicy, Verdict};
use super::tls::{self, TlsError};
use super::Request;
use crate::config::Config;
use crate::metrics::Metrics;

/// The header that names each request, the same across its retries, dead letter, replay and a
/// restart, so endpoints can drop duplicates (at-least-once delivery makes some).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Response bodies are read up to this size, then the connection is dropped instead of reused.
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL's scheme is neither http nor https.
    #[error("`{0}` URLs are not supported; use http:// or https://")]
    UnsupportedScheme(String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    /// The TLS handshake failed: the server's certificate is not trusted, or it refused ours.
    /// Not retried: it fails the same way every time until the configuration changes.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The endpoint answered with a status other than 2xx.
    #[error("endpoint answered {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The `Retry-After` it sent, in seconds form.
        retry_after: Option<Duration>,
    },
    /// No answer within `cancel_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking to the endpoint failed.
    #[error("request failed: {0}")]
    Transport(String),
    /// The dead-letter file could not be opened.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

/// The parts of every request the config fixes, URL and headers; shared by the clones of a sink,
/// and replaced as a whole on a config reload.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    parts: Arc<RwLock<TemplateParts>>,
}

#[derive(Debug)]
struct TemplateParts {
    scheme_authority: String,
    base_path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl TemplateParts {
    fn new(config: &Config) -> Self {
        let url = &config.url;
        let authority = url.authority().map_or("", |a| a.as_str());
        let mut headers = HeaderMap::new();
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(HOST, host);
        }
        for header in &config.headers {
            // Both were validated when the config was loaded.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_str(&header.value))
            {
                headers.append(name, value);
            }
        }
        TemplateParts {
            scheme_authority: format!("{}://{}", url.scheme_str().unwrap_or("http"), authority),
            base_path: url.path().to_string(),
            query: url.query().map(str::to_string),
            headers,
        }
    }
}

impl RequestTemplate {
    /// Takes URL and headers from a checked config.
    pub fn new(config: &Config) -> Self {
        RequestTemplate { parts: Arc::new(RwLock::new(TemplateParts::new(config))) }
    }

    /// Takes URL and headers from `config` for every request built from now on, in every clone.
    pub fn retarget(&self, config: &Config) {
        *self.parts.write().unwrap_or_else(PoisonError::into_inner) = TemplateParts::new(config);
    }

    /// The full request for one delivery.
    pub fn build(&self, request: &Request) -> http::Request<Full<Bytes>> {
        let parts = self.parts.read().unwrap_or_else(PoisonError::into_inner);
        let path = match &request.path {
            Some(suffix) => format!("{}{}", parts.base_path.trim_end_matches('/'), suffix),
            None if parts.base_path.is_empty() => "/".to_string(),
            None => parts.base_path.clone(),
        };
        let uri = match &parts.query {
            Some(query) => format!("{}{}?{}", parts.scheme_authority, path, query),
            None => format!("{}{}", parts.scheme_authority, path),
        };
        let mut headers = parts.headers.clone();
        drop(parts);
        for (name, value) in &request.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(request.body.len()));
        if let Some(key) = request.idempotency_key.as_deref().and_then(|key| HeaderValue::from_str(key).ok()) {
            headers.insert(IDEMPOTENCY_KEY, key);
        }
        let mut http_request = http::Request::new(Full::new(request.body.clone()));
        *http_request.method_mut() = Method::POST;
        // Both parts were validated (config URL, guest path), so the URI parses.
        *http_request.uri_mut() = uri.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
        *http_request.headers_mut() = headers;
        http_request
    }
}

/// Sends requests to the configured endpoint over a keep-alive pool.
#[derive(Clone)]
pub struct HttpSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    template: RequestTemplate,
    timeout: Duration,
    retry: RetryPolicy,
    dead_letters: Option<Arc<DeadLetters>>,
}

impl HttpSink {
    /// A client for the config's URL with up to `pool_size` idle connections kept alive.
    pub fn new(config: &Config) -> Result<Self, DeliveryError> {
        match config.url.scheme_str() {
            Some("http") | Some("https") => {}
            other => return Err(DeliveryError::UnsupportedScheme(other.unwrap_or("").to_string())),
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // http:// URLs stay plain; https:// ones (also after a reload) use these TLS settings.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(config.tls.as_ref())?)
            .https_or_http();
        let builder = match tls::server_name(config.tls.as_ref()) {
            Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_size.get())
            .build(connector);
        let dead_letters = match &config.dead_letter {
            Some(path) => Some(Arc::new(DeadLetters::open(path)?)),
            None => None,
        };
        Ok(HttpSink { client, template: RequestTemplate::new(config), timeout: config.cancel_timeout, retry: config.retry, dead_letters })
    }

    /// The dead-letter file, when the config names one.
    pub fn dead_letters(&self) -> Option<&DeadLetters> {
        self.dead_letters.as_deref()
    }

    /// URL and headers for requests sent from now on (a config reload).
    pub fn retarget(&self, config: &Config) {
        self.template.retarget(config);
    }

    /// Sends one request, retrying as the policy says; `Ok` only for a 2xx answer. Each retry is
    /// counted; the final failure is logged here, once, and written to the dead-letter file.
    pub async fn send(&self, request: Request, metrics: &Metrics) -> Result<(), DeliveryError> {
        let first_attempt = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let error = match tokio::time::timeout(self.timeout, self.exchange(&request)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_elapsed) => DeliveryError::Timeout(self.timeout),
            };
            match self.retry.after_failure(&error, attempt, first_attempt.elapsed()) {
                Verdict::RetryAfter(wait) => {
                    tracing::debug!(action = request.kind.action(), attempt, "Delivery failed ({error}); retrying in {wait:?}.");
                    metrics.record_retry();
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Verdict::GiveUp => {
                    tracing::warn!(action = request.kind.action(), attempts = attempt, "Delivery failed: {error}.");
                    if let Some(dead_letters) = &self.dead_letters {
                        dead_letters.record(&request, &error, attempt);
                    }
                    return Err(error);
                }
            }
        }
    }

    async fn exchange(&self, request: &Request) -> Result<(), DeliveryError> {
        let response = self
            .client
            .request(self.template.build(request))
            .await
            .map_err(|e| match tls_failure(&e) {
                Some(tls) => DeliveryError::Tls(tls),
                None => DeliveryError::Transport(error_chain(&e)),
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|seconds| seconds.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Reading the body to its end returns the connection to the pool.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status { status, retry_after })
        }
    }
}

/// The TLS error behind a failed request, if that is why it failed. rustls reports through
/// `io::Error`s (nested, by hyper-rustls), whose `source` skips the error they wrap, so each
/// `io::Error` is opened by hand.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let mut layer = current;
        loop {
            if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            match layer.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(inner) => layer = inner,
                None => break,
            }
        }
        cause = current.source();
    }
    None
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
