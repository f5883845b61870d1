//! A pipeline's metrics in the Prometheus text format, written after every run to the file
//! of its `[metrics]` table, for node_exporter's textfile collector.
//!
//! They are computed from the run history ([`crate::history`]): the last run, and the last
//! successful one (whose timestamp is what an alert on "no backup for a day" watches).
//! Every metric is a gauge named `pipeline_…`, labelled `pipeline` (and `sink`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::MetricsSettings;
use crate::history::{Outcome, Record};

/// Escapes a label value as the text format wants: `\`, `"` and newlines.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The metrics of a pipeline's history (oldest first); empty when there is no run.
pub fn render(history: &[Record]) -> String {
    let Some(last) = history.last() else {
        return String::new();
    };
    let success = history.iter().rev().find(|r| r.outcome == Outcome::Ok);
    let p = format!("pipeline=\"{}\"", label(&last.pipeline));
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP pipeline_{name} {help}");
        let _ = writeln!(out, "# TYPE pipeline_{name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "pipeline_{name}{{{labels}}} {v}");
        }
    };
    let one = |v: f64| vec![(p.clone(), v)];
    gauge(
        "last_run_timestamp_seconds",
        "When the last run ended, in seconds since the Unix epoch.",
        &one(seconds(last.ended)),
    );
    gauge(
        "last_run_success",
        "1 if the last run succeeded, 0 if it failed or was stopped.",
        &one(if last.outcome == Outcome::Ok {
            1.0
        } else {
            0.0
        }),
    );
    gauge(
        "last_run_exit_code",
        "The exit code of the last run (0 ok, 1 failed, 2 configuration, 128+N signal N).",
        &one(f64::from(last.exit_code)),
    );
    gauge(
        "last_run_duration_seconds",
        "How long the last run took.",
        &one(last.seconds),
    );
    if let Some(s) = success {
        gauge(
            "last_success_timestamp_seconds",
            "When the last successful run ended, in seconds since the Unix epoch.",
            &one(seconds(s.ended)),
        );
        gauge(
            "last_success_duration_seconds",
            "How long the last successful run took.",
            &one(s.seconds),
        );
        if let Some(size) = s.size {
            gauge(
                "last_success_artifact_bytes",
                "The size of the artifact of the last successful run.",
                &one(size as f64),
            );
            let per_sink: Vec<(String, f64)> = s
                .sinks
                .iter()
                .map(|sink| (format!("{p},sink=\"{}\"", label(sink)), size as f64))
                .collect();
            gauge(
                "last_success_sink_stored_bytes",
                "The bytes each sink stored in the last successful run.",
                &per_sink,
            );
        }
        gauge(
            "last_success_pruned_backups",
            "How many old backups retention removed after the last successful run.",
            &one(s.pruned as f64),
        );
        if let Some(n) = s.snapshots {
            gauge(
                "last_success_snapshot_changes",
                "How many snapshots (changed entities) the last successful pull recorded.",
                &one(n as f64),
            );
        }
    }
    let failures = history
        .iter()
        .rev()
        .take_while(|r| r.outcome != Outcome::Ok)
        .count();
    gauge(
        "consecutive_failures",
        "How many runs in a row have not succeeded (within the kept history).",
        &one(failures as f64),
    );
    out
}

/// Appends a run's `record` to the history under `key`, then rewrites the metrics (if any)
/// from the history, or from the record alone when the history could not be written.
/// Either failure is a warning naming `whose` ("the run's"): never a failed run.
pub fn record_run(key: &str, record: Record, settings: Option<&MetricsSettings>, whose: &str) {
    let records = match crate::history::append(key, record.clone()) {
        Ok(records) => records,
        Err(e) => {
            crate::logging::warn(None, &format!("{whose} history was not recorded: {e:#}"));
            vec![record]
        }
    };
    if let Some(m) = settings
        && let Err(e) = write(m, &records)
    {
        crate::logging::warn(None, &format!("{whose} metrics were not written: {e:#}"));
    }
}

