//! One run of a pipeline at a time: an exclusive lock on a file named after the pipeline,
//! released by the kernel when the process ends, however it ends.
//!
//! The lock file is keyed by the pipeline's name plus a hash of its file's canonical path,
//! so two projects whose files are both `nightly.toml` do not block each other. It lives in
//! a state directory private to the user (never a shared `/tmp` fallback), and is opened
//! without following links, so a planted symlink can neither redirect nor truncate anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::error::Locked;

/// Held for the whole run.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

/// `$PIPELINE_STATE_DIR`, else `$XDG_STATE_HOME/pipeline`, else `$HOME/.local/state/pipeline`,
/// else the same under the home directory of the user's passwd entry. Never a shared
/// directory: a lock there could be planted or held by another user.
pub fn state_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("PIPELINE_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("pipeline"));
    }
    let home = match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => passwd_home().ok_or_else(|| {
            anyhow!(
                "cannot find a state directory for the run lock: HOME is not set and the user \
                 (uid {}) has no home directory in the passwd database; set PIPELINE_STATE_DIR \
                 to a directory only this user can write",
                // SAFETY: geteuid has no preconditions and cannot fail.
                unsafe { libc::geteuid() }
            )
        })?,
    };
    Ok(home.join(".local/state/pipeline"))
}

/// The home directory of the effective user from the passwd database.
fn passwd_home() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, which outlive every use of the
    // pointers it stores there; `result` is null or points to `pwd`.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = CStr::from_ptr(pwd.pw_dir).to_bytes();
        if dir.is_empty() {
            return None;
        }
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

/// Creates `dir` (0700) if missing and refuses one another user could write to.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        bail!(
            "the state directory {} is not a directory; remove it or set PIPELINE_STATE_DIR",
            dir.display()
        );
    }
    if meta.uid() != uid {
        bail!(
            "the state directory {} belongs to uid {}, not to this user (uid {uid}): another user \
             could plant or hold its locks; use a directory of your own (set PIPELINE_STATE_DIR) \
             or `chown {uid} {}`",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "the state directory {} is writable by group or others (mode {:o}): another user \
             could plant or hold its locks; fix it with `chmod go-w {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// What identifies a pipeline's lock: its name and where its file is. A file that cannot be
/// canonicalized (it was just read, so this is rare) is keyed by the path as given. Sinks
/// receive it as the `pipeline-id` label to tag what an unfinished write leaves, so that a
/// later run cleans up only what no run holding another lock can be writing.
pub fn key(name: &str, file: &Path) -> String {
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    format!("{name}-{}", hex::encode(&digest[..8]))
}

pub fn acquire(name: &str, file: &Path) -> Result<RunLock> {
    let dir = state_dir()?;
    private_dir(&dir)?;
    let path = dir.join(format!("{}.lock", key(name, file)));
    // No links followed, not inherited by the programs stages run, never blocks on a FIFO.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "the lock file {} is a symbolic link; refusing to follow it (someone may be \
                 trying to make this run overwrite another file): remove it and run again",
                path.display()
            ),
            _ => anyhow!(e).context(format!("cannot open the lock file {}", path.display())),
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read the lock file {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "the lock file {} is not a regular file; remove it and run again",
            path.display()
        );
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => String::new(),
                p => format!(" (pid {p})"),
            };
            return Err(Locked {
                name: name.into(),
                holder,
                path: path.display().to_string(),
            }
            .into());
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // Our own regular file, locked by us: safe to rewrite.
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(RunLock { _file: file, path })
}

/// Like [`acquire`], but waits up to `wait` for another run to end: for callers (such as
/// an application recording a snapshot) that would rather queue than fail.
pub fn acquire_waiting(name: &str, file: &Path, wait: std::time::Duration) -> Result<RunLock> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match acquire(name, file) {
            Err(e) if e.is::<Locked>() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_differs_by_file_not_only_by_name() {
        let a = key("nightly", Path::new("/a/pipelines/nightly.toml"));
        let b = key("nightly", Path::new("/b/pipelines/nightly.toml"));
        assert_ne!(a, b);
        assert!(a.starts_with("nightly-") && a.len() == "nightly-".len() + 16);
        assert_eq!(a, key("nightly", Path::new("/a/pipelines/nightly.toml")));
    }

    #[test]
    fn passwd_has_a_home_for_this_user() {
        assert!(passwd_home().is_some_and(|h| h.is_absolute()));
    }
}
