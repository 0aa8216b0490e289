//! The mosquitto 2.0 plugin ABI (plugin API version 5), written by hand from Debian's
//! `mosquitto-dev` 2.0.11 headers (`mosquitto_broker.h`, `mosquitto_plugin.h`) and the error and
//! log constants of `libmosquitto-dev`'s `mosquitto.h`.
//!
//! - **Owns** the C types (`#[repr(C)]` copies of the event structs), the constants, and
//!   [`BrokerApi`]: the broker functions a plugin calls.
//! - **Receives** nothing at build time: no header is read and nothing is linked. The broker's
//!   functions are looked up in the running process (`dlsym(RTLD_DEFAULT, …)`) when the plugin
//!   starts, so `cargo build --workspace` needs no mosquitto and the test binaries link.
//! - **Hands on** the types to the plugin, and [`LAYOUTS`] (the size and field offsets of each
//!   struct as Rust sees them) to the e2e test that compiles the same `offsetof`s against the
//!   installed headers and compares (tests/mosquitto.rs).

use std::ffi::{c_char, c_int, c_long, c_void, CStr};
use std::mem::{offset_of, size_of};

/// The plugin API version this plugin implements (`MOSQ_PLUGIN_VERSION`).
pub const MOSQ_PLUGIN_VERSION: c_int = 5;

/// `MOSQ_ERR_SUCCESS`.
pub const MOSQ_ERR_SUCCESS: c_int = 0;
/// `MOSQ_ERR_NOMEM`.
pub const MOSQ_ERR_NOMEM: c_int = 1;
/// `MOSQ_ERR_INVAL`.
pub const MOSQ_ERR_INVAL: c_int = 3;
/// `MOSQ_ERR_CONN_LOST`: the connection dropped.
pub const MOSQ_ERR_CONN_LOST: c_int = 7;
/// `MOSQ_ERR_AUTH`: authentication refused.
pub const MOSQ_ERR_AUTH: c_int = 11;
/// `MOSQ_ERR_UNKNOWN`.
pub const MOSQ_ERR_UNKNOWN: c_int = 13;
/// `MOSQ_ERR_PLUGIN_DEFER`: this plugin does not decide; the next check does.
pub const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

/// `MOSQ_LOG_INFO`.
pub const MOSQ_LOG_INFO: c_int = 1 << 0;
/// `MOSQ_LOG_NOTICE`.
pub const MOSQ_LOG_NOTICE: c_int = 1 << 1;
/// `MOSQ_LOG_WARNING`.
pub const MOSQ_LOG_WARNING: c_int = 1 << 2;
/// `MOSQ_LOG_ERR`.
pub const MOSQ_LOG_ERR: c_int = 1 << 3;
/// `MOSQ_LOG_DEBUG`.
pub const MOSQ_LOG_DEBUG: c_int = 1 << 4;

/// `MOSQ_ACL_READ`: a message is about to go to a subscriber.
pub const MOSQ_ACL_READ: c_int = 0x01;
/// `MOSQ_ACL_WRITE`: a client publishes.
pub const MOSQ_ACL_WRITE: c_int = 0x02;
/// `MOSQ_ACL_SUBSCRIBE`: one topic filter of a SUBSCRIBE.
pub const MOSQ_ACL_SUBSCRIBE: c_int = 0x04;
/// `MOSQ_ACL_UNSUBSCRIBE`: one topic filter of an UNSUBSCRIBE.
pub const MOSQ_ACL_UNSUBSCRIBE: c_int = 0x08;

/// `enum mosquitto_plugin_event` values this plugin registers for.
pub const MOSQ_EVT_RELOAD: c_int = 1;
/// `MOSQ_EVT_ACL_CHECK`.
pub const MOSQ_EVT_ACL_CHECK: c_int = 2;
/// `MOSQ_EVT_BASIC_AUTH`.
pub const MOSQ_EVT_BASIC_AUTH: c_int = 3;
/// `MOSQ_EVT_MESSAGE`.
pub const MOSQ_EVT_MESSAGE: c_int = 7;
/// `MOSQ_EVT_TICK`.
pub const MOSQ_EVT_TICK: c_int = 9;
/// `MOSQ_EVT_DISCONNECT`.
pub const MOSQ_EVT_DISCONNECT: c_int = 10;

/// `struct mosquitto`: a client, opaque.
#[repr(C)]
pub struct Mosquitto {
    _opaque: [u8; 0],
}

