//! How the sink puts bytes on the disk: positioned writes done on the stage's own thread,
//! and the kernel told to write the backup back while it is written, not all at the end.
//!
//! Writes: on `wasm32-wasip2`, `std::fs::File::write` goes through a `wasi:io` output stream,
//! which the host runs on a worker thread, two thread hand-offs per chunk. `pwrite` is
//! `wasi:filesystem`'s `descriptor.write`, which the host does on the calling thread.
//!
//! Write-back: a backup is synced before it counts. Left alone, the kernel keeps the whole
//! file dirty in memory until that sync (background write-back starts at 10% of RAM), so
//! the sync waits for every byte at once, and the backup pushes the database's own pages
//! out of the page cache. Every [`EVERY`] bytes the sink advises the kernel that the last
//! two whole windows are not needed (`POSIX_FADV_DONTNEED`): Linux starts writing their
//! dirty pages back without waiting and drops the pages already on disk. The final sync
//! finds at most the last few MiB to write, and [`done`] drops the rest from the cache. A
//! disk slower than the data keeps more of it cached until then.

use std::fs::File;
use std::io;

/// Bytes between two advices.
const EVERY: u64 = 8 << 20;

/// Writes all of `buf` at `offset` of `file`, then gives the advice when `offset` crosses
/// a multiple of [`EVERY`].
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    imp::write_all_at(file, buf, offset)?;
    let end = offset + buf.len() as u64;
    if end / EVERY != offset / EVERY {
        // Whole windows only (a page still being written is left alone): the one just
        // completed starts its write-back, the one before it, sent to the disk last time,
        // is dropped.
        let to = end / EVERY * EVERY;
        let from = to.saturating_sub(2 * EVERY);
        imp::not_needed(file, from, to - from);
    }
    Ok(())
}

/// After the final sync: nothing of `file` is needed in the cache any more.
pub fn done(file: &File) {
    imp::not_needed(file, 0, 0);
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let at = libc::off_t::try_from(offset).map_err(io::Error::other)?;
            // SAFETY: `buf` is valid for `buf.len()` bytes; `file` keeps the descriptor open.
            let n = unsafe { libc::pwrite(file.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at) };
            match usize::try_from(n) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n.min(buf.len())..];
                    offset += n as u64;
                }
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Advice only: a failure changes the timing, nothing else, so it is not reported.
    /// `len` 0 means to the end of the file.
    pub fn not_needed(file: &File, offset: u64, len: u64) {
        let offset = libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX);
        let len = libc::off_t::try_from(len).unwrap_or(0);
        // SAFETY: a plain call on a descriptor that `file` keeps open.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    }
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
mod imp {
    use std::fs::File;
    use std::io;

    // Outside wasm (the unit tests), plain positioned writes and no advice.
    pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }

    pub fn not_needed(_file: &File, _offset: u64, _len: u64) {}
}
