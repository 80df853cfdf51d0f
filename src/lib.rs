//! wallscope: a remote-diagnostics telemetry engine for EV wall chargers.
//!
//! Modules follow the pipeline and depend only downwards (docs/ARCHITECTURE.md):
//! layer 0 `model`, `clock`, `capture`; 1 `config`, `decode`, `sim`; 2 `batch`;
//! 3 `store`, `source`, `registry`, `ingest` (MQTT), `broker` (embedded); 4 `query`;
//! 5 `rules`; 6 `alerts`; 7 `pipeline`; 8 `api` (HTTP); 9 `cli`.

pub mod alerts;
pub mod api;
pub mod batch;
pub mod broker;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod ingest;
pub mod model;
pub mod pipeline;
pub mod query;
pub mod registry;
pub mod rules;
pub mod sim;
pub mod source;
pub mod store;

/// The crate version, as `wallscope --version` prints it.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