/// `mosquitto_plugin_id_t`: the broker's handle on this plugin, opaque.
#[repr(C)]
pub struct PluginId {
    _opaque: [u8; 0],
}

/// `mosquitto_property`: MQTT 5 properties, opaque.
#[repr(C)]
pub struct Property {
    _opaque: [u8; 0],
}

/// `struct mosquitto_opt`: one `plugin_opt_<key> <value>` line.
#[repr(C)]
pub struct MosquittoOpt {
    /// The key, without `plugin_opt_`.
    pub key: *mut c_char,
    /// The rest of the line.
    pub value: *mut c_char,
}

/// `struct mosquitto_evt_reload`.
#[repr(C)]
pub struct EvtReload {
    /// Reserved.
    pub future: *mut c_void,
    /// The plugin's options as re-read.
    pub options: *mut MosquittoOpt,
    /// How many.
    pub option_count: c_int,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_acl_check`.
#[repr(C)]
pub struct EvtAclCheck {
    /// Reserved.
    pub future: *mut c_void,
    /// The client asking.
    pub client: *mut Mosquitto,
    /// The topic, or the topic filter for (un)subscribe.
    pub topic: *const c_char,
    /// The payload (read and write checks).
    pub payload: *const c_void,
    /// MQTT 5 properties.
    pub properties: *mut Property,
    /// `MOSQ_ACL_*`.
    pub access: c_int,
    /// Payload length.
    pub payloadlen: u32,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_basic_auth`.
#[repr(C)]
pub struct EvtBasicAuth {
    /// Reserved.
    pub future: *mut c_void,
    /// The client connecting.
    pub client: *mut Mosquitto,
    /// CONNECT username, or NULL.
    pub username: *mut c_char,
    /// CONNECT password, or NULL.
    pub password: *mut c_char,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_message`.
#[repr(C)]
pub struct EvtMessage {
    /// Reserved.
    pub future: *mut c_void,
    /// The publisher.
    pub client: *mut Mosquitto,
    /// The topic.
    pub topic: *mut c_char,
    /// The payload.
    pub payload: *mut c_void,
    /// MQTT 5 properties.
    pub properties: *mut Property,
    /// Reason string (MQTT 5), for a plugin that refuses.
    pub reason_string: *mut c_char,
    /// Payload length.
    pub payloadlen: u32,
    /// QoS.
    pub qos: u8,
    /// Reason code, for a plugin that refuses.
    pub reason_code: u8,
    /// Retain flag.
    pub retain: bool,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_tick`.
#[repr(C)]
pub struct EvtTick {
    /// Reserved.
    pub future: *mut c_void,
    /// Now, nanoseconds part.
    pub now_ns: c_long,
    /// Next tick, nanoseconds part.
    pub next_ns: c_long,
    /// Now, seconds.
    pub now_s: libc::time_t,
    /// Next tick, seconds.
    pub next_s: libc::time_t,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_disconnect`.
#[repr(C)]
pub struct EvtDisconnect {
    /// Reserved.
    pub future: *mut c_void,
    /// The client.
    pub client: *mut Mosquitto,
    /// Why: a `MOSQ_ERR_*` code (`MOSQ_ERR_SUCCESS` after DISCONNECT).
    pub reason: c_int,
    /// Reserved.
    pub future2: [*mut c_void; 4],
}

/// `MOSQ_FUNC_generic_callback`.
pub type GenericCallback = unsafe extern "C" fn(event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int;

/// One struct's layout as Rust sees it: its C name, size, and `(field, offset)` pairs.
pub type Layout = (&'static str, usize, &'static [(&'static str, usize)]);

/// Every struct above, for the header check in tests/mosquitto.rs.
pub const LAYOUTS: &[Layout] = &[
    (
        "struct mosquitto_opt",
        size_of::<MosquittoOpt>(),
        &[("key", offset_of!(MosquittoOpt, key)), ("value", offset_of!(MosquittoOpt, value))],
    ),
    (
        "struct mosquitto_evt_reload",
        size_of::<EvtReload>(),
        &[
            ("future", offset_of!(EvtReload, future)),
            ("options", offset_of!(EvtReload, options)),
            ("option_count", offset_of!(EvtReload, option_count)),
            ("future2", offset_of!(EvtReload, future2)),
        ],
    ),
    (
        "struct mosquitto_evt_acl_check",
        size_of::<EvtAclCheck>(),
        &[
            ("future", offset_of!(EvtAclCheck, future)),
            ("client", offset_of!(EvtAclCheck, client)),
            ("topic", offset_of!(EvtAclCheck, topic)),
            ("payload", offset_of!(EvtAclCheck, payload)),
            ("properties", offset_of!(EvtAclCheck, properties)),
            ("access", offset_of!(EvtAclCheck, access)),
            ("payloadlen", offset_of!(EvtAclCheck, payloadlen)),
            ("qos", offset_of!(EvtAclCheck, qos)),
            ("retain", offset_of!(EvtAclCheck, retain)),
            ("future2", offset_of!(EvtAclCheck, future2)),
        ],
    ),
    (
        "struct mosquitto_evt_basic_auth",
        size_of::<EvtBasicAuth>(),
        &[
            ("future", offset_of!(EvtBasicAuth, future)),
            ("client", offset_of!(EvtBasicAuth, client)),
            ("username", offset_of!(EvtBasicAuth, username)),
            ("password", offset_of!(EvtBasicAuth, password)),
            ("future2", offset_of!(EvtBasicAuth, future2)),
        ],
    ),
    (
        "struct mosquitto_evt_message",
        size_of::<EvtMessage>(),
        &[
            ("future", offset_of!(EvtMessage, future)),
            ("client", offset_of!(EvtMessage, client)),
            ("topic", offset_of!(EvtMessage, topic)),
            ("payload", offset_of!(EvtMessage, payload)),
            ("properties", offset_of!(EvtMessage, properties)),
            ("reason_string", offset_of!(EvtMessage, reason_string)),
            ("payloadlen", offset_of!(EvtMessage, payloadlen)),
            ("qos", offset_of!(EvtMessage, qos)),
            ("reason_code", offset_of!(EvtMessage, reason_code)),
            ("retain", offset_of!(EvtMessage, retain)),
            ("future2", offset_of!(EvtMessage, future2)),
        ],
    ),
    (
        "struct mosquitto_evt_tick",
        size_of::<EvtTick>(),
        &[
            ("future", offset_of!(EvtTick, future)),
            ("now_ns", offset_of!(EvtTick, now_ns)),
            ("next_ns", offset_of!(EvtTick, next_ns)),
            ("now_s", offset_of!(EvtTick, now_s)),
            ("next_s", offset_of!(EvtTick, next_s)),
            ("future2", offset_of!(EvtTick, future2)),
        ],
    ),
    (
        "struct mosquitto_evt_disconnect",
        size_of::<EvtDisconnect>(),
        &[
            ("future", offset_of!(EvtDisconnect, future)),
            ("client", offset_of!(EvtDisconnect, client)),
            ("reason", offset_of!(EvtDisconnect, reason)),
            ("future2", offset_of!(EvtDisconnect, future2)),
        ],
    ),
];

/// Every constant above with its C name, for the header check in tests/mosquitto.rs.
pub const CONSTANTS: &[(&str, i64)] = &[
    ("MOSQ_PLUGIN_VERSION", MOSQ_PLUGIN_VERSION as i64),
    ("MOSQ_ERR_SUCCESS", MOSQ_ERR_SUCCESS as i64),
    ("MOSQ_ERR_NOMEM", MOSQ_ERR_NOMEM as i64),
    ("MOSQ_ERR_INVAL", MOSQ_ERR_INVAL as i64),
    ("MOSQ_ERR_CONN_LOST", MOSQ_ERR_CONN_LOST as i64),
    ("MOSQ_ERR_AUTH", MOSQ_ERR_AUTH as i64),
    ("MOSQ_ERR_UNKNOWN", MOSQ_ERR_UNKNOWN as i64),
    ("MOSQ_ERR_PLUGIN_DEFER", MOSQ_ERR_PLUGIN_DEFER as i64),
    ("MOSQ_LOG_INFO", MOSQ_LOG_INFO as i64),
    ("MOSQ_LOG_NOTICE", MOSQ_LOG_NOTICE as i64),
    ("MOSQ_LOG_WARNING", MOSQ_LOG_WARNING as i64),
    ("MOSQ_LOG_ERR", MOSQ_LOG_ERR as i64),
    ("MOSQ_LOG_DEBUG", MOSQ_LOG_DEBUG as i64),
    ("MOSQ_ACL_READ", MOSQ_ACL_READ as i64),
    ("MOSQ_ACL_WRITE", MOSQ_ACL_WRITE as i64),
    ("MOSQ_ACL_SUBSCRIBE", MOSQ_ACL_SUBSCRIBE as i64),
    ("MOSQ_ACL_UNSUBSCRIBE", MOSQ_ACL_UNSUBSCRIBE as i64),
    ("MOSQ_EVT_RELOAD", MOSQ_EVT_RELOAD as i64),
    ("MOSQ_EVT_ACL_CHECK", MOSQ_EVT_ACL_CHECK as i64),
    ("MOSQ_EVT_BASIC_AUTH", MOSQ_EVT_BASIC_AUTH as i64),
    ("MOSQ_EVT_MESSAGE", MOSQ_EVT_MESSAGE as i64),
    ("MOSQ_EVT_TICK", MOSQ_EVT_TICK as i64),
    ("MOSQ_EVT_DISCONNECT", MOSQ_EVT_DISCONNECT as i64),
];

/// Why the broker's functions could not be found: the plugin is not running inside mosquitto 2.0.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not in this process: mqhook_mosquitto must be loaded by mosquitto 2.0 (plugin API 5)")]
pub struct MissingSymbol(&'static str);

type ClientStr = unsafe extern "C" fn(client: *const Mosquitto) -> *const c_char;
type ClientInt = unsafe extern "C" fn(client: *const Mosquitto) -> c_int;

/// The broker functions the plugin calls, with the signatures of `mosquitto_broker.h`.
#[derive(Clone, Copy)]
pub struct BrokerApi {
    /// `mosquitto_callback_register`.
    pub callback_register:
        unsafe extern "C" fn(*mut PluginId, c_int, GenericCallback, *const c_void, *mut c_void) -> c_int,
    /// `mosquitto_callback_unregister`.
    pub callback_unregister: unsafe extern "C" fn(*mut PluginId, c_int, GenericCallback, *const c_void) -> c_int,
    /// `mosquitto_log_printf`.
    pub log_printf: unsafe extern "C" fn(c_int, *const c_char, ...),
    /// `mosquitto_client_id`.
    pub client_id: ClientStr,
    /// `mosquitto_client_username`.
    pub client_username: ClientStr,
    /// `mosquitto_client_address`.
    pub client_address: ClientStr,
    /// `mosquitto_client_keepalive`.
    pub client_keepalive: ClientInt,
    /// `mosquitto_client_protocol_version`: 3, 4 or 5.
    pub client_protocol_version: ClientInt,
}

impl BrokerApi {
    /// Looks the functions up in the running process (the broker exports them to its plugins).
    pub fn resolve() -> Result<BrokerApi, MissingSymbol> {
        /// Finds `name` (NUL-terminated) in the process's global symbols.
        fn symbol(name: &'static CStr) -> Result<*mut c_void, MissingSymbol> {
            // SAFETY: `name` is NUL-terminated; dlsym only reads it and the loaded objects' tables.
            let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            if found.is_null() {
                Err(MissingSymbol(name.to_str().unwrap_or("?")))
            } else {
                Ok(found)
            }
        }
        /// The function `name` as an `F`.
        ///
        /// # Safety
        /// `F` is the function pointer type of the symbol's C signature.
        unsafe fn function<F: Copy>(name: &'static CStr) -> Result<F, MissingSymbol> {
            const { assert!(size_of::<F>() == size_of::<*mut c_void>()) };
            let found = symbol(name)?;
            // SAFETY: a non-NULL function address, read as the pointer type its contract names.
            Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&found) })
        }
        // SAFETY: each field's type is the signature of that broker function, copied from
        // mosquitto_broker.h 2.0.11 and checked by hand (the broker exports them since 2.0.0).
        unsafe {
            Ok(BrokerApi {
                callback_register: function(c"mosquitto_callback_register")?,
                callback_unregister: function(c"mosquitto_callback_unregister")?,
                log_printf: function(c"mosquitto_log_printf")?,
                client_id: function(c"mosquitto_client_id")?,
                client_username: function(c"mosquitto_client_username")?,
                client_address: function(c"mosquitto_client_address")?,
                client_keepalive: function(c"mosquitto_client_keepalive")?,
                client_protocol_version: function(c"mosquitto_client_protocol_version")?,
            })
        }
    }
}

/// Copies a C string the broker owns; `None` for NULL. Invalid UTF-8 is replaced (MQTT strings
/// are UTF-8; mosquitto checks client ids, usernames and topics).
///
/// # Safety
/// `text` is NULL or a NUL-terminated string that stays valid for the call.
pub unsafe fn string(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: not NULL, and NUL-terminated and valid per this function's contract.
    let text = unsafe { CStr::from_ptr(text) };
    Some(text.to_string_lossy().into_owned())
}
