//! `local`: a sink that stores artifacts as files in a directory.
//!
//! The directory is granted (preopened) by the host from the `path` key; the plugin
//! reaches it through std::fs, which on `wasm32-wasip2` goes through `wasi:filesystem`
//! and so cannot leave the grant.
//!
//! Writes are atomic: `put` writes `.<name>.partial-<owner>-<random>`, syncs it, then links
//! it under its final name, which fails if that name exists (an earlier backup is never
//! replaced), and removes the partial name. Files starting with `.` are never listed, so a
//! half-written artifact is invisible until it is complete.
//!
//! `<owner>` is a short hash of the pipeline that writes: of the artifact meta's
//! `pipeline-id` label (the host's run-lock key: the pipeline's name and file), else of its
//! `pipeline` label. A run that is killed leaves its partial file behind; the next `put` of
//! the same pipeline removes such files, and only those: the host holds that lock during a
//! run, so no other run can be writing them, while another pipeline's partials (another
//! hash) may be live and are never touched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use pipeline_plugin_sdk::artifact::{self, check_name};
use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::{
    ArtifactMeta, DirectoryGrant, Grant, InputStream, OutputStream, Plugin, PluginError,
    PluginInfo, PluginKind, Sink, StagePlan, Stored, config,
};

mod disk;
mod write_error;

/// Bytes per read when sending a file to an output stream.
const CHUNK: usize = 256 * 1024;

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(
            Path,
            required,
            "The directory to store artifacts in (created if missing); relative paths \
             are relative to the working directory",
        )]
        path: String,
    }
}

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = config::parse(json)?;
        if config.path.is_empty() {
            return Err(PluginError::Config("key `path`: must not be empty".into()));
        }
        Ok(config)
    }

    fn dir(&self) -> &Path {
        Path::new(&self.path)
    }

    /// The file of artifact `name`, after checking the name.
    fn file(&self, name: &str) -> Result<PathBuf, PluginError> {
        check_name(name)?;
        Ok(self.dir().join(name))
    }
}

struct Local;

impl Plugin for Local {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Sink,
            description: "Stores artifacts as files in a local directory".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants: vec![Grant::Directory(DirectoryGrant {
                path: config.path,
                writable: true,
                create: true,
            })],
        })
    }
}

impl Sink for Local {
    fn put(config: String, meta: ArtifactMeta, data: InputStream) -> Result<Stored, PluginError> {
        let config = Config::parse(&config)?;
        let owner = artifact::owner_tag(&meta);
        if let Some((pipeline, tag)) = &owner {
            remove_stale_partials(config.dir(), &meta.name, pipeline, tag);
        }
        put(
            config.dir(),
            &meta.name,
            owner.as_ref().map(|(_, t)| t.as_str()),
            InputReader::new(data),
        )
    }

    fn list(config: String, prefix: String) -> Result<Vec<Stored>, PluginError> {
        let config = Config::parse(&config)?;
        list(config.dir(), &prefix)
    }

    fn get(config: String, artifact: Stored, out: OutputStream) -> Result<u64, PluginError> {
        let config = Config::parse(&config)?;
        let path = config.file(&artifact.name)?;
        get(&path, OutputWriter::new(out))
    }

    fn delete(config: String, artifact: Stored) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        let path = config.file(&artifact.name)?;
        fs::remove_file(&path).map_err(|err| io_error(&path, "deleting", &err))
    }
}

pipeline_plugin_sdk::export_sink!(Local);

/// `NotFound` and `PermissionDenied` keep their kind; the message names the path.
fn io_error(path: &Path, doing: &str, err: &io::Error) -> PluginError {
    match err.kind() {
        io::ErrorKind::NotFound => {
            PluginError::NotFound(format!("{} does not exist", path.display()))
        }
        _ => PluginError::from_io(format!("{doing} {}", path.display()), err),
    }
}

/// The artifact name of a partial file `.<artifact>.partial-<tag>-<16 hex>` written by the
/// pipeline whose hash is `tag`; `None` for any other file.
fn partial_of<'a>(file: &'a str, tag: &str) -> Option<&'a str> {
    let (artifact, rest) = file.strip_prefix('.')?.rsplit_once(".partial-")?;
    let random = rest.strip_prefix(tag)?.strip_prefix('-')?;
    (!artifact.is_empty() && random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(artifact)
}

