//! `sqlite`: a source that backs up a live SQLite database as SQL text, and restores it
//! into a new file.
//!
//! The `sqlite3` program does the reading, through SQLite's own locking: the plugin starts
//! `sqlite3 -readonly DB` with `BEGIN`, a few `SELECT`s that print the header settings
//! (`journal_mode`, `user_version`, `application_id`) as `PRAGMA` lines, `.dump` and
//! `COMMIT`. The first `SELECT` opens one read transaction and `.dump` (a `SAVEPOINT`
//! inside it) reads every table in that same transaction: in WAL mode that is one
//! snapshot while writers go on committing; in rollback-journal mode it is a shared lock
//! that makes writers wait until the dump has finished. Either way the dump is one
//! committed state of the database, never a mix of two. A copy of the file itself is not:
//! WASI has no POSIX locks, so a component reading the file directly could not take
//! SQLite's lock, and a stream cannot be the destination of `.backup` or `VACUUM INTO`
//! (both write a database file, and the product writes no temporary files).
//!
//! The dump ends with `COMMIT;` only when `.dump` met no error (otherwise sqlite3 writes
//! `ROLLBACK; -- due to errors`), so the plugin reads the stream as it passes and fails
//! the backup unless it ends that way.

mod restore;

use std::io::{BufRead, Write};

use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::process::{self, Command, describe_exit, stderr_tail as tail};
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Report, Restore, RestoreOptions, Source, StagePlan, config, log,
};

pipeline_plugin_sdk::config_keys! {
    struct Config {
        #[key(Path, required, "The SQLite database file to back up (read-only: it is never written)")]
        path: String,
        #[key(
            Text,
            default_in_help("sqlite3".into()),
            "The sqlite3 program to run (default \"sqlite3\", found on PATH; 3.37 or later)",
        )]
        program: String,
        #[key(
            Integer,
            default(60_000),
            "How long to wait (milliseconds) for a writer holding the database before the read \
             transaction starts",
        )]
        busy_timeout_ms: u64,
    }
}

/// How every dump (and so every backup) ends when `.dump` read the whole database.
const DUMP_END: &[u8] = b"COMMIT;\n";

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = config::parse(json)?;
        if config.path.trim().is_empty() {
            return Err(PluginError::Config("key `path`: must not be empty".into()));
        }
        if config.program.trim().is_empty() {
            return Err(PluginError::Config(
                "key `program`: must not be empty".into(),
            ));
        }
        Ok(config)
    }

    /// `sqlite3 -readonly DB` with the commands that dump it in one read transaction.
    fn dump_command(&self) -> Command {
        let pragma =
            |name: &str| format!("SELECT 'PRAGMA {name}=' || {name} || ';' FROM pragma_{name}");
        Command {
            program: self.program.clone(),
            args: vec![
                "-readonly".into(),
                "-bail".into(),
                "-batch".into(),
                self.path.clone(),
                format!(".timeout {}", self.busy_timeout_ms),
                "BEGIN".into(),
                pragma("journal_mode"),
                pragma("user_version"),
                pragma("application_id"),
                ".dump".into(),
                "COMMIT".into(),
            ],
            env: vec![],
            stdin: false,
        }
    }
}

/// The last bytes of a stream, to check how it ends.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let keep = 64;
        if bytes.len() >= keep {
            self.0.clear();
            self.0.extend_from_slice(&bytes[bytes.len() - keep..]);
        } else {
            self.0.extend_from_slice(bytes);
            let excess = self.0.len().saturating_sub(keep);
            self.0.drain(..excess);
        }
    }

    fn ends_a_dump(&self) -> bool {
        self.0.ends_with(DUMP_END)
    }

    fn shown(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let last = text.trim_end().rsplit('\n').next().unwrap_or_default();
        last.chars().take(60).collect()
    }
}

/// Copies `from` to `out`, keeping the last bytes; returns the bytes copied.
fn copy_keeping_tail(
    from: &mut InputReader,
    out: &mut impl Write,
    tail: &mut Tail,
) -> Result<u64, PluginError> {
    loop {
        let buf = from
            .fill_buf()
            .map_err(|e| PluginError::Io(format!("reading: {e}")))?;
        if buf.is_empty() {
            break;
        }
        out.write_all(buf)
            .map_err(|e| PluginError::Io(format!("writing: {e}")))?;
        tail.push(buf);
        let n = buf.len();
        from.consume(n);
    }
    out.flush()
        .map_err(|e| PluginError::Io(format!("flushing: {e}")))?;
    Ok(from.bytes_read())
}

struct Sqlite;

impl Plugin for Sqlite {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "sqlite".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Backs up a live SQLite database as SQL (sqlite3 .dump in one read \
                          transaction); restores into a new file"
                .into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        Ok(StagePlan {
            extension: Some("sql".into()),
            content_type: Some("application/sql".into()),
            grants: vec![Grant::Program(config.program)],
        })
    }
}

