//! `git`: a snapshot sink that keeps snapshot files in a directory of a git repository and
//! commits them through the host's `git` capability.
//!
//! Files are written to `<repository>/<directory>` (default `snapshots/`) as `local` does:
//! a hidden partial file, then a hard link, so an existing file is never replaced. With
//! `commit = true` each change becomes a commit of exactly its file (`batch = true`: one
//! commit per run), authored as configured, signed with gpg if `sign = true`, and pushed
//! if `push = true`. With `commit = false` the files are only written, as the original
//! service did when git was disabled.
//!
//! The stage is granted the snapshot directory (files) and the repository (commits), not
//! the repository's files: the plugin cannot touch `.git` or anything else in the tree.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use pipeline_plugin_sdk::artifact::check_name;
use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::snapshot::git::{self, CommitRequest, Person, Signing};
use pipeline_plugin_sdk::snapshot::{ChangeSet, Sink as SnapshotSink};
use pipeline_plugin_sdk::{
    ArtifactMeta, DirectoryGrant, Grant, InputStream, OutputStream, Plugin, PluginError,
    PluginInfo, PluginKind, Sink, StagePlan, Stored, config, log,
};
pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Path, required, "The repository's working tree")]
        repository: String,
        #[key(Text, default("snapshots".into()), "Directory for snapshot files inside it")]
        directory: String,
        #[key(
            Boolean,
            default_in_help(true),
            "Commit the files (default true); false only writes them",
        )]
        commit: bool,
        #[key(Text, default("CORE Snapshot Service".into()), "Author")]
        author_name: String,
        #[key(Text, default("snapshots@core.local".into()), "Author email")]
        author_email: String,
        #[key(Text, optional, "Committer (default: the author)")]
        committer_name: Option<String>,
        #[key(Text, optional, "Committer email (default: the author's)")]
        committer_email: Option<String>,
        #[key(Boolean, default(false), "Sign commits with gpg")]
        sign: bool,
        #[key(
            Text,
            default_in_help("openpgp".into()),
            "openpgp (gpg, the default) or ssh, as git's gpg.format",
        )]
        signing_format: String,
        #[key(
            Text,
            optional,
            "openpgp: key id or fingerprint (default: gpg's default key); ssh: the key file",
        )]
        signing_key: Option<String>,
        #[key(Boolean, default(false), "Push after committing")]
        push: bool,
        #[key(Text, default("origin".into()), "Remote to push to")]
        remote: String,
        #[key(Text, optional, "Branch to push (default: the checked-out branch)")]
        branch: Option<String>,
        #[key(
            Boolean,
            optional,
            "One commit per run listing every change (default: one per change)",
        )]
        batch: bool,
    }
}

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let mut config: Config = config::parse(json)?;
        if config.repository.is_empty() {
            return Err(PluginError::Config(
                "key `repository`: must not be empty".into(),
            ));
        }
        let dir = Path::new(&config.directory);
        let plain = !config.directory.is_empty()
            && dir
                .components()
                .all(|c| matches!(c, Component::Normal(n) if n != ".git"));
        if !plain {
            return Err(PluginError::Config(format!(
                "key `directory`: {:?} must be a relative path inside the repository, without `..` or `.git`",
                config.directory
            )));
        }
        config.directory = config.directory.trim_end_matches('/').to_string();
        for (key, value) in [
            ("author_name", &config.author_name),
            ("author_email", &config.author_email),
        ] {
            if value.trim().is_empty() || value.contains(['<', '>', '\n']) {
                return Err(PluginError::Config(format!(
                    "key `{key}`: {value:?} must be non-empty, without `<`, `>` or newlines"
                )));
            }
        }
        if config.signing_key.as_deref() == Some("") {
            config.signing_key = None;
        }
        match config.signing_format.as_str() {
            "openpgp" => {}
            "ssh" if config.sign && config.signing_key.is_none() => {
                return Err(PluginError::Config(
                    "key `signing_key`: ssh signing needs the key file".into(),
                ));
            }
            "ssh" => {}
            other => {
                return Err(PluginError::Config(format!(
                    "key `signing_format`: {other:?} is not openpgp or ssh"
                )));
            }
        }
        if config.branch.as_deref() == Some("") {
            config.branch = None;
        }
        Ok(config)
    }

    fn dir(&self) -> PathBuf {
        Path::new(&self.repository).join(&self.directory)
    }

    fn file(&self, name: &str) -> Result<PathBuf, PluginError> {
        check_name(name)?;
        Ok(self.dir().join(name))
    }

    fn author(&self) -> Person {
        Person {
            name: self.author_name.clone(),
            email: self.author_email.clone(),
        }
    }

    fn committer(&self) -> Person {
        Person {
            name: self
                .committer_name
                .clone()
                .unwrap_or_else(|| self.author_name.clone()),
            email: self
                .committer_email
                .clone()
                .unwrap_or_else(|| self.author_email.clone()),
        }
    }

    /// `snapshots/<name>`: the path git sees.
    fn repo_path(&self, name: &str) -> String {
        format!("{}/{name}", self.directory)
    }
}

