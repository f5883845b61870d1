//! `std::io` adapters for the WASI streams a plugin receives, and a splice loop.
//!
//! * [`InputReader`] owns an [`InputStream`] and implements [`Read`] and [`BufRead`]:
//!   the end of the stream (`closed`) is end-of-file, a failed stream is an error, and it
//!   stays an error on every later call (a failed input never looks like a clean end).
//! * [`OutputWriter`] owns or borrows an [`OutputStream`] and implements [`Write`] with
//!   `check-write`/`write`, waiting on the stream's pollable when it is full, so a single
//!   call can move far more than the 4 KiB `blocking-write-and-flush` allows.
//! * [`splice_all`] moves an input stream into an output stream on the host side: the
//!   bytes never enter the plugin's memory.
//! * [`pump`] copies a reader (a decoder, a decrypter) to a writer in bounded chunks, telling
//!   a failed read from a failed write.

use std::io::{self, BufRead, Read, Write};

use crate::PluginError;
use crate::streams::{InputStream, OutputStream, Pollable, StreamError};

/// How much [`InputReader`] asks the host for at a time, by default.
pub const DEFAULT_CHUNK: usize = 256 * 1024;

/// How much [`splice_all`] moves per call.
pub const SPLICE_CHUNK: u64 = 1024 * 1024;

/// Reads `from` to its end and writes everything to `out` in chunks of [`DEFAULT_CHUNK`],
/// then flushes it; returns the bytes copied. A read error is `doing: describe(err)` (say
/// what a truncated or damaged input means for the plugin's format there); a write error is
/// `doing: writing the output: …`. Both are [`PluginError::Io`].
pub fn pump(
    mut from: impl Read,
    mut out: impl Write,
    doing: &str,
    describe: impl Fn(&io::Error) -> String,
) -> Result<u64, PluginError> {
    let mut buf = vec![0u8; DEFAULT_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(PluginError::Io(format!("{doing}: {}", describe(&err)))),
        };
        out.write_all(&buf[..n])
            .map_err(|err| PluginError::Io(format!("{doing}: writing the output: {err}")))?;
        total += n as u64;
    }
    out.flush()
        .map_err(|err| PluginError::Io(format!("{doing}: flushing the output: {err}")))?;
    Ok(total)
}

/// Reads an [`InputStream`] through [`Read`] / [`BufRead`].
///
/// Each host read asks for up to the chunk size ([`DEFAULT_CHUNK`] unless set with
/// [`InputReader::with_chunk_size`]); `fill_buf` hands out the host's buffer as is, so a
/// `BufRead` consumer (e.g. `flate2::bufread`) copies nothing extra.
pub struct InputReader {
    buf: Vec<u8>,
    pos: usize,
    chunk: u64,
    eof: bool,
    /// Set once the stream fails; every later call returns the same error.
    failed: Option<String>,
    consumed: u64,
    stream: InputStream,
}

impl InputReader {
    /// A reader over `stream` that asks for [`DEFAULT_CHUNK`] bytes at a time.
    pub fn new(stream: InputStream) -> Self {
        Self::with_chunk_size(stream, DEFAULT_CHUNK)
    }

    /// A reader over `stream` that asks for up to `chunk` bytes at a time (at least 1).
    pub fn with_chunk_size(stream: InputStream, chunk: usize) -> Self {
        InputReader {
            buf: Vec::new(),
            pos: 0,
            chunk: chunk.max(1) as u64,
            eof: false,
            failed: None,
            consumed: 0,
            stream,
        }
    }

    /// Bytes handed to the caller so far.
    pub fn bytes_read(&self) -> u64 {
        self.consumed
    }

    /// Whether the stream has ended cleanly (and every byte was handed out).
    pub fn is_at_end(&self) -> bool {
        self.eof && self.pos >= self.buf.len()
    }

    /// The stream, for calls this type does not wrap.
    pub fn stream(&self) -> &InputStream {
        &self.stream
    }

    /// Give the stream back; bytes read from the host but not yet consumed are lost.
    pub fn into_inner(self) -> InputStream {
        self.stream
    }

    fn failure(message: &str) -> io::Error {
        io::Error::other(format!("input stream failed: {message}"))
    }
}

