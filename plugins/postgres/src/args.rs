//! pg_dump's command line: the fixed part, and checking the user's extra `options`.
//!
//! The plugin owns where the dump goes (stdout), its format and the connection; extra
//! options that would change those are refused with a message saying why. The check reads
//! the options the way pg_dump's `getopt_long` does: grouped short flags (`-vf x`), values
//! attached or separate (`-fx`, `-f x`, `--file=x`, `--file x`) and unambiguous prefixes
//! of long options (`--form`).

use pipeline_plugin_sdk::PluginError;

/// pg_dump's short options; a `:` follows those that take a value (pg_dump.c).
const SHORT_OPTIONS: &str = "abBcCd:e:E:f:F:h:j:n:N:Op:RsS:t:T:U:vwWxXZ:";

/// pg_dump's long options that take a value (PostgreSQL 12 to 18).
const LONG_WITH_VALUE: &[&str] = &[
    "compress",
    "dbname",
    "encoding",
    "exclude-extension",
    "exclude-schema",
    "exclude-table",
    "exclude-table-and-children",
    "exclude-table-data",
    "exclude-table-data-and-children",
    "extension",
    "extra-float-digits",
    "file",
    "filter",
    "format",
    "host",
    "include-foreign-data",
    "jobs",
    "lock-wait-timeout",
    "port",
    "restrict-key",
    "role",
    "rows-per-insert",
    "schema",
    "section",
    "snapshot",
    "superuser",
    "sync-method",
    "table",
    "table-and-children",
    "username",
];

/// pg_dump's long options without a value (PostgreSQL 12 to 18).
const LONG_FLAGS: &[&str] = &[
    "attribute-inserts",
    "binary-upgrade",
    "blobs",
    "clean",
    "column-inserts",
    "create",
    "data-only",
    "disable-dollar-quoting",
    "disable-triggers",
    "enable-row-security",
    "help",
    "if-exists",
    "inserts",
    "large-objects",
    "load-via-partition-root",
    "no-acl",
    "no-blobs",
    "no-comments",
    "no-data",
    "no-large-objects",
    "no-owner",
    "no-password",
    "no-policies",
    "no-privileges",
    "no-publications",
    "no-reconnect",
    "no-schema",
    "no-security-labels",
    "no-statistics",
    "no-subscriptions",
    "no-sync",
    "no-table-access-method",
    "no-tablespaces",
    "no-toast-compression",
    "no-unlogged-table-data",
    "on-conflict-do-nothing",
    "password",
    "quote-all-identifiers",
    "schema-only",
    "sequence-data",
    "serializable-deferrable",
    "statistics",
    "statistics-only",
    "strict-names",
    "use-set-session-authorization",
    "verbose",
    "version",
    "with-data",
    "with-schema",
    "with-statistics",
];

/// Options the plugin sets itself or that would stop pg_dump from writing a dump to
/// stdout, with the reason given to the user.
const FORBIDDEN: &[(char, &str, &str)] = &[
    (
        'f',
        "file",
        "the dump must go to stdout, where the plugin streams it to the next stage",
    ),
    (
        'F',
        "format",
        "set the format with the `format` key (\"plain\" or \"custom\")",
    ),
    (
        'd',
        "dbname",
        "the plugin passes the connection from the `url` key (keeping its password off the \
         command line)",
    ),
    (
        'V',
        "version",
        "pg_dump would print its version instead of a dump",
    ),
    (
        '?',
        "help",
        "pg_dump would print its help instead of a dump",
    ),
];

fn refuse(option: &str, why: &str) -> PluginError {
    PluginError::Config(format!("key `options`: `{option}` cannot be used: {why}"))
}

/// Check the extra options; see the module documentation.
pub fn check_options(options: &[String]) -> Result<(), PluginError> {
    let mut args = options.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            if let Some(next) = args.next() {
                return Err(positional(next));
            }
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline_value) = match long.split_once('=') {
                Some((name, _)) => (name, true),
                None => (long, false),
            };
            for (_, forbidden, why) in FORBIDDEN {
                if forbidden.starts_with(name) {
                    return Err(refuse(arg, why));
                }
            }
            if !inline_value && takes_value(name) {
                // The next argument is this option's value, whatever it looks like.
                args.next();
            }
        } else if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (i, c) in cluster.char_indices() {
                if let Some((_, _, why)) = FORBIDDEN.iter().find(|(short, _, _)| *short == c) {
                    return Err(refuse(&format!("-{c}"), why));
                }
                if short_takes_value(c) {
                    if i + c.len_utf8() == cluster.len() {
                        args.next();
                    }
                    break;
                }
            }
        } else {
            return Err(positional(arg));
        }
    }
    Ok(())
}

fn positional(arg: &str) -> PluginError {
    PluginError::Config(format!(
        "key `options`: `{arg}` is not an option; pg_dump would take it as the database \
         name, which comes from the `url` key"
    ))
}

fn short_takes_value(c: char) -> bool {
    SHORT_OPTIONS
        .find(c)
        .is_some_and(|i| SHORT_OPTIONS[i + c.len_utf8()..].starts_with(':'))
}