struct Git;

impl Plugin for Git {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "git".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Sink,
            description: "Snapshot files in a git repository, one commit per change".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        let mut grants = vec![Grant::Directory(DirectoryGrant {
            path: config.dir().display().to_string(),
            writable: true,
            create: true,
        })];
        if config.commit {
            grants.push(Grant::Repository(config.repository.clone()));
        }
        Ok(StagePlan {
            extension: None,
            content_type: Some("application/json".into()),
            grants,
        })
    }
}

impl Sink for Git {
    fn put(config: String, meta: ArtifactMeta, data: InputStream) -> Result<Stored, PluginError> {
        let config = Config::parse(&config)?;
        let target = config.file(&meta.name)?;
        let partial = config.dir().join(format!(".{}.partial", meta.name));
        let mut input = InputReader::new(data);
        let written = (|| -> io::Result<u64> {
            let mut file = File::create_new(&partial)?;
            let size = io::copy(&mut input, &mut file)?;
            file.sync_all()?;
            fs::hard_link(&partial, &target)?;
            Ok(size)
        })();
        let _ = fs::remove_file(&partial);
        let size = written.map_err(|e| PluginError::from_io(target.display(), &e))?;
        Ok(Stored {
            name: meta.name,
            size,
            created_ms: meta.created_ms,
            locked_until_ms: None,
        })
    }

