//! One run of a pipeline at a time: an exclusive lock on a file named after the pipeline,
//! released by the kernel when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Held for the whole run.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

/// Another run holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another run of pipeline `{name}` is in progress{holder} (lock {path}); this run did nothing"
)]
pub struct Locked {
    pub name: String,
    pub holder: String,
    pub path: String,
}

/// `$PIPELINE_STATE_DIR`, else `$XDG_STATE_HOME/pipeline`, else `~/.local/state/pipeline`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIPELINE_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("pipeline");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/pipeline"),
        None => std::env::temp_dir().join("pipeline-state"),
    }
}

pub fn acquire(pipeline: &str) -> Result<RunLock> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join(format!("{pipeline}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
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
                name: pipeline.into(),
                holder,
                path: path.display().to_string(),
            }
            .into());
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(RunLock { _file: file, path })
}

/// Like [`acquire`], but waits up to `wait` for another run to end: for callers (such as
/// an application recording a snapshot) that would rather queue than fail.
pub fn acquire_waiting(pipeline: &str, wait: std::time::Duration) -> Result<RunLock> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match acquire(pipeline) {
            Err(e) if e.is::<Locked>() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}
