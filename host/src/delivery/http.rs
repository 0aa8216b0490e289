//! The HTTP sink: one exchange with the endpoint over pooled HTTP/1.1 keep-alive connections
//! (hyper-util's client).
//!
//! Each request is built from the delivery settings in force ([`LiveConfig`]), so a reload's URL
//! and headers apply to the next request. The response status is read: 2xx is delivered, anything
//! else a failure; the response body is read (up to a cap) so the connection can be reused.
//! Whether and when to try again is [`retry`](super::retry)'s decision, not the sink's.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::DeliveryError;
use super::request_builder::{self, Framing};
use super::tls;
use crate::config::{DeliveryConfig, LiveConfig};
use crate::request::Request;

/// Response bodies are read up to this size, then the connection is dropped instead of reused.
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Sends requests to the configured endpoint over a keep-alive pool.
#[derive(Clone)]
pub struct HttpSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    live: LiveConfig,
    /// Which endpoint's settings it sends with ([`crate::config::Config::endpoint_delivery`]).
    slot: usize,
    timeout: Duration,
}

impl HttpSink {
    /// A client for the delivery settings in `live`: the pool, the timeout and TLS are fixed
    /// here; URL and headers are read for every request.
    pub fn new(live: LiveConfig) -> Result<Self, DeliveryError> {
        HttpSink::for_endpoint(live, 0)
    }

    /// As [`HttpSink::new`], for endpoint `slot` (`i + 1` for named endpoint `i`).
    pub fn for_endpoint(live: LiveConfig, slot: usize) -> Result<Self, DeliveryError> {
        let config = live.load();
        let delivery: &DeliveryConfig = config.endpoint_delivery(slot);
        match delivery.url.scheme_str() {
            Some("http") | Some("https") => {}
            other => return Err(DeliveryError::UnsupportedScheme(other.unwrap_or("").to_string())),
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // http:// URLs stay plain; https:// ones (also after a reload) use these TLS settings.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(delivery.tls.as_ref())?)
            .https_or_http();
        let builder = match tls::server_name(delivery.tls.as_ref()) {
            Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(delivery.pool.pool_size.get())
            .pool_idle_timeout(delivery.pool.idle_timeout)
            .pool_timer(TokioTimer::new())
            // NanoMQ writes `Host`, `Content-Type`, `Content-Length`: so does mqhook, byte for byte.
            .http1_title_case_headers(true)
            .build(connector);
        let timeout = delivery.timeout;
        drop(config);
        Ok(HttpSink { client, live, slot, timeout })
    }

    /// Where `request` goes now, as a log line may show it (see [`request_builder::url_without_query`]).
    pub fn loggable_url(&self, request: &Request) -> String {
        request_builder::url_without_query(&self.live.load().endpoint_delivery(self.slot).url, request.path.as_deref())
    }

    /// One attempt: `Ok` only for a 2xx answer within `cancel_timeout`.
    pub async fn send(&self, request: &Request) -> Result<(), DeliveryError> {
        self.send_framed(request, Framing::Single).await
    }

    /// As [`HttpSink::send`], for a body framed as `framing` says (a batch).
    pub async fn send_framed(&self, request: &Request, framing: Framing<'_>) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.timeout, self.exchange(request, framing)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, request: &Request, framing: Framing<'_>) -> Result<(), DeliveryError> {
        let http_request =
            request_builder::build_framed(self.live.load().endpoint_delivery(self.slot), request, framing);
        let response = self.client.request(http_request).await.map_err(|e| match tls_failure(&e) {
            Some(tls) => DeliveryError::Tls(tls),
            None => DeliveryError::Transport(error_chain(&e)),
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, std::time::SystemTime::now()));
        // Reading the body to its end returns the connection to the pool.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status { status, retry_after })
        }
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date, which is read as the
/// time from `now` until then (zero when it has passed).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::retry_after;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "already past");
        assert_eq!(retry_after("soon", now), None);
    }
}
