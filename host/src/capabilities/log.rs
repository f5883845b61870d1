//! `pipeline:plugin/log`: plugin log lines, prefixed with the stage and redacted.

use super::StoreState;
use crate::bindings::host::pipeline::plugin::log::{Host, Level};
use crate::logging;

impl Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Error => logging::Level::Error,
            Level::Warn => logging::Level::Warn,
            Level::Info => logging::Level::Info,
            Level::Debug => logging::Level::Debug,
        };
        for line in message.lines() {
            logging::log(level, Some(&self.stage), line);
        }
    }
}
