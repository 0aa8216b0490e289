//! A deliberately misbehaving filter guest, for the host's sandbox tests.
//!
//! Never deploy it: it exists so that tests can check that the host survives a guest that spins
//! forever, eats memory, traps, or rejects its configuration, and that guest logs reach the host.
//!
//! - `configure` fails with "rejected by configuration" when the settings hold `("reject", "yes")`.
//! - `handle`, for a `message-publish` to
//!   - `hostile/loop`: loops forever;
//!   - `hostile/alloc`: allocates and touches memory, 1 MiB at a time, until allocation fails;
//!   - `hostile/trap`: panics, which traps the instance;
//!   - `hostile/log`: logs "hello from guest" at warn level, then delivers as below;
//!   - `hostile/header`: delivers with a header whose name HTTP does not allow;
//!   - `hostile/host-header`: delivers with a `Host` header, which only the host may set;
//!   - `hostile/endpoint`: delivers to the endpoint `nowhere`, which no config names;
//!   - `hostile/ambient`: delivers what it can see of the world (clock, environment, arguments,
//!     files), so tests can check the sandbox grants none of it.
//! - Any other event is delivered with, as its body, its topic for message events and its action
//!   name (such as `client_connack`) for all others; no headers, no path.

/// The world's bindings. The WIT documents what it defines; the few items wit-bindgen adds around
/// it carry no docs, and its export glue (the canonical ABI entry points) is unsafe code.
#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "filter" });
}

use bindings::mqhook::filter::log::{log, Level};
use bindings::mqhook::filter::types::Message;
use bindings::{Delivery, Event, FilterConfig, Guest};

struct HostileGuest;

impl Guest for HostileGuest {
    fn configure(config: FilterConfig) -> Result<(), String> {
        if config.settings.iter().any(|(key, value)| key == "reject" && value == "yes") {
            return Err("rejected by configuration".to_owned());
        }
        Ok(())
    }

    fn handle(event: Event) -> Option<Delivery> {
        if let Event::MessagePublish(Message { topic, .. }) = &event {
            match topic.as_str() {
                "hostile/loop" => spin_forever(),
                "hostile/alloc" => exhaust_memory(),
                "hostile/trap" => panic!("hostile guest traps on purpose"),
                "hostile/log" => log(Level::Warn, "hello from guest"),
                "hostile/header" => {
                    let headers = vec![("bad header".to_owned(), "x".to_owned())];
                    return Some(Delivery { body: b"hdr".to_vec(), headers, path: None, endpoint: None });
                }
                "hostile/host-header" => {
                    let headers = vec![("Host".to_owned(), "evil.example".to_owned())];
                    return Some(Delivery { body: b"hdr".to_vec(), headers, path: None, endpoint: None });
                }
                "hostile/endpoint" => {
                    let endpoint = Some("nowhere".to_owned());
                    return Some(Delivery { body: b"lost".to_vec(), headers: Vec::new(), path: None, endpoint });
                }
                "hostile/ambient" => {
                    let body = ambient_authority().into_bytes();
                    return Some(Delivery { body, headers: Vec::new(), path: None, endpoint: None });
                }
                _ => {}
            }
        }
        Some(Delivery { body: body_of(&event).into_bytes(), headers: Vec::new(), path: None, endpoint: None })
    }

    fn handle_batch(events: Vec<Event>) -> Vec<Option<Delivery>> {
        events.into_iter().map(Self::handle).collect()
    }
}

/// Never returns; `black_box` keeps the optimizer from proving the loop useless.
fn spin_forever() -> ! {
    let mut spins: u64 = 0;
    loop {
        spins = core::hint::black_box(spins.wrapping_add(1));
    }
}

/// Grows memory 1 MiB at a time, writing every page so it is really committed, until the
/// allocator gives up (which aborts, trapping the instance) or the host's limit stops it.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 4096;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for page in chunk.iter_mut().step_by(PAGE) {
            *page = 0xA5;
        }
        hoard.push(core::hint::black_box(chunk));
    }
}

/// What the sandbox lets a guest see of the world: the wall clock (seconds since the epoch),
/// environment variables, arguments, and whether the root directory can be listed.
fn ambient_authority() -> String {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(u64::MAX, |elapsed| elapsed.as_secs());
    format!(
        "clock={clock} env={} args={} fs={}",
        std::env::vars().count(),
        std::env::args().count(),
        std::fs::read_dir("/").is_ok()
    )
}

/// The topic of message events, else the action name.
fn body_of(event: &Event) -> String {
    let action = match event {
        Event::MessagePublish(message) | Event::MessageDelivered(message) | Event::MessageAcked(message) => {
            return message.topic.clone();
        }
        Event::ClientConnect(_) => "client_connect",
        Event::ClientConnack(_) => "client_connack",
        Event::ClientConnected(_) => "client_connected",
        Event::ClientDisconnected(_) => "client_disconnected",
        Event::ClientSubscribe(_) => "client_subscribe",
        Event::ClientUnsubscribe(_) => "client_unsubscribe",
        Event::SessionSubscribed(_) => "session_subscribed",
        Event::SessionUnsubscribed(_) => "session_unsubscribed",
        Event::SessionTerminated(_) => "session_terminated",
    };
    action.to_owned()
}

// The export glue expands here, so it is allowed its unsafe code here.
#[allow(unsafe_code)]
mod export {
    use super::{bindings, HostileGuest};
    bindings::export!(HostileGuest with_types_in super::bindings);
}
