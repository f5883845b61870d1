//! `redis`: a source that takes an RDB snapshot of a Redis server with `redis-cli --rdb -`
//! (the server's replication snapshot, streamed to stdout: no temporary file), and restores
//! it into an RDB file for a server to start from.
//!
//! The snapshot passes through the plugin in chunks (bounded memory) so that it can be
//! checked on the way ([`rdb`]): a snapshot that does not end with a matching CRC-64 fails
//! the dump. The URL's password goes to redis-cli as `REDISCLI_AUTH`, never on its command
//! line.

mod rdb;
mod restore;

use std::io::{BufRead, Write};

use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::process::{self, Command};
use pipeline_plugin_sdk::program::{describe_exit, failure, tail};
use pipeline_plugin_sdk::url::{self, Url};
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Report, Restore, RestoreOptions, Source, StagePlan, config, log,
};

pipeline_plugin_sdk::config_keys! {
    struct Config {
        #[key(
            Secret,
            required,
            "The server: redis://[user:]password@host:6379 (rediss:// for TLS); parameters \
             ?socket=/run/redis/redis.sock, cacert=…, cert=…, key=…, sni=…, insecure; the \
             password is passed to redis-cli as REDISCLI_AUTH",
        )]
        url: String,
        #[key(
            Text,
            default_in_help("redis-cli".into()),
            "The redis-cli program (default \"redis-cli\", found on PATH; version 7 or later)",
        )]
        program: String,
    }
}

/// Query parameters and the redis-cli option each becomes (`None`: a flag).
const PARAMETERS: &[(&str, Option<&str>)] = &[
    ("socket", Some("-s")),
    ("cacert", Some("--cacert")),
    ("cacertdir", Some("--cacertdir")),
    ("cert", Some("--cert")),
    ("key", Some("--key")),
    ("sni", Some("--sni")),
    ("insecure", None),
];

struct Job {
    config: Config,
    /// redis-cli's connection arguments.
    args: Vec<String>,
    password: Option<String>,
}

impl Job {
    fn parse(json: &str) -> Result<Job, PluginError> {
        let config: Config = config::parse(json)?;
        if config.program.trim().is_empty() {
            return Err(PluginError::Config(
                "key `program`: must not be empty".into(),
            ));
        }
        let u = url::parse(&config.url, &["redis", "rediss"], "key `url`")?;
        let (args, password) = connection(u)?;
        Ok(Job {
            config,
            args,
            password,
        })
    }

    fn env(&self) -> Vec<(String, String)> {
        self.password
            .iter()
            .map(|p| ("REDISCLI_AUTH".to_owned(), p.clone()))
            .collect()
    }

    fn command(&self) -> Command {
        let mut args = self.args.clone();
        args.extend(["--rdb".to_owned(), "-".to_owned()]);
        Command {
            program: self.config.program.clone(),
            args,
            env: self.env(),
            stdin: false,
        }
    }
}

/// redis-cli's arguments for `u`, and the password.
fn connection(u: Url) -> Result<(Vec<String>, Option<String>), PluginError> {
    let invalid = |m: String| PluginError::Config(format!("key `url`: {m}"));
    if !u.path.is_empty() && u.path.parse::<u32>().is_err() {
        return Err(invalid(
            "the path is a database number (redis://host:6379/0); a snapshot holds every database anyway"
                .into(),
        ));
    }
    let mut args = Vec::new();
    let socket = u.query.iter().any(|(k, _)| k == "socket");
    if !socket {
        args.push("-h".to_owned());
        args.push(if u.host.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            u.host.clone()
        });
        args.push("-p".to_owned());
        args.push(u.port.unwrap_or(6379).to_string());
    }
    if let Some(user) = &u.user {
        args.push("--user".to_owned());
        args.push(user.clone());
    }
    if u.scheme == "rediss" {
        args.push("--tls".to_owned());
    }
    for (name, value) in &u.query {
        let Some((_, option)) = PARAMETERS.iter().find(|(p, _)| p == name) else {
            return Err(invalid(format!(
                "unknown URL parameter `{name}` (known: {})",
                PARAMETERS
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        match option {
            Some(option) if value.is_empty() => {
                return Err(invalid(format!("URL parameter `{name}` needs a value")));
            }
            Some(option) => {
                args.push((*option).to_owned());
                args.push(value.clone());
            }
            None if matches!(value.as_str(), "" | "true" | "1") => {
                args.push(format!("--{name}"));
            }
            None => return Err(invalid(format!("URL parameter `{name}` takes no value"))),
        }
    }
    Ok((args, u.password))
}

/// redis-cli before 7.0 takes `--rdb -` for a file named `-`: refuse it before it runs so.
fn check_version(program: &str) -> Result<(), PluginError> {
    let answer = pipeline_plugin_sdk::program::output(&Command {
        program: program.into(),
        args: vec!["--version".into()],
        env: vec![],
        stdin: false,
    })?;
    // "redis-cli 7.0.15"
    let major = answer
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= 7 => Ok(()),
        _ => Err(PluginError::Other(format!(
            "{program} --version says {answer:?}: redis-cli 7 or later is needed to stream a \
             snapshot to stdout (`--rdb -`); install a newer redis-tools or point `program` \
             at one"
        ))),
    }
}

struct Redis;

impl Plugin for Redis {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "redis".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Takes an RDB snapshot of a Redis server with redis-cli --rdb".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let job = Job::parse(&config)?;
        Ok(StagePlan {
            extension: Some("rdb".into()),
            content_type: Some("application/x-redis-rdb".into()),
            grants: vec![Grant::Program(job.config.program)],
        })
    }
}

impl Source for Redis {
    fn dump(config: String, meta: ArtifactMeta, out: OutputStream) -> Result<(), PluginError> {
        let job = Job::parse(&config)?;
        let program = &job.config.program;
        check_version(program)?;
        log::info(format_args!("running {program} --rdb - for {}", meta.name));
        let child = process::spawn(&job.command())?;
        let Some(stdout) = child.take_stdout() else {
            let status = child.kill();
            return Err(PluginError::Other(format!(
                "{program}: the host gave no stdout stream{}",
                tail(&status)
            )));
        };
        let mut snapshot = rdb::Snapshot::default();
        let copied = copy_checked(&mut InputReader::new(stdout), &out, &mut snapshot);
        if let Err(err) = copied {
            let status = child.kill();
            log::debug(format_args!(
                "{program} stopped: {}",
                describe_exit(&status)
            ));
            return Err(err.context(format!("streaming {program}'s snapshot")));
        }
        let status = child.wait();
        if status.code != Some(0) {
            return Err(failure(program, &status));
        }
        let marker = status.stderr_tail.contains("EOF marker");
        let (rest, snapshot) = snapshot.finish(marker).map_err(|rdb::NotRdb(why)| {
            PluginError::Other(format!(
                "{program} exited with 0 but its output is not a whole RDB snapshot: {why}"
            ))
        })?;
        write_all(&out, &rest)?;
        if snapshot.unchecked {
            log::warn(format_args!(
                "the server writes no RDB checksum (rdbchecksum no): the snapshot's integrity \
                 could not be checked"
            ));
        }
        log::info(format_args!(
            "{program} finished: {} bytes, RDB version {}, CRC-64 {}",
            snapshot.passed(),
            snapshot.version().unwrap_or_default(),
            if snapshot.unchecked {
                "absent"
            } else {
                "matches"
            }
        ));
        Ok(())
    }
}

/// Copies `from` into `out` through `snapshot`, which holds back the end.
fn copy_checked(
    from: &mut InputReader,
    out: &OutputStream,
    snapshot: &mut rdb::Snapshot,
) -> Result<(), PluginError> {
    loop {
        let buf = from
            .fill_buf()
            .map_err(|e| PluginError::from_io("reading the snapshot", &e))?;
        if buf.is_empty() {
            return Ok(());
        }
        let pass = snapshot.push(buf);
        let n = buf.len();
        from.consume(n);
        write_all(out, &pass)?;
    }
}

fn write_all(out: &OutputStream, bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut w = OutputWriter::borrowed(out);
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|e| PluginError::from_io("writing the snapshot", &e))
}

