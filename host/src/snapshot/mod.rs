//! Snapshot pipelines: entity changes recorded as JSON documents in the original
//! `SnapshotService` format and committed by snapshot sinks (git).
//!
//! * [`document`]: file names, JSON, commit messages (pure).
//! * [`changes`]: what changed between the source's entities and the latest snapshots (pure).
//! * [`store`]: reading and writing snapshot files through a sink.
//! * [`run`]: `pipeline run` of a snapshot pipeline, and `pipeline snapshot record`.
//! * [`history`]: `pipeline snapshot history | show | diff`.

pub mod changes;
pub mod document;
pub mod history;
pub mod run;
pub mod store;
