//! The `s3` stage's configuration and what it implies: the key of an artifact, the one
//! host the plugin contacts, the part size.

use pipeline_plugin_sdk::artifact::check_name;
use pipeline_plugin_sdk::{PluginError, config};
use serde::Deserialize;

/// S3's smallest part (except the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    pub struct Config {
        #[key(Text, required, "The bucket to store artifacts in")]
        pub bucket: String,
        #[key(Text, default("us-east-1".into()), "The bucket's region")]
        pub region: String,
        #[key(
            Text,
            optional,
            "Prepended to every artifact name to make its key, e.g. \"db/nightly/\" (default none)",
        )]
        pub prefix: String,
        #[key(
            Text,
            optional,
            "An S3-compatible store's URL, e.g. http://127.0.0.1:9000 (MinIO, R2, B2, Ceph); \
             default AWS. Path-style addressing when set",
        )]
        pub endpoint: Option<String>,
        #[key(
            Boolean,
            optional,
            "Put the bucket in the path instead of the host name (default: true with an \
             endpoint, false for AWS)",
        )]
        pub force_path_style: Option<bool>,
        #[key(
            Secret,
            optional,
            "Access key id; when no keys are given the host resolves credentials the \
             standard AWS way (environment, profile, web identity, container and \
             instance roles) and refreshes them while the run lasts",
        )]
        pub access_key_id: Option<String>,
        #[key(Secret, optional, "Secret access key")]
        pub secret_access_key: Option<String>,
        #[key(Secret, optional, "Session token of temporary credentials")]
        pub session_token: Option<String>,
        #[key(
            Text,
            optional,
            "Storage class of new objects, e.g. STANDARD_IA (default the bucket's)",
        )]
        pub storage_class: Option<String>,
        #[key(Text, optional, "\"AES256\" or \"aws:kms\" (default the bucket's)")]
        pub server_side_encryption: Option<Sse>,
        #[key(Text, optional, "KMS key for server_side_encryption = \"aws:kms\"")]
        pub kms_key_id: Option<String>,
        #[key(
            Text,
            optional,
            "Multipart part size, bytes or e.g. \"16MiB\" (default 8MiB, at least 5MiB; \
             an artifact can have 10000 parts)",
        )]
        pub part_size: Option<Size>,
        #[key(
            Text,
            optional,
            "Put every object under S3 Object Lock: \"governance\" or \"compliance\"; \
             locked until retention means to keep the backup (at least lock_days). The \
             bucket must have Object Lock enabled (default: no lock)",
        )]
        pub object_lock: Option<String>,
        #[key(
            Integer,
            optional,
            "With object_lock: lock each object at least this many days from when it is \
             stored (default: only as long as the retention policy keeps the backup)",
        )]
        pub lock_days: Option<u64>,
    }
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete or shorten it.
    Governance,
    /// Nobody, not even the account's root user, may delete or shorten it.
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

/// How the sink locks what it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub mode: LockMode,
    /// Lock each object at least this many days from when it is stored.
    pub min_days: Option<u64>,
}

/// The longest `lock_days` accepted: a compliance lock cannot be shortened by anyone, so a
/// typo must not lock a bucket for millennia.
pub const MAX_LOCK_DAYS: u64 = 36_500;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub enum Sse {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms,
}

