//! Bounded byte pipes that link the stages of a run.
//!
//! A pipe carries chunks from one stage to the next. It ends cleanly only when the writer
//! calls [`PipeWriter::finish`]: a writer dropped without finishing (its stage failed or
//! trapped) makes the reader fail, so a sink never mistakes a truncated stream for a
//! complete artifact. Each end is usable natively (`std::io::Read`/`Write`, blocking) or
//! handed to a component as a `wasi:io` stream.
//!
//! When the run is cancelled ([`crate::shutdown`]) every pipe fails at both ends, blocked
//! or not: a writer cannot finish, a reader never sees a clean end.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

use crate::error::{Blame, Reason, STOPPED};
use crate::progress::Meter;

/// Chunks in flight per pipe. With chunks of at most [`MAX_CHUNK`] this bounds the memory a
/// pipe holds, whatever the size of the dump.
const CAPACITY: usize = 4;
/// The largest write a component is offered at once (`check-write`).
pub const MAX_CHUNK: usize = 256 * 1024;

/// Phrases of the errors a stage sees when a *neighbour* failed.
const READER_GONE: &str = "the next stage stopped reading";
const WRITER_FAILED: &str = "the previous stage failed before finishing its output";
/// The fan-out's error when no sink is left to write to.
pub const EVERY_SINK: &str = "every sink stopped reading";

/// What the pipe ends a stage holds saw: whether one of them failed because a neighbour
/// did (its reader stopped, its writer failed) or because the run was stopped. A stage that
/// fails after its witness saw that is a [`Blame::Consequence`]; otherwise its failure is
/// its own. Told by the pipes themselves, whatever words the stage's error uses.
#[derive(Clone, Default)]
pub struct Witness(Arc<AtomicBool>);

impl Witness {
    pub fn new() -> Witness {
        Witness::default()
    }

    fn saw_neighbour_fail(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a failure of `stage`, which held these ends, is its own: not when one of
    /// them saw a neighbour fail, nor when the run was stopped (unless for this stage's
    /// own time limit).
    pub fn blame(&self, stage: &str) -> Blame {
        if self.0.load(Ordering::Relaxed) {
            return Blame::Consequence;
        }
        match crate::shutdown::reason() {
            Some(Reason::Timeout { stage: s, .. }) if s == stage => Blame::Cause,
            Some(_) => Blame::Consequence,
            None => Blame::Cause,
        }
    }
}

enum Msg {
    Data(Bytes),
    End,
}

/// Creates a pipe; `what` names the link in error messages ("source → zstd").
pub fn pipe(what: &str) -> (PipeWriter, PipeReader) {
    pipe_between(what, &Witness::new(), &Witness::new())
}

/// Creates a pipe from the stage whose ends `writer` witnesses to the one `reader` does.
pub fn pipe_between(what: &str, writer: &Witness, reader: &Witness) -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    (
        PipeWriter {
            tx,
            what: what.to_string(),
            witness: writer.clone(),
        },
        PipeReader {
            rx,
            pending: Bytes::new(),
            state: ReadState::Open,
            what: what.to_string(),
            witness: reader.clone(),
            meter: None,
        },
    )
}

/// The writing end. Cloneable so that the host can keep a handle to finish the stream
/// after a component that wrote to it returns.
#[derive(Clone)]
pub struct PipeWriter {
    tx: mpsc::Sender<Msg>,
    what: String,
    witness: Witness,
}

impl PipeWriter {
    /// Sends a chunk, waiting while the pipe is full. Fails when the reader is gone.
    pub fn send_blocking(&self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(Msg::Data(data))
    }

    /// Marks the stream complete. Only a finished stream ends cleanly for the reader.
    pub fn finish(self) -> io::Result<()> {
        self.send(Msg::End)
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        cancelled_check(&self.what, &self.witness)?;
        match crate::shutdown::block_on(self.tx.send(msg)) {
            Some(r) => r.map_err(|_| self.reader_gone()),
            None => Err(cancelled_error(&self.what, &self.witness)),
        }
    }

