//! Read-only SQL for snapshot sources (`pipeline:plugin/postgres`): a stage reaches only the
//! database URL it was granted, and values come back as text. The connection is opened on
//! the first query and kept for the stage; `sslmode` in the URL works as in libpq (`prefer`
//! by default, `require`, `disable`).
//!
//! Read-only holds against whatever SQL a plugin sends, by mechanism rather than by
//! reading its SQL: each call is exactly one statement (parsed through the extended
//! protocol, which refuses several), run inside a `READ ONLY` transaction the host opens,
//! has already run a statement in (so `SET transaction_read_only = off` is refused by the
//! server) and always rolls back; the session's `default_transaction_read_only` is on and
//! a `statement_timeout` applies. Transaction control (`COMMIT`, `BEGIN`, `SET
//! TRANSACTION`, …) is refused before it reaches the server. What PostgreSQL's read-only
//! mode does not stop (functions with effects outside the transaction) is listed in
//! docs/plugins.md: give the URL a role that may only SELECT.

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GrantContext, StoreState};
use crate::bindings::snapshot_source::pipeline::plugin::postgres::{self as wit, Host};
use crate::bindings::{Grant, PluginError};
use crate::config::ConfigError;
use crate::logging;

/// The `postgres` capability: `allow.databases` and the database a plan asks to query.
pub struct Postgres;

impl Capability for Postgres {
    const ALLOW_KEYS: &'static [&'static str] = &["databases"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/postgres",
        "read-only SQL: only the database in `allow.databases`",
    )];
    /// Database URLs (secrets) for read-only queries.
    type Granted = Vec<String>;
    type State = PostgresState;

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn allowed(cx: &mut GrantContext<'_>, databases: &mut Vec<String>) -> Result<(), ConfigError> {
        databases.extend(cx.allowed("databases").map(|(url, _)| url.clone()));
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        databases: &mut Vec<String>,
    ) -> Result<bool, ConfigError> {
        let Grant::Database(url) = asked else {
            return Ok(false);
        };
        if !databases.contains(url) {
            if !cx.builtin() {
                // The URL is a secret: the message names the key, not the value.
                return Err(cx.error(
                    None,
                    "allow",
                    format!(
                        "stage `{}` (plugin {}) needs to query a database, which the pipeline \
                         file does not grant; if you trust it with that, add to the stage: \
                         allow = {{ databases = [\"<the same URL as its config>\"] }}",
                        cx.label(),
                        cx.stage.plugin
                    ),
                ));
            }
            databases.push(url.clone());
        }
        Ok(true)
    }

    fn state(_stage: &str, _: &Vec<String>) -> PostgresState {
        PostgresState::default()
    }
}

/// The stage's database connection, opened on first use.
#[derive(Default)]
pub struct PostgresState {
    client: Option<postgres::Client>,
}

/// How long one plugin query may run: a host call is not interrupted by the stage's
/// time limit (that only stops WebAssembly code), so the server stops a runaway query.
const STATEMENT_TIMEOUT: &str = "10min";

impl Host for StoreState {
    fn query(&mut self, sql: String) -> Result<Vec<Vec<Option<String>>>, PluginError> {
        let Some(url) = self.grants.postgres.first().cloned() else {
            let msg = format!(
                "stage `{}` was not granted a database: add allow = {{ databases = [\"...\"] }}",
                self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        };
        if let Some(kind) = transaction_control(&sql) {
            let msg = format!(
                "`{kind}` is refused: the host runs every query in a read-only transaction it \
                 opens and rolls back itself; send one SELECT"
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        }
        if self.caps.postgres.client.is_none() {
            self.caps.postgres.client = Some(connect(&url)?);
        }
        let client = self
            .caps
            .postgres
            .client
            .as_mut()
            .ok_or_else(|| PluginError::Other("no database connection".into()))?;
        let result = read_only(client, &sql);
        // Whatever happened, nothing the statement did stays: the transaction is rolled
        // back (on a broken connection, the next call connects again).
        if client.batch_execute("ROLLBACK").is_err() || client.is_closed() {
            self.caps.postgres.client = None;
        }
        let messages = result?;
        let mut rows = Vec::new();
        for m in messages {
            if let postgres::SimpleQueryMessage::Row(row) = m {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect::<Vec<_>>(),
                );
            }
        }
        Ok(rows)
    }
}

/// Connects with every transaction read-only by default and a statement timeout, on top
/// of the options the URL sets.
fn connect(url: &str) -> Result<postgres::Client, PluginError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| PluginError::Config(format!("the database URL is not valid: {e}")))?;
    let mut options = config.get_options().unwrap_or_default().to_string();
    options.push_str(&format!(
        " -c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT}"
    ));
    config.options(options.trim());
    // libpq's `prefer` and `require` encrypt without checking the server's identity
    // (Debian's default server certificate is self-signed); do the same.
    let tls = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map(postgres_native_tls::MakeTlsConnector::new)
        .map_err(|e| PluginError::Other(format!("cannot set up TLS: {e}")))?;
    // The error can quote the connection string; the log redacts secrets, and the URL is
    // one (a `secret` key of the stage).
    config
        .connect(tls)
        .map_err(|e| PluginError::Io(format!("cannot connect to the database: {e}")))
}

