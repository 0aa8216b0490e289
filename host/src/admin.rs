//! The admin listener: a small HTTP API on its own loopback address for operators and their
//! tools: health, metrics, status, and swapping the guest.
//!
//! - `GET /healthz`: 200 while the process serves at all (liveness; never needs a token);
//! - `GET /readyz`: 200 when a guest is loaded, the spool (if any) takes writes and delivery is
//!   not backing off a failing endpoint; else 503, with which check failed;
//! - `GET /metrics`: the metrics in the Prometheus text format (OpenMetrics 1.0);
//! - `GET /metrics.json`: the counters of the end-of-run summary, as JSON;
//! - `GET /status`: JSON: the guest, the config file, queue and spool depth, requests in flight,
//!   the endpoint's state, last error and last success;
//! - `GET /guest`: the running guest as JSON — name, SHA-256, load time (ms), generation, and its
//!   counters (calls, filtered, delivered, traps, timeouts, invalid deliveries, mean time per call);
//! - `PUT /guest` with a component as the body: compiles it, checks its world, runs its `configure`
//!   with the running configuration, and swaps it in; `422` with the reason (and the old guest still
//!   running) when any of that fails.
//!
//! With an [`AdminTokens::write`] token set, every route but `/healthz` needs
//! `Authorization: Bearer <token>`: the write token may do everything, the optional read token
//! only `GET`s. A missing or wrong token gets 401 (a read token on `PUT`, 403), counted as
//! `mqhook_admin_unauthorized_total`. Tokens are compared in constant time.
//!
//! It only ever binds loopback addresses: uploading a guest means running code in the host. Its
//! use of the process is bounded: [`MAX_CONNECTIONS`] at once (more are closed as they arrive),
//! a request head within [`HEADER_TIMEOUT`], a connection within [`CONNECTION_TIMEOUT`], a body
//! of at most [`MAX_UPLOAD`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::delivery::request_builder::url_without_query;
use crate::guest::{ActiveGuest, GuestError};
use crate::metrics::Problem;
use crate::runtime::Observer;

/// The content type of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Largest component accepted by `PUT /guest`; a larger body is answered 413.
pub const MAX_UPLOAD: usize = 64 << 20;
/// Connections served at once; more are closed as they arrive (the API is for an operator, not
/// a crowd), so a flood of connections costs the event flow nothing.
pub const MAX_CONNECTIONS: usize = 32;
/// A request's head must arrive within this; a client that trickles bytes is cut off.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lasts longer, whatever it sends (an upload of [`MAX_UPLOAD`] included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address is not a loopback address.
    #[error("the admin listener must be on a loopback address (127.0.0.1 or ::1), not {0}")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("cannot listen for admin requests on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// A bearer token for the admin API. Its value is never shown: `Debug` prints `<redacted>`.
#[derive(Clone)]
pub struct Token(Arc<[u8; 32]>);

impl Token {
    /// A token with this value (leading and trailing white space, a file's newline, removed);
    /// `None` when nothing is left.
    pub fn new(value: &str) -> Option<Token> {
        let value = value.trim();
        (!value.is_empty()).then(|| Token(Arc::new(Sha256::digest(value.as_bytes()).into())))
    }

    /// Whether `offered` is this token. Both are hashed first, so the comparison takes the same
    /// time whatever the length or the first differing byte.
    fn matches(&self, offered: &[u8]) -> bool {
        let offered: [u8; 32] = Sha256::digest(offered).into();
        self.0.ct_eq(&offered).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who may use the admin API. With no `write` token, anyone on the host may (the listener is
/// loopback only); with one, every route but `/healthz` needs a token.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    /// May do everything.
    pub write: Option<Token>,
    /// May only read (`GET`); needs a `write` token beside it.
    pub read: Option<Token>,
}

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    None,
    Read,
    Write,
}

/// The environment variable that holds the admin token when no file is named.
pub const TOKEN_VARIABLE: &str = "MQHOOK_ADMIN_TOKEN";
/// The environment variable that holds the read-only token when no file is named.
pub const READ_TOKEN_VARIABLE: &str = "MQHOOK_ADMIN_READ_TOKEN";

/// Why the admin tokens cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file or variable holds nothing but white space.
    #[error("the admin token in {0} is empty")]
    Empty(String),
    /// A read-only token without a write token would leave `PUT /guest` open.
    #[error("a read-only admin token needs an admin token beside it ({TOKEN_VARIABLE} or a token file)")]
    ReadWithoutWrite,
}

