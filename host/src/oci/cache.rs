//! The local store of pulled plugins, under the cache directory's `oci/`:
//!
//! - `blobs/sha256/<hex>`: manifests and layers by their SHA-256, written to a temporary
//!   file in the same directory and renamed only once the digest matched (a killed pull
//!   leaves a `.partial-*` file that nothing reads), and hashed again whenever read;
//! - `tags/<registry>/<repository>/@<tag>`: the manifest digest a tag resolved to when it
//!   was last pulled (`@` appears in no repository component, so no tag collides with one).
//!
//! Like the compiled-component cache, it is used only if its directories and files are
//! this user's and nobody else can write them (see [`crate::engine::untrusted`]); files are
//! opened without following symbolic links, temporary files are created new (never
//! through an existing name or link) under random names, synced, renamed, and the
//! directory synced after.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::reference::Reference;

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache under [`crate::engine::cache_dir`].
    pub fn open() -> Result<Cache> {
        let dir = crate::engine::cache_dir().context(
            "no cache directory for plugins from registries: set PIPELINE_CACHE_DIR (or HOME)",
        )?;
        Ok(Cache {
            root: dir.join("oci"),
        })
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn tag_file(&self, r: &Reference, tag: &str) -> PathBuf {
        self.root
            .join("tags")
            .join(&r.registry)
            .join(&r.repository)
            .join(format!("@{tag}"))
    }

    /// Refuses the cache if a directory from its root down to `dir` (those that exist) is
    /// not a directory of this user's that nobody else can write.
    fn check_dirs(&self, dir: &Path) -> Result<()> {
        let mut cur = self.root.clone();
        let below = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let mut chain = vec![cur.clone()];
        for c in below.components() {
            cur.push(c);
            chain.push(cur.clone());
        }
        for d in chain {
            match std::fs::symlink_metadata(&d) {
                Ok(m) => {
                    if let Some(why) = crate::engine::untrusted(&m, "plugin cache directory", true)
                    {
                        bail!("{}: {why}; the plugin cache is not used", d.display());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
            }
        }
        Ok(())
    }

    /// The content of the cache file `path` (its directories checked; not through a
    /// symbolic link; the opened file itself checked), or `None` if there is none. The
    /// outer error: the cache cannot be trusted; the inner one: this file cannot be read
    /// (a link, no permission, an I/O error).
    fn read_file(&self, path: &Path) -> Result<Result<Option<Vec<u8>>>> {
        let dir = path.parent().context("cache file without a directory")?;
        self.check_dirs(dir)?;
        let mut file = match std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
            Err(e) => {
                return Ok(Err(e).with_context(|| format!("cannot open {}", path.display())));
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Ok(Err(e).with_context(|| format!("cannot read {}", path.display()))),
        };
        if let Some(why) = crate::engine::untrusted(&meta, "plugin cache file", false) {
            bail!("{}: {why}; the plugin cache is not used", path.display());
        }
        let mut bytes = Vec::new();
        Ok(file
            .read_to_end(&mut bytes)
            .map(|_| Some(bytes))
            .with_context(|| format!("cannot read {}", path.display())))
    }

    /// A blob's bytes if cached and intact. A blob whose content no longer matches its name
    /// is removed (and reported as missing), so the next pull replaces it.
    pub fn read_blob(&self, hex: &str) -> Result<Option<Vec<u8>>> {
        let path = self.blobs().join(hex);
        let Some(bytes) = self.read_file(&path)?? else {
            return Ok(None);
        };
        if hex::encode(Sha256::digest(&bytes)) != hex {
            crate::logging::warn(
                None,
                &format!(
                    "cached blob {} does not match its digest: removing it",
                    path.display()
                ),
            );
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// A new blob, hashed as it is written.
    pub fn writer(&self) -> Result<BlobWriter> {
        let dir = self.blobs();
        create_dir(&dir)?;
        self.check_dirs(&dir)?;
        let (file, tmp) = create_temp(&dir)?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dir,
            hash: Sha256::new(),
            len: 0,
        })
    }

    /// The manifest digest `tag` resolved to at its last pull. A tag file that cannot be
    /// read or does not hold `sha256:` and 64 lowercase hex digits (empty, cut short by a
    /// crash) counts as not cached, with a warning: the tag is pulled again.
    pub fn tag(&self, r: &Reference, tag: &str) -> Result<Option<String>> {
        let path = self.tag_file(r, tag);
        let dir = path.parent().context("tag file without a directory")?;
        self.check_dirs(dir)?;
        let unusable = |why: String| {
            crate::logging::warn(
                None,
                &format!(
                    "ignoring the plugin cache's record of where {r} pointed ({}): {why}; the tag is resolved again",
                    path.display()
                ),
            );
            Ok(None)
        };
        // Not this user's, or writable by others: an error (`?`); unreadable: not cached.
        let bytes = match self.read_file(&path)? {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return unusable(format!("{e:#}")),
        };
        let text = String::from_utf8_lossy(&bytes);
        let hex = text.trim().strip_prefix("sha256:").unwrap_or("");
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Some(hex.to_string()))
        } else {
            unusable("it does not hold a sha256 digest (64 lowercase hex digits)".into())
        }
    }

    /// Records what `tag` resolved to (atomically and durably: a new temporary file,
    /// synced, renamed, the directory synced).
    pub fn set_tag(&self, r: &Reference, tag: &str, hex: &str) -> Result<()> {
        let path = self.tag_file(r, tag);
        let dir = path.parent().context("tag file without a directory")?;
        create_dir(dir)?;
        self.check_dirs(dir)?;
        let (mut file, tmp) = create_temp(dir)?;
        let done = file
            .write_all(format!("sha256:{hex}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(dir));
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done.with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A new temporary file in `dir` under a random name, created (never opened through an
/// existing file or link), readable and writable by this user only.
fn create_temp(dir: &Path) -> Result<(std::fs::File, PathBuf)> {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..8 {
        // RandomState's keys are random per process: a name nobody can guess ahead.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(N.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let tmp = dir.join(format!(
            ".partial-{}-{:016x}",
            std::process::id(),
            h.finish()
        ));
        match std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", tmp.display())),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// A blob being written: it becomes `blobs/sha256/<hex>` only by [`BlobWriter::finish`]
/// with the digest it was expected to have; dropped unfinished, its file is removed.
pub struct BlobWriter {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    dir: PathBuf,
    hash: Sha256,
    len: u64,
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hash.update(chunk);
        self.len += chunk.len() as u64;
        match &mut self.file {
            Some(f) => f
                .write_all(chunk)
                .with_context(|| format!("cannot write {}", self.tmp.display())),
            None => bail!("blob already finished"),
        }
    }

    pub fn written(&self) -> u64 {
        self.len
    }

    /// The SHA-256 of what was written, hex.
    pub fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }

    /// Keeps the blob if its SHA-256 is `expected`; otherwise removes it and says what it was.
    pub fn finish(mut self, expected: &str) -> Result<(), Mismatch> {
        let got = self.digest();
        if got != expected {
            return Err(Mismatch::Digest(got));
        }
        let file = self.file.take();
        let done = file
            .map(|f| f.sync_all())
            .transpose()
            .and_then(|_| std::fs::rename(&self.tmp, self.dir.join(&got)))
            .and_then(|()| sync_dir(&self.dir));
        done.map_err(|e| Mismatch::Io(format!("cannot store blob {got}: {e}")))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unfinished, or finished and renamed (then this finds nothing).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Why [`BlobWriter::finish`] did not keep a blob.
#[derive(Debug)]
pub enum Mismatch {
    /// Its SHA-256 was this, not the one expected.
    Digest(String),
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache in a new temporary directory (kept while the first is alive).
    fn temp_cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: dir.path().join("oci"),
        };
        (dir, cache)
    }

    /// The names in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_blob_is_kept_only_under_its_digest_and_checked_when_read() {
        let (_dir, cache) = temp_cache();
        let good = hex::encode(Sha256::digest(b"hello"));
        let mut w = cache.writer().unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        w.finish(&good).unwrap();
        assert_eq!(
            cache.read_blob(&good).unwrap().as_deref(),
            Some(&b"hello"[..])
        );

        // A wrong digest keeps nothing, not even the partial file.
        let mut w = cache.writer().unwrap();
        w.write(b"evil").unwrap();
        let other = "0".repeat(64);
        assert!(matches!(w.finish(&other), Err(Mismatch::Digest(d)) if d != other));
        assert_eq!(cache.read_blob(&other).unwrap(), None);
        assert_eq!(names(&cache.blobs()), vec![good.clone()]);

        // A blob altered on disk is not served.
        std::fs::write(cache.blobs().join(&good), b"hellO").unwrap();
        assert_eq!(cache.read_blob(&good).unwrap(), None);
        assert!(!cache.blobs().join(&good).exists());
    }

    #[test]
    fn tags_are_recorded_per_registry_and_repository() {
        let (_dir, cache) = temp_cache();
        let r = Reference::parse("oci://localhost:5000/acme/sink:1.0").unwrap();
        let nested = Reference::parse("oci://localhost:5000/acme/sink/1.0:1.0").unwrap();
        assert_eq!(cache.tag(&r, "1.0").unwrap(), None);
        let hex = "a".repeat(64);
        cache.set_tag(&r, "1.0", &hex).unwrap();
        assert_eq!(cache.tag(&r, "1.0").unwrap(), Some(hex.clone()));
        assert_eq!(cache.tag(&nested, "1.0").unwrap(), None);
        cache.set_tag(&nested, "1.0", &"b".repeat(64)).unwrap();
        assert_eq!(cache.tag(&r, "1.0").unwrap(), Some(hex));
    }

    #[test]
    fn a_broken_tag_record_counts_as_not_cached() {
        let (dir, cache) = temp_cache();
        let r = Reference::parse("oci://localhost:5000/acme/sink:1.0").unwrap();
        cache.set_tag(&r, "1.0", &"a".repeat(64)).unwrap();
        let file = cache.tag_file(&r, "1.0");
        for broken in [
            String::new(),
            "sha256:".into(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            "garbage".into(),
        ] {
            std::fs::write(&file, &broken).unwrap();
            assert_eq!(cache.tag(&r, "1.0").unwrap(), None, "{broken:?}");
        }
        // A symbolic link is not followed: not cached either.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, format!("sha256:{}\n", "c".repeat(64))).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert_eq!(cache.tag(&r, "1.0").unwrap(), None);
        // Recording it again replaces the link, not its target.
        cache.set_tag(&r, "1.0", &"b".repeat(64)).unwrap();
        assert_eq!(cache.tag(&r, "1.0").unwrap(), Some("b".repeat(64)));
        assert!(
            std::fs::read_to_string(&elsewhere)
                .unwrap()
                .contains(&"c".repeat(64))
        );
        // No temporary file is left beside it.
        assert_eq!(names(file.parent().unwrap()), vec!["@1.0".to_string()]);
    }

    #[test]
    fn a_cache_others_can_write_or_a_linked_blob_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, cache) = temp_cache();
        let hex = hex::encode(Sha256::digest(b"hello"));
        let mut w = cache.writer().unwrap();
        w.write(b"hello").unwrap();
        w.finish(&hex).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache.blobs().join(&hex)), 0o600);

        // A directory its group can write: refused, saying which and how to fix it.
        let blobs = cache.root.join("blobs");
        std::fs::set_permissions(&blobs, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = format!("{:#}", cache.read_blob(&hex).unwrap_err());
        assert!(
            err.contains(&blobs.display().to_string()) && err.contains("chmod go-w"),
            "{err}"
        );
        assert!(cache.writer().is_err());
        std::fs::set_permissions(&blobs, std::fs::Permissions::from_mode(0o700)).unwrap();

        // A blob that is a symbolic link (to a file with the right content) is not read.
        let target = dir.path().join("planted");
        std::fs::write(&target, b"hello").unwrap();
        let linked = hex::encode(Sha256::digest(b"hello"));
        std::fs::remove_file(cache.blobs().join(&linked)).unwrap();
        std::os::unix::fs::symlink(&target, cache.blobs().join(&linked)).unwrap();
        assert!(cache.read_blob(&linked).is_err());

        // A cache file others can write is refused too.
        std::fs::remove_file(cache.blobs().join(&linked)).unwrap();
        let mut w = cache.writer().unwrap();
        w.write(b"hello").unwrap();
        w.finish(&hex).unwrap();
        let path = cache.blobs().join(&hex);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = format!("{:#}", cache.read_blob(&hex).unwrap_err());
        assert!(err.contains("every user"), "{err}");
    }
}
