//! Ingest: where broker events enter mqhook, each source converting to [`Event`](crate::Event) at
//! its border and handing events to a [`Submitter`](crate::Submitter).
//!
//! - [`ndjson`]: one JSON object per line, from standard input or a file (spec §7).
//! - The library API itself: a broker embedding mqhook builds `Event`s and calls `try_submit`.

pub mod ndjson;
