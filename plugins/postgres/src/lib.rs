//! `postgres`: a source that dumps a PostgreSQL database with `pg_dump`.
//!
//! pg_dump runs on the host through the `process` interface; its stdout is spliced into
//! the stage's output stream, so the dump never passes through the plugin's memory. The
//! password is taken out of the connection string and handed over as `PGPASSWORD`, never
//! on the command line (see [`conninfo`]).

mod args;
mod conninfo;
mod restore;

use pipeline_plugin_sdk::process::Command;
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Report, Restore, RestoreOptions, Source, StagePlan, config, log, program,
};

use crate::args::{Format, Scope};

pipeline_plugin_sdk::config_keys! {
    struct Config {
        #[key(
            Secret,
            required,
            "Connection string: a libpq URI (postgres://user:password@host:5432/db?sslmode=require) \
             or key=value pairs; the password is passed to pg_dump as PGPASSWORD",
        )]
        url: String,
        #[key(
            Text,
            optional,
            "\"plain\" (SQL, restored with psql; default) or \"custom\" (pg_restore archive)",
        )]
        format: Format,
        #[key(
            TextList,
            optional,
            "Extra pg_dump arguments, e.g. [\"--exclude-table=audit_*\"]; not --file, --format or --dbname",
        )]
        options: Vec<String>,
        #[key(
            Text,
            default_in_help("pg_dump".into()),
            "The pg_dump program to run (default \"pg_dump\", found on PATH)",
        )]
        program: String,
        #[key(
            Boolean,
            default(false),
            "Run pg_dump with --verbose (its progress goes to the log)",
        )]
        verbose: bool,
        #[key(
            Text,
            optional,
            "\"database\" (the database of `url`; default) or \"cluster\" (roles, tablespaces and \
             every database, with pg_dumpall found beside pg_dump; plain SQL)",
        )]
        scope: Scope,
    }
}

struct Job {
    config: Config,
    connection: conninfo::Connection,
}

impl Job {
    fn parse(json: &str) -> Result<Job, PluginError> {
        let config: Config = config::parse(json)?;
        if config.url.trim().is_empty() {
            return Err(PluginError::Config("key `url`: must not be empty".into()));
        }
        if config.program.trim().is_empty() {
            return Err(PluginError::Config(
                "key `program`: must not be empty".into(),
            ));
        }
        if config.scope == Scope::Cluster && config.format != Format::Plain {
            return Err(PluginError::Config(
                "key `format`: a cluster dump (scope = \"cluster\") is plain SQL: pg_dumpall writes no custom archive"
                    .into(),
            ));
        }
        args::check_options(&config.options)?;
        let connection = conninfo::split_password(&config.url)?;
        Ok(Job { config, connection })
    }

    /// The program a dump runs: pg_dump, or pg_dumpall beside it for a cluster.
    fn program(&self) -> String {
        match self.config.scope {
            Scope::Database => self.config.program.clone(),
            Scope::Cluster => args::dumpall_program(&self.config.program),
        }
    }

    fn command(&self) -> Command {
        let c = &self.config;
        let dbname = &self.connection.dbname;
        Command {
            program: self.program(),
            args: match c.scope {
                Scope::Database => args::pg_dump_args(c.format, c.verbose, &c.options, dbname),
                Scope::Cluster => args::pg_dumpall_args(c.verbose, &c.options, dbname),
            },
            env: self
                .connection
                .password
                .iter()
                .map(|password| ("PGPASSWORD".to_owned(), password.clone()))
                .collect(),
            stdin: false,
        }
    }
}

struct Postgres;

impl Plugin for Postgres {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "postgres".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Dumps a PostgreSQL database with pg_dump".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let job = Job::parse(&config)?;
        let format = job.config.format;
        Ok(StagePlan {
            extension: Some(format.extension().into()),
            content_type: Some(format.content_type().into()),
            grants: vec![Grant::Program(job.program())],
        })
    }
}

impl Source for Postgres {
    fn dump(config: String, meta: ArtifactMeta, out: OutputStream) -> Result<(), PluginError> {
        let job = Job::parse(&config)?;
        let program = &job.program();
        log::info(format_args!(
            "running {program} ({} format) for {}",
            job.config.format.name(),
            meta.name
        ));

        let bytes = program::stream_to(&job.command(), &out)?;
        log::info(format_args!("{program} finished: {bytes} bytes"));
        Ok(())
    }
}

impl Restore for Postgres {
    fn plan_restore(config: String) -> Result<StagePlan, PluginError> {
        Ok(restore::plan(&Job::parse(&config)?))
    }

    fn restore(
        config: String,
        options: RestoreOptions,
        data: InputStream,
    ) -> Result<Report, PluginError> {
        restore::restore(&Job::parse(&config)?, &options, data)
    }

    /// The database it dumps: the host guards it against a restore without `--yes`.
    fn source_target(config: String) -> Result<Option<String>, PluginError> {
        Ok(Some(Job::parse(&config)?.config.url))
    }
}

