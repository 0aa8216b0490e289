//! The guest every worker runs, swappable while events flow.
//!
//! A swap replaces the module and bumps a generation number. Workers compare generations before
//! each event, so each event is filtered by exactly one guest version, and a swap touches no
//! queue: nothing is lost or handled twice across it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::GuestModule;

/// The current guest and its generation.
pub struct GuestSlot {
    current: RwLock<Arc<GuestModule>>,
    generation: AtomicU64,
}

impl GuestSlot {
    /// A slot holding `module` as generation 0.
    pub fn new(module: GuestModule) -> Self {
        GuestSlot { current: RwLock::new(Arc::new(module)), generation: AtomicU64::new(0) }
    }

    /// The generation now in place; cheap enough to ask before every batch.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current module and its generation.
    pub fn current(&self) -> (u64, Arc<GuestModule>) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), current.clone())
    }

    /// Puts `module` in place for every batch that starts from now on; returns the module it
    /// replaced and the new generation.
    pub fn swap(&self, module: Arc<GuestModule>) -> (Arc<GuestModule>, u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let replaced = std::mem::replace(&mut *current, module);
        // Bumped while the write lock is held, so a reader never pairs a new number with an old module.
        (replaced, self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }
}
