//! mqhook as a mosquitto 2.0 plugin: the broker's events become mqhook events, and mqhook's
//! runtime (guests, delivery, spool, metrics, reload, admin API) runs inside the broker process.
//!
//! Load it with two lines in mosquitto.conf:
//! ```text
//! plugin /usr/local/lib/libmqhook_mosquitto.so
//! plugin_opt_config /etc/mosquitto/mqhook.conf
//! ```
//!
//! # Layout
//! - this file: the C entry points mosquitto calls (`mosquitto_plugin_version`, `_init`,
//!   `_cleanup`) and the callbacks registered with `mosquitto_callback_register`. Each catches
//!   panics, so none crosses into C.
//! - [`sys`]: the plugin ABI, written by hand from the 2.0.11 headers (checked against them by
//!   tests/mosquitto.rs), and the broker functions, looked up at load time.
//! - [`options`]: the `plugin_opt_*` lines.
//! - [`auth`]: what the basic-auth and ACL callbacks answer.
//! - [`border`]: callback data → mqhook `Event`, submitted without blocking.
//! - [`plugin`]: starting the runtime on threads of its own, reloading it, draining it.
//! - [`log`]: mqhook's log lines into mosquitto's log.
//!
//! # Threads
//! mosquitto calls every callback on its one network thread. The callbacks only convert and
//! enqueue (`Submitter::try_submit`: bounded, never waits; a full queue drops the event and counts
//! it as `rejected`). Everything else runs on mqhook's own threads, started in init and joined in
//! cleanup.
//!
//! # Auth stays the broker's
//! The basic-auth and ACL callbacks watch; they decide nothing the broker would decide otherwise
//! (see [`auth`]: they answer `MOSQ_ERR_PLUGIN_DEFER` whenever a check of the broker's follows).

#![allow(unsafe_code)]

pub mod auth;
pub mod border;
pub mod log;
pub mod options;
pub mod plugin;
pub mod sys;

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError};

use auth::AuthSetup;
use border::Border;
use options::Options;
use plugin::Plugin;
use sys::{BrokerApi, GenericCallback, PluginId};

/// What init hands mosquitto as `userdata`, and every callback gets back.
struct State {
    api: BrokerApi,
    identifier: *mut PluginId,
    border: Mutex<Border>,
    auth: Mutex<AuthSetup>,
    plugin: Plugin,
}

/// The callbacks, by event.
const CALLBACKS: [(c_int, GenericCallback); 6] = [
    (sys::MOSQ_EVT_MESSAGE, on_message),
    (sys::MOSQ_EVT_BASIC_AUTH, on_basic_auth),
    (sys::MOSQ_EVT_ACL_CHECK, on_acl_check),
    (sys::MOSQ_EVT_DISCONNECT, on_disconnect),
    (sys::MOSQ_EVT_TICK, on_tick),
    (sys::MOSQ_EVT_RELOAD, on_reload),
];

/// Runs `body`; a panic is logged and becomes `fallback`, never an unwind into C.
fn guarded(what: &str, fallback: c_int, body: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(|| log::in_callback(body))) {
        Ok(code) => code,
        Err(_) => {
            tracing::error!("The {what} callback panicked; the broker goes on.");
            fallback
        }
    }
}

/// Mosquitto asks which plugin API versions the plugin speaks; this one speaks 5 only.
///
/// # Safety
/// `supported_versions` points at `supported_version_count` ints (mosquitto's contract).
#[no_mangle]
pub unsafe extern "C" fn mosquitto_plugin_version(
    supported_version_count: c_int,
    supported_versions: *const c_int,
) -> c_int {
    guarded("plugin_version", -1, || {
        if supported_versions.is_null() || supported_version_count <= 0 {
            return -1;
        }
        // SAFETY: mosquitto passes an array of `supported_version_count` ints.
        let versions = unsafe { std::slice::from_raw_parts(supported_versions, supported_version_count as usize) };
        if versions.contains(&sys::MOSQ_PLUGIN_VERSION) {
            sys::MOSQ_PLUGIN_VERSION
        } else {
            -1
        }
    })
}

