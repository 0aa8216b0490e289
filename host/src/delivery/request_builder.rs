//! Builds the HTTP request for one [`Request`] from the delivery settings in force.
//!
//! Headers go out in NanoMQ's order: `Host`, the configured headers in config order, the guest's
//! headers, then `Content-Length`, then `Idempotency-Key`. The guest's path is appended to the
//! URL's path; the URL's query is kept.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::Full;

use crate::config::DeliveryConfig;
use crate::request::{Request, IDEMPOTENCY_KEY};

/// The URL a request with `guest_path` goes to, without its query: `scheme://authority/path`.
/// Also what a log line or `/status` shows of it (the query may carry a token; a URL with user
/// info is refused when the config is read).
pub fn url_without_query(url: &Uri, guest_path: Option<&str>) -> String {
    let authority = url.authority().map_or("", |a| a.as_str());
    let base_path = url.path();
    let path = match guest_path {
        Some(suffix) => format!("{}{}", base_path.trim_end_matches('/'), suffix),
        None if base_path.is_empty() => "/".to_string(),
        None => base_path.to_string(),
    };
    let scheme = url.scheme_str().unwrap_or("http");
    format!("{scheme}://{authority}{path}")
}

/// The full HTTP request for one delivery to `delivery.url`.
pub fn build(delivery: &DeliveryConfig, request: &Request) -> http::Request<Full<Bytes>> {
    let url = &delivery.url;
    let authority = url.authority().map_or("", |a| a.as_str());
    let uri = match url.query() {
        Some(query) => format!("{}?{query}", url_without_query(url, request.path.as_deref())),
        None => url_without_query(url, request.path.as_deref()),
    };
    let mut headers = HeaderMap::with_capacity(delivery.headers.len() + request.headers.len() + 3);
    if let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(HOST, host);
    }
    for header in &delivery.headers {
        headers.append(header.name.clone(), header.value.clone());
    }
    for (name, value) in &request.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(request.body.len()));
    if let Some(key) = request.idempotency_key.as_deref().and_then(|key| HeaderValue::from_str(key).ok()) {
        headers.insert(IDEMPOTENCY_KEY, key);
    }
    let mut http_request = http::Request::new(Full::new(request.body.clone()));
    *http_request.method_mut() = Method::POST;
    // Both parts were validated (the config's URL, the guest's path), so the URI parses.
    *http_request.uri_mut() = uri.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *http_request.headers_mut() = headers;
    http_request
}
