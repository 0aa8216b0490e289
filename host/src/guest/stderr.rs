//! Guest stderr, routed into the host's log one line at a time.
//!
//! WASI gives the guest a stderr stream; ours writes nowhere but `tracing`, tagged with the guest's
//! name, so a guest's `eprintln!` and panic messages show up in the host log and nowhere else.

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept from a guest; the rest is cut so a hostile guest cannot flood the log.
const MAX_LINE: usize = 4096;

/// The stderr handed to every guest instance.
#[derive(Clone)]
pub(crate) struct GuestStderr {
    pub guest: std::sync::Arc<str>,
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger { guest: self.guest.clone(), pending: Vec::new() })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this path; the filter world is WASIp2.
        Box::new(tokio::io::sink())
    }
}

struct LineLogger {
    guest: std::sync::Arc<str>,
    pending: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        tracing::warn!(guest = %self.guest, "guest stderr: {}", text.trim_end());
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.pending.extend_from_slice(&bytes);
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            self.emit(&line);
        }
        if self.pending.len() > MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}
