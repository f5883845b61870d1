//! `s3`: a sink that stores artifacts in an S3 bucket (AWS or any S3-compatible store).
//!
//! The AWS SDK runs inside the component; its requests leave through `wasi:http`
//! (`aws-smithy-wasm`), so the host does the TLS and lets this stage reach only the one
//! host its plan names.
//!
//! `put` streams: it reads at most one part (`part_size`, 8 MiB by default) into memory,
//! uploads it, and reads the next, so memory does not grow with the artifact. An artifact
//! smaller than one part is a single PutObject. Parts are retried with backoff on 5xx
//! responses and dropped connections; on any failure — including the input stream ending
//! with an error, which means an earlier stage failed — the multipart upload is aborted,
//! so no object and no orphaned parts remain. The object exists only once
//! CompleteMultipartUpload succeeded.
//!
//! A run that is killed cannot abort its upload. So while a multipart upload runs, a small
//! marker object `<prefix>.<name>.upload-<owner>` holds its upload id, where `<owner>` is a
//! short hash of the pipeline that writes (of the artifact meta's `pipeline-id` label, the
//! host's run-lock key, else of its `pipeline` label).
//! The next `put` of the same pipeline aborts the uploads its markers name and removes the
//! markers: the host holds the pipeline's lock during a run, so none of them is live. Other
//! pipelines' markers carry another hash and are never touched; uploads without a marker
//! (from older versions) are left to a bucket lifecycle rule.
//!
//! Object Lock (`object_lock`): every object `put` stores — backup, manifest, any other
//! file — carries the mode and a retain-until date: the host's `retain-until-ms` label
//! (until when the retention policy means to keep the backup), at least `lock_days` from
//! now. The bucket's lock configuration is checked before anything is uploaded, the lock
//! is read back once stored (and set with PutObjectRetention where a store ignored the
//! upload's headers), and `delete` refuses an object still locked with `denied`, so that
//! retention never hides a locked backup behind a delete marker.
//!
//! Credentials: the keys of the configuration when it has them; otherwise the host's
//! (`aws-credentials`), asked again whenever the ones in hand come within a few minutes of
//! their expiry, so an upload may outlast a role's one-hour credentials.

mod config;

use std::io::{self, BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, IdentityCache, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::primitives::DateTimeFormat;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockLegalHoldStatus,
    ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode, ServerSideEncryption,
    StorageClass,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;
use pipeline_plugin_sdk::artifact;
use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Sink, StagePlan, Stored, log,
};

use crate::config::{Config, Lock, LockMode, Sse};

/// Attempts per part (the first try and the retries).
const PART_ATTEMPTS: u32 = 5;
/// The first retry waits this long; each further one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// S3 allows at most this many parts.
const MAX_PARTS: i32 = 10_000;
/// The host's credentials are asked for again once they expire within this (up to half of
/// it earlier, the SDK's jitter); the host refreshes them in the same window.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The label in which the host says until when retention means to keep a backup
/// (milliseconds since the Unix epoch, UTC).
const RETAIN_UNTIL_LABEL: &str = "retain-until-ms";
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

struct S3;

impl Plugin for S3 {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "s3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Sink,
            description: "Stores artifacts in an S3 bucket (AWS S3 or any S3-compatible store)"
                .into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        let target = config.target()?;
        let mut grants = vec![Grant::Host(target.authority)];
        // Without keys of its own, it signs with the host's credentials.
        if config.access_key_id.is_none()
            && config.secret_access_key.is_none()
            && config.session_token.is_none()
        {
            grants.push(Grant::AwsCredentials);
        }
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants,
        })
    }
}

impl Sink for S3 {
    fn put(config: String, meta: ArtifactMeta, data: InputStream) -> Result<Stored, PluginError> {
        let config = Config::parse(&config)?;
        let store = Store::new(&config)?;
        store.put(&meta, InputReader::new(data))
    }

    fn list(config: String, prefix: String) -> Result<Vec<Stored>, PluginError> {
        let config = Config::parse(&config)?;
        Store::new(&config)?.list(&prefix)
    }

    fn get(config: String, artifact: Stored, out: OutputStream) -> Result<u64, PluginError> {
        let config = Config::parse(&config)?;
        Store::new(&config)?.get(&artifact.name, OutputWriter::new(out))
    }

    fn delete(config: String, artifact: Stored) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        Store::new(&config)?.delete(&artifact.name)
    }
}

pipeline_plugin_sdk::export_sink!(S3);

/// A bucket with this stage's settings.
struct Store<'a> {
    config: &'a Config,
    client: Client,
    /// For aborting an upload: with the host's credentials, it falls back to the last ones
    /// the host gave while they are valid, so a failed refresh leaves no parts behind.
    abort_client: Client,
    part_size: usize,
    lock: Option<Lock>,
}

/// The lock of one `put`: mode and retain-until date.
#[derive(Debug, Clone, Copy)]
struct ObjectLock {
    mode: LockMode,
    until: DateTime,
}

