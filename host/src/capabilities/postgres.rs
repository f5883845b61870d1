//! Read-only SQL for snapshot sources (`pipeline:plugin/postgres`): a stage reaches only the
//! database URL it was granted, every query runs in a read-only transaction, and values
//! come back as text. The connection is opened on the first query and kept for the stage;
//! `sslmode` in the URL works as in libpq (`prefer` by default, `require`, `disable`).

use crate::bindings::PluginError;
use crate::bindings::snapshot_source::pipeline::plugin::postgres::Host;
use crate::logging;

use super::StoreState;

/// The stage's database connection, opened on first use.
#[derive(Default)]
pub struct PostgresState {
    client: Option<postgres::Client>,
}

impl Host for StoreState {
    fn query(&mut self, sql: String) -> Result<Vec<Vec<Option<String>>>, PluginError> {
        let Some(url) = self.grants.databases.first().cloned() else {
            let msg = format!(
                "stage `{}` was not granted a database: add allow = {{ databases = [\"...\"] }}",
                self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        };
        if self.postgres.client.is_none() {
            // libpq's `prefer` and `require` encrypt without checking the server's identity
            // (Debian's default server certificate is self-signed); do the same.
            let tls = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                .build()
                .map(postgres_native_tls::MakeTlsConnector::new)
                .map_err(|e| PluginError::Other(format!("cannot set up TLS: {e}")))?;
            let client = postgres::Client::connect(&url, tls).map_err(|e| {
                // The error can quote the connection string; the log redacts secrets, and
                // the URL is one (a `secret` key of the stage).
                PluginError::Io(format!("cannot connect to the database: {e}"))
            })?;
            self.postgres.client = Some(client);
        }
        let client = self
            .postgres
            .client
            .as_mut()
            .ok_or_else(|| PluginError::Other("no database connection".into()))?;
        let mut tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(|e| PluginError::Io(format!("cannot start a read-only transaction: {e}")))?;
        let messages = tx
            .simple_query(&sql)
            .map_err(|e| PluginError::Other(format!("query failed: {}", describe(&e))))?;
        tx.commit()
            .map_err(|e| PluginError::Io(format!("cannot end the transaction: {e}")))?;
        // Only the rows of the last statement count (`SET …; SELECT …` returns the SELECT's).
        let (mut rows, mut current) = (Vec::new(), Vec::new());
        for m in messages {
            match m {
                postgres::SimpleQueryMessage::Row(row) => current.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect::<Vec<_>>(),
                ),
                postgres::SimpleQueryMessage::CommandComplete(_) => {
                    rows = std::mem::take(&mut current);
                }
                _ => {}
            }
        }
        Ok(rows)
    }
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
