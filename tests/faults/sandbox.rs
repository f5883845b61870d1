//! Fault matrix: sandbox.
