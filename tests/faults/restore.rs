//! Fault matrix: restore.
