//! The diagnostic rule layer: the fault catalogue as SQL rules over the store, each finding
//! carrying its evidence and ordered troubleshooting steps.
//!
//! Owns rule files (`spec`), the fault catalogue (`faults`), packs and their checks (`pack`),
//! the shared derived views (`views`), evaluation (`engine`, with `stages` splitting a rule's
//! query so a CTE it reads twice is computed once) and the `findings` table
//! (`finding`). Reads the store only through `query`'s read-only session; knows nothing of
//! MQTT, the CLI or alerts. Rules are data: `rules/*.toml` is compiled in as the built-in
//! pack, and operators add directories of their own.

pub mod engine;
pub mod faults;
pub mod finding;
pub mod health;
pub mod pack;
pub mod spec;
pub mod stages;
pub mod views;

pub use engine::{EvalError, Evaluation, Note, Scope, evaluate};
pub use finding::{Finding, FindingsError};
pub use pack::{Pack, PackSource};
pub use spec::{Actor, Problem, Rule, Severity, Step};
