//! `email`: a notifier that mails a run's news through an SMTP server.
//!
//! The plugin writes the message (plain text, quoted-printable, headers with anything
//! non-ASCII encoded per RFC 2047 and every report field stripped of line breaks, so a
//! report cannot add headers); the host sends it through the one server the stage's plan
//! asks for (`mail-server`, the `server` key), with STARTTLS (the default), TLS from the
//! first byte, or, for a relay on the same machine only, no encryption.

use pipeline_plugin_sdk::mail::{self, Security};
use pipeline_plugin_sdk::notify::{Notifier, RunReport};
use pipeline_plugin_sdk::{Grant, Plugin, PluginError, PluginInfo, PluginKind, StagePlan, config};

mod message;

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(
            Text,
            required,
            "The SMTP server, `host:port`: 587 for starttls, 465 for tls, 25 for a relay on \
             this machine",
        )]
        server: String,
        #[key(
            Text,
            default_in_help(String::from("starttls")),
            "How the connection is protected: `starttls` (the default: refused if the server \
             does not offer it), `tls` (TLS from the first byte), or `none` (only to a relay \
             on this machine, and never with a password)",
        )]
        security: String,
        #[key(Text, optional, "Log in as this user (AUTH PLAIN, or LOGIN)")]
        username: Option<String>,
        #[key(Secret, optional, "The user's password (with `username`)")]
        password: Option<String>,
        #[key(Text, required, "The sender's address: the envelope sender and the From header")]
        from: String,
        #[key(TextList, required, "The recipients' addresses")]
        to: Vec<String>,
        #[key(
            Text,
            optional,
            "The subject, with {pipeline}, {event} (started, succeeded, failed), {host} and \
             {summary} (the error, or the backup and its size) replaced; by default \
             `[pipeline] {pipeline} {event} on {host}: {summary}`",
        )]
        subject: Option<String>,
    }
}

impl Config {
    /// The configuration, checked: everything a message needs is known to be sendable.
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = config::parse(json)?;
        let (host, port) = config
            .server
            .rsplit_once(':')
            .ok_or_else(|| bad("server", "must be `host:port`, e.g. smtp.example.com:587"))?;
        if host.trim_matches(['[', ']']).is_empty() || port.parse::<u16>().is_err() {
            return Err(bad(
                "server",
                "must be `host:port`, e.g. smtp.example.com:587",
            ));
        }
        let security = config.security()?;
        match (&config.username, &config.password) {
            (Some(_), None) => return Err(bad("password", "is required with `username`")),
            (None, Some(_)) => return Err(bad("username", "is required with `password`")),
            (Some(_), Some(_)) if matches!(security, Security::None) => {
                return Err(bad(
                    "security",
                    "`none` never sends a password: use `starttls` or `tls` to log in",
                ));
            }
            _ => {}
        }
        message::check_address(&config.from).map_err(|e| bad("from", &e))?;
        if config.to.is_empty() {
            return Err(bad("to", "needs at least one address"));
        }
        for to in &config.to {
            message::check_address(to).map_err(|e| bad("to", &e))?;
        }
        if let Some(subject) = &config.subject {
            message::check_template(subject).map_err(|e| bad("subject", &e))?;
        }
        Ok(config)
    }

    fn security(&self) -> Result<Security, PluginError> {
        match self.security.as_str() {
            "starttls" => Ok(Security::Starttls),
            "tls" => Ok(Security::Tls),
            "none" => Ok(Security::None),
            other => Err(bad(
                "security",
                &format!("`{other}` is not one of: starttls, tls, none"),
            )),
        }
    }
}

fn bad(key: &str, message: &str) -> PluginError {
    PluginError::Config(format!("key `{key}`: {message}"))
}

struct Email;

impl Plugin for Email {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "email".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Mails a run's start, success or failure through an SMTP server \
                          (STARTTLS or TLS, with a login)"
                .into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![Grant::MailServer(config.server)],
        })
    }
}

impl Notifier for Email {
    fn notify(config: String, report: RunReport) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        let news = message::News::of(&report);
        let data = message::compose(&config.from, &config.to, config.subject.as_deref(), &news);
        mail::send(
            &mail::Server {
                address: config.server.clone(),
                security: config.security()?,
                username: config.username.clone(),
                password: config.password.clone(),
            },
            &mail::Message {
                sender: config.from.clone(),
                recipients: config.to.clone(),
                data,
            },
        )
    }
}

pipeline_plugin_sdk::export_notifier!(Email);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> Result<Config, PluginError> {
        let mut c = json!({
            "server": "smtp.example.com:587",
            "from": "backup@example.com",
            "to": ["ops@example.com"],
        });
        for (k, v) in extra.as_object().expect("a table") {
            c[k] = v.clone();
        }
        Config::parse(&c.to_string())
    }

    #[test]
    fn described_keys_are_the_parsed_ones() {
        config::check_described_keys::<Config>(
            &Config::keys(),
            &json!({"server": "smtp.example.com:587", "from": "a@b", "to": ["c@d"]}),
        );
    }

    #[test]
    fn the_plan_asks_for_the_server() {
        let plan = Email::plan(
            json!({"server": "smtp.example.com:587", "from": "a@b", "to": ["c@d"]}).to_string(),
        )
        .expect("a plan");
        assert!(
            matches!(plan.grants.as_slice(), [Grant::MailServer(s)] if s == "smtp.example.com:587")
        );
    }

    #[test]
    fn bad_configurations_name_the_key() {
        let cases = [
            (json!({"server": "smtp.example.com"}), "key `server`"),
            (json!({"security": "ssl"}), "key `security`: `ssl`"),
            (json!({"username": "u"}), "key `password`"),
            (json!({"password": "p"}), "key `username`"),
            (
                json!({"security": "none", "username": "u", "password": "p"}),
                "key `security`",
            ),
            (json!({"from": "a@b\r\nBcc: x@y"}), "key `from`"),
            (json!({"to": []}), "key `to`"),
            (json!({"to": ["ok@x", "<bad@x>"]}), "key `to`"),
            (
                json!({"subject": "{pipeline} {nope}"}),
                "key `subject`: unknown placeholder {nope}",
            ),
        ];
        for (extra, wanted) in cases {
            let err = config(extra.clone()).expect_err("refused").to_string();
            assert!(err.contains(wanted), "{extra}: {err}");
        }
        assert!(config(json!({"security": "tls", "username": "u", "password": "p"})).is_ok());
    }
}
