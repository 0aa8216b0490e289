//! The guest runtime: compiles a filter component once and runs it sandboxed, one instance per worker.
//!
//! Receives [`Event`]s, hands back [`Request`]s (or nothing, when the guest filters the event out).
//! Following wasmtime's own hosting pattern: one [`Engine`], the component compiled once, an
//! `InstancePre` linked once, then a fresh `Store` + instance per worker ([`GuestModule::instance`]).
//!
//! The sandbox: WASI with no capabilities ([`wasi`]: no files, network, environment or clock;
//! stderr goes to the host log), linear memory capped by a [`StoreLimits`], and every
//! call time-capped by an epoch deadline driven by one ticker thread. A trap or timeout costs only
//! the event that caused it: the instance is dropped and the next event gets a fresh one.

mod bindings;
mod cache;
mod convert;
mod slot;
mod stats;
mod wasi;

pub use cache::default_dir as default_cache_dir;
pub use slot::GuestSlot;
pub use stats::{GuestStats, GuestStatsSnapshot};
use stats::CallOutcome;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::bindings::{log, wit, Filter, FilterPre};
use crate::config::Config;
use crate::delivery::Request;
use crate::event::Event;

/// The built-in NanoMQ-compatible guest, compiled to a component by the build script.
pub const DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mqhook_guest_builtin.wasm"));

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a guest could not be loaded or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The file could not be read.
    #[error("cannot read guest {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a component of the `mqhook:filter/filter` world.
    #[error("guest {guest} is not a valid mqhook filter component: {message}")]
    Load {
        /// Guest name.
        guest: String,
        /// What wasmtime said.
        message: String,
    },
    /// `configure` returned an error.
    #[error("guest {guest} rejected the configuration: {message}")]
    Rejected {
        /// Guest name.
        guest: String,
        /// The guest's message.
        message: String,
    },
    /// A call trapped (panic, out of memory, bad memory access…).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// A call ran past its deadline.
    #[error("guest call exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// The guest returned a delivery the host cannot send.
    #[error("guest returned an invalid delivery: {0}")]
    InvalidDelivery(String),
}

/// A compiled guest and the configuration its instances get, ready to instantiate.
pub struct GuestModule {
    compiled: Arc<Compiled>,
    filter_config: wit::FilterConfig,
    memory_limit: usize,
    max_body: usize,
    timeout: Duration,
    deadline_ticks: u64,
    rollback_after: u64,
    stats: Arc<GuestStats>,
}

/// What compiling and linking a component produced; shared by every configuration of it.
struct Compiled {
    name: Arc<str>,
    /// SHA-256 of the component's bytes, hex.
    sha256: String,
    /// When it was loaded.
    loaded_at: SystemTime,
    /// Whether it came from the precompiled cache rather than the compiler.
    from_cache: bool,
    engine: Engine,
    pre: FilterPre<HostState>,
    _ticker: EpochTicker,
}

