//! The one wasmtime [`Engine`] of a process and the epoch ticker that enforces call deadlines.
//!
//! Every guest a process loads (the first, each swap, the built-in fallback) is compiled by the
//! same engine, so they share its code cache and one ticker thread. The ticker stops when the last
//! clone of the [`GuestEngine`] (held by each loaded guest) is dropped.
//!
//! A call's deadline is an [`Instant`] in its store; each epoch tick makes the running calls
//! compare it with the clock ([`Deadline::callback`]), so the tick sets only how late past its
//! deadline a call may be stopped, not the deadline. The tick is an eighth of the shortest
//! `guest.timeout` (5 ms to 1 s; 125 ms by default): a busy process wakes 8 times a second for
//! the ticker, not 200. The ticker ticks only while calls run or start: it parks after a tick in
//! which none ran or started, and the next call wakes it ([`GuestEngine::calling`]). Counting
//! starts, not only running calls, matters at everyday rates: calls of a few µs are rarely running
//! when a tick looks, and a ticker parked on that would be woken by every call (a futex wake on
//! the calling thread) only to park again. So it ticks on, and a call pays three atomic operations.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Engine, StoreContextMut, UpdateDeadline};

use super::{GuestError, GuestModule, DEFAULT_GUEST};
use crate::config::{FilterSettings, GuestConfig};

/// The shortest tick: a call with a timeout below 40 ms may run up to this long past it.
const MIN_TICK: Duration = Duration::from_millis(5);

/// The longest tick, that of an engine no guest has been configured on yet.
const MAX_TICK: Duration = Duration::from_secs(1);

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

    /// Makes the tick short enough for calls capped at `timeout`: an eighth of it, within
    /// [`MIN_TICK`]..=[`MAX_TICK`]. The tick only ever shortens, so a guest configured earlier
    /// keeps its precision after a swap to a longer timeout.
    pub(crate) fn tick_for(&self, timeout: Duration) {
        let tick = (timeout / 8).clamp(MIN_TICK, MAX_TICK);
        let nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        self.0.ticker.state.tick_nanos.fetch_min(nanos, Ordering::Relaxed);
    }

    /// Marks a guest call (or instantiation) as running until the guard is dropped, so that the
    /// epoch advances and its deadline can pass.
    pub(crate) fn calling(&self) -> Calling<'_> {
        let state = &self.0.ticker.state;
        state.calls.fetch_add(1, Ordering::SeqCst);
        state.started.fetch_add(1, Ordering::SeqCst);
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

/// When a store's running call must stop; set before each call, checked on each epoch tick.
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from `now` (no deadline if that is past what the clock can hold).
    pub(crate) fn after(now: Instant, timeout: Duration) -> Deadline {
        Deadline(now.checked_add(timeout))
    }

    /// What the store does on an epoch tick: stop the call once past its deadline, else go on
    /// until the next tick. Give it to `Store::epoch_deadline_callback` with
    /// `set_epoch_deadline(1)`.
    pub(crate) fn callback<T>(
        deadline: impl Fn(&T) -> &Deadline + Send + Sync + 'static,
    ) -> impl FnMut(StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static {
        move |store| {
            Ok(match deadline(store.data()).0 {
                Some(at) if Instant::now() >= at => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Continue(1),
            })
        }
    }
}

