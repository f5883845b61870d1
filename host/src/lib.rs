//! `pipeline`: declarative backup pipelines whose stages are WebAssembly components.
//! See the README for the pipeline file reference and `wit/plugin.wit` for the contract.

pub mod bindings;
pub mod builtin;
pub mod capabilities;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod contract;
pub mod engine;
pub mod error;
pub mod history;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod naming;
pub mod notify;
pub mod oci;
pub mod pipe;
pub mod progress;
pub mod redact;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod scaffold;
pub mod schedule;
pub mod shutdown;
pub mod signing;
pub mod snapshot;
pub mod stages;