impl AdminTokens {
    /// The tokens from `write_file` (else `$MQHOOK_ADMIN_TOKEN`) and `read_file` (else
    /// `$MQHOOK_ADMIN_READ_TOKEN`); none when neither is given.
    pub fn load(write_file: Option<&Path>, read_file: Option<&Path>) -> Result<AdminTokens, TokenError> {
        let token = |file: Option<&Path>, variable: &str| -> Result<Option<Token>, TokenError> {
            let (value, from) = match file {
                Some(path) => {
                    let read = std::fs::read_to_string(path);
                    (
                        read.map_err(|source| TokenError::Read { path: path.to_path_buf(), source })?,
                        path.display().to_string(),
                    )
                }
                None => match std::env::var(variable) {
                    Ok(value) => (value, format!("${variable}")),
                    Err(_) => return Ok(None),
                },
            };
            Token::new(&value).map(Some).ok_or(TokenError::Empty(from))
        };
        let tokens =
            AdminTokens { write: token(write_file, TOKEN_VARIABLE)?, read: token(read_file, READ_TOKEN_VARIABLE)? };
        if tokens.read.is_some() && tokens.write.is_none() {
            return Err(TokenError::ReadWithoutWrite);
        }
        Ok(tokens)
    }

    fn access(&self, request: &http::Request<Incoming>) -> Access {
        let Some(write) = &self.write else { return Access::Write };
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .map(|token| token.trim_ascii());
        match offered {
            Some(token) if write.matches(token) => Access::Write,
            Some(token) if self.read.as_ref().is_some_and(|read| read.matches(token)) => Access::Read,
            _ => Access::None,
        }
    }
}

/// What the admin API serves besides the pipeline itself.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// Who may use it.
    pub tokens: AdminTokens,
    /// The config file in use, shown by `/status`.
    pub config_file: Option<PathBuf>,
}

/// A bound admin listener.
pub struct Admin {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What every admin connection reads.
struct Shared {
    observer: Observer,
    options: AdminOptions,
}

impl Admin {
    /// Binds `addr`, which must be loopback.
    pub async fn bind(addr: SocketAddr, observer: Observer, options: AdminOptions) -> Result<Admin, AdminError> {
        if !addr.ip().is_loopback() {
            return Err(AdminError::NotLoopback(addr));
        }
        let listener = TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Admin { listener, shared: Arc::new(Shared { observer, options }) })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves admin requests until the future is dropped.
    /// At most [`MAX_CONNECTIONS`] at once, each bounded by [`HEADER_TIMEOUT`] and
    /// [`CONNECTION_TIMEOUT`].
    pub async fn serve(self) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!("Admin listener: accept failed: {error}.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!("Admin listener: {MAX_CONNECTIONS} connections open already; one more is closed.");
                continue;
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(request, shared.clone()));
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Err(error)) => tracing::debug!("Admin connection ended: {error}."),
                    Err(_) => tracing::debug!("Admin connection cut off after {CONNECTION_TIMEOUT:?}."),
                    Ok(Ok(())) => {}
                }
                drop(permit);
            });
        }
    }
}

const ROUTES: &str = "GET /healthz, /readyz, /metrics, /metrics.json, /status, /guest; PUT /guest";

