//! mqhook's default filter logic: NanoMQ's WebHook, reproduced exactly.
//!
//! For each broker event of the `filter` world (`wit/mqhook.wit`), a [`Filter`] built from the
//! rules and payload encoding decides whether a rule selects it and, if so, writes the JSON body
//! NanoMQ would POST (spec §2, §3, §4).
//!
//! A library, not a component: `guest/builtin` wraps it as the built-in guest, the example guests
//! build on it, and the host runs it natively as the baseline of its benchmarks. The world's types
//! are generated here, so every user shares them.

wit_bindgen::generate!({ path: "../../wit", world: "filter" });

mod body;
pub mod encoding;
mod event;
mod filter;
mod json;
pub mod topic;

pub use filter::Filter;
pub use mqhook::filter::types::{
    Client, Connack, Connection, Disconnection, EventKind, Message, PayloadEncoding, Rule,
    SubscribeOptions, Subscription,
};
