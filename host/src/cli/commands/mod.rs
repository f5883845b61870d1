//! One function per command. Each takes the [`super::Context`] (for the engine) and its
//! arguments, prints what it reports, and returns an error typed by [`crate::error`].

pub mod completions;
pub mod daemon;
pub mod list;
pub mod man;
pub mod plugins;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod validate;

/// Writes a generated document (a completion script, the man page) to stdout as is: it
/// holds no secret, so it skips the redactor's line buffering. A closed stdout
/// (`pipeline man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}
