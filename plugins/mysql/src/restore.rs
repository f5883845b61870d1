//! The inverse of the dump: restore a backup into a database with `mariadb` (or `mysql`).
//!
//! MariaDB and MySQL commit every `CREATE` and `DROP` at once (DDL is never part of a
//! transaction), and a dump is mostly DDL, so no transaction can hold a restore. What is
//! promised instead:
//! * the client's input ends only after the backup streamed whole and matched its checksum:
//!   a failed stream stops the client first (the host kills it before its stdin closes), so
//!   a truncated last statement is never run;
//! * into an empty database (the default), all or nothing: when anything fails, the plugin
//!   drops every table, view, sequence, routine and event the database then holds, so it is
//!   empty again, as it was;
//! * with `--allow-non-empty`, no such promise: the tables the backup replaced before the
//!   failure stay replaced, and the error says so.
//!
//! If `pipeline` itself is killed (SIGKILL) during a restore, nobody empties the target:
//! it keeps what was restored so far (see the README).

use pipeline_plugin_sdk::process::Command;
use pipeline_plugin_sdk::program::{self, FeedError};
use pipeline_plugin_sdk::{
    Grant, InputStream, PluginError, Report, RestoreOptions, StagePlan, log,
};

use crate::Job;
use crate::args::{self, Connection};

/// Tables, views, sequences, routines and events: what makes a database "not empty".
const COUNT_OBJECTS: &str = "SELECT \
     (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()) + \
     (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = DATABASE()) + \
     (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE())";

/// One `DROP` statement a line for everything [`COUNT_OBJECTS`] counts.
const DROPS: &str = "SELECT CONCAT('DROP ', CASE table_type WHEN 'VIEW' THEN 'VIEW' \
     WHEN 'SEQUENCE' THEN 'SEQUENCE' ELSE 'TABLE' END, ' IF EXISTS `', \
     REPLACE(table_name, '`', '``'), '`;') FROM information_schema.tables \
     WHERE table_schema = DATABASE() \
     UNION ALL SELECT CONCAT('DROP ', routine_type, ' IF EXISTS `', \
     REPLACE(routine_name, '`', '``'), '`;') FROM information_schema.routines \
     WHERE routine_schema = DATABASE() \
     UNION ALL SELECT CONCAT('DROP EVENT IF EXISTS `', REPLACE(event_name, '`', '``'), '`;') \
     FROM information_schema.events WHERE event_schema = DATABASE()";

/// Tables, views, routines, triggers, events and bytes, tab-separated.
const FACTS: &str = "SELECT \
     (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'), \
     (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'VIEW'), \
     (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = DATABASE()), \
     (SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()), \
     (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE()), \
     (SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables WHERE table_schema = DATABASE())";

/// The client beside the dump program: `mariadb` for `mariadb-dump`, `mysql` for
/// `mysqldump`, in the same directory when the program is a path.
pub fn client(dump_program: &str) -> String {
    let (dir, name) = match dump_program.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, dump_program),
    };
    let client = if name.starts_with("mysqldump") {
        "mysql"
    } else {
        "mariadb"
    };
    match dir {
        Some(dir) => format!("{dir}/{client}"),
        None => client.into(),
    }
}

pub fn plan(job: &Job) -> StagePlan {
    StagePlan {
        extension: None,
        content_type: None,
        grants: vec![Grant::Program(client(&job.config.program))],
    }
}

fn command(client: &str, to: &Connection, extra: &[&str], stdin: bool) -> Command {
    let mut args = to.args.clone();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("--database={}", to.database));
    Command {
        program: client.into(),
        args,
        env: to.env(),
        stdin,
    }
}

/// Runs one statement and returns its rows, tab-separated, without headers or escaping.
fn query(client: &str, to: &Connection, sql: &str) -> Result<String, PluginError> {
    let execute = format!("--execute={sql}");
    program::output(&command(
        client,
        to,
        &["--batch", "--skip-column-names", "--raw", &execute],
        false,
    ))
}

