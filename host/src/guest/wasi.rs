//! The WASI context every guest instance gets: no capabilities at all.
//!
//! No preopened directories, no environment, no arguments, no network (TCP, UDP and name lookup
//! off, every address refused), stdin closed, stdout discarded, and clocks frozen at zero: the host
//! stamps every time a guest needs into the event itself. Stderr is routed into the host's log one
//! line at a time, tagged with the guest's name, so a guest's `eprintln!` and panic messages show up
//! there and nowhere else.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// A WASI context granting nothing; stderr goes to the log under `guest`.
pub(crate) fn capability_free(guest: Arc<str>) -> WasiCtx {
    WasiCtxBuilder::new()
        .stderr(GuestStderr { guest })
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// A clock that always reads zero: guests get no time source of their own.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Longest line kept from a guest; the rest is cut so a hostile guest cannot flood the log.
const MAX_LINE: usize = 4096;

/// The stderr handed to every guest instance.
#[derive(Clone)]
struct GuestStderr {
    guest: Arc<str>,
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
    guest: Arc<str>,
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
