//! The local store of pulled plugins, under the cache directory's `oci/`:
//!
//! - `blobs/sha256/<hex>`: manifests and layers by their SHA-256, written to a temporary
//!   file in the same directory and renamed only once the digest matched (a killed pull
//!   leaves a `.partial-*` file that nothing reads), and hashed again whenever read;
//! - `tags/<registry>/<repository>/@<tag>`: the manifest digest a tag resolved to when it
//!   was last pulled (`@` appears in no repository component, so no tag collides with one).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
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

    /// A blob's bytes if cached and intact. A blob whose content no longer matches its name
    /// is removed (and reported as missing), so the next pull replaces it.
    pub fn read_blob(&self, hex: &str) -> Result<Option<Vec<u8>>> {
        let path = self.blobs().join(hex);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
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
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.blobs();
        create_dir(&dir)?;
        let tmp = dir.join(format!(
            ".partial-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dir,
            hash: Sha256::new(),
            len: 0,
        })
    }

    /// The manifest digest `tag` resolved to at its last pull.
    pub fn tag(&self, r: &Reference, tag: &str) -> Result<Option<String>> {
        let path = self.tag_file(r, tag);
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let hex = t.trim().strip_prefix("sha256:").unwrap_or("");
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Some(hex.to_string()))
                } else {
                    bail!("{} does not hold a sha256 digest", path.display())
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Records what `tag` resolved to (atomically: a temporary file renamed).
    pub fn set_tag(&self, r: &Reference, tag: &str, hex: &str) -> Result<()> {
        let path = self.tag_file(r, tag);
        let dir = path.parent().context("tag file without a directory")?;
        create_dir(dir)?;
        let tmp = dir.join(format!(".partial-{}", std::process::id()));
        std::fs::write(&tmp, format!("sha256:{hex}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
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
            .and_then(|_| std::fs::rename(&self.tmp, self.dir.join(&got)));
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

    #[test]
    fn a_blob_is_kept_only_under_its_digest_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: dir.path().join("oci"),
        };
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
        let names: Vec<_> = std::fs::read_dir(cache.blobs())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![good.clone()]);

        // A blob altered on disk is not served.
        std::fs::write(cache.blobs().join(&good), b"hellO").unwrap();
        assert_eq!(cache.read_blob(&good).unwrap(), None);
        assert!(!cache.blobs().join(&good).exists());
    }

    #[test]
    fn tags_are_recorded_per_registry_and_repository() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: dir.path().join("oci"),
        };
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
}