    fn list(config: String, prefix: String) -> Result<Vec<Stored>, PluginError> {
        let config = Config::parse(&config)?;
        let dir = config.dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(PluginError::from_io(dir.display(), &e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PluginError::from_io(dir.display(), &e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !name.starts_with(&prefix) {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| PluginError::from_io(entry.path().display(), &e))?;
            if !meta.is_file() {
                continue;
            }
            let created_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out.push(Stored {
                name,
                size: meta.len(),
                created_ms,
                locked_until_ms: None,
            });
        }
        Ok(out)
    }

    fn get(config: String, artifact: Stored, out: OutputStream) -> Result<u64, PluginError> {
        let config = Config::parse(&config)?;
        let path = config.file(&artifact.name)?;
        let mut file = File::open(&path).map_err(|e| PluginError::from_io(path.display(), &e))?;
        let mut out = OutputWriter::new(out);
        io::copy(&mut file, &mut out)
            .and_then(|n| out.flush().map(|()| n))
            .map_err(|e| PluginError::from_io(path.display(), &e))
    }

    fn delete(config: String, artifact: Stored) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        let path = config.file(&artifact.name)?;
        fs::remove_file(&path).map_err(|e| PluginError::from_io(path.display(), &e))
    }
}

/// The change sets as commits: as given, or all in one (`batch`).
fn commits(config: &Config, changes: Vec<ChangeSet>) -> Vec<(Vec<String>, String)> {
    let as_paths =
        |c: &ChangeSet| -> Vec<String> { c.files.iter().map(|f| config.repo_path(f)).collect() };
    if config.batch && changes.len() > 1 {
        let paths = changes.iter().flat_map(as_paths).collect();
        let mut message = format!("[SNAPSHOT] {} changes\n\n", changes.len());
        for c in &changes {
            message.push_str(&c.message);
            message.push('\n');
        }
        vec![(paths, message)]
    } else {
        changes
            .iter()
            .map(|c| (as_paths(c), c.message.clone()))
            .collect()
    }
}

impl SnapshotSink for Git {
    fn commit(config: String, changes: Vec<ChangeSet>) -> Result<Vec<String>, PluginError> {
        let config = Config::parse(&config)?;
        if !config.commit {
            return Ok(vec![]);
        }
        let signing = config.sign.then(|| match config.signing_format.as_str() {
            "ssh" => Signing::Ssh(config.signing_key.clone().unwrap_or_default()),
            _ => Signing::Gpg(config.signing_key.clone()),
        });
        let mut ids = Vec::new();
        let commits = commits(&config, changes);
        let total = commits.len();
        for (done, (paths, message)) in commits.iter().enumerate() {
            let request = CommitRequest {
                paths: paths.clone(),
                message: message.clone(),
                author: config.author(),
                committer: config.committer(),
                signing: signing.clone(),
            };
            match git::commit(&config.repository, &request) {
                Ok(Some(id)) => ids.push(id),
                Ok(None) => {}
                Err(e) => {
                    // Files left uncommitted would count as recorded: remove them, so the
                    // next run finds those changes again and commits them.
                    let left: Vec<&String> = commits[done..].iter().flat_map(|c| &c.0).collect();
                    for path in &left {
                        let _ = fs::remove_file(Path::new(&config.repository).join(path));
                    }
                    return Err(e.context(format!(
                        "committed {done} of {total} change(s); the {} snapshot file(s) not committed were removed so the next run records them again",
                        left.len()
                    )));
                }
            }
        }
        if config.push && !ids.is_empty() {
            git::push(&config.repository, &config.remote, config.branch.as_deref())?;
            log::info(format_args!(
                "pushed to {} {}",
                config.remote,
                config.branch.as_deref().unwrap_or("(current branch)")
            ));
        }
        Ok(ids)
    }
}

pipeline_plugin_sdk::export_snapshot_sink!(Git);

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts: the same names in the same
    /// order, required exactly where a missing key is an error, typed as `Config` parses them.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Git::describe().config_keys,
            &serde_json::json!({"repository": "/r"}),
        );
    }

    #[test]
    fn defaults_are_the_original_services() {
        let c = Config::parse(r#"{"repository": "/r"}"#).expect("valid");
        assert_eq!(c.author_name, "CORE Snapshot Service");
        assert_eq!(c.author_email, "snapshots@core.local");
        assert_eq!(c.directory, "snapshots");
        assert!(c.commit && !c.sign && !c.push && !c.batch);
        assert_eq!(c.committer().name, "CORE Snapshot Service");
        assert_eq!(c.repo_path("a.json"), "snapshots/a.json");
    }

    #[test]
    fn directories_stay_inside_the_repository() {
        for bad in ["", "../x", "/abs", "a/../../b", ".git", "x/.git/hooks"] {
            let json = format!(r#"{{"repository": "/r", "directory": {bad:?}}}"#);
            assert!(Config::parse(&json).is_err(), "{bad}");
        }
        let c = Config::parse(r#"{"repository": "/r", "directory": "a/b/"}"#).expect("ok");
        assert_eq!(c.dir(), Path::new("/r/a/b"));
    }

    #[test]
    fn batch_makes_one_commit_listing_every_change() {
        let c = Config::parse(r#"{"repository": "/r", "batch": true}"#).expect("ok");
        let sets = vec![
            ChangeSet {
                files: vec!["a.json".into()],
                message: "[SNAPSHOT] create role: A (1)".into(),
            },
            ChangeSet {
                files: vec!["b.json".into()],
                message: "[SNAPSHOT] delete role: B (2)".into(),
            },
        ];
        let got = commits(&c, sets);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, ["snapshots/a.json", "snapshots/b.json"]);
        assert_eq!(
            got[0].1,
            "[SNAPSHOT] 2 changes\n\n[SNAPSHOT] create role: A (1)\n[SNAPSHOT] delete role: B (2)\n"
        );
    }
}
