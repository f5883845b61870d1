//! The plugin error type.
//!
//! The WIT `plugin-error` variant, defined here rather than generated so it can carry a
//! readable `Display`, `PartialEq` and conversions. The generated bindings use this type
//! directly (`with:` in [`crate::bindings::host`]); its shape must stay exactly that of the
//! WIT variant.

use std::fmt;

/// Why a plugin call failed. The host shows the message to the user with the stage's name,
/// so it should say what went wrong and, where it can, what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    /// The stage's configuration is wrong (unknown key, bad value, missing key).
    Config(String),
    /// The thing asked for does not exist (e.g. `get` of an unknown artifact).
    NotFound(String),
    /// The plugin was refused something it was not granted.
    Denied(String),
    /// From `delete`: the store holds it under a lock (S3 Object Lock, a legal hold) that
    /// has not ended; the host keeps the backup and reports it instead of failing the run.
    Locked(String),
    /// Reading or writing data failed.
    Io(String),
    /// Anything else.
    Other(String),
}

impl PluginError {
    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            PluginError::Config(m)
            | PluginError::NotFound(m)
            | PluginError::Denied(m)
            | PluginError::Locked(m)
            | PluginError::Io(m)
            | PluginError::Other(m) => m,
        }
    }

    /// The same kind of error with `context: ` put in front of the message.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            PluginError::Config(m) => PluginError::Config(wrap(m)),
            PluginError::NotFound(m) => PluginError::NotFound(wrap(m)),
            PluginError::Denied(m) => PluginError::Denied(wrap(m)),
            PluginError::Locked(m) => PluginError::Locked(wrap(m)),
            PluginError::Io(m) => PluginError::Io(wrap(m)),
            PluginError::Other(m) => PluginError::Other(wrap(m)),
        }
    }

    /// A `std::io::Error` with `context: ` in front, mapped by its kind: `NotFound` becomes
    /// [`PluginError::NotFound`], `PermissionDenied` [`PluginError::Denied`], anything
    /// else [`PluginError::Io`].
    pub fn from_io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        let message = format!("{context}: {err}");
        match err.kind() {
            std::io::ErrorKind::NotFound => PluginError::NotFound(message),
            std::io::ErrorKind::PermissionDenied => PluginError::Denied(message),
            _ => PluginError::Io(message),
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Config(m) => write!(f, "configuration error: {m}"),
            PluginError::NotFound(m) => write!(f, "not found: {m}"),
            PluginError::Denied(m) => write!(f, "denied: {m}"),
            PluginError::Locked(m) => write!(f, "locked: {m}"),
            PluginError::Io(m) => write!(f, "I/O error: {m}"),
            PluginError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PluginError {}

/// Any `std::io::Error` is an [`PluginError::Io`] (use [`PluginError::from_io`] to keep
/// `NotFound`/`PermissionDenied` apart and add context).
impl From<std::io::Error> for PluginError {
    fn from(err: std::io::Error) -> Self {
        PluginError::Io(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_context() {
        let e = PluginError::Config("bad".into()).context("key `x`");
        assert_eq!(e, PluginError::Config("key `x`: bad".into()));
        assert_eq!(e.to_string(), "configuration error: key `x`: bad");
        assert_eq!(e.message(), "key `x`: bad");
    }

    #[test]
    fn from_io_error() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(
            PluginError::from_io("/a/b", &io),
            PluginError::NotFound("/a/b: gone".into())
        );
        assert_eq!(PluginError::from(io), PluginError::Io("gone".into()));
    }
}
