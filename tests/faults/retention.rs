//! Fault matrix: retention.
