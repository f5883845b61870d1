//! Log lines from the plugin. The host prefixes them with the stage's name, removes
//! secrets and writes them in the run's log format.
//!
//! Each function takes anything that displays, so `format_args!` avoids an extra
//! allocation: `log::info(format_args!("wrote {n} bytes"))`. Outside `wasm32` (unit tests)
//! the lines go to stderr.

use std::fmt::Display;

pub use crate::bindings::host::pipeline::plugin::log::Level;

/// Log `message` at `level`.
pub fn log(level: Level, message: impl Display) {
    let message = message.to_string();
    #[cfg(target_arch = "wasm32")]
    crate::bindings::host::pipeline::plugin::log::log(level, &message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Log at error level.
pub fn error(message: impl Display) {
    log(Level::Error, message);
}

/// Log at warning level.
pub fn warn(message: impl Display) {
    log(Level::Warn, message);
}

/// Log at info level.
pub fn info(message: impl Display) {
    log(Level::Info, message);
}

/// Log at debug level.
pub fn debug(message: impl Display) {
    log(Level::Debug, message);
}
