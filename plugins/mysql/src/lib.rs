//! `mysql`: a source that dumps a MariaDB or MySQL database with `mariadb-dump` (or
//! `mysqldump`), and restores it with `mariadb` (or `mysql`).
//!
//! The dump program runs on the host through the `process` interface; its stdout is
//! spliced into the stage's output stream, so the dump never passes through the plugin's
//! memory. The URL's password goes to the program as `MYSQL_PWD`, never on its command line
//! (see [`args`]).

mod args;
mod restore;

use pipeline_plugin_sdk::process::Command;
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Report, Restore, RestoreOptions, Source, StagePlan, config, log, program,
};

pipeline_plugin_sdk::config_keys! {
    struct Config {
        #[key(
            Secret,
            required,
            "The database: mysql://user:password@host:3306/database (or mariadb://); \
             parameters ?socket=/run/mysqld/mysqld.sock, ssl-ca=…, ssl-mode=… and others; \
             the password is passed to the program as MYSQL_PWD",
        )]
        url: String,
        #[key(
            TextList,
            optional,
            "Extra dump arguments, e.g. [\"--ignore-table=app.audit_log\"]; long options as \
             --name=value; not --result-file, --password, --databases or the connection's",
        )]
        options: Vec<String>,
        #[key(
            Text,
            default_in_help("mariadb-dump".into()),
            "The dump program (default \"mariadb-dump\", found on PATH; \"mysqldump\" for \
             MySQL); restore runs `mariadb` (`mysql` for mysqldump) from the same place",
        )]
        program: String,
    }
}

struct Job {
    config: Config,
    connection: args::Connection,
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
        args::check_options(&config.options)?;
        let connection = args::connection(&config.url, "key `url`")?;
        Ok(Job { config, connection })
    }

    fn command(&self) -> Command {
        Command {
            program: self.config.program.clone(),
            args: args::dump_args(&self.connection, &self.config.options),
            env: self.connection.env(),
            stdin: false,
        }
    }
}

struct Mysql;

impl Plugin for Mysql {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "mysql".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Dumps a MariaDB or MySQL database with mariadb-dump or mysqldump".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let job = Job::parse(&config)?;
        Ok(StagePlan {
            extension: Some("sql".into()),
            content_type: Some("application/sql".into()),
            grants: vec![Grant::Program(job.config.program)],
        })
    }
}

impl Source for Mysql {
    fn dump(config: String, meta: ArtifactMeta, out: OutputStream) -> Result<(), PluginError> {
        let job = Job::parse(&config)?;
        let program = &job.config.program;
        log::info(format_args!(
            "running {program} for database `{}` ({})",
            job.connection.database, meta.name
        ));
        let bytes = program::stream_to(&job.command(), &out)?;
        log::info(format_args!("{program} finished: {bytes} bytes"));
        Ok(())
    }
}

impl Restore for Mysql {
    fn plan_restore(config: String) -> Result<StagePlan, PluginError> {
        Ok(restore::plan(&Job::parse(&config)?))
    }

    fn restore(
        config: String,
        options: RestoreOptions,
        data: InputStream,
    ) -> Result<Report, PluginError> {
        restore::restore(&Job::parse(&config)?, &options, &data)
    }

    /// The database it dumps: the host guards it against a restore without `--yes`.
    fn source_target(config: String) -> Result<Option<String>, PluginError> {
        Ok(Some(Job::parse(&config)?.config.url))
    }
}

pipeline_plugin_sdk::export_restorable_source!(Mysql);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Mysql::describe().config_keys,
            &serde_json::json!({"url": "mysql://u@h/db"}),
        );
    }

    fn plan(json: &str) -> Result<StagePlan, PluginError> {
        <Mysql as Plugin>::plan(json.into())
    }

    #[test]
    fn plan_asks_for_the_dump_program() {
        let p = plan(r#"{"url": "mysql://app:pw@db/app"}"#).expect("plan");
        assert_eq!(p.extension.as_deref(), Some("sql"));
        assert!(matches!(&p.grants[..], [Grant::Program(p)] if p == "mariadb-dump"));
        let p = plan(r#"{"url": "mysql://app:pw@db/app", "program": "/opt/mysql/bin/mysqldump"}"#)
            .expect("plan");
        assert!(matches!(&p.grants[..], [Grant::Program(p)] if p == "/opt/mysql/bin/mysqldump"));
    }

    #[test]
    fn plan_rejects_bad_configs() {
        for (json, needle) in [
            (r#"{}"#, "missing required key `url`"),
            (
                r#"{"url": "mysql://h/d", "passwd": "y"}"#,
                "unknown key `passwd` (this plugin accepts: url, options, program)",
            ),
            (r#"{"url": " "}"#, "must not be empty"),
            (r#"{"url": "mysql://h/d", "program": ""}"#, "key `program`"),
            (r#"{"url": "mysql://a:50%@db/d"}"#, "%25"),
            (
                r#"{"url": "mysql://h/d", "options": ["-r", "x"]}"#,
                "stdout",
            ),
        ] {
            match plan(json) {
                Err(PluginError::Config(m)) => assert!(m.contains(needle), "{json}: {m}"),
                other => panic!("{json}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_dump_command_keeps_the_password_in_the_environment() {
        let job = Job::parse(r#"{"url": "mysql://app:s%40cret@db:3307/shop"}"#).expect("valid");
        let cmd = job.command();
        assert_eq!(cmd.program, "mariadb-dump");
        assert!(
            cmd.args.iter().all(|a| !a.contains("cret")),
            "{:?}",
            cmd.args
        );
        assert_eq!(cmd.env, [("MYSQL_PWD".to_owned(), "s@cret".to_owned())]);
        assert!(!cmd.stdin);
    }

    #[test]
    fn source_target_is_the_url_it_dumps() {
        let url = "mysql://app:pw@db/app";
        let got = <Mysql as Restore>::source_target(format!(r#"{{"url": "{url}"}}"#));
        assert_eq!(got.ok().flatten().as_deref(), Some(url));
    }
}