impl<'a> Store<'a> {
    fn new(config: &'a Config) -> Result<Store<'a>, PluginError> {
        let target = config.target()?;
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(target.path_style)
            .http_client(aws_smithy_wasm::wasi::WasiHttpClientBuilder::new().build())
            .sleep_impl(aws_smithy_wasm::wasi::WasiSleep)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            // Checksums only where S3 requires them: plain Content-Length bodies work with
            // every S3-compatible store; the host checks the artifact's SHA-256 anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .interceptor(EmptyBodyLength);
        if let Some(endpoint) = &target.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let (client, abort_client) = match (&config.access_key_id, &config.secret_access_key) {
            (Some(key), Some(secret)) => {
                let client = Client::from_conf(
                    builder
                        .credentials_provider(Credentials::new(
                            key,
                            secret,
                            config.session_token.clone(),
                            None,
                            "pipeline",
                        ))
                        .build(),
                );
                (client.clone(), client)
            }
            // No keys: the host's, which it refreshes (Config::parse refuses half a pair).
            _ => {
                let host = HostCredentials::default();
                let cache = || IdentityCache::lazy().buffer_time(REFRESH_BEFORE).build();
                let abort = HostCredentials {
                    fall_back: true,
                    ..host.clone()
                };
                (
                    Client::from_conf(
                        builder
                            .clone()
                            .credentials_provider(host)
                            .identity_cache(cache())
                            .build(),
                    ),
                    Client::from_conf(
                        builder
                            .credentials_provider(abort)
                            .identity_cache(cache())
                            .build(),
                    ),
                )
            }
        };
        let part_size = usize::try_from(config.part_size()?).map_err(|_| {
            PluginError::Config("key `part_size`: too large for this platform".into())
        })?;
        Ok(Store {
            config,
            client,
            abort_client,
            part_size,
            lock: config.lock()?,
        })
    }

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    fn put(&self, meta: &ArtifactMeta, mut data: InputReader) -> Result<Stored, PluginError> {
        let key = self.config.key(&meta.name)?;
        let what = self.describe(&key);
        // Before anything is written: a lock that cannot be applied fails the put here.
        let lock = match self.lock {
            Some(lock) => {
                let until = lock_until(meta, lock, now_ms())?;
                self.check_lock_enabled()?;
                Some(ObjectLock {
                    mode: lock.mode,
                    until,
                })
            }
            None => None,
        };
        let owner = artifact::owner_tag(meta);
        if let Some((pipeline, tag)) = &owner {
            self.abort_stale_uploads(&meta.name, pipeline, tag);
        }
        // An earlier backup is never replaced.
        if self.exists(&key)? {
            return Err(PluginError::Other(format!(
                "{what} already exists; refusing to overwrite it (it would destroy an earlier backup)"
            )));
        }
        let first = read_part(&mut data, self.part_size).map_err(|e| input_failed(&what, 0, &e))?;
        if first.len() < self.part_size {
            // Small: one PutObject, atomic by itself.
            let size = first.len() as u64;
            let mut req = self
                .client
                .put_object()
                .bucket(&self.config.bucket)
                .key(&key)
                .content_type(&meta.content_type)
                .set_content_md5(self.content_md5(&first))
                .body(ByteStream::from(first));
            req = req
                .set_storage_class(self.storage_class())
                .set_server_side_encryption(self.sse())
                .set_ssekms_key_id(self.config.kms_key_id.clone())
                .set_object_lock_mode(lock.map(|l| object_lock_mode(l.mode)))
                .set_object_lock_retain_until_date(lock.map(|l| l.until));
            let out = wstd::runtime::block_on(req.send())
                .map_err(|e| s3_error(&what, "uploading", &e))?;
            if let Some(lock) = lock {
                self.ensure_locked(&key, out.version_id(), lock)?;
            }
            return Ok(stored(meta, size));
        }

        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(&key)
            .content_type(&meta.content_type)
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.config.kms_key_id.clone())
            .set_object_lock_mode(lock.map(|l| object_lock_mode(l.mode)))
            .set_object_lock_retain_until_date(lock.map(|l| l.until));
        let created = wstd::runtime::block_on(req.send())
            .map_err(|e| s3_error(&what, "starting the upload of", &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(PluginError::Other(format!(
                "starting the upload of {what}: the store returned no upload id"
            )));
        };
        let marker = owner
            .as_ref()
            .and_then(|(_, tag)| self.put_marker(&meta.name, tag, &upload_id));
        let result = match self.upload_parts(&key, &upload_id, first, &mut data) {
            Ok((size, version)) => Ok((stored(meta, size), version)),
            Err(err) => {
                self.abort(&key, &upload_id);
                Err(err)
            }
        };
        if let Some((marker, version)) = marker {
            self.delete_marker(&marker, version.as_deref());
        }
        let (stored, version) = result?;
        if let Some(lock) = lock {
            self.ensure_locked(&key, version.as_deref(), lock)?;
        }
        Ok(stored)
    }

    /// The key of the marker of an upload of `name` by the pipeline hashed `tag`.
    fn marker_key(&self, name: &str, tag: &str) -> String {
        format!("{}.{name}.upload-{tag}", self.config.prefix)
    }

    /// Records a running multipart upload so that the next run can abort it if this one is
    /// killed; returns the marker's key and version. A failure only loses that, so it is a
    /// warning. The marker is not locked (it is removed at once), but a bucket's default
    /// retention may lock it: then S3 needs its Content-MD5 too.
    fn put_marker(
        &self,
        name: &str,
        tag: &str,
        upload_id: &str,
    ) -> Option<(String, Option<String>)> {
        let marker = self.marker_key(name, tag);
        let body = Bytes::from(upload_id.to_owned());
        let req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&marker)
            .content_type("text/plain")
            .set_content_md5(self.content_md5(&body))
            .body(ByteStream::from(body));
        match wstd::runtime::block_on(req.send()) {
            Ok(out) => Some((marker, out.version_id().map(str::to_owned))),
            Err(err) => {
                log::warn(format_args!(
                    "could not write {}, which lets a later run clean up this upload if this \
                     run is killed: {}",
                    self.describe(&marker),
                    summary(&err)
                ));
                None
            }
        }
    }

