//! The inverse of the dump: restore a backup into a database with `psql` (plain SQL) or
//! `pg_restore` (custom format), in one transaction, so a backup that turns out broken
//! halfway (checksum mismatch, truncated stream) leaves the target as it was.
//!
//! The end of psql's input never means "commit": `psql --single-transaction` commits when
//! its stdin ends, and stdin ends as well when the pipeline is killed halfway. So psql runs
//! without it, gets `BEGIN` first, and `COMMIT` only after the host ended the backup stream
//! cleanly (every byte matched the manifest and decoded). A psql whose input stops before
//! that exits inside the open transaction, and the server rolls it back. pg_restore needs
//! no such help: it reads the archive's table of contents first and fails on a truncated
//! archive before its own COMMIT.

use std::io::Write;

use pipeline_plugin_sdk::io;
use pipeline_plugin_sdk::process::Command;
use pipeline_plugin_sdk::program::{self, FeedError};
use pipeline_plugin_sdk::{
    Grant, InputStream, PluginError, Report, RestoreOptions, StagePlan, log,
};

use crate::Job;
use crate::args::{Format, Scope};
use crate::conninfo::{self, Connection};

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
    // A bare word would be a database name on psql's default socket: refuse it.
    let trimmed = url.trim();
    if !trimmed.contains('=')
        && !trimmed.starts_with("postgres://")
        && !trimmed.starts_with("postgresql://")
    {
        return Err(PluginError::Config(
            "the restore target is not a connection string: give a URI \
             (postgresql://user@host:5432/db) or key=value pairs (host=db dbname=app)"
                .into(),
        ));
    }
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
    program::output(&Command {
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
    })
}

pub fn restore(
    job: &Job,
    options: &RestoreOptions,
    data: InputStream,
) -> Result<Report, PluginError> {
    if job.config.scope == Scope::Cluster {
        return restore_cluster(job, options, data);
    }
    let (psql, pg_restore) = programs(&job.config.program);
    let to = target(&options.target)?;
    // Always ask: it also proves the target is reachable and accepts the login before
    // anything is sent, so a database that is down or refuses the password is a clear error.
    let n = query(&psql, &to, COUNT_RELATIONS)
        .map_err(|e| e.context("cannot reach the restore target"))?;
    if !options.allow_non_empty && n != "0" {
        return Err(PluginError::Denied(format!(
            "the target database is not empty ({n} tables, views or sequences): restoring \
             would replace the objects the backup contains. Restore into an empty database, \
             or allow it explicitly (pipeline restore --allow-non-empty)"
        )));
    }
    let plain = job.config.format == Format::Plain;
    let (program, args) = if plain {
        (
            psql.clone(),
            vec![
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--no-password".into(),
                format!("--dbname={}", to.dbname),
            ],
        )
    } else {
        (
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
        )
    };
    log::info(format_args!("restoring with {program} in one transaction"));
    let command = Command {
        program,
        args,
        env: env(&to),
        stdin: true,
    };
    let fed = program::feed_with(&command, move |stdin| {
        if plain {
            write_all(stdin, b"BEGIN;\n")?;
        }
        io::splice_all(stdin, &data)?;
        if plain {
            // Only now: the stream ended cleanly, so the backup is whole. The newline ends
            // a last line without one; inside an unfinished statement or COPY the COMMIT is
            // not a command, and psql fails or ends without committing.
            write_all(stdin, b"\nCOMMIT;\n")?;
        }
        Ok(())
    });
    match fed {
        Ok(()) => {}
        Err(FeedError::Program(e)) => {
            return Err(PluginError::Other(format!(
                "{}; the transaction was rolled back, nothing was committed",
                e.message()
            )));
        }
        Err(FeedError::Stream(e)) => {
            return Err(e.context("the backup stream failed; nothing was committed"));
        }
    }
    inspect(job, &options.target)
}

/// Databases besides `postgres` and the templates: what makes a cluster "not empty".
const COUNT_DATABASES: &str =
    "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')";

/// Every role of the target, as pg_dumpall names them in `CREATE ROLE` (quoted if needed).
const ROLES: &str = "SELECT quote_ident(rolname) FROM pg_roles ORDER BY 1";

