//! The live configuration: one shared handle that a reload replaces as a whole.
//!
//! Guest workers, delivery and the ingest's kind filter all read the configuration now in force
//! through a [`LiveConfig`]. A read is a shared lock and an `Arc` clone, never a copy of the
//! config; the event kinds some rule wants are kept beside it in atomics, so the broker's hot path
//! asks without taking a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::Config;
use crate::event::EventKind;

/// The configuration in force; cheap to clone, every clone sees every [`LiveConfig::store`].
#[derive(Clone)]
pub struct LiveConfig(Arc<Shared>);

struct Shared {
    current: RwLock<Arc<Config>>,
    /// Whether some rule selects each kind (all `false` when the webhook is disabled).
    wanted: [AtomicBool; 12],
}

impl LiveConfig {
    /// A handle holding `config`.
    pub fn new(config: Config) -> LiveConfig {
        let live = LiveConfig(Arc::new(Shared { current: RwLock::new(Arc::new(config)), wanted: Default::default() }));
        live.set_wanted(&live.load());
        live
    }

    /// The configuration now in force.
    pub fn load(&self) -> Arc<Config> {
        self.0.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `config` in force for every reader from now on; returns the one it replaced.
    pub fn store(&self, config: Arc<Config>) -> Arc<Config> {
        let mut current = self.0.current.write().unwrap_or_else(PoisonError::into_inner);
        self.set_wanted(&config);
        std::mem::replace(&mut *current, config)
    }

    /// Whether some rule of the configuration in force selects events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.0.wanted[kind.index()].load(Ordering::Acquire)
    }

    /// Whether some rule of the configuration in force selects an event of `kind` with `topic`.
    /// Events without a topic are answered from the atomics alone.
    pub fn selects(&self, kind: EventKind, topic: Option<&str>) -> bool {
        match topic {
            _ if !self.wants(kind) => false,
            None => true,
            Some(topic) => self.load().filter.selects(kind, Some(topic)),
        }
    }

    fn set_wanted(&self, config: &Config) {
        let kinds = if config.enabled { config.filter.wanted_kinds() } else { [false; 12] };
        for (slot, wanted) in self.0.wanted.iter().zip(kinds) {
            slot.store(wanted, Ordering::Release);
        }
    }
}