    /// Removes a marker. With Object Lock the bucket keeps versions: the marker's own
    /// version is deleted, so no noncurrent copy stays behind.
    fn delete_marker(&self, marker: &str, version: Option<&str>) {
        let req = self
            .client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(marker)
            .set_version_id(version.filter(|_| self.lock.is_some()).map(str::to_owned));
        if let Err(err) = wstd::runtime::block_on(req.send()) {
            log::warn(format_args!(
                "could not remove {}: {}; the next run of this pipeline removes it",
                self.describe(marker),
                summary(&err)
            ));
        }
    }

    /// Aborts the multipart uploads that earlier, killed runs of this pipeline left (as their
    /// markers say) and removes the markers, logging each. The upload of `name` (this run's)
    /// is skipped. Failures are warnings: a stale upload must not stop a backup.
    fn abort_stale_uploads(&self, name: &str, pipeline: &str, tag: &str) {
        let prefix = format!("{}.", self.config.prefix);
        let suffix = format!(".upload-{tag}");
        let mut markers = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take());
            let page = match wstd::runtime::block_on(req.send()) {
                Ok(page) => page,
                Err(err) => {
                    log::warn(format_args!(
                        "could not look for uploads earlier runs left under {}*: {}",
                        self.describe(&prefix),
                        summary(&err)
                    ));
                    return;
                }
            };
            for object in page.contents() {
                let Some(artifact) = object
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|k| k.strip_suffix(&suffix))
                else {
                    continue;
                };
                if artifact.is_empty()
                    || artifact.contains('/')
                    || name.starts_with(artifact)
                    || artifact.starts_with(name)
                {
                    continue;
                }
                markers.push(artifact.to_owned());
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        for artifact in markers {
            let marker = self.marker_key(&artifact, tag);
            let key = format!("{}{artifact}", self.config.prefix);
            let what = self.describe(&key);
            let mut id = Vec::new();
            let req = self
                .client
                .get_object()
                .bucket(&self.config.bucket)
                .key(&marker);
            let read = wstd::runtime::block_on(async {
                let resp = req.send().await.map_err(|e| summary(&e))?;
                let mut body = resp.body;
                while let Some(chunk) = body.next().await {
                    id.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
                    if id.len() > 4096 {
                        return Err("the marker is too large to be one".to_owned());
                    }
                }
                Ok(())
            });
            if let Err(err) = read {
                log::warn(format_args!(
                    "could not read {}: {err}",
                    self.describe(&marker)
                ));
                continue;
            }
            let upload_id = String::from_utf8_lossy(&id).trim().to_owned();
            let req = self
                .client
                .abort_multipart_upload()
                .bucket(&self.config.bucket)
                .key(&key)
                .upload_id(&upload_id);
            match wstd::runtime::block_on(req.send()) {
                Ok(_) => log::info(format_args!(
                    "aborted the multipart upload {upload_id} of {what} that an earlier run of \
                     pipeline `{pipeline}` left when it was stopped before finishing"
                )),
                // Completed or aborted since: only the marker is left.
                Err(err) if status(&err) == Some(404) => {}
                Err(err) => {
                    log::warn(format_args!(
                        "could not abort the multipart upload {upload_id} of {what} that an \
                         earlier run of pipeline `{pipeline}` left: {}",
                        summary(&err)
                    ));
                    continue;
                }
            }
            self.delete_marker(&marker, None);
        }
    }

    /// Upload every part, then complete the upload; returns the artifact's size and the
    /// version the store gave it (in a versioned bucket).
    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        data: &mut InputReader,
    ) -> Result<(u64, Option<String>), PluginError> {
        let what = self.describe(key);
        let mut parts = Vec::new();
        let mut size: u64 = 0;
        let mut part = first;
        let mut number: i32 = 1;
        loop {
            let len = part.len();
            let etag = self.upload_part(key, upload_id, number, part)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .build(),
            );
            size += len as u64;
            if len < self.part_size {
                break;
            }
            part = read_part(data, self.part_size).map_err(|e| input_failed(&what, size, &e))?;
            if part.is_empty() {
                break;
            }
            number += 1;
            if number > MAX_PARTS {
                return Err(PluginError::Other(format!(
                    "{what} would need more than {MAX_PARTS} parts of {} bytes; raise `part_size`",
                    self.part_size
                )));
            }
        }
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        let done = wstd::runtime::block_on(req.send())
            .map_err(|e| s3_error(&what, "completing the upload of", &e))?;
        log::debug(format_args!(
            "stored {what} in {number} parts ({size} bytes)"
        ));
        Ok((size, done.version_id().map(str::to_owned)))
    }

    /// One part, retried with backoff on 5xx answers and failed connections.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String, PluginError> {
        let what = self.describe(key);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let req = self
                .client
                .upload_part()
                .bucket(&self.config.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(body.len() as i64)
                .set_content_md5(self.content_md5(&body))
                .body(ByteStream::from(body.clone()));
            match wstd::runtime::block_on(req.send()) {
                Ok(out) => {
                    return out.e_tag().map(str::to_owned).ok_or_else(|| {
                        PluginError::Other(format!(
                            "uploading part {number} of {what}: the store returned no ETag"
                        ))
                    });
                }
                Err(err) if attempt < PART_ATTEMPTS && transient(&err) => {
                    log::warn(format_args!(
                        "uploading part {number} of {what} failed (attempt {attempt} of \
                         {PART_ATTEMPTS}), retrying in {} ms: {}",
                        backoff.as_millis(),
                        summary(&err)
                    ));
                    std::thread::sleep(backoff);
                    backoff *= 2;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(s3_error(
                        &what,
                        &format!("uploading part {number} (attempt {attempt}) of"),
                        &err,
                    ));
                }
            }
        }
    }

    /// Abort a multipart upload so that no parts stay behind; tried a few times, since the
    /// failure that brought us here may be passing.
    fn abort(&self, key: &str, upload_id: &str) {
        let what = self.describe(key);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=PART_ATTEMPTS {
            let req = self
                .abort_client
                .abort_multipart_upload()
                .bucket(&self.config.bucket)
                .key(key)
                .upload_id(upload_id);
            match wstd::runtime::block_on(req.send()) {
                Ok(_) => {
                    log::info(format_args!(
                        "aborted the upload of {what}; nothing was stored"
                    ));
                    return;
                }
                Err(err) if attempt < PART_ATTEMPTS && transient(&err) => {
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Err(err) => {
                    log::error(format_args!(
                        "could not abort the multipart upload {upload_id} of {what}: {}; its parts \
                         stay in the bucket until it is aborted (a lifecycle rule for incomplete \
                         multipart uploads removes them)",
                        summary(&err)
                    ));
                    return;
                }
            }
        }
    }

    /// Whether `key` exists. A listing rather than HeadObject: it needs only s3:ListBucket,
    /// and a refusal comes with the store's error code (a HEAD answer has no body).
    fn exists(&self, key: &str) -> Result<bool, PluginError> {
        let req = self
            .client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(key)
            .max_keys(1);
        let page = wstd::runtime::block_on(req.send())
            .map_err(|e| s3_error(&self.describe(key), "checking", &e))?;
        Ok(page.contents().iter().any(|o| o.key() == Some(key)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Stored>, PluginError> {
        let full = format!("{}{prefix}", self.config.prefix);
        let what = self.describe(&full);
        let mut stored = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(&full)
                .set_continuation_token(token.take());
            let page = wstd::runtime::block_on(req.send())
                .map_err(|e| s3_error(&format!("{what}*"), "listing", &e))?;
            for object in page.contents() {
                let Some(name) = object
                    .key()
                    .and_then(|k| k.strip_prefix(&self.config.prefix))
                else {
                    continue;
                };
                // Deeper "directories" are not this sink's artifacts.
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                stored.push(Stored {
                    name: name.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    created_ms: object
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .and_then(|ms| u64::try_from(ms).ok())
                        .unwrap_or(0),
                    locked_until_ms: None,
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(stored)
    }

    fn get(&self, name: &str, mut out: impl Write) -> Result<u64, PluginError> {
        let key = self.config.key(name)?;
        let what = self.describe(&key);
        let req = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&key);
        wstd::runtime::block_on(async {
            let resp = req.send().await.map_err(|e| match status(&e) {
                Some(404) => PluginError::NotFound(format!("{what} does not exist")),
                _ => s3_error(&what, "downloading", &e),
            })?;
            let mut body = resp.body;
            let mut sent: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    PluginError::Io(format!(
                        "downloading {what} failed after {sent} bytes: {}",
                        DisplayErrorContext(&e)
                    ))
                })?;
                out.write_all(&chunk).map_err(|e| {
                    PluginError::Io(format!("sending {what} after {sent} bytes: {e}"))
                })?;
                sent += chunk.len() as u64;
            }
            out.flush()
                .map_err(|e| PluginError::Io(format!("sending {what}: {e}")))?;
            Ok(sent)
        })
    }

    /// Deletes `name`, unless the store holds it under Object Lock or a legal hold: then
    /// `locked`, which the host reports as kept. Any other failure (credentials, a
    /// permission, the network) is an error that fails the prune.
    fn delete(&self, name: &str) -> Result<(), PluginError> {
        let key = self.config.key(name)?;
        let what = self.describe(&key);
        // DeleteObject succeeds for a missing key; the contract says not-found.
        let head = self.head(&key, None)?;
        // In a versioned (locked) bucket a delete without a version "succeeds" by hiding
        // the object behind a delete marker: the lock must be checked before.
        if let Some(lock) = still_locked(&head, DateTime::from(SystemTime::now())) {
            return Err(PluginError::Locked(format!(
                "{what} {lock}; the store refuses to delete it before then"
            )));
        }
        // With Object Lock the bucket keeps versions: delete the version itself, so the
        // space is freed (S3 refuses it while a lock holds, whatever the check above saw).
        let version = head
            .version_id()
            .filter(|_| self.lock.is_some())
            .map(str::to_owned);
        let req = self
            .client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .set_version_id(version);
        wstd::runtime::block_on(req.send()).map_err(|e| s3_error(&what, "deleting", &e))?;
        Ok(())
    }

    /// HeadObject of `key` (a `version` of it); a missing one is `not-found`.
    fn head(&self, key: &str, version: Option<&str>) -> Result<HeadObjectOutput, PluginError> {
        let what = self.describe(key);
        let req = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .set_version_id(version.map(str::to_owned));
        wstd::runtime::block_on(req.send()).map_err(|e| match status(&e) {
            Some(404) => PluginError::NotFound(format!("{what} does not exist")),
            _ => s3_error(&what, "reading the metadata of", &e),
        })
    }

    /// Refuses a lock on a bucket that cannot hold one, before anything is uploaded: S3
    /// answers a locked PUT there with an error, but some stores store it unlocked.
    fn check_lock_enabled(&self) -> Result<(), PluginError> {
        let bucket = &self.config.bucket;
        let req = self.client.get_object_lock_configuration().bucket(bucket);
        let missing = || {
            PluginError::Config(format!(
                "key `object_lock`: bucket `{bucket}` does not have Object Lock enabled, so \
                 nothing can be locked in it; Object Lock is chosen when a bucket is created \
                 (aws s3api create-bucket --bucket {bucket} --object-lock-enabled-for-bucket) \
                 — use such a bucket, or remove `object_lock`; nothing was uploaded"
            ))
        };
        match wstd::runtime::block_on(req.send()) {
            Ok(out) => match out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
            {
                Some(ObjectLockEnabled::Enabled) => Ok(()),
                _ => Err(missing()),
            },
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => Err(missing()),
            Err(e) => {
                let hint = if e.code() == Some("AccessDenied") {
                    "the sink needs s3:GetBucketObjectLockConfiguration to check that the \
                     bucket can lock what it stores; nothing was uploaded"
                } else {
                    "nothing was uploaded"
                };
                Err(with_hint(
                    s3_error(
                        &format!("s3://{bucket}"),
                        "reading the Object Lock configuration of",
                        &e,
                    ),
                    hint,
                ))
            }
        }
    }

    /// Checks that the object stored under `key` carries `lock`; a store that dropped the
    /// headers of the upload (some do for multipart uploads) gets it set with
    /// PutObjectRetention. A backup that cannot be locked fails the put.
    fn ensure_locked(
        &self,
        key: &str,
        version: Option<&str>,
        lock: ObjectLock,
    ) -> Result<(), PluginError> {
        let what = self.describe(key);
        let holds = |head: &HeadObjectOutput| {
            head.object_lock_mode() == Some(&object_lock_mode(lock.mode))
                && head
                    .object_lock_retain_until_date()
                    .is_some_and(|d| d.secs() >= lock.until.secs())
        };
        if holds(&self.head(key, version)?) {
            return Ok(());
        }
        log::debug(format_args!(
            "the store did not keep the lock given with the upload of {what}; setting it with \
             PutObjectRetention"
        ));
        let retention = ObjectLockRetention::builder()
            .mode(match lock.mode {
                LockMode::Governance => ObjectLockRetentionMode::Governance,
                LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            })
            .retain_until_date(lock.until)
            .build();
        let req = self
            .client
            .put_object_retention()
            .bucket(&self.config.bucket)
            .key(key)
            .set_version_id(version.map(str::to_owned))
            .retention(retention);
        wstd::runtime::block_on(req.send()).map_err(|e| {
            with_hint(
                s3_error(&what, "locking", &e),
                "it was stored but is not locked; the run fails so that you see it",
            )
        })?;
        if holds(&self.head(key, version)?) {
            Ok(())
        } else {
            Err(PluginError::Other(format!(
                "{what} was stored but the store does not report the {} lock until {} on it: \
                 it does not seem to enforce S3 Object Lock",
                lock.mode.as_str(),
                show_date(lock.until)
            )))
        }
    }

    /// The Content-MD5 header of a body, when objects are locked: S3 refuses a PUT or part
    /// under Object Lock without a checksum. Not sent otherwise: it costs a pass over the data.
    fn content_md5(&self, body: &[u8]) -> Option<String> {
        use md5::Digest;
        self.lock
            .map(|_| aws_smithy_types::base64::encode(md5::Md5::digest(body)))
    }

    fn storage_class(&self) -> Option<StorageClass> {
        self.config.storage_class.as_deref().map(StorageClass::from)
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        self.config.server_side_encryption.map(|s| match s {
            Sse::Aes256 => ServerSideEncryption::Aes256,
            Sse::Kms => ServerSideEncryption::AwsKms,
        })
    }
}

/// The stage's credentials from the host (`aws-credentials`), asked for whenever the SDK's
/// identity cache needs them; their expiry tells the cache when to ask again.
#[derive(Debug, Clone, Default)]
struct HostCredentials {
    /// The last credentials the host gave, shared by the store's clients.
    last: Arc<Mutex<Option<Credentials>>>,
    /// When the host gives none: use `last` while it has not expired (to abort an upload).
    fall_back: bool,
}

impl ProvideCredentials for HostCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(self.fetch())
    }
}