/// Runs one statement in a read-only transaction that has already run a statement, so
/// `SET transaction_read_only = off` (and `set_config` of it) is refused by the server.
/// The caller rolls it back.
fn read_only(
    client: &mut postgres::Client,
    sql: &str,
) -> Result<Vec<postgres::SimpleQueryMessage>, PluginError> {
    client
        .batch_execute("START TRANSACTION READ ONLY; SELECT 1")
        .map_err(|e| {
            PluginError::Io(format!(
                "cannot start a read-only transaction: {}",
                describe(&e)
            ))
        })?;
    // Parsing it as a prepared statement (the extended protocol) refuses more than one
    // command: `COMMIT; CREATE TABLE …; SELECT …` never runs any of its parts. The same
    // text then runs as that one statement, with its values as text.
    let statement = client.prepare(sql).map_err(|e| {
        PluginError::Other(format!(
            "query refused: {} (send exactly one statement)",
            describe(&e)
        ))
    })?;
    drop(statement);
    client
        .simple_query(sql)
        .map_err(|e| PluginError::Other(format!("query failed: {}", describe(&e))))
}

/// The transaction-control statement `sql` is, if it is one (its first keyword after
/// comments and blanks): the host owns the transaction.
fn transaction_control(sql: &str) -> Option<String> {
    let words = keywords(sql);
    let first = words.first()?.as_str();
    let second = words.get(1).map(String::as_str);
    let control = match first {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
        | "PREPARE" => true,
        // `SET TRANSACTION …`, `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
        "SET" => matches!(second, Some("TRANSACTION" | "SESSION")),
        _ => false,
    };
    control.then(|| words.iter().take(2).cloned().collect::<Vec<_>>().join(" "))
}

/// The first two words of `sql`, upper case, skipping `--` and (nested) `/* */` comments.
fn keywords(sql: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = sql;
    while words.len() < 2 {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if rest.starts_with("/*") {
            let mut depth = 0usize;
            let mut end = rest.len();
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i + 1 < bytes.len() {
                match &bytes[i..i + 2] {
                    b"/*" => {
                        depth += 1;
                        i += 2;
                    }
                    b"*/" => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            rest = &rest[end..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 {
                break;
            }
            words.push(rest[..len].to_ascii_uppercase());
            rest = &rest[len..];
        }
    }
    words
}

/// The server's message (with its detail and hint) rather than the driver's summary.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                text.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                text.push_str(&format!("; hint: {h}"));
            }
            text
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::transaction_control;

    #[test]
    fn transaction_control_is_recognised_behind_comments() {
        assert_eq!(transaction_control("commit").as_deref(), Some("COMMIT"));
        assert_eq!(
            transaction_control("-- x\n /* a /* b */ c */ set transaction read write").as_deref(),
            Some("SET TRANSACTION")
        );
        assert!(
            transaction_control("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE").is_some()
        );
        assert!(transaction_control("SELECT 'commit'").is_none());
        assert!(transaction_control("set statement_timeout = 0").is_none());
        assert!(transaction_control("").is_none());
    }
}
