//! The built-in guest: the `mqhook-guest-nanomq` library as a component of the `filter` world.
//!
//! The host embeds this component and runs it when no other guest is configured. All the logic —
//! rules, topic matching, bodies, encodings — is the library's; this crate is only the glue, kept
//! apart so that other guests can link the library without these exports.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use mqhook_guest_nanomq::Filter;

    wit_bindgen::generate!({
        path: "../../wit",
        world: "filter",
        // The world's types are the library's, so its `Filter` takes these events as they are.
        with: { "mqhook:filter/types@0.1.0": mqhook_guest_nanomq::mqhook::filter::types },
        // The library's bindings are linked in too: a distinct name keeps the two component-type
        // sections apart.
        type_section_suffix: "builtin",
    });

    use self::mqhook::filter::log::{log, Level};

    thread_local! {
        /// The filter of this instance, set by `configure`.
        static FILTER: RefCell<Option<Filter>> = const { RefCell::new(None) };
    }

    struct Builtin;

    impl Guest for Builtin {
        fn configure(config: FilterConfig) -> Result<(), String> {
            let filter = Filter::new(config)?;
            FILTER.with(|slot| *slot.borrow_mut() = Some(filter));
            Ok(())
        }

        fn handle(event: Event) -> Option<Delivery> {
            FILTER.with(|slot| match slot.borrow().as_ref() {
                Some(filter) => filter.handle(&event).map(|body| Delivery { body, headers: Vec::new(), path: None }),
                None => {
                    log(Level::Error, "an event arrived before configure; it is dropped");
                    None
                }
            })
        }
    }

    export!(Builtin);
}
