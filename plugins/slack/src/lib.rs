//! `slack`: a notifier that posts each run's summary to a Slack incoming webhook (or any
//! chat that accepts Slack's format: Mattermost, Rocket.Chat, Discord's `/slack` URLs).
//! The message is the run's summary line with a ✅ or ❌, and, on failure, an optional
//! mention (`<!channel>`, `<@U123>`) so someone is woken.

use pipeline_notify_http::{Target, summary};
use pipeline_plugin_sdk::notify::{Event, Notifier, RunReport};
use pipeline_plugin_sdk::{Plugin, PluginError, PluginInfo, PluginKind, StagePlan, config};

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Secret, required, "The incoming webhook URL (https://hooks.slack.com/services/…); a secret")]
        url: String,
        #[key(Text, optional, "Prepended to failure messages, e.g. \"<!channel>\" or \"<@U0123>\"")]
        mention_on_failure: Option<String>,
    }
}

impl Config {
    fn parse(json: &str) -> Result<(Config, Target), PluginError> {
        let config: Config = config::parse(json)?;
        let target = Target::parse("url", &config.url)?;
        Ok((config, target))
    }
}

/// Slack's `text` for `r`: the summary with its mark; `&`, `<` and `>` escaped as Slack
/// asks, so an error message cannot ping a channel or forge a link.
fn text(r: &RunReport, mention: Option<&str>) -> String {
    let escaped = summary(r)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    match r.event {
        Event::Start => format!(":hourglass_flowing_sand: {escaped}"),
        Event::Success => format!(":white_check_mark: {escaped}"),
        Event::Failure => match mention {
            Some(m) => format!(":x: {m} {escaped}"),
            None => format!(":x: {escaped}"),
        },
    }
}

struct Slack;

impl Plugin for Slack {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "slack".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Posts each run's summary to a Slack-compatible incoming webhook".into(),
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

impl Notifier for Slack {
    fn notify(config: String, report: RunReport) -> Result<(), PluginError> {
        let (config, target) = Config::parse(&config)?;
        let body = serde_json::json!({
            "text": text(&report, config.mention_on_failure.as_deref()),
        });
        let body = serde_json::to_vec(&body)
            .map_err(|e| PluginError::Other(format!("cannot write the message: {e}")))?;
        target.post("application/json", &[], body)
    }
}

pipeline_plugin_sdk::export_notifier!(Slack);

#[cfg(test)]
mod tests {
    use super::*;

    fn report(event: Event, error: Option<&str>) -> RunReport {
        RunReport {
            pipeline: "nightly".into(),
            event,
            mode: "backup".into(),
            hostname: String::new(),
            started_ms: 0,
            duration_ms: None,
            artifact: None,
            size: None,
            sha256: None,
            sinks: vec![],
            pruned: 0,
            snapshots: None,
            error: error.map(str::to_string),
            exit_code: Some(1),
        }
    }

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Slack::describe().config_keys,
            &serde_json::json!({"url": "https://hooks.slack.com/services/x"}),
        );
    }

    #[test]
    fn failures_mention_and_errors_cannot_ping() {
        let t = text(
            &report(Event::Failure, Some("<!channel> & <http://evil|x>")),
            Some("<!here>"),
        );
        assert!(t.starts_with(":x: <!here> pipeline `nightly`"), "{t}");
        assert!(
            t.contains("&lt;!channel&gt; &amp; &lt;http://evil|x&gt;"),
            "{t}"
        );
        let ok = text(&report(Event::Success, None), Some("<!here>"));
        assert!(ok.starts_with(":white_check_mark: "), "{ok}");
        assert!(!ok.contains("<!here>"), "{ok}");
    }
}