impl Source for Sqlite {
    fn dump(config: String, meta: ArtifactMeta, out: OutputStream) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        let program = &config.program;
        log::info(format_args!(
            "dumping {} with {program} in one read transaction for {}",
            config.path, meta.name
        ));
        let child = process::spawn(&config.dump_command())?;
        let Some(stdout) = child.take_stdout() else {
            let status = child.kill();
            return Err(PluginError::Other(format!(
                "{program}: the host gave no stdout stream{}",
                tail(&status)
            )));
        };
        let mut reader = InputReader::new(stdout);
        let mut writer = OutputWriter::borrowed(&out);
        let mut end = Tail::default();
        let copied = copy_keeping_tail(&mut reader, &mut writer, &mut end);
        drop(reader);
        let bytes = match copied {
            Ok(bytes) => bytes,
            Err(err) => {
                let status = child.kill();
                log::debug(format_args!(
                    "{program} stopped: {}",
                    describe_exit(&status)
                ));
                return Err(err.context(format!("streaming {program}'s dump")));
            }
        };
        let status = child.wait();
        if status.code != Some(0) {
            return Err(PluginError::Other(format!(
                "{program} {} while dumping {}{}",
                describe_exit(&status),
                config.path,
                tail(&status)
            )));
        }
        if !end.ends_a_dump() {
            return Err(PluginError::Other(format!(
                "{program}'s dump of {} does not end with COMMIT (it ends with `{}`): it met \
                 errors reading the database (see the lines above), so the backup is incomplete",
                config.path,
                end.shown()
            )));
        }
        log::info(format_args!("{program} finished: {bytes} bytes"));
        Ok(())
    }
}

impl Restore for Sqlite {
    fn plan_restore(config: String) -> Result<StagePlan, PluginError> {
        Ok(restore::plan(&Config::parse(&config)?))
    }

    fn restore(
        config: String,
        options: RestoreOptions,
        data: InputStream,
    ) -> Result<Report, PluginError> {
        restore::restore(&Config::parse(&config)?, &options, data)
    }

    /// The database file it backs up: the host refuses to restore over it without `--yes`.
    fn source_target(config: String) -> Result<Option<String>, PluginError> {
        Ok(Some(Config::parse(&config)?.path))
    }
}

pipeline_plugin_sdk::export_restorable_source!(Sqlite);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Sqlite::describe().config_keys,
            &serde_json::json!({"path": "/srv/app.db"}),
        );
    }

    #[test]
    fn the_dump_reads_in_one_transaction() {
        let c = Config::parse(r#"{"path": "/srv/app.db", "busy_timeout_ms": 5}"#).expect("ok");
        let cmd = c.dump_command();
        assert_eq!(cmd.program, "sqlite3");
        assert_eq!(
            &cmd.args[..4],
            ["-readonly", "-bail", "-batch", "/srv/app.db"]
        );
        assert_eq!(cmd.args[4], ".timeout 5");
        let begin = cmd.args.iter().position(|a| a == "BEGIN").expect("BEGIN");
        let dump = cmd.args.iter().position(|a| a == ".dump").expect(".dump");
        let commit = cmd.args.iter().position(|a| a == "COMMIT").expect("COMMIT");
        assert!(begin < dump && dump < commit, "{:?}", cmd.args);
        assert!(cmd.args[begin + 1].contains("pragma_journal_mode"));
    }

    #[test]
    fn bad_configs_are_refused() {
        for (json, needle) in [
            (r#"{}"#, "missing required key `path`"),
            (r#"{"path": " "}"#, "must not be empty"),
            (r#"{"path": "/a", "program": ""}"#, "key `program`"),
            (r#"{"path": "/a", "url": "x"}"#, "unknown key `url`"),
        ] {
            match Config::parse(json) {
                Err(PluginError::Config(m)) => assert!(m.contains(needle), "{json}: {m}"),
                Err(other) => panic!("{json}: {other:?}"),
                Ok(_) => panic!("{json}: accepted"),
            }
        }
    }

    #[test]
    fn only_a_dump_ending_in_commit_is_whole() {
        let mut t = Tail::default();
        t.push(b"BEGIN TRANSACTION;\nINSERT INTO a VALUES(1);\n");
        assert!(!t.ends_a_dump());
        t.push(b"COMMIT;\n");
        assert!(t.ends_a_dump());
        let mut t = Tail::default();
        t.push(&[b'x'; 1000]);
        t.push(b"\nROLLBACK; -- due to errors\n");
        assert!(!t.ends_a_dump());
        assert_eq!(t.shown(), "ROLLBACK; -- due to errors");
        assert!(t.0.len() <= 64);
    }
}