/// Whether `--name` (a full name or an unambiguous prefix, as getopt_long accepts) takes
/// a value.
fn takes_value(name: &str) -> bool {
    if LONG_WITH_VALUE.contains(&name) {
        return true;
    }
    if LONG_FLAGS.contains(&name) {
        return false;
    }
    let mut matches = LONG_WITH_VALUE
        .iter()
        .map(|o| (o, true))
        .chain(LONG_FLAGS.iter().map(|o| (o, false)))
        .filter(|(o, _)| o.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some((_, with_value)), None) => with_value,
        // Unknown or ambiguous: pg_dump itself will refuse it.
        _ => false,
    }
}

/// The dump format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// SQL text, restored with `psql`.
    #[default]
    Plain,
    /// pg_dump's compressed archive, restored with `pg_restore`.
    Custom,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Custom => "custom",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Plain => "sql",
            Format::Custom => "dump",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Plain => "application/sql",
            Format::Custom => "application/vnd.postgresql.custom-dump",
        }
    }
}

/// What a dump covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The one database of the connection string, with `pg_dump`.
    #[default]
    Database,
    /// The whole cluster with `pg_dumpall`: roles, tablespaces and every database,
    /// including those created after the pipeline file was written.
    Cluster,
}

/// pg_dumpall beside the configured pg_dump (same directory when it is a path, so the same
/// major version), else on PATH.
pub fn dumpall_program(pg_dump: &str) -> String {
    match pg_dump.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/pg_dumpall"),
        None => "pg_dumpall".into(),
    }
}

/// pg_dumpall's arguments. No `--clean`: a cluster dump restores into a fresh cluster,
/// and `--clean` would try to drop the role the restore connects as. Owners and privileges
/// are kept: the roles they name are in the dump.
pub fn pg_dumpall_args(verbose: bool, options: &[String], dbname: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["--no-password".into()];
    if verbose {
        args.push("--verbose".into());
    }
    args.extend(options.iter().cloned());
    args.push(format!("--dbname={dbname}"));
    args
}

/// pg_dump's arguments: `dbname` is the connection string without its password.
pub fn pg_dump_args(
    format: Format,
    verbose: bool,
    options: &[String],
    dbname: &str,
) -> Vec<String> {
    let mut args: Vec<String> = match format {
        Format::Plain => vec![
            "--format=plain".into(),
            "--clean".into(),
            "--if-exists".into(),
        ],
        Format::Custom => vec!["--format=custom".into()],
    };
    args.push("--no-owner".into());
    args.push("--no-acl".into());
    // Never prompt: a cron run has no one to answer, and a prompt would hang it.
    args.push("--no-password".into());
    if verbose {
        args.push("--verbose".into());
    }
    args.extend(options.iter().cloned());
    args.push(format!("--dbname={dbname}"));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(options: &[&str]) -> Result<(), String> {
        let options: Vec<String> = options.iter().map(|s| (*s).to_owned()).collect();
        check_options(&options).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn ordinary_options_pass() {
        for ok in [
            &[][..],
            &["--schema=public"],
            &["--exclude-table", "audit_*", "-n", "app"],
            &["-T", "-f"], // "-f" is -T's value here
            &["--table", "--file"],
            &["-vn", "public"],
            &["-Z9"],
            &[
                "--no-comments",
                "--lock-wait-timeout=30s",
                "--quote-all-identifiers",
            ],
            &["--exclude-table-data", "logs", "--rows-per-insert", "100"],
            &["--lock-wait", "30s"], // unambiguous prefix of --lock-wait-timeout
            &["--verb"],
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn options_the_plugin_owns_are_refused() {
        for (bad, needle) in [
            (&["-f", "out.sql"][..], "stdout"),
            (&["-fout.sql"], "stdout"),
            (&["--file=out.sql"], "stdout"),
            (&["--file", "out.sql"], "stdout"),
            (&["--fil", "out.sql"], "stdout"),
            (&["-vf", "out.sql"], "stdout"),
            (&["-F", "c"], "`format` key"),
            (&["-Fc"], "`format` key"),
            (&["--format=custom"], "`format` key"),
            (&["--form", "c"], "`format` key"),
            (&["-d", "other"], "`url` key"),
            (&["--dbname=other"], "`url` key"),
            (&["--db", "other"], "`url` key"),
            (&["-cd", "other"], "`url` key"),
            (&["--version"], "version"),
            (&["-V"], "version"),
            (&["--help"], "help"),
            (&["-?"], "help"),
            (&["otherdb"], "database name"),
            (&["-n", "public", "otherdb"], "database name"),
            (&["--", "-x"], "database name"),
        ] {
            let err = check(bad).expect_err(&format!("{bad:?} must be refused"));
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(err.starts_with("key `options`"), "{err}");
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            pg_dump_args(Format::Plain, false, &[], "postgres://app@db/app"),
            [
                "--format=plain",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-acl",
                "--no-password",
                "--dbname=postgres://app@db/app"
            ]
        );
        assert_eq!(
            pg_dump_args(
                Format::Custom,
                true,
                &["--schema=public".into()],
                "host=db dbname=app"
            ),
            [
                "--format=custom",
                "--no-owner",
                "--no-acl",
                "--no-password",
                "--verbose",
                "--schema=public",
                "--dbname=host=db dbname=app"
            ]
        );
    }
}
