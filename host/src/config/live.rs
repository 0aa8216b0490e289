//! The live configuration: one shared handle that a reload replaces as a whole.
//!
//! Guest workers, delivery and the ingest's kind filter all read the configuration now in force
//! through a [`LiveConfig`]. A read is a shared lock and an `Arc` clone, never a copy of the
//! config; the event kinds some rule wants (and whether one of those rules takes every topic) are
//! kept beside it in atomics, so the broker's hot path asks without taking a lock.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::{Config, KindRules};
use crate::event::EventKind;

/// The configuration in force; cheap to clone, every clone sees every [`LiveConfig::store`].
#[derive(Clone)]
pub struct LiveConfig(Arc<Shared>);

struct Shared {
    current: RwLock<Arc<Config>>,
    /// What the rules select of each kind, a [`KindRules`] as `u8` (all `None` when the webhook
    /// is disabled).
    wanted: [AtomicU8; 12],
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
        self.kind_rules(kind) != KindRules::None
    }

    fn kind_rules(&self, kind: EventKind) -> KindRules {
        KindRules::from_u8(self.0.wanted[kind.index()].load(Ordering::Acquire))
    }

    /// Whether some rule of the configuration in force selects an event of `kind` with `topic`.
    /// Answered from the atomics alone but for a topic that only some rules' filters take.
    pub fn selects(&self, kind: EventKind, topic: Option<&str>) -> bool {
        match (self.kind_rules(kind), topic) {
            (KindRules::None, _) => false,
            (KindRules::EveryTopic, _) | (KindRules::ByTopic, None) => true,
            (KindRules::ByTopic, Some(topic)) => self.load().filter.selects(kind, Some(topic)),
        }
    }

    fn set_wanted(&self, config: &Config) {
        let kinds = if config.enabled { config.filter.kind_rules() } else { [KindRules::None; 12] };
        for (slot, rules) in self.0.wanted.iter().zip(kinds) {
            slot.store(rules as u8, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Syntax;

    fn with_rules(rules: &str) -> LiveConfig {
        let text = format!("webhook {{\n url = \"http://127.0.0.1:9\"\n events = [{rules}]\n}}\n");
        LiveConfig::new(Config::parse(&text, std::path::Path::new("t.hcl"), Syntax::Hcl).expect("config"))
    }

    #[test]
    fn selects_answers_as_the_rules_do_with_and_without_topic_filters() {
        let live = with_rules(
            "{ event = \"on_message_publish\", topic = \"a/#\" }, { event = \"on_client_subscribe\" }, \
             { event = \"on_client_connack\", topic = \"ignored/+\" }",
        );
        assert!(live.selects(EventKind::MessagePublish, Some("a/b")));
        assert!(!live.selects(EventKind::MessagePublish, Some("b/a")), "only the filter's topics");
        assert!(live.selects(EventKind::ClientSubscribe, Some("anything")), "no filter: every topic");
        assert!(live.selects(EventKind::ClientConnack, None), "a filter on a kind without topics is ignored");
        assert!(!live.selects(EventKind::MessageDelivered, Some("a/b")), "no rule for the kind");
        // A rule without a filter beside one with a filter takes every topic, in either order.
        let both =
            with_rules("{ event = \"on_message_publish\", topic = \"a/#\" }, { event = \"on_message_publish\" }");
        assert!(both.selects(EventKind::MessagePublish, Some("b")));
        let reversed =
            with_rules("{ event = \"on_message_publish\" }, { event = \"on_message_publish\", topic = \"a/#\" }");
        assert!(reversed.selects(EventKind::MessagePublish, Some("b")));
        // A reload replaces the answers with the new rules'.
        live.store(both.load());
        assert!(live.selects(EventKind::MessagePublish, Some("b/a")));
        assert!(!live.selects(EventKind::ClientSubscribe, Some("x")));
    }
}
