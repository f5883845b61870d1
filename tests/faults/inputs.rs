//! Fault matrix: inputs.
