//! What the first-party HTTP notifiers (`webhook`, `healthchecks`, `slack`) share: the host
//! a URL needs granted, a POST over `wasi:http` with bounded waits, and a run's one-line
//! summary.
//!
//! A notifier's URL is usually a secret (a Slack webhook or a healthchecks ping URL
//! carries its token in the path), so nothing here puts a URL in an error: errors name the
//! host only.

use std::time::Duration;

use pipeline_plugin_sdk::date::Utc;
use pipeline_plugin_sdk::notify::{Event, RunReport};
use pipeline_plugin_sdk::{Grant, PluginError};
use wstd::http::{Body, Client, Request, Uri};

/// How long a request may take to connect, and to see its answer begin.
const CONNECT: Duration = Duration::from_secs(10);
const FIRST_BYTE: Duration = Duration::from_secs(20);
/// How much of a refusal's body an error shows.
const SHOWN: usize = 200;

/// An `http://` or `https://` URL, checked, with the host the stage must be granted.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    /// `host:port`, as a plan asks for it and errors name it.
    pub host: String,
}

impl Target {
    /// Reads the URL of key `key`; an error names the key, never the URL.
    pub fn parse(key: &str, url: &str) -> Result<Target, PluginError> {
        let uri: Uri = url.parse().map_err(|_| {
            PluginError::Config(format!(
                "key `{key}`: not a URL (write it as https://host/path)"
            ))
        })?;
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => {
                return Err(PluginError::Config(format!(
                    "key `{key}`: the URL must start with https:// or http://"
                )));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| PluginError::Config(format!("key `{key}`: the URL names no host")))?;
        let port = uri.port_u16().unwrap_or(default_port);
        let host = format!("{host}:{port}");
        Ok(Target { uri, host })
    }

    /// The grant a plan asks for to reach this URL.
    pub fn grant(&self) -> Grant {
        Grant::Host(self.host.clone())
    }

    /// This URL with `suffix` appended to its path (`/start`, `/fail`), query kept.
    pub fn with_path_suffix(&self, suffix: &str) -> Result<Target, PluginError> {
        let path = self.uri.path().trim_end_matches('/');
        let query = self
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let scheme = self.uri.scheme_str().unwrap_or("https");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let uri: Uri = format!("{scheme}://{authority}{path}{suffix}{query}")
            .parse()
            .map_err(|_| PluginError::Other(format!("cannot add `{suffix}` to the URL")))?;
        Ok(Target {
            uri,
            host: self.host.clone(),
        })
    }

    /// POSTs `body` as `content_type` with the extra `headers`; ok on a 2xx answer.
    /// Errors say what the server answered (a short part of its body) or why nothing
    /// came back, naming the host only.
    pub fn post(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(), PluginError> {
        let mut req = Request::post(self.uri.clone()).header("content-type", content_type);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        // Without a length wasi:http sends the body chunked, which some receivers refuse.
        let req = req
            .header("content-length", body.len().to_string())
            .body(Body::from(body))
            .map_err(|e| PluginError::Other(format!("cannot build the request: {e}")))?;
        let mut client = Client::new();
        client.set_connect_timeout(CONNECT);
        client.set_first_byte_timeout(FIRST_BYTE);
        client.set_between_bytes_timeout(FIRST_BYTE);
        let host = &self.host;
        wstd::runtime::block_on(async {
            let mut res = client
                .send(req)
                .await
                .map_err(|e| PluginError::Io(format!("POST to {host}: {e}")))?;
            let status = res.status();
            if status.is_success() {
                return Ok(());
            }
            let text = match res.body_mut().str_contents().await {
                Ok(t) => shorten(t.trim()),
                Err(_) => String::new(),
            };
            Err(PluginError::Other(format!(
                "POST to {host}: the server answered {status}{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )))
        })
    }
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `12.3 MiB`, `512 B`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `2026-12-01T02:00:00Z`.
pub fn time(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// One line a person reads: what happened to which pipeline, where, and the essentials.
pub fn summary(r: &RunReport) -> String {
    let at = if r.hostname.is_empty() {
        String::new()
    } else {
        format!(" on {}", r.hostname)
    };
    let took = r
        .duration_ms
        .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
        .unwrap_or_default();
    match r.event {
        Event::Start => format!("pipeline `{}`{at}: {} run started", r.pipeline, r.mode),
        Event::Success => {
            let what = match (&r.artifact, r.size, r.snapshots) {
                (Some(a), Some(s), _) => format!("{a} ({})", size(s)),
                (Some(a), None, _) => a.clone(),
                (None, _, Some(n)) => format!("{n} snapshot(s)"),
                (None, _, None) => "done".to_string(),
            };
            let to = if r.sinks.is_empty() {
                String::new()
            } else {
                format!(" to {}", r.sinks.join(", "))
            };
            let pruned = if r.pruned > 0 {
                format!("; pruned {}", r.pruned)
            } else {
                String::new()
            };
            format!(
                "pipeline `{}`{at}: {} succeeded: {what}{to}{took}{pruned}",
                r.pipeline, r.mode
            )
        }
        Event::Failure => {
            let code = r
                .exit_code
                .map(|c| format!(", exit {c}"))
                .unwrap_or_default();
            let why = r.error.as_deref().unwrap_or("no error was recorded");
            format!(
                "pipeline `{}`{at}: {} FAILED{took}{code}: {why}",
                r.pipeline, r.mode
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(event: Event) -> RunReport {
        RunReport {
            pipeline: "nightly".into(),
            event,
            mode: "backup".into(),
            hostname: "db1".into(),
            started_ms: 1_764_554_400_000,
            duration_ms: Some(12_345),
            artifact: Some("backup-x.sql.zst".into()),
            size: Some(3 * 1024 * 1024 + 300 * 1024),
            sha256: Some("ab".repeat(32)),
            sinks: vec!["local".into(), "s3".into()],
            pruned: 2,
            snapshots: None,
            error: None,
            exit_code: Some(0),
        }
    }

    #[test]
    fn summaries_say_what_happened() {
        assert_eq!(
            summary(&report(Event::Success)),
            "pipeline `nightly` on db1: backup succeeded: backup-x.sql.zst (3.3 MiB) to local, s3 in 12.3s; pruned 2"
        );
        let mut failed = report(Event::Failure);
        failed.exit_code = Some(1);
        failed.error = Some("stage `source` failed: connection refused".into());
        assert_eq!(
            summary(&failed),
            "pipeline `nightly` on db1: backup FAILED in 12.3s, exit 1: stage `source` failed: connection refused"
        );
        assert_eq!(
            summary(&report(Event::Start)),
            "pipeline `nightly` on db1: backup run started"
        );
    }

    #[test]
    fn urls_give_their_host_and_port_and_never_show_in_errors() {
        let t =
            Target::parse("url", "https://hooks.example.com/services/T0/B0/secret").expect("a URL");
        assert_eq!(t.host, "hooks.example.com:443");
        let t = Target::parse("url", "http://127.0.0.1:8080/x?y=1").expect("a URL");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(
            t.with_path_suffix("/fail")
                .expect("a suffix")
                .uri
                .to_string(),
            "http://127.0.0.1:8080/x/fail?y=1"
        );
        for bad in [
            "ftp://h/secret-token",
            "not a url secret-token",
            "https:///secret-token",
        ] {
            let e = Target::parse("url", bad).expect_err("refused").to_string();
            assert!(!e.contains("secret-token"), "{e}");
            assert!(e.contains("key `url`"), "{e}");
        }
    }

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
    }
}
