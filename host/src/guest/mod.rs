//! The guest runtime: compiles a filter component once and runs it sandboxed, one instance per worker.
//!
//! - **Receives** [`Event`]s from the runtime's guest workers.
//! - **Owns** the engine ([`GuestEngine`], one per process), the compiled guests
//!   ([`GuestModule`]), their instances ([`GuestInstance`]), and which guest runs now
//!   ([`ActiveGuest`]: swaps, the rollback, the built-in fallback).
//! - **Hands on** one [`GuestDelivery`] per event the guest wants delivered: the [`Request`],
//!   built here, once, from the guest's delivery, and the named endpoint it chose (or nothing,
//!   when the guest filters the event out).
//!
//! Events go in as a [`Batch`], converted to WIT types once, and through one `handle-batch` call;
//! when that call fails, each event is given to `handle` on fresh instances, so that a trap still
//! costs only the event that causes it.
//!
//! Following wasmtime's own hosting pattern: the component compiled once, an `InstancePre` linked
//! once, then a fresh `Store` + instance per worker ([`GuestModule::instance`]).
//!
//! The sandbox: WASI with no capabilities ([`wasi`]: no files, network, environment or clock;
//! stderr goes to the host log), linear memory capped by a [`StoreLimits`], and every
//! call time-capped by an epoch deadline driven by one ticker thread. A trap or timeout costs only
//! the event that caused it: the instance is dropped and the next event gets a fresh one.

mod active;
mod bindings;
mod cache;
mod convert;
mod engine;
mod stats;
mod wasi;

pub use active::ActiveGuest;
pub use engine::GuestEngine;
use stats::CallOutcome;
pub use stats::{GuestStats, GuestStatsSnapshot};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mqhook_guest_nanomq as nanomq;
use nanomq::encoding::{BASE62_MAX_INPUT, ENCODING_MAX_INPUT};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::bindings::{encoding, log, wit, Filter, FilterPre, WIT_VERSION};
use self::engine::Deadline;
use crate::config::{FilterSettings, GuestConfig};
use crate::event::{Event, EventKind};
use crate::request::Request;

/// The built-in NanoMQ-compatible guest, compiled to a component by the build script.
pub const DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mqhook_guest_builtin.wasm"));

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
    /// The component was built against another version of the WIT package.
    #[error(
        "guest {guest} was built against mqhook:filter@{built_for}, and this host runs \
         mqhook:filter@{runs} guests: rebuild it against wit/mqhook.wit (guest/README.md, \
         \"Moving a guest from 0.1.0\")"
    )]
    WitVersion {
        /// Guest name.
        guest: String,
        /// The version the guest imports.
        built_for: String,
        /// The version this host runs.
        runs: &'static str,
    },
    /// The bytes are not a component of the `mqhook:filter/filter` world.
    #[error("guest {guest} is not a valid mqhook filter component: {message}")]
    Load {
        /// Guest name.
        guest: String,
        /// What wasmtime said.
        message: String,
    },
    /// The component uses the component model's async ABI (componentize-qjs builds that by
    /// default), which this host does not run: its calls are synchronous.
    #[error(
        "guest {guest} uses the component model's async ABI, which mqhook does not run: build it \
         with synchronous exports (componentize-qjs: `--sync`): {message}"
    )]
    NeedsAsync {
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
    /// The guest asked for more memory than `guest.memory_limit` allows, was refused, and trapped.
    #[error("guest trapped after reaching its memory limit of {limit} bytes (guest.memory_limit): {message}")]
    MemoryLimit {
        /// The cap, bytes.
        limit: usize,
        /// The trap.
        message: String,
    },
    /// Instantiating the component needed more core instances than `guest.max_instances` allows.
    #[error(
        "guest needs more core wasm instances than guest.max_instances = {limit} allows \
         (Rust guests need 3, componentize-qjs 9, componentize-py 14, or 38 with --stub-wasi): {message}"
    )]
    InstanceLimit {
        /// The cap.
        limit: usize,
        /// What wasmtime said.
        message: String,
    },
    /// The guest returned a delivery the host cannot send.
    #[error("guest returned an invalid delivery: {0}")]
    InvalidDelivery(String),
}

