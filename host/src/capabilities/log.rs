//! `pipeline:plugin/log`: plugin log lines, prefixed with the stage and redacted.

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, StoreState};
use crate::bindings::host::pipeline::plugin::log::{self, Host, Level};
use crate::logging;

/// The `log` capability: every plugin may log.
pub struct Log;

impl Capability for Log {
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/log",
        "log lines: shown prefixed with the stage, secrets masked",
    )];
    type Granted = ();
    type State = ();

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        log::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn state(_stage: &str, _: &()) {}
}

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
