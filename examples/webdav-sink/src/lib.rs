//! `webdav`: an example third-party sink that stores artifacts in a WebDAV collection
//! (Nextcloud, ownCloud, Apache mod_dav, nginx, `rclone serve webdav`, …).
//!
//! Built outside the `pipeline` repository's workspaces against the guest SDK, as anyone's
//! plugin would be. Requests leave through `wasi:http`: the host opens the connections
//! (and does the TLS) and lets this stage reach only the hosts its pipeline file grants.
//!
//! `put` never holds the artifact in memory: the `PUT` body is read from the input stream
//! one chunk at a time as the host sends it. It uploads to `<name>.partial` and then
//! `MOVE`s that to `<name>` with `Overwrite: F`, so nobody sees a half-written artifact
//! under its name and an existing artifact is never replaced; on any failure the
//! `.partial` is deleted.

mod config;
mod date;
mod dav;
mod url;
mod xml;

use std::time::{SystemTime, UNIX_EPOCH};

use pipeline_plugin_sdk::artifact::check_name;
use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::{
    ArtifactMeta, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    Sink, StagePlan, Stored, ValueType, config_key, log,
};

use crate::config::Settings;
use crate::dav::Dav;

/// The suffix of uploads in progress; never listed.
const PARTIAL: &str = ".partial";

struct WebDav;

impl Plugin for WebDav {
    fn describe() -> PluginInfo {
        use ValueType::{Boolean, Secret, Text};
        PluginInfo {
            name: "webdav".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Sink,
            description: "Stores artifacts in a WebDAV collection (Nextcloud, Apache, nginx, \
                          rclone serve webdav, …)"
                .into(),
            config_keys: vec![
                config_key(
                    "url",
                    Text,
                    true,
                    "The collection's URL, http(s)://host[:port]/path/, e.g. \
                     https://dav.example.com/backups/ (no credentials in it)",
                ),
                config_key(
                    "username",
                    Text,
                    false,
                    "User name for HTTP basic authentication (default: none)",
                ),
                config_key(
                    "password",
                    Secret,
                    false,
                    "Password for HTTP basic authentication; never logged",
                ),
                config_key(
                    "create_collection",
                    Boolean,
                    false,
                    "Create the collection (MKCOL) if it is missing (default true)",
                ),
            ],
            capabilities: vec!["http".into(), "log".into()],
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let settings = Settings::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![Grant::Host(settings.collection.authority)],
        })
    }
}

impl Sink for WebDav {
    fn put(config: String, meta: ArtifactMeta, data: InputStream) -> Result<Stored, PluginError> {
        let settings = Settings::parse(&config)?;
        check_name(&meta.name)?;
        let dav = Dav::new(&settings);
        let target = settings.collection.member_url(&meta.name);
        let size = wstd::runtime::block_on(async {
            // An earlier backup is never replaced (the MOVE's `Overwrite: F` also
            // guarantees it; checking first fails before the dump is uploaded).
            if dav.exists(&meta.name).await? {
                return Err(PluginError::Other(format!(
                    "{target} already exists; refusing to overwrite it (it would destroy an \
                     earlier backup)"
                )));
            }
            if settings.create_collection {
                dav.ensure_collection().await?;
            }
            dav.store(&meta.name, InputReader::with_chunk_size(data, dav::CHUNK))
                .await
        })?;
        log::debug(format_args!("stored {target} ({size} bytes)"));
        Ok(Stored {
            name: meta.name,
            size,
            created_ms: now_ms().unwrap_or(meta.created_ms),
            checksum: None,
        })
    }

    fn list(config: String, prefix: String) -> Result<Vec<Stored>, PluginError> {
        let settings = Settings::parse(&config)?;
        let dav = Dav::new(&settings);
        let entries = wstd::runtime::block_on(dav.list())?;
        Ok(artifacts(&settings.collection, entries, &prefix))
    }