/// A compiled guest and the configuration its instances get, ready to instantiate.
pub struct GuestModule {
    compiled: Arc<Compiled>,
    filter_config: wit::FilterConfig,
    /// Payload bytes one `handle-batch` call is given at most.
    batch_bytes: usize,
    /// The named endpoints' names, which a delivery may choose from.
    endpoints: Arc<[String]>,
    memory_limit: usize,
    max_instances: usize,
    max_body: usize,
    timeout: Duration,
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
    engine: GuestEngine,
    pre: FilterPre<HostState>,
}

impl GuestModule {
    fn compile(
        engine: GuestEngine,
        name: &str,
        bytes: &[u8],
        guest: &GuestConfig,
        filter: &FilterSettings,
    ) -> Result<GuestModule, GuestError> {
        let load_error = |e: wasmtime::Error| GuestError::Load { guest: name.to_string(), message: format!("{e:#}") };
        let wasmtime_engine = engine.engine();
        let sha256: String = Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect();
        let cache = guest.cache_dir.as_deref().and_then(cache::ComponentCache::new);
        let cached = cache.as_ref().and_then(|cache| cache.load(wasmtime_engine, &sha256));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(wasmtime_engine, bytes).map_err(|e| {
                    // The validator names the feature only in its message.
                    let message = format!("{e:#}");
                    if message.contains("requires the component model async feature") {
                        return GuestError::NeedsAsync { guest: name.to_string(), message };
                    }
                    load_error(e)
                })?;
                if let Some(cache) = &cache {
                    cache.store(wasmtime_engine, &sha256, &component);
                }
                component
            }
        };
        if let Some(built_for) = foreign_wit_version(wasmtime_engine, &component) {
            return Err(GuestError::WitVersion { guest: name.to_string(), built_for, runs: WIT_VERSION });
        }
        let mut linker = Linker::<HostState>::new(wasmtime_engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(load_error)?;
        Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state).map_err(load_error)?;
        let pre = FilterPre::new(linker.instantiate_pre(&component).map_err(load_error)?).map_err(load_error)?;
        let compiled = Compiled { name: name.into(), sha256, loaded_at: SystemTime::now(), from_cache, engine, pre };
        GuestModule::configured(Arc::new(compiled), guest, filter)
    }

    /// The same compiled guest with another configuration (rules, encoding, limits), checked by
    /// building one instance. Compiling is the slow part; this skips it.
    pub fn with_config(&self, guest: &GuestConfig, filter: &FilterSettings) -> Result<GuestModule, GuestError> {
        GuestModule::configured(self.compiled.clone(), guest, filter)
    }

    fn configured(
        compiled: Arc<Compiled>,
        guest: &GuestConfig,
        filter: &FilterSettings,
    ) -> Result<GuestModule, GuestError> {
        let timeout = guest.timeout;
        compiled.engine.tick_for(timeout);
        let module = GuestModule {
            compiled,
            filter_config: convert::filter_config(filter, &guest.settings),
            batch_bytes: guest.max_body.as_usize().min(BATCH_BYTES),
            endpoints: filter.endpoints.iter().cloned().collect(),
            memory_limit: guest.memory_limit.as_usize(),
            max_instances: guest.max_instances.get(),
            max_body: guest.max_body.as_usize(),
            timeout,
            rollback_after: guest.rollback_after.get(),
            stats: Arc::default(),
        };
        module.instance()?;
        Ok(module)
    }

    /// The engine that compiled this guest; swaps and the fallback are compiled by it too.
    pub fn engine(&self) -> &GuestEngine {
        &self.compiled.engine
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
        let limits = MemoryCap {
            limits: StoreLimitsBuilder::new().memory_size(self.memory_limit).instances(self.max_instances).build(),
            limit: self.memory_limit,
            refused: false,
        };
        let deadline = Deadline::after(Instant::now(), self.timeout);
        let state = HostState { guest: name.clone(), wasi, table: ResourceTable::new(), limits, deadline };
        let _calling = self.compiled.engine.calling();
        let mut store = Store::new(self.compiled.engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(Deadline::callback(|state: &HostState| &state.deadline));
        store.set_epoch_deadline(1);
        let filter = self.compiled.pre.instantiate(&mut store).map_err(|e| {
            // wasmtime says so only in its message; the host names the setting that lifts the cap.
            let message = format!("{e:#}");
            if message.contains("instance count too high") {
                return GuestError::InstanceLimit { limit: self.max_instances, message };
            }
            classify(e, &mut store, self.timeout)
        })?;
        store.data_mut().deadline = Deadline::after(Instant::now(), self.timeout);
        match filter.call_configure(&mut store, &self.filter_config) {
            Ok(Ok(())) => Ok(GuestInstance {
                store,
                filter,
                timeout: self.timeout,
                max_body: self.max_body,
                endpoints: self.endpoints.clone(),
                stats: self.stats.clone(),
                engine: self.compiled.engine.clone(),
            }),
            Ok(Err(message)) => Err(GuestError::Rejected { guest: name.to_string(), message }),
            Err(e) => Err(classify(e, &mut store, self.timeout)),
        }
    }
}