/// Writes the metrics of `history` where the `[metrics]` table says: the textfile,
/// atomically (readable by the node_exporter user: metrics hold no secret), and the
/// Pushgateway. Both are tried; the first error is returned, the other logged.
pub fn write(settings: &MetricsSettings, history: &[Record]) -> Result<()> {
    let text = render(history);
    let file = settings.textfile.as_ref().map(|f| {
        crate::history::write_atomically(f, text.as_bytes(), 0o644)
            .with_context(|| format!("metrics textfile {}", f.display()))
    });
    let push = match (&settings.pushgateway, history.last()) {
        (Some(url), Some(last)) => Some(
            push(url, &settings.job, &last.pipeline, &text)
                .with_context(|| format!("Pushgateway {url}")),
        ),
        _ => None,
    };
    match (file, push) {
        (Some(Err(a)), Some(Err(b))) => {
            crate::logging::warn(None, &format!("the run's metrics were not pushed: {b:#}"));
            Err(a)
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

/// How long a push may take, connection included: a Pushgateway that hangs must not hold
/// a finished run.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT {url}/metrics/job/{job}/pipeline/{pipeline}`: replaces this pipeline's group in the
/// Pushgateway. HTTP/1.1 by hand over a socket (or native TLS for `https://`): the one
/// request this needs does not justify an HTTP client dependency.
pub fn push(url: &str, job: &str, pipeline: &str, text: &str) -> Result<()> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        bail!("not an http:// or https:// URL");
    };
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        bail!("the URL needs a host, and no user or password");
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(authority, |(h, _)| h);
    let port = if authority.len() > host.len() {
        authority[host.len() + 1..].parse::<u16>()?
    } else if tls {
        443
    } else {
        80
    };
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        format!("/metrics/job/{job}/pipeline/{pipeline}")
    } else {
        format!("/{prefix}/metrics/job/{job}/pipeline/{pipeline}")
    };
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, PUSH_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_read_timeout(Some(PUSH_TIMEOUT))?;
    tcp.set_write_timeout(Some(PUSH_TIMEOUT))?;
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: pipeline/{}\r\n\
         Content-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        env!("CARGO_PKG_VERSION"),
        text.len()
    );
    let mut response = Vec::new();
    if tls {
        let connector = native_tls::TlsConnector::new()?;
        let mut stream = connector
            .connect(host, tcp)
            .map_err(|e| anyhow!("TLS with {host}: {e}"))?;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut response)?;
    } else {
        let mut stream = tcp;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut response)?;
    }
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if !code.starts_with('2') {
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .trim();
        bail!(
            "refused the push: `{status_line}`{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {}", body.chars().take(300).collect::<String>())
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Record;

    fn record(outcome: Outcome, ended: &str) -> Record {
        Record {
            pipeline: "night\"ly".into(),
            file: "/p/nightly.toml".into(),
            started: "2026-12-01T02:00:00Z".parse().unwrap(),
            ended: ended.parse().unwrap(),
            outcome,
            exit_code: if outcome == Outcome::Ok { 0 } else { 1 },
            mode: "backup".into(),
            artifact: (outcome == Outcome::Ok).then(|| "b.sql.zst".into()),
            size: (outcome == Outcome::Ok).then_some(2048),
            sha256: None,
            sinks: if outcome == Outcome::Ok {
                vec!["local".into(), "s3".into()]
            } else {
                vec![]
            },
            pruned: 3,
            snapshots: None,
            seconds: 1.5,
            error: None,
        }
    }

    #[test]
    fn the_last_success_survives_a_later_failure() {
        let h = [
            record(Outcome::Ok, "2026-12-01T02:00:10Z"),
            record(Outcome::Failed, "2026-12-02T02:00:20Z"),
            record(Outcome::Stopped, "2026-12-03T02:00:30Z"),
        ];
        let text = render(&h);
        let p = r#"pipeline="night\"ly""#;
        for line in [
            format!("pipeline_last_run_timestamp_seconds{{{p}}} 1796263230"),
            format!("pipeline_last_run_success{{{p}}} 0"),
            format!("pipeline_last_success_timestamp_seconds{{{p}}} 1796090410"),
            format!("pipeline_last_success_artifact_bytes{{{p}}} 2048"),
            format!("pipeline_last_success_sink_stored_bytes{{{p},sink=\"s3\"}} 2048"),
            format!("pipeline_last_success_pruned_backups{{{p}}} 3"),
            format!("pipeline_consecutive_failures{{{p}}} 2"),
            "# TYPE pipeline_last_run_success gauge".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn without_a_success_there_is_no_success_timestamp() {
        let text = render(&[record(Outcome::Failed, "2026-12-01T02:00:00Z")]);
        assert!(!text.contains("last_success"), "{text}");
        assert!(text.contains("pipeline_last_run_success{"), "{text}");
        assert_eq!(render(&[]), "");
    }
}
