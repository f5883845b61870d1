//! Running a granted program the way sources and restores do: its stdout spliced into the
//! stage's output ([`stream_to`]), the stage's input spliced into its stdin ([`feed`]), or
//! its answer read as text ([`output`]), each checked by its exit status, with errors that
//! carry the tail of its stderr.

use std::io::{Read, Write};

use crate::io::{self, InputReader, OutputWriter};
use crate::process::{self, Command, ExitStatus};
use crate::{InputStream, OutputStream, PluginError, log};

pub use crate::process::{describe_exit, stderr_tail as tail};

/// `PROGRAM exited with code N: <stderr tail>`.
pub fn failure(program: &str, status: &ExitStatus) -> PluginError {
    PluginError::Other(format!(
        "{program} {}{}",
        describe_exit(status),
        tail(status)
    ))
}

/// Runs `command` with its stdout spliced into `out` (the bytes never enter the plugin's
/// memory) and returns how many bytes it wrote; an error unless it exited with 0. When
/// `out` fails (the next stage stopped), the program is stopped too.
pub fn stream_to(command: &Command, out: &OutputStream) -> Result<u64, PluginError> {
    let program = &command.program;
    let child = process::spawn(command)?;
    let Some(stdout) = child.take_stdout() else {
        let status = child.kill();
        return Err(PluginError::Other(format!(
            "{program}: the host gave no stdout stream{}",
            tail(&status)
        )));
    };
    let spliced = io::splice_all(out, &stdout);
    drop(stdout);
    let bytes = match spliced {
        Ok(bytes) => bytes,
        Err(err) => {
            let status = child.kill();
            log::debug(format_args!(
                "{program} stopped: {}",
                describe_exit(&status)
            ));
            return Err(err.context(format!("streaming {program}'s output")));
        }
    };
    let status = child.wait();
    match status.code {
        Some(0) => Ok(bytes),
        _ => Err(failure(program, &status)),
    }
}

/// Runs `command` without input and returns its stdout, trimmed; an error unless it exited
/// with 0. For short answers (a query's result).
pub fn output(command: &Command) -> Result<String, PluginError> {
    let program = &command.program;
    let child = process::spawn(command)?;
    let mut out = String::new();
    if let Some(stdout) = child.take_stdout() {
        InputReader::new(stdout)
            .read_to_string(&mut out)
            .map_err(|e| PluginError::from_io(format!("reading {program}'s output"), &e))?;
    }
    let status = child.wait();
    if status.code != Some(0) {
        return Err(failure(program, &status));
    }
    Ok(out.trim().to_owned())
}

/// How [`feed`] failed.
#[derive(Debug)]
pub enum FeedError {
    /// The program failed (an error in what it read, a lost connection): its exit.
    Program(PluginError),
    /// The input stream failed (a corrupt backup, a stopped run); the program was stopped
    /// before its stdin ended, so it never saw an end of input.
    Stream(PluginError),
}

/// Runs `command` with `input` spliced into its stdin, `suffix` written only after `input`
/// ended cleanly, and waits for it; its stdout is not read (it must print little). A
/// failed input stream stops the program (SIGTERM) before its stdin closes: an end of
/// input would look like a complete one to it.
pub fn feed(command: &Command, input: &InputStream, suffix: &[u8]) -> Result<(), FeedError> {
    let program = &command.program;
    feed_with(command, |stdin| {
        io::splice_all(stdin, input)?;
        let mut w = OutputWriter::borrowed(stdin);
        w.write_all(suffix)
            .and_then(|()| w.flush())
            .map_err(|e| PluginError::from_io(format!("writing to {program}"), &e))
    })
}

/// [`feed`] for a restore that writes more than the input: `write` gets the program's
/// stdin (to add a `BEGIN`, filter lines, check what passes) and its error is the
/// stream's. Whatever `write` returns, the program is stopped before its stdin closes if
/// `write` failed, and waited for if it succeeded; its exit decides the rest.
pub fn feed_with<T>(
    command: &Command,
    write: impl FnOnce(&OutputStream) -> Result<T, PluginError>,
) -> Result<T, FeedError> {
    let program = &command.program;
    let child = process::spawn(command).map_err(FeedError::Program)?;
    let Some(stdin) = child.take_stdin() else {
        let status = child.kill();
        return Err(FeedError::Program(PluginError::Other(format!(
            "{program}: the host gave no stdin stream{}",
            tail(&status)
        ))));
    };
    let written = match write(&stdin) {
        Ok(written) => written,
        Err(err) => {
            // The program may have stopped on its own: its exit says why.
            let status = child.kill();
            drop(stdin);
            log::debug(format_args!(
                "{program} stopped: {}",
                describe_exit(&status)
            ));
            if status.code.is_some_and(|c| c != 0) {
                return Err(FeedError::Program(failure(program, &status)));
            }
            return Err(FeedError::Stream(err));
        }
    };
    drop(stdin);
    let status = child.wait();
    if status.code != Some(0) {
        return Err(FeedError::Program(failure(program, &status)));
    }
    Ok(written)
}
