//! The one integration-test binary: CLI contract, real captures, crash safety.
//!
//! Each test works in its own temp directory; child processes are this binary re-executed
//! (crash tests) or the real `wallscope` binary (CLI tests).

#![allow(clippy::unwrap_used)]

mod alerts;
mod api;
mod browser;
mod cli;
mod harness;
mod layers;
mod mqtt;
mod replay;
mod rules;
mod store_crash;
