//! Which guest runs now: the swappable slot, the guest a swap replaced (for a rollback), and the
//! built-in fallback for failed calls.
//!
//! A swap installs a guest together with the configuration it was built with: the slot gets the
//! guest and a new generation number, and the [`LiveConfig`] the configuration (its rules, URL and
//! headers take effect for the next event and the next request). Workers compare generations
//! before each event, so each event is filtered by exactly one guest version, and a swap touches
//! no queue: nothing is lost or handled twice across it. A swapped-in guest that keeps failing is
//! rolled back to the one it replaced, with that one's configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::GuestModule;
use crate::config::{Config, FailurePolicy, LiveConfig};
use crate::metrics::Metrics;

/// The running guest and what goes with it; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ActiveGuest(Arc<Shared>);

struct Shared {
    current: RwLock<Arc<GuestModule>>,
    generation: AtomicU64,
    live: LiveConfig,
    /// The guest (and its configuration) the latest swap replaced, for an automatic rollback.
    previous: Mutex<Option<(Arc<GuestModule>, Arc<Config>)>>,
    /// The built-in guest, configured like the running one, when `guest.on_failure` needs it.
    fallback: RwLock<Option<Fallback>>,
    /// Counts swaps and rollbacks.
    metrics: Arc<Metrics>,
    /// The generation now in place, for whoever waits for the next swap or rollback.
    installed: tokio::sync::watch::Sender<u64>,
}

/// What happens to a failed call's event: the policy, and the built-in guest that makes its body.
#[derive(Clone)]
pub struct Fallback {
    /// `builtin` or `dead_letter`.
    pub policy: FailurePolicy,
    /// The built-in NanoMQ guest, configured like the running guest.
    pub builtin: Arc<GuestModule>,
}

impl ActiveGuest {
    /// `guest` as generation 0, built with the configuration in `live`; swaps and rollbacks are
    /// counted in `metrics`.
    pub fn new(guest: GuestModule, live: LiveConfig, metrics: Arc<Metrics>) -> ActiveGuest {
        let active = ActiveGuest(Arc::new(Shared {
            current: RwLock::new(Arc::new(guest)),
            generation: AtomicU64::new(0),
            live,
            previous: Mutex::default(),
            fallback: RwLock::default(),
            metrics,
            installed: tokio::sync::watch::Sender::new(0),
        }));
        active.set_fallback(&active.config());
        active
    }

    /// Puts `guest` in place of the running guest, atomically: events that started keep the old
    /// version, every later one uses the new. `config` is the configuration `guest` was built
    /// with (see [`GuestModule::with_config`]); it is in force from now on. Returns the new
    /// guest's generation (the first guest is generation 0).
    pub fn swap(&self, guest: GuestModule, config: Config) -> u64 {
        let name = guest.name().to_string();
        let mut previous = self.0.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let (replaced, generation) = self.install(Arc::new(guest), Arc::new(config));
        *previous = Some(replaced);
        self.0.metrics.record_guest_swap();
        tracing::info!(guest = name, generation, "Guest swapped in.");
        generation
    }

    /// Puts the guest the latest swap replaced back, if generation `failing` is still the one
    /// running; a rollback is not itself rolled back.
    pub fn roll_back(&self, failing: u64) {
        let mut previous = self.0.previous.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation() != failing {
            return;
        }
        let Some((guest, config)) = previous.take() else { return };
        let name = guest.name().to_string();
        let ((failed, _), generation) = self.install(guest, config);
        self.0.metrics.record_guest_rollback();
        tracing::error!(
            failed = failed.name(),
            restored = name,
            generation,
            "The swapped-in guest kept failing ({:?}); the previous guest is back.",
            failed.stats().snapshot()
        );
    }

    /// The generation now in place; cheap enough to ask before every event.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// Sees each generation installed from now on (a swap's or a rollback's), after it is in place.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.installed.subscribe()
    }

    /// The guest now running and its generation.
    pub fn current(&self) -> (u64, Arc<GuestModule>) {
        let current = self.0.current.read().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), current.clone())
    }

    /// The configuration the running guest was built with, which is the one in force.
    pub fn config(&self) -> Arc<Config> {
        self.0.live.load()
    }

    /// The built-in guest that takes over a failed call's event, if the policy asks for one.
    pub fn fallback(&self) -> Option<Fallback> {
        self.0.fallback.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Installs `guest` with `config`; returns what it replaced and the new generation.
    fn install(&self, guest: Arc<GuestModule>, config: Arc<Config>) -> ((Arc<GuestModule>, Arc<Config>), u64) {
        self.set_fallback(&config);
        let old_config = self.0.live.store(config);
        let mut current = self.0.current.write().unwrap_or_else(PoisonError::into_inner);
        let old_guest = std::mem::replace(&mut *current, guest);
        // Bumped while the write lock is held, so a reader never pairs a new number with an old module.
        let generation = self.0.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.0.installed.send_replace(generation);
        ((old_guest, old_config), generation)
    }

    /// Prepares the fallback `config` asks for: the built-in guest, configured like the rest.
    fn set_fallback(&self, config: &Config) {
        let policy = config.guest.on_failure;
        let fallback = match policy {
            FailurePolicy::Skip => None,
            FailurePolicy::Builtin | FailurePolicy::DeadLetter => {
                let loaded = match self.fallback() {
                    Some(fallback) => fallback.builtin.with_config(&config.guest, &config.filter),
                    None => self.current().1.engine().load(None, &config.guest, &config.filter),
                };
                loaded
                    .map_err(|error| tracing::error!("The built-in fallback guest is unavailable: {error}."))
                    .ok()
                    .map(|builtin| Fallback { policy, builtin: Arc::new(builtin) })
            }
        };
        *self.0.fallback.write().unwrap_or_else(PoisonError::into_inner) = fallback;
    }
}
