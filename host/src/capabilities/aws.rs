//! AWS credentials for the built-in `s3` sink when its configuration has no keys: resolved
//! on the host the standard AWS way (environment, shared profile, web identity, container
//! and instance metadata) and served to that stage only, through the `aws-credentials`
//! interface. The host keeps the credential provider for the whole run and refreshes the
//! credentials before they expire: a role's credentials often last an hour, less than a
//! large upload can take.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use serde_json::{Map, Value as Json};

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GrantContext, StoreState};
use crate::bindings::Grant;
use crate::bindings::PluginError;
use crate::bindings::aws_sink::pipeline::plugin::aws_credentials as wit;
use crate::config::ConfigError;
use crate::logging;
use crate::redact::Redactor;

/// The `aws-credentials` capability: AWS credentials resolved and refreshed by the host.
pub struct Aws;

impl Capability for Aws {
    const ALLOW_KEYS: &'static [&'static str] = &["credentials"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/aws-credentials",
        "AWS credentials: only for a stage whose plan asks for them and whose configuration sets no keys",
    )];
    /// The credentials the host resolved for this stage, if it asked.
    type Granted = Option<Arc<HostCredentials>>;
    type State = ();

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn state(_stage: &str, _: &Option<Arc<HostCredentials>>) {}

    fn allowed(cx: &mut GrantContext<'_>, _: &mut Self::Granted) -> Result<(), ConfigError> {
        for (provider, loc) in cx.allowed("credentials") {
            if provider != "aws" {
                return Err(cx.error(
                    Some(*loc),
                    "allow.credentials",
                    format!(
                        "`{provider}` is not a credential provider this host serves (it serves: aws)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A stage whose plan asks for `aws-credentials` gets the credentials the host resolves
    /// the standard AWS way, refreshed while the run lasts (a role's credentials expire);
    /// they are never put in its configuration. A built-in gets them when it asks; a plugin
    /// file only with `allow.credentials = ["aws"]`.
    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        granted: &mut Self::Granted,
    ) -> Result<bool, ConfigError> {
        if !matches!(asked, Grant::AwsCredentials) {
            return Ok(false);
        }
        if !cx.builtin() && !cx.allowed("credentials").any(|(p, _)| p == "aws") {
            return Err(cx.error(
                None,
                "allow",
                format!(
                    "stage `{}` (plugin {}) asks for the host's AWS credentials, which the \
                     pipeline file does not grant: give the stage credentials of its own in its \
                     configuration, or, if you trust it with the host's, add to the stage: \
                     allow = {{ credentials = [\"aws\"] }}",
                    cx.label(),
                    cx.stage.plugin
                ),
            ));
        }
        if granted.is_none() {
            let label = cx.label();
            let creds = resolve(&label, cx.config, cx.secrets).map_err(|e| {
                cx.error(
                    None,
                    "",
                    format!(
                        "stage `{label}`: no credentials: the stage sets no keys of its own and \
                         the standard AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                         ~/.aws, web identity, container or instance role) found none: {e:#}"
                    ),
                )
            })?;
            *granted = Some(creds);
        }
        Ok(true)
    }
}

/// Credentials that expire sooner than this are refreshed (the AWS CLI and SDKs refresh a
/// few minutes ahead too). The `s3` plugin asks again this long before expiry.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// A failed refresh is an error only once the current credentials have less than this
/// left; before that the stage keeps using them (the credential endpoint may be down for a
/// moment) and the next request tries again.
const STILL_USABLE: Duration = Duration::from_secs(60);
/// After a failed refresh, the current credentials are used without asking again for this
/// long (while they are still usable): every attempt waits out the provider's retries.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The credential provider of one stage and its current credentials.
pub struct HostCredentials {
    /// "sink s3": named in errors and log lines.
    stage: String,
    provider: SharedCredentialsProvider,
    current: Mutex<Current>,
}

struct Current {
    creds: Credentials,
    /// When the last refresh failed, if it did since the last success.
    failed_at: Option<Instant>,
}

// Never prints a credential.
impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// Resolves credentials for the stage `stage` with `config` (its region) and keeps the
/// provider to refresh them. The first credentials are fetched now, so a pipeline without
/// any fails before it dumps anything; their values are added to `secrets`.
fn resolve(
    stage: &str,
    config: &Map<String, Json>,
    secrets: &mut Redactor,
) -> Result<Arc<HostCredentials>> {
    let region = match config.get("region") {
        Some(Json::String(r)) if !r.is_empty() => r.clone(),
        _ => "us-east-1".to_string(),
    };
    // wasmtime's runtime: it lives as long as the process, so the provider's connections
    // and timers stay valid for every later refresh.
    let (provider, creds) = wasmtime_wasi::runtime::in_tokio(async {
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
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| anyhow!("{}", error_chain(&e)))?;
        Ok::<_, anyhow::Error>((provider, creds))
    })?;
    add_secrets(secrets, &creds);
    Ok(Arc::new(HostCredentials {
        stage: stage.to_string(),
        provider,
        current: Mutex::new(Current {
            creds,
            failed_at: None,
        }),
    }))
}

fn add_secrets(secrets: &mut Redactor, creds: &Credentials) {
    secrets.add(creds.access_key_id());
    secrets.add(creds.secret_access_key());
    if let Some(token) = creds.session_token() {
        secrets.add(token);
    }
}

impl HostCredentials {
    /// The current credentials, refreshed first if they expire within [`REFRESH_BEFORE`].
    pub fn get(&self) -> Result<Credentials> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| anyhow!("the credential cache of stage `{}` is broken", self.stage))?;
        let left = time_left(&current.creds);
        if left.is_none_or(|left| left > REFRESH_BEFORE) {
            return Ok(current.creds.clone());
        }
        let usable = left.is_some_and(|left| left > STILL_USABLE);
        if usable && current.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return Ok(current.creds.clone());
        }
        match wasmtime_wasi::runtime::in_tokio(self.provider.provide_credentials()) {
            Ok(fresh) => {
                // Registered before anything can print them.
                let mut secrets = Redactor::default();
                add_secrets(&mut secrets, &fresh);
                logging::add_secrets(&secrets);
                logging::debug(
                    Some(&self.stage),
                    &format!(
                        "refreshed the AWS credentials (they expire {})",
                        describe_expiry(fresh.expiry())
                    ),
                );
                *current = Current {
                    creds: fresh,
                    failed_at: None,
                };
                Ok(current.creds.clone())
            }
            Err(e) if usable => {
                logging::warn(
                    Some(&self.stage),
                    &format!(
                        "cannot refresh the AWS credentials ({}); using the current ones, which \
                         expire {}",
                        error_chain(&e),
                        describe_expiry(current.creds.expiry())
                    ),
                );
                current.failed_at = Some(Instant::now());
                Ok(current.creds.clone())
            }
            Err(e) => Err(anyhow!(
                "cannot refresh the AWS credentials of stage `{}`, which expire {}: the standard \
                 AWS credential chain failed: {}",
                self.stage,
                describe_expiry(current.creds.expiry()),
                error_chain(&e)
            )),
        }
    }
}