impl GuestModule {
    /// Reads a component file, or takes the built-in guest when `path` is `None`.
    pub fn load(path: Option<&Path>, config: &Config) -> Result<GuestModule, GuestError> {
        match path {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| GuestError::Read { path: path.to_path_buf(), source })?;
                GuestModule::from_bytes(&path.display().to_string(), &bytes, config)
            }
            None => GuestModule::from_bytes("builtin:nanomq", DEFAULT_GUEST, config),
        }
    }

    /// Compiles and links a component, then checks it accepts `config` by building one instance.
    pub fn from_bytes(name: &str, bytes: &[u8], config: &Config) -> Result<GuestModule, GuestError> {
        let load_error = |e: wasmtime::Error| GuestError::Load { guest: name.to_string(), message: format!("{e:#}") };
        let mut engine_config = wasmtime::Config::new();
        engine_config.epoch_interruption(true);
        let engine = Engine::new(&engine_config).map_err(load_error)?;
        let sha256: String = Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect();
        let cache = config.guest.cache_dir.as_deref().and_then(cache::ComponentCache::new);
        let cached = cache.as_ref().and_then(|cache| cache.load(&engine, &sha256));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(&engine, bytes).map_err(load_error)?;
                if let Some(cache) = &cache {
                    cache.store(&engine, &sha256, &component);
                }
                component
            }
        };
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(load_error)?;
        Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state).map_err(load_error)?;
        let pre = FilterPre::new(linker.instantiate_pre(&component).map_err(load_error)?).map_err(load_error)?;
        let compiled = Compiled {
            name: name.into(),
            sha256,
            loaded_at: SystemTime::now(),
            from_cache,
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            pre,
        };
        GuestModule::configured(Arc::new(compiled), config)
    }

    /// The same compiled guest with another configuration (rules, encoding, limits), checked by
    /// building one instance. Compiling is the slow part; this skips it.
    pub fn with_config(&self, config: &Config) -> Result<GuestModule, GuestError> {
        GuestModule::configured(self.compiled.clone(), config)
    }

    fn configured(compiled: Arc<Compiled>, config: &Config) -> Result<GuestModule, GuestError> {
        let timeout = config.guest.timeout;
        let module = GuestModule {
            compiled,
            filter_config: convert::filter_config(config),
            memory_limit: usize::try_from(config.guest.memory_limit).unwrap_or(usize::MAX),
            max_body: usize::try_from(config.guest.max_body).unwrap_or(usize::MAX),
            timeout,
            // One extra tick because the first may arrive at once.
            deadline_ticks: timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1,
            rollback_after: config.guest.rollback_after,
            stats: Arc::default(),
        };
        module.instance()?;
        Ok(module)
    }

    /// The guest's name in logs: its file path, or `builtin:nanomq`.
    pub fn name(&self) -> &str {
        &self.compiled.name
    }

    /// What this guest version did so far.
    pub fn stats(&self) -> &GuestStats {
        &self.stats
    }

    /// Whether this version, if it was swapped in, has failed often enough in a row to be rolled
    /// back (`guest.rollback_after`).
    pub fn should_roll_back(&self) -> bool {
        self.stats.failing_streak() >= self.rollback_after
    }

    /// SHA-256 of the component, hex.
    pub fn sha256(&self) -> &str {
        &self.compiled.sha256
    }

    /// When the component was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.compiled.loaded_at
    }

    /// Whether the component came precompiled from the cache (`guest.cache_dir`).
    pub fn from_cache(&self) -> bool {
        self.compiled.from_cache
    }

    /// A fresh instance in its own store, configured and ready for events.
    pub fn instance(&self) -> Result<GuestInstance, GuestError> {
        let name = self.compiled.name.clone();
        let wasi = wasi::capability_free(name.clone());
        let limits = StoreLimitsBuilder::new().memory_size(self.memory_limit).instances(16).build();
        let state = HostState { guest: name.clone(), wasi, table: ResourceTable::new(), limits };
        let mut store = Store::new(&self.compiled.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        let filter = self.compiled.pre.instantiate(&mut store).map_err(|e| classify(e, self.timeout))?;
        store.set_epoch_deadline(self.deadline_ticks);
        match filter.call_configure(&mut store, &self.filter_config) {
            Ok(Ok(())) => Ok(GuestInstance {
                store,
                filter,
                deadline_ticks: self.deadline_ticks,
                timeout: self.timeout,
                max_body: self.max_body,
                stats: self.stats.clone(),
            }),
            Ok(Err(message)) => Err(GuestError::Rejected { guest: name.to_string(), message }),
            Err(e) => Err(classify(e, self.timeout)),
        }
    }
}

/// Names what went wrong in one line; the wasm backtrace goes to the debug log.
fn classify(error: wasmtime::Error, timeout: Duration) -> GuestError {
    tracing::debug!("Guest call failed: {error:?}");
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => GuestError::Timeout(timeout),
        Some(trap) => GuestError::Trap(trap.to_string()),
        None => GuestError::Trap(format!("{error:#}").replace('\n', " ")),
    }
}

/// One live guest instance, owned by one worker.
pub struct GuestInstance {
    store: Store<HostState>,
    filter: Filter,
    deadline_ticks: u64,
    timeout: Duration,
    max_body: usize,
    stats: Arc<GuestStats>,
}

impl GuestInstance {
    /// Runs the guest on one event. On `Err` the instance must be dropped: after a trap the
    /// component model forbids entering it again.
    pub fn handle(&mut self, event: Event) -> Result<Option<Request>, GuestError> {
        let kind = event.kind();
        let event = convert::event(event);
        self.store.set_epoch_deadline(self.deadline_ticks);
        let started = std::time::Instant::now();
        let called = self.filter.call_handle(&mut self.store, &event);
        let took = started.elapsed();
        let result = match called {
            Ok(None) => Ok(None),
            Ok(Some(delivery)) if delivery.body.len() > self.max_body => Err(GuestError::InvalidDelivery(format!(
                "a body of {} bytes is over the cap of {} (guest.max_body)",
                delivery.body.len(),
                self.max_body
            ))),
            Ok(Some(delivery)) => convert::request(kind, delivery).map(Some),
            Err(e) => {
                let error = classify(e, self.timeout);
                tracing::warn!(
                    guest = %self.store.data().guest,
                    action = kind.action(),
                    topic = convert::topic(&event).unwrap_or(""),
                    "Guest call failed, the event is dropped and the instance rebuilt: {error}."
                );
                Err(error)
            }
        };
        let outcome = match &result {
            Ok(None) => CallOutcome::Filtered,
            Ok(Some(_)) => CallOutcome::Delivered,
            Err(GuestError::Timeout(_)) => CallOutcome::TimedOut,
            Err(GuestError::InvalidDelivery(_)) => CallOutcome::Invalid,
            Err(_) => CallOutcome::Trapped,
        };
        self.stats.record(outcome, took);
        result
    }
}

/// What each store holds: WASI state with no capabilities, the memory cap, the guest's name.
struct HostState {
    guest: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let guest = &*self.guest;
        match level {
            log::Level::Trace => tracing::trace!(guest, "{message}"),
            log::Level::Debug => tracing::debug!(guest, "{message}"),
            log::Level::Info => tracing::info!(guest, "{message}"),
            log::Level::Warn => tracing::warn!(guest, "{message}"),
            log::Level::Error => tracing::error!(guest, "{message}"),
        }
    }
}

impl wit::Host for HostState {}

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
