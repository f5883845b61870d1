//! `files`: a source that backs up a directory tree as a tar stream, and restores it into
//! a directory.
//!
//! WASI (preview 2) shows a plugin neither Unix modes nor owners, and cannot set them,
//! so the archive is written and extracted by GNU `tar`, a granted program, which keeps
//! modes, owners, modification times and symbolic links (as links). What tar archives is
//! decided inside the sandbox: the plugin walks the directory through its read-only grant
//! (a walk that cannot leave the grant: a symbolic link is an entry, never followed),
//! applies the include/exclude patterns, and hands tar the names one by one
//! (`--no-recursion --null -T -`) while it splices tar's output onward. Nothing is
//! written to disk on the way.
//!
//! Restore streams the archive through [`tar_check`], which refuses any entry that could
//! land outside the target, into `tar --extract` in the target directory.

mod glob;
mod tar_check;
mod walk;

use std::path::Path;

use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::process::{self, Child, Command, describe_exit, stderr_tail as tail};
use pipeline_plugin_sdk::{
    ArtifactMeta, DirectoryGrant, Grant, InputStream, OutputStream, Plugin, PluginError,
    PluginInfo, PluginKind, Report, Restore, RestoreOptions, Source, StagePlan, StreamError,
    config, log, restore_target,
};

use crate::glob::Glob;

pipeline_plugin_sdk::config_keys! {
    struct Config {
        #[key(Path, required, "The directory to back up (read-only: it is never written)")]
        path: String,
        #[key(
            TextList,
            optional,
            "Only what matches these patterns (and the directories leading to it) is backed up, \
             e.g. [\"*.conf\", \"data/**\"]; default: everything",
        )]
        include: Vec<String>,
        #[key(
            TextList,
            optional,
            "What matches these patterns is left out (a directory with everything in it), \
             e.g. [\"*.tmp\", \"cache\"]",
        )]
        exclude: Vec<String>,
        #[key(
            Text,
            default_in_help("tar".into()),
            "The GNU tar program to run (default \"tar\", found on PATH)",
        )]
        program: String,
    }
}