/// Starts mqhook: reads the options and the config, starts the runtime, registers the callbacks.
/// Any failure is logged in mosquitto's log and fails the init (mosquitto then does not start).
///
/// # Safety
/// mosquitto's contract: `identifier` is this plugin's id, `userdata` a place for our pointer,
/// `options` an array of `option_count` key/value pairs valid for the call.
#[no_mangle]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut PluginId,
    userdata: *mut *mut c_void,
    options: *mut sys::MosquittoOpt,
    option_count: c_int,
) -> c_int {
    guarded("plugin_init", sys::MOSQ_ERR_UNKNOWN, || {
        let api = match BrokerApi::resolve() {
            Ok(api) => api,
            Err(error) => {
                eprintln!("mqhook: {error}");
                return sys::MOSQ_ERR_UNKNOWN;
            }
        };
        log::install(api);
        // SAFETY: as this function's contract says.
        let pairs = unsafe { option_pairs(options, option_count) };
        let started = Options::parse(pairs.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .map_err(plugin::StartError::from)
            .and_then(Plugin::start);
        let plugin = match started {
            Ok(plugin) => plugin,
            Err(error) => {
                log::flush();
                log::now(&api, sys::MOSQ_LOG_ERR, &format!("cannot start: {error}"));
                return sys::MOSQ_ERR_INVAL;
            }
        };
        let setup = auth_setup(&api);
        let border = Mutex::new(Border::new(api, plugin.submitter()));
        let state = Box::into_raw(Box::new(State { api, identifier, border, auth: Mutex::new(setup), plugin }));
        for (index, (event, callback)) in CALLBACKS.iter().enumerate() {
            // SAFETY: the broker's function, called on its thread during init with our id; the
            // userdata pointer stays valid until cleanup unregisters the callbacks.
            let code =
                unsafe { (api.callback_register)(identifier, *event, *callback, std::ptr::null(), state.cast()) };
            if code != sys::MOSQ_ERR_SUCCESS {
                log::now(
                    &api,
                    sys::MOSQ_LOG_ERR,
                    &format!("cannot register the callback for event {event} (error {code})"),
                );
                // SAFETY: `state` came from Box::into_raw above; the callbacks registered so far
                // are unregistered by `unregister` before it is freed.
                let state = unsafe { Box::from_raw(state) };
                unregister(&state, &CALLBACKS[..index]);
                state.plugin.stop();
                log::flush();
                return sys::MOSQ_ERR_UNKNOWN;
            }
        }
        // SAFETY: mosquitto gives a valid place for the userdata pointer.
        unsafe { *userdata = state.cast() };
        log::flush();
        log::now(&api, sys::MOSQ_LOG_NOTICE, "started: broker events now go to the webhook runtime.");
        sys::MOSQ_ERR_SUCCESS
    })
}

/// Stops mqhook: unregisters the callbacks, then drains the runtime (bounded by
/// `plugin_opt_drain_timeout`) and stops its threads.
///
/// # Safety
/// `userdata` is what init stored (or NULL if init failed); mosquitto calls this once.
#[no_mangle]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(
    userdata: *mut c_void,
    _options: *mut sys::MosquittoOpt,
    _option_count: c_int,
) -> c_int {
    guarded("plugin_cleanup", sys::MOSQ_ERR_UNKNOWN, || {
        if userdata.is_null() {
            return sys::MOSQ_ERR_SUCCESS;
        }
        // SAFETY: init made `userdata` with Box::into_raw, and cleanup runs once, after which
        // the broker calls no callback of ours (they are unregistered first, here).
        let state = unsafe { Box::from_raw(userdata.cast::<State>()) };
        unregister(&state, &CALLBACKS);
        let State { api, border, plugin, .. } = *state;
        // The connack still pending (if any) is the broker's last word on that client.
        border.lock().unwrap_or_else(PoisonError::into_inner).tick();
        drop(border);
        plugin.stop();
        log::flush();
        log::now(&api, sys::MOSQ_LOG_NOTICE, "stopped.");
        sys::MOSQ_ERR_SUCCESS
    })
}

/// Reads the broker's auth setup; unknown (so: defer) when it cannot be read, said in the log.
fn auth_setup(api: &BrokerApi) -> AuthSetup {
    let setup = AuthSetup::detect(auth::own_path().as_deref()).unwrap_or_else(|reason| {
        log::now(api, sys::MOSQ_LOG_WARNING, &format!("cannot read the broker's auth setup ({reason})"));
        AuthSetup::UNKNOWN
    });
    log::now(api, sys::MOSQ_LOG_INFO, &setup.describe());
    setup
}

fn answer(state: &State, of: impl FnOnce(&AuthSetup) -> c_int) -> c_int {
    of(&state.auth.lock().unwrap_or_else(PoisonError::into_inner))
}

fn unregister(state: &State, callbacks: &[(c_int, GenericCallback)]) {
    for (event, callback) in callbacks {
        // SAFETY: the broker's function, on its thread, for a callback we registered.
        unsafe { (state.api.callback_unregister)(state.identifier, *event, *callback, std::ptr::null()) };
    }
}