/// Names what went wrong in one line; the wasm backtrace goes to the debug log.
fn classify(error: wasmtime::Error, store: &mut Store<HostState>, timeout: Duration) -> GuestError {
    tracing::debug!("Guest call failed: {error:?}");
    let message = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return GuestError::Timeout(timeout),
        Some(trap) => trap.to_string(),
        None => format!("{error:#}").replace('\n', " "),
    };
    let cap = &mut store.data_mut().limits;
    if std::mem::take(&mut cap.refused) {
        return GuestError::MemoryLimit { limit: cap.limit, message };
    }
    GuestError::Trap(message)
}

/// Payload bytes one `handle-batch` call is given at most (less when `guest.max_body` is
/// smaller): the batch is copied into the instance's memory at once.
const BATCH_BYTES: usize = 1 << 20;

/// The package version `component` imports mqhook's interfaces at, when it is not this host's.
fn foreign_wit_version(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    component.component_type().imports(engine).find_map(|(name, _)| {
        let version = name.strip_prefix("mqhook:filter/")?.split_once('@')?.1;
        (version != WIT_VERSION).then(|| version.to_owned())
    })
}

/// What a guest asked for one event: the request, and the named endpoint it chose (an index into
/// `filter-config.endpoints`), if it chose one.
#[derive(Debug)]
pub struct GuestDelivery {
    /// The request to send.
    pub request: Request,
    /// The named endpoint the guest chose; `None` leaves the choice to the rules.
    pub endpoint: Option<usize>,
}