    fn reader_gone(&self) -> io::Error {
        self.witness.saw_neighbour_fail();
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("{READER_GONE} ({})", self.what),
        )
    }

    /// The end handed to a component as its `output-stream`.
    pub fn into_output_stream(self) -> Box<dyn OutputStream> {
        Box::new(GuestWriter {
            w: self,
            end_on_drop: false,
        })
    }

    /// The end handed to a component as a program's stdin: dropping it (the guest's
    /// `drop`, not a trap tearing the instance down) ends the stream cleanly, as the
    /// `process` contract says ("Drop it to close it"), so a plugin can close a program's
    /// input and go on reading its output. A failed or trapped plugin never drops it this
    /// way, so its program still never sees a clean end.
    pub fn into_closing_output_stream(self) -> Box<dyn OutputStream> {
        Box::new(GuestWriter {
            w: self,
            end_on_drop: true,
        })
    }
}

impl io::Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK);
        self.send_blocking(Bytes::copy_from_slice(&buf[..n]))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Ended,
    Failed,
}

/// The reading end.
pub struct PipeReader {
    rx: mpsc::Receiver<Msg>,
    pending: Bytes,
    state: ReadState,
    what: String,
    witness: Witness,
    meter: Option<Meter>,
}

impl PipeReader {
    /// Counts every byte this end receives on `meter` (for [`crate::progress`]): one
    /// relaxed atomic add per chunk.
    pub fn metered(mut self, meter: &Meter) -> PipeReader {
        self.meter = Some(meter.clone());
        self
    }

    /// The next chunk, waiting for it; `Ok(None)` at a clean end.
    pub fn recv_blocking(&mut self) -> io::Result<Option<Bytes>> {
        cancelled_check(&self.what, &self.witness)?;
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        match self.state {
            ReadState::Ended => return Ok(None),
            ReadState::Failed => return Err(self.writer_failed()),
            ReadState::Open => {}
        }
        let msg = match crate::shutdown::block_on(self.rx.recv()) {
            Some(msg) => msg,
            None => return Err(cancelled_error(&self.what, &self.witness)),
        };
        match self.accept(msg) {
            Some(chunk) => Ok(Some(chunk)),
            None if self.state == ReadState::Ended => Ok(None),
            None => Err(self.writer_failed()),
        }
    }

    fn accept(&mut self, msg: Option<Msg>) -> Option<Bytes> {
        match msg {
            Some(Msg::Data(b)) => {
                if let Some(m) = &self.meter {
                    m.add(b.len() as u64);
                }
                Some(b)
            }
            Some(Msg::End) => {
                self.state = ReadState::Ended;
                None
            }
            None => {
                self.state = ReadState::Failed;
                None
            }
        }
    }

    fn writer_failed(&self) -> io::Error {
        if let Err(e) = cancelled_check(&self.what, &self.witness) {
            return e;
        }
        self.witness.saw_neighbour_fail();
        io::Error::other(format!("{WRITER_FAILED} ({})", self.what))
    }

    /// The end handed to a component as its `input-stream`.
    pub fn into_input_stream(self) -> Box<dyn InputStream> {
        Box::new(GuestReader { r: self })
    }
}

impl io::Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.recv_blocking()? {
                Some(chunk) => self.pending = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

fn cancelled_error(what: &str, witness: &Witness) -> io::Error {
    witness.saw_neighbour_fail();
    let reason = crate::shutdown::reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    // Not ErrorKind::Interrupted: `read_exact`/`write_all` would retry it forever.
    io::Error::other(format!("{STOPPED} ({what}): {reason}"))
}

fn cancelled_check(what: &str, witness: &Witness) -> io::Result<()> {
    if crate::shutdown::is_cancelled() {
        return Err(cancelled_error(what, witness));
    }
    Ok(())
}

fn guest_cancelled_check(what: &str, witness: &Witness) -> StreamResult<()> {
    cancelled_check(what, witness).map_err(|e| StreamError::LastOperationFailed(e.into()))
}

/// A [`PipeWriter`] as a `wasi:io` output stream.
struct GuestWriter {
    w: PipeWriter,
    /// End the pipe cleanly when the guest drops the stream ([`OutputStream::cancel`] is
    /// called for an explicit drop only).
    end_on_drop: bool,
}

#[async_trait::async_trait]
impl OutputStream for GuestWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        guest_cancelled_check(&self.w.what, &self.w.witness)?;
        if bytes.is_empty() {
            return Ok(());
        }
        // `check_write` promised room; only this writer sends, so try_send cannot find the
        // pipe full. A closed pipe means the next stage stopped.
        self.w.tx.try_send(Msg::Data(bytes)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StreamError::trap("write exceeded check-write"),
            mpsc::error::TrySendError::Closed(_) => {
                StreamError::LastOperationFailed(self.w.reader_gone().into())
            }
        })
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        guest_cancelled_check(&self.w.what, &self.w.witness)?;
        if self.w.tx.is_closed() {
            return Err(StreamError::LastOperationFailed(
                self.w.reader_gone().into(),
            ));
        }
        Ok(if self.w.tx.capacity() > 0 {
            MAX_CHUNK
        } else {
            0
        })
    }

    async fn cancel(&mut self) {
        if self.end_on_drop && !crate::shutdown::is_cancelled() {
            // Waits for room behind what was written; a reader that is gone (the program
            // exited) or a stopped run leaves nothing to end.
            let _ = crate::shutdown::or_cancelled(self.w.tx.send(Msg::End)).await;
        }
    }
}

