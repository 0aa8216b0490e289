//! Ingest: where broker events enter mqhook, each source converting to [`Event`](crate::event::Event) at
//! its border and handing events to a [`Submitter`](crate::runtime::Submitter).
//!
//! - `broker` (feature `broker`, on by default): an embedded rmqtt MQTT broker whose hooks submit
//!   events;
//! - [`ndjson`]: one JSON object per line, from standard input or a file (spec §7);
//! - [`bridge`]: an MQTT client of a broker you already run, acknowledging each message once it
//!   is safe (spec §8), and the way several mqhook processes share one stream.
//! - The library API itself: a broker embedding mqhook builds `Event`s and calls `try_submit`.

pub mod bridge;
#[cfg(feature = "broker")]
pub mod broker;
pub mod ndjson;
