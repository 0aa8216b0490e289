//! The WIT bindings, kept private to the guest runtime: generated types never leave `guest/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
});

/// The package version this host runs; a guest built against another is refused.
pub(crate) const WIT_VERSION: &str = "0.2.0";

pub(crate) use self::mqhook::filter::encoding;
pub(crate) use self::mqhook::filter::log;
pub(crate) use self::mqhook::filter::types as wit;
