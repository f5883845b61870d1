//! `webdav`: an example third-party sink that stores artifacts in a WebDAV collection
//! (Nextcloud, ownCloud, Apache mod_dav, nginx, `rclone serve webdav`, …).
//!
//! Built outside the `pipeline` repository's workspaces against the guest SDK, as anyone's
//! plugin would be. Requests leave through `wasi:http`: the host opens the connections
//! (and does the TLS) and lets this stage reach only the hosts its pipeline file grants.
//!
//! Artifacts are laid out by the month they were made: `<collection>/YYYY/MM/<name>`, from
//! the `created-ms` the host gives `put` (a backup and its manifest share it, so they land
//! together). `get` and `delete` receive what `list` returned, time included, and address
//! the artifact directly; only `list` walks the year and month collections.
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

use pipeline_plugin_sdk::artifact::check_name;
use pipeline_plugin_sdk::date::Utc;
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
        let dav = Dav::new(&settings).at(&month_dir(meta.created_ms));
        let target = settings
            .collection
            .sub(&month_dir(meta.created_ms))
            .member_url(&meta.name);
        let size = wstd::runtime::block_on(async {
            // An earlier backup is never replaced (the MOVE's `Overwrite: F` also
            // guarantees it; checking first fails before the dump is uploaded).
            if dav.exists(&meta.name).await? {
                return Err(PluginError::Other(format!(
                    "{target} already exists; refusing to overwrite it (it would destroy an \
                     earlier backup)"
                )));
            }
            // The month's collection and its year's are this sink's own; the configured
            // one only with `create_collection`.
            let levels = if settings.create_collection {
                usize::MAX
            } else {
                2
            };
            dav.ensure_collection(levels).await?;
            dav.store(&meta.name, InputReader::with_chunk_size(data, dav::CHUNK))
                .await
        })?;
        log::debug(format_args!("stored {target} ({size} bytes)"));
        Ok(Stored {
            name: meta.name,
            size,
            // Where it was put: `get` and `delete` find it from this.
            created_ms: meta.created_ms,
            locked_until_ms: None,
        })
    }

    fn list(config: String, prefix: String) -> Result<Vec<Stored>, PluginError> {
        let settings = Settings::parse(&config)?;
        let dav = Dav::new(&settings);
        wstd::runtime::block_on(async {
            let mut found = Vec::new();
            for year in subcollections(&settings.collection, dav.list().await?, 4) {
                let year_dav = dav.at(&format!("{year}/"));
                let in_year = year_dav_collection(&settings, &year);
                for month in subcollections(&in_year, year_dav.list().await?, 2) {
                    let dir = format!("{year}/{month}/");
                    let entries = dav.at(&dir).list().await?;
                    for mut stored in artifacts(&settings.collection.sub(&dir), entries, &prefix) {
                        let modified = Some(stored.created_ms).filter(|t| *t > 0);
                        // The year and month are digits, checked by `subcollections`.
                        if let Some(t) = within_month(modified, &year, &month) {
                            stored.created_ms = t;
                            found.push(stored);
                        }
                    }
                }
            }
            Ok(found)
        })
    }

    fn get(config: String, artifact: Stored, out: OutputStream) -> Result<u64, PluginError> {
        let settings = Settings::parse(&config)?;
        check_name(&artifact.name)?;
        let dav = Dav::new(&settings).at(&month_dir(artifact.created_ms));
        wstd::runtime::block_on(dav.download(&artifact.name, OutputWriter::new(out)))
    }

    fn delete(config: String, artifact: Stored) -> Result<(), PluginError> {
        let settings = Settings::parse(&config)?;
        check_name(&artifact.name)?;
        let dav = Dav::new(&settings).at(&month_dir(artifact.created_ms));
        wstd::runtime::block_on(dav.delete(&artifact.name))
    }
}

pipeline_plugin_sdk::export_sink!(WebDav);

/// The collection of the month of `created_ms` (UTC), relative to the configured one:
/// `2026/12/`.
fn month_dir(created_ms: u64) -> String {
    let [year, month, _] = Utc::from_ms(created_ms).date_parts();
    format!("{year}/{month}/")
}

fn year_dav_collection(settings: &Settings, year: &str) -> url::Collection {
    settings.collection.sub(&format!("{year}/"))
}

/// The names of the sub-collections among a listing's entries that are `digits` digits
/// long (years, months), sorted.
fn subcollections(
    collection: &url::Collection,
    entries: Vec<xml::Entry>,
    digits: usize,
) -> Vec<String> {
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|e| e.collection)
        .filter_map(|e| collection.member_name(&e.href))
        .map(|n| n.trim_end_matches('/').to_owned())
        .filter(|n| n.len() == digits && n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    names.sort();
    names
}

/// The time `list` reports for an artifact found in the collection of `year` and `month`
/// (`"2026"`, `"12"`): the server's modification time, kept within that month, so that
/// `get` and `delete`, which find the artifact from it, look where it is (an upload can end
/// in the month after it began, and some servers report no time at all).
fn within_month(modified_ms: Option<u64>, year: &str, month: &str) -> Option<u64> {
    let start = Utc::new(year.parse().ok()?, month.parse().ok()?, 1, 0, 0, 0, 0)?.to_ms()?;
    Some(match modified_ms {
        Some(t) if month_dir(t) == month_dir(start) => t,
        _ => start,
    })
}

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
                locked_until_ms: None,
            })
        })
        .collect()
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
    }

    /// `put` files an artifact under the month of its `created-ms`; `list` reports a
    /// time in the month it was found in, so `get` and `delete` look in the same place.
    #[test]
    fn artifacts_are_addressed_by_the_month_they_were_made() {
        // 2025-12-01T15:39:04.007Z
        assert_eq!(month_dir(1_764_603_544_007), "2025/12/");
        assert_eq!(month_dir(0), "1970/01/");
        let dec = 1_764_603_544_007;
        assert_eq!(within_month(Some(dec), "2025", "12"), Some(dec));
        // Modified in January (the upload ended after midnight), found in December.
        let jan = Utc::new(2026, 1, 1, 0, 0, 1, 0).and_then(|t| t.to_ms());
        let dec_start = Utc::new(2025, 12, 1, 0, 0, 0, 0).and_then(|t| t.to_ms());
        assert_eq!(within_month(jan, "2025", "12"), dec_start);
        assert_eq!(within_month(None, "2025", "12"), dec_start);
        let listed = within_month(jan, "2025", "12").expect("a time");
        assert_eq!(month_dir(listed), "2025/12/");
        assert_eq!(within_month(Some(dec), "2025", "13"), None);
    }

    #[test]
    fn subcollections_are_years_or_months() {
        let c = url::parse_collection("http://h/dav/b/").expect("valid");
        let entries = vec![
            entry("/dav/b/", true, None),
            entry("/dav/b/2026/", true, None),
            entry("/dav/b/2025/", true, None),
            entry("/dav/b/12/", true, None),
            entry("/dav/b/misc/", true, None),
            entry("/dav/b/2024", false, Some(1)),
        ];
        assert_eq!(subcollections(&c, entries.clone(), 4), ["2025", "2026"]);
        assert_eq!(subcollections(&c, entries, 2), ["12"]);
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