impl HostCredentials {
    fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let mut last = self
            .last
            .lock()
            .map_err(|_| CredentialsError::unhandled("the credential cache is broken"))?;
        match host_credentials() {
            Ok(c) => {
                *last = Some(c.clone());
                Ok(c)
            }
            Err(e) if self.fall_back => match last.as_ref() {
                Some(c) if c.expiry().is_none_or(|at| at > SystemTime::now()) => Ok(c.clone()),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

fn host_credentials() -> Result<Credentials, CredentialsError> {
    let c = pipeline_plugin_sdk::aws::get().map_err(CredentialsError::provider_error)?;
    let expiry = c
        .expires_ms
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        c.session_token,
        expiry,
        "pipeline-host",
    ))
}

/// The host's refusal to give credentials, if that is why a request failed: the request was
/// never sent, and the host's message says why.
fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(p) = e.downcast_ref::<PluginError>() {
            return Some(p.message().to_owned());
        }
        source = e.source();
    }
    None
}

/// Adds `Content-Length: 0` to requests without a body (CreateMultipartUpload,
/// DeleteObject, …): without it wasi:http sends no length at all, and stores such as s3s
/// and some S3-compatible servers answer 411 Length Required.
#[derive(Debug)]
struct EmptyBodyLength;

impl Intercept for EmptyBodyLength {
    fn name(&self) -> &'static str {
        "EmptyBodyLength"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        let empty = request.body().content_length() == Some(0);
        if empty && request.headers().get("content-length").is_none() {
            request.headers_mut().insert("content-length", "0");
        }
        Ok(())
    }
}

