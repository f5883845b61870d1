//! Rules every sink applies to artifact names.

use crate::PluginError;

/// An artifact name must be a plain file name: not empty, no path separator or NUL, and
/// not starting with `.` (sinks keep hidden names for their temporary files; the host
/// never makes such a name). Sinks check this before they touch anything.
pub fn check_name(name: &str) -> Result<(), PluginError> {
    let problem = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') || name.contains('\\') {
        "it contains a path separator"
    } else if name.starts_with('.') {
        "it starts with `.` (hidden and temporary files)"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(PluginError::Config(format!(
        "invalid artifact name {name:?}: {problem}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "a\\b", ".hidden", "..", ".", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(PluginError::Config(_))),
                "{bad:?}"
            );
        }
        check_name("backup-2025-12-10T12-00-00-000Z.sql.zst").expect("valid");
    }
}