impl Restore for Redis {
    fn plan_restore(config: String) -> Result<StagePlan, PluginError> {
        Job::parse(&config)?;
        Ok(restore::plan())
    }

    fn restore(
        config: String,
        options: RestoreOptions,
        data: InputStream,
    ) -> Result<Report, PluginError> {
        Job::parse(&config)?;
        restore::restore(&options, data)
    }

    /// The server it snapshots: the host guards it against a restore without `--yes`.
    fn source_target(config: String) -> Result<Option<String>, PluginError> {
        Ok(Some(Job::parse(&config)?.config.url))
    }
}

pipeline_plugin_sdk::export_restorable_source!(Redis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Redis::describe().config_keys,
            &serde_json::json!({"url": "redis://h"}),
        );
    }

    fn job(url: &str) -> Result<Job, PluginError> {
        Job::parse(&serde_json::json!({ "url": url }).to_string())
    }

    #[test]
    fn the_password_goes_to_the_environment() {
        let j = job("redis://:s%40cret@cache:6380/2").expect("valid");
        let cmd = j.command();
        assert_eq!(cmd.args, ["-h", "cache", "-p", "6380", "--rdb", "-"]);
        assert_eq!(cmd.env, [("REDISCLI_AUTH".to_owned(), "s@cret".to_owned())]);
        assert!(!cmd.stdin);

        let j = job("rediss://backup:pw@cache/0?cacert=%2Fetc%2Fca.pem&sni=cache.example")
            .expect("valid");
        assert_eq!(
            j.command().args,
            [
                "-h",
                "cache",
                "-p",
                "6379",
                "--user",
                "backup",
                "--tls",
                "--cacert",
                "/etc/ca.pem",
                "--sni",
                "cache.example",
                "--rdb",
                "-"
            ]
        );
        let j = job("redis://:pw@localhost?socket=/run/redis/redis.sock").expect("valid");
        assert_eq!(
            j.command().args,
            ["-s", "/run/redis/redis.sock", "--rdb", "-"]
        );
        let j = job("redis://").expect("valid");
        assert_eq!(
            j.command().args,
            ["-h", "127.0.0.1", "-p", "6379", "--rdb", "-"]
        );
        assert!(j.command().env.is_empty());
    }

    #[test]
    fn bad_configs_are_refused_without_quoting_the_password() {
        for (url, needle) in [
            ("redis://:secret@h/app", "database number"),
            (
                "redis://:secret@h?timeout=5",
                "unknown URL parameter `timeout`",
            ),
            ("redis://:secret@h?socket=", "needs a value"),
            ("redis://:secret@h?insecure=no", "takes no value"),
            ("mysql://:secret@h", "redis://"),
        ] {
            match job(url) {
                Err(PluginError::Config(m)) => {
                    assert!(m.contains(needle), "{url}: {m}");
                    assert!(!m.contains("secret"), "{m}");
                }
                other => panic!("{url}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn plan_asks_for_redis_cli() {
        let p = <Redis as Plugin>::plan(r#"{"url": "redis://h"}"#.into()).expect("plan");
        assert_eq!(p.extension.as_deref(), Some("rdb"));
        assert!(matches!(&p.grants[..], [Grant::Program(p)] if p == "redis-cli"));
    }
}