struct Job {
    config: Config,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl Job {
    fn parse(json: &str) -> Result<Job, PluginError> {
        let config: Config = config::parse(json)?;
        if config.path.trim().is_empty() {
            return Err(PluginError::Config("key `path`: must not be empty".into()));
        }
        if config.program.trim().is_empty() {
            return Err(PluginError::Config(
                "key `program`: must not be empty".into(),
            ));
        }
        let globs = |key: &str, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    Glob::new(p).map_err(|e| PluginError::Config(format!("key `{key}[{i}]`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let include = globs("include", &config.include)?;
        let exclude = globs("exclude", &config.exclude)?;
        Ok(Job {
            config,
            include,
            exclude,
        })
    }

    fn create_command(&self) -> Command {
        Command {
            program: self.config.program.clone(),
            args: vec![
                "--create".into(),
                "--file=-".into(),
                "--format=gnu".into(),
                format!("--directory={}", self.config.path),
                "--no-recursion".into(),
                "--null".into(),
                "--verbatim-files-from".into(),
                "--files-from=-".into(),
            ],
            env: vec![],
            stdin: true,
        }
    }
}

fn extract_command(program: &str, target: &str) -> Command {
    Command {
        program: program.into(),
        args: vec![
            "--extract".into(),
            "--file=-".into(),
            format!("--directory={target}"),
            // Modes as archived, not masked by pipeline's umask (077).
            "--preserve-permissions".into(),
            "--delay-directory-restore".into(),
        ],
        env: vec![],
        stdin: true,
    }
}

struct Files;

impl Plugin for Files {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "files".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Backs up a directory as a tar stream (GNU tar: modes, times, links); \
                          restores into a directory"
                .into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let job = Job::parse(&config)?;
        Ok(StagePlan {
            extension: Some("tar".into()),
            content_type: Some("application/x-tar".into()),
            grants: vec![
                Grant::Program(job.config.program.clone()),
                Grant::Directory(DirectoryGrant {
                    path: job.config.path.clone(),
                    writable: false,
                    create: false,
                }),
            ],
        })
    }
}

impl Source for Files {
    fn dump(config: String, meta: ArtifactMeta, out: OutputStream) -> Result<(), PluginError> {
        let job = Job::parse(&config)?;
        let root = Path::new(&job.config.path);
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(PluginError::Config(format!(
                    "key `path`: {} is not a directory",
                    root.display()
                )));
            }
            Err(e) => {
                return Err(PluginError::from_io(
                    format!("key `path`: {}", root.display()),
                    &e,
                ));
            }
        }
        let program = &job.config.program;
        log::info(format_args!(
            "archiving {} with {program} for {}",
            root.display(),
            meta.name
        ));
        let mut names = walk::Walk::new(root, &job.include, &job.exclude);
        let child = process::spawn(&job.create_command())?;
        let streamed = feed_and_splice(&child, &mut names, &out);
        let bytes = match streamed {
            Ok(bytes) => bytes,
            Err(err) => {
                let status = child.kill();
                log::debug(format_args!(
                    "{program} stopped: {}",
                    describe_exit(&status)
                ));
                // tar's own complaint, when it stopped first, says more.
                if status.code.is_some_and(|c| c > 1) {
                    return Err(PluginError::Other(format!(
                        "{program} {}{}",
                        describe_exit(&status),
                        tail(&status)
                    )));
                }
                return Err(err);
            }
        };
        let status = child.wait();
        match status.code {
            Some(0) => {}
            // GNU tar: "some files differ" — a file changed while it was read.
            Some(1) => log::warn(format_args!(
                "{program}: some files changed while they were read; the backup holds them as \
                 tar read them{}",
                tail(&status)
            )),
            _ => {
                return Err(PluginError::Other(format!(
                    "{program} {}{}",
                    describe_exit(&status),
                    tail(&status)
                )));
            }
        }
        log::info(format_args!(
            "{program} finished: {} entries, {bytes} bytes",
            names.named()
        ));
        Ok(())
    }
}

/// Writes the walk's names to tar's stdin while moving tar's stdout to `out`, never
/// blocking on one while the other could move: tar reads names as it archives.
fn feed_and_splice(
    child: &Child,
    names: &mut walk::Walk,
    out: &OutputStream,
) -> Result<u64, PluginError> {
    use pipeline_plugin_sdk::bindings::host::wasi::io::poll;
    let stdout = child
        .take_stdout()
        .ok_or_else(|| PluginError::Other("tar: the host gave no stdout stream".into()))?;
    let mut stdin = Some(
        child
            .take_stdin()
            .ok_or_else(|| PluginError::Other("tar: the host gave no stdin stream".into()))?,
    );
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut total: u64 = 0;
    let closed = |what: &str, e: StreamError| match e {
        StreamError::Closed => PluginError::Io(format!("{what}: closed")),
        StreamError::LastOperationFailed(e) => {
            PluginError::Io(format!("{what}: {}", e.to_debug_string()))
        }
    };
    loop {
        let mut moved = false;
        if let Some(input) = &stdin {
            if at >= pending.len() {
                pending.clear();
                at = 0;
                while pending.len() < 64 * 1024 {
                    match names.next() {
                        Some(name) => {
                            pending.extend_from_slice(name?.as_bytes());
                            pending.push(0);
                        }
                        None => break,
                    }
                }
            }
            if pending.is_empty() {
                // Every name given: tar finishes the archive when its stdin ends.
                stdin = None;
                moved = true;
            } else {
                let permit = input
                    .check_write()
                    .map_err(|e| closed("giving tar the names to archive", e))?;
                if permit > 0 {
                    let n = usize::try_from(permit)
                        .unwrap_or(usize::MAX)
                        .min(pending.len() - at);
                    input
                        .write(&pending[at..at + n])
                        .map_err(|e| closed("giving tar the names to archive", e))?;
                    at += n;
                    moved = true;
                }
            }
        }
        match out.splice(&stdout, pipeline_plugin_sdk::io::SPLICE_CHUNK) {
            Ok(0) => {}
            Ok(n) => {
                total += n;
                moved = true;
            }
            Err(StreamError::Closed) => match out.check_write() {
                // tar's stdout ended: the archive is complete.
                Ok(_) => break,
                Err(e) => return Err(closed(&format!("after {total} bytes, the output"), e)),
            },
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(PluginError::Io(format!(
                    "copying tar's output failed after {total} bytes: {}",
                    e.to_debug_string()
                )));
            }
        }
        if !moved {
            let room = out
                .check_write()
                .map_err(|e| closed(&format!("after {total} bytes, the output"), e))?;
            let mut waits = vec![if room == 0 {
                out.subscribe()
            } else {
                stdout.subscribe()
            }];
            if let Some(input) = &stdin {
                waits.push(input.subscribe());
            }
            let refs: Vec<&_> = waits.iter().collect();
            poll::poll(&refs);
        }
    }
    drop(stdin);
    out.blocking_flush()
        .map_err(|e| closed(&format!("after {total} bytes, the output"), e))?;
    Ok(total)
}

/// The target as the restore's checker sees it: an existing symbolic link on the way to
/// an entry is refused.
struct Existing<'a> {
    root: &'a Path,
}

impl tar_check::Target for Existing<'_> {
    fn is_symlink(&mut self, relative: &str) -> bool {
        std::fs::symlink_metadata(self.root.join(relative))
            .is_ok_and(|m| m.file_type().is_symlink())
    }
}

