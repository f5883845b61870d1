//! The fault matrix: every promise of `docs/guarantees.md` tried the way a bad night or an
//! attacker would, with real parts (PostgreSQL, zstd, psql, an S3-compatible server, git).
//! One test binary so the suites share one build; each area lives in its own file.

mod support;

#[path = "faults/restore.rs"]
mod restore;

#[path = "faults/lifecycle.rs"]
mod lifecycle;

#[path = "faults/retention.rs"]
mod retention;

#[path = "faults/sandbox.rs"]
mod sandbox;

#[path = "faults/inputs.rs"]
mod inputs;

#[path = "faults/storage.rs"]
mod storage;

#[path = "faults/database.rs"]
mod database;

#[path = "faults/credentials.rs"]
mod credentials;