/// Events ready for a guest: converted to WIT types once, kept for a retry of each one after a
/// failed batch call, and for the built-in fallback.
pub struct Batch {
    events: Vec<wit::Event>,
    /// Each event's kind and client id, for its request.
    origins: Vec<(EventKind, Option<String>)>,
    payload_bytes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch { events: Vec::new(), origins: Vec::new(), payload_bytes: 0 }
    }

    /// Adds `event`.
    pub fn push(&mut self, event: Event) {
        self.payload_bytes += event.payload().map_or(0, <[u8]>::len);
        self.origins.push((event.kind(), event.clientid().map(str::to_owned)));
        self.events.push(convert::event(event));
    }

    /// Whether `module`'s `handle-batch` should be called before more is added.
    pub fn is_full(&self, module: &GuestModule) -> bool {
        self.payload_bytes >= module.batch_bytes
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Empties it, for the next batch.
    pub fn clear(&mut self) {
        self.events.clear();
        self.origins.clear();
        self.payload_bytes = 0;
    }

    /// The kind of event `index`.
    pub fn kind(&self, index: usize) -> EventKind {
        self.origins[index].0
    }

    /// The topic (or topic filter) of event `index`, for events that carry one.
    pub fn topic(&self, index: usize) -> Option<&str> {
        convert::topic(&self.events[index])
    }

    /// The event's topic, else its client id, for a log line.
    pub fn subject(&self, index: usize) -> Option<&str> {
        convert::topic(&self.events[index]).or(self.origins[index].1.as_deref())
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

/// One live guest instance, owned by one worker.
pub struct GuestInstance {
    store: Store<HostState>,
    filter: Filter,
    timeout: Duration,
    max_body: usize,
    endpoints: Arc<[String]>,
    stats: Arc<GuestStats>,
    /// Keeps the epoch ticking while a call runs.
    engine: GuestEngine,
}

impl GuestInstance {
    /// Runs the guest on every event of `batch` in one `handle-batch` call: one answer per event.
    /// On `Err` the call itself failed (a trap, a timeout): the instance must be dropped, since
    /// after a trap the component model forbids entering it again, and each event can then be
    /// retried with [`GuestInstance::handle`] on fresh instances.
    pub fn handle_batch(
        &mut self,
        batch: &Batch,
    ) -> Result<Vec<Result<Option<GuestDelivery>, GuestError>>, GuestError> {
        let count = batch.len();
        let started = self.start_call(count);
        let calling = self.engine.calling();
        let called = self.filter.call_handle_batch(&mut self.store, &batch.events);
        drop(calling);
        let took = started.elapsed() / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        // A failed batch is not counted: its events are retried one by one, and counted then.
        let answers = called.map_err(|error| classify(error, &mut self.store, self.timeout))?;
        if answers.len() != count {
            let message = format!("handle-batch gave {} answers for {count} events", answers.len());
            self.stats.record(CallOutcome::Invalid, took);
            return Ok((0..count).map(|_| Err(GuestError::InvalidDelivery(message.clone()))).collect());
        }
        Ok(answers
            .into_iter()
            .enumerate()
            .map(|(index, answer)| {
                let result = self.delivery(batch, index, answer);
                self.stats.record(CallOutcome::of(&result), took);
                result
            })
            .collect())
    }

    /// Runs the guest's `handle` on event `index` of `batch`. On an `Err` other than
    /// [`GuestError::InvalidDelivery`] the instance must be dropped.
    pub fn handle(&mut self, batch: &Batch, index: usize) -> Result<Option<GuestDelivery>, GuestError> {
        let started = self.start_call(1);
        let calling = self.engine.calling();
        let called = self.filter.call_handle(&mut self.store, &batch.events[index]);
        drop(calling);
        let took = started.elapsed();
        let result = match called {
            Ok(answer) => self.delivery(batch, index, answer),
            Err(e) => Err(classify(e, &mut self.store, self.timeout)),
        };
        self.stats.record(CallOutcome::of(&result), took);
        result
    }

    /// Runs the guest's `handle` on one event, as [`GuestInstance::handle`] does.
    pub fn handle_event(&mut self, event: Event) -> Result<Option<GuestDelivery>, GuestError> {
        let mut batch = Batch::new();
        batch.push(event);
        self.handle(&batch, 0)
    }

    /// Sets the deadline of a call on `events` events (`guest.timeout` is per event) and returns
    /// when the call starts.
    fn start_call(&mut self, events: usize) -> Instant {
        let now = Instant::now();
        let timeout = self.timeout.saturating_mul(u32::try_from(events).unwrap_or(u32::MAX));
        self.store.data_mut().deadline = Deadline::after(now, timeout);
        self.store.set_epoch_deadline(1);
        now
    }

    /// Checks the guest's answer for event `index` and makes it a [`GuestDelivery`].
    fn delivery(
        &self,
        batch: &Batch,
        index: usize,
        answer: Option<wit::Delivery>,
    ) -> Result<Option<GuestDelivery>, GuestError> {
        let Some(delivery) = answer else { return Ok(None) };
        if delivery.body.len() > self.max_body {
            return Err(GuestError::InvalidDelivery(format!(
                "a body of {} bytes is over the cap of {} (guest.max_body)",
                delivery.body.len(),
                self.max_body
            )));
        }
        let (kind, client) = &batch.origins[index];
        convert::delivery(*kind, client.clone(), delivery, &self.endpoints).map(Some)
    }
}

/// What each store holds: WASI state with no capabilities, the memory cap, the guest's name.
struct HostState {
    guest: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    /// When the running call must stop.
    deadline: Deadline,
}

/// The store's limits, noting when a memory growth was refused: a trap right after one is the
/// memory cap's doing ([`GuestError::MemoryLimit`]).
struct MemoryCap {
    limits: StoreLimits,
    /// `guest.memory_limit`, bytes.
    limit: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
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

/// The `encoding` import: the default guest's own encoders, run natively. The caps keep a call
/// short, since the guest's deadline does not interrupt host code.
impl encoding::Host for HostState {
    fn base64(&mut self, bytes: Vec<u8>) -> Option<String> {
        (bytes.len() <= ENCODING_MAX_INPUT).then(|| nanomq::encoding::base64(&bytes))
    }

    fn base62(&mut self, bytes: Vec<u8>) -> Option<String> {
        (bytes.len() <= BASE62_MAX_INPUT).then(|| nanomq::encoding::base62_here(&bytes))
    }

    fn json_escape(&mut self, text: String) -> Option<String> {
        (text.len() <= ENCODING_MAX_INPUT).then(|| nanomq::json::escape(&text))
    }
}