fn stored(meta: &ArtifactMeta, size: u64) -> Stored {
    Stored {
        name: meta.name.clone(),
        size,
        created_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(meta.created_ms, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            }),
        locked_until_ms: None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn object_lock_mode(mode: LockMode) -> ObjectLockMode {
    match mode {
        LockMode::Governance => ObjectLockMode::Governance,
        LockMode::Compliance => ObjectLockMode::Compliance,
    }
}

/// `2026-06-01T00:00:00Z`.
fn show_date(d: DateTime) -> String {
    d.fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{} s after the Unix epoch", d.secs()))
}

/// Until when to lock what `meta` names: the later of the host's `retain-until-ms` label
/// (how long retention means to keep the backup) and `lock_days` from `now_ms`, in whole
/// seconds (rounded up: S3 keeps seconds). It must be in the future.
fn lock_until(meta: &ArtifactMeta, lock: Lock, now_ms: u64) -> Result<DateTime, PluginError> {
    let label = meta
        .labels
        .iter()
        .find(|(k, _)| k == RETAIN_UNTIL_LABEL)
        .map(|(_, v)| {
            v.parse::<u64>().map_err(|_| {
                PluginError::Other(format!(
                    "the host's label `{RETAIN_UNTIL_LABEL}` is {v:?}, not a time in milliseconds"
                ))
            })
        })
        .transpose()?;
    let floor = lock
        .min_days
        .map(|d| now_ms.saturating_add(d.saturating_mul(DAY_MS)));
    let Some(until) = label.into_iter().chain(floor).max() else {
        return Err(PluginError::Config(
            "key `object_lock`: no lock length: the pipeline's [retention] has no time rule \
             (days, daily, weekly, monthly) that says how long a backup is kept, and \
             `lock_days` is not set; set lock_days"
                .into(),
        ));
    };
    let secs = i64::try_from(until.div_ceil(1000)).unwrap_or(i64::MAX);
    let until = DateTime::from_secs(secs);
    if until.secs().saturating_mul(1000) <= i64::try_from(now_ms).unwrap_or(i64::MAX) {
        return Err(PluginError::Config(format!(
            "key `object_lock`: the retention policy keeps {} only until {}, which has passed \
             (a clock far behind?); set `lock_days` to lock it anyway",
            meta.name,
            show_date(until)
        )));
    }
    Ok(until)
}

/// Why `head`'s object may not be deleted at `now`: a legal hold, or a retain-until date
/// after `now`.
fn still_locked(head: &HeadObjectOutput, now: DateTime) -> Option<String> {
    if head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On) {
        return Some("is under an Object Lock legal hold".into());
    }
    let until = head.object_lock_retain_until_date().filter(|d| **d > now)?;
    let mode = head
        .object_lock_mode()
        .map_or("", |m| m.as_str())
        .to_ascii_lowercase();
    Some(format!("is locked ({mode}) until {}", show_date(*until)))
}

