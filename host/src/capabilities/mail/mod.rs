//! Sending mail (`pipeline:plugin/mail`): a stage sends through the SMTP servers it was
//! granted (`host:port`: `allow = { mail_servers = [...] }` for a plugin file, what its
//! plan asks for a built-in such as `email`), and the host speaks SMTP for it
//! ([`smtp`]): the plugin builds the message, the host connects, protects the connection,
//! logs in and submits. Every other server is refused (`denied`) with a log line naming
//! the stage and the server. A password is a secret: it is masked in every log line and
//! never put in an error.

pub mod smtp;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GrantContext, StoreState};
use crate::bindings::mail_notifier::pipeline::plugin::mail as wit;
use crate::bindings::{Grant, PluginError};
use crate::config::ConfigError;
use crate::logging;
use crate::redact::Redactor;

pub use smtp::{BUDGET, Client, Message, Security, Server};

/// The `mail` capability: `allow.mail_servers` and the server a plan asks to send through.
pub struct Mail;

impl Capability for Mail {
    const ALLOW_KEYS: &'static [&'static str] = &["mail_servers"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/mail",
        "sending mail: only through the SMTP servers (`host:port`) in `allow.mail_servers`",
    )];
    /// SMTP servers, `host:port`.
    type Granted = Vec<String>;
    type State = ();

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn allowed(cx: &mut GrantContext<'_>, servers: &mut Vec<String>) -> Result<(), ConfigError> {
        for (address, loc) in cx.allowed("mail_servers") {
            smtp::parse_address(address).map_err(|e| {
                cx.error(
                    Some(*loc),
                    "allow.mail_servers",
                    format!("stage `{}`: `{address}`: {e}", cx.label()),
                )
            })?;
            servers.push(address.clone());
        }
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        servers: &mut Vec<String>,
    ) -> Result<bool, ConfigError> {
        let Grant::MailServer(address) = asked else {
            return Ok(false);
        };
        smtp::parse_address(address).map_err(|e| {
            cx.error(
                None,
                "",
                format!(
                    "stage `{}`: the plugin asks for the mail server `{address}`: {e}",
                    cx.label()
                ),
            )
        })?;
        if !granted(servers, address) {
            if !cx.builtin() {
                return Err(cx.refuse(
                    &format!("to send mail through `{address}`"),
                    "mail_servers",
                    address,
                ));
            }
            servers.push(address.clone());
        }
        Ok(true)
    }

    fn state(_stage: &str, _: &Vec<String>) {}
}

/// Whether `address` (`host:port`) is one of `servers`: the same port and the same host,
/// compared without regard to case.
pub fn granted(servers: &[String], address: &str) -> bool {
    let Ok((host, port)) = smtp::parse_address(address) else {
        return false;
    };
    servers.iter().any(|s| {
        smtp::parse_address(s).is_ok_and(|(h, p)| p == port && h.eq_ignore_ascii_case(&host))
    })
}

impl wit::Host for StoreState {
    fn send(&mut self, server: Server, message: Message) -> Result<(), PluginError> {
        if !granted(&self.grants.mail, &server.address) {
            let msg = format!(
                "stage `{}` was not granted the mail server `{}` (granted: {}); if you trust \
                 it with that, add to the stage: allow = {{ mail_servers = [\"{}\"] }}",
                self.stage,
                server.address,
                if self.grants.mail.is_empty() {
                    "none".to_string()
                } else {
                    self.grants.mail.join(", ")
                },
                server.address
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        }
        // A password that did not come from a secret key of the stage's configuration is
        // masked too.
        if let Some(password) = &server.password {
            let mut secret = Redactor::default();
            secret.add(password);
            logging::add_secrets(&secret);
        }
        Client::system().send(&server, &message)?;
        logging::info(
            Some(&self.stage),
            &format!(
                "mail server {} accepted the message for {} recipient(s)",
                server.address,
                message.recipients.len()
            ),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::granted;

    #[test]
    fn a_server_is_granted_by_host_and_port() {
        let servers = vec!["SMTP.example.com:587".to_string(), "[::1]:25".to_string()];
        assert!(granted(&servers, "smtp.example.com:587"));
        assert!(!granted(&servers, "smtp.example.com:465"));
        assert!(!granted(&servers, "smtp.example.com"));
        assert!(!granted(&servers, "smtp.example.org:587"));
        assert!(granted(&servers, "[::1]:25"));
        assert!(!granted(&[], "smtp.example.com:587"));
    }
}
