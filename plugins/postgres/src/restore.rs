//! The inverse of the dump: restore a backup into a database with `psql` (plain SQL) or
//! `pg_restore` (custom format), in one transaction, so a backup that turns out broken
//! halfway (checksum mismatch, truncated stream) leaves the target as it was.

use std::io::Read;

use pipeline_plugin_sdk::io::{self, InputReader};
use pipeline_plugin_sdk::process::{self, Command};
use pipeline_plugin_sdk::{
    Grant, InputStream, PluginError, Report, RestoreOptions, StagePlan, log,
};

use crate::args::Format;
use crate::conninfo::{self, Connection};
use crate::{Job, describe_exit, tail};

/// Relations that make a database "not empty" for a restore.
const COUNT_RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     AND n.nspname NOT LIKE 'pg_temp%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')";

/// Tables, exact rows, size and large objects, on one line separated by `|`.
const FACTS: &str = "WITH t AS (SELECT n.nspname, c.relname, c.relkind FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     AND c.relkind IN ('r', 'p')) \
     SELECT (SELECT count(*) FROM t), \
     (SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', nspname, relname), false, true, '')))[1]::text::bigint), 0) FROM t WHERE relkind = 'r'), \
     pg_database_size(current_database()), \
     (SELECT count(*) FROM pg_largeobject_metadata)";

/// psql and pg_restore beside the configured pg_dump when it is a path (same major
/// version), else found on PATH like pg_dump.
pub fn programs(pg_dump: &str) -> (String, String) {
    match pg_dump.rsplit_once('/') {
        Some((dir, _)) => (format!("{dir}/psql"), format!("{dir}/pg_restore")),
        None => ("psql".into(), "pg_restore".into()),
    }
}

pub fn plan(job: &Job) -> StagePlan {
    let (psql, pg_restore) = programs(&job.config.program);
    let mut grants = vec![Grant::Program(psql)];
    if job.config.format == Format::Custom {
        grants.push(Grant::Program(pg_restore));
    }
    StagePlan {
        extension: None,
        content_type: None,
        grants,
    }
}

fn target(url: &str) -> Result<Connection, PluginError> {
    conninfo::split_password(url)
        .map_err(|e| PluginError::Config(e.message().replace("key `url`", "the restore target")))
}

fn env(c: &Connection) -> Vec<(String, String)> {
    c.password
        .iter()
        .map(|p| ("PGPASSWORD".to_owned(), p.clone()))
        .collect()
}

/// Runs one query with psql and returns its unaligned, tuples-only output.
fn query(psql: &str, target: &Connection, sql: &str) -> Result<String, PluginError> {
    let child = process::spawn(&Command {
        program: psql.into(),
        args: vec![
            "-X".into(),
            "-q".into(),
            "-A".into(),
            "-t".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "--no-password".into(),
            format!("--dbname={}", target.dbname),
            "-c".into(),
            sql.into(),
        ],
        env: env(target),
        stdin: false,
    })?;
    let mut out = String::new();
    if let Some(stdout) = child.take_stdout() {
        InputReader::new(stdout)
            .read_to_string(&mut out)
            .map_err(|e| PluginError::from_io("reading psql's output", &e))?;
    }
    let status = child.wait();
    if status.code != Some(0) {
        return Err(PluginError::Other(format!(
            "{psql} {}{}",
            describe_exit(&status),
            tail(&status)
        )));
    }
    Ok(out.trim().to_owned())
}

pub fn restore(
    job: &Job,
    options: &RestoreOptions,
    data: InputStream,
) -> Result<Report, PluginError> {
    let (psql, pg_restore) = programs(&job.config.program);
    let to = target(&options.target)?;
    if !options.allow_non_empty {
        let n = query(&psql, &to, COUNT_RELATIONS)?;
        if n != "0" {
            return Err(PluginError::Denied(format!(
                "the target database is not empty ({n} tables, views or sequences): restoring \
                 would replace the objects the backup contains. Restore into an empty database, \
                 or allow it explicitly (pipeline restore --allow-non-empty)"
            )));
        }
    }
    let (program, args) = match job.config.format {
        Format::Plain => (
            psql.clone(),
            vec![
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--single-transaction".into(),
                "--no-password".into(),
                format!("--dbname={}", to.dbname),
            ],
        ),
        Format::Custom => (
            pg_restore,
            vec![
                "--single-transaction".into(),
                "--exit-on-error".into(),
                "--no-owner".into(),
                "--no-acl".into(),
                "--clean".into(),
                "--if-exists".into(),
                "--no-password".into(),
                format!("--dbname={}", to.dbname),
            ],
        ),
    };
    log::info(format_args!("restoring with {program} in one transaction"));
    let child = process::spawn(&Command {
        program: program.clone(),
        args,
        env: env(&to),
        stdin: true,
    })?;
    let Some(stdin) = child.take_stdin() else {
        let status = child.kill();
        return Err(PluginError::Other(format!(
            "{program}: the host gave no stdin stream{}",
            tail(&status)
        )));
    };
    if let Err(err) = io::splice_all(&stdin, &data) {
        // Stop the program before its stdin closes: a closed stdin would let psql commit
        // what it has read so far.
        let status = child.kill();
        drop(stdin);
        log::debug(format_args!(
            "{program} stopped: {}",
            describe_exit(&status)
        ));
        return Err(err.context("the backup stream failed; nothing was committed"));
    }
    drop(stdin);
    drop(data);
    let status = child.wait();
    if status.code != Some(0) {
        return Err(PluginError::Other(format!(
            "{program} {}{}; the transaction was rolled back, nothing was committed",
            describe_exit(&status),
            tail(&status)
        )));
    }
    inspect(job, &options.target)
}

pub fn inspect(job: &Job, url: &str) -> Result<Report, PluginError> {
    let (psql, _) = programs(&job.config.program);
    let line = query(&psql, &target(url)?, FACTS)?;
    let values: Vec<&str> = line.split('|').collect();
    let [tables, rows, size, large_objects] = values[..] else {
        return Err(PluginError::Other(format!(
            "unexpected answer from psql: {line:?}"
        )));
    };
    Ok(Report {
        facts: vec![
            ("tables".into(), tables.into()),
            ("rows".into(), rows.into()),
            ("bytes".into(), size.into()),
            ("large objects".into(), large_objects.into()),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_programs_follow_pg_dump() {
        assert_eq!(
            programs("/usr/lib/postgresql/15/bin/pg_dump"),
            (
                "/usr/lib/postgresql/15/bin/psql".to_string(),
                "/usr/lib/postgresql/15/bin/pg_restore".to_string()
            )
        );
        assert_eq!(
            programs("pg_dump"),
            ("psql".to_string(), "pg_restore".to_string())
        );
    }
}
