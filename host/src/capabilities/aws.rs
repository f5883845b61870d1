//! AWS credentials for the built-in `s3` sink when its configuration has no keys: resolved
//! on the host the standard AWS way (environment, shared profile, web identity, container
//! and instance metadata) and handed to that stage's configuration only, as secrets.

use anyhow::{Context, Result, anyhow};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use serde_json::{Map, Value as Json};

/// The keys that carry credentials in the `s3` plugin's configuration.
const KEYS: [&str; 3] = ["access_key_id", "secret_access_key", "session_token"];

fn has(config: &Map<String, Json>, key: &str) -> bool {
    matches!(config.get(key), Some(Json::String(s)) if !s.is_empty())
}

/// Whether the host should resolve credentials for this configuration: none of the keys
/// is set (an empty value, as `"${env:S3_ACCESS_KEY:-}"` gives, counts as unset).
pub fn needs_credentials(config: &Map<String, Json>) -> bool {
    !KEYS.iter().any(|k| has(config, k))
}

/// Resolves credentials and writes them into `config`. Empty credential keys are removed
/// first so the plugin sees either resolved values or none.
pub fn fill_credentials(config: &mut Map<String, Json>) -> Result<()> {
    let region = match config.get("region") {
        Some(Json::String(r)) if !r.is_empty() => r.clone(),
        _ => "us-east-1".to_string(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime for the AWS credential chain")?;
    let creds = runtime.block_on(async {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .http_client(http)
            .load()
            .await;
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| anyhow!("no credential provider is configured"))?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| anyhow!("{}", aws_smithy_types_display(&e)))
    })?;
    for key in KEYS {
        config.remove(key);
    }
    config.insert(
        "access_key_id".into(),
        Json::String(creds.access_key_id().to_string()),
    );
    config.insert(
        "secret_access_key".into(),
        Json::String(creds.secret_access_key().to_string()),
    );
    if let Some(token) = creds.session_token() {
        config.insert("session_token".into(), Json::String(token.to_string()));
    }
    Ok(())
}

/// The error with its sources, on one line.
fn aws_smithy_types_display(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_when_no_key_is_given() {
        let m =
            |json: &str| -> Map<String, Json> { serde_json::from_str(json).expect("valid json") };
        assert!(needs_credentials(&m(r#"{"bucket": "b"}"#)));
        assert!(needs_credentials(&m(
            r#"{"bucket": "b", "access_key_id": "", "secret_access_key": ""}"#
        )));
        assert!(!needs_credentials(&m(
            r#"{"bucket": "b", "access_key_id": "A", "secret_access_key": "S"}"#
        )));
    }
}
