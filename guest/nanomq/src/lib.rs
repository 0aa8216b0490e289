//! mqhook's default filter guest: NanoMQ's WebHook, reproduced exactly.
//!
//! Built for `wasm32-wasip2`, this crate is a component of the `filter` world (`wit/mqhook.wit`):
//! `configure` takes the rules and payload encoding, `handle` decides for each broker event whether
//! a rule selects it and, if so, returns the JSON body NanoMQ would POST (spec §2, §3, §4), with no
//! extra headers and no extra path.
//!
//! The logic is plain Rust and public, so that the host can also run it natively (its baseline
//! benchmark) and so that it is unit-tested natively: build a [`Filter`] from a [`FilterConfig`]
//! and call [`Filter::handle`]. Only the component glue — the export and the `log` import, which
//! exists only inside a component — is compiled for `wasm32` alone.

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

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use crate::mqhook::filter::log::{log, Level};
    use crate::{Delivery, Event, Filter, FilterConfig, Guest};

    thread_local! {
        /// The filter of this instance, set by `configure`.
        static FILTER: RefCell<Option<Filter>> = const { RefCell::new(None) };
    }

    struct NanomqGuest;

    impl Guest for NanomqGuest {
        fn configure(config: FilterConfig) -> Result<(), String> {
            let filter = Filter::new(config)?;
            FILTER.with(|slot| *slot.borrow_mut() = Some(filter));
            Ok(())
        }

        fn handle(event: Event) -> Option<Delivery> {
            FILTER.with(|slot| match slot.borrow().as_ref() {
                Some(filter) => filter.handle(&event).map(|body| Delivery {
                    body,
                    headers: Vec::new(),
                    path: None,
                }),
                None => {
                    log(
                        Level::Error,
                        "an event arrived before configure; it is dropped",
                    );
                    None
                }
            })
        }
    }

    crate::export!(NanomqGuest with_types_in crate);
}