impl BufRead for InputReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(message) = &self.failed {
            return Err(Self::failure(message));
        }
        while self.pos >= self.buf.len() && !self.eof {
            match self.stream.blocking_read(self.chunk) {
                Ok(bytes) => {
                    self.buf = bytes;
                    self.pos = 0;
                }
                Err(StreamError::Closed) => self.eof = true,
                Err(StreamError::LastOperationFailed(err)) => {
                    let message = err.to_debug_string();
                    let error = Self::failure(&message);
                    self.failed = Some(message);
                    return Err(error);
                }
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.buf.len() - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

impl Read for InputReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

enum Target<'a> {
    Owned(OutputStream),
    Borrowed(&'a OutputStream),
}

/// Writes to an [`OutputStream`] through [`Write`].
///
/// `write` asks `check-write` how much the stream takes, writes that much (or all of the
/// buffer if less) and, when the stream is full, blocks on its pollable. `flush` is
/// `blocking-flush`. Nothing is flushed on drop.
pub struct OutputWriter<'a> {
    // Declared before `target`: a pollable must be dropped before its stream.
    pollable: Option<Pollable>,
    target: Target<'a>,
    written: u64,
}

impl OutputWriter<'static> {
    /// A writer that owns `stream` (and drops it when dropped).
    pub fn new(stream: OutputStream) -> Self {
        OutputWriter {
            pollable: None,
            target: Target::Owned(stream),
            written: 0,
        }
    }
}

impl<'a> OutputWriter<'a> {
    /// A writer over a stream the caller keeps.
    pub fn borrowed(stream: &'a OutputStream) -> Self {
        OutputWriter {
            pollable: None,
            target: Target::Borrowed(stream),
            written: 0,
        }
    }

    /// The stream, for calls this type does not wrap.
    pub fn stream(&self) -> &OutputStream {
        match &self.target {
            Target::Owned(stream) => stream,
            Target::Borrowed(stream) => stream,
        }
    }

    /// Bytes accepted by the stream so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn wait(&mut self) {
        if self.pollable.is_none() {
            self.pollable = Some(self.stream().subscribe());
        }
        if let Some(pollable) = &self.pollable {
            pollable.block();
        }
    }
}

fn output_error(err: StreamError) -> io::Error {
    match err {
        StreamError::Closed => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "output stream closed: the next stage stopped reading",
        ),
        StreamError::LastOperationFailed(err) => {
            io::Error::other(format!("output stream failed: {}", err.to_debug_string()))
        }
    }
}

impl Write for OutputWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let permit = self.stream().check_write().map_err(output_error)?;
            if permit == 0 {
                self.wait();
                continue;
            }
            let n = usize::try_from(permit).unwrap_or(usize::MAX).min(buf.len());
            self.stream().write(&buf[..n]).map_err(output_error)?;
            self.written += n as u64;
            return Ok(n);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream().blocking_flush().map_err(output_error)
    }
}

/// Move everything from `input` to `out` on the host side (`blocking-splice`, 1 MiB at a
/// time) until `input` ends, then flush `out`. Returns the number of bytes moved.
///
/// A failure on either side is [`PluginError::Io`]; so is `out` being closed (the next
/// stage stopped reading), which is told apart from `input`'s clean end.
pub fn splice_all(out: &OutputStream, input: &InputStream) -> Result<u64, PluginError> {
    let mut total: u64 = 0;
    loop {
        match out.blocking_splice(input, SPLICE_CHUNK) {
            Ok(n) => total += n,
            // `closed` comes from either side: the input's end (done) or the output
            // (the next stage is gone). `check-write` on the output tells which.
            Err(StreamError::Closed) => match out.check_write() {
                Ok(_) => break,
                Err(err) => {
                    return Err(PluginError::Io(format!(
                        "after {total} bytes: {}",
                        output_error(err)
                    )));
                }
            },
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(PluginError::Io(format!(
                    "copying the stream failed after {total} bytes: {}",
                    err.to_debug_string()
                )));
            }
        }
    }
    out.blocking_flush()
        .map_err(|err| PluginError::Io(format!("after {total} bytes: {}", output_error(err))))?;
    Ok(total)
}
