//! The one wasmtime [`Engine`] of a process and the epoch ticker that enforces call deadlines.
//!
//! Every guest a process loads (the first, each swap, the built-in fallback) is compiled by the
//! same engine, so they share its code cache and one ticker thread. The ticker stops when the last
//! clone of the [`GuestEngine`] (held by each loaded guest) is dropped.
//!
//! Deadlines only matter while a call runs, so the ticker parks once no call has run for
//! [`IDLE_TICKS`] ticks, and the next call wakes it ([`GuestEngine::calling`]): an idle process does
//! not wake 200 times a second, and a busy one never parks, so a call pays two atomic adds.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

use super::{GuestError, GuestModule, DEFAULT_GUEST};
use crate::config::{FilterSettings, GuestConfig};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks without a call after which the ticker parks (100 ms).
const IDLE_TICKS: u32 = 20;

/// Compiles guests; cheap to clone, one per process.
#[derive(Clone)]
pub struct GuestEngine(Arc<Shared>);

struct Shared {
    engine: Engine,
    ticker: EpochTicker,
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
        Ok(GuestEngine(Arc::new(Shared { ticker: EpochTicker::start(engine.clone()), engine })))
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

    /// Marks a guest call (or instantiation) as running until the guard is dropped, so that the
    /// epoch advances and its deadline can pass.
    pub(crate) fn calling(&self) -> Calling<'_> {
        let state = &self.0.ticker.state;
        state.calls.fetch_add(1, Ordering::SeqCst);
        if state.parked.load(Ordering::SeqCst) {
            let _lock = state.lock.lock().unwrap_or_else(PoisonError::into_inner);
            state.wake.notify_one();
        }
        Calling(state)
    }
}

/// A running call, for the ticker; see [`GuestEngine::calling`].
pub(crate) struct Calling<'a>(&'a TickerState);

impl Drop for Calling<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the ticker and the calls share.
#[derive(Default)]
struct TickerState {
    stop: AtomicBool,
    /// Calls running now.
    calls: AtomicUsize,
    /// The ticker waits on `wake` (or is about to).
    parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while calls run (and for [`IDLE_TICKS`]
/// after); stopped and joined on drop.
struct EpochTicker {
    state: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let state = Arc::new(TickerState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("mqhook-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !shared.stop.load(Ordering::SeqCst) {
                    if idle >= IDLE_TICKS {
                        park(&shared);
                        idle = 0;
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    idle = if shared.calls.load(Ordering::SeqCst) == 0 { idle + 1 } else { 0 };
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { state, thread: Some(thread) }
    }
}

/// Waits until a call starts or the ticker is stopped. A call raises `calls` before it reads
/// `parked`, and the ticker raises `parked` before it reads `calls` (and waits under the lock
/// that the call's notification takes), so no call goes unseen.
fn park(state: &TickerState) {
    let mut lock = state.lock.lock().unwrap_or_else(PoisonError::into_inner);
    state.parked.store(true, Ordering::SeqCst);
    while state.calls.load(Ordering::SeqCst) == 0 && !state.stop.load(Ordering::SeqCst) {
        lock = state.wake.wait(lock).unwrap_or_else(PoisonError::into_inner);
    }
    state.parked.store(false, Ordering::SeqCst);
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        {
            let _lock = self.state.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.state.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits, bounded, until the ticker's `parked` flag is `parked`.
    fn wait_parked(engine: &GuestEngine, parked: bool) {
        let state = &engine.0.ticker.state;
        for _ in 0..400 {
            if state.parked.load(Ordering::SeqCst) == parked {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        }
        panic!("the ticker's parked flag never became {parked}");
    }

    #[test]
    fn the_ticker_parks_when_no_call_runs_and_a_call_wakes_it() {
        let engine = GuestEngine::new().unwrap();
        wait_parked(&engine, true);
        let calling = engine.calling();
        wait_parked(&engine, false);
        drop(calling);
        wait_parked(&engine, true);
        // Dropping the engine stops a parked ticker too (the test would hang otherwise).
        drop(engine);
    }
}
