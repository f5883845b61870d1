//! One function per command. Each takes the [`super::Context`] (for the engine) and its
//! arguments, prints what it reports, and returns an error typed by [`crate::error`].

pub mod list;
pub mod plugins;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod validate;