/// A size in bytes, or a text such as `16MiB`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// Where requests go: scheme, host and port, and whether the bucket is in the path.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `http://host:port` or `https://host:port`, given to the SDK as its endpoint.
    pub endpoint: Option<String>,
    /// `host:port`, what the host must grant.
    pub authority: String,
    pub path_style: bool,
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, PluginError> {
        let mut c: Config = config::parse(json)?;
        // `key = ""` is the same as no key: a pipeline file writes `"${env:S3_ENDPOINT:-}"`.
        for value in [
            &mut c.endpoint,
            &mut c.access_key_id,
            &mut c.secret_access_key,
            &mut c.session_token,
            &mut c.storage_class,
            &mut c.kms_key_id,
            &mut c.object_lock,
        ] {
            if value.as_deref() == Some("") {
                *value = None;
            }
        }
        if c.bucket.is_empty() {
            return Err(PluginError::Config(
                "key `bucket`: must not be empty".into(),
            ));
        }
        if c.region.is_empty() {
            return Err(PluginError::Config(
                "key `region`: must not be empty".into(),
            ));
        }
        if c.prefix.starts_with('/') {
            return Err(PluginError::Config(format!(
                "key `prefix`: {:?} must not start with `/` (S3 keys are relative to the bucket)",
                c.prefix
            )));
        }
        if c.kms_key_id.is_some() && c.server_side_encryption != Some(Sse::Kms) {
            return Err(PluginError::Config(
                "key `kms_key_id` needs server_side_encryption = \"aws:kms\"".into(),
            ));
        }
        match (&c.access_key_id, &c.secret_access_key) {
            (Some(_), None) => {
                return Err(PluginError::Config(
                    "key `access_key_id` is set but `secret_access_key` is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(PluginError::Config(
                    "key `secret_access_key` is set but `access_key_id` is not".into(),
                ));
            }
            (None, None) if c.session_token.is_some() => {
                return Err(PluginError::Config(
                    "key `session_token` is set but `access_key_id` and `secret_access_key` \
                     are not"
                        .into(),
                ));
            }
            _ => {}
        }
        c.part_size()?;
        c.target()?;
        c.lock()?;
        Ok(c)
    }

    /// The Object Lock to put on each object, if `object_lock` is set.
    pub fn lock(&self) -> Result<Option<Lock>, PluginError> {
        let mode = match self
            .object_lock
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => {
                if self.lock_days.is_some() {
                    return Err(PluginError::Config(
                        "key `lock_days` needs object_lock = \"governance\" or \"compliance\""
                            .into(),
                    ));
                }
                return Ok(None);
            }
            Some("governance") => LockMode::Governance,
            Some("compliance") => LockMode::Compliance,
            Some(_) => {
                return Err(PluginError::Config(format!(
                    "key `object_lock`: {:?} is not \"governance\" or \"compliance\"",
                    self.object_lock.as_deref().unwrap_or_default()
                )));
            }
        };
        if let Some(days) = self.lock_days
            && !(1..=MAX_LOCK_DAYS).contains(&days)
        {
            return Err(PluginError::Config(format!(
                "key `lock_days`: {days} is outside 1 to {MAX_LOCK_DAYS} days"
            )));
        }
        Ok(Some(Lock {
            mode,
            min_days: self.lock_days,
        }))
    }

    pub fn part_size(&self) -> Result<u64, PluginError> {
        let size = match &self.part_size {
            None => return Ok(DEFAULT_PART_SIZE),
            Some(Size::Bytes(n)) => *n,
            Some(Size::Text(t)) => parse_size(t).ok_or_else(|| {
                PluginError::Config(format!(
                    "key `part_size`: {t:?} is not a size (write bytes, or e.g. \"16MiB\")"
                ))
            })?,
        };
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
            return Err(PluginError::Config(format!(
                "key `part_size`: {size} bytes is outside what S3 allows (5 MiB to 5 GiB)"
            )));
        }
        Ok(size)
    }

    /// The key of artifact `name`.
    pub fn key(&self, name: &str) -> Result<String, PluginError> {
        check_name(name)?;
        Ok(format!("{}{name}", self.prefix))
    }

    pub fn target(&self) -> Result<Target, PluginError> {
        match &self.endpoint {
            Some(endpoint) => {
                let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
                    PluginError::Config(format!(
                        "key `endpoint`: {endpoint:?} needs a scheme (http:// or https://)"
                    ))
                })?;
                let default_port = match scheme {
                    "http" => 80,
                    "https" => 443,
                    _ => {
                        return Err(PluginError::Config(format!(
                            "key `endpoint`: scheme {scheme:?} is not http or https"
                        )));
                    }
                };
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
                    return Err(PluginError::Config(format!(
                        "key `endpoint`: {endpoint:?} must be only scheme://host[:port]"
                    )));
                }
                let authority = if has_port(authority) {
                    authority.to_owned()
                } else {
                    format!("{authority}:{default_port}")
                };
                Ok(Target {
                    endpoint: Some(format!("{scheme}://{authority}")),
                    authority,
                    path_style: self.force_path_style.unwrap_or(true),
                })
            }
            None => {
                let path_style = self.force_path_style.unwrap_or(false)
                    // Buckets with dots cannot be virtual-hosted over TLS.
                    || self.bucket.contains('.');
                let domain = if self.region.starts_with("cn-") {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                let host = format!("s3.{}.{domain}", self.region);
                let authority = if path_style {
                    format!("{host}:443")
                } else {
                    format!("{}.{host}:443", self.bucket)
                };
                Ok(Target {
                    endpoint: None,
                    authority,
                    path_style,
                })
            }
        }
    }
}