pub fn restore(
    job: &Job,
    options: &RestoreOptions,
    data: &InputStream,
) -> Result<Report, PluginError> {
    let client = client(&job.config.program);
    let to = args::connection(&options.target, "the restore target")?;
    // Always ask: it also proves the target is reachable and accepts the login before
    // anything is sent.
    let n = query(&client, &to, COUNT_OBJECTS)
        .map_err(|e| e.context("cannot reach the restore target"))?;
    let empty = n == "0";
    if !empty && !options.allow_non_empty {
        return Err(PluginError::Denied(format!(
            "the target database is not empty ({n} tables, views, routines or events): \
             restoring would replace the tables the backup contains, and MariaDB/MySQL cannot \
             undo that if the restore fails. Restore into an empty database, or allow it \
             explicitly (pipeline restore --allow-non-empty)"
        )));
    }
    log::info(format_args!(
        "restoring into database `{}` with {client}{}",
        to.database,
        if empty {
            " (an empty database: emptied again if the restore fails)"
        } else {
            " (not empty: a failed restore leaves what it replaced replaced)"
        }
    ));
    // --binary-mode: the dump's bytes as they are (no `\r\n` rewriting, no client commands
    // but DELIMITER, which routines need).
    let feed = program::feed(
        &command(&client, &to, &["--batch", "--binary-mode"], true),
        data,
        b"",
    );
    let err = match feed {
        Ok(()) => return inspect(&client, &to),
        Err(FeedError::Program(e)) => e,
        Err(FeedError::Stream(e)) => e.context("the backup stream failed"),
    };
    if !empty {
        return Err(err.context(
            "the restore stopped halfway; the target was not empty, so what the backup \
             replaced before that stays replaced (MariaDB and MySQL commit every CREATE and \
             DROP at once)",
        ));
    }
    match empty_again(&client, &to) {
        Ok(()) => Err(err.context(
            "the restore failed; the target, empty before, was emptied again: nothing of \
             the backup stays",
        )),
        Err(cleanup) => Err(err.context(format!(
            "the restore failed, and emptying the target again failed too ({}): drop and \
             re-create the database `{}` before trying again",
            cleanup.message(),
            to.database
        ))),
    }
}

/// Drops everything the target holds, in batches that fit on a command line.
fn empty_again(client: &str, to: &Connection) -> Result<(), PluginError> {
    let drops = query(client, to, DROPS)?;
    let mut batch = String::new();
    for statement in drops.lines().chain(std::iter::once("")) {
        if !batch.is_empty() && (statement.is_empty() || batch.len() + statement.len() > 60_000) {
            query(client, to, &format!("SET FOREIGN_KEY_CHECKS = 0; {batch}"))?;
            batch.clear();
        }
        batch.push_str(statement);
    }
    let left = query(client, to, COUNT_OBJECTS)?;
    if left != "0" {
        return Err(PluginError::Other(format!("{left} objects are left")));
    }
    log::info(format_args!(
        "the target database `{}` was emptied again",
        to.database
    ));
    Ok(())
}

fn inspect(client: &str, to: &Connection) -> Result<Report, PluginError> {
    let line = query(client, to, FACTS)?;
    let values: Vec<&str> = line.split('\t').collect();
    let [tables, views, routines, triggers, events, bytes] = values[..] else {
        return Err(PluginError::Other(format!(
            "unexpected answer from {client}: {line:?}"
        )));
    };
    Ok(Report {
        facts: [
            ("tables", tables),
            ("views", views),
            ("routines", routines),
            ("triggers", triggers),
            ("events", events),
            ("bytes", bytes),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_follows_the_dump_program() {
        assert_eq!(client("mariadb-dump"), "mariadb");
        assert_eq!(client("mysqldump"), "mysql");
        assert_eq!(client("/opt/mysql/bin/mysqldump"), "/opt/mysql/bin/mysql");
        assert_eq!(
            client("/usr/local/bin/mariadb-dump"),
            "/usr/local/bin/mariadb"
        );
    }

    #[test]
    fn restore_commands_name_the_target_database_and_keep_the_password_out() {
        let to = args::connection("mysql://app:s%40cret@db/restored", "the restore target")
            .expect("a URL");
        let cmd = command("mariadb", &to, &["--batch"], true);
        assert_eq!(
            cmd.args.last().map(String::as_str),
            Some("--database=restored")
        );
        assert!(cmd.args.iter().all(|a| !a.contains("cret")));
        assert_eq!(cmd.env, [("MYSQL_PWD".to_owned(), "s@cret".to_owned())]);
        match args::connection("restored", "the restore target") {
            Err(PluginError::Config(m)) => assert!(m.starts_with("the restore target: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
