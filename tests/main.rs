//! mqhook's end-to-end tests: one test binary (so the host is linked once), against real parts —
//! the real wasm guests, the real `mqhook` binary, a real HTTP server on 127.0.0.1, real files.

mod batching;
#[cfg(feature = "broker")]
mod bridge;
#[cfg(feature = "broker")]
mod broker;
mod config;
mod delivery;
mod endpoints;
mod examples;
mod golden;
mod languages;
mod mosquitto;
mod observability;
#[cfg(feature = "broker")]
mod outage;
mod pipeline;
mod reload;
mod sandbox;
mod signing;
mod support;
mod tls;
