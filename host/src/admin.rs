//! The admin listener: a small HTTP API on its own loopback address for swapping the guest and
//! reading the counters.
//!
//! - `GET /guest`: the running guest as JSON — name, SHA-256, load time (ms), generation, and its
//!   counters (calls, filtered, delivered, traps, timeouts, invalid deliveries, mean time per call);
//! - `PUT /guest` with a component as the body: compiles it, checks its world, runs its `configure`
//!   with the running configuration, and swaps it in; `422` with the reason (and the old guest still
//!   running) when any of that fails;
//! - `GET /metrics`: the pipeline's counters as JSON (the fields of the end-of-run summary).
//!
//! It only ever binds loopback addresses: uploading a guest means running code in the host. Its
//! use of the process is bounded: [`MAX_CONNECTIONS`] at once (more are closed as they arrive),
//! a request head within [`HEADER_TIMEOUT`], a connection within [`CONNECTION_TIMEOUT`], a body
//! of at most [`MAX_UPLOAD`].

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::config::Config;
use crate::guest::{ActiveGuest, GuestError};
use crate::metrics::Metrics;

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

/// A bound admin listener.
pub struct Admin {
    listener: TcpListener,
    active: ActiveGuest,
    metrics: Arc<Metrics>,
}

impl Admin {
    /// Binds `addr`, which must be loopback.
    pub async fn bind(addr: SocketAddr, active: ActiveGuest, metrics: Arc<Metrics>) -> Result<Admin, AdminError> {
        if !addr.ip().is_loopback() {
            return Err(AdminError::NotLoopback(addr));
        }
        let listener = TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Admin { listener, active, metrics })
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
            let (active, metrics) = (self.active.clone(), self.metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(request, active.clone(), metrics.clone()));
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

async fn handle(
    request: http::Request<Incoming>,
    active: ActiveGuest,
    metrics: Arc<Metrics>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => json(StatusCode::OK, serde_json::json!(metrics.snapshot())),
        (&Method::GET, "/guest") => json(StatusCode::OK, guest_info(&active)),
        (&Method::PUT, "/guest") if declared_length(&request).is_some_and(|length| length > MAX_UPLOAD as u64) => {
            // Refused before a byte of it is read.
            let message = format!("a guest is at most {MAX_UPLOAD} bytes");
            json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": message }))
        }
        (&Method::PUT, "/guest") => match Limited::new(request.into_body(), MAX_UPLOAD).collect().await {
            Ok(body) => upload(&active, body.to_bytes()).await,
            Err(error) => json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": error.to_string() })),
        },
        (_, "/guest") => json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({ "error": "use GET or PUT" })),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "the admin API has GET and PUT /guest, GET /metrics" }),
        ),
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