fn has_port(authority: &str) -> bool {
    // `[::1]:9000`, `host:9000`; not `[::1]`.
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

/// `8388608`, `8MiB`, `8 MiB`, `8MB` (also MiB: part sizes are binary), `1GiB`.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts: the same names in the same
    /// order, required exactly where a missing key is an error, typed as `Config` parses them.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &<crate::S3 as pipeline_plugin_sdk::Plugin>::describe().config_keys,
            &serde_json::json!({"bucket": "b"}),
        );
    }

    fn cfg(json: &str) -> Result<Config, PluginError> {
        Config::parse(json)
    }

    fn target(json: &str) -> Target {
        cfg(json).and_then(|c| c.target()).expect("valid")
    }

    #[test]
    fn aws_hosts() {
        assert_eq!(
            target(r#"{"bucket": "b"}"#).authority,
            "b.s3.us-east-1.amazonaws.com:443"
        );
        assert_eq!(
            target(r#"{"bucket": "b", "region": "eu-west-3"}"#).authority,
            "b.s3.eu-west-3.amazonaws.com:443"
        );
        let t = target(r#"{"bucket": "my.bucket", "region": "eu-west-3"}"#);
        assert_eq!(t.authority, "s3.eu-west-3.amazonaws.com:443");
        assert!(t.path_style);
        assert_eq!(
            target(r#"{"bucket": "b", "region": "cn-north-1", "force_path_style": true}"#)
                .authority,
            "s3.cn-north-1.amazonaws.com.cn:443"
        );
    }

    #[test]
    fn endpoints() {
        let t = target(r#"{"bucket": "b", "endpoint": "http://127.0.0.1:9000/"}"#);
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(t.path_style);
        let t = target(
            r#"{"bucket": "b", "endpoint": "https://minio.example", "force_path_style": false}"#,
        );
        assert_eq!(t.authority, "minio.example:443");
        assert!(!t.path_style);
        assert_eq!(
            target(r#"{"bucket": "b", "endpoint": "http://[::1]:9000"}"#).authority,
            "[::1]:9000"
        );
        assert_eq!(
            target(r#"{"bucket": "b", "endpoint": "http://[::1]"}"#).authority,
            "[::1]:80"
        );
        for bad in [
            r#"{"bucket": "b", "endpoint": "minio:9000"}"#,
            r#"{"bucket": "b", "endpoint": "ftp://minio"}"#,
            r#"{"bucket": "b", "endpoint": "http://minio/path"}"#,
        ] {
            assert!(matches!(cfg(bad), Err(PluginError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn part_sizes() {
        let size = |json: &str| cfg(json).and_then(|c| c.part_size());
        assert_eq!(size(r#"{"bucket": "b"}"#).ok(), Some(8 << 20));
        assert_eq!(
            size(r#"{"bucket": "b", "part_size": "16MiB"}"#).ok(),
            Some(16 << 20)
        );
        assert_eq!(
            size(r#"{"bucket": "b", "part_size": 5242880}"#).ok(),
            Some(5 << 20)
        );
        assert!(size(r#"{"bucket": "b", "part_size": "1MiB"}"#).is_err());
        assert!(size(r#"{"bucket": "b", "part_size": "lots"}"#).is_err());
    }

    #[test]
    fn object_locks() {
        let lock = |json: &str| cfg(json).and_then(|c| c.lock());
        assert_eq!(lock(r#"{"bucket": "b"}"#).ok(), Some(None));
        assert_eq!(
            lock(r#"{"bucket": "b", "object_lock": "COMPLIANCE", "lock_days": 30}"#).ok(),
            Some(Some(Lock {
                mode: LockMode::Compliance,
                min_days: Some(30)
            }))
        );
        assert_eq!(
            lock(r#"{"bucket": "b", "object_lock": "governance"}"#).ok(),
            Some(Some(Lock {
                mode: LockMode::Governance,
                min_days: None
            }))
        );
        assert_eq!(
            lock(r#"{"bucket": "b", "object_lock": ""}"#).ok(),
            Some(None)
        );
        for bad in [
            r#"{"bucket": "b", "object_lock": "legal-hold"}"#,
            r#"{"bucket": "b", "lock_days": 3}"#,
            r#"{"bucket": "b", "object_lock": "governance", "lock_days": 0}"#,
            r#"{"bucket": "b", "object_lock": "governance", "lock_days": 1000000}"#,
        ] {
            assert!(matches!(cfg(bad), Err(PluginError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn keys_and_checks() {
        let c = cfg(r#"{"bucket": "b", "prefix": "db/"}"#).expect("valid");
        assert_eq!(c.key("x.sql").ok().as_deref(), Some("db/x.sql"));
        assert!(c.key("a/b").is_err());
        assert!(cfg(r#"{"bucket": "b", "prefix": "/db"}"#).is_err());
        assert!(cfg(r#"{"bucket": "b", "access_key_id": "A"}"#).is_err());
        assert!(cfg(r#"{"bucket": "b", "session_token": "T"}"#).is_err());
        assert!(cfg(r#"{"bucket": "b", "kms_key_id": "k"}"#).is_err());
        assert!(
            cfg(r#"{"bucket": "b", "server_side_encryption": "aws:kms", "kms_key_id": "k"}"#)
                .is_ok()
        );
        assert!(cfg(r#"{"bucket": "b", "server_side_encryption": "des"}"#).is_err());
        assert!(cfg(r#"{"bucket": "b", "bucket_name": "x"}"#).is_err());
        let c =
            cfg(r#"{"bucket": "b", "endpoint": "", "access_key_id": "", "secret_access_key": ""}"#)
                .expect("empty values are unset");
        assert!(c.endpoint.is_none() && c.access_key_id.is_none());
        let c = cfg(
            r#"{"bucket": "b", "session_token": "", "storage_class": "", "kms_key_id": "", "object_lock": ""}"#,
        )
        .expect("empty values are unset");
        assert!(c.session_token.is_none() && c.storage_class.is_none());
        assert!(c.kms_key_id.is_none() && c.object_lock.is_none());
    }
}