    fn get(config: String, name: String, out: OutputStream) -> Result<u64, PluginError> {
        let settings = Settings::parse(&config)?;
        check_name(&name)?;
        let dav = Dav::new(&settings);
        wstd::runtime::block_on(dav.download(&name, OutputWriter::new(out)))
    }

    fn delete(config: String, name: String) -> Result<(), PluginError> {
        let settings = Settings::parse(&config)?;
        check_name(&name)?;
        let dav = Dav::new(&settings);
        wstd::runtime::block_on(dav.delete(&name))
    }
}

pipeline_plugin_sdk::export_sink!(WebDav);

/// The complete artifacts among a listing's entries whose name starts with `prefix`: not
/// the collection itself, no sub-collections, no uploads in progress, no hidden files.
fn artifacts(collection: &url::Collection, entries: Vec<xml::Entry>, prefix: &str) -> Vec<Stored> {
    entries
        .into_iter()
        .filter(|e| !e.collection)
        .filter_map(|e| {
            let name = collection.member_name(&e.href)?;
            let keep = !name.ends_with('/')
                && !name.ends_with(PARTIAL)
                && !name.starts_with('.')
                && name.starts_with(prefix);
            keep.then(|| Stored {
                name,
                size: e.size.unwrap_or(0),
                created_ms: e.modified_ms.unwrap_or(0),
                checksum: None,
            })
        })
        .collect()
}

fn now_ms() -> Option<u64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(href: &str, collection: bool, size: Option<u64>) -> xml::Entry {
        xml::Entry {
            href: href.into(),
            collection,
            size,
            modified_ms: Some(7),
        }
    }

    #[test]
    fn plan_asks_for_the_one_host_with_its_port() {
        let plan =
            WebDav::plan(r#"{"url": "https://dav.example.com/backups/"}"#.into()).expect("valid");
        assert_eq!(plan.grants.len(), 1);
        assert!(
            matches!(&plan.grants[0], Grant::Host(h) if h == "dav.example.com:443"),
            "{:?}",
            plan.grants
        );
        assert!(plan.extension.is_none() && plan.content_type.is_none());
        let err = WebDav::plan(r#"{"url": "http://h/", "colour": 1}"#.into()).expect_err("bad");
        assert!(matches!(err, PluginError::Config(_)), "{err}");
    }

    #[test]
    fn describe_declares_every_key_it_accepts() {
        let info = WebDav::describe();
        assert_eq!(info.name, "webdav");
        let keys: Vec<&str> = info.config_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(keys, ["url", "username", "password", "create_collection"]);
        assert!(matches!(info.config_keys[2].value_type, ValueType::Secret));
        assert!(info.capabilities.contains(&"http".to_string()));
    }

    #[test]
    fn listings_keep_only_complete_artifacts_with_the_prefix() {
        let c = url::parse_collection("http://h/dav/b/").expect("valid");
        let entries = vec![
            entry("/dav/b/", true, None),
            entry("/dav/b/sub/", true, None),
            entry("/dav/b/backup-1.sql.zst", false, Some(10)),
            entry("http://h/dav/b/backup-1.sql.zst.sha256", false, Some(90)),
            entry("/dav/b/backup-2.sql.zst.partial", false, Some(5)),
            entry("/dav/b/.hidden", false, Some(1)),
            entry("/dav/b/other%20file", false, None),
            entry("/dav/b/sub/backup-3.sql.zst", false, Some(1)),
        ];
        let names = |prefix: &str| -> Vec<(String, u64)> {
            artifacts(&c, entries.clone(), prefix)
                .into_iter()
                .map(|s| (s.name, s.size))
                .collect()
        };
        assert_eq!(
            names("backup-"),
            vec![
                ("backup-1.sql.zst".to_string(), 10),
                ("backup-1.sql.zst.sha256".to_string(), 90),
            ]
        );
        assert_eq!(names("").len(), 3);
        assert_eq!(
            names("other").first().map(|(n, _)| n.as_str()),
            Some("other file")
        );
    }
}