#[async_trait::async_trait]
impl Pollable for GuestWriter {
    async fn ready(&mut self) {
        // Reserving and releasing a slot waits until there is room (or the reader is gone,
        // which check_write then reports).
        let _ = crate::shutdown::or_cancelled(self.w.tx.reserve()).await;
    }
}

/// A [`PipeReader`] as a `wasi:io` input stream.
struct GuestReader {
    r: PipeReader,
}

#[async_trait::async_trait]
impl InputStream for GuestReader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        guest_cancelled_check(&self.r.what, &self.r.witness)?;
        let r = &mut self.r;
        if r.pending.is_empty() && r.state == ReadState::Open {
            match r.rx.try_recv() {
                Ok(msg) => {
                    if let Some(b) = r.accept(Some(msg)) {
                        r.pending = b;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return Ok(Bytes::new()),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    r.accept(None);
                }
            }
        }
        if !r.pending.is_empty() {
            let n = size.min(r.pending.len());
            return Ok(r.pending.split_to(n));
        }
        match r.state {
            ReadState::Ended => Err(StreamError::Closed),
            ReadState::Failed => Err(StreamError::LastOperationFailed(r.writer_failed().into())),
            ReadState::Open => Ok(Bytes::new()),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for GuestReader {
    async fn ready(&mut self) {
        let r = &mut self.r;
        if !r.pending.is_empty() || r.state != ReadState::Open {
            return;
        }
        // Cancelled: return so that `read` reports it.
        let Some(msg) = crate::shutdown::or_cancelled(r.rx.recv()).await else {
            return;
        };
        if let Some(b) = r.accept(msg) {
            r.pending = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn finished_stream_ends_cleanly() {
        let (mut w, mut r) = pipe("test");
        let t = std::thread::spawn(move || {
            w.write_all(b"hello ").unwrap();
            w.write_all(b"world").unwrap();
            w.finish().unwrap();
        });
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        t.join().unwrap();
        assert_eq!(out, "hello world");
    }

    /// A program's stdin ends cleanly when the plugin drops it (wasmtime calls `cancel`
    /// for the guest's drop), never when the instance is only torn down (a trap).
    #[test]
    fn a_closing_stream_ends_on_the_guests_drop_only() {
        let (w, mut r) = pipe("tar stdin");
        let mut s = w.into_closing_output_stream();
        s.write(Bytes::from_static(b"names")).unwrap();
        crate::shutdown::block_on(s.cancel()).unwrap();
        drop(s);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"names");

        let (w, mut r) = pipe("psql stdin");
        let mut s = w.into_closing_output_stream();
        s.write(Bytes::from_static(b"BEGIN;")).unwrap();
        drop(s);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn dropped_writer_is_an_error_not_an_end() {
        let (mut w, mut r) = pipe("source → sink");
        let t = std::thread::spawn(move || {
            w.write_all(b"partial").unwrap();
            drop(w);
        });
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        t.join().unwrap();
        assert!(err.to_string().contains("source → sink"), "{err}");
    }

    #[test]
    fn a_metered_reader_counts_what_it_receives() {
        let meter = Meter::new();
        let (mut w, r) = pipe("x");
        let mut r = r.metered(&meter);
        let t = std::thread::spawn(move || {
            w.write_all(&[7u8; 1000]).unwrap();
            w.write_all(b"abc").unwrap();
            w.finish().unwrap();
        });
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        t.join().unwrap();
        assert_eq!(out.len(), 1003);
        assert_eq!(meter.get(), 1003);
    }

    #[test]
    fn writer_sees_a_gone_reader() {
        let (w, r) = pipe("x");
        drop(r);
        assert_eq!(
            w.send_blocking(Bytes::from_static(b"a"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
