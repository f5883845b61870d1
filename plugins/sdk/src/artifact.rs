//! Rules every sink applies to artifact names.

use crate::{ArtifactMeta, PluginError};

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

/// The pipeline that writes `meta` (its `pipeline` label) and the short hash that marks
/// its temporary files and uploads, so that a later run of the same pipeline can remove
/// what a killed run left and never touches another pipeline's. The hash is of the
/// `pipeline-id` label (name and file: exactly what the host's run lock covers) when the
/// host sends it, else of the name. `None` when the host sent no `pipeline` label.
pub fn owner_tag(meta: &ArtifactMeta) -> Option<(String, String)> {
    let label = |key: &str| {
        meta.labels
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let pipeline = label("pipeline")?;
    let id = label("pipeline-id").unwrap_or(pipeline);
    Some((pipeline.to_owned(), owner_hash(id)))
}

/// FNV-1a, 32 bits, as 8 hex digits: a stable short hash without a dependency. Not a
/// security boundary: it only tells one pipeline's temporary files from another's.
pub fn owner_hash(id: &str) -> String {
    let h = id.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_hash_is_stable() {
        // FNV-1a test vectors: "" and "a".
        assert_eq!(owner_hash(""), "811c9dc5");
        assert_eq!(owner_hash("a"), "e40c292c");
    }

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
