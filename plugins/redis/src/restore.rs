//! Restore: a snapshot becomes an RDB file, for a Redis server to load when it starts
//! (Redis has no command that loads a snapshot into a running server). The file is written
//! under a temporary name beside the target, checked on the way (RDB header, end marker and
//! CRC-64), synced, and renamed to the target only when all of that held: the target is
//! either untouched or the whole snapshot.
//!
//! The target's directory is granted through the `{restore-target-parent}` marker (see
//! docs/plugins.md): the plugin creates, renames and removes files there.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::Path;

use pipeline_plugin_sdk::io::InputReader;
use pipeline_plugin_sdk::{
    DirectoryGrant, Grant, InputStream, PluginError, Report, RestoreOptions, StagePlan, log,
    restore_target,
};

use crate::rdb::{NotRdb, Snapshot};

pub fn plan() -> StagePlan {
    StagePlan {
        extension: None,
        content_type: None,
        grants: vec![Grant::Directory(DirectoryGrant {
            path: restore_target::PARENT.into(),
            writable: true,
            create: false,
        })],
    }
}

/// Refuses a directory, a link, or a file that holds data (unless allowed).
fn check_target(target: &Path, allow_non_empty: bool) -> Result<(), PluginError> {
    let shown = target.display();
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(PluginError::Config(format!(
            "the restore target {shown} is a directory: give the RDB file to write, e.g. \
             {shown}/dump.rdb"
        ))),
        Ok(m) if m.file_type().is_symlink() => Err(PluginError::Denied(format!(
            "the restore target {shown} is a symbolic link: give the file itself"
        ))),
        Ok(m) if m.len() > 0 && !allow_non_empty => Err(PluginError::Denied(format!(
            "the restore target {shown} exists and is not empty ({} bytes): restoring would \
             replace it. Restore into a new file, or allow it explicitly (pipeline restore \
             --allow-non-empty) once the server that uses it is stopped",
            m.len()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PluginError::from_io(format!("checking {shown}"), &e)),
    }
}

pub fn restore(options: &RestoreOptions, data: InputStream) -> Result<Report, PluginError> {
    let target = Path::new(&options.target);
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(PluginError::Config(format!(
            "the restore target {} is not a file path",
            target.display()
        )));
    };
    check_target(target, options.allow_non_empty)?;
    let temp = dir.join(format!(".{}.restore-{:016x}", name.to_string_lossy(), {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| PluginError::from_io(format!("creating {}", temp.display()), &e))?;
    let written = write_checked(file, &mut InputReader::new(data), &temp).and_then(|s| {
        fs::rename(&temp, target)
            .map_err(|e| {
                PluginError::from_io(
                    format!("renaming {} to {}", temp.display(), target.display()),
                    &e,
                )
            })
            .map(|()| s)
    });
    let snapshot = match written {
        Ok(s) => s,
        Err(err) => {
            let _ = fs::remove_file(&temp);
            return Err(err.context(format!("nothing was written to {}", target.display())));
        }
    };
    log::info(format_args!(
        "restored {} ({} bytes, RDB version {})",
        target.display(),
        snapshot.passed(),
        snapshot.version().unwrap_or_default()
    ));
    Ok(Report {
        facts: vec![
            ("file".into(), target.display().to_string()),
            ("bytes".into(), snapshot.passed().to_string()),
            (
                "RDB version".into(),
                snapshot.version().unwrap_or_default().to_string(),
            ),
            (
                "CRC-64".into(),
                if snapshot.unchecked {
                    "absent"
                } else {
                    "matches"
                }
                .into(),
            ),
        ],
    })
}

/// Writes the snapshot to `file` while checking it, and syncs it.
fn write_checked(
    mut file: File,
    from: &mut InputReader,
    temp: &Path,
) -> Result<Snapshot, PluginError> {
    let io_err =
        |e: std::io::Error| PluginError::from_io(format!("writing {}", temp.display()), &e);
    let mut snapshot = Snapshot::default();
    loop {
        let buf = from
            .fill_buf()
            .map_err(|e| PluginError::from_io("reading the backup", &e))?;
        if buf.is_empty() {
            break;
        }
        file.write_all(&snapshot.push(buf)).map_err(io_err)?;
        let n = buf.len();
        from.consume(n);
    }
    let (rest, snapshot) = snapshot.finish(false).map_err(|NotRdb(why)| {
        PluginError::Other(format!("the backup is not a whole RDB snapshot: {why}"))
    })?;
    file.write_all(&rest).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(snapshot)
}
