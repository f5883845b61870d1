//! The stage's configuration and what follows from it: where the collection is, the one
//! host this stage contacts, and the `Authorization` header.

use pipeline_plugin_sdk::{PluginError, config};
use serde::Deserialize;

use crate::url::{self, Collection};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The collection URL, e.g. `https://dav.example.com/backups/`.
    pub url: String,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub password: Option<String>,
    #[serde(default = "yes")]
    pub create_collection: bool,
}

fn yes() -> bool {
    true
}

/// `key = ""` is the same as no key: a pipeline file writes `"${env:DAV_USER:-}"`.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(d)?;
    Ok(value.filter(|v| !v.is_empty()))
}

/// A checked configuration.
#[derive(Debug)]
pub struct Settings {
    pub collection: Collection,
    /// `Basic …`, when a username is configured. Never logged.
    pub authorization: Option<String>,
    pub create_collection: bool,
}

impl Settings {
    /// Parse and check the stage's configuration JSON.
    pub fn parse(json: &str) -> Result<Settings, PluginError> {
        let c: Config = config::parse(json)?;
        let collection = url::parse_collection(&c.url)
            .map_err(|problem| PluginError::Config(format!("key `url`: {problem}")))?;
        let authorization = match (&c.username, &c.password) {
            (Some(user), password) => {
                if user.contains(':') {
                    return Err(PluginError::Config(
                        "key `username`: must not contain `:` (HTTP basic authentication \
                         cannot carry it)"
                            .into(),
                    ));
                }
                let pair = format!("{user}:{}", password.as_deref().unwrap_or(""));
                Some(format!("Basic {}", base64(pair.as_bytes())))
            }
            (None, Some(_)) => {
                return Err(PluginError::Config(
                    "key `password` is set but `username` is not".into(),
                ));
            }
            (None, None) => None,
        };
        Ok(Settings {
            collection,
            authorization,
            create_collection: c.create_collection,
        })
    }
}

/// Standard base64 with padding (RFC 4648), for the basic authentication header.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(s & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match Settings::parse(json) {
            Err(PluginError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn defaults_and_credentials() {
        let s = Settings::parse(r#"{"url": "http://h/dav"}"#).expect("valid");
        assert!(s.create_collection);
        assert!(s.authorization.is_none());
        assert_eq!(s.collection.authority, "h:80");

        let s = Settings::parse(
            r#"{"url": "https://h/", "username": "Aladdin", "password": "open sesame",
                "create_collection": false}"#,
        )
        .expect("valid");
        assert!(!s.create_collection);
        assert_eq!(
            s.authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        // An empty username (an unset variable with an empty default) is no username.
        let s = Settings::parse(r#"{"url": "https://h/", "username": ""}"#).expect("valid");
        assert!(s.authorization.is_none());
    }

    #[test]
    fn bad_configurations_name_the_key() {
        assert_eq!(err("{}"), "missing required key `url`");
        assert_eq!(
            err(r#"{"url": "http://h/", "user": "x"}"#),
            "unknown key `user` (this plugin accepts: url, username, password, create_collection)"
        );
        assert!(err(r#"{"url": "ftp://h/"}"#).starts_with("key `url`: "));
        assert_eq!(
            err(r#"{"url": "http://h/", "password": "x"}"#),
            "key `password` is set but `username` is not"
        );
        assert!(err(r#"{"url": "http://h/", "username": "a:b"}"#).starts_with("key `username`"));
        assert!(
            err(r#"{"url": "http://h/", "create_collection": "yes"}"#)
                .starts_with("key `create_collection`")
        );
    }
}