/// Removes the partial files an earlier, killed run of this pipeline left in `dir`, logging
/// each. Partials of the artifact being written now (and of its manifest) are this run's.
/// Failures are logged, not fatal: a stale file must not stop a backup.
fn remove_stale_partials(dir: &Path, name: &str, pipeline: &str, tag: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file) = entry.file_name().into_string() else {
            continue;
        };
        let Some(artifact) = partial_of(&file, tag) else {
            continue;
        };
        if name.starts_with(artifact) || artifact.starts_with(name) {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let size = entry.metadata().map_or(0, |m| m.len());
        match fs::remove_file(&path) {
            Ok(()) => pipeline_plugin_sdk::log::info(format_args!(
                "removed {} ({size} bytes): a partial file of {artifact} that an earlier run of \
                 pipeline `{pipeline}` left when it was stopped before finishing",
                path.display()
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => pipeline_plugin_sdk::log::warn(format_args!(
                "could not remove {}, a partial file an earlier run of pipeline `{pipeline}` \
                 left: {err}",
                path.display()
            )),
        }
    }
}

/// Store `data` as `dir/name`; see the module documentation.
fn put(
    dir: &Path,
    name: &str,
    owner: Option<&str>,
    data: impl BufRead,
) -> Result<Stored, PluginError> {
    check_name(name)?;
    let target = dir.join(name);
    let (partial, file) = create_partial(dir, name, owner)?;
    let written = match write_all(&partial, file, data) {
        Ok(written) => written,
        Err(err) => {
            remove_partial(&partial);
            return Err(err);
        }
    };
    if let Err(err) = publish(&partial, &target) {
        remove_partial(&partial);
        return Err(err);
    }
    sync_dir(dir);
    let created_ms = fs::metadata(&target)
        .ok()
        .and_then(|m| m.modified().ok())
        .map_or_else(|| millis(SystemTime::now()), millis);
    Ok(Stored {
        name: name.to_owned(),
        size: written,
        created_ms,
        locked_until_ms: None,
    })
}

/// Create `.<name>.partial-<owner>-<random hex>` (without an owner:
/// `.<name>.partial-<random hex>`) that did not exist before.
fn create_partial(
    dir: &Path,
    name: &str,
    owner: Option<&str>,
) -> Result<(PathBuf, File), PluginError> {
    let mut last_error = None;
    for _ in 0..8 {
        let owner = owner.map(|o| format!("{o}-")).unwrap_or_default();
        let partial = dir.join(format!(".{name}.partial-{owner}{:016x}", random_u64()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
        {
            Ok(file) => return Ok((partial, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(err) => {
                return Err(match err.kind() {
                    io::ErrorKind::NotFound => PluginError::NotFound(format!(
                        "directory {} does not exist (or is not granted to this stage)",
                        dir.display()
                    )),
                    _ => PluginError::from_io(format!("creating {}", partial.display()), &err),
                });
            }
        }
    }
    let err = last_error.unwrap_or_else(|| io::Error::other("no free temporary name"));
    Err(PluginError::from_io(
        format!("creating a temporary file in {}", dir.display()),
        &err,
    ))
}

/// Copy `data` into `file` and sync it. A failed input is an `Io` error saying so; the
/// caller removes the partial file either way.
fn write_all(partial: &Path, file: File, mut data: impl BufRead) -> Result<u64, PluginError> {
    let mut written: u64 = 0;
    loop {
        let chunk = match data.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(PluginError::Io(format!(
                    "the artifact's data failed after {written} bytes ({err}); removed {}",
                    partial.display()
                )));
            }
        };
        disk::write_all_at(&file, chunk, written).map_err(|err| {
            let err = write_error::explain(err);
            PluginError::from_io(format!("writing {}", partial.display()), &err)
        })?;
        let n = chunk.len();
        data.consume(n);
        written += n as u64;
    }
    file.sync_all().map_err(|err| {
        let err = write_error::explain(err);
        PluginError::from_io(format!("syncing {}", partial.display()), &err)
    })?;
    disk::done(&file);
    Ok(written)
}

/// Give the complete file its final name, never replacing an existing one.
fn publish(partial: &Path, target: &Path) -> Result<(), PluginError> {
    let exists = || {
        PluginError::Other(format!(
            "{} already exists; refusing to overwrite it (it would destroy an earlier backup)",
            target.display()
        ))
    };
    // A hard link fails if the target exists, atomically; then drop the partial name.
    match fs::hard_link(partial, target) {
        Ok(()) => {
            remove_partial(partial);
            return Ok(());
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
        // File systems without hard links: check, then rename.
        Err(_) => {}
    }
    match fs::symlink_metadata(target) {
        Ok(_) => Err(exists()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::rename(partial, target).map_err(|err| {
                PluginError::from_io(
                    format!("renaming {} to {}", partial.display(), target.display()),
                    &err,
                )
            })
        }
        Err(err) => Err(PluginError::from_io(
            format!("checking {}", target.display()),
            &err,
        )),
    }
}

fn remove_partial(partial: &Path) {
    if let Err(err) = fs::remove_file(partial)
        && err.kind() != io::ErrorKind::NotFound
    {
        pipeline_plugin_sdk::log::warn(format_args!(
            "could not remove {}: {err}",
            partial.display()
        ));
    }
}

/// Make the new directory entry durable, where the platform allows it.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Complete artifacts in `dir` whose name starts with `prefix`; none if `dir` does not
/// exist yet (no run has created it). A prefix starting with `.` (which no artifact name
/// does) lists the partial files of unfinished writes instead, so that `pipeline list` can
/// show what a killed run left.
fn list(dir: &Path, prefix: &str) -> Result<Vec<Stored>, PluginError> {
    let partials = prefix.starts_with('.');
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(PluginError::from_io(
                format!("listing {}", dir.display()),
                &err,
            ));
        }
    };
    let mut stored = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|err| PluginError::from_io(format!("listing {}", dir.display()), &err))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let wanted = if partials {
            name.contains(".partial-")
        } else {
            !name.starts_with('.')
        };
        if !wanted || !name.starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Deleted since the directory was read.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(PluginError::from_io(
                    format!("reading {}", path.display()),
                    &err,
                ));
            }
        };
        if !metadata.is_file() {
            continue;
        }
        stored.push(Stored {
            name,
            size: metadata.len(),
            created_ms: metadata.modified().map_or(0, millis),
            locked_until_ms: None,
        });
    }
    Ok(stored)
}

