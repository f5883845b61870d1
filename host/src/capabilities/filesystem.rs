//! Directories a plugin may reach: preopened at the same path it has on the host, so a
//! plugin's messages name real paths. Nothing else of the host's file system is visible.
//!
//! Every path that takes part in a grant (a plan's directory, an `allow` entry, a `path`
//! configuration value, a repository) goes through [`normalize`] first, and the host uses
//! the normalized path from then on: the path that is checked is the path that is created
//! and opened, so `/granted/../outside` or a symbolic link inside a grant cannot widen it.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{Capability, GrantContext};
use crate::bindings::Grant;
use crate::config::ConfigError;

/// The `filesystem` capability: `allow.directories`, `allow.read_only_directories`, and
/// the directories a plan asks for.
pub struct Filesystem;

/// The directories a stage was granted.
#[derive(Debug, Clone, Default)]
pub struct Directories {
    /// (absolute, normalized host path, writable)
    pub granted: Vec<(PathBuf, bool)>,
    /// Directories the plan asked to be created before the run ([`create`]).
    pub create: Vec<PathBuf>,
}

impl Capability for Filesystem {
    const ALLOW_KEYS: &'static [&'static str] = &["directories", "read_only_directories"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[
        (
            "wasi:filesystem/types",
            "files: only directories in `allow.directories` / `allow.read_only_directories`",
        ),
        (
            "wasi:filesystem/preopens",
            "files: only directories in `allow.directories` / `allow.read_only_directories`",
        ),
    ];
    type Granted = Directories;
    type State = ();

    fn allowed(cx: &mut GrantContext<'_>, dirs: &mut Directories) -> Result<(), ConfigError> {
        for (key, writable) in [("directories", true), ("read_only_directories", false)] {
            for (dir, loc) in cx.allowed(key) {
                let path = cx.normalize(Some(*loc), &format!("allow.{key}"), dir)?;
                // A plugin file may not write where pipeline keeps its own state.
                if writable && !cx.builtin() {
                    check_not_ours(cx, &path)?;
                }
                dirs.granted.push((path, writable));
            }
        }
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        dirs: &mut Directories,
    ) -> Result<bool, ConfigError> {
        let Grant::Directory(d) = asked else {
            return Ok(false);
        };
        let path = cx.normalize(None, "allow", &d.path)?;
        if path.parent().is_none() {
            return Err(cx.error(
                None,
                "allow",
                format!(
                    "stage `{}` (plugin {}) asks for the directory {}, which is the whole file \
                     system: it is never granted; name the directory the stage needs",
                    cx.label(),
                    cx.stage.plugin,
                    d.path
                ),
            ));
        }
        let covered = dirs
            .granted
            .iter()
            .any(|(dir, writable)| path.starts_with(dir) && (*writable || !d.writable));
        if !covered {
            if !cx.builtin() {
                let (access, key) = if d.writable {
                    ("read-write", "directories")
                } else {
                    ("read-only", "read_only_directories")
                };
                let shown = path.display().to_string();
                let asked = if shown == d.path {
                    shown.clone()
                } else {
                    format!("{} (which is {shown})", d.path)
                };
                return Err(cx.refuse(&format!("{access} access to {asked}"), key, &shown));
            }
            dirs.granted.push((path.clone(), d.writable));
        }
        // Only what was normalized and accepted here is ever created.
        if d.create {
            dirs.create.push(path);
        }
        Ok(true)
    }

    fn wasi(builder: &mut WasiCtxBuilder, _stage: &str, dirs: &Directories) -> Result<()> {
        preopen(builder, &dirs.granted)
    }

    fn state(_stage: &str, _dirs: &Directories) {}
}