/// What the ticker and the calls share.
struct TickerState {
    stop: AtomicBool,
    /// Calls running now.
    calls: AtomicUsize,
    /// Calls started so far: one that started and ended between two looks still counts.
    started: AtomicU64,
    /// The tick, nanoseconds (see [`GuestEngine::tick_for`]).
    tick_nanos: AtomicU64,
    /// The ticker waits on `wake` for a call (or is about to).
    parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Advances the engine's epoch one tick after a call started, and each tick after while calls
/// run; stopped and joined on drop.
struct EpochTicker {
    state: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let state = Arc::new(TickerState {
            stop: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            tick_nanos: AtomicU64::new(u64::try_from(MAX_TICK.as_nanos()).unwrap_or(u64::MAX)),
            parked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("mqhook-epoch".into())
            .spawn(move || {
                let mut seen = 0;
                while park(&shared, &mut seen) {
                    sleep_one_tick(&shared);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { state, thread: Some(thread) }
    }
}

/// Returns at once when a call runs or has started since `seen` (the count of started calls the
/// last return saw, which it updates), else waits until one does; `false` once the ticker is
/// stopped. A call raises `calls` and `started` before it reads `parked`, and the ticker raises
/// `parked` before it reads them (and waits under the lock that the call's notification takes),
/// so no call goes unseen.
fn park(state: &TickerState, seen: &mut u64) -> bool {
    let idle = |seen: u64| state.calls.load(Ordering::SeqCst) == 0 && state.started.load(Ordering::SeqCst) == seen;
    if idle(*seen) {
        let mut lock = state.lock.lock().unwrap_or_else(PoisonError::into_inner);
        state.parked.store(true, Ordering::SeqCst);
        while idle(*seen) && !state.stop.load(Ordering::SeqCst) {
            lock = state.wake.wait(lock).unwrap_or_else(PoisonError::into_inner);
        }
        state.parked.store(false, Ordering::SeqCst);
    }
    *seen = state.started.load(Ordering::SeqCst);
    !state.stop.load(Ordering::SeqCst)
}

/// Sleeps one tick, or less when the ticker is stopped meanwhile.
fn sleep_one_tick(state: &TickerState) {
    let tick = Duration::from_nanos(state.tick_nanos.load(Ordering::Relaxed));
    let lock = state.lock.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = state.wake.wait_timeout_while(lock, tick, |_| !state.stop.load(Ordering::SeqCst));
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        {
            let _lock = self.state.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.state.wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::AsContextMut;

    use super::*;

    /// Waits, bounded (a few of the longest ticks), until the ticker's `parked` flag is `parked`.
    fn wait_parked(engine: &GuestEngine, parked: bool) {
        let state = &engine.0.ticker.state;
        let give_up = Instant::now() + 5 * MAX_TICK;
        while state.parked.load(Ordering::SeqCst) != parked {
            assert!(Instant::now() < give_up, "the ticker's parked flag never became {parked}");
            std::thread::sleep(MIN_TICK);
        }
    }

    #[test]
    fn the_ticker_parks_when_no_call_runs_and_a_call_wakes_it() {
        let engine = GuestEngine::new().unwrap();
        engine.tick_for(Duration::from_millis(80));
        wait_parked(&engine, true);
        let calling = engine.calling();
        wait_parked(&engine, false);
        drop(calling);
        wait_parked(&engine, true);
        // Dropping the engine stops a parked ticker too (the test would hang otherwise).
        drop(engine);
    }

    /// A call over before the ticker woke still makes it tick (it used to find no call running
    /// and park again at once, to be woken by the next call, and the next).
    #[test]
    fn a_call_that_ended_before_the_ticker_woke_makes_it_tick_once() {
        let engine = GuestEngine::new().unwrap();
        // A 100 ms tick: unparked for a whole tick, long enough for the flag to be seen.
        engine.tick_for(Duration::from_millis(800));
        wait_parked(&engine, true);
        drop(engine.calling());
        wait_parked(&engine, false);
        wait_parked(&engine, true);
    }

    #[test]
    fn the_tick_is_an_eighth_of_the_shortest_timeout_within_bounds() {
        let engine = GuestEngine::new().unwrap();
        let tick = || Duration::from_nanos(engine.0.ticker.state.tick_nanos.load(Ordering::Relaxed));
        assert_eq!(tick(), MAX_TICK);
        engine.tick_for(Duration::from_secs(600));
        assert_eq!(tick(), MAX_TICK);
        engine.tick_for(Duration::from_secs(1));
        assert_eq!(tick(), Duration::from_millis(125));
        engine.tick_for(Duration::from_secs(2));
        assert_eq!(tick(), Duration::from_millis(125), "a longer timeout keeps the shorter tick");
        engine.tick_for(Duration::from_millis(1));
        assert_eq!(tick(), MIN_TICK);
    }

    /// A store stops at its deadline and not before: the callback compares the clock on each
    /// tick, so the tick is how late, never how early.
    #[test]
    fn a_tick_stops_a_call_only_past_its_deadline() {
        let now = Instant::now();
        let mut callback = Deadline::callback(|deadline: &Deadline| deadline);
        let engine = Engine::default();
        let mut store = wasmtime::Store::new(&engine, Deadline::after(now, Duration::from_secs(60)));
        assert!(matches!(callback(store.as_context_mut()).unwrap(), UpdateDeadline::Continue(1)));
        *store.data_mut() = Deadline::after(now, Duration::ZERO);
        assert!(matches!(callback(store.as_context_mut()).unwrap(), UpdateDeadline::Interrupt));
        *store.data_mut() = Deadline::after(now, Duration::MAX);
        assert!(matches!(callback(store.as_context_mut()).unwrap(), UpdateDeadline::Continue(1)), "no deadline");
    }
}