/// Send the file at `path` to `out`; returns the number of bytes sent.
fn get(path: &Path, mut out: impl Write) -> Result<u64, PluginError> {
    let mut file = File::open(path).map_err(|err| io_error(path, "opening", &err))?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(PluginError::from_io(
                    format!("reading {}", path.display()),
                    &err,
                ));
            }
        };
        out.write_all(&buf[..n]).map_err(|err| {
            PluginError::Io(format!(
                "sending {} after {sent} bytes: {err}",
                path.display()
            ))
        })?;
        sent += n as u64;
    }
    out.flush()
        .map_err(|err| PluginError::Io(format!("sending {}: {err}", path.display())))?;
    Ok(sent)
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 64 random bits without a dependency: std's `RandomState` is seeded from the
/// platform's random source (`wasi:random` here) and differs per instance; the time is
/// mixed in as well.
fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Local::describe().config_keys,
            &serde_json::json!({"path": "/backups"}),
        );
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "pipeline-local-{tag}-{}-{:x}",
                std::process::id(),
                random_u64()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Input that fails after its bytes, like a stream whose upstream stage failed.
    struct Failing<'a>(&'a [u8]);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("input stream failed: upstream died"));
            }
            let n = self.0.len().min(buf.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn put_list_get_delete() {
        let tmp = TempDir::new("cycle");
        let data = vec![42u8; 1_000_000];
        let stored = put(&tmp.0, "b-1.sql.gz", None, data.as_slice()).expect("put");
        assert_eq!(stored.name, "b-1.sql.gz");
        assert_eq!(stored.size, 1_000_000);
        assert!(stored.created_ms > 1_600_000_000_000);
        put(&tmp.0, "b-2.sql.gz", None, &b"x"[..]).expect("put");
        put(&tmp.0, "other", None, &b""[..]).expect("put empty");
        fs::create_dir(tmp.0.join("b-dir")).expect("mkdir");
        fs::write(tmp.0.join(".b-hidden"), "x").expect("write");
        assert_eq!(
            tmp.names(),
            [".b-hidden", "b-1.sql.gz", "b-2.sql.gz", "b-dir", "other"]
        );

        let mut listed = list(&tmp.0, "b-").expect("list");
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let summary: Vec<_> = listed.iter().map(|s| (s.name.as_str(), s.size)).collect();
        assert_eq!(summary, [("b-1.sql.gz", 1_000_000), ("b-2.sql.gz", 1)]);
        assert_eq!(list(&tmp.0, "").expect("list").len(), 3);

        let mut out = Vec::new();
        assert_eq!(
            get(&tmp.0.join("b-1.sql.gz"), &mut out).expect("get"),
            1_000_000
        );
        assert_eq!(out, data);

        let config = Config {
            path: tmp.0.display().to_string(),
        };
        let file = config.file("b-1.sql.gz").expect("name");
        fs::remove_file(&file).expect("delete");
        assert!(matches!(
            get(&file, Vec::new()),
            Err(PluginError::NotFound(m)) if m.contains("b-1.sql.gz")
        ));
    }

    #[test]
    fn never_overwrites() {
        let tmp = TempDir::new("overwrite");
        put(&tmp.0, "a", None, &b"first"[..]).expect("put");
        let err = put(&tmp.0, "a", None, &b"second"[..]).expect_err("must refuse");
        assert!(err.message().contains("already exists"), "{err}");
        assert!(
            err.message()
                .contains(&tmp.0.join("a").display().to_string())
        );
        assert_eq!(fs::read(tmp.0.join("a")).expect("read"), b"first");
        assert_eq!(tmp.names(), ["a"], "no partial file left behind");
    }

    #[test]
    fn failed_input_leaves_nothing() {
        let tmp = TempDir::new("failed");
        let err = put(
            &tmp.0,
            "a",
            None,
            io::BufReader::new(Failing(b"some bytes")),
        )
        .expect_err("fail");
        assert!(
            matches!(&err, PluginError::Io(m) if m.contains("upstream died") && m.contains(".a.partial-")),
            "{err}"
        );
        assert!(tmp.names().is_empty(), "{:?}", tmp.names());
    }

    #[test]
    fn missing_directory() {
        let tmp = TempDir::new("missing");
        let gone = tmp.0.join("gone");
        assert!(
            matches!(put(&gone, "a", None, &b"x"[..]), Err(PluginError::NotFound(m)) if m.contains("gone"))
        );
        // Nothing stored yet: an empty list (`pipeline list` before the first run).
        assert_eq!(list(&gone, "").expect("empty").len(), 0);
    }

    #[test]
    fn plan_grants_the_directory() {
        let plan = <Local as Plugin>::plan(r#"{"path": "/var/backups/db"}"#.into()).expect("plan");
        assert!(plan.extension.is_none());
        match &plan.grants[..] {
            [Grant::Directory(g)] => {
                assert_eq!(g.path, "/var/backups/db");
                assert!(g.writable && g.create);
            }
            other => panic!("unexpected grants {other:?}"),
        }
        assert!(matches!(
            <Local as Plugin>::plan(r#"{"path": "/x", "mode": 1}"#.into()),
            Err(PluginError::Config(m)) if m == "unknown key `mode` (this plugin accepts: path)"
        ));
        assert!(matches!(
            <Local as Plugin>::plan("{}".into()),
            Err(PluginError::Config(m)) if m == "missing required key `path`"
        ));
    }

    #[test]
    fn a_killed_runs_partials_go_and_other_pipelines_stay() {
        let tmp = TempDir::new("stale");
        let tag = artifact::owner_hash("nightly");
        let other = artifact::owner_hash("weekly");
        assert_ne!(tag, other);
        let stale = format!(".b-1.sql.zst.partial-{tag}-0123456789abcdef");
        let theirs = format!(".b-1.sql.zst.partial-{other}-0123456789abcdef");
        let legacy = ".b-1.sql.zst.partial-0123456789abcdef";
        let current = format!(".b-2.sql.zst.partial-{tag}-0123456789abcdef");
        for f in [&stale, &theirs, legacy, &current] {
            fs::write(tmp.0.join(f), "half").expect("write");
        }
        let mut listed: Vec<String> = list(&tmp.0, ".b-")
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        listed.sort();
        let mut all = vec![
            stale.clone(),
            theirs.clone(),
            legacy.to_string(),
            current.clone(),
        ];
        all.sort();
        assert_eq!(listed, all, "a `.` prefix lists partial files");
        assert!(
            list(&tmp.0, "b-").expect("list").is_empty(),
            "never as artifacts"
        );
        remove_stale_partials(&tmp.0, "b-2.sql.zst.sha256", "nightly", &tag);
        let mut expected = vec![current.clone(), theirs.clone(), legacy.to_string()];
        expected.sort();
        assert_eq!(tmp.names(), expected);

        // A put names its partial with the owner, so the next run can recognise it.
        put(&tmp.0, "b-3", Some(&tag), io::BufReader::new(Failing(b"x"))).expect_err("fail");
        let (partial, _file) = create_partial(&tmp.0, "b-4", Some(&tag)).expect("partial");
        let file = partial
            .file_name()
            .and_then(|f| f.to_str())
            .expect("a UTF-8 file name")
            .to_string();
        assert_eq!(partial_of(&file, &tag), Some("b-4"));
        assert_eq!(partial_of(&file, &other), None);
        assert_eq!(partial_of(legacy, &tag), None);
    }
}