/// The plugin's options as owned strings.
///
/// # Safety
/// `options` points at `count` valid `mosquitto_opt`s (or is NULL when `count` is 0).
unsafe fn option_pairs(options: *const sys::MosquittoOpt, count: c_int) -> Vec<(String, String)> {
    if options.is_null() || count <= 0 {
        return Vec::new();
    }
    // SAFETY: per this function's contract.
    let options = unsafe { std::slice::from_raw_parts(options, count as usize) };
    options
        .iter()
        // SAFETY: mosquitto's option strings are NUL-terminated (or NULL).
        .map(|opt| unsafe { (sys::string(opt.key).unwrap_or_default(), sys::string(opt.value).unwrap_or_default()) })
        .collect()
}

/// Runs `body` with the plugin's state and the event data, both borrowed for the call.
///
/// # Safety
/// `userdata` is the `State` init registered, `event_data` the broker's `T` for this event.
unsafe fn with_state<T>(userdata: *mut c_void, event_data: *mut c_void, body: impl FnOnce(&State, &T)) {
    if userdata.is_null() || event_data.is_null() {
        return;
    }
    // SAFETY: per this function's contract; both outlive the callback, and nothing else holds
    // a `&mut` to them.
    let (state, data) = unsafe { (&*userdata.cast::<State>(), &*event_data.cast::<T>()) };
    body(state, data);
}

/// The border, unless a callback of ours is already using it on this thread: mosquitto can call
/// the plugin again from inside a callback (a log line it publishes to `$SYS/broker/log` is
/// ACL-checked for each subscriber); that inner call is not forwarded.
fn border(state: &State) -> Option<std::sync::MutexGuard<'_, Border>> {
    match state.border.try_lock() {
        Ok(border) => Some(border),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

unsafe extern "C" fn on_message(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("message", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered for MOSQ_EVT_MESSAGE, whose data is `mosquitto_evt_message`.
        unsafe {
            with_state::<sys::EvtMessage>(userdata, event_data, |state, data| {
                if let Some(mut border) = border(state) {
                    border.message(data);
                }
            });
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_basic_auth(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("basic_auth", sys::MOSQ_ERR_PLUGIN_DEFER, || {
        let mut code = sys::MOSQ_ERR_PLUGIN_DEFER;
        // SAFETY: registered for MOSQ_EVT_BASIC_AUTH, whose data is `mosquitto_evt_basic_auth`.
        unsafe {
            with_state::<sys::EvtBasicAuth>(userdata, event_data, |state, data| {
                if let Some(mut border) = border(state) {
                    border.basic_auth(data);
                }
                code = answer(state, AuthSetup::basic_auth);
            });
        }
        code
    })
}

unsafe extern "C" fn on_acl_check(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("acl_check", sys::MOSQ_ERR_PLUGIN_DEFER, || {
        let mut code = sys::MOSQ_ERR_PLUGIN_DEFER;
        // SAFETY: registered for MOSQ_EVT_ACL_CHECK, whose data is `mosquitto_evt_acl_check`.
        unsafe {
            with_state::<sys::EvtAclCheck>(userdata, event_data, |state, data| {
                if let Some(mut border) = border(state) {
                    border.acl_check(data);
                }
                code = answer(state, AuthSetup::acl);
            });
        }
        code
    })
}

unsafe extern "C" fn on_disconnect(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("disconnect", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered for MOSQ_EVT_DISCONNECT, whose data is `mosquitto_evt_disconnect`.
        unsafe {
            with_state::<sys::EvtDisconnect>(userdata, event_data, |state, data| {
                if let Some(mut border) = border(state) {
                    border.disconnect(data);
                }
            });
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_tick(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("tick", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered for MOSQ_EVT_TICK, whose data is `mosquitto_evt_tick`.
        unsafe {
            with_state::<sys::EvtTick>(userdata, event_data, |state, _| {
                if let Some(mut border) = border(state) {
                    border.tick();
                }
            });
        }
        log::flush();
        sys::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_reload(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded("reload", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered for MOSQ_EVT_RELOAD, whose data is `mosquitto_evt_reload`.
        unsafe {
            with_state::<sys::EvtReload>(userdata, event_data, |state, _| {
                if let Some(mut border) = border(state) {
                    border.tick();
                };
                // The broker has re-read its own files: a password or ACL file may have come or gone.
                *state.auth.lock().unwrap_or_else(PoisonError::into_inner) = auth_setup(&state.api);
                state.plugin.request_reload();
            });
        }
        sys::MOSQ_ERR_SUCCESS
    })
}
