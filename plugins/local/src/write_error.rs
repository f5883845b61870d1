//! Why a write really failed.
//!
//! On `wasm32-wasip2`, `std::fs::File::write` goes through wasi-libc, which writes with a
//! `wasi:io` output stream and, when the write fails, drops the stream's error resource and
//! reports `EIO` ("I/O error (os error 29)"): a full disk, a quota or a read-only remount
//! all read the same. The code is not lost on the host's side, so the failed bytes are
//! written once more with `wasi:filesystem`'s `descriptor.write`, which returns the
//! file-system error code itself (no space left on device, quota exceeded, …). The file is
//! a partial one that the caller removes after any failure, so the extra try is harmless.

use std::io;
use std::path::Path;

/// `err` from writing `chunk` to the end of `file` (a path under a preopened directory),
/// replaced by the real error when it is the generic `EIO` that hides it.
pub fn explain(file: &Path, chunk: &[u8], err: io::Error) -> io::Error {
    // wasi's errno numbering: EIO is 29.
    if err.raw_os_error() != Some(29) || chunk.is_empty() {
        return err;
    }
    imp::retry(file, chunk).unwrap_or(err)
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
mod imp {
    use std::io;
    use std::path::Path;

    use wasip2::filesystem::preopens::get_directories;
    use wasip2::filesystem::types::{DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

    /// The error `descriptor.write` gives for `chunk` at the end of `file`, if it fails.
    pub fn retry(file: &Path, chunk: &[u8]) -> Option<io::Error> {
        let path = file.to_str()?;
        let (dir, rel) = get_directories()
            .into_iter()
            .filter_map(|(d, root)| {
                let rel = path.strip_prefix(root.trim_end_matches('/'))?;
                let rel = rel.strip_prefix('/')?.to_string();
                Some((d, rel, root.len()))
            })
            .max_by_key(|(_, _, len)| *len)
            .map(|(d, rel, _)| (d, rel))?;
        let fd = dir
            .open_at(
                PathFlags::empty(),
                &rel,
                OpenFlags::empty(),
                DescriptorFlags::WRITE,
            )
            .ok()?;
        let mut end = fd.stat().ok()?.size;
        let mut rest = chunk;
        // A nearly full file system takes part of a write before it refuses the rest.
        while !rest.is_empty() {
            match fd.write(rest, end) {
                Ok(0) => return None,
                Ok(n) => {
                    let n = usize::try_from(n).unwrap_or(rest.len()).min(rest.len());
                    rest = &rest[n..];
                    end += n as u64;
                }
                Err(code) => return Some(error(code)),
            }
        }
        None
    }

    fn error(code: ErrorCode) -> io::Error {
        let (kind, text) = match code {
            ErrorCode::InsufficientSpace => (io::ErrorKind::StorageFull, "no space left on device"),
            ErrorCode::Quota => (io::ErrorKind::QuotaExceeded, "disk quota exceeded"),
            ErrorCode::FileTooLarge => (io::ErrorKind::FileTooLarge, "file too large"),
            ErrorCode::ReadOnly => (io::ErrorKind::ReadOnlyFilesystem, "read-only file system"),
            ErrorCode::Access | ErrorCode::NotPermitted => {
                (io::ErrorKind::PermissionDenied, "permission denied")
            }
            other => return io::Error::other(format!("{} ({})", other.name(), other.message())),
        };
        io::Error::new(kind, text)
    }
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
mod imp {
    use std::io;
    use std::path::Path;

    /// Outside wasm the error comes straight from the OS: nothing was hidden.
    pub fn retry(_file: &Path, _chunk: &[u8]) -> Option<io::Error> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_are_kept() {
        let err = explain(Path::new("/x"), b"a", io::Error::other("boom"));
        assert_eq!(err.to_string(), "boom");
        let err = explain(
            Path::new("/x"),
            b"a",
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
