//! Restore: the dump is run by `sqlite3 -safe -bail` into a new file beside the target
//! (`.NAME.restore-<random>`), which is checked (`PRAGMA integrity_check`) and renamed to
//! the target only after the backup stream ended cleanly, ended with the dump's `COMMIT;`,
//! and sqlite3 exited 0. Anything else removes the temporary file: the target is either
//! untouched or the whole database. `-safe` keeps a tampered backup from running programs
//! or writing other files (`.shell`, `ATTACH`, `.output` are refused).
//!
//! The target's directory is granted through the `{restore-target-parent}` marker (see
//! docs/plugins.md): the plugin creates, renames and removes files there.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::process::{self, Command};
use pipeline_plugin_sdk::program::{self, FeedError};
use pipeline_plugin_sdk::{
    DirectoryGrant, Grant, InputStream, PluginError, Report, RestoreOptions, StagePlan, log,
    restore_target,
};

use pipeline_plugin_sdk::process::{describe_exit, stderr_tail as tail};

use crate::{Config, Tail, copy_keeping_tail};

/// Files SQLite keeps beside a database while it is open or after a crash.
const SIDE_FILES: [&str; 3] = ["-wal", "-journal", "-shm"];

pub fn plan(config: &Config) -> StagePlan {
    StagePlan {
        extension: None,
        content_type: None,
        grants: vec![
            Grant::Program(config.program.clone()),
            Grant::Directory(DirectoryGrant {
                path: restore_target::PARENT.into(),
                writable: true,
                create: true,
            }),
        ],
    }
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Refuses a target that is a directory, or a database that holds data (unless allowed),
/// or that a process has open or left a journal beside.
fn check_target(target: &Path, allow_non_empty: bool) -> Result<(), PluginError> {
    let shown = target.display();
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            return Err(PluginError::Config(format!(
                "the restore target {shown} is a directory: give the database file to create"
            )));
        }
        Ok(m) if m.file_type().is_symlink() => {
            return Err(PluginError::Denied(format!(
                "the restore target {shown} is a symbolic link: give the file itself"
            )));
        }
        Ok(m) if m.len() > 0 && !allow_non_empty => {
            return Err(PluginError::Denied(format!(
                "the restore target {shown} exists and is not empty ({} bytes): restoring would \
                 replace it. Restore into a new file, or allow it explicitly (pipeline restore \
                 --allow-non-empty)",
                m.len()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PluginError::from_io(format!("checking {shown}"), &e)),
    }
    for suffix in &SIDE_FILES[..2] {
        let side = side_file(target, suffix);
        if fs::symlink_metadata(&side).is_ok() {
            return Err(PluginError::Denied(format!(
                "{} exists: a process has the database {shown} open, or it was not closed \
                 cleanly; stop what uses it (and open it once with sqlite3 to recover it) \
                 before restoring over it",
                side.display()
            )));
        }
    }
    Ok(())
}

/// Removes the temporary database and whatever sqlite3 left beside it.
fn remove_temporary(temp: &Path) {
    let _ = fs::remove_file(temp);
    for suffix in SIDE_FILES {
        let _ = fs::remove_file(side_file(temp, suffix));
    }
}

pub fn restore(
    config: &Config,
    options: &RestoreOptions,
    data: InputStream,
) -> Result<Report, PluginError> {
    let target = Path::new(&options.target);
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(PluginError::Config(format!(
            "the restore target {} is not a file path",
            target.display()
        )));
    };
    check_target(target, options.allow_non_empty)?;
    let temp = dir.join(format!(
        ".{}.restore-{:016x}",
        name.to_string_lossy(),
        pipeline_plugin_sdk::random_u64()
    ));
    // Claim the name: sqlite3 opens an empty file as a new database.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| PluginError::from_io(format!("creating {}", temp.display()), &e))?;
    let result = load_and_check(config, &temp, data).and_then(|tables| {
        fs::rename(&temp, target)
            .map_err(|e| {
                PluginError::from_io(
                    format!("renaming {} to {}", temp.display(), target.display()),
                    &e,
                )
            })
            .map(|()| tables)
    });
    let tables = match result {
        Ok(tables) => tables,
        Err(err) => {
            remove_temporary(&temp);
            return Err(err.context(format!("nothing was written to {}", target.display())));
        }
    };
    let bytes = fs::metadata(target).map(|m| m.len()).unwrap_or_default();
    log::info(format_args!(
        "restored {} ({tables} tables, {bytes} bytes)",
        target.display()
    ));
    Ok(Report {
        facts: vec![
            ("file".into(), target.display().to_string()),
            ("tables".into(), tables),
            ("bytes".into(), bytes.to_string()),
            ("integrity".into(), "ok".into()),
        ],
    })
}

/// Runs the dump into `temp` and checks the result; returns the number of tables.
fn load_and_check(config: &Config, temp: &Path, data: InputStream) -> Result<String, PluginError> {
    let program = &config.program;
    let shown = temp.display().to_string();
    let command = Command {
        program: program.clone(),
        args: vec![
            "-safe".into(),
            "-bail".into(),
            "-batch".into(),
            shown.clone(),
        ],
        env: vec![],
        stdin: true,
    };
    let mut end = Tail::default();
    let fed = program::feed_with(&command, |stdin| {
        let mut reader = InputReader::new(data);
        let mut writer = OutputWriter::borrowed(stdin);
        copy_keeping_tail(&mut reader, &mut writer, &mut end)
    });
    match fed {
        Ok(_) => {}
        Err(FeedError::Program(e)) => return Err(e.context("loading the backup")),
        Err(FeedError::Stream(e)) => return Err(e.context("the backup stream failed")),
    }
    if !end.ends_a_dump() {
        return Err(PluginError::Other(format!(
            "the backup does not end with COMMIT (it ends with `{}`): it is not a whole dump",
            end.shown()
        )));
    }
    // The new file on its own, as an application will open it.
    let out = query(
        program,
        temp,
        &[
            "PRAGMA integrity_check",
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        ],
    )?;
    let mut lines = out.lines();
    let (Some(integrity), Some(tables)) = (lines.next(), lines.next()) else {
        return Err(PluginError::Other(format!(
            "unexpected answer from {program}: {out:?}"
        )));
    };
    if integrity != "ok" {
        return Err(PluginError::Other(format!(
            "the restored database fails PRAGMA integrity_check: {integrity}"
        )));
    }
    Ok(tables.to_owned())
}

/// Runs `sqlite3 -bail -batch DB SQL…` and returns its stdout.
fn query(program: &str, db: &Path, sql: &[&str]) -> Result<String, PluginError> {
    let mut args = vec![
        "-safe".to_owned(),
        "-bail".into(),
        "-batch".into(),
        db.display().to_string(),
    ];
    args.extend(sql.iter().map(|s| (*s).to_owned()));
    let child = process::spawn(&Command {
        program: program.into(),
        args,
        env: vec![],
        stdin: false,
    })?;
    let mut out = String::new();
    if let Some(stdout) = child.take_stdout() {
        InputReader::new(stdout)
            .read_to_string(&mut out)
            .map_err(|e| PluginError::from_io(format!("reading {program}'s output"), &e))?;
    }
    let status = child.wait();
    if status.code != Some(0) {
        return Err(PluginError::Other(format!(
            "{program} {}{}",
            describe_exit(&status),
            tail(&status)
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files_are_named_after_the_database() {
        assert_eq!(
            side_file(Path::new("/srv/app.db"), "-wal"),
            PathBuf::from("/srv/app.db-wal")
        );
    }

    #[test]
    fn an_existing_database_is_refused_unless_allowed() {
        let dir = std::env::temp_dir().join(format!(
            "sqlite-restore-{}",
            pipeline_plugin_sdk::random_u64()
        ));
        fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("app.db");
        assert!(check_target(&db, false).is_ok());
        fs::write(&db, b"x").expect("write");
        assert!(matches!(
            check_target(&db, false),
            Err(PluginError::Denied(_))
        ));
        assert!(check_target(&db, true).is_ok());
        fs::write(side_file(&db, "-wal"), b"").expect("write");
        assert!(
            matches!(check_target(&db, true), Err(PluginError::Denied(m)) if m.contains("-wal"))
        );
        assert!(matches!(
            check_target(&dir, true),
            Err(PluginError::Config(_))
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
