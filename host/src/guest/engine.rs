//! The one wasmtime [`Engine`] of a process and the epoch ticker that enforces call deadlines.
//!
//! Every guest a process loads (the first, each swap, the built-in fallback) is compiled by the
//! same engine, so they share its code cache and one ticker thread. The ticker stops when the last
//! clone of the [`GuestEngine`] (held by each loaded guest) is dropped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

use super::{GuestError, GuestModule, DEFAULT_GUEST};
use crate::config::{FilterSettings, GuestConfig};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Compiles guests; cheap to clone, one per process.
#[derive(Clone)]
pub struct GuestEngine(Arc<Shared>);

struct Shared {
    engine: Engine,
    _ticker: EpochTicker,
}

impl GuestEngine {
    /// An engine with epoch interruption, and its ticker thread.
    ///
    /// The component model's async ABI stays off (wasmtime's `component-model-async` feature is
    /// not built in): it needs `async_support`, under which every call must be async, while the
    /// guest workers call synchronously on their own threads. A component that uses it is refused
    /// at load ([`GuestError::NeedsAsync`]).
    pub fn new() -> Result<GuestEngine, GuestError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| GuestError::Load { guest: "(engine)".into(), message: format!("{e:#}") })?;
        Ok(GuestEngine(Arc::new(Shared { _ticker: EpochTicker::start(engine.clone()), engine })))
    }

    /// Reads a component file, or takes the built-in guest when `path` is `None`, and configures
    /// it (see [`GuestEngine::from_bytes`]).
    pub fn load(
        &self,
        path: Option<&Path>,
        guest: &GuestConfig,
        filter: &FilterSettings,
    ) -> Result<GuestModule, GuestError> {
        match path {
            Some(path) => {
                let bytes =
                    std::fs::read(path).map_err(|source| GuestError::Read { path: path.to_path_buf(), source })?;
                self.from_bytes(&path.display().to_string(), &bytes, guest, filter)
            }
            None => self.from_bytes("builtin:nanomq", DEFAULT_GUEST, guest, filter),
        }
    }

    /// Compiles (or takes from `guest.cache_dir`) and links a component, then checks that it
    /// accepts the configuration by building one instance.
    pub fn from_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        guest: &GuestConfig,
        filter: &FilterSettings,
    ) -> Result<GuestModule, GuestError> {
        GuestModule::compile(self.clone(), name, bytes, guest, filter)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.0.engine
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`]; stopped and joined on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mqhook-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
