//! mqhook's default filter logic: NanoMQ's WebHook, reproduced exactly.
//!
//! For each broker event of the `filter` world (`wit/mqhook.wit`), a [`Filter`] built from the
//! rules and payload encoding decides whether a rule selects it and, if so, writes the JSON body
//! NanoMQ would POST (spec §2, §3, §4).
//!
//! A library, not a component: `guest/builtin` wraps it as the built-in guest, the example guests
//! build on it, and the host runs it natively as the baseline of its benchmarks. The world's types
//! are generated here, so every user shares them.

/// The world's bindings. The WIT documents what it defines; the few items wit-bindgen adds around
/// it (the `Guest` trait, type aliases) carry no docs of their own.
#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "filter" });
}
pub use bindings::*;

pub mod arena;
mod body;
pub mod encoding;
pub mod event;
mod filter;
pub mod json;
pub mod sample;
pub mod topic;

pub use filter::Filter;
pub use mqhook::filter::types::{
    Client, Connack, Connection, Disconnection, EventKind, Message, PayloadEncoding, Rule, SubscribeOptions,
    Subscription,
};

/// What a guest built on this library provides; [`export_guest!`] makes it a component.
pub trait GuestLogic: Sized + 'static {
    /// Builds the guest's state from its configuration, or says why it cannot.
    fn configure(config: FilterConfig) -> Result<Self, String>;
    /// The delivery for one event, or `None` to filter it out.
    fn handle(&self, event: &Event) -> Option<Delivery>;

    /// The deliveries for a batch of events, one answer each, in order. The default calls
    /// [`GuestLogic::handle`] for each.
    fn handle_batch(&self, events: &[Event]) -> Vec<Option<Delivery>> {
        events.iter().map(|event| self.handle(event)).collect()
    }
}

impl GuestLogic for Filter {
    fn configure(config: FilterConfig) -> Result<Self, String> {
        Filter::new(config)
    }

    fn handle(&self, event: &Event) -> Option<Delivery> {
        Filter::handle(self, event).map(Delivery::body)
    }
}

impl Delivery {
    /// A delivery of `body` to the rules' endpoints, with no extra headers or path.
    pub fn body(body: Vec<u8>) -> Delivery {
        Delivery { body, headers: Vec::new(), path: None, endpoint: None }
    }
}

/// Exports a [`GuestLogic`] type as the component's `configure`, `handle` and `handle-batch`: one instance of it
/// per guest instance, made by `configure`. `$suffix` names this crate's component-type section,
/// which must differ from this library's. The crate needs `wit-bindgen` and sits in `guest/<name>/`.
///
/// ```text
/// mqhook_guest_nanomq::export_guest!(crate::MyFilter, "my-filter");
/// ```
#[macro_export]
macro_rules! export_guest {
    ($logic:path, $suffix:literal) => {
        #[cfg(target_arch = "wasm32")]
        // wit-bindgen's export glue (the canonical ABI entry points) is unsafe code; the guest's
        // own code is not.
        #[allow(unsafe_code)]
        mod component {
            use std::cell::RefCell;

            use mqhook_guest_nanomq::GuestLogic;

            wit_bindgen::generate!({
                path: "../../wit",
                world: "filter",
                // The world's types are the library's, so that its logic takes these events as they are.
                with: {
                    "mqhook:filter/types@0.2.0": mqhook_guest_nanomq::mqhook::filter::types,
                    "mqhook:filter/log@0.2.0": mqhook_guest_nanomq::mqhook::filter::log,
                    "mqhook:filter/encoding@0.2.0": mqhook_guest_nanomq::mqhook::filter::encoding,
                },
                type_section_suffix: $suffix,
            });

            thread_local! {
                /// This instance's guest, made by `configure`.
                static LOGIC: RefCell<Option<$logic>> = const { RefCell::new(None) };
            }

            struct Component;

            impl Guest for Component {
                fn configure(config: FilterConfig) -> Result<(), String> {
                    let logic = <$logic as GuestLogic>::configure(config)?;
                    LOGIC.with(|slot| *slot.borrow_mut() = Some(logic));
                    // The guest's state came from the system allocator; each call's memory now
                    // comes from the arena.
                    mqhook_guest_nanomq::arena::start();
                    Ok(())
                }

                fn handle(event: Event) -> Option<Delivery> {
                    LOGIC.with(|slot| match slot.borrow().as_ref() {
                        Some(logic) => GuestLogic::handle(logic, &event),
                        None => {
                            unconfigured();
                            None
                        }
                    })
                }

                fn handle_batch(events: Vec<Event>) -> Vec<Option<Delivery>> {
                    LOGIC.with(|slot| match slot.borrow().as_ref() {
                        Some(logic) => GuestLogic::handle_batch(logic, &events),
                        None => {
                            unconfigured();
                            events.iter().map(|_| None).collect()
                        }
                    })
                }
            }

            fn unconfigured() {
                mqhook_guest_nanomq::mqhook::filter::log::log(
                    mqhook_guest_nanomq::mqhook::filter::log::Level::Error,
                    "an event arrived before configure; it is dropped",
                );
            }

            export!(Component);
        }
    };
}