/// How long until `creds` expire (zero if they have); none if they do not expire.
fn time_left(creds: &Credentials) -> Option<Duration> {
    creds.expiry().map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

fn describe_expiry(at: Option<SystemTime>) -> String {
    match at.and_then(|t| jiff::Timestamp::try_from(t).ok()) {
        Some(t) => format!("at {}", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
        None => "never".into(),
    }
}

impl wit::Host for StoreState {
    fn get(&mut self) -> Result<wit::Credentials, PluginError> {
        let Some(source) = self.grants.aws.clone() else {
            let msg = format!(
                "stage `{}` has no AWS credentials from the host: only the built-in `s3` sink \
                 whose configuration sets no keys gets them; set `access_key_id` and \
                 `secret_access_key`",
                self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        };
        let creds = source
            .get()
            .map_err(|e| PluginError::Denied(format!("{e:#}")))?;
        Ok(wit::Credentials {
            access_key_id: creds.access_key_id().to_string(),
            secret_access_key: creds.secret_access_key().to_string(),
            session_token: creds.session_token().map(str::to_string),
            expires_ms: creds.expiry().map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
        })
    }
}

/// The error with its sources, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

    fn source(creds: Credentials) -> HostCredentials {
        HostCredentials {
            stage: "sink s3".into(),
            provider: SharedCredentialsProvider::new(Credentials::new(
                "AKIAFRESH",
                "fresh-secret",
                None,
                None,
                "test",
            )),
            current: Mutex::new(Current {
                creds,
                failed_at: None,
            }),
        }
    }

    #[test]
    fn refreshes_only_near_expiry() {
        let far = SystemTime::now() + Duration::from_secs(3600);
        let s = source(Credentials::new("AKIAOLD", "old", None, Some(far), "test"));
        assert_eq!(s.get().expect("cached").access_key_id(), "AKIAOLD");
        let near = SystemTime::now() + Duration::from_secs(120);
        let s = source(Credentials::new("AKIAOLD", "old", None, Some(near), "test"));
        let fresh = s.get().expect("refreshed");
        assert_eq!(fresh.access_key_id(), "AKIAFRESH");
        assert_eq!(logging::redact("key fresh-secret"), "key ***");
        let s = source(Credentials::new("AKIAOLD", "old", None, None, "test"));
        assert_eq!(s.get().expect("never expire").access_key_id(), "AKIAOLD");
    }

    #[derive(Debug)]
    struct Down;

    impl ProvideCredentials for Down {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "the agent is down",
                ),
            ))
        }
    }

    #[test]
    fn a_failed_refresh_keeps_usable_credentials_and_fails_near_expiry() {
        let with = |secs: u64| HostCredentials {
            stage: "sink s3".into(),
            provider: SharedCredentialsProvider::new(Down),
            current: Mutex::new(Current {
                creds: Credentials::new(
                    "AKIAOLD",
                    "old",
                    None,
                    Some(SystemTime::now() + Duration::from_secs(secs)),
                    "test",
                ),
                failed_at: None,
            }),
        };
        let s = with(120);
        assert_eq!(s.get().expect("still usable").access_key_id(), "AKIAOLD");
        assert!(s.current.lock().expect("lock").failed_at.is_some());
        let err = with(30).get().expect_err("too close to expiry");
        let text = format!("{err:#}");
        assert!(
            text.contains("cannot refresh the AWS credentials of stage `sink s3`")
                && text.contains("the agent is down"),
            "{text}"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = source(Credentials::new(
            "AKIAOLD",
            "old-secret",
            None,
            None,
            "test",
        ));
        let text = format!("{s:?}");
        assert!(
            !text.contains("old-secret") && !text.contains("AKIAOLD"),
            "{text}"
        );
    }
}
