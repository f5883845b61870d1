//! Why a write or a sync failed, in the words a user looks for.
//!
//! A positioned write ([`crate::disk`]) or a sync returns the file system's own error,
//! which std prints as "No space left on device (os error 51)": 51 is wasi's number for
//! `ENOSPC`, not the host's (28), so the number misleads whoever looks it up. The errors a
//! backup directory meets are said plainly, without it; others are kept as they are.

use std::io;

/// `EIO` in the numbering of the errors `err` carries: wasi's inside the component, the
/// host's in the unit tests.
#[cfg(target_os = "wasi")]
const EIO: i32 = 29;
#[cfg(not(target_os = "wasi"))]
const EIO: i32 = 5;

/// `err` from writing or syncing a backup, said plainly when it is a common one.
pub fn explain(err: io::Error) -> io::Error {
    let text = match err.kind() {
        io::ErrorKind::StorageFull => "no space left on device",
        io::ErrorKind::QuotaExceeded => "disk quota exceeded",
        io::ErrorKind::FileTooLarge => "file too large",
        io::ErrorKind::ReadOnlyFilesystem => "read-only file system",
        io::ErrorKind::PermissionDenied => "permission denied",
        _ if err.raw_os_error() == Some(EIO) => {
            "input/output error (the disk or the file system reported a failure)"
        }
        _ => return err,
    };
    io::Error::new(err.kind(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_errors_are_said_plainly_and_others_kept() {
        let err = explain(io::Error::other("boom"));
        assert_eq!(err.to_string(), "boom");
        // ENOSPC as Linux (where the unit tests run) reports it: the text loses the errno.
        let err = explain(io::Error::from_raw_os_error(28));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.to_string(), "no space left on device");
        let err = explain(io::Error::from(io::ErrorKind::QuotaExceeded));
        assert_eq!(err.to_string(), "disk quota exceeded");
        let err = explain(io::Error::from_raw_os_error(EIO));
        assert!(err.to_string().starts_with("input/output error"), "{err}");
    }
}
