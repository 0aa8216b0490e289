//! The dead-letter file: requests that failed for good, kept as NDJSON for `mqhook replay`.
//!
//! One line per request: its event's `action`, the guest's `path` and `headers`, the `body` (as text
//! when it is UTF-8, else `body_base64`), and why it failed (`status`, `error`, `attempts`). The
//! configured headers are not written — they may hold credentials — and are added again on replay.
//! Lines are appended whole and flushed one by one, so a crash loses at most the line being written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::DeliveryError;
use crate::event::EventKind;
use crate::request::Request;

/// One dead letter, as written and as read back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event's action, e.g. `message_publish`.
    pub action: String,
    /// The path the guest chose, if any.
    pub path: Option<String>,
    /// The headers the guest added.
    pub headers: Vec<(String, String)>,
    /// The body, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body: Option<String>,
    /// The body, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body_base64: Option<String>,
    /// The last HTTP status, if the endpoint answered.
    pub status: Option<u16>,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The idempotency key it was sent with; a replay sends it again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub idempotency_key: Option<String>,
}

/// Why a dead letter cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The file cannot be opened.
    #[error("cannot open the dead-letter file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a dead letter.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl DeadLetter {
    fn new(request: &Request, status: Option<u16>, error: String, attempts: u32) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&request.body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&request.body))),
        };
        DeadLetter {
            action: request.kind.action().to_string(),
            path: request.path.clone(),
            headers: request
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                .collect(),
            body,
            body_base64,
            status,
            error,
            attempts,
            idempotency_key: request.idempotency_key.clone(),
        }
    }

    /// The request to send again.
    pub fn to_request(&self) -> Result<Request, String> {
        let kind: EventKind = self.action.parse().map_err(|e| format!("{e}"))?;
        let body = match (&self.body, &self.body_base64) {
            (Some(text), None) => Bytes::from(text.clone()),
            (None, Some(encoded)) => Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("body_base64: {e}"))?,
            ),
            _ => return Err("give `body` or `body_base64`".into()),
        };
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let name =
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
                let value = http::HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Request {
            kind,
            body,
            headers,
            path: self.path.clone(),
            client: None,
            idempotency_key: self.idempotency_key.clone(),
            received_at: None,
        })
    }
}

/// An open dead-letter file, appended to.
pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<File>,
}

impl DeadLetters {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path) -> Result<Self, DeadLetterError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| DeadLetterError::Open { path: path.to_path_buf(), source })?;
        Ok(DeadLetters { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    /// Appends a request that failed for good. A write error is logged: the failure itself is
    /// already counted.
    pub(crate) fn record(&self, request: &Request, error: &DeliveryError, attempts: u32) {
        let status = error.status().map(|status| status.as_u16());
        self.append(&DeadLetter::new(request, status, error.to_string(), attempts));
    }

    /// Appends a request never attempted because the guest failed on its event (`request` is the
    /// built-in guest's body for it); `error` is the guest's failure.
    pub(crate) fn record_unsent(&self, request: &Request, error: &str) {
        self.append(&DeadLetter::new(request, None, error.to_string(), 0));
    }

    fn append(&self, letter: &DeadLetter) {
        let mut line = serde_json::to_vec(letter).expect("a dead letter serialises");
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!("Cannot write to the dead-letter file {}: {error}.", self.path.display());
        }
    }
}

/// Reads every dead letter of `text`.
pub fn parse(text: &str) -> Result<Vec<DeadLetter>, DeadLetterError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map_err(|e| DeadLetterError::Malformed { line: index + 1, message: e.to_string() })
        })
        .collect()
}