async fn handle(
    request: http::Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    if method == Method::GET && path == "/healthz" {
        return Ok(json(StatusCode::OK, serde_json::json!({ "status": "live" })));
    }
    let needed = if method == Method::GET { Access::Read } else { Access::Write };
    let access = shared.options.tokens.access(&request);
    if access == Access::None || (needed == Access::Write && access == Access::Read) {
        let observer = &shared.observer;
        let (status, why) = match access {
            Access::None => (StatusCode::UNAUTHORIZED, "a missing or wrong token"),
            _ => (StatusCode::FORBIDDEN, "a read-only token"),
        };
        let message = format_args!("Admin request {method} {path} refused: {why}.");
        observer.metrics().report(Problem::AdminUnauthorized, 1, message);
        let mut response =
            json(status, serde_json::json!({ "error": format!("{method} {path} needs a valid admin token") }));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mqhook\""));
        }
        return Ok(response);
    }
    let observer = &shared.observer;
    let active = observer.active_guest();
    Ok(match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut response = http::Response::new(Full::new(Bytes::from(observer.encode_metrics())));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        (&Method::GET, "/metrics.json") => json(StatusCode::OK, serde_json::json!(observer.metrics().snapshot())),
        (&Method::GET, "/readyz") => readiness(observer),
        (&Method::GET, "/status") => json(StatusCode::OK, status(observer, &shared.options)),
        (&Method::GET, "/guest") => json(StatusCode::OK, guest_info(active)),
        (&Method::PUT, "/guest") if declared_length(&request).is_some_and(|length| length > MAX_UPLOAD as u64) => {
            // Refused before a byte of it is read.
            let message = format!("a guest is at most {MAX_UPLOAD} bytes");
            json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": message }))
        }
        (&Method::PUT, "/guest") => match Limited::new(request.into_body(), MAX_UPLOAD).collect().await {
            Ok(body) => upload(active, body.to_bytes()).await,
            Err(error) => json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": error.to_string() })),
        },
        (_, "/guest") => json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({ "error": "use GET or PUT" })),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("the admin API has {ROUTES}") })),
    })
}

/// `/readyz`: each check and its outcome; 503 unless all pass.
fn readiness(observer: &Observer) -> http::Response<Full<Bytes>> {
    // A running pipeline always has a guest; an upload or reload that fails keeps the old one.
    let guest_loaded = !observer.active_guest().current().1.name().is_empty();
    let spool_writable = !observer.spool_failing();
    let endpoint_healthy = !observer.depths().backing_off;
    let ready = guest_loaded && spool_writable && endpoint_healthy;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({
            "ready": ready,
            "checks": {
                "guest_loaded": guest_loaded,
                "spool_writable": spool_writable,
                "delivery_not_backing_off": endpoint_healthy,
            },
        }),
    )
}

/// `/status`: what an operator asks first. Shows no header value and no URL query.
fn status(observer: &Observer, options: &AdminOptions) -> serde_json::Value {
    let (generation, guest) = observer.active_guest().current();
    let config = observer.active_guest().config();
    let depths = observer.depths();
    let url = url_without_query(&config.delivery.url, None);
    let endpoints = observer.endpoints();
    serde_json::json!({
        "guest": { "name": guest.name(), "sha256": guest.sha256(), "generation": generation },
        "config_file": options.config_file,
        "queues": { "events": depths.events, "requests": depths.requests },
        "spool": config.spool.as_ref().map(|spool| serde_json::json!({
            "dir": spool.dir,
            "bytes": depths.spool_bytes,
            "records": depths.spool_records,
            "writable": !observer.spool_failing(),
        })),
        "requests_in_flight": observer.in_flight(),
        "endpoint": { "url": url, "status": endpoints[0].status },
        "endpoints": endpoints,
    })
}

/// The `Content-Length` a request declares, if any.
fn declared_length(request: &http::Request<Incoming>) -> Option<u64> {
    request.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

async fn upload(active: &ActiveGuest, component: Bytes) -> http::Response<Full<Bytes>> {
    let config = active.config();
    let engine = active.current().1.engine().clone();
    // Compiling blocks for a while: off the async threads.
    let loaded = tokio::task::spawn_blocking(move || {
        let module = engine.from_bytes("admin:upload", &component, &config.guest, &config.filter)?;
        Ok::<_, GuestError>((module, config))
    })
    .await;
    match loaded {
        Ok(Ok((module, config))) => {
            active.swap(module, Config::clone(&config));
            json(StatusCode::OK, guest_info(active))
        }
        Ok(Err(error)) => {
            tracing::warn!("Admin upload refused; the running guest stays: {error}");
            json(StatusCode::UNPROCESSABLE_ENTITY, serde_json::json!({ "error": error.to_string() }))
        }
        Err(_panicked) => {
            json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": "loading the guest failed" }))
        }
    }
}

fn guest_info(active: &ActiveGuest) -> serde_json::Value {
    let (generation, guest) = active.current();
    let loaded_at_ms = guest.loaded_at().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    serde_json::json!({
        "name": guest.name(),
        "sha256": guest.sha256(),
        "loaded_at_ms": loaded_at_ms,
        "generation": generation,
        "stats": guest.stats().snapshot(),
    })
}

fn json(status: StatusCode, value: serde_json::Value) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
