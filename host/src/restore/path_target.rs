//! Restore targets that are a file or a directory (`sqlite`, `files`).
//!
//! `restore.plan-restore` does not see the target, so a plugin that restores into a path
//! asks for a directory grant whose path is a marker: [`PATH`] (the target itself) or
//! [`PARENT`] (the directory holding it). The host resolves the target the user typed
//! (`--to`, `PIPELINE_RESTORE_TO`, `--restore-into`) to an absolute, normalized path, puts
//! it in place of the markers for this one restore call, and hands the plugin that same
//! path as `restore-options.target`.
//!
//! What a plugin gets this way is never more than the user typed: the target itself is
//! granted to any plugin (naming it on the command line is the grant), and its parent
//! directory, which holds other files, only to a built-in or to a plugin file whose
//! `allow.directories` grants it, as any other directory.

use std::path::{Path, PathBuf};

use crate::bindings::{Grant, Plan};
use crate::capabilities::Grants;
use crate::capabilities::filesystem::normalize;
use crate::error::UsageError;

/// The marker for the target itself.
pub const PATH: &str = "{restore-target}";
/// The marker for the directory that holds the target.
pub const PARENT: &str = "{restore-target-parent}";

/// Whether the plugin restores into a path: its plan asks for a marker.
pub fn wanted(plan: &Plan) -> bool {
    plan.grants
        .iter()
        .any(|g| matches!(g, Grant::Directory(d) if d.path == PATH || d.path == PARENT))
}

/// The target as an absolute, normalized path (relative to the working directory).
/// `option` names where it came from, for messages.
pub fn resolve(option: &str, to: &str) -> Result<PathBuf, UsageError> {
    if to.trim().is_empty() {
        return Err(UsageError(format!(
            "{option}: empty; this source restores into a file or a directory: give its path"
        )));
    }
    if to.contains("://") {
        return Err(UsageError(format!(
            "{option}: a URL, but this source restores into a file or a directory: give its path"
        )));
    }
    let path = normalize(Path::new(to)).map_err(|e| UsageError(format!("{option}: {to}: {e}")))?;
    if path.parent().is_none() {
        return Err(UsageError(format!(
            "{option}: {to} is the whole file system; give the file or directory to restore into"
        )));
    }
    for (what, place) in [
        ("component cache", crate::engine::cache_dir()),
        ("state directory", crate::lock::state_dir().ok()),
    ] {
        let Some(place) = place.and_then(|p| normalize(&p).ok()) else {
            continue;
        };
        if place.starts_with(&path) || path.starts_with(&place) {
            return Err(UsageError(format!(
                "{option}: {} holds pipeline's {what} ({}): restore somewhere else",
                path.display(),
                place.display()
            )));
        }
    }
    Ok(path)
}

/// Whether `target` and what the source backs up (`source`, a path) are the same place,
/// or one holds the other.
pub fn overlaps(target: &Path, source: &str) -> bool {
    normalize(Path::new(source))
        .is_ok_and(|source| source.starts_with(target) || target.starts_with(&source))
}

/// Replaces the markers of `plan` with `target` and its parent. The target itself is taken
/// out of the plan and returned: [`grant_typed`] gives it to the stage whatever its
/// `allow` says; the parent stays in the plan and is admitted as any directory is.
pub fn substitute(plan: &mut Plan, target: &Path) -> Vec<(PathBuf, bool, bool)> {
    let parent = target.parent().unwrap_or(target).to_path_buf();
    let mut typed = Vec::new();
    plan.grants.retain_mut(|g| {
        let Grant::Directory(d) = g else {
            return true;
        };
        if d.path == PATH {
            typed.push((target.to_path_buf(), d.writable, d.create));
            return false;
        }
        if d.path == PARENT {
            d.path = parent.display().to_string();
        }
        true
    });
    typed
}

/// Grants the target the user typed (from [`substitute`]).
pub fn grant_typed(grants: &mut Grants, typed: Vec<(PathBuf, bool, bool)>) {
    for (path, writable, create) in typed {
        if create {
            grants.filesystem.create.push(path.clone());
        }
        grants.filesystem.granted.push((path, writable));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::DirectoryGrant;

    fn dir(path: &str) -> Grant {
        Grant::Directory(DirectoryGrant {
            path: path.into(),
            writable: true,
            create: true,
        })
    }

    #[test]
    fn markers_become_the_target_and_its_parent() {
        let mut plan = Plan {
            extension: None,
            content_type: None,
            grants: vec![Grant::Program("tar".into()), dir(PATH), dir(PARENT)],
        };
        assert!(wanted(&plan));
        let typed = substitute(&mut plan, Path::new("/srv/restore/app.db"));
        assert_eq!(typed, [(PathBuf::from("/srv/restore/app.db"), true, true)]);
        assert_eq!(plan.grants.len(), 2);
        assert!(matches!(&plan.grants[1], Grant::Directory(d) if d.path == "/srv/restore"));
        assert!(!wanted(&plan));
    }

    #[test]
    fn a_target_must_be_a_path_below_the_root() {
        for bad in ["", "  ", "postgresql://db/app", "/", "/.."] {
            assert!(resolve("--to", bad).is_err(), "{bad:?}");
        }
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            resolve("--to", "x/../restored").unwrap(),
            normalize(&cwd.join("restored")).unwrap()
        );
    }

    #[test]
    fn overlap_is_either_way() {
        assert!(overlaps(Path::new("/srv/app"), "/srv/app"));
        assert!(overlaps(Path::new("/srv/app/sub"), "/srv/app"));
        assert!(overlaps(Path::new("/srv"), "/srv/app"));
        assert!(!overlaps(Path::new("/srv/other"), "/srv/app"));
    }
}