/// Preopens every granted directory.
fn preopen(builder: &mut WasiCtxBuilder, granted: &[(PathBuf, bool)]) -> Result<()> {
    for (dir, writable) in granted {
        // A directory a run has not created yet (`pipeline list` before the first run):
        // the plugin finds nothing there, as it would in an empty one.
        if !dir.exists() {
            continue;
        }
        let guest = dir
            .to_str()
            .with_context(|| format!("directory {} is not valid UTF-8", dir.display()))?;
        let perms = if *writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(dir, guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open granted directory {}", dir.display()))?;
    }
    Ok(())
}

/// A plugin file may not write where pipeline keeps its own state (the component cache:
/// native code this process loads; the state directory: locks).
fn check_not_ours(cx: &GrantContext<'_>, dir: &Path) -> Result<(), ConfigError> {
    for (what, place) in &cx.protected {
        let Ok(place) = normalize(place) else {
            continue;
        };
        if place.starts_with(dir) || dir.starts_with(&place) {
            return Err(cx.error(
                None,
                "allow.directories",
                format!(
                    "stage `{}` (plugin {}) would be granted read-write access to {}, which \
                     holds pipeline's {what} ({}): a plugin that can write there could make \
                     pipeline run its code or break its runs; grant a directory that does not \
                     contain it",
                    cx.label(),
                    cx.stage.plugin,
                    dir.display(),
                    place.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `path` made absolute (against the working directory), with `.` and `..` resolved
/// lexically and the symbolic links of its longest existing prefix resolved
/// (`canonicalize`); the rest, which does not exist yet, is appended as it is. A path
/// whose existing part ends in a symbolic link to nothing is refused: creating it would
/// create its target, wherever that is.
pub fn normalize(path: &Path) -> io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut lexical = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => lexical.push(c.as_os_str()),
            Component::CurDir => {}
            // `/..` is `/`, as the kernel has it.
            Component::ParentDir => {
                lexical.pop();
            }
            Component::Normal(n) => lexical.push(n),
        }
    }
    let mut existing = lexical.clone();
    let mut missing: Vec<OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut real) => {
                real.extend(missing.iter().rev());
                return Ok(real);
            }
            Err(e) if is_missing(&e) => {
                if std::fs::symlink_metadata(&existing).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is a symbolic link to a missing target",
                            existing.display()
                        ),
                    ));
                }
                match existing.file_name() {
                    Some(name) => {
                        missing.push(name.to_os_string());
                        existing.pop();
                    }
                    None => return Ok(lexical),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Creates a granted directory that the plugin asked to be created (mode 0700 under the
/// process umask the CLI sets), so that a first run into an empty place works. `dir` is
/// a [`normalize`]d path; each missing component is made with `mkdir` and must then be a
/// real directory, so a symbolic link planted since normalizing is never followed to
/// create something elsewhere.
pub fn create(dir: &Path) -> io::Result<()> {
    let mut at = PathBuf::new();
    for c in dir.components() {
        at.push(c.as_os_str());
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link; refusing to create a directory through it",
                    at.display()
                )));
            }
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::create_dir(&at) {
            Ok(()) => {}
            // Created concurrently: checked again on the next component (or below).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let m = std::fs::symlink_metadata(&at)?;
        if !m.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                at.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{create, normalize};
    use std::os::unix::fs::symlink;

    #[test]
    fn dots_are_resolved_before_anything_is_compared() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let granted = root.join("granted");
        std::fs::create_dir(&granted).unwrap();
        assert_eq!(
            normalize(&granted.join("../outside")).unwrap(),
            root.join("outside")
        );
        assert_eq!(
            normalize(&granted.join("./a/./b/../c")).unwrap(),
            granted.join("a/c")
        );
        assert_eq!(
            normalize(std::path::Path::new("/../..")).unwrap(),
            std::path::PathBuf::from("/")
        );
    }

    #[test]
    fn symbolic_links_of_the_existing_part_are_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (granted, outside) = (root.join("granted"), root.join("outside"));
        std::fs::create_dir(&granted).unwrap();
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, granted.join("link")).unwrap();
        assert_eq!(
            normalize(&granted.join("link/new/dir")).unwrap(),
            outside.join("new/dir")
        );
        symlink(root.join("nothing"), granted.join("dangling")).unwrap();
        assert!(normalize(&granted.join("dangling/x")).is_err());
    }

    #[test]
    fn create_never_goes_through_a_symbolic_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (granted, outside) = (root.join("granted"), root.join("outside"));
        std::fs::create_dir(&granted).unwrap();
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, granted.join("link")).unwrap();
        assert!(create(&granted.join("link/new")).is_err());
        assert!(!outside.join("new").exists());
        create(&granted.join("a/b")).unwrap();
        assert!(granted.join("a/b").is_dir());
    }
}
