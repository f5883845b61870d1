//! Fault matrix: lifecycle.
