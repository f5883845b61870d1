//! The time a run is dated by.

use std::sync::OnceLock;

use crate::logging;

/// The current time, or `PIPELINE_TEST_NOW` (an RFC 3339 time) when set. That variable exists
/// only so tests can play a run with a wrong clock; it is announced loudly every time.
pub fn now() -> jiff::Timestamp {
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    let real = jiff::Timestamp::now();
    let Some(v) = std::env::var_os("PIPELINE_TEST_NOW") else {
        return real;
    };
    match v.to_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => {
            ANNOUNCED.get_or_init(|| {
                logging::warn(
                    None,
                    &format!(
                        "PIPELINE_TEST_NOW is set: using {t} as the current time (a test-only \
                         variable; unset it outside tests)"
                    ),
                );
            });
            t
        }
        None => {
            ANNOUNCED.get_or_init(|| {
                logging::warn(
                    None,
                    "PIPELINE_TEST_NOW is set but is not an RFC 3339 time; using the clock",
                );
            });
            real
        }
    }
}
