//! The run's log: human lines by default, JSON lines with `--log-format json`, always on
//! stderr, always through the [`Redactor`]. What commands print on stdout (reports, `list`,
//! `verify`, snapshot documents) goes through the same redactor: see [`stdout`].
//!
//! stderr also holds the progress line while one is shown ([`status`], drawn by
//! [`crate::progress`]): every line printed clears it first and draws it again after, under
//! the one lock that orders everything printed, so a log line never lands in the middle of
//! it and it never stays under a log line.

use std::io::Write;
use std::sync::{Mutex, OnceLock, RwLock};

use crate::redact::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Logger {
    format: Format,
    max: Level,
    redactor: RwLock<Redactor>,
    out: Mutex<Status>,
}

/// The progress line, as far as stderr shows it.
#[derive(Default)]
struct Status {
    /// The line on the screen now (without a newline), if any.
    shown: Option<String>,
    /// Set when the process is about to exit: no line is drawn any more.
    ended: bool,
}

/// Back to the start of the line and clear it to its end.
const CLEAR: &str = "\r\x1b[K";

impl Status {
    fn clear(&mut self) {
        if self.shown.take().is_some() {
            let _ = std::io::stderr().write_all(CLEAR.as_bytes());
        }
    }

    /// Writes `text` (whole lines) to stderr, clearing the progress line before and
    /// drawing it again after.
    fn write_lines(&self, text: &str) {
        let _ = match &self.shown {
            Some(line) => std::io::stderr().write_all(format!("{CLEAR}{text}{line}").as_bytes()),
            None => std::io::stderr().write_all(text.as_bytes()),
        };
    }
}

fn out() -> std::sync::MutexGuard<'static, Status> {
    logger().out.lock().unwrap_or_else(|p| p.into_inner())
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        format: Format::Human,
        max: Level::Info,
        redactor: RwLock::new(Redactor::default()),
        out: Mutex::new(Status::default()),
    })
}

/// Sets the format and the most verbose level logged (`Warn` for `--quiet`, `Debug` for
/// `-v`) once, at start-up; later calls are ignored. A panic's message goes through the
/// redactor too (it may quote a value that holds a secret).
pub fn init(format: Format, max: Level) {
    let _ = LOGGER.set(Logger {
        format,
        max,
        redactor: RwLock::new(Redactor::default()),
        out: Mutex::new(Status::default()),
    });
    std::panic::set_hook(Box::new(|info| {
        let line = format!("{}\n", redact(&info.to_string()));
        // Not waiting for the lock: the panic may have happened while it was held.
        match logger().out.try_lock() {
            Ok(out) => out.write_lines(&line),
            Err(_) => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }));
}

/// Adds the secrets of a loaded configuration to the redactor.
pub fn add_secrets(r: &Redactor) {
    if let Ok(mut mine) = logger().redactor.write() {
        mine.extend(r);
    }
}

/// Removes every registered secret from `s` (for errors printed outside the log).
pub fn redact(s: &str) -> String {
    match logger().redactor.read() {
        Ok(r) => r.redact(s).into_owned(),
        Err(_) => Redactor::default().redact(s).into_owned(),
    }
}

pub fn format() -> Format {
    logger().format
}

/// Writes one log line. `stage` names where it comes from (`sink local`), if anywhere.
pub fn log(level: Level, stage: Option<&str>, message: &str) {
    let l = logger();
    if level > l.max {
        return;
    }
    let message = redact(message);
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let line = match l.format {
        Format::Human => match stage {
            Some(stage) => format!(
                "{time} {:<5} [{stage}] {message}\n",
                level.as_str().to_uppercase()
            ),
            None => format!("{time} {:<5} {message}\n", level.as_str().to_uppercase()),
        },
        Format::Json => {
            let mut v =
                serde_json::json!({"time": time, "level": level.as_str(), "message": message});
            if let Some(stage) = stage {
                v["stage"] = stage.into();
            }
            format!("{v}\n")
        }
    };
    out().write_lines(&line);
}

/// Draws `line` as the progress line on stderr (replacing the one shown), without a
/// newline; the caller fitted it to the terminal's width. Through the redactor like
/// everything printed.
pub fn status(line: &str) {
    let line = redact(line);
    let mut out = out();
    if out.ended {
        return;
    }
    let _ = std::io::stderr().write_all(format!("{CLEAR}{line}").as_bytes());
    out.shown = Some(line);
}

/// Clears the progress line, if one is shown, leaving the cursor at the start of an
/// empty line.
pub fn clear_status() {
    out().clear();
}

/// Clears the progress line for good: the process exits without its guard being dropped
/// ([`crate::shutdown`]'s immediate exit).
pub fn end_status() {
    let mut out = out();
    out.clear();
    out.ended = true;
}

/// Writes a line another `pipeline` process logged (a run `pipeline daemon` started) as
/// it is, through this process's redactor.
pub fn relay(line: &str) {
    let line = format!("{}\n", redact(line.trim_end_matches(['\r', '\n'])));
    let _guard = logger().out.lock();
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(stage: Option<&str>, message: &str) {
    log(Level::Error, stage, message);
}
pub fn warn(stage: Option<&str>, message: &str) {
    log(Level::Warn, stage, message);
}
pub fn info(stage: Option<&str>, message: &str) {
    log(Level::Info, stage, message);
}
pub fn debug(stage: Option<&str>, message: &str) {
    log(Level::Debug, stage, message);
}

/// Stdout through the redactor, a line at a time (what a command prints: the JSON report,
/// `list`, `verify`, snapshot documents).
pub fn stdout() -> Stdout {
    Stdout {
        pending: Vec::new(),
    }
}

/// Prints one line on stdout through the redactor. A closed stdout is not an error here
/// (`pipeline verify | head`).
pub fn println(line: &str) {
    let mut out = stdout();
    let _ = writeln!(out, "{line}");
}

/// See [`stdout`]. Holds back a partial line until its end (or a flush), so a secret split
/// across two writes is still seen whole.
pub struct Stdout {
    pending: Vec<u8>,
}

impl Stdout {
    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let text = redact(&String::from_utf8_lossy(&line));
        let out = out();
        let Some(line) = &out.shown else {
            return std::io::stdout().write_all(text.as_bytes());
        };
        // stdout and stderr may be the same terminal: the progress line steps aside.
        let _ = std::io::stderr().write_all(CLEAR.as_bytes());
        let written = std::io::stdout()
            .write_all(text.as_bytes())
            .and_then(|()| std::io::stdout().flush());
        let _ = std::io::stderr().write_all(format!("{CLEAR}{line}").as_bytes());
        written
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(self.pending.len())?;
        }
        std::io::stdout().flush()
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
