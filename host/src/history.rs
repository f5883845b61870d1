//! Run history: one record per `pipeline run`, kept in a small per-pipeline file in the
//! private state directory ([`crate::lock::state_dir`]), read back by `pipeline status`.
//!
//! The file is `<key>.history.jsonl` (the key of [`crate::lock::key`]), one JSON record a
//! line, oldest first, the last [`KEEP`] kept. It is rewritten whole through a temporary file
//! in the same directory and a rename, so a reader never sees half a record and a crash
//! leaves the previous history. Every text in it went through the log's redactor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::lock;

/// How many records a pipeline's history keeps.
pub const KEEP: usize = 100;

/// The file name suffix of a history file.
const SUFFIX: &str = ".history.jsonl";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// Stopped by a signal.
    Stopped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Stopped => "stopped",
        }
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub pipeline: String,
    /// The pipeline file (as canonical as it could be made).
    pub file: PathBuf,
    /// RFC 3339, UTC.
    pub started: jiff::Timestamp,
    pub ended: jiff::Timestamp,
    pub outcome: Outcome,
    pub exit_code: u8,
    /// `backup` or `snapshot`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The sinks that stored the artifact.
    #[serde(default)]
    pub sinks: Vec<String>,
    #[serde(default)]
    pub pruned: usize,
    /// Snapshot pipelines: how many snapshot files the run recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<usize>,
    pub seconds: f64,
    /// Why it failed, redacted and shortened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The longest error summary kept in a record, in characters.
const ERROR_CHARS: usize = 1000;

/// An error's summary for a record: through the redactor, then shortened.
pub fn error_summary(e: &anyhow::Error) -> String {
    let text = crate::logging::redact(&format!("{e:#}"));
    match text.char_indices().nth(ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// The history file of the pipeline with this lock key.
pub fn path(key: &str) -> Result<PathBuf> {
    Ok(lock::state_dir()?.join(format!("{key}{SUFFIX}")))
}

/// What reading a history file found: its records, and the lines it could not read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// `line N: why`, for each line that is not a record.
    pub bad_lines: Vec<String>,
}

/// Parses a history file's text; lines that are not records are reported, not fatal.
pub fn parse(text: &str) -> Loaded {
    let mut out = Loaded::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.records.push(r),
            Err(e) => out.bad_lines.push(format!("line {}: {e}", i + 1)),
        }
    }
    out
}