pipeline_plugin_sdk::export_restorable_source!(Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Postgres::describe().config_keys,
            &serde_json::json!({"url": "postgres://u@h/db"}),
        );
    }

    fn plan(json: &str) -> Result<StagePlan, PluginError> {
        <Postgres as Plugin>::plan(json.into())
    }

    #[test]
    fn plan_follows_the_format() {
        let p = plan(r#"{"url": "postgres://app:pw@db/app"}"#).expect("plan");
        assert_eq!(p.extension.as_deref(), Some("sql"));
        assert_eq!(p.content_type.as_deref(), Some("application/sql"));
        assert!(matches!(&p.grants[..], [Grant::Program(p)] if p == "pg_dump"));

        let p = plan(
            r#"{"url": "host=db", "format": "custom", "program": "/usr/lib/postgresql/17/bin/pg_dump"}"#,
        )
        .expect("plan");
        assert_eq!(p.extension.as_deref(), Some("dump"));
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/vnd.postgresql.custom-dump")
        );
        assert!(
            matches!(&p.grants[..], [Grant::Program(p)] if p == "/usr/lib/postgresql/17/bin/pg_dump")
        );
    }

    #[test]
    fn source_target_is_the_url_it_dumps() {
        let url = "postgres://app:pw@db/app";
        let got = <Postgres as Restore>::source_target(format!(r#"{{"url": "{url}"}}"#));
        assert_eq!(got.ok().flatten().as_deref(), Some(url));
        assert!(<Postgres as Restore>::source_target(r#"{"url": ""}"#.into()).is_err());
    }

    #[test]
    fn plan_rejects_bad_configs() {
        for (json, needle) in [
            (r#"{}"#, "missing required key `url`"),
            (
                r#"{"url": "x", "passwd": "y"}"#,
                "unknown key `passwd` (this plugin accepts: url, format, options, program, verbose, scope)",
            ),
            (r#"{"url": "x", "format": "tar"}"#, "unknown value `tar`"),
            (r#"{"url": "x", "options": ["-f", "a"]}"#, "stdout"),
            (r#"{"url": "x", "verbose": "yes"}"#, "key `verbose`"),
            (r#"{"url": "postgres://a:50%@db"}"#, "%25"),
            (r#"{"url": " "}"#, "must not be empty"),
            (r#"{"url": "x", "program": ""}"#, "key `program`"),
        ] {
            match plan(json) {
                Err(PluginError::Config(m)) => assert!(m.contains(needle), "{json}: {m}"),
                other => panic!("{json}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn command_keeps_the_password_off_the_command_line() {
        let job = Job::parse(
            r#"{"url": "postgres://app:s%40cret@db:5432/app?sslmode=require", "verbose": true, "options": ["-n", "public"]}"#,
        )
        .expect("valid");
        let cmd = job.command();
        assert_eq!(cmd.program, "pg_dump");
        assert_eq!(
            cmd.args,
            [
                "--format=plain",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-acl",
                "--no-password",
                "--verbose",
                "-n",
                "public",
                "--dbname=postgres://app@db:5432/app?sslmode=require"
            ]
        );
        assert!(cmd.args.iter().all(|a| !a.contains("cret")));
        assert_eq!(cmd.env, [("PGPASSWORD".to_owned(), "s@cret".to_owned())]);
        assert!(!cmd.stdin);

        let job = Job::parse(r#"{"url": "postgres://db/app"}"#).expect("valid");
        assert!(job.command().env.is_empty());
    }

    #[test]
    fn a_cluster_scope_runs_pg_dumpall_beside_pg_dump_without_the_password() {
        let job = Job::parse(
            r#"{"url": "postgres://postgres:s%40cret@db/postgres", "scope": "cluster", "program": "/usr/lib/postgresql/15/bin/pg_dump"}"#,
        )
        .expect("valid");
        let cmd = job.command();
        assert_eq!(cmd.program, "/usr/lib/postgresql/15/bin/pg_dumpall");
        assert_eq!(
            cmd.args,
            ["--no-password", "--dbname=postgres://postgres@db/postgres"]
        );
        assert_eq!(cmd.env, [("PGPASSWORD".to_owned(), "s@cret".to_owned())]);
        let p = plan(r#"{"url": "host=db", "scope": "cluster"}"#).expect("plan");
        assert_eq!(p.extension.as_deref(), Some("sql"));
        assert!(matches!(&p.grants[..], [Grant::Program(p)] if p == "pg_dumpall"));
        match plan(r#"{"url": "host=db", "scope": "cluster", "format": "custom"}"#) {
            Err(PluginError::Config(m)) => assert!(m.contains("plain SQL"), "{m}"),
            other => panic!("{other:?}"),
        }
        match plan(r#"{"url": "host=db", "scope": "everything"}"#) {
            Err(PluginError::Config(m)) => assert!(m.contains("scope"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn describe_lists_every_key() {
        let info = Postgres::describe();
        assert_eq!(info.name, "postgres");
        let keys: Vec<_> = info.config_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            keys,
            ["url", "format", "options", "program", "verbose", "scope"]
        );
        assert!(matches!(
            info.config_keys[0].value_type,
            pipeline_plugin_sdk::ValueType::Secret
        ));
    }
}
