//! mqhook: NanoMQ's WebHook rebuilt as a WebAssembly-component filter runtime.
//!
//! On broker events mqhook POSTs a JSON body to a configured URL. Which events, and what body, is
//! decided by a filter guest (a wasm component, sandboxed); how it is sent is the host's job.
//!
//! # Layout
//! Imports point one way: each layer uses only the layers above it in this list.
//! 1. Foundation types, used by every stage:
//!    - [`event`]: mqhook's own event type, the border type every ingest converts into;
//!    - [`request`]: what the guest asked to send for one event;
//!    - [`completion`]: the token that tells an ingest when the runtime is done with an event;
//!    - [`config`]: one typed [`Config`] in sections, from NanoMQ HOCON, NanoMQ's old format, or
//!      HCL, and the [`LiveConfig`](config::LiveConfig) handle a reload replaces;
//!    - [`metrics`]: the counters every stage records into;
//!    - [`memory`]: the process's resident pages after a start or a guest swap (it imports
//!      nothing; the binary calls it).
//! 2. Stages, in the order of an event's trip (a stage imports no stage after it):
//!    - [`guest`]: compiling and running the filter component in a capped sandbox, and which
//!      guest runs now;
//!    - [`spool`]: the durable on-disk queue behind the delivery queue;
//!    - [`delivery`]: the delivery queue, pooled HTTP (or printing, for dry runs), batches,
//!      retries, dead letters.
//! 3. [`runtime`]: wires the stages together: the bounded runtime queue, guest worker threads,
//!    delivery, the drain on shutdown.
//! 4. Around the runtime:
//!    - [`ingest`]: event sources (the embedded broker, NDJSON, the bridge to a broker you run;
//!      a broker embeds through [`Submitter`]);
//!    - [`reload`]: swapping a changed guest or config in while events flow;
//!    - [`admin`]: the loopback HTTP API to read or upload the guest.
//! 5. The `mqhook` binary (`main.rs`): the command line over all of it.
//!
//! # Embedding
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mqhook::config::{Config, LiveConfig};
//! use mqhook::delivery::{http::HttpSink, Sink};
//! use mqhook::guest::GuestEngine;
//! use mqhook::runtime::Runtime;
//! let config = Config::load("nanomq.conf".as_ref())?;
//! let guest = GuestEngine::new()?.load(config.guest.path.as_deref(), &config.guest, &config.filter)?;
//! let live = LiveConfig::new(config);
//! let runtime = Runtime::start(live.clone(), guest, Sink::Http(HttpSink::new(live)?))?;
//! let submitter = runtime.submitter();
//! // … submitter.try_submit(event) from broker hooks; never blocks …
//! let totals = runtime.shutdown().await; // closes the submitters, drains every accepted event
//! println!("{totals}");
//! # Ok(()) }
//! ```

pub mod admin;
pub mod completion;
pub mod config;
pub mod delivery;
pub mod event;
pub mod guest;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod reload;
pub mod request;
pub mod runtime;
pub mod spool;

pub use config::Config;
pub use event::{Event, EventKind};
pub use guest::{GuestEngine, GuestError, GuestModule};
pub use metrics::MetricsSnapshot;
pub use request::Request;
pub use runtime::{Runtime, SubmitError, Submitter};