impl Restore for Files {
    fn plan_restore(config: String) -> Result<StagePlan, PluginError> {
        let job = Job::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![
                Grant::Program(job.config.program),
                Grant::Directory(DirectoryGrant {
                    path: restore_target::PATH.into(),
                    writable: true,
                    create: true,
                }),
            ],
        })
    }

    fn restore(
        config: String,
        options: RestoreOptions,
        data: InputStream,
    ) -> Result<Report, PluginError> {
        let job = Job::parse(&config)?;
        let program = &job.config.program;
        let target = Path::new(&options.target);
        let shown = target.display();
        let mut listing = std::fs::read_dir(target)
            .map_err(|e| PluginError::from_io(format!("reading the restore target {shown}"), &e))?;
        let empty = listing.next().is_none();
        drop(listing);
        if !empty && !options.allow_non_empty {
            return Err(PluginError::Denied(format!(
                "the restore target {shown} is not empty: restoring would mix the backup with \
                 what it holds. Restore into an empty or new directory, or allow it explicitly \
                 (pipeline restore --allow-non-empty)"
            )));
        }
        let child = process::spawn(&extract_command(program, &options.target))?;
        let Some(stdin) = child.take_stdin() else {
            let status = child.kill();
            return Err(PluginError::Other(format!(
                "{program}: the host gave no stdin stream{}",
                tail(&status)
            )));
        };
        let mut reader = InputReader::new(data);
        let checked = {
            let mut writer = OutputWriter::borrowed(&stdin);
            if empty {
                tar_check::Checker::new(tar_check::Empty).run(&mut reader, &mut writer)
            } else {
                tar_check::Checker::new(Existing { root: target }).run(&mut reader, &mut writer)
            }
        };
        drop(reader);
        let partial = if empty {
            "what was extracted before it stays in the target"
        } else {
            "the target may hold part of the backup"
        };
        let entries = match checked {
            Ok(entries) => entries,
            Err(why) => {
                // Stop tar before its input ends: it never sees the refused entry.
                let status = child.kill();
                drop(stdin);
                log::debug(format_args!(
                    "{program} stopped: {}",
                    describe_exit(&status)
                ));
                if status.code.is_some_and(|c| c != 0) && !why.starts_with("entry") {
                    return Err(PluginError::Other(format!(
                        "{program} {}{}; {partial}",
                        describe_exit(&status),
                        tail(&status)
                    )));
                }
                return Err(PluginError::Denied(format!(
                    "the backup was refused: {why}; nothing was written outside {shown}; {partial}"
                )));
            }
        };
        drop(stdin);
        let status = child.wait();
        if status.code != Some(0) {
            return Err(PluginError::Other(format!(
                "{program} {}{}; {partial}",
                describe_exit(&status),
                tail(&status)
            )));
        }
        log::info(format_args!("restored {entries} entries into {shown}"));
        Ok(Report {
            facts: vec![
                ("directory".into(), options.target.clone()),
                ("entries".into(), entries.to_string()),
            ],
        })
    }

    /// The directory it backs up: the host refuses to restore over it without `--yes`.
    fn source_target(config: String) -> Result<Option<String>, PluginError> {
        Ok(Some(Job::parse(&config)?.config.path))
    }
}

pipeline_plugin_sdk::export_restorable_source!(Files);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Files::describe().config_keys,
            &serde_json::json!({"path": "/srv/app"}),
        );
    }

    #[test]
    fn plan_asks_for_tar_and_a_read_only_grant() {
        let p = <Files as Plugin>::plan(r#"{"path": "/srv/app"}"#.into()).expect("plan");
        assert_eq!(p.extension.as_deref(), Some("tar"));
        assert!(matches!(&p.grants[0], Grant::Program(t) if t == "tar"));
        assert!(matches!(&p.grants[1], Grant::Directory(d) if d.path == "/srv/app" && !d.writable));
        let r = <Files as Restore>::plan_restore(r#"{"path": "/srv/app"}"#.into()).expect("plan");
        assert!(
            matches!(&r.grants[1], Grant::Directory(d) if d.path == restore_target::PATH && d.writable)
        );
    }

    #[test]
    fn bad_patterns_name_their_key() {
        match Job::parse(r#"{"path": "/a", "exclude": ["ok", "a/../b"]}"#) {
            Err(PluginError::Config(m)) => assert!(m.contains("exclude[1]"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn tar_never_recurses_on_its_own() {
        let job = Job::parse(r#"{"path": "/srv/app"}"#).expect("ok");
        let args = job.create_command().args;
        for needed in [
            "--no-recursion",
            "--null",
            "--verbatim-files-from",
            "--files-from=-",
        ] {
            assert!(args.iter().any(|a| a == needed), "{needed}: {args:?}");
        }
        assert!(!args.iter().any(|a| a == "--dereference" || a == "-h"));
        let x = extract_command("tar", "/restore").args;
        assert!(x.iter().any(|a| a == "--preserve-permissions"));
        assert!(!x.iter().any(|a| a == "--absolute-names" || a == "-P"));
    }
}