/// `err` with `hint` after its message, same kind.
fn with_hint(err: PluginError, hint: &str) -> PluginError {
    let text = format!("{}; {hint}", err.message());
    match err {
        PluginError::Config(_) => PluginError::Config(text),
        PluginError::NotFound(_) => PluginError::NotFound(text),
        PluginError::Denied(_) => PluginError::Denied(text),
        PluginError::Locked(_) => PluginError::Locked(text),
        PluginError::Io(_) => PluginError::Io(text),
        PluginError::Other(_) => PluginError::Other(text),
    }
}

/// Read up to `size` bytes: fewer only at the end of the stream. One buffer of `size`.
fn read_part(data: &mut InputReader, size: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(size);
    while buf.len() < size {
        let chunk = match data.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let n = chunk.len().min(size - buf.len());
        buf.extend_from_slice(&chunk[..n]);
        data.consume(n);
    }
    Ok(Bytes::from(buf))
}

fn input_failed(what: &str, uploaded: u64, err: &io::Error) -> PluginError {
    PluginError::Io(format!(
        "the artifact's data failed after {uploaded} bytes were uploaded ({err}); {what} was not \
         stored"
    ))
}

fn status<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    err.raw_response().map(HasStatus::status_code)
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Worth another try: no answer, a broken answer, or a 5xx / throttling one.
fn transient<E, R>(err: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    // The host already retried and decided; asking again at once would not help.
    if credentials_failure(err).is_some() {
        return false;
    }
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            !denied(&format!("{}", DisplayErrorContext(err)))
        }
        SdkError::ServiceError(_) => {
            matches!(status(err), Some(s) if s >= 500 || s == 429)
        }
        _ => false,
    }
}

