//! One function per command. Each takes the [`super::Context`] (for the engine) and its
//! arguments, prints what it reports, and returns an error typed by [`crate::error`].

pub mod completions;
pub mod list;
pub mod man;
pub mod plugins;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod validate;
