//! `healthchecks`: a notifier that pings a healthchecks.io-style check (healthchecks.io,
//! a self-hosted Healthchecks, or any service with the same URLs): `URL/start` when a run
//! starts, `URL` when it succeeds, `URL/fail` when it fails, each with the run's summary
//! as the body (Healthchecks shows it in the check's log). The check then alerts on its
//! own when pings stop: the alert a dead cron line never sends.

use pipeline_notify_http::{Target, summary};
use pipeline_plugin_sdk::notify::{Event, Notifier, RunReport};
use pipeline_plugin_sdk::{Plugin, PluginError, PluginInfo, PluginKind, StagePlan, config};

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Secret, required, "The check's ping URL (https://hc-ping.com/<uuid>); a secret: whoever has it can ping")]
        url: String,
    }
}

impl Config {
    fn target(json: &str) -> Result<Target, PluginError> {
        let config: Config = config::parse(json)?;
        Target::parse("url", &config.url)
    }
}

/// The URL an event pings.
fn ping(base: &Target, event: &Event) -> Result<Target, PluginError> {
    match event {
        Event::Start => base.with_path_suffix("/start"),
        Event::Success => Ok(base.clone()),
        Event::Failure => base.with_path_suffix("/fail"),
    }
}

struct Healthchecks;

impl Plugin for Healthchecks {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "healthchecks".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Pings a healthchecks.io-style check: /start, success, /fail".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let target = Config::target(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![target.grant()],
        })
    }
}

impl Notifier for Healthchecks {
    fn notify(config: String, report: RunReport) -> Result<(), PluginError> {
        let base = Config::target(&config)?;
        let body = summary(&report).into_bytes();
        ping(&base, &report.event)?.post("text/plain; charset=utf-8", &[], body)
    }
}

pipeline_plugin_sdk::export_notifier!(Healthchecks);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Healthchecks::describe().config_keys,
            &serde_json::json!({"url": "https://hc-ping.com/x"}),
        );
    }

    #[test]
    fn each_event_pings_its_url() {
        let base = Target::parse("url", "https://hc-ping.com/abc").expect("a URL");
        let host = |e: Event| ping(&base, &e).expect("a ping").host;
        assert_eq!(host(Event::Start), "hc-ping.com:443");
        let plan =
            Healthchecks::plan(r#"{"url": "https://hc-ping.com/abc"}"#.into()).expect("a plan");
        assert_eq!(plan.grants.len(), 1);
    }
}