/// The host refused the request (the stage was not granted the host).
fn denied(text: &str) -> bool {
    text.contains("HttpRequestDenied") || text.contains("denied")
}

/// One line for a retry warning.
fn summary<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let code = err.code().map(str::to_owned);
    match (status(err), code) {
        (Some(s), Some(code)) => format!("HTTP {s} {code}"),
        (Some(s), None) => format!("HTTP {s}"),
        _ => format!("{}", DisplayErrorContext(err)),
    }
}

/// A failed S3 call as the user should read it: what, the store's code and message, and
/// for the usual causes what to check.
fn s3_error<E, R>(what: &str, doing: &str, err: &SdkError<E, R>) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    let status = status(err);
    let hint = match code.as_str() {
        "SignatureDoesNotMatch" => {
            " — the secret key is wrong: the store rejected the request signature; check \
             `secret_access_key` (S3_SECRET_KEY)"
        }
        "InvalidAccessKeyId" => {
            " — the access key id is unknown to the store; check `access_key_id` (S3_ACCESS_KEY)"
        }
        "AccessDenied" => {
            " — the credentials lack a permission; see the IAM policy in the README's S3 section"
        }
        "NoSuchBucket" => " — the bucket does not exist; check `bucket` and `region`",
        "ExpiredToken" | "InvalidToken" => {
            " — the session token is expired or invalid; refresh the credentials"
        }
        "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
            " — the bucket is in another region; check `region`"
        }
        _ => "",
    };
    let detail = match (status, code.is_empty()) {
        (Some(s), false) if message.is_empty() => format!("HTTP {s} {code}"),
        (Some(s), false) => format!("HTTP {s} {code}: {message}"),
        (Some(s), true) => format!("HTTP {s}"),
        (None, _) => format!("{}", DisplayErrorContext(err)),
    };
    if let Some(why) = credentials_failure(err) {
        return PluginError::Denied(format!(
            "{doing} {what} failed: no valid AWS credentials: {why}"
        ));
    }
    let text = format!("{doing} {what} failed: {detail}{hint}");
    let text_all = format!("{}", DisplayErrorContext(err));
    if denied(&text_all) && status.is_none() {
        return PluginError::Denied(format!(
            "{doing} {what} failed: the host did not let this stage reach the store ({detail})"
        ));
    }
    match code.as_str() {
        "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken" => PluginError::Denied(text),
        "NoSuchBucket" | "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
            PluginError::Config(text)
        }
        _ => PluginError::Io(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ArtifactMeta {
        ArtifactMeta {
            name: "backup-x.sql.zst".into(),
            content_type: "application/zstd".into(),
            created_ms: 0,
            size: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    const NOW: u64 = 1_765_368_000_000; // 2025-12-10T12:00:00Z

    fn lock(min_days: Option<u64>) -> Lock {
        Lock {
            mode: LockMode::Compliance,
            min_days,
        }
    }

    #[test]
    fn the_lock_lasts_as_long_as_retention_or_lock_days_says() {
        let month = (NOW + 30 * DAY_MS).to_string();
        let m = meta(&[("pipeline", "p"), (RETAIN_UNTIL_LABEL, &month)]);
        // The label alone, rounded up to whole seconds.
        let until = lock_until(&m, lock(None), NOW).expect("label");
        assert_eq!(until.secs(), 1_765_368_000 + 30 * 86_400);
        // lock_days is a floor: shorter changes nothing, longer wins.
        assert_eq!(lock_until(&m, lock(Some(7)), NOW).ok(), Some(until));
        let long = lock_until(&m, lock(Some(90)), NOW).expect("floor");
        assert_eq!(long.secs(), 1_765_368_000 + 90 * 86_400);
        // Without the label (no time rule in the policy), lock_days alone.
        let only = lock_until(&meta(&[]), lock(Some(1)), NOW + 1).expect("floor");
        assert_eq!(only.secs(), 1_765_368_000 + 86_400 + 1);
        assert_eq!(show_date(until), "2026-01-09T12:00:00Z");
    }

    #[test]
    fn no_lock_length_or_a_past_one_is_refused() {
        assert!(matches!(
            lock_until(&meta(&[]), lock(None), NOW),
            Err(PluginError::Config(m)) if m.contains("set lock_days")
        ));
        let past = (NOW - DAY_MS).to_string();
        assert!(matches!(
            lock_until(&meta(&[(RETAIN_UNTIL_LABEL, &past)]), lock(None), NOW),
            Err(PluginError::Config(m)) if m.contains("has passed")
        ));
        assert!(matches!(
            lock_until(&meta(&[(RETAIN_UNTIL_LABEL, "soon")]), lock(None), NOW),
            Err(PluginError::Other(_))
        ));
    }

    #[test]
    fn a_locked_object_says_until_when() {
        let now = DateTime::from_secs(1_765_368_000);
        let head = |until: i64, hold: bool| {
            let mut b = HeadObjectOutput::builder()
                .object_lock_mode(ObjectLockMode::Governance)
                .object_lock_retain_until_date(DateTime::from_secs(until));
            if hold {
                b = b.object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On);
            }
            b.build()
        };
        assert_eq!(
            still_locked(&head(1_765_368_000 + 86_400, false), now).as_deref(),
            Some("is locked (governance) until 2025-12-11T12:00:00Z")
        );
        assert_eq!(still_locked(&head(1_765_368_000, false), now), None);
        assert!(still_locked(&head(0, true), now).is_some_and(|w| w.contains("legal hold")));
        assert_eq!(
            still_locked(&HeadObjectOutput::builder().build(), now),
            None
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn grants(json: &str) -> Vec<Grant> {
        match <S3 as Plugin>::plan(json.into()) {
            Ok(p) => p.grants,
            Err(e) => panic!("{json}: {e}"),
        }
    }

    /// Without keys of its own (empty ones count as unset, as on the host), it asks for
    /// the host's credentials through its plan; with keys, it does not.
    #[test]
    fn the_plan_asks_for_aws_credentials_only_without_keys() {
        let aws = |g: &[Grant]| g.iter().any(|g| matches!(g, Grant::AwsCredentials));
        assert!(aws(&grants(r#"{"bucket": "b"}"#)));
        assert!(aws(&grants(
            r#"{"bucket": "b", "access_key_id": "", "secret_access_key": ""}"#
        )));
        assert!(!aws(&grants(
            r#"{"bucket": "b", "access_key_id": "A", "secret_access_key": "S"}"#
        )));
    }
}
