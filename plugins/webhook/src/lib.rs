//! `webhook`: a notifier that POSTs each run's report as JSON to a URL (any receiver: an
//! alerting gateway, a chat bridge, your own endpoint).
//!
//! The body is one JSON object: `pipeline`, `event` (`start`, `success`, `failure`),
//! `mode`, `hostname`, `started_at` (RFC 3339, UTC), `duration_seconds`, `artifact`,
//! `size`, `sha256`, `sinks`, `pruned`, `snapshots`, `error`, `exit_code` (null when not
//! known for the event) and `summary`, a line a person reads.

use pipeline_notify_http::{Target, summary, time};
use pipeline_plugin_sdk::notify::{Notifier, RunReport};
use pipeline_plugin_sdk::{Plugin, PluginError, PluginInfo, PluginKind, StagePlan, config};

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Secret, required, "The URL the report is POSTed to (https://…); a secret: it often carries a token")]
        url: String,
        #[key(Secret, optional, "Sent as `Authorization: Bearer <token>` when set")]
        bearer_token: Option<String>,
    }
}

impl Config {
    fn parse(json: &str) -> Result<(Config, Target), PluginError> {
        let config: Config = config::parse(json)?;
        let target = Target::parse("url", &config.url)?;
        Ok((config, target))
    }
}

/// The JSON body for `r`.
fn body(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "pipeline": r.pipeline,
        "event": r.event.as_str(),
        "mode": r.mode,
        "hostname": r.hostname,
        "started_at": time(r.started_ms),
        "duration_seconds": r.duration_ms.map(|ms| ms as f64 / 1000.0),
        "artifact": r.artifact,
        "size": r.size,
        "sha256": r.sha256,
        "sinks": r.sinks,
        "pruned": r.pruned,
        "snapshots": r.snapshots,
        "error": r.error,
        "exit_code": r.exit_code,
        "summary": summary(r),
    })
}

struct Webhook;

impl Plugin for Webhook {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "webhook".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "POSTs each run's report as JSON to a URL".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let (_, target) = Config::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![target.grant()],
        })
    }
}

impl Notifier for Webhook {
    fn notify(config: String, report: RunReport) -> Result<(), PluginError> {
        let (config, target) = Config::parse(&config)?;
        let auth = config.bearer_token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let body = serde_json::to_vec(&body(&report))
            .map_err(|e| PluginError::Other(format!("cannot write the report: {e}")))?;
        target.post("application/json", &headers, body)
    }
}

pipeline_plugin_sdk::export_notifier!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_plugin_sdk::notify::Event;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Webhook::describe().config_keys,
            &serde_json::json!({"url": "https://h.example/x"}),
        );
    }

    #[test]
    fn the_body_carries_the_report() {
        let r = RunReport {
            pipeline: "nightly".into(),
            event: Event::Failure,
            mode: "backup".into(),
            hostname: "db1".into(),
            started_ms: 0,
            duration_ms: Some(1500),
            artifact: None,
            size: None,
            sha256: None,
            sinks: vec![],
            pruned: 0,
            snapshots: None,
            error: Some("boom".into()),
            exit_code: Some(1),
        };
        let b = body(&r);
        assert_eq!(b["event"], "failure");
        assert_eq!(b["error"], "boom");
        assert_eq!(b["exit_code"], 1);
        assert_eq!(b["duration_seconds"], 1.5);
        assert_eq!(b["started_at"], "1970-01-01T00:00:00Z");
        assert!(b["artifact"].is_null());
    }

    #[test]
    fn the_plan_asks_for_the_url_host_only() {
        let plan =
            Webhook::plan(r#"{"url": "https://hooks.example.com/a/b"}"#.into()).expect("a plan");
        assert!(
            matches!(&plan.grants[..], [pipeline_plugin_sdk::Grant::Host(h)] if h == "hooks.example.com:443")
        );
        let e = Webhook::plan(r#"{"url": "ftp://x/y"}"#.into()).expect_err("refused");
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