/// A pg_dumpall script into a cluster, through its maintenance database (the target URL).
///
/// Not one transaction: `CREATE DATABASE` cannot run inside one, and the script connects
/// to each database in turn. So it is refused over a cluster that already holds databases
/// (unless `allow-non-empty`), and a restore that fails halfway says the cluster is
/// incomplete and must be discarded. Roles the target already has (the one the restore
/// connects as, the bootstrap superuser) are not created again, only altered as the
/// backup says: their `CREATE ROLE` line, in the globals before the first `\connect`, is
/// skipped. Data is never filtered: everything from the first `\connect` on passes as is.
fn restore_cluster(
    job: &Job,
    options: &RestoreOptions,
    data: InputStream,
) -> Result<Report, PluginError> {
    use std::io::BufRead;

    let (psql, _) = programs(&job.config.program);
    let to = target(&options.target)?;
    let n = query(&psql, &to, COUNT_DATABASES)
        .map_err(|e| e.context("cannot reach the restore target"))?;
    if !options.allow_non_empty && n != "0" {
        return Err(PluginError::Denied(format!(
            "the target cluster is not empty ({n} databases besides postgres and the templates): \
             a cluster backup restores into a fresh cluster (initdb). Allow it explicitly \
             (pipeline restore --allow-non-empty) only if those databases are not in the backup"
        )));
    }
    let existing: Vec<String> = query(&psql, &to, ROLES)?
        .lines()
        .map(|l| format!("CREATE ROLE {};", l.trim()))
        .collect();
    log::info(format_args!(
        "restoring a whole cluster with {psql}: not in one transaction (CREATE DATABASE cannot be); \
         if it fails, discard the target cluster"
    ));
    let command = Command {
        program: psql.clone(),
        args: vec![
            "-X".into(),
            "-q".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "--no-password".into(),
            format!("--dbname={}", to.dbname),
        ],
        env: env(&to),
        stdin: true,
    };
    let fed = program::feed_with(&command, move |stdin| {
        let mut reader = io::InputReader::new(data);
        let mut writer = io::OutputWriter::borrowed(stdin);
        let failed = |e: std::io::Error| PluginError::from_io("restoring the cluster", &e);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(failed)? == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let statement = text.trim_end();
            if existing.iter().any(|e| e == statement) {
                log::info(format_args!(
                    "{statement} skipped: the role exists in the target (its attributes are set from the backup)"
                ));
                continue;
            }
            writer.write_all(&line).map_err(failed)?;
            if statement.starts_with("\\connect") {
                // The globals end here; the databases follow, passed on as they are.
                std::io::copy(&mut reader, &mut writer).map_err(failed)?;
                break;
            }
        }
        writer.flush().map_err(failed)
    });
    let incomplete = "the target cluster is incomplete: discard it and restore into a fresh one";
    match fed {
        Ok(()) => {}
        Err(FeedError::Program(e)) => {
            return Err(PluginError::Other(format!("{}; {incomplete}", e.message())));
        }
        Err(FeedError::Stream(e)) => {
            return Err(e.context(format!("the backup stream failed; {incomplete}")));
        }
    }
    let databases = query(&psql, &to, COUNT_DATABASES)?;
    let roles = query(
        &psql,
        &to,
        "SELECT count(*) FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'",
    )?;
    Ok(Report {
        facts: vec![("databases".into(), databases), ("roles".into(), roles)],
    })
}

fn write_all(out: &pipeline_plugin_sdk::OutputStream, bytes: &[u8]) -> Result<(), PluginError> {
    let mut w = io::OutputWriter::borrowed(out);
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|e| PluginError::from_io("writing to the restore program", &e))
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
    fn a_target_must_be_a_connection_string() {
        for bare in ["app", "", "localhost:5432"] {
            match target(bare) {
                Err(PluginError::Config(m)) => {
                    assert!(m.contains("not a connection string"), "{bare}: {m}")
                }
                other => panic!("{bare}: {other:?}"),
            }
        }
        let c = target("postgresql://app:pw@db/app").expect("a URI");
        assert_eq!(c.dbname, "postgresql://app@db/app");
        assert!(target("host=db dbname=app").is_ok());
    }

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
