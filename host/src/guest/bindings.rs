//! The WIT bindings, kept private to the guest runtime: generated types never leave `guest/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
});

pub(crate) use self::mqhook::filter::log;
pub(crate) use self::mqhook::filter::types as wit;
