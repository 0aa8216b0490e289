//! Builds the HTTP request for one [`Request`] from the delivery settings in force.
//!
//! Headers go out in NanoMQ's order: `Host`, the configured headers in config order, the guest's
//! headers, then `Content-Length`, then `Idempotency-Key`, then (with `signing`) the Standard
//! Webhooks headers. The guest's path is appended to the URL's path; the URL's query is kept.
//!
//! A batch ([`Framing::Batch`]) differs in two headers: its `Content-Type` is the batch format's,
//! right after `Host` (a configured or guest-set one is left out), and `Idempotency-Keys`, the
//! members' keys in body order, follows its own `Idempotency-Key`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::Full;
use sha2::Sha256;

use crate::config::{BatchFormat, DeliveryConfig, Signing};
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

/// The Standard Webhooks headers: `webhook-id` (the request's idempotency key, the same on every
/// attempt), `webhook-timestamp` (this attempt's) and `webhook-signature`, one `v1,` signature
/// per secret. They replace any a guest set.
fn sign(signing: &Signing, id: &str, timestamp: u64, body: &[u8], headers: &mut HeaderMap) {
    let timestamp = timestamp.to_string();
    let signatures: Vec<String> = signing
        .secrets
        .iter()
        .map(|secret| {
            // HMAC takes a key of any length.
            let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect();
    // The id is an idempotency key and the rest is ASCII: all are valid header values.
    let value = |text: &str| HeaderValue::from_str(text).expect("an ASCII header value");
    headers.insert(WEBHOOK_ID, value(id));
    headers.insert(WEBHOOK_TIMESTAMP, value(&timestamp));
    let mut signature = value(&signatures.join(" "));
    signature.set_sensitive(true);
    headers.insert(WEBHOOK_SIGNATURE, signature);
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// Standard Webhooks' message id header.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks' timestamp header (Unix seconds).
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks' signature header.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The header that lists a batch's members' idempotency keys, comma-separated, in body order.
pub const IDEMPOTENCY_KEYS: HeaderName = HeaderName::from_static("idempotency-keys");

/// What a request's body is.
#[derive(Debug, Clone, Copy, Default)]
pub enum Framing<'a> {
    /// One event's body, as its guest made it.
    #[default]
    Single,
    /// Several events' bodies in `format`; `keys` is the `Idempotency-Keys` value.
    Batch {
        /// How the bodies are put together.
        format: BatchFormat,
        /// The members' keys, comma-separated, in body order.
        keys: &'a HeaderValue,
    },
}

/// The full HTTP request for one delivery to `delivery.url`.
pub fn build(delivery: &DeliveryConfig, request: &Request) -> http::Request<Full<Bytes>> {
    build_framed(delivery, request, Framing::Single)
}

/// As [`build`], for a body framed as `framing` says.
pub fn build_framed(delivery: &DeliveryConfig, request: &Request, framing: Framing<'_>) -> http::Request<Full<Bytes>> {
    let url = &delivery.url;
    let authority = url.authority().map_or("", |a| a.as_str());
    let uri = match url.query() {
        Some(query) => format!("{}?{query}", url_without_query(url, request.path.as_deref())),
        None => url_without_query(url, request.path.as_deref()),
    };
    let mut headers = HeaderMap::with_capacity(delivery.headers.len() + request.headers.len() + 5);
    if let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(HOST, host);
    }
    let batch = match framing {
        Framing::Single => None,
        Framing::Batch { format, keys } => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            Some(keys)
        }
    };
    // A batch's content type is its format's, whatever the configuration or the guest says.
    let kept = |name: &HeaderName| batch.is_none() || *name != CONTENT_TYPE;
    for header in delivery.headers.iter().filter(|header| kept(&header.name)) {
        headers.append(header.name.clone(), header.value.clone());
    }
    for (name, value) in request.headers.iter().filter(|(name, _)| kept(name)) {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(request.body.len()));
    if let Some(key) = request.idempotency_key.as_deref().and_then(|key| HeaderValue::from_str(key).ok()) {
        headers.insert(IDEMPOTENCY_KEY, key);
    }
    if let Some(keys) = batch {
        headers.insert(IDEMPOTENCY_KEYS, keys.clone());
    }
    if let (Some(signing), Some(id)) = (&delivery.signing, request.idempotency_key.as_deref()) {
        sign(signing, id, unix_seconds(), &request.body, &mut headers);
    }
    let mut http_request = http::Request::new(Full::new(request.body.clone()));
    *http_request.method_mut() = Method::POST;
    // Both parts were validated (the config's URL, the guest's path), so the URI parses.
    *http_request.uri_mut() = uri.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *http_request.headers_mut() = headers;
    http_request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Header, SigningKey};
    use crate::event::EventKind;

    #[test]
    fn a_batch_has_its_formats_content_type_after_host_and_its_keys_after_its_key() {
        let header =
            |name: &'static str, value: &'static str| (HeaderName::from_static(name), HeaderValue::from_static(value));
        let delivery = DeliveryConfig {
            url: Uri::from_static("http://example.test/hooks"),
            headers: [header("content-type", "text/plain"), header("x-token", "t")]
                .map(|(name, value)| Header::new(name, value))
                .to_vec(),
            ..DeliveryConfig::default()
        };
        let request = Request {
            kind: EventKind::MessagePublish,
            body: Bytes::from_static(b"[1,2]"),
            headers: vec![header("content-type", "application/cloudevents+json"), header("x-guest", "g")],
            path: Some("/a".into()),
            client: None,
            idempotency_key: Some("batch-00".into()),
            received_at: None,
        };
        let keys = HeaderValue::from_static("k-1,k-2");
        let built = build_framed(&delivery, &request, Framing::Batch { format: BatchFormat::Ndjson, keys: &keys });
        let names: Vec<&str> = built.headers().iter().map(|(name, _)| name.as_str()).collect();
        let order =
            ["host", "content-type", "x-token", "x-guest", "content-length", "idempotency-key", "idempotency-keys"];
        assert_eq!(names, order);
        assert_eq!(built.headers()[CONTENT_TYPE], "application/x-ndjson");
        assert_eq!(built.headers()[IDEMPOTENCY_KEYS], "k-1,k-2");
        assert_eq!(built.uri(), "http://example.test/hooks/a");
        // One event, as before: the configured and the guest's content types, in order.
        let single = build(&delivery, &request);
        let types: Vec<_> = single.headers().get_all(CONTENT_TYPE).iter().collect();
        assert_eq!(types, ["text/plain", "application/cloudevents+json"]);
        assert!(!single.headers().contains_key(IDEMPOTENCY_KEYS));
    }

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The vector of the Standard Webhooks libraries (secret, id, timestamp, body → signature).
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let other = SigningKey(b"a rotated-out key".to_vec());
        let signing = Signing { secrets: vec![SigningKey(key), other] };
        let mut headers = HeaderMap::new();
        sign(&signing, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#, &mut headers);
        assert_eq!(headers[&WEBHOOK_ID], "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(headers[&WEBHOOK_TIMESTAMP], "1614265330");
        let signatures = headers[&WEBHOOK_SIGNATURE].to_str().unwrap();
        let (first, second) = signatures.split_once(' ').expect("one signature per secret");
        assert_eq!(first, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(second.starts_with("v1,") && second != first);
    }
}
