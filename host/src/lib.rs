//! mqhook: NanoMQ's WebHook rebuilt as a WebAssembly-component filter runtime.
//!
//! On broker events mqhook POSTs a JSON body to a configured URL. Which events, and what body, is
//! decided by a filter guest (a wasm component, sandboxed); how it is sent is the host's job.
//!
//! # Layout
//! One module per stage of an event's trip, ingest → runtime queue → guest → delivery → endpoint:
//! - [`event`]: mqhook's own event type, the border type every ingest converts into;
//! - [`config`]: one typed [`Config`] from NanoMQ HOCON, NanoMQ's old format, or HCL;
//! - [`ingest`]: event sources (NDJSON; a broker embeds through [`Submitter`]);
//! - [`runtime`]: the bounded queue, guest worker threads, drain on shutdown;
//! - [`guest`]: compiling and running the filter component in a capped sandbox;
//! - [`delivery`]: the delivery queue, pooled HTTP (or printing, for dry runs), retries;
//! - [`spool`]: the durable on-disk queue behind the delivery queue;
//! - [`metrics`]: the counters every stage records into;
//! - [`reload`]: swapping a changed guest or config in while events flow;
//! - [`admin`]: the loopback HTTP API to read or upload the guest.
//!
//! # Embedding
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mqhook::{Config, GuestModule, Runtime, delivery::{Sink, http::HttpSink}};
//! let config = Config::load("nanomq.conf".as_ref())?;
//! let guest = GuestModule::load(config.guest.path.as_deref(), &config)?;
//! let runtime = Runtime::start(&config, guest, Sink::Http(HttpSink::new(&config)?))?;
//! let submitter = runtime.submitter();
//! // … submitter.try_submit(event) from broker hooks; never blocks …
//! let totals = runtime.shutdown().await; // closes the submitters, drains every accepted event
//! println!("{totals}");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod delivery;
pub mod event;
pub mod guest;
pub mod ingest;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod spool;

pub use config::Config;
pub use event::{Event, EventKind};
pub use guest::{GuestError, GuestModule};
pub use metrics::MetricsSnapshot;
pub use runtime::{GuestControl, Runtime, SubmitError, Submitter};