/// Opens a file of the state directory for reading, without following a link, and refuses
/// one another user owns or could write: its content would be theirs, not ours. `None` when
/// it does not exist.
fn open_private(path: &Path) -> Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "the history file {} is a symbolic link; refusing to follow it: remove it",
            path.display()
        ),
        Err(e) => return Err(anyhow!(e).context(format!("cannot open {}", path.display()))),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_file() {
        bail!(
            "the history file {} is not a regular file; remove it",
            path.display()
        );
    }
    if meta.uid() != uid {
        bail!(
            "the history file {} belongs to uid {}, not to this user (uid {uid}): refusing to \
             trust or replace it; remove it or `chown {uid} {}`",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "the history file {} is writable by group or others (mode {:o}): refusing to trust \
             or replace it; check who changed it, then `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    Ok(Some(file))
}

/// Reads one history file (an empty history when there is none).
pub fn read_file(path: &Path) -> Result<Loaded> {
    let Some(mut file) = open_private(path)? else {
        return Ok(Loaded::default());
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read the history file {}", path.display()))?;
    Ok(parse(&text))
}

/// Writes `bytes` to `path` atomically: a new temporary file beside it (same directory, so
/// the rename cannot cross file systems), synced, renamed over `path`, and the directory
/// synced so the rename survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    };
    // A temporary file left by a crashed run of the same pid is stale: start afresh.
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Serializes every record, one a line, keeping the last `keep`.
pub fn render(records: &[Record], keep: usize) -> String {
    let start = records.len().saturating_sub(keep);
    let mut out = String::new();
    for r in &records[start..] {
        // A record is plain data: serializing it cannot fail.
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Appends `record` to the history of the pipeline with this key and returns the history as
/// written. Lines of the old file that are not records are dropped with a warning; an old
/// file another user could have written is left alone (an error).
pub fn append(key: &str, record: Record) -> Result<Vec<Record>> {
    let dir = lock::state_dir()?;
    lock::private_dir(&dir)?;
    let path = dir.join(format!("{key}{SUFFIX}"));
    // Two runs of the same pipeline end one after the other (the run lock), but a run that
    // was refused the lock may end while another finishes: serialize the read-modify-write.
    let guard = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(dir.join(format!("{key}.history.lock")))
        .with_context(|| format!("cannot open the history lock of {}", path.display()))?;
    guard
        .lock()
        .with_context(|| format!("cannot lock the history {}", path.display()))?;
    let old = read_file(&path)?;
    if !old.bad_lines.is_empty() {
        crate::logging::warn(
            None,
            &format!(
                "the history file {} had {} unreadable line(s), dropped ({}); the other {} \
                 record(s) are kept",
                path.display(),
                old.bad_lines.len(),
                old.bad_lines.join("; "),
                old.records.len()
            ),
        );
    }
    let mut records = old.records;
    records.push(record);
    let start = records.len().saturating_sub(KEEP);
    records.drain(..start);
    write_atomically(&path, render(&records, KEEP).as_bytes(), 0o600)?;
    Ok(records)
}

/// Every history file in the state directory: its path and what it holds (or why it could
/// not be read), sorted by path.
pub fn read_all() -> Result<Vec<(PathBuf, Result<Loaded>)>> {
    let dir = lock::state_dir()?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(
                anyhow!(e).context(format!("cannot read the state directory {}", dir.display()))
            );
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let r = read_file(&p);
            (p, r)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(outcome: Outcome) -> Record {
        Record {
            pipeline: "nightly".into(),
            file: "/etc/pipelines/nightly.toml".into(),
            started: "2026-12-01T02:00:00Z".parse().unwrap(),
            ended: "2026-12-01T02:00:03.5Z".parse().unwrap(),
            outcome,
            exit_code: if outcome == Outcome::Ok { 0 } else { 1 },
            mode: "backup".into(),
            artifact: Some("backup-20261201T020000Z.sql.zst".into()),
            size: Some(1234),
            sha256: Some("ab".repeat(32)),
            sinks: vec!["local".into(), "s3".into()],
            pruned: 2,
            snapshots: None,
            seconds: 3.5,
            error: (outcome != Outcome::Ok).then(|| "stage `sink s3` failed: denied".into()),
        }
    }

    #[test]
    fn records_round_trip_and_only_the_last_are_kept() {
        let records: Vec<Record> = (0..5)
            .map(|i| {
                let mut r = sample(if i % 2 == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                });
                r.pruned = i;
                r
            })
            .collect();
        let text = render(&records, 3);
        assert_eq!(text.lines().count(), 3);
        let back = parse(&text);
        assert!(back.bad_lines.is_empty());
        assert_eq!(back.records, records[2..]);
        assert!(text.contains(r#""outcome":"failed""#), "{text}");
    }

    #[test]
    fn a_corrupt_line_is_reported_and_the_others_kept() {
        let good = render(&[sample(Outcome::Ok)], KEEP);
        let text = format!("{good}{{not json\n{good}");
        let r = parse(&text);
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.bad_lines.len(), 1);
        assert!(r.bad_lines[0].starts_with("line 2:"), "{:?}", r.bad_lines);
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        write_atomically(&p, b"one\n", 0o600).unwrap();
        write_atomically(&p, b"two\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.history.jsonl");
        std::fs::write(&p, render(&[sample(Outcome::Ok)], KEEP)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
    }
}
